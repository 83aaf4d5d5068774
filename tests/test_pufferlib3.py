"""PufferLib 3.0 importer: state dicts with exactly 3.0's keys and shapes (``LSTMWrapper``
around ``Default`` for the Ocean games, or around ``Convolutional`` for Atari) load into our
Policy, whose outputs equal 3.0's maths written out from the raw tensors; files that match
neither format are one line (exit code 2 on the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pufferfiber.envs.registry
from pufferfiber.cli.main import collapse_main, main, parse_args
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.io.atomic import CheckpointError
from pufferfiber.io.checkpoints import load_checkpoint, save_checkpoint
from pufferfiber.io.pufferlib3 import looks_like_pufferlib3, policy_from_pufferlib3

LSTM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# puffer_pong under 3.0's defaults ([policy] hidden_size 128, [rnn] input/hidden 128)
PONG_OBS, PONG_ACTIONS, PONG_HIDDEN, PONG_LSTM = 8, 3, 128, 128
# a small Convolutional (the real one is 32/64/64, 512) on our 1x105x80 Atari frames
FRAMES, CHANNELS, CNN_HIDDEN, CNN_LSTM, CNN_ACTIONS = (1, 105, 80), (4, 8, 8), 32, 16, 6
FLAT = 8 * 9 * 6  # 105x80 through k8 s4, k4 s2, k3 s1


class _Wrapper(nn.Module):
    """The module tree of 3.0's ``LSTMWrapper`` (``policy``, ``lstm``, ``cell`` with the LSTM's
    own Parameters assigned to it), so that ``state_dict()`` gives 3.0's keys in 3.0's order."""

    def __init__(self, policy: nn.Module, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.policy = policy
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.cell = nn.LSTMCell(input_size, hidden_size)
        for name in LSTM_NAMES:
            setattr(self.cell, name, getattr(self.lstm, f"{name}_l0"))


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def pong_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """``LSTMWrapper(env, Default(env, hidden_size=128), 128, 128).state_dict()`` for pong."""
    inner = nn.Module()
    inner.encoder = nn.Sequential(nn.Linear(PONG_OBS, PONG_HIDDEN), nn.GELU())
    inner.decoder = nn.Linear(PONG_HIDDEN, PONG_ACTIONS)
    inner.value = nn.Linear(PONG_HIDDEN, 1)
    return dict(_randomised(_Wrapper(inner, PONG_HIDDEN, PONG_LSTM), seed).state_dict())


def atari_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """``LSTMWrapper(env, Convolutional(...))`` with 3.0's layer indices and names."""
    inner = nn.Module()
    c1, c2, c3 = CHANNELS
    inner.network = nn.Sequential(
        nn.Conv2d(FRAMES[0], c1, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(c2, c3, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(FLAT, CNN_HIDDEN),
        nn.ReLU(),
    )
    # the heads read the LSTM's output (3.0 sizes them hidden_size / output_size, equal to
    # the LSTM's width in every config: 512)
    inner.actor = nn.Linear(CNN_LSTM, CNN_ACTIONS)
    inner.value_fn = nn.Linear(CNN_LSTM, 1)
    return dict(_randomised(_Wrapper(inner, CNN_HIDDEN, CNN_LSTM), seed).state_dict())


def test_state_dicts_have_exactly_3_0_keys_and_shapes() -> None:
    """What the module trees above give is what 3.0 writes (written out by hand here, from
    ``pufferlib/models.py`` of 3.0: Default, Convolutional, LSTMWrapper)."""
    lstm = {
        "lstm.weight_ih_l0": (4 * PONG_LSTM, PONG_HIDDEN),
        "lstm.weight_hh_l0": (4 * PONG_LSTM, PONG_LSTM),
        "lstm.bias_ih_l0": (4 * PONG_LSTM,),
        "lstm.bias_hh_l0": (4 * PONG_LSTM,),
    }
    expected = {
        "policy.encoder.0.weight": (PONG_HIDDEN, PONG_OBS),
        "policy.encoder.0.bias": (PONG_HIDDEN,),
        "policy.decoder.weight": (PONG_ACTIONS, PONG_HIDDEN),
        "policy.decoder.bias": (PONG_ACTIONS,),
        "policy.value.weight": (1, PONG_HIDDEN),
        "policy.value.bias": (1,),
        **lstm,
        **{f"cell.{n}": lstm[f"lstm.{n}_l0"] for n in LSTM_NAMES},
    }
    sd = pong_state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sd["cell.weight_hh"].data_ptr() == sd["lstm.weight_hh_l0"].data_ptr()  # one tensor
    atari = atari_state_dict()
    assert sorted(k for k in atari if k.startswith("policy.network.")) == sorted(
        f"policy.network.{i}.{p}" for i in (0, 2, 4, 7) for p in ("weight", "bias")
    )
    assert {"policy.actor.weight", "policy.value_fn.weight", "cell.bias_hh"} <= set(atari)


def _lstm_cell(sd: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """``nn.LSTMCell`` written out (gates i, f, g, o) on 3.0's ``cell.*`` tensors."""
    gates = F.linear(x, sd["cell.weight_ih"], sd["cell.bias_ih"]) + F.linear(
        h, sd["cell.weight_hh"], sd["cell.bias_hh"]
    )
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def reference_rollout(sd: dict[str, torch.Tensor], obs: torch.Tensor, kind: str):
    """3.0's ``LSTMWrapper.forward_eval`` step by step from zero state, from the raw tensors:
    Default encodes ``gelu(encoder.0(obs.view(B, -1).float()))`` and decodes with ``decoder``
    and ``value``; Convolutional runs its convs on ``obs.float() / 255``. ``obs`` ``[B, T, ...]``.
    Returns logits ``[B, T, A]`` and values ``[B, T]``."""
    b, t = obs.shape[:2]
    n = sd["lstm.weight_hh_l0"].shape[1]
    h, c = torch.zeros(b, n), torch.zeros(b, n)
    logits, values = [], []
    for k in range(t):
        x = obs[:, k]
        if kind == "default":
            x = F.gelu(F.linear(x.reshape(b, -1).float(), *_wb(sd, "policy.encoder.0")))
            heads = ("policy.decoder", "policy.value")
        else:
            x = x.float() / 255.0
            for i, stride in ((0, 4), (2, 2), (4, 1)):
                x = F.relu(F.conv2d(x, *_wb(sd, f"policy.network.{i}"), stride=stride))
            x = F.relu(F.linear(x.flatten(1), *_wb(sd, "policy.network.7")))
            heads = ("policy.actor", "policy.value_fn")
        h, c = _lstm_cell(sd, x, h, c)
        logits.append(F.linear(h, *_wb(sd, heads[0])))
        values.append(F.linear(h, *_wb(sd, heads[1])).squeeze(-1))
    return torch.stack(logits, 1), torch.stack(values, 1)


def _wb(sd: dict[str, torch.Tensor], module: str) -> tuple[torch.Tensor, torch.Tensor]:
    return sd[f"{module}.weight"], sd[f"{module}.bias"]


def _check_outputs(policy: Policy, sd: dict[str, torch.Tensor], obs: torch.Tensor, kind: str):
    ref_logits, ref_values = reference_rollout(sd, obs, kind)
    with torch.no_grad():
        logits, values, _ = policy(obs)  # a sequence: our fused LSTM
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
        state = None
        for k in range(obs.shape[1]):  # the rollout: one step at a time
            step_logits, step_values, state = policy.step(obs[:, k], state)
            torch.testing.assert_close(step_logits, ref_logits[:, k], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step_values, ref_values[:, k], atol=1e-5, rtol=1e-5)


def test_default_pong_matches_3_0_maths() -> None:
    sd = pong_state_dict()
    assert looks_like_pufferlib3(sd)
    policy = policy_from_pufferlib3(sd)
    arch = policy.arch
    assert (arch.kind, arch.obs_shape, arch.n_actions) == ("mlp", (PONG_OBS,), PONG_ACTIONS)
    assert (arch.hidden, arch.lstm, arch.activation) == ((PONG_HIDDEN,), PONG_LSTM, "gelu")
    obs = torch.randn(5, 7, PONG_OBS, generator=torch.Generator().manual_seed(1))
    _check_outputs(policy, sd, obs, "default")


def test_convolutional_matches_3_0_maths() -> None:
    sd = atari_state_dict()
    policy = policy_from_pufferlib3(sd, FRAMES)
    assert policy.arch.channels == CHANNELS and policy.arch.hidden == (CNN_HIDDEN,)
    arch = Architecture.atari(CNN_ACTIONS, FRAMES)
    obs = observation_batch(arch, 4 * 3, seed=3).reshape(4, 3, *FRAMES)
    _check_outputs(policy, sd, obs, "conv")


def test_ddp_prefix_is_stripped() -> None:
    sd = {f"module.{k}": v for k, v in pong_state_dict().items()}
    assert looks_like_pufferlib3(sd)
    assert policy_from_pufferlib3(sd).arch.lstm == PONG_LSTM


def test_detection_from_keys() -> None:
    ours = Policy(Architecture.mlp(PONG_OBS, PONG_ACTIONS, (16,), 16)).state_dict()
    assert not looks_like_pufferlib3(dict(ours))  # ours / 2.0's policy.recurrent.* names
    assert not looks_like_pufferlib3({"weight": torch.ones(2)})
    assert not looks_like_pufferlib3({"format": "x", "state_dict": {}})
    assert not looks_like_pufferlib3([torch.ones(1)])
    assert looks_like_pufferlib3(atari_state_dict())


def _untied() -> dict[str, torch.Tensor]:
    sd = pong_state_dict()
    sd["cell.weight_hh"] = sd["cell.weight_hh"] + 1.0
    return sd


def _unknown_key() -> dict[str, torch.Tensor]:
    return {**pong_state_dict(), "policy.layer_norm.weight": torch.ones(PONG_LSTM)}


def _continuous() -> dict[str, torch.Tensor]:
    sd = pong_state_dict()
    sd["policy.decoder_mean.weight"] = sd.pop("policy.decoder.weight")
    return sd


def _dict_obs() -> dict[str, torch.Tensor]:
    sd = pong_state_dict()
    sd["policy.encoder.weight"] = sd.pop("policy.encoder.0.weight")
    sd["policy.encoder.bias"] = sd.pop("policy.encoder.0.bias")
    return sd


def _two_layers() -> dict[str, torch.Tensor]:
    return {**pong_state_dict(), "lstm.weight_ih_l1": torch.ones(4 * PONG_LSTM, PONG_LSTM)}


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_untied, "ties them"),
        (_unknown_key, "unknown PufferLib 3.0 parameter 'policy.layer_norm.weight'"),
        (_continuous, "continuous-action"),
        (_dict_obs, "dict-observation"),
        (_two_layers, "multi-layer LSTM"),
        (lambda: {"weight": torch.ones(2)}, "not a PufferLib 3.0 LSTMWrapper state dict"),
    ],
)
def test_what_does_not_map_is_one_line(make, words: str) -> None:
    with pytest.raises(CheckpointError) as info:
        policy_from_pufferlib3(make())
    assert words in str(info.value) and "\n" not in str(info.value)


def test_convolutional_needs_the_frames() -> None:
    with pytest.raises(CheckpointError, match="pass --env"):
        policy_from_pufferlib3(atari_state_dict())
    with pytest.raises(CheckpointError, match="flatten width"):
        policy_from_pufferlib3(atari_state_dict(), (1, 84, 84))


def _save_3_0(tmp_path: Path, sd: dict[str, torch.Tensor], env: str, epoch: int) -> Path:
    """Where and how pufferl.py's save_checkpoint writes: ``torch.save(state_dict)``."""
    folder = tmp_path / f"{env}_1733300000"
    folder.mkdir()
    path = folder / f"model_{env}_{epoch:06d}.pt"
    torch.save(sd, path)
    return path


def test_load_checkpoint_detects_and_imports(tmp_path: Path) -> None:
    sd = pong_state_dict()
    path = _save_3_0(tmp_path, sd, "puffer_pong", 42)
    for fmt in ("auto", "pufferlib3"):
        ckpt = load_checkpoint(path, checkpoint_format=fmt)  # env from the file name
        assert (ckpt.env, ckpt.epoch, ckpt.arch.activation) == ("puffer_pong", 42, "gelu")
        assert ckpt.meta["imported_from"] == "pufferlib-3.0"
    with pytest.raises(CheckpointError, match="not a pufferfiber checkpoint"):
        load_checkpoint(path, checkpoint_format="pufferfiber")
    with pytest.raises(CheckpointError, match="not 'cartpole'"):
        load_checkpoint(path, expect_env="cartpole")
    # the import is a pufferfiber checkpoint from then on, GELU and all
    saved = save_checkpoint(
        tmp_path / "model_000042.pt", ckpt.policy, epoch=42, global_step=0, env="puffer_pong",
        config={},
    )  # fmt: skip
    again = load_checkpoint(saved, checkpoint_format="pufferfiber")
    assert again.arch == ckpt.arch
    obs = torch.randn(3, 4, PONG_OBS)
    with torch.no_grad():
        torch.testing.assert_close(again.policy(obs)[0], ckpt.policy(obs)[0])


def test_unnamed_file_needs_env(tmp_path: Path) -> None:
    path = tmp_path / "pong.pt"
    torch.save(pong_state_dict(), path)
    with pytest.raises(CheckpointError, match="pass --env"):
        load_checkpoint(path)
    assert load_checkpoint(path, expect_env="puffer_pong").env == "puffer_pong"


def test_convolutional_file_gets_frames_from_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(  # the env's frames, without building the emulator
        pufferfiber.envs.registry,
        "architecture_for",
        lambda name, *a, **k: Architecture.atari(CNN_ACTIONS, FRAMES),
    )
    path = _save_3_0(tmp_path, atari_state_dict(), "beam_rider", 7)
    ckpt = load_checkpoint(path, checkpoint_format="pufferlib3")
    assert (ckpt.env, ckpt.epoch, ckpt.arch.obs_shape) == ("beam_rider", 7, FRAMES)


def test_foreign_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match=r"nor a PufferLib 3\.0 state dict"):
        load_checkpoint(path, expect_env="puffer_pong")
    with pytest.raises(CheckpointError, match=r"not a PufferLib 3\.0 LSTMWrapper state dict"):
        load_checkpoint(path, expect_env="puffer_pong", checkpoint_format="pufferlib3")
    with pytest.raises(CheckpointError, match="format must be one of"):
        load_checkpoint(path, checkpoint_format="keras")


def test_command_line_option(tmp_path: Path, capsys) -> None:
    ns = parse_args(["--mode", "eval", "--env", "puffer_pong", "--checkpoint-format", "pufferlib3"])
    assert ns.ns.checkpoint_format == "pufferlib3"
    assert main(["--mode", "train", "--env", "cartpole", "--checkpoint-format", "pufferlib3"]) == 2
    assert "works with --mode eval" in capsys.readouterr().err
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.ones(3)}, path)
    code = collapse_main([str(path), "--threshold", "0", "--checkpoint-format", "pufferlib3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "not a PufferLib 3.0" in err
    # a GELU import loads, but its collapse is refused in one line (fibers need ReLU)
    pong = _save_3_0(tmp_path, pong_state_dict(), "puffer_pong", 1)
    code = collapse_main([str(pong), "--threshold", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "GELU" in err


def test_a_2_0_pickle_is_never_unpickled_as_3_0(shared_run: Path) -> None:
    """``--checkpoint-format pufferlib3`` reads weights only, even with ``--allow-pickle``."""
    for allow in (False, True):
        with pytest.raises(CheckpointError, match=r"PufferLib 2\.0 module, not a PufferLib"):
            load_checkpoint(
                shared_run / "model_000003.pt", allow_pickle=allow, checkpoint_format="pufferlib3"
            )


def test_real_pufferlib3_checkpoint() -> None:
    """On a real 3.0 file in ``../shared/data`` (``<env>_<run>/model_<env>_<epoch:06d>.pt``)."""
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # as in conftest.py
    if not data.is_dir():
        pytest.skip(f"no shared data folder at {data}")
    found = sorted(data.glob("*/model_*_[0-9][0-9][0-9][0-9][0-9][0-9].pt"))
    if not found:
        pytest.skip(f"no PufferLib 3.0 checkpoint in {data} (it holds PufferLib 2.0 runs only)")
    ckpt = load_checkpoint(found[-1], checkpoint_format="pufferlib3")
    assert ckpt.meta["imported_from"] == "pufferlib-3.0" and ckpt.policy.parameter_count() > 0
