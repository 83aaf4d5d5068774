"""Dormant units and ReDo resets: activity measured like the paper, dead units recycled without
changing the function, edits and optimizer resets precise, the hook on a real (tiny) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pufferfiber.cli import main as cli
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.io.checkpoints import load_trainer_state
from pufferfiber.rl.redo import (
    DormantReset,
    dormancy_scores,
    dormant_fraction,
    dormant_units,
    recycle_units,
    unit_activity,
)

REPO = Path(__file__).resolve().parents[1]
TINY_CNN = Architecture.atari(4, obs_shape=(1, 44, 44), channels=(4, 6, 6), hidden=12, lstm=8)
TINY_MLP = Architecture.mlp(4, 2, hidden=(10, 9), lstm=7)


def make_policy(arch: Architecture, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(arch)


def kill(layer: torch.nn.Module, units: list[int]) -> None:
    """Dead ReLU units: zero incoming weights and a negative bias."""
    with torch.no_grad():
        layer.weight[units] = 0.0
        layer.bias[units] = -1.0


def test_activity_is_mean_absolute_activation() -> None:
    policy = make_policy(TINY_MLP)
    obs = observation_batch(TINY_MLP, 32, seed=1)
    act = unit_activity(policy, obs)
    with torch.no_grad():
        a1 = torch.relu(policy.network[1](obs))
        a2 = torch.relu(policy.network[3](a1))
        h, _ = policy.recurrent(a2[None])
    np.testing.assert_allclose(act["linear1"], a1.abs().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(act["linear2"], a2.abs().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(act["lstm"], h[0].abs().mean(0).numpy(), rtol=1e-6)


def test_conv_activity_averages_over_positions() -> None:
    policy = make_policy(TINY_CNN)
    obs = observation_batch(TINY_CNN, 6, seed=2)
    act = unit_activity(policy, obs)
    with torch.no_grad():
        c1 = torch.relu(policy.network[0](obs.float() / 255))
    np.testing.assert_allclose(act["conv1"], c1.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    assert set(act) == {"conv1", "conv2", "conv3", "linear1", "lstm"}


def test_scores_and_thresholds() -> None:
    act = {"a": np.array([0.0, 0.1, 1.0, 2.9]), "b": np.zeros(3)}
    s = dormancy_scores(act)
    np.testing.assert_allclose(s["a"], act["a"] / 1.0)
    assert dormant_units(act, 0.0)["a"].tolist() == [0]
    assert dormant_units(act, 0.1)["a"].tolist() == [0, 1]
    assert dormant_units(act, 0.1)["b"].tolist() == [0, 1, 2]  # a silent layer is all dormant


def test_dead_units_are_found_and_recycled_without_changing_the_function() -> None:
    policy = make_policy(TINY_MLP)
    kill(policy.network[1], [2, 7])
    obs = observation_batch(TINY_MLP, 5 * 6, seed=3).reshape(5, 6, 4)
    frac = dormant_fraction(policy, obs, tau=0.0)
    assert frac["linear1"] == pytest.approx(0.2) and frac["lstm"] == 0.0
    with torch.no_grad():
        logits0, value0, _ = policy(obs)
    dormant = dormant_units(unit_activity(policy, obs), 0.0)
    recycle_units(policy, dormant)
    with torch.no_grad():
        logits1, value1, _ = policy(obs)
    # A dead unit contributed nothing: zeroing its outgoing weights keeps the function.
    torch.testing.assert_close(logits1, logits0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(value1, value0, atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(policy.network[3].weight[:, [2, 7]]) == 0
    assert (policy.network[1].bias[[2, 7]] == 0).all()
    assert dormant_fraction(policy, obs, tau=0.0)["linear1"] == 0.0  # alive again


def test_recycling_an_lstm_unit_edits_exactly_its_entries() -> None:
    policy = make_policy(TINY_MLP)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    obs = observation_batch(TINY_MLP, 4 * 5, seed=4).reshape(4, 5, 4)
    for _ in range(2):
        logits, value, _ = policy(obs)
        (logits.square().mean() + value.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    k, j = TINY_MLP.lstm, 3
    sd0 = {key: v.clone() for key, v in policy.state_dict().items()}
    moments = {key: opt.state[p]["exp_avg_sq"].clone() for key, p in policy.named_parameters()}
    recycle_units(policy, {"lstm": np.array([j])}, optimizer=opt)
    rows = [g * k + j for g in range(4)]
    for key, p in policy.named_parameters():
        expected_w, expected_m = sd0[key].clone(), moments[key].clone()
        if key.startswith("policy.recurrent."):
            expected_m[rows] = 0
            if key.endswith("weight_hh_l0"):
                expected_m[:, j] = 0
                expected_w[:, j] = 0
            mask = torch.ones_like(expected_w, dtype=torch.bool)
            mask[rows] = False  # fresh rows: anything
            assert torch.equal(p.detach()[mask], expected_w[mask]), key
        else:
            if key in ("policy.policy.actor.weight", "policy.policy.value_fn.weight"):
                expected_w[:, j] = 0
                expected_m[:, j] = 0
            assert torch.equal(p.detach(), expected_w), key
        assert torch.equal(opt.state[p]["exp_avg_sq"], expected_m), key


def test_hook_schedule_and_log(tmp_path: Path) -> None:
    policy = make_policy(TINY_CNN)
    kill(policy.network[7], [0, 1, 2])
    obs = observation_batch(TINY_CNN, 3 * 4, seed=5).reshape(3, 4, *TINY_CNN.obs_shape)
    hook = DormantReset(lambda ctx: obs, tau=0.0, interval=3, layers=["linear1"], seed=1)

    def ctx(epoch: int) -> SimpleNamespace:
        return SimpleNamespace(
            policy=policy, optimizer=None, epoch=epoch, global_step=epoch, run_dir=tmp_path
        )

    assert hook(ctx(2)) is None
    assert hook(ctx(3)) == {"redo_linear1": 3.0}
    # A fresh unit may be dead again on this small batch; the hook resets exactly those.
    still = len(dormant_units(unit_activity(policy, obs), 0.0)["linear1"])
    assert hook(ctx(6)) == {"redo_linear1": float(still)}
    lines = [json.loads(s) for s in (tmp_path / "redo.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in lines] == [3, 6]
    assert lines[0]["dormant_fraction"]["linear1"] == pytest.approx(3 / 12)
    assert set(lines[0]["dormant_fraction"]) == {"conv1", "conv2", "conv3", "linear1", "lstm"}


def test_hook_reads_ctx_observations_and_rejects_bad_settings() -> None:
    policy = make_policy(TINY_MLP)
    kill(policy.network[3], [4])
    obs = observation_batch(TINY_MLP, 8, seed=6)
    dormant = dormant_units(unit_activity(policy, obs), 0.0)["linear2"]
    assert 4 in dormant
    expected = float(len(dormant))
    hook = DormantReset(tau=0.0, interval=1, log_name=None)
    stats = hook(
        SimpleNamespace(
            policy=policy, optimizer=None, epoch=1, global_step=1, run_dir=None, observations=obs
        )
    )
    assert stats is not None and stats["redo_linear2"] == expected
    with pytest.raises(ValueError, match="tau"):
        DormantReset(tau=-1)
    with pytest.raises(ValueError, match="interval"):
        DormantReset(interval=0)


@pytest.mark.slow
def test_redo_in_a_real_cartpole_run(tmp_path: Path) -> None:
    from pufferfiber.config.sections import load_config
    from pufferfiber.envs.registry import architecture_for, make_vecenv
    from pufferfiber.rl.trainer import Trainer

    cfg = load_config(
        "cartpole",
        {
            "train.total_timesteps": "3072",
            "train.device": "cpu",
            "train.checkpoint_interval": "100",
            "vec.num_workers": "1",
        },
    )
    vecenv = make_vecenv("cartpole", "serial", cfg.vec.num_envs)
    policy = Policy(architecture_for("cartpole", vecenv))
    trainer_ref: dict[str, object] = {}
    hook = DormantReset(
        lambda ctx: trainer_ref["t"].buffer.obs[:, :32],  # type: ignore[attr-defined]
        tau=0.5,
        interval=1,
        seed=0,
    )
    trainer = Trainer(cfg, vecenv, policy, tmp_path / "run", hooks=[hook])
    trainer_ref["t"] = trainer
    try:
        trainer.train()
    finally:
        trainer.close()
    lines = [json.loads(s) for s in (tmp_path / "run" / "redo.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in lines] == [1, 2, 3]
    assert all(0.0 <= f <= 1.0 for d in lines for f in d["dormant_fraction"].values())
    metrics = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["redo_lstm"] == lines[0]["reset"]["lstm"]
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())


# ---------------------------------------------------------------- --redo on the command line


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "demo.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


CLI_TINY = ["--mode", "train", "--env", "cartpole", "--train.batch-size", "512",
            "--train.minibatch-size", "128", "--vec.num-envs", "4",
            "--train.checkpoint-interval", "1"]  # fmt: skip


@pytest.mark.slow
def test_redo_runs_from_the_command_line_and_resumes(tmp_path: Path) -> None:
    """``--redo`` resets dormant units during training, logs them, and ``--resume`` continues
    with the run's stored settings and reset totals."""
    common = [*CLI_TINY, "--train.data-dir", str(tmp_path)]
    redo = ["--redo", "--redo.interval", "1", "--redo.tau", "0.6", "--redo.layers", "linear"]
    first = _demo(*common, "--train.total-timesteps", "1024", *redo)
    assert first.returncode == 0, first.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    saved = load_trainer_state(run)
    assert saved is not None
    assert list(saved["hooks"]) == ["DormantReset"]  # hook states are saved by name
    state = saved["hooks"]["DormantReset"]
    assert state["kind"] == "redo" and state["settings"]["tau"] == 0.6
    # without --redo now: the stored settings continue (and are said)
    resumed = _demo(*common, "--train.total-timesteps", "2048", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resume: ReDo continues with the run's settings" in resumed.stderr
    log = [json.loads(line) for line in (run / "redo.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert all(set(r["reset"]) == {"linear1"} and r["tau"] == 0.6 for r in log)
    after = load_trainer_state(run)
    assert after is not None
    totals = after["hooks"]["DormantReset"]["total_reset"]
    assert totals["linear1"] == sum(r["reset"]["linear1"] for r in log) > 0


@pytest.mark.slow
def test_break_and_redo_state_survive_resume_together(tmp_path: Path) -> None:
    """Both hooks are stored; a resume that names only one still restores the other, each
    with its own state."""
    common = [*CLI_TINY, "--train.data-dir", str(tmp_path)]
    both = ["--break-symmetry", "--break.interval", "1", "--break.maturity", "0",
            "--break.fiber-threshold", "1.0", "--redo", "--redo.interval", "2"]  # fmt: skip
    assert _demo(*common, "--train.total-timesteps", "1024", *both).returncode == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    resumed = _demo(
        *common, "--train.total-timesteps", "2048", "--resume", "--redo", "--redo.interval", "3"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "symmetry breaking continues" in resumed.stderr
    assert "redo.interval 3 (was 2) (given now)" in resumed.stderr
    saved = load_trainer_state(run)
    assert saved is not None
    assert list(saved["hooks"]) == ["SymmetryBreaker", "DormantReset"]  # each gets its own back
    assert sum(saved["hooks"]["SymmetryBreaker"]["total_broken"].values()) > 0
    epochs = [json.loads(x)["epoch"] for x in (run / "redo.jsonl").read_text().splitlines()]
    assert epochs == [2, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redo.tau", "0.2"], "--redo.tau needs --redo (ReDo is off)"),
        (["--redo", "--redo.tau", "-1"], "--redo: dormancy threshold tau must be >= 0"),
        (["--redo", "--redo.interval", "0"], "--redo: reset interval must be at least 1"),
        (["--redo", "--redo.layers", "conv"], "--redo.layers: no conv layer"),
    ],
)
def test_bad_redo_settings_are_one_line_errors(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d"
    code = cli.main([*CLI_TINY, "--train.data-dir", str(data), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not data.exists() or list(data.iterdir()) == []
