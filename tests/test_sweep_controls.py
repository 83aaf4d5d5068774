"""``sweep --protocol guide,trained --controls scratch,random``: the trained-policy protocol and
the two controls that tell whether a collapse was worth it, on a real local Ray (cartpole)."""

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
from pufferfiber.core.ablation import hidden_widths
from pufferfiber.experiments.sweep import (
    SUMMARY_COLUMNS,
    SweepError,
    SweepSpec,
    check_out,
    equal_time_returns,
    extends,
    prepare_out,
    row_name,
    schedule,
)
from pufferfiber.io.checkpoints import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--env", "cartpole", "--targets", "0.5", "--criterion", "data", "--seeds", "1",
        "--collapse-epoch", "2", "--eval-episodes", "2", "--train.total-timesteps", "4096",
        "--train.batch-size", "1024"]  # fmt: skip
GRID = ["--protocol", "guide,trained", "--controls", "scratch,random", "--finetune-epochs", "2"]


def test_the_grid_carries_protocols_and_controls(tmp_path: Path) -> None:
    spec, _ = spec_from_args([*TINY, *GRID, "--out", str(tmp_path / "s")])
    assert spec.protocols == ("guide", "trained") and spec.controls == ("scratch", "random")
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    guide, trained = (schedule(spec, "cartpole", p) for p in spec.protocols)
    assert (guide.collapse_epoch, guide.until, guide.settings) == (2, 4, ())
    # the final epoch E = 4 fine-tuned K = 2 epochs, on a schedule of E + K epochs
    assert (trained.collapse_epoch, trained.until) == (4, 6)
    assert dict(trained.settings) == {"train.total_timesteps": str(6 * 1024)}
    default, _ = spec_from_args([*TINY, "--protocol", "trained", "--out", str(tmp_path / "t")])
    assert schedule(default, "cartpole", "trained").until == 5  # K: 10 % of 4 epochs, at least 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--protocol", "later"], "--protocol must be among guide, trained, got 'later'"),
        (["--controls", "nope"], "--controls must be among scratch, random, got 'nope'"),
        (["--controls", ","], "--controls must be among scratch, random"),
        (["--finetune-epochs", "2"], "--finetune-epochs needs --protocol trained"),
        (["--protocol", "trained", "--finetune-epochs", "0"], "--finetune-epochs must be at least"),
    ],
)
def test_bad_protocols_and_controls_are_one_line_exit_2(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sweep_main([*TINY, "--num-cpus", "1", "--out", str(tmp_path / "s"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def test_controls_need_collapsed_arms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in TINY if a not in ("--targets", "0.5")]
    assert sweep_main([*argv, "--controls", "scratch", "--out", str(tmp_path / "s")]) == 2
    assert "--controls need collapsed arms" in capsys.readouterr().err


def test_controls_at_names_the_arms_that_get_controls(tmp_path: Path) -> None:
    argv = [*TINY, *GRID, "--out", str(tmp_path / "s"), "--criterion", "data,weights"]
    argv[argv.index("0.5")] = "0.5,0.2"
    spec, _ = spec_from_args([*argv, "--controls-at", "data:0.2,0.5"])
    assert spec.control_sizes == ("data:0.2", "0.5")
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    got = {(a.criterion, a.target): spec.controls_of(a) for a in spec.arms}
    both = ("scratch", "random")
    assert got == {("data", 0.5): both, ("weights", 0.5): both, ("data", 0.2): both,
                   ("weights", 0.2): ()}  # fmt: skip
    assert all(spec_from_args(argv)[0].controls_of(a) == both for a in spec.arms)


def test_a_size_can_belong_to_one_criterion(tmp_path: Path) -> None:
    # e.g. the weight criterion only where it is asked for, without training its other sizes
    argv = [*TINY, "--out", str(tmp_path / "s"), "--criterion", "data,weights"]
    argv[argv.index("0.5")] = "data:0.5,0.2,weights:0.1"
    spec, _ = spec_from_args(argv)
    assert [(a.criterion, a.target) for a in spec.arms] == [
        ("data", 0.5), ("data", 0.2), ("weights", 0.2), ("weights", 0.1)]  # fmt: skip
    argv[argv.index("--targets")] = "--thresholds"
    argv[argv.index("data:0.5,0.2,weights:0.1")] = "0.3,weights:0.1"
    spec, _ = spec_from_args(argv)
    assert [(a.criterion, a.threshold) for a in spec.arms] == [
        ("weights", 0.1), ("data", 0.3), ("weights", 0.3)]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--targets", "weights:0.2"], "--targets weights:0.2: 'weights' is not a --criterion"),
        (["--targets", "data:1.5"], "--targets must be a fraction of the parameters in (0, 1]"),
    ],
)
def test_bad_criterion_sizes_are_one_line_exit_2(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--num-cpus", "1", "--out", str(tmp_path / "s"), *extra]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--controls-at", "0.3"], "--controls-at 0.3: no arm of the sweep has that size"),
        (["--controls-at", "weights:0.5"], "--controls-at weights:0.5: no arm"),
        (["--controls-at", "data:x"], "--controls-at takes F or CRITERION:F, got 'data:x'"),
    ],
)
def test_bad_controls_at_is_one_line_exit_2(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sweep_main([*TINY, *GRID, "--num-cpus", "1", "--out", str(tmp_path / "s"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    argv = [*TINY, "--controls-at", "0.5", "--out", str(tmp_path / "t")]
    assert sweep_main(argv) == 2 and "--controls-at needs --controls" in capsys.readouterr().err


def test_a_sweep_grows_by_seeds_arms_protocols_and_controls_only(tmp_path: Path) -> None:
    """Run again with more, the sweep is extended (its runs reused); anything else is refused."""
    out = ["--out", str(tmp_path / "s")]
    first, _ = spec_from_args([*TINY, "--controls", "random", *out])
    prepare_out(first)
    more = [a if a not in ("0.5", "1") else {"0.5": "0.5,0.2", "1": "3"}[a] for a in TINY]
    bigger, _ = spec_from_args([*more, *GRID, "--controls-at", "0.5", *out])
    assert extends(bigger, first) and not extends(first, bigger)
    prepare_out(bigger)
    assert SweepSpec.from_dict(json.loads((tmp_path / "s" / "sweep.json").read_text())) == bigger
    for argv in (
        [*TINY, *GRID, "--eval-episodes", "3"],  # a shared setting differs
        [*TINY, "--protocol", "trained"],  # the guide protocol is taken away
        [*more, *GRID, "--controls-at", "0.2"],  # 0.5 loses its controls
    ):
        spec, _ = spec_from_args([*argv, *out])
        with pytest.raises(SweepError, match="holds a different sweep"):
            check_out(spec)
    prepare_out(bigger)  # the same sweep again: nothing to do
    smaller, _ = spec_from_args([*more[:-2], *GRID, "--controls-at", "0.5", *out])
    with pytest.raises(SweepError):  # fewer seeds is not an extension of the bigger grid
        prepare_out(smaller)


def test_row_names() -> None:
    assert row_name({"protocol": "guide", "arm": "original", "control": ""}) == "original"
    row = {"protocol": "trained", "arm": "target=0.2/data/positions", "control": "random"}
    assert row_name(row) == "trained target=0.2/data/positions random"


def test_equal_time_return_is_taken_at_the_fastest_rows_wall_time(tmp_path: Path) -> None:
    """Two runs of their own: one finishes in 10 s, the other in 20 s; both are read at 10 s."""

    def run(name: str, seconds: list[float], returns: list[float]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        lines = [
            json.dumps({"epoch": e + 1, "uptime": t, "episode_return": v})
            for e, (t, v) in enumerate(zip(seconds, returns, strict=True))
        ]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return folder

    fast = run("fast", [2.0, 4.0, 6.0, 8.0, 10.0], [1, 2, 3, 4, 5])
    slow = run("slow", [4.0, 8.0, 9.5, 16.0, 20.0], [1, 2, 3, 4, 5])
    rows = [
        {"protocol": "guide", "collapse_epoch": "", "run_dir": str(p), "wall_seconds": w}
        for p, w in ((fast, 10.0), (slow, 20.0))
    ]
    equal_time_returns(fast, rows)
    assert rows[0]["equal_time_return"] == 5.0  # its own last epoch, in (9 s, 10 s]
    assert rows[1]["equal_time_return"] == 3.0  # the slow run's epoch at 9.5 s


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_sweep_with_protocols_and_controls(tmp_path: Path) -> None:
    """Every arm gets its row (both protocols, both controls); equal agent steps within a
    protocol; the controls have the collapsed arm's widths; ``report`` draws them all."""
    out = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "sweep", *TINY, *GRID, "--num-cpus", "2",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    arm = "target=0.5/data/positions"
    names = {(r["protocol"], r["arm"], r["control"]) for r in rows}
    assert names == {
        (p, a, c)
        for p in ("guide", "trained")
        for a, c in [("original", ""), (arm, ""), (arm, "scratch"), (arm, "random")]
    }
    by = {(r["protocol"], r["arm"], r["control"]): r for r in rows}
    for protocol, steps in (("guide", 4 * 1024), ("trained", 6 * 1024)):
        mine = [r for r in rows if r["protocol"] == protocol]
        assert {int(r["agent_steps"]) for r in mine} == {steps}
        assert all(float(r["sps"]) > 0 and float(r["wall_seconds"]) > 0 for r in mine)
        assert all(r["equal_time_return"] != "" for r in mine)
        collapsed = by[(protocol, arm, "")]
        for control in ("scratch", "random"):
            assert by[(protocol, arm, control)]["params"] == collapsed["params"]
    assert by[("trained", "original", "")]["collapse_epoch"] == "4"  # fine-tuned from epoch 4
    assert by[("guide", arm, "scratch")]["collapse_epoch"] == ""  # a run of its own from epoch 0
    assert by[("guide", arm, "random")]["kl"] != ""  # measured like a collapse
    seed = out / "cartpole" / "seed_1"
    (scratch_run,) = (seed / "controls").glob("guide-*/scratch/cartpole-*")
    first_epoch = list_checkpoints(scratch_run)[0][0]
    assert first_epoch <= 2  # trained from epoch 1, not continued from the original
    (random_dir,) = (seed / "controls").glob("trained-*/random")
    fidelity = json.loads((random_dir / "fidelity.json").read_text())
    assert fidelity["criterion"]["criterion"] == "random"
    (collapsed_model,) = seed.glob(
        "data-positions/cartpole-*/collapsed_model_target_50_000004/*.pt"
    )
    (random_model,) = random_dir.glob("model_*_collapsed.pt")
    widths = hidden_widths(load_checkpoint(collapsed_model).policy)
    assert hidden_widths(load_checkpoint(random_model).policy) == widths
    report = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "report", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    assert "trained protocol" in report.stdout and "vs scratch" in report.stdout
    page = (out / "report.html").read_text()
    assert "Δ final/eval vs scratch" in page and "Δ final/eval vs random" in page and "SPS" in page
    assert "trained target=0.5/data/positions random" in page and "<img" in page

    # the same command with one more size, controls kept at 0.5 only, extends the sweep
    kept = {p: p.stat().st_mtime_ns for p in seed.rglob("*.pt")}
    bigger = [a if a != "0.5" else "0.5,0.25" for a in TINY]
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "sweep", *bigger, *GRID, "--controls-at", "0.5",
         "--num-cpus", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extending the sweep" in proc.stdout
    with open(out / "summary.csv", newline="") as f:
        grown = {(r["protocol"], r["arm"], r["control"]) for r in csv.DictReader(f)}
    small = "target=0.25/data/positions"
    assert grown == names | {("guide", small, ""), ("trained", small, "")}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # no finished run trained again


def test_a_fine_tuned_rows_final_return_is_its_own_epochs() -> None:
    """The trained protocol's window (last 10 % of E + K epochs) would reach back into the
    original's epochs, which every arm shares; only the run's own epochs count."""
    from pufferfiber.experiments.runlog import final_return

    shared = [(e, 10.0) for e in range(1, 301)]
    own = [(e, 20.0) for e in range(301, 331)]
    assert final_return(shared + own, 330, since=300) == 20.0
    assert final_return(shared, 330, since=300) != final_return(shared, 330, since=300)  # NaN
    assert final_return(shared + own, 330) == (3 * 10.0 + 30 * 20.0) / 33
