"""Fault injection: Ctrl-C at chosen points of an epoch, SIGKILL during a write, a full disk,
concurrent resumes. Every case checks that nothing is lost or silently changed: each
checkpoint's name, weights, optimizer state and step count agree with ``trainer_state.pt`` and
``metrics.jsonl``, no temporary file is left, and errors are one line with exit code 2.

Real subprocesses and real signals on cartpole with tiny budgets; the full-disk cases mount a
small tmpfs and skip (with the reason) where the machine does not allow mounting.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pufferfiber.config.sections import RunConfig, load_config
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.io import checkpoints as ck
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.trainer import Trainer, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 512 steps per epoch, 4 minibatches × 6 update epochs (cartpole's ini) = 24 Adam steps.
BATCH, UPDATES_PER_EPOCH = 512, 24
SMALL = [
    "--env", "cartpole", "--train.batch-size", str(BATCH), "--train.minibatch-size", "128",
    "--vec.num-envs", "4", "--train.checkpoint-interval", "1",
]  # fmt: skip


# ---------------------------------------------------------------------------------- helpers


def metrics_epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[str]:
    """Temporary files/folders of interrupted writes anywhere below ``folder``."""
    return sorted(str(p) for p in folder.rglob(".*") if p.name != ck.LOCK_NAME)


def assert_consistent(run: Path, batch: int = BATCH, updates: int = UPDATES_PER_EPOCH) -> int:
    """Name, epoch, steps, weights and optimizer state agree; returns the latest epoch."""
    found = ck.list_checkpoints(run)
    assert found, f"no checkpoint in {run}"
    for epoch, path in found:
        ckpt = ck.load_checkpoint(path)
        assert ckpt.epoch == epoch and ckpt.global_step == epoch * batch, path
    latest, path = found[-1]
    state = ck.load_trainer_state(run)
    assert state is not None
    assert state["epoch"] == latest and state["global_step"] == latest * batch
    assert state["checkpoint"] == path.name
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {float(latest * updates)}, steps  # no update beyond the saved epoch
    epochs = metrics_epochs(run)
    assert epochs == sorted(set(epochs)), epochs  # no epoch logged twice
    assert leftovers(run) == []
    return latest


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ck.load_checkpoint(path).policy.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "demo.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,  # Ctrl-C in a terminal signals the whole process group
    )  # fmt: skip


def wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended early: {proc.stderr.read() if proc.stderr else ''}"
            )
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@contextlib.contextmanager
def killed_at_exit(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def one_line_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if "error" in x]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def run_dirs(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("cartpole-"))


# -------------------------------------------------------- Ctrl-C at chosen points, in-process


def _config(total_epochs: int) -> RunConfig:
    return load_config(
        "cartpole",
        {"train.total_timesteps": str(total_epochs * BATCH), "train.checkpoint_interval": "1",
         "vec.num_envs": "4", "train.batch_size": str(BATCH), "train.minibatch_size": "128"},
    )  # fmt: skip


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # a real signal, as a terminal's Ctrl-C


# Where in epoch 4 the signal arrives, and which epoch must then be the saved one:
# during collection or the update the epoch is dropped (3); once the update is done the epoch
# finishes (hooks, checkpoint, dashboard, metrics line) and is saved as itself (4).
POINTS = {
    "collect": 3,
    "update-first-minibatch": 3,
    "update-middle": 3,
    "update-last-minibatch": 3,
    "hooks": 4,
    "checkpoint-write": 4,
    "dashboard": 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_at_a_chosen_point_of_an_epoch(
    point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(total_epochs=6)
    vecenv = make_vecenv("cartpole", "serial", cfg.vec.num_envs)
    torch.manual_seed(0)
    policy = Policy(architecture_for("cartpole", vecenv))
    in_epoch_4 = {"n": 0}

    def hook(ctx: Any) -> None:
        if point == "hooks" and ctx.epoch == 4:
            _interrupt()

    trainer = Trainer(
        cfg, vecenv, policy, tmp_path, hooks=[hook],
        dashboard=Dashboard(io.StringIO(), tmp_path / "log.out", live=False),
    )  # fmt: skip
    saved_3: dict[str, Any] = {}

    def at_epoch_4(name: str, n: int) -> None:
        if trainer.epoch == 3 and point == name:
            in_epoch_4["n"] += 1
            if in_epoch_4["n"] == n:
                saved_3["bytes"] = (tmp_path / "model_000003.pt").read_bytes()
                _interrupt()

    real_recv, real_step = vecenv.recv, trainer._minibatch_step
    real_show, real_save = trainer.dashboard.show, ck.save_checkpoint
    monkeypatch.setattr(vecenv, "recv", lambda: (at_epoch_4("collect", 20), real_recv())[1])
    step_at = {"update-first-minibatch": 1, "update-middle": 12, "update-last-minibatch": 24}

    def step(mb: Any) -> Any:
        out = real_step(mb)
        at_epoch_4(point, step_at.get(point, 0)) if point.startswith("update") else None
        return out

    def show(state: Any) -> None:
        real_show(state)
        if point == "dashboard" and trainer.epoch == 4:
            _interrupt()

    def save(path: Path, *a: Any, **kw: Any) -> Path:
        if point == "checkpoint-write" and kw["epoch"] == 4:
            _interrupt()
        return real_save(path, *a, **kw)

    monkeypatch.setattr(trainer, "_minibatch_step", step)
    monkeypatch.setattr(trainer.dashboard, "show", show)
    monkeypatch.setattr(ck, "save_checkpoint", save)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    trainer.close()
    expected = POINTS[point]
    assert stop.value.epoch == expected
    assert stop.value.path == tmp_path / ck.checkpoint_name(expected)
    assert assert_consistent(tmp_path) == expected
    assert metrics_epochs(tmp_path) == list(range(1, expected + 1))  # the metrics line survives
    if "bytes" in saved_3:  # the previous epoch's checkpoint was not rewritten
        assert (tmp_path / "model_000003.pt").read_bytes() == saved_3["bytes"]


# ----------------------------------------------------- Ctrl-C of a real process, then resume


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.35])
def test_ctrl_c_after_a_checkpoint_then_the_printed_resume_command(
    delay: float, tmp_path: Path
) -> None:
    """The issue's case: SIGINT shortly after ``model_000003.pt`` appears (during epoch 4)."""
    argv = [sys.executable, str(REPO / "demo.py"), *SMALL, "--train.data-dir", str(tmp_path),
            "--train.total-timesteps", str(8 * BATCH),
            "--train.learning-rate", "0.003"]  # fmt: skip
    with killed_at_exit(spawn(argv)) as proc:
        wait_for(lambda: list(tmp_path.glob("cartpole-*/model_000003.pt")), proc)
        (run,) = run_dirs(tmp_path)
        before = weights(run / "model_000003.pt")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    latest = assert_consistent(run)
    assert same_weights(weights(run / "model_000003.pt"), before)
    assert latest >= 3 and metrics_epochs(run) == list(range(1, latest + 1))
    (command,) = [x.split("resume with: ", 1)[1] for x in err.splitlines() if "resume with" in x]
    assert "--vec serial" in command
    resume = shlex.split(command)
    assert resume[:2] == ["python", "demo.py"]
    done = subprocess.run(
        [sys.executable, str(REPO / "demo.py"), *resume[2:]], cwd=REPO, capture_output=True,
        text=True, timeout=180, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the run's own settings came back: batch, interval, lr and the 8-epoch schedule
    assert assert_consistent(run) == 8
    assert [e for e, _ in ck.list_checkpoints(run)] == list(range(1, 9))
    assert ck.load_checkpoint(run / "model_000008.pt").config["train"]["learning_rate"] == 0.003
    assert metrics_epochs(run) == list(range(1, 9))


@pytest.mark.slow
def test_resume_keeps_the_runs_settings_and_reports_overrides(tmp_path: Path) -> None:
    """Item 2: a run started with non-default settings resumes with them, not the defaults."""
    first = demo(*SMALL, "--train.data-dir", str(tmp_path), "--train.learning-rate", "1e-3",
                 "--train.total-timesteps", str(2 * BATCH))  # fmt: skip
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    # no settings given: the run is already complete under its own schedule
    same = demo("--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path))
    assert same.returncode == 0 and "already finished at epoch 2" in same.stderr, same.stderr
    longer = demo("--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path),
                  "--train.total-timesteps", str(4 * BATCH))  # fmt: skip
    assert longer.returncode == 0, longer.stderr
    (line,) = [x for x in longer.stderr.splitlines() if x.startswith("resume:")]
    assert f"train.total_timesteps {4 * BATCH} (was {2 * BATCH})" in line
    assert [e for e, _ in ck.list_checkpoints(run)] == [1, 2, 3, 4]  # interval 1 kept
    ckpt = ck.load_checkpoint(run / "model_000004.pt")
    assert ckpt.global_step == 4 * BATCH  # batch 512 kept (the default is 1024)
    assert ckpt.config["train"]["learning_rate"] == 1e-3 and ckpt.config["vec"]["num_envs"] == 4
    assert_consistent(run)


# ------------------------------------------------------------------ SIGKILL during a write


BLOCK_FSYNC = """
import os, sys, time
calls = [0]
real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        print("BLOCKED", file=sys.stderr, flush=True)
        time.sleep(600)
    real(fd)
os.fsync = fsync
from pufferfiber.cli.main import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("fsync", "stale_prefix", "warning"),
    [
        # fsyncs: epoch 1 checkpoint + state, epoch 2 checkpoint + state, epoch 3 checkpoint...
        (5, ".model_000003.pt.", None),
        # ... and epoch 3's optimizer state: model_000003.pt exists without its state
        (6, ".trainer_state.pt.", "model_000003.pt has no saved optimizer state"),
    ],
)
@pytest.mark.slow
def test_sigkill_during_a_write_then_resume(
    fsync: int, stale_prefix: str, warning: str | None, tmp_path: Path
) -> None:
    """Killed while a file of epoch 3 is half-way (written, not yet renamed)."""
    args = [*SMALL, "--train.data-dir", str(tmp_path), "--train.total-timesteps", str(4 * BATCH)]
    proc = spawn([sys.executable, "-c", BLOCK_FSYNC, str(fsync), *args])
    with killed_at_exit(proc):
        wait_for(lambda: proc.stderr is not None and "BLOCKED" in proc.stderr.readline(), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (run,) = run_dirs(tmp_path)
    stale = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(stale_prefix)
    assert (run / "model_000003.pt").exists() == (warning is not None)
    resumed = demo("--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "from model_000002.pt" in resumed.stderr
    assert warning is None or warning in resumed.stderr
    assert assert_consistent(run) == 4  # the stale temporary file is gone too


# ------------------------------------------------------------------------- concurrent resumes


@pytest.mark.slow
def test_a_second_resume_of_a_run_in_use_is_refused(tmp_path: Path) -> None:
    first = demo(*SMALL, "--train.data-dir", str(tmp_path), "--train.total-timesteps", str(BATCH))
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    resume = [sys.executable, str(REPO / "demo.py"), "--env", "cartpole", "--resume",
              "--train.data-dir", str(tmp_path),
              "--train.total-timesteps", str(60 * BATCH)]  # fmt: skip
    with killed_at_exit(spawn(resume)) as a:
        wait_for(lambda: len(metrics_epochs(run)) >= 2, a)
        second = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, env=ENV)
        one_line_error(second, "is in use by another process")
        os.killpg(a.pid, signal.SIGKILL)  # the kernel drops the lock with the process
        a.wait(timeout=30)
    killed_at = max(e for e, _ in ck.list_checkpoints(run))
    third = demo("--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path),
                 "--train.total-timesteps", str((killed_at + 1) * BATCH))  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert assert_consistent(run) == killed_at + 1
    assert metrics_epochs(run)[-1] == killed_at + 1


# --------------------------------------------------------------------------------- full disk


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}): full-disk cases not tried")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): not tried")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.mark.slow
def test_disk_full_before_the_first_checkpoint_leaves_no_run_folder(small_disk: Path) -> None:
    fill(small_disk, leave=64 * 1024)
    proc = demo(*SMALL, "--train.data-dir", str(small_disk / "exp"),
                "--train.total-timesteps", str(2 * BATCH))  # fmt: skip
    one_line_error(proc, "disk full")
    assert run_dirs(small_disk / "exp") == [] and leftovers(small_disk) == []


@pytest.mark.slow
def test_disk_full_mid_run_keeps_checkpoint_and_state_consistent(small_disk: Path) -> None:
    data = small_disk / "exp"
    proc = demo(*SMALL, "--train.data-dir", str(data), "--train.total-timesteps", str(20 * BATCH))
    one_line_error(proc, "disk full")
    (run,) = run_dirs(data)
    latest = assert_consistent(run)
    assert 1 <= latest < 20
    # with room again, the run resumes where it stopped and finishes its own schedule
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    resumed = demo("--env", "cartpole", "--resume", "--train.data-dir", str(data))
    assert resumed.returncode == 0, resumed.stderr
    assert assert_consistent(run) == 20


@pytest.mark.slow
def test_disk_full_for_collapse_out_and_report_output(small_disk: Path, tmp_path: Path) -> None:
    from pufferfiber.cli.main import collapse_main
    from pufferfiber.cli.report import main as report_main

    trained = demo(*SMALL, "--train.data-dir", str(tmp_path / "exp"),
                   "--train.total-timesteps", str(2 * BATCH))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    (run,) = run_dirs(tmp_path / "exp")
    fill(small_disk, leave=16 * 1024)
    out = small_disk / "collapsed"
    fast = ["--episodes", "0", "--fidelity-batch", "2", "--fidelity-steps", "8"]
    code = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "collapse", str(run / "model_000002.pt"), "-t",
         "0.3", "--out", str(out), *fast], cwd=REPO, capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    one_line_error(code, "disk full")
    assert not out.exists() and leftovers(small_disk) == []
    assert collapse_main([str(run / "model_000002.pt"), "-t", "0.3", *fast]) == 0
    report = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "report", str(run), "-q", "--no-fibers", "-o",
         str(small_disk / "report.png")], cwd=REPO, capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    one_line_error(report, "disk full")
    assert not (small_disk / "report.png").exists() and leftovers(small_disk) == []
    assert report_main([str(run), "-q", "--no-fibers"]) == 0  # the run itself is intact


@pytest.mark.slow
def test_resume_without_break_flags_continues_the_runs_symmetry_breaking(tmp_path: Path) -> None:
    breaking = ["--break-symmetry", "--break.interval", "1", "--break.maturity", "0",
                "--break.fiber-threshold", "1.0"]  # fmt: skip
    first = demo(*SMALL, "--train.data-dir", str(tmp_path), "--train.total-timesteps", str(BATCH),
                 *breaking)  # fmt: skip
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    resumed = demo("--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path),
                   "--train.total-timesteps", str(2 * BATCH))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "symmetry breaking continues with the run's settings" in resumed.stderr
    log = [json.loads(line) for line in (run / "breaking.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert_consistent(run)


def test_metrics_line_on_a_full_disk_is_cut_off_whole(small_disk: Path) -> None:
    from pufferfiber.rl.sinks import append_line as _append_line

    path = small_disk / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n')
    fill(small_disk, leave=0)
    with pytest.raises(ck.CheckpointError, match="disk full"):
        _append_line(path, json.dumps({"epoch": 2, "pad": "x" * 100_000}) + "\n")
    assert path.read_text() == '{"epoch": 1}\n'  # no half line
