"""Import PufferLib 3.0 checkpoints: plain ``state_dict`` files of an ``LSTMWrapper`` policy.

PufferLib 3.0 (``pufferlib/pufferl.py``, June 2025, the last Python release) saves
``torch.save(policy.state_dict())`` to ``<data_dir>/<env>_<run_id>/model_<env>_<epoch:06d>.pt``.
Its policy is ``pufferlib.models.LSTMWrapper(env, inner)``; the wrapper's own parameters are an
``nn.LSTM`` (``lstm.{weight,bias}_{ih,hh}_l0``) and an ``nn.LSTMCell`` (``cell.{weight,bias}_
{ih,hh}``) whose parameters are assigned to be the LSTM's: one tensor under two names (the
cell runs the rollout step by step, the LSTM the update). The inner policy is ``policy.*``.
A ``module.`` prefix (a DDP run) is dropped, as 3.0's own loader does.

Inner policies that map exactly onto our :class:`~pufferfiber.core.policy.Policy`:

* ``pufferlib.models.Default`` (the Ocean games, e.g. ``puffer_pong``): ``policy.encoder.0``
  Linear followed by ``nn.GELU()`` (``encoder`` is a Sequential), ``policy.decoder`` (logits)
  and ``policy.value``; observations flattened and cast to float, not scaled. Ours: an ``mlp``
  with ``activation="gelu"``; encoder → ``policy.policy.network.1`` (index 0 is our Flatten),
  decoder → ``policy.policy.actor``, value → ``policy.policy.value_fn``.
* ``pufferlib.models.Convolutional`` (Atari): ``policy.network.{0,2,4}`` convs with kernels
  8/4/3 and strides 4/2/1 (fixed in its code, not stored), ReLU after each, Flatten,
  ``policy.network.7`` Linear + ReLU, heads ``policy.actor`` and ``policy.value_fn``;
  observations ``float() / 255``. Our ``cnn`` has the same indices under
  ``policy.policy.network.*``. The frame shape is not in a state dict: it comes from the env
  the file is loaded for and must give the stored flatten width.

Either way ``lstm.*_l0`` → ``policy.recurrent.*_l0``, and ``cell.*`` is checked to equal it.

Refused with one line (:class:`~pufferfiber.io.atomic.CheckpointError`): continuous heads
(``decoder_mean``/``decoder_logstd``), the dict-observation ``Default`` (a Linear encoder with
no activation, ``policy.encoder.weight``), cells that differ from the LSTM, a multi-layer
LSTM, and any key not listed above.

A 3.0 file holds only tensors, so it is read with ``torch.load(weights_only=True)`` like ours:
nothing is unpickled that could run code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pufferfiber.core.policy import ATARI_KERNELS, Architecture, Policy
from pufferfiber.io.atomic import CheckpointError

FORMAT_NAME = "pufferlib3"
# The LSTM's parameters, as nn.LSTM names them without the ``_l0`` suffix (and nn.LSTMCell does).
_LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# 3.0 model file names: model_<env>_<epoch:06d>.pt (the env name itself may contain "_").
FILE_RE = re.compile(r"^model_(?P<env>[a-z0-9_]+)_(?P<epoch>\d{6,})\.pt$")
_CONV = (0, 2, 4)  # policy.network indices of Convolutional's convs (ReLUs in between)
_CNN_LINEAR = 7  # ... and of its Linear after the Flatten at 6


def strip_ddp(key: str) -> str:
    """``key`` without DDP's ``module.`` prefix (3.0 removes it on load, so may we)."""
    return key[len("module.") :] if key.startswith("module.") else key


def looks_like_pufferlib3(data: object) -> bool:
    """Whether ``data`` (what ``torch.load`` returned) is a PufferLib 3.0 ``LSTMWrapper``
    state dict: tensors only, an ``lstm.weight_ih_l0`` and a wrapped ``policy.*``."""
    if not isinstance(data, Mapping) or not data:
        return False
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        return False
    keys = {strip_ddp(k) for k in data}
    # ``policy.recurrent.*`` is our own / PufferLib 2.0's naming, never 3.0's
    return "lstm.weight_ih_l0" in keys and any(
        k.startswith("policy.") and not k.startswith("policy.recurrent.") for k in keys
    )


def policy_from_pufferlib3(
    state_dict: Mapping[str, torch.Tensor],
    frames: tuple[int, ...] | None = None,
    where: str = "state dict",
) -> Policy:
    """Our :class:`Policy` with the weights of a PufferLib 3.0 ``LSTMWrapper`` state dict.

    ``frames`` is the observation shape of the env (needed for ``Convolutional`` only, whose
    state dict does not record it). Anything that does not map exactly is a one-line
    :class:`CheckpointError` naming ``where``.
    """
    if not looks_like_pufferlib3(state_dict):
        raise CheckpointError(
            f"{where}: not a PufferLib 3.0 LSTMWrapper state dict "
            "(expected tensors named lstm.*_l0, cell.* and policy.*)"
        )
    sd = {strip_ddp(k): v for k, v in state_dict.items()}
    if any(k.startswith(("policy.decoder_mean", "policy.decoder_logstd")) for k in sd):
        raise CheckpointError(
            f"{where}: continuous-action PufferLib 3.0 policies are not supported"
        )
    lstm = _checked_lstm(sd, where)
    if "policy.encoder.0.weight" in sd:
        arch, inner = _default(sd, lstm, where)
    elif "policy.network.0.weight" in sd:
        arch, inner = _convolutional(sd, lstm, frames, where)
    elif "policy.encoder.weight" in sd:
        raise CheckpointError(
            f"{where}: PufferLib 3.0's dict-observation Default (a Linear encoder without "
            "activation) does not map onto pufferfiber's Policy"
        )
    else:
        raise CheckpointError(
            f"{where}: unknown PufferLib 3.0 policy (neither Default's policy.encoder.0 nor "
            "Convolutional's policy.network.0)"
        )
    ours = dict(inner)
    for name in _LSTM_PARAMS:
        ours[f"policy.recurrent.{name}_l0"] = sd[f"lstm.{name}_l0"]
    unknown = sorted(set(sd) - _sources(arch))
    if unknown:
        raise CheckpointError(f"{where}: unknown PufferLib 3.0 parameter {unknown[0]!r}")
    policy = Policy(arch)
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ours.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or sorted(
            k for k in expected if expected[k] != found[k]
        )
        raise CheckpointError(f"{where}: PufferLib 3.0 weights do not fit the policy ({wrong[:3]})")
    # float32 like every policy here (3.0 trains float32 weights under autocast anyway)
    policy.load_state_dict({k: v.detach().float() for k, v in ours.items()})
    return policy


def _checked_lstm(sd: dict[str, torch.Tensor], where: str) -> tuple[int, int]:
    """``(input size, hidden size)`` of the wrapper's one-layer LSTM, after checking that
    ``cell.*`` (present in 3.0's files) is the same tensors: a cell with other values would
    mean the rollout ran a network other than the one trained."""
    for name in _LSTM_PARAMS:
        lstm = sd.get(f"lstm.{name}_l0")
        if lstm is None:
            raise CheckpointError(f"{where}: PufferLib 3.0 LSTM is missing lstm.{name}_l0")
        cell = sd.get(f"cell.{name}")
        if cell is not None and (cell.shape != lstm.shape or not torch.equal(cell, lstm)):
            raise CheckpointError(
                f"{where}: cell.{name} differs from lstm.{name}_l0 (PufferLib 3.0 ties them)"
            )
    if any(re.match(r"lstm\..*_l[1-9]\d*$", k) for k in sd):
        raise CheckpointError(f"{where}: a multi-layer LSTM does not map onto our one-layer LSTM")
    w_ih, w_hh = sd["lstm.weight_ih_l0"], sd["lstm.weight_hh_l0"]
    if w_ih.dim() != 2 or w_hh.dim() != 2 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise CheckpointError(f"{where}: lstm.weight_hh_l0 {tuple(w_hh.shape)} is not an LSTM's")
    return int(w_ih.shape[1]), int(w_hh.shape[1])


def _sources(arch: Architecture) -> set[str]:
    """The 3.0 keys the mapping reads (everything else in the file is unknown)."""
    keys = {f"lstm.{n}_l0" for n in _LSTM_PARAMS} | {f"cell.{n}" for n in _LSTM_PARAMS}
    if arch.kind == "mlp":
        layers = ["policy.encoder.0", "policy.decoder", "policy.value"]
    else:
        convs = [f"policy.network.{i}" for i in _CONV]
        layers = [*convs, f"policy.network.{_CNN_LINEAR}", "policy.actor", "policy.value_fn"]
    return keys | {f"{m}.{p}" for m in layers for p in ("weight", "bias")}


def _need(sd: dict[str, torch.Tensor], key: str, dims: int, where: str) -> torch.Tensor:
    value = sd.get(key)
    if value is None or value.dim() != dims:
        raise CheckpointError(f"{where}: PufferLib 3.0 policy is missing {key} ({dims}-d)")
    return value


def _default(
    sd: dict[str, torch.Tensor], lstm: tuple[int, int], where: str
) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """``Default``: Linear(obs → hidden) + GELU, then (after the LSTM) decoder and value."""
    enc = _need(sd, "policy.encoder.0.weight", 2, where)
    dec = _need(sd, "policy.decoder.weight", 2, where)
    _need(sd, "policy.value.weight", 2, where)
    hidden, obs = int(enc.shape[0]), int(enc.shape[1])
    _check_lstm_input(lstm, hidden, where)
    arch = Architecture.mlp(obs, int(dec.shape[0]), (hidden,), lstm[1], activation="gelu")
    renames = {
        "policy.encoder.0": "policy.policy.network.1",  # ours: Flatten at 0, Linear at 1
        "policy.decoder": "policy.policy.actor",
        "policy.value": "policy.policy.value_fn",
    }
    return arch, _renamed(sd, renames, where)


def _convolutional(
    sd: dict[str, torch.Tensor],
    lstm: tuple[int, int],
    frames: tuple[int, ...] | None,
    where: str,
) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """``Convolutional``: PufferLib's Nature CNN, the same layers as our ``cnn`` family."""
    convs = [_need(sd, f"policy.network.{i}.weight", 4, where) for i in _CONV]
    linear = _need(sd, f"policy.network.{_CNN_LINEAR}.weight", 2, where)
    actor = _need(sd, "policy.actor.weight", 2, where)
    _need(sd, "policy.value_fn.weight", 2, where)
    kernels = tuple(int(c.shape[-1]) for c in convs)
    if kernels != tuple(k for k, _ in ATARI_KERNELS):
        raise CheckpointError(f"{where}: conv kernels {kernels} are not PufferLib's 8/4/3")
    if frames is None:
        raise CheckpointError(
            f"{where}: a PufferLib 3.0 Convolutional state dict does not record its frame "
            "shape; pass --env"
        )
    if len(frames) != 3 or int(frames[0]) != int(convs[0].shape[1]):
        raise CheckpointError(
            f"{where}: the policy takes {int(convs[0].shape[1])}-channel frames; "
            f"the env gives {tuple(frames)}"
        )
    _check_lstm_input(lstm, int(linear.shape[0]), where)
    arch = Architecture.atari(
        int(actor.shape[0]),
        tuple(int(s) for s in frames),
        tuple(int(c.shape[0]) for c in convs),
        int(linear.shape[0]),
        lstm[1],
    )
    if arch.flat_size() != int(linear.shape[1]):
        raise CheckpointError(
            f"{where}: flatten width {int(linear.shape[1])} does not match frames "
            f"{tuple(frames)} (which give {arch.flat_size()})"
        )
    layers = [*(f"policy.network.{i}" for i in _CONV), f"policy.network.{_CNN_LINEAR}"]
    renames = {m: "policy." + m for m in [*layers, "policy.actor", "policy.value_fn"]}
    return arch, _renamed(sd, renames, where)


def _check_lstm_input(lstm: tuple[int, int], hidden: int, where: str) -> None:
    if lstm[0] != hidden:
        raise CheckpointError(
            f"{where}: the LSTM reads {lstm[0]} features but the encoder gives {hidden}"
        )


def _renamed(
    sd: dict[str, torch.Tensor], renames: dict[str, str], where: str
) -> dict[str, torch.Tensor]:
    """Weight and bias of each 3.0 module under our name (both must be there)."""
    out: dict[str, torch.Tensor] = {}
    for theirs, ours in renames.items():
        for p in ("weight", "bias"):
            if f"{theirs}.{p}" not in sd:
                raise CheckpointError(f"{where}: PufferLib 3.0 policy is missing {theirs}.{p}")
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    return out
