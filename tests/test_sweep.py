"""``python -m pufferfiber sweep`` on a real local Ray (2 CPUs), its summary and report, and
``--vec ray``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pufferfiber.cli import main as cli
from pufferfiber.cli.sweep import main as sweep_main
from pufferfiber.cli.sweep import spec_from_args
from pufferfiber.core.criteria import CRITERIA
from pufferfiber.experiments.runlog import final_return, train_seconds, uptime_at
from pufferfiber.experiments.sweep import (
    RESULTS_NAME,
    SUMMARY_COLUMNS,
    cell_dir,
    cell_order,
    oversubscribed,
)
from pufferfiber.experiments.sweep_report import ArmSummary, mean_band, mean_ci, sentence

REPO = Path(__file__).resolve().parents[1]
TINY = ["--env", "cartpole", "--thresholds", "0.3", "--seeds", "2", "--collapse-epoch", "2",
        "--eval-episodes", "2", "--num-cpus", "2", "--train.total-timesteps", "4096",
        "--train.batch-size", "1024"]  # fmt: skip


def _sweep(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pufferfiber", "sweep", *TINY, "--out", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _checkpoint_times(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.rglob("model_*.pt")}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    proc = _sweep(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[cartpole seed 1] original: training" in proc.stdout  # progress is visible
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_sweep_writes_runs_and_summary(sweep_dir: Path) -> None:
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert sorted((r["seed"], r["arm"]) for r in rows) == [
        ("1", "original"), ("1", "tau=0.3/weights/positions"),
        ("2", "original"), ("2", "tau=0.3/weights/positions"),
    ]  # fmt: skip
    for r in rows:
        assert r["final_epoch"] == "4" and r["agent_steps"] == "4096" and r["eval_episodes"] == "2"
        assert float(r["eval_return"]) > 0 and float(r["final_return"]) > 0
        run = Path(r["run_dir"])
        assert (run / "model_000004.pt").is_file()
        if r["arm"] == "original":
            assert run.parent == sweep_dir / "cartpole" / f"seed_{r['seed']}"
        else:  # the guide's layout: the collapse folder inside the original run
            assert run.parent.name == "collapsed_model_thr_03_000002"
            assert 0 < float(r["params_pct"]) < 100 and float(r["kl"]) >= 0
            assert r["collapse_epoch"] == "2" and r["return_at_collapse"] != ""
    # seeds are really different runs
    seeds = {r["seed"]: r["final_return"] for r in rows if r["arm"] == "original"}
    assert json.loads((sweep_dir / "sweep.json").read_text())["seeds"] == [1, 2]
    assert len(seeds) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_restarting_continues_without_retraining(sweep_dir: Path) -> None:
    before = _checkpoint_times(sweep_dir)
    # a killed arm: its resumed run is gone; the restart redoes only that arm
    (arm_run,) = (sweep_dir / "cartpole" / "seed_2").glob("cartpole-*/collapsed_model_*/cartpole-*")
    for p in arm_run.glob("model_*.pt"):
        p.unlink()
    proc = _sweep(sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _checkpoint_times(sweep_dir)
    redone = str(arm_run.parent)  # that arm is collapsed and trained again
    kept = {p: t for p, t in before.items() if not p.startswith(redone)}
    assert all(after[p] == t for p, t in kept.items())  # nothing else was trained again
    assert "original: training" not in proc.stdout
    assert "[cartpole seed 2] tau=0.3/weights/positions: collapsing" in proc.stdout
    with open(sweep_dir / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.ray
@pytest.mark.slow
def test_report_aggregates_the_seeds(sweep_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "report", str(sweep_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = (sweep_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and "95 %" in page and "Δ final vs original" in page
    assert "paired over up to 2 seeds" in proc.stdout
    md = sweep_dir / "answer.md"
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "report", str(sweep_dir), "-o", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "![figures](answer.png)" in text and (sweep_dir / "answer.png").stat().st_size > 0
    assert "## cartpole" in text and "| env | arm |" in text and "tau=0.3/weights/positions" in text


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_130_and_says_how_to_go_on(tmp_path: Path) -> None:
    # Tune catches SIGINT itself and returns as if done: the sweep must not exit 0
    out, log = tmp_path / "s", tmp_path / "stdout.txt"
    long = ["--train.total-timesteps", "4000000"]  # cells that are still training at the Ctrl-C
    with open(log, "w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pufferfiber", "sweep", *TINY, *long, "--out", str(out)],
            cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "original: training" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "sweep: interrupted; 0 rows in" in err and "run the same command again" in err
    # Tune's own hint names an API the sweep's user does not call
    assert "Tuner.restore" not in err + log.read_text()
    assert (out / "sweep.json").is_file()  # the same command continues this sweep
    with open(out / "summary.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_more_cpus_than_cores_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    # cells sharing cores train slower, and their SPS columns measure the sharing
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert oversubscribed(None) == "" and oversubscribed(2) == ""
    assert oversubscribed(3).startswith("sweep: --num-cpus 3 is more than this machine's 2 cores")


def test_a_grown_sweep_starts_its_new_seeds_first(tmp_path: Path) -> None:
    # a new seed still trains its original; started last, it would train alone at the end
    spec, _ = spec_from_args([*TINY, "--seeds", "3", "--out", str(tmp_path)])
    assert [seed for _, _, seed in cell_order(spec)] == [1, 2, 3]  # a new sweep: seed-major
    for seed in (1, 2):
        results = cell_dir(spec, "cartpole", "none", seed) / RESULTS_NAME
        results.parent.mkdir(parents=True)
        results.write_text("[]")
    assert [seed for _, _, seed in cell_order(spec)] == [3, 1, 2]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--thresholds", "3"], "--thresholds must be between 0 and 2"),
        (["--criterion", "nope"], f"choose from {', '.join(CRITERIA)}"),
        (["--collapse-epoch", "9"], "--collapse-epoch (9) must be in 1..3"),
        (["--train.bogus", "1"], "unknown config key 'train.bogus'"),
        (["--env", "nope"], "unknown env 'nope'"),
        (["--seeds", "x"], "argument --seeds: invalid int value: 'x'"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--out", str(tmp_path / "s"), *extra]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "s").exists()


LOCAL = [a for i, a in enumerate(TINY) if "--num-cpus" not in TINY[max(i - 1, 0) : i + 1]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-address", "foo"], "--ray-address must be auto, HOST:PORT or ray://HOST:PORT"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray cluster answers"),
        (["--num-cpus", "-1"], "--num-cpus must be at least 1, got -1"),
        (["--num-cpus", "0"], "--num-cpus must be at least 1, got 0"),
        (["--ray-address", "auto", "--num-cpus", "2"], "--num-cpus sizes a local Ray"),
    ],
)
def test_bad_cluster_input_is_one_line_exit_2_within_seconds(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.perf_counter()
    assert sweep_main([*LOCAL, "--out", str(tmp_path / "s"), *extra]) == 2
    assert time.perf_counter() - start < 10  # Ray itself would wait minutes for a dead address
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_cell_larger_than_every_node_is_refused(tmp_path: Path) -> None:
    # in a process of its own: an in-process ray.init patches builtins.print for good
    proc = _sweep(tmp_path / "s", "--num-cpus", "1", "--cpus-per-cell", "4")
    assert proc.returncode == 2  # Tune would wait for ever for a 4-CPU slot
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep: error: --cpus-per-cell 4: no node"), proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.ray
def test_another_sweep_in_the_same_folder_is_refused(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # more seeds would extend the sweep; a different schedule or fewer seeds is another sweep
    assert sweep_main([*TINY, "--collapse-epoch", "3", "--out", str(sweep_dir)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert sweep_main([*TINY, "--seeds", "1", "--out", str(sweep_dir)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_a_resumed_runs_time_counts_every_stretch(tmp_path: Path) -> None:
    # the trainer's uptime restarts at a resumption (here after epoch 2): counting only the last
    # stretch made a resumed original look 2-3x faster than it trained (and its SPS with it)
    stretches = [(1, 1.0), (2, 2.0), (3, 0.5), (4, 1.5)]
    lines = [
        json.dumps(
            {"epoch": e, "global_step": 10 * e, "sps": 10.0, "uptime": t, "episode_return": 1.0}
        )
        for e, t in stretches
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert train_seconds(tmp_path) == 3.5
    assert [uptime_at(tmp_path, e) for e in (0, 2, 3, 4)] == [0.0, 2.0, 2.5, 3.5]


def test_statistics() -> None:
    mean, half, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(2.4841, abs=1e-3)  # t(0.975, 2) / √3
    assert mean_ci([5.0])[:2][0] == 5.0 and mean_ci([])[2] == 0
    points = [(e, float(e)) for e in range(1, 21)]
    assert final_return(points, 20) == pytest.approx(19.5)  # epochs 19 and 20
    original = ArmSummary("e", "original", 0.0, [{"final_return": 9.5}] * 3, (100.0, 0.0, 3),
                          (0.0, 0.0, 3), (10.0, 1.0, 3), (10.0, 1.0, 3), (0.0, 0.0, 3),
                          (0.0, 0.0, 3))  # fmt: skip
    same = ArmSummary("e", "tau=0.3", 0.3, [{"final_return": 10.0}] * 3, (50.0, 1.0, 3),
                      (0.01, 0.0, 3), (10.0, 1.0, 3), (10.0, 1.0, 3), (-0.5, 1.0, 3),
                      (0.0, 1.0, 3))  # fmt: skip
    worse = ArmSummary("e", "tau=0.5", 0.5, [{"final_return": 5.0}] * 3, (10.0, 1.0, 3),
                       (0.1, 0.0, 3), (5.0, 1.0, 3), (5.0, 1.0, 3), (-5.0, 1.0, 3),
                       (-5.0, 1.0, 3))  # fmt: skip
    assert same.verdict == "indistinguishable" and worse.verdict == "below"
    text = sentence("e", [original, same, worse])
    assert "tau=0.3 (50.0 % of the parameters, Δ -0.50 ± 1.00, 0 of 3 seeds below" in text
    assert "tau=0.5 (10.0 % of the parameters, Δ -5.00 ± 1.00, 3 of 3 seeds below" in text
    assert text.index("tau=0.3") < text.index("indistinguishable") < text.index("tau=0.5")
    assert text.endswith("below the original.")


# ---------------------------------------------------------------- --vec ray


@pytest.mark.ray
@pytest.mark.slow
def test_vec_ray_trains(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "demo.py", "--env", "cartpole", "--vec", "ray", "--vec.num-envs", "4",
         "--vec.num-workers", "2", "--train.batch-size", "512", "--train.minibatch-size", "128",
         "--train.total-timesteps", "1024", "--train.data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: epoch 2" in proc.stderr


@pytest.mark.ray
def test_vec_ray_refuses_an_asynchronous_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--env", "cartpole", "--vec", "ray", "--vec.num-envs", "4", "--vec.num-workers", "2",
            "--vec.env-batch-size", "2", "--train.data-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vec ray steps every env at once" in err
    assert list(tmp_path.iterdir()) == []


def test_band_counts_every_running_seed() -> None:
    """Seeds that finished no game in an epoch still count there (interpolated)."""
    epochs, mean, half = mean_band([{1: 0.0, 3: 2.0}, {1: 0.0, 2: 1.0, 3: 2.0}], window=1)
    assert epochs.tolist() == [1, 2, 3] and mean.tolist() == [0.0, 1.0, 2.0]
    assert half.tolist() == [0.0, 0.0, 0.0]  # the seeds agree everywhere


def test_band_leaves_out_epochs_fewer_than_half_the_seeds_reached() -> None:
    """A run longer than the others (epochs 4-5 of one seed in three) is not drawn there."""
    short = {1: 0.0, 2: 1.0, 3: 2.0}
    epochs, mean, _ = mean_band([short, dict(short), {**short, 4: 9.0, 5: 9.0}], window=1)
    assert epochs.tolist() == [1, 2, 3] and mean.tolist() == [0.0, 1.0, 2.0]
