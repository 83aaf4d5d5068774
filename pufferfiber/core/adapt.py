"""Your own recurrent agent, compressed: map a user's ``nn.Module`` onto our :class:`Policy`.

:func:`adapt` takes a module shaped like CleanRL's ``ppo_atari_lstm.Agent`` (an encoder
``nn.Sequential`` of Conv2d / Linear / ReLU / Flatten, one one-layer ``nn.LSTM`` or ``nn.GRU``,
Linear actor and critic heads) and the attribute paths of those parts. It checks the wiring
against what :class:`~pufferfiber.core.policy.Policy` computes (conv → ReLU ... flatten →
Linear → ReLU ... → recurrent → heads; no padding, biases everywhere) and refuses in one line
(:class:`AdaptError`) what does not map. The result, an :class:`AdaptedNetwork`, is what the
criteria and :func:`pufferfiber.core.divergence.output_divergence` accept in place of a policy:

* :meth:`AdaptedNetwork.to_policy`: the same weights in our :class:`Policy` (a copy, CPU), on
  which the fibers and the quotient are computed by the ordinary core;
* :meth:`AdaptedNetwork.from_policy`: a deep copy of the user's module in which every mapped
  Linear / Conv2d / LSTM / GRU is replaced, at the same attribute path, by a module of the same
  type with the (smaller) sizes and the weights of a collapsed policy. The user's class and its
  ``forward`` are kept; the original module is never modified;
* :meth:`AdaptedNetwork.unroll`: runs a module of this layout itself (encoder on
  ``frames · obs_scale``, the recurrent layer from a zero state, the heads), which is how pf
  measures a user's module without knowing its ``forward``.

``obs_scale`` is the factor the user's code applies to observations before the encoder (CleanRL
Atari: ``1/255``, in ``get_states``); our :class:`Policy` has its own fixed input scale (1/255 for
conv encoders, 1 otherwise), so observations handed to the policy are rescaled by
:meth:`AdaptedNetwork.policy_observations`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from pufferfiber.core.policy import Architecture, Policy

__all__ = ["AdaptError", "AdaptedNetwork", "adapt"]

HEAD_LABELS = ("actor", "value")
_RNN_TYPES: dict[type[nn.Module], str] = {nn.LSTM: "lstm", nn.GRU: "gru"}


class AdaptError(ValueError):
    """A user's module that pf cannot map onto its policy (the message says what, in one line)."""


@dataclass(frozen=True)
class AdaptedNetwork:
    """A user's module and how its parts map onto :class:`Policy` (build with :func:`adapt`).

    Attributes:
        module: the user's module (referenced, never modified).
        encoder, recurrent: attribute paths of the encoder ``nn.Sequential`` and the RNN.
        heads: ``{"actor": path, "value": path}``.
        obs_scale: factor applied to observations before the encoder.
        arch: the :class:`Architecture` of the mapped policy.
        key_map: user state-dict key → :class:`Policy` state-dict key, for every mapped tensor.
    """

    module: nn.Module
    encoder: str
    recurrent: str
    heads: Mapping[str, str]
    obs_scale: float
    arch: Architecture
    key_map: Mapping[str, str] = field(repr=False)

    # -- where things are
    @property
    def layer_paths(self) -> dict[str, str]:
        """User module path → :class:`Policy` module path of every mapped layer."""
        return {k.rsplit(".", 1)[0]: v.rsplit(".", 1)[0] for k, v in self.key_map.items()}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def rebind(self, module: nn.Module) -> AdaptedNetwork:
        """The same layout on another module (e.g. a collapsed copy): checked again."""
        return adapt(
            module,
            encoder=self.encoder,
            recurrent=self.recurrent,
            heads=dict(self.heads),
            obs_scale=self.obs_scale,
            obs_shape=self.arch.obs_shape,
        )

    # -- to and from our policy
    def to_policy(self) -> Policy:
        """Our :class:`Policy` holding a CPU copy of the mapped weights (in the module's dtype)."""
        state = self.module.state_dict()
        dtype = next(self.module.parameters()).dtype
        with torch.device("meta"):
            policy = Policy(self.arch)
        policy = policy.to_empty(device="cpu").to(dtype)
        mapped = {ours: state[theirs].detach().cpu() for theirs, ours in self.key_map.items()}
        policy.load_state_dict(mapped, strict=True)
        return policy.eval()

    def policy_observations(self, observations: torch.Tensor) -> torch.Tensor:
        """``observations`` rescaled so that our policy's own input scale gives ``obs_scale``."""
        default = 1.0 / 255.0 if self.arch.kind == "cnn" else 1.0
        ratio = self.obs_scale / default
        return observations if ratio == 1.0 else observations.float() * ratio

    def from_policy(self, policy: Policy) -> nn.Module:
        """A new module of the user's class with ``policy``'s sizes and weights (see the module
        docstring); it lives on the device and in the dtype of the original."""
        params = next(self.module.parameters())
        small = copy.deepcopy(self.module)
        ours = dict(policy.named_modules())
        state = policy.state_dict()
        for theirs_path, ours_path in self.layer_paths.items():
            old = self.module.get_submodule(theirs_path)
            new = _resized_like(old, ours[ours_path])
            new.load_state_dict(
                {
                    name: state[f"{ours_path}.{name}"].to(params.dtype)
                    for name, _ in old.named_parameters()
                },
                strict=True,
            )
            _set_submodule(small, theirs_path, new.to(params.device))
        return small

    # -- running a module of this layout
    @torch.no_grad()
    def unroll(
        self, frames: torch.Tensor, module: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, T, A], value [B, T])`` of ``module`` (default: the adapted one) on
        ``frames`` ``[B, T, *obs]``, the recurrent state from zeros and carried along each row."""
        module = self.module if module is None else module
        encoder = module.get_submodule(self.encoder)
        rnn = module.get_submodule(self.recurrent)
        where = next(module.parameters())
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).to(where.device, where.dtype)
        hidden = encoder(x * self.obs_scale).reshape(b, t, -1)
        batch_first = bool(getattr(rnn, "batch_first", False))
        out, _ = rnn(hidden if batch_first else hidden.transpose(0, 1))
        out = out if batch_first else out.transpose(0, 1)
        logits = module.get_submodule(self.heads["actor"])(out)
        value = module.get_submodule(self.heads["value"])(out).squeeze(-1)
        return logits, value


def adapt(
    module: nn.Module,
    *,
    encoder: str,
    recurrent: str,
    heads: Mapping[str, str],
    obs_scale: float = 1.0,
    obs_shape: tuple[int, ...] | None = None,
) -> AdaptedNetwork:
    """Map ``module``'s parts (attribute paths) onto our :class:`Policy`.

    ``heads`` maps ``"actor"`` and ``"value"`` to the paths of the two Linear heads.
    ``obs_scale``: the factor the user's code applies to observations before the encoder
    (CleanRL Atari: ``1/255``). ``obs_shape``: one observation's shape; optional, inferred from
    the first Linear (vector observations) or, for a conv encoder, from the flatten width
    assuming square frames (pass it for other frames).

    Raises :class:`AdaptError` (one line) for what pf cannot collapse exactly: layers other than
    Conv2d / Linear / ReLU / Flatten in the encoder, a missing ReLU, convs with padding,
    dilation, groups or non-square kernels, layers without bias, a recurrent layer that is not
    a one-layer unidirectional LSTM or GRU, heads other than actor and value, widths that do not
    chain.
    """
    if not isinstance(module, nn.Module):
        raise AdaptError(f"adapt needs an nn.Module, got {type(module).__name__}")
    if sorted(heads) != sorted(HEAD_LABELS):
        raise AdaptError(f"heads must name exactly 'actor' and 'value', got {sorted(heads)}")
    if not math.isfinite(obs_scale) or obs_scale <= 0:
        raise AdaptError(f"obs_scale must be a positive number, got {obs_scale}")
    enc = _part(module, encoder, "encoder")
    if not isinstance(enc, nn.Sequential):
        raise AdaptError(f"encoder {encoder!r} must be an nn.Sequential, not {type(enc).__name__}")
    layers = _encoder_layers(enc, encoder)
    convs = [m for _, m in layers if isinstance(m, nn.Conv2d)]
    linears = [m for _, m in layers if isinstance(m, nn.Linear)]
    rnn_module = _part(module, recurrent, "recurrent")
    rnn_kind = _check_rnn(rnn_module, recurrent)
    rnn = cast(nn.RNNBase, rnn_module)
    head_modules: dict[str, nn.Linear] = {}
    for label, path in heads.items():
        head = _part(module, path, f"{label} head")
        _check_plain(head, path, (nn.Linear,))
        head_modules[label] = cast(nn.Linear, head)
    shape = _obs_shape(convs, linears[0], obs_shape, encoder)
    if convs:
        arch = Architecture(
            "cnn",
            shape,
            head_modules["actor"].out_features,
            tuple(c.out_channels for c in convs),
            tuple((int(c.kernel_size[0]), int(c.stride[0])) for c in convs),
            tuple(m.out_features for m in linears),
            rnn.hidden_size,
            rnn_kind,
        )
    else:
        arch = Architecture(
            "mlp",
            shape,
            head_modules["actor"].out_features,
            (),
            (),
            tuple(m.out_features for m in linears),
            rnn.hidden_size,
            rnn_kind,
        )
    _check_widths(arch, convs, linears, rnn, head_modules, encoder, recurrent, heads)
    key_map = _key_map(arch, layers, encoder, recurrent, heads)
    return AdaptedNetwork(module, encoder, recurrent, dict(heads), float(obs_scale), arch, key_map)


# --------------------------------------------------------------------------- checks


def _part(module: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise AdaptError(
            f"{type(module).__name__} has no submodule {path!r} (the {what})"
        ) from None


def _check_plain(module: nn.Module, path: str, types: tuple[type[nn.Module], ...]) -> None:
    if type(module) not in types:
        names = " or ".join(f"nn.{t.__name__}" for t in types)
        raise AdaptError(f"{path}: {type(module).__name__} is not supported here (needs {names})")
    if parametrize.is_parametrized(module):
        raise AdaptError(f"{path}: parametrized layers (weight norm, ...) are not supported")
    if getattr(module, "bias", None) is None and not isinstance(module, nn.RNNBase):
        raise AdaptError(f"{path}: layers without bias are not supported")


def _encoder_layers(enc: nn.Sequential, path: str) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the encoder's Conv2d / Linear layers, checking the pattern
    ``(Conv2d ReLU)* Flatten (Linear ReLU)+`` (Flatten optional without convs)."""
    layers: list[tuple[str, nn.Module]] = []
    pending: str | None = None  # a layer still waiting for its ReLU
    flattened = False
    for name, m in enc.named_children():
        where = f"{path}.{name}"
        if isinstance(m, nn.Conv2d | nn.Linear):
            if pending is not None:
                raise AdaptError(
                    f"{pending}: needs a ReLU after it (each layer is followed by one)"
                )
            _check_plain(m, where, (nn.Conv2d, nn.Linear))
            if isinstance(m, nn.Conv2d):
                if flattened or any(isinstance(x, nn.Linear) for _, x in layers):
                    raise AdaptError(f"{where}: a Conv2d after the flatten is not supported")
                _check_conv(m, where)
            elif any(isinstance(x, nn.Conv2d) for _, x in layers) and not flattened:
                raise AdaptError(f"{where}: needs an nn.Flatten between the convs and the Linear")
            layers.append((where, m))
            pending = where
        elif type(m) is nn.ReLU:
            if pending is None:
                raise AdaptError(f"{where}: ReLU without a preceding Conv2d or Linear layer")
            pending = None
        elif type(m) is nn.Flatten:
            if (m.start_dim, m.end_dim) != (1, -1):
                raise AdaptError(f"{where}: only nn.Flatten() of all but the batch axis")
            if flattened or any(isinstance(x, nn.Linear) for _, x in layers):
                raise AdaptError(f"{where}: only one Flatten, before the first Linear")
            flattened = True
        else:
            raise AdaptError(
                f"{where}: {type(m).__name__} is not supported in the encoder "
                "(only Conv2d, Linear, ReLU, Flatten; a ReLU after every layer)"
            )
    if pending is not None:
        raise AdaptError(f"{pending}: needs a ReLU after it (each layer is followed by one)")
    if not any(isinstance(m, nn.Linear) for _, m in layers):
        raise AdaptError(f"encoder {path!r} must end with a Linear layer and a ReLU")
    return layers


def _check_conv(m: nn.Conv2d, where: str) -> None:
    if m.padding not in ((0, 0), "valid"):
        raise AdaptError(f"{where}: convs with padding are not supported (padding={m.padding})")
    if m.dilation != (1, 1) or m.groups != 1:
        raise AdaptError(f"{where}: dilated or grouped convs are not supported")
    if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1]:
        raise AdaptError(f"{where}: only square kernels and strides are supported")


def _check_rnn(rnn: nn.Module, path: str) -> str:
    if type(rnn) not in _RNN_TYPES:
        raise AdaptError(f"{path}: {type(rnn).__name__} is not supported (needs nn.LSTM or nn.GRU)")
    assert isinstance(rnn, nn.RNNBase)
    if rnn.num_layers != 1:
        raise AdaptError(f"{path}: a {rnn.num_layers}-layer {type(rnn).__name__} is not supported")
    if rnn.bidirectional:
        raise AdaptError(f"{path}: a bidirectional {type(rnn).__name__} is not supported")
    if getattr(rnn, "proj_size", 0):
        raise AdaptError(f"{path}: an LSTM with proj_size is not supported")
    if not rnn.bias:
        raise AdaptError(f"{path}: a recurrent layer without biases is not supported")
    return _RNN_TYPES[type(rnn)]


def _obs_shape(
    convs: list[nn.Conv2d], first: nn.Linear, given: tuple[int, ...] | None, path: str
) -> tuple[int, ...]:
    if given is not None:
        return tuple(int(x) for x in given)
    if not convs:
        return (first.in_features,)
    positions, rest = divmod(first.in_features, convs[-1].out_channels)
    side = math.isqrt(positions)
    if rest or side * side != positions:
        raise AdaptError(
            f"{path}: cannot infer the frame size from the flatten width "
            f"{first.in_features}; pass obs_shape=(C, H, W)"
        )
    for conv in reversed(convs):  # the smallest square frame giving that output
        side = (side - 1) * conv.stride[0] + conv.kernel_size[0]
    return (convs[0].in_channels, side, side)


def _check_widths(
    arch: Architecture,
    convs: list[nn.Conv2d],
    linears: list[nn.Linear],
    rnn: nn.RNNBase,
    heads: Mapping[str, nn.Linear],
    encoder: str,
    recurrent: str,
    head_paths: Mapping[str, str],
) -> None:
    def mismatch(where: str, got: int, want: int, what: str) -> AdaptError:
        return AdaptError(f"{where}: {got} inputs do not match the {want} {what}")

    if convs:
        if len(arch.obs_shape) != 3:
            raise AdaptError(f"obs_shape {arch.obs_shape} must be (C, H, W) for a conv encoder")
        c_in = arch.obs_shape[0]
        for conv in convs:
            if conv.in_channels != c_in:
                raise mismatch(encoder, conv.in_channels, c_in, "channels before it")
            c_in = conv.out_channels
        _, h, w = arch.conv_output_shape()
        if h < 1 or w < 1:
            raise AdaptError(f"frames {arch.obs_shape} are too small for the convs")
    width = arch.flat_size()
    for lin in linears:
        if lin.in_features != width:
            raise mismatch(encoder, lin.in_features, width, "features before it")
        width = lin.out_features
    if rnn.input_size != width:
        raise mismatch(recurrent, rnn.input_size, width, "encoder features")
    for label, head in heads.items():
        if head.in_features != rnn.hidden_size:
            raise mismatch(head_paths[label], head.in_features, rnn.hidden_size, "recurrent units")
    if heads["value"].out_features != 1:
        raise AdaptError(f"{head_paths['value']}: the value head must have one output")


def _key_map(
    arch: Architecture,
    layers: list[tuple[str, nn.Module]],
    encoder: str,
    recurrent: str,
    heads: Mapping[str, str],
) -> dict[str, str]:
    """User state-dict key → :class:`Policy` key, found by building the policy on meta."""
    with torch.device("meta"):
        policy = Policy(arch)
    ours = [
        f"policy.policy.network.{i}"
        for i, m in enumerate(policy.network)
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    pairs = [(path, mine) for (path, _), mine in zip(layers, ours, strict=True)]
    pairs += [(recurrent, "policy.recurrent")]
    pairs += [(heads["actor"], "policy.policy.actor"), (heads["value"], "policy.policy.value_fn")]
    names = dict(policy.named_modules())
    out: dict[str, str] = {}
    for theirs, mine in pairs:
        for name, _ in names[mine].named_parameters():
            out[f"{theirs}.{name}"] = f"{mine}.{name}"
    return out


# --------------------------------------------------------------------------- rebuilding


def _resized_like(old: nn.Module, ours: nn.Module) -> nn.Module:
    """A module of ``old``'s type and settings with ``ours``'s sizes (uninitialised)."""
    with torch.device("meta"):
        if isinstance(old, nn.Conv2d):
            assert isinstance(ours, nn.Conv2d)
            new: nn.Module = nn.Conv2d(
                ours.in_channels,
                ours.out_channels,
                (old.kernel_size[0], old.kernel_size[1]),
                stride=(old.stride[0], old.stride[1]),
                padding=old.padding,  # type: ignore[arg-type]
                padding_mode=old.padding_mode,
            )
        elif isinstance(old, nn.Linear):
            assert isinstance(ours, nn.Linear)
            new = nn.Linear(ours.in_features, ours.out_features)
        else:
            assert isinstance(old, nn.RNNBase) and isinstance(ours, nn.RNNBase)
            rnn_type = nn.LSTM if isinstance(old, nn.LSTM) else nn.GRU
            new = rnn_type(ours.input_size, ours.hidden_size, batch_first=old.batch_first)
    return new.to_empty(device="cpu")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
