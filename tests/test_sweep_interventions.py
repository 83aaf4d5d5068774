"""The sweep's intervention dimension (none / break / break-opfibers / redo): a tiny real sweep on
a local Ray with symmetry breaking during the original and the collapsed run, its summary,
trajectories and report, and the command line's checks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pufferfiber.cli.sweep import main as sweep_main
from pufferfiber.cli.sweep import spec_from_args
from pufferfiber.config.sections import load_config
from pufferfiber.experiments.sweep import (
    SPEC_NAME,
    TRAJECTORY_NAME,
    SweepSpec,
    prepare_out,
)
from pufferfiber.experiments.sweep_report import ArmSummary, fiber_turns, sentence

REPO = Path(__file__).resolve().parents[1]
TINY = ["--env", "cartpole", "--seeds", "1", "--collapse-epoch", "2", "--eval-episodes", "2",
        "--num-cpus", "2", "--train.total-timesteps", "4096",
        "--train.batch-size", "1024"]  # fmt: skip
BREAK = ["--interventions", "none,break", "--break.interval", "1", "--break.maturity", "0",
         "--break.fiber-threshold", "1.0", "--break.fraction", "1.0",
         "--train.checkpoint-interval", "1"]  # fmt: skip


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pufferfiber", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("isweep") / "s"
    proc = _run("sweep", *TINY, "--thresholds", "0.3", *BREAK, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[cartpole break seed 1] original: training" in proc.stdout
    return out


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.ray
@pytest.mark.slow
def test_interventions_cross_seeds_and_thresholds(sweep_dir: Path) -> None:
    rows = _rows(sweep_dir)
    assert sorted((r["intervention"], r["arm"]) for r in rows) == [
        ("break", "original"), ("break", "tau=0.3/weights/positions"),
        ("none", "original"), ("none", "tau=0.3/weights/positions"),
    ]  # fmt: skip
    for r in rows:
        run = Path(r["run_dir"])
        assert (run / "model_000004.pt").is_file() and float(r["train_seconds"]) > 0
        if r["intervention"] == "none":
            assert run.is_relative_to(sweep_dir / "cartpole" / "seed_1")  # the earlier layout
            assert r["units_edited"] == "0" and not (run / "breaking.jsonl").exists()
        else:  # breaking ran in the original and in the collapsed network's resumed run
            assert run.is_relative_to(sweep_dir / "cartpole" / "break" / "seed_1")
            log = [json.loads(x) for x in (run / "breaking.jsonl").read_text().splitlines()]
            assert int(r["units_edited"]) == sum(sum(x["broken"].values()) for x in log) > 0
        trajectory = json.loads((run / TRAJECTORY_NAME).read_text())
        assert trajectory["key"]["fiber_threshold"] == 1.0
        point = trajectory["points"][-1]
        assert [p["epoch"] for p in trajectory["points"]][-1] == 4
        assert set(point["fibers"]) == {"linear1", "lstm"}
        assert all(0 <= f <= 1 for f in point["dormant_fraction"].values())


@pytest.mark.ray
@pytest.mark.slow
def test_restart_trains_nothing_again_and_report_compares_with_none(sweep_dir: Path) -> None:
    before = {str(p): p.stat().st_mtime for p in sweep_dir.rglob("model_*.pt")}
    proc = _run("sweep", *TINY, "--thresholds", "0.3", *BREAK, "--out", str(sweep_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "original: training" not in proc.stdout and ": collapsing" not in proc.stdout
    assert before == {str(p): p.stat().st_mtime for p in sweep_dir.rglob("model_*.pt")}
    report = _run("report", str(sweep_dir))
    assert report.returncode == 0, report.stderr
    page = (sweep_dir / "report.html").read_text()
    assert "Δ final vs none" in page and "units edited" in page
    assert "break: LSTM fibers" in report.stdout  # the fiber trajectory, in words


def test_bad_intervention_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, message in (
        (["--interventions", "none,magic"], "--interventions must be among none, break"),
        (["--redo.tau", "0.1"], "--redo.tau needs --interventions redo"),
        (["--interventions", "break", "--break.fraction", "2"], "fraction must be in [0, 1]"),
        (["--interventions", "redo", "--redo.bogus", "1"], "unknown config key 'redo.bogus'"),
    ):
        out = tmp_path / "s"
        assert sweep_main([*TINY, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()


def test_intervention_options_reach_the_runs() -> None:
    options = ["--interventions", "break,break-opfibers,redo", "--break.fiber-threshold", "0.9",
               "--redo.tau", "0.05"]  # fmt: skip
    spec, _ = spec_from_args([*TINY, "--out", "x", *options])
    assert spec.intervention_settings("none") == {}
    assert spec.intervention_settings("break") == {
        "break.enabled": "true", "break.fiber_threshold": "0.9",
    }  # fmt: skip
    assert spec.intervention_settings("break-opfibers") == {
        "break.enabled": "true", "break.fiber_threshold": "0.9", "break.opfiber_threshold": "0.9",
    }  # fmt: skip
    assert spec.intervention_settings("redo") == {"redo.enabled": "true", "redo.tau": "0.05"}
    # the settings are what the runs' typed configuration is built from
    cfg = load_config("cartpole", spec.intervention_settings("break-opfibers"))
    assert cfg.breaking.enabled and cfg.breaking.opfiber_threshold == 0.9
    assert load_config("cartpole", spec.intervention_settings("redo")).redo.tau == 0.05
    assert (spec.fiber_threshold(), spec.dormancy_threshold()) == (0.9, 0.05)
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_sweep_of_the_earlier_format_still_continues(tmp_path: Path) -> None:
    """A sweep.json written before interventions existed is the same sweep as ``none``."""
    spec, _ = spec_from_args([*TINY, "--thresholds", "0.3", "--out", str(tmp_path / "s")])
    prepare_out(spec)
    old = json.loads((tmp_path / "s" / SPEC_NAME).read_text())
    del old["interventions"], old["intervention_options"]
    (tmp_path / "s" / SPEC_NAME).write_text(json.dumps(old))
    prepare_out(spec)  # no "holds a different sweep"


def test_sentence_and_fiber_turns_name_the_baseline(tmp_path: Path) -> None:
    def arm(name: str, diff: float, runs: list[Path]) -> ArmSummary:
        rows = [{"final_return": 5 + diff, "run_dir": str(r), "arm": "original"} for r in runs]
        return ArmSummary("e", name, 0.0, rows, (100.0, 0.0, 2), (0.0, 0.0, 2),
                          (5 + diff, 0.1, 2), (5.0, 0.1, 2), (diff, 0.1, 2), (diff, 0.1, 2),
                          intervention=name, baseline=name == "none")  # fmt: skip

    runs = []
    for i, fibers in enumerate(([100, 60, 40, 70], [100, 50, 30, 60])):
        run = tmp_path / f"r{i}"
        run.mkdir()
        points = [{"epoch": 3 * (k + 1), "fibers": {"lstm": f}} for k, f in enumerate(fibers)]
        (run / TRAJECTORY_NAME).write_text(json.dumps({"points": points}))
        runs.append(run)
    none, brk = arm("none", 0.0, runs), arm("break", -1.0, runs)
    text = sentence("e", [none, brk])
    assert "break (Δ -1.00 ± 0.10, 2 of 2 seeds below every seed of 'none')" in text
    assert text.endswith("below 'none'.")
    assert fiber_turns(brk) == (
        "break: LSTM fibers 100 at epoch 3 → 35 at epoch 9 → 65 at epoch 12 "
        "(falls, then rises again)"
    )
