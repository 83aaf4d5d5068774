"""``demo.py`` end to end on cartpole: train, log, checkpoints, resume, eval, collapse, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pufferfiber.cli import main as cli
from pufferfiber.io.checkpoints import list_checkpoints, load_checkpoint, load_trainer_state

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--train.batch-size",
    "512",
    "--train.minibatch-size",
    "128",
    "--vec.num-envs",
    "4",
    "--train.checkpoint-interval",
    "2",
]


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "demo.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_dirs(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real 3-epoch cartpole run through ``demo.py`` (stdout redirected, as in the guide)."""
    data = tmp_path_factory.mktemp("exp")
    proc = demo(
        "--mode",
        "train",
        "--env",
        "cartpole",
        "--train.data-dir",
        str(data),
        "--train.total-timesteps",
        "1536",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    return data, proc


@pytest.mark.slow
def test_train_writes_checkpoints_log_and_metrics(trained: tuple[Path, Any]) -> None:
    data, proc = trained
    (run,) = run_dirs(data)
    assert run.name.startswith("cartpole-") and len(run.name) == len("cartpole-") + 8
    assert [e for e, _ in list_checkpoints(run)] == [2, 3]
    assert (run / "trainer_state.pt").is_file()
    # stdout (the dashboard) has one complete block per epoch, no cursor codes
    assert proc.stdout.count("Agent Steps") == 3 and "\033[" not in proc.stdout
    for label in (
        "Environment",
        "SPS",
        "Epoch",
        "Uptime",
        "Remaining",
        "Evaluate",
        "Learn",
        "policy_loss",
        "explained_variance",
        "episode_return",
        "episode_length",
    ):
        assert label in proc.stdout
    assert (run / "log.out").read_text().count("Agent Steps") == 3
    stored = load_checkpoint(run / "model_000003.pt").config  # every section, for --resume
    assert stored["train"]["batch_size"] == 512 and stored["vec"]["num_envs"] == 4
    assert stored["break"]["enabled"] is False and stored["collapse"]["threshold"] == 0.0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["global_step"] for m in metrics] == [512, 1024, 1536]
    assert "run folder" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_continues_the_same_run(trained: tuple[Path, Any], capsys: Any) -> None:
    data, _ = trained
    code = cli.main(
        [
            "--env",
            "cartpole",
            "--resume",
            "--train.data-dir",
            str(data),
            "--train.total-timesteps",
            "2048",
            *TINY,
        ]
    )
    assert code == 0
    (run,) = run_dirs(data)
    assert [e for e, _ in list_checkpoints(run)] == [2, 3, 4]
    assert load_checkpoint(run / "model_000004.pt").global_step == 2048
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out.count("Agent Steps") == 1 and "resuming" in out.err


def test_eval_prints_mean_and_std(trained: tuple[Path, Any], capsys: Any) -> None:
    data, _ = trained
    assert (
        cli.main(
            [
                "--mode",
                "eval",
                "--env",
                "cartpole",
                "--train.data-dir",
                str(data),
                "--eval-episodes",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "return" in out and "±" in out and "over 3 episodes" in out


@pytest.mark.slow
def test_collapse_trains_the_collapsed_model_in_the_collapse_folder(
    trained: tuple[Path, Any], capsys: Any
) -> None:
    pytest.importorskip("pufferfiber.workflows.collapse")
    data, _ = trained
    (run,) = run_dirs(data)
    code = cli.main(
        [
            "--env",
            "cartpole",
            "--train.data-dir",
            str(data),
            "--collapse",
            "0.3",
            "--collapse-epoch",
            "1",
            "--collapse-until",
            "4",
            *TINY,
        ]
    )
    assert code == 0, capsys.readouterr().err
    folder = run / "collapsed_model_thr_03_000002"  # closest checkpoint to epoch 1
    assert (folder / "model_000002_collapsed.pt").is_file() and (folder / "fibers.pkl").is_file()
    (child,) = [p for p in folder.iterdir() if p.is_dir()]
    assert child.name.startswith("cartpole-")
    assert [e for e, _ in list_checkpoints(child)] == [4]
    assert (child / "log_collapsed.out").read_text().count("Agent Steps") == 2  # epochs 3, 4
    ckpt = load_checkpoint(child / "model_000004.pt")
    collapsed = load_checkpoint(folder / "model_000002_collapsed.pt")
    assert ckpt.arch == collapsed.arch and ckpt.global_step == 2048


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "cartpol"], "unknown env 'cartpol'; valid envs: cartpole"),
        (["--env", "cartpole", "--vec", "gpu"], "invalid choice: 'gpu'"),
        (["--env", "cartpole", "--train.batch-size", "1000"], "must be a multiple of"),
        (["--env", "cartpole", "--train.learning-rat", "1"], "unknown config key"),
        (["--env", "cartpole", "--colapse", "0.3"], "unrecognized argument '--colapse'"),
        (["--env", "cartpole", "--collapse", "2.5"], "threshold must be between 0 and 2"),
        (["--env", "cartpole", "--collapse", "-1"], "threshold must be between 0 and 2"),
        (
            ["--mode", "eval", "--env", "cartpole", "--eval-model-path", "nowhere.pt"],
            "checkpoint not found",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: Any) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("demo.py: error:")


def test_bad_files_and_dirs(tmp_path: Path, trained: tuple[Path, Any], capsys: Any) -> None:
    corrupt = tmp_path / "model_000001.pt"
    corrupt.write_bytes(b"not a checkpoint")
    blocked = tmp_path / "file"
    blocked.write_text("")
    (run,) = run_dirs(trained[0])
    cases = [
        (["--mode", "eval", "--env", "cartpole", "--eval-model-path", str(corrupt)], "corrupt"),
        (
            ["--mode", "eval", "--env", "pong", "--eval-model-path", str(run / "model_000002.pt")],
            "not 'pong'",
        ),
        (["--env", "cartpole", "--train.data-dir", str(blocked / "sub")], "cannot"),
        (
            ["--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path / "none")],
            "does not exist",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_process_errors_have_no_traceback(tmp_path: Path) -> None:
    proc = demo("--env", "cartpole", "--train.bogus", "1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key" in proc.stderr


@pytest.mark.slow
def test_multiprocessing_with_two_workers(tmp_path: Path) -> None:
    proc = demo(
        "--env",
        "cartpole",
        "--vec",
        "multiprocessing",
        "--vec.num-envs",
        "2",
        "--vec.num-workers",
        "2",
        "--vec.env-batch-size",  # asynchronous: one env per step, in whatever order is ready
        "1",
        "--train.bptt-horizon",
        "4",
        "--train.batch-size",
        "32",
        "--train.minibatch-size",
        "16",
        "--train.total-timesteps",
        "64",
        "--train.data-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    assert [e for e, _ in list_checkpoints(run)] == [2]
    assert proc.stdout.count("Agent Steps") == 2


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_explains_resume(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group: trainer and env workers."""
    argv = [
        "--env",
        "cartpole",
        "--vec",
        "multiprocessing",
        "--vec.num-envs",
        "4",
        "--vec.num-workers",
        "2",
        "--train.batch-size",
        "256",
        "--train.minibatch-size",
        "64",
        "--train.data-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "demo.py"), *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        metrics = None
        while time.time() < deadline:
            runs = list(tmp_path.glob("cartpole-*/metrics.jsonl"))
            if runs and runs[0].read_text().count("\n") >= 1:
                metrics = runs[0]
                break
            time.sleep(0.2)
        assert metrics is not None, "training never finished an epoch"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "resume with:" in err and "Traceback" not in err
    assert "--vec multiprocessing --resume" in err  # the printed command keeps the backend
    run = metrics.parent
    (epoch, path), *_ = list_checkpoints(run)
    state = load_trainer_state(run)
    assert epoch >= 1 and state is not None and state["epoch"] == epoch
    assert load_checkpoint(path).epoch == epoch


def test_ray_missing_is_a_clear_error_and_leaves_no_folder(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # a user without the optional extra
    assert cli.main(["--env", "cartpole", "--vec", "ray", "--train.data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vec ray needs Ray" in err
    assert list(tmp_path.iterdir()) == []


def test_upstream_pickle_needs_allow_pickle(
    shared_run: Path, capsys: Any, monkeypatch: Any
) -> None:
    upstream = str(shared_run / "model_000051.pt")
    argv = ["--mode", "eval", "--env", "beam_rider", "--eval-model-path", upstream]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-pickle" in err
    played: list[Any] = []

    def fake_play(policy: Any, env: str, episodes: int, **kw: Any) -> list[float]:
        played.append((policy, env, episodes))  # isolate the CLI from 18 s of BeamRider play
        return [1.0, 3.0]

    monkeypatch.setattr("pufferfiber.cli.main.play_episodes", fake_play)
    assert cli.main([*argv, "--allow-pickle", "--eval-episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "(epoch 51): return 2.00 ± 1.00 over 2 episodes" in out
    ((policy, env, episodes),) = played
    assert env == "beam_rider" and episodes == 2 and policy.parameter_count() == 3_948_202


@pytest.mark.slow
def test_break_symmetry_runs_from_the_command_line(tmp_path: Path) -> None:
    """``--break-symmetry`` reaches the trainer: breaks are logged and shown on the dashboard."""
    proc = demo(
        "--mode", "train", "--env", "cartpole", "--train.data-dir", str(tmp_path),
        "--train.total-timesteps", "3072", *TINY,
        "--break-symmetry", "--break.interval", "2", "--break.maturity", "0",
        "--break.fiber-threshold", "1.0", "--break.fraction", "1.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    log = [json.loads(line) for line in (run / "breaking.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [2, 4, 6]
    assert sum(sum(r["broken"].values()) for r in log) > 0  # τ = 1 finds redundancy
    assert "broken_" in proc.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--break-symmetry", "--break.fraction", "1.5"], "fraction"),
        (["--break-symmetry", "--break.layers", "conv9"], "conv9"),
    ],
)
@pytest.mark.slow
def test_bad_break_settings_are_one_line_errors(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    proc = demo("--env", "cartpole", "--train.data-dir", str(tmp_path), *TINY, *argv)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []  # no run folder left


@pytest.mark.slow
def test_resume_keeps_symmetry_breaking_state(tmp_path: Path) -> None:
    """Unit ages of ``--break-symmetry`` survive ``--resume`` (saved in trainer_state.pt)."""
    common = ["--mode", "train", "--env", "cartpole", "--train.data-dir", str(tmp_path), *TINY]
    breaking = ["--break-symmetry", "--break.interval", "1", "--break.maturity", "0",
                "--break.fiber-threshold", "1.0"]  # fmt: skip
    first = demo(*common, "--train.total-timesteps", "1024", *breaking)
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    saved = load_trainer_state(run)
    assert saved is not None
    (breaker_state,) = saved["hooks"].values()  # one hook, saved under its name
    assert breaker_state["born"] and sum(breaker_state["total_broken"].values()) > 0
    resumed = demo(*common, "--train.total-timesteps", "2048", "--resume", *breaking)
    assert resumed.returncode == 0, resumed.stderr
    after = load_trainer_state(run)
    assert after is not None and after["epoch"] == 4
    totals = after["hooks"]["SymmetryBreaker"]["total_broken"]
    log = [json.loads(line) for line in (run / "breaking.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    # totals continue from the first run's (epochs 1-2 broke units) instead of restarting at zero
    for layer, total in totals.items():
        assert total == sum(r["broken"].get(layer, 0) for r in log)


@pytest.mark.slow
def test_help_shows_the_chosen_envs_values() -> None:
    """``demo.py --env beam_rider --help`` shows what beam_rider runs with, not the base file."""
    proc = demo("--env", "beam_rider", "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    text = " ".join(proc.stdout.split())
    assert "--train.batch-size INT agent steps collected per epoch" in text
    start = text.index("--train.batch-size INT")
    assert text[start : text.index("--train.minibatch-size", start)].endswith("(default: 30720) ")
    for option in ("--break-symmetry", "--collapse TAU", "--collapse-epoch", "--env.frameskip",
                   "--criterion", "--flatten-colours", "--lstm-criterion", "--config"):  # fmt: skip
        assert option in text


@pytest.mark.slow
def test_pufferfiber_command_works_from_any_directory(tmp_path: Path) -> None:
    """``python -m pufferfiber train`` = ``demo.py --mode train``, outside the repository (the
    configs are package data); unknown commands are one line and exit code 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # as if installed
    cmd = [sys.executable, "-m", "pufferfiber"]
    train = [*cmd, "train", "--env", "cartpole", "--train.data-dir", "exp",
             "--train.total-timesteps", "512", *TINY]  # fmt: skip
    proc = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "exp")
    assert [e for e, _ in list_checkpoints(run)] == [1]
    bad = subprocess.run([*cmd, "train", "--mode", "eval"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("train: error: unrecognized argument")
    unknown = subprocess.run([*cmd, "trian"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert (
        "unknown command 'trian' (choose train, eval, collapse, report, sweep, export)"
        in unknown.stderr
    )
    usage = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert usage.returncode == 0 and "collapse" in usage.stdout and "sweep" in usage.stdout
    assert "export" in usage.stdout


@pytest.mark.slow
def test_resume_restores_symmetry_breaking_from_the_stored_config(tmp_path: Path) -> None:
    """A run's ``[break]`` section is stored with it: ``--resume`` alone continues breaking with
    those settings, and a ``--break.*`` given now replaces one and is reported."""
    common = ["--mode", "train", "--env", "cartpole", "--train.data-dir", str(tmp_path), *TINY]
    breaking = ["--break-symmetry", "--break.interval", "1", "--break.maturity", "0",
                "--break.fiber-threshold", "1.0"]  # fmt: skip
    first = demo(*common, "--train.total-timesteps", "512", *breaking)
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    assert load_checkpoint(run / "model_000001.pt").config["break"]["enabled"] is True
    resumed = demo(
        *common, "--train.total-timesteps", "1024", "--resume", "--break.fraction", "1.0"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "break.fraction 1.0 (was 0.5)" in resumed.stderr
    assert "symmetry breaking continues with the run's settings" in resumed.stderr
    stored = load_checkpoint(run / "model_000002.pt").config["break"]
    assert stored["interval"] == 1 and stored["fraction"] == 1.0 and stored["maturity"] == 0
    log = [json.loads(line) for line in (run / "breaking.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
