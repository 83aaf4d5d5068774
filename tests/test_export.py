"""``pufferfiber export``: the C runtime and TorchScript copies compute what the policy does.

Parity is measured, not assumed: every test compares the exported copy's logits and value
with the PyTorch policy on observation sequences (state carried). Tests that compile C skip
(with the reason) where no C compiler is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from pufferfiber.cli.main import console_main
from pufferfiber.core.criteria import WeightCriterion
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.io import puffernet
from pufferfiber.io.checkpoints import load_checkpoint, save_checkpoint
from pufferfiber.workflows.export import (
    TOLERANCE,
    ExportError,
    compile_c,
    export_checkpoint,
    find_compiler,
    play_in_c,
    puffernet_include,
    run_c_policy,
)

PONG = Architecture.mlp(8, 3, (128,), 128)

needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc/gcc/clang)")


def _checkpoint(path: Path, policy: Policy, env: str = "puffer_pong") -> Path:
    return save_checkpoint(path, policy, epoch=3, global_step=100, env=env, config={})


@pytest.fixture(scope="module")
def pong_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model_000003.pt", Policy(PONG))


@pytest.fixture(scope="module")
def collapsed_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    small = WeightCriterion(0.9).fit_transform(Policy(PONG))
    assert small.arch.lstm < PONG.lstm and small.arch.hidden[0] < PONG.hidden[0]
    return _checkpoint(tmp_path_factory.mktemp("coll") / "model_collapsed.pt", small)


def _reference(policy: Policy, obs: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        logits, value, _ = policy.eval()(obs[None])
    return torch.cat([logits[0], value[0][:, None]], -1).numpy()


def _build_policy(tmp: Path, policy: Policy) -> Path:
    (tmp / "weights.bin").write_bytes(puffernet.weights_bytes(policy))
    (tmp / "policy.c").write_text(puffernet.policy_source(policy.arch))
    compile_c(tmp / "policy.c", tmp / "policy", [puffernet_include()])
    return tmp / "policy"


def test_weights_bin_layout() -> None:
    torch.manual_seed(0)
    policy = Policy(Architecture.mlp(5, 2, (7, 6), 4))
    data = np.frombuffer(puffernet.weights_bytes(policy), dtype="<f4")
    assert data.size == policy.parameter_count() == puffernet.weight_count(policy)
    names = [n for n, _ in puffernet.weight_tensors(policy)]
    assert names[:4] == ["network.1.weight", "network.1.bias", "network.3.weight", "network.3.bias"]
    assert names[4:8] == [f"recurrent.{n}" for n in puffernet._RNN_ORDER]
    assert names[-4:] == ["actor.weight", "actor.bias", "value_fn.weight", "value_fn.bias"]
    w0 = cast(torch.nn.Linear, policy.network[1]).weight.detach().numpy().ravel()
    np.testing.assert_array_equal(data[: w0.size], w0)
    np.testing.assert_array_equal(data[-1:], policy.value_fn.bias.detach().numpy())


@needs_cc
@pytest.mark.parametrize(
    "arch",
    [
        Architecture.mlp(8, 3, (40, 17), 23),
        Architecture.mlp(8, 3, (40,), 23, rnn="gru"),
        Architecture.atari(4, obs_shape=(1, 42, 42), channels=(4, 8, 8), hidden=16, lstm=12),
    ],
    ids=["mlp-lstm", "mlp-gru", "cnn-lstm"],
)
def test_generated_c_matches_torch(tmp_path: Path, arch: Architecture) -> None:
    torch.manual_seed(1)
    policy = Policy(arch)
    binary = _build_policy(tmp_path, policy)
    obs = observation_batch(arch, 40, seed=2).float()
    out = run_c_policy(binary, tmp_path / "weights.bin", obs, arch.n_actions + 1)
    ref = _reference(policy, obs)
    assert np.abs(out - ref).max() < TOLERANCE
    assert (out[:, :-1].argmax(-1) == ref[:, :-1].argmax(-1)).all()
    # the state is carried: a second sequence from zero state differs from the continuation
    assert np.abs(ref[20:] - _reference(policy, obs[20:])).max() > 1e-4


@needs_cc
def test_policy_rejects_a_wrong_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    binary = _build_policy(tmp_path, Policy(Architecture.mlp(8, 3, (16,), 8)))
    (tmp_path / "short.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[:-4])
    done = subprocess.run([binary, tmp_path / "short.bin"], input=b"", capture_output=True)
    assert done.returncode == 2 and b"expected" in done.stderr


@needs_cc
@pytest.mark.parametrize("which", ["pong_ckpt", "collapsed_ckpt"])
def test_export_puffernet_checks_parity(
    tmp_path: Path, which: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    ckpt_path: Path = request.getfixturevalue(which)
    out = tmp_path / "exp"
    rc = console_main(
        ["export", str(ckpt_path), "--format", "puffernet", "--out", str(out), "--steps", "64"]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {
        "README.txt",
        "policy.c",
        "weights.bin",
        "game.c",
        "raylib.h",
    }
    assert "greedy actions differ at 0 steps" in capsys.readouterr().out
    # the README's one-line build command builds a filter that matches on a fresh sequence
    readme = (out / "README.txt").read_text().splitlines()
    build = readme[readme.index("Build (one line):") + 1].split()
    assert build[0] == "cc"
    cc = find_compiler()
    assert cc is not None
    subprocess.run([cc, *build[1:]], cwd=tmp_path, check=True)
    ckpt = load_checkpoint(ckpt_path)
    obs = torch.rand(100, 8)
    out_c = run_c_policy(tmp_path / "policy", out / "weights.bin", obs, 4)
    assert np.abs(out_c - _reference(ckpt.policy, obs)).max() < TOLERANCE


@pytest.mark.slow
def test_export_torchscript_loads_with_plain_torch(tmp_path: Path, collapsed_ckpt: Path) -> None:
    out = tmp_path / "ts"
    result = export_checkpoint(collapsed_ckpt, "torchscript", out, steps=32)
    assert result.parity.ok and result.files == ["README.txt", "policy.pt"]
    policy = load_checkpoint(collapsed_ckpt).policy
    obs = torch.rand(2, 30, 8)
    with torch.inference_mode():
        logits, value, _ = policy.eval()(obs)
    np.save(tmp_path / "obs.npy", obs.numpy())
    script = (
        "import sys, json\n"
        # pufferfiber is installed in this interpreter: map it to None so any import of it
        # (by torch.jit.load resolving a class, say) raises ImportError
        "sys.modules['pufferfiber'] = None\n"
        "try:\n"
        "    import pufferfiber\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('the block does not work')\n"
        "import numpy as np, torch\n"
        f"m = torch.jit.load({str(out / 'policy.pt')!r})\n"
        f"obs = torch.from_numpy(np.load({str(tmp_path / 'obs.npy')!r}))\n"
        "state = m.initial_state(2)\n"
        "rows = []\n"
        "for t in range(obs.shape[1]):\n"
        "    lg, v, state = m(obs[:, t], state)\n"
        "    rows.append(torch.cat([lg, v[:, None]], -1))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, torch.stack(rows, 1).detach().numpy())\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith('pufferfiber.'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    got = np.load(tmp_path / "out.npy")
    ref = torch.cat([logits, value[..., None]], -1).numpy()
    assert np.abs(got - ref).max() < TOLERANCE


def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, pong_ckpt: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*args: str) -> str:
        assert console_main(["export", str(pong_ckpt), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    assert "unknown --format 'onnx'" in run("--format", "onnx", "--out", str(tmp_path / "a"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "not an export folder" in run("--format", "torchscript", "--out", str(other))
    assert (other / "notes.txt").read_text() == "keep me"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "cannot write" in run("--format", "torchscript", "--out", str(locked / "x"))
    finally:
        locked.chmod(0o755)
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    assert "no C compiler" in run("--format", "puffernet", "--out", str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="unknown format"):
        export_checkpoint(pong_ckpt, "onnx", tmp_path / "c")


@needs_cc
def test_export_refuses_a_copy_that_does_not_match(
    tmp_path: Path, pong_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong weights.bin (here: the value head's bias shifted) fails the parity check, and
    nothing is written."""
    real = puffernet.weights_bytes

    def shifted(policy: Policy) -> bytes:
        data = np.frombuffer(real(policy), dtype="<f4").copy()
        data[-1] += 1e-2
        return data.tobytes()

    monkeypatch.setattr(puffernet, "weights_bytes", shifted)
    out = tmp_path / "bad"
    with pytest.raises(ExportError, match="does not match"):
        export_checkpoint(pong_ckpt, "puffernet", out, steps=16, sequences=1)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_torchscript_gru_and_cnn_match(tmp_path: Path) -> None:
    """The TorchScript copy of a GRU policy and of a (small) CNN policy."""
    torch.manual_seed(4)
    small_cnn = Architecture.atari(3, (1, 36, 36), channels=(4, 4, 4), hidden=8, lstm=6)
    gru = Architecture.mlp(6, 4, (20,), 9, rnn="gru")
    for (name, env), arch in {("gru", "cartpole"): gru, ("cnn", "beam_rider"): small_cnn}.items():
        ckpt = _checkpoint(tmp_path / f"{name}.pt", Policy(arch), env=env)
        result = export_checkpoint(ckpt, "torchscript", tmp_path / name, steps=24, sequences=2)
        assert result.parity.ok, result.parity.line()


@pytest.mark.slow
@needs_cc
@pytest.mark.parametrize("env", ["puffer_pong", "puffer_breakout"])
def test_c_game_return_agrees_with_python_evaluation(tmp_path: Path, env: str) -> None:
    """game.c plays the exported policy in the game's own C code; its mean return agrees with
    Python evaluation of the same checkpoint within the episodes' spread."""
    from pufferfiber.envs.registry import architecture_for
    from pufferfiber.rl.evaluate import play_episodes

    torch.manual_seed(0)
    ckpt = _checkpoint(tmp_path / "model.pt", Policy(architecture_for(env)), env=env)
    out = tmp_path / "exp"
    result = export_checkpoint(ckpt, "puffernet", out, steps=16, sequences=1)
    assert result.game_command is not None and "game.c" in result.game_command
    episodes = 8
    c_returns = play_in_c(out, episodes, seed=5, num_envs=8)
    assert len(c_returns) == episodes
    py_returns = play_episodes(load_checkpoint(ckpt).policy, env, episodes, seed=5)
    spread = max(np.std(c_returns), np.std(py_returns))
    assert abs(np.mean(c_returns) - np.mean(py_returns)) <= 2 * spread + 0.1
