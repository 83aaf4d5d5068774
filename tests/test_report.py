"""``python -m pufferfiber report`` on a tiny real experiment made here (cartpole, a few epochs).

The experiment is made with ``demo.py`` as the guide says: an original run (checkpoints every
2 epochs, log.out, metrics.jsonl), then ``--collapse τ`` for τ = 0.3 and 1.0 at epoch 4, each
writing fibers.pkl and fidelity.json and resuming the collapsed model to epoch 8.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from pufferfiber.cli import report as report_cli
from pufferfiber.experiments import report
from pufferfiber.io.upstream_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
ENV = "cartpole"
COLLAPSE_EPOCH = 4
RESUME_TO = 8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _demo(data_dir: Path, stdout: Path, *extra: str) -> subprocess.Popen[str]:
    """``demo.py --mode train --env cartpole ... > stdout``: 6 epochs, a checkpoint every 2."""
    cmd = [sys.executable, "demo.py", "--mode", "train", "--env", ENV, "--train.data-dir",
           str(data_dir), "--train.total-timesteps", str(1024 * 6), "--train.checkpoint-interval",
           "2", "--train.device", "cpu", *extra]  # fmt: skip
    with open(stdout, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


def build_tiny_experiment(data_dir: Path, thresholds: tuple[float, ...] = (0.3, 1.0)) -> Path:
    """The guide's steps 1 and 2 on cartpole: train 6 epochs, then collapse epoch 4 at each τ
    and resume each collapsed model to epoch 8 (the collapses run side by side)."""
    _finish(_demo(data_dir, data_dir / "log.out"))
    collapses = [
        _demo(data_dir, data_dir / f"log_collapsed_{tau:g}.out", "--collapse", str(tau),
              "--collapse-epoch", str(COLLAPSE_EPOCH), "--collapse-until", str(RESUME_TO))
        for tau in thresholds
    ]  # fmt: skip
    for proc in collapses:
        _finish(proc)
    (run,) = [p for p in data_dir.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_experiment(tmp_path_factory.mktemp("experiments"))


def _args(**kw: object) -> argparse.Namespace:
    defaults = {"no_fibers": False, "flatten_colours": None, "quiet": True, "smooth": 3,
                "allow_pickle": False}  # fmt: skip
    return argparse.Namespace(**{**defaults, **kw})


def _timeline_available() -> bool:
    try:
        import pufferfiber.workflows.timeline  # noqa: F401
    except ImportError:
        return False
    return True


def _lines(fig: Figure) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every labelled line of every axes (subfigures included): label -> (x, y)."""
    out = {}
    for ax in fig.get_axes():
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out[line.get_label()] = (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
    return out


def _draw(data: report.ReportData) -> tuple[list[str], Figure]:
    fig = Figure()
    panels = report.report_panels(data)
    subs = fig.subfigures(len(panels), 1, squeeze=False).ravel()
    for sub, (_, _, draw) in zip(subs, panels, strict=True):
        draw(sub)
    return [name for name, _, _ in panels], fig


@pytest.mark.slow
def test_figures_hold_the_runs_series(tiny_run: Path) -> None:
    exp = report.find_experiment(tiny_run)
    assert [c.threshold for c in exp.collapses] == [0.3, 1.0]
    data = report.collect(exp, _args())
    names, fig = _draw(data)
    assert names[0] == "comparison" and names[-1] == "tradeoff"
    assert ("fibers" in names) == _timeline_available()
    lines = _lines(fig)

    original = read_metrics(tiny_run / "metrics.jsonl")
    x, y = lines["original (smoothed, 3)"]
    assert x.tolist() == [r.epoch for r in original]
    assert y[0] == pytest.approx(original[0].user_stats["episode_return"])
    for c in exp.collapses:
        resumed = read_metrics(c.resumed[0].run_dir / "metrics.jsonl")
        x, _ = lines[f"collapsed τ={c.threshold:g} @ {COLLAPSE_EPOCH} (smoothed, 3)"]
        # Our resumed runs count epochs on: drawn where they are, not shifted again.
        assert x.tolist() == [r.epoch for r in resumed] == list(range(5, RESUME_TO + 1))
        x, p = lines[f"collapsed model τ={c.threshold:g} @ {COLLAPSE_EPOCH}"]
        assert x[0] == COLLAPSE_EPOCH and p[0] == c.fibers["params_after"]  # type: ignore[index]
        assert x[-1] == RESUME_TO
    assert data.params_full == exp.collapses[0].fibers["params_before"]  # type: ignore[index]
    assert "full model" in lines
    if _timeline_available():
        _check_fibers_panel(fig, exp)


def _check_fibers_panel(fig: Figure, exp: report.Experiment) -> None:
    """One point per checkpoint of each run; at the collapsed checkpoint the counts are the
    collapse's own (same τ, same layers, same colouring)."""
    panels = {ax.get_title(): ax for ax in fig.get_axes() if ax.get_title() in ("linear1", "lstm")}
    assert set(panels) == {"linear1", "lstm"}
    for c in exp.collapses:
        kept = {layer["label"]: layer["n_fibers"] for layer in c.fibers["layers"]}  # type: ignore[index]
        for label, ax in panels.items():
            series = {line.get_label(): line for line in ax.get_lines()}
            original = series[f"original, τ={c.threshold:g}"]
            assert list(original.get_xdata()) == [2, 4, 6]
            assert original.get_ydata()[1] == kept[label]
            resumed = series[f"collapsed τ={c.threshold:g} @ {COLLAPSE_EPOCH}"]
            assert list(resumed.get_xdata()) == [6, 8]
            assert max(resumed.get_ydata()) <= kept[label]


def _all_axes(fig: Figure) -> list:  # type: ignore[type-arg]
    axes = list(fig.get_axes())
    return axes + [child for ax in axes for child in ax.child_axes]


def test_percent_axis_is_relative_to_the_full_model(tiny_run: Path) -> None:
    data = report.collect(report.find_experiment(tiny_run), _args(no_fibers=True))
    fig = Figure()
    report.report_panels(data)[0][2](fig)
    fig.savefig(io.BytesIO(), format="png")  # lays out the axes, sets the secondary limits
    axes = _all_axes(fig)
    (pct,) = [a for a in axes if "% of the full model" in a.get_ylabel()]
    (params,) = [a for a in axes if a.get_ylabel().startswith("parameters")]
    full = data.params_full
    assert full is not None and f"{full:,.0f}" in pct.get_ylabel()
    top = params.get_ylim()[1]
    assert top >= full
    assert pct.get_ylim()[1] == pytest.approx(100.0 * top / full)


def test_collapse_or_resumed_folder_reports_its_experiment(tiny_run: Path) -> None:
    for c in report.find_experiment(tiny_run).collapses:
        for inner in (c.path, c.resumed[0].run_dir):
            exp = report.find_experiment(inner)
            assert exp.run_dir.resolve() == tiny_run.resolve() and len(exp.collapses) == 2


@pytest.mark.slow
def test_cli_png_and_html(tiny_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    cmd = [sys.executable, "-m", "pufferfiber", "report", str(tiny_run), "-o", str(png)]
    proc = subprocess.run([*cmd, "--smooth", "3"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
    assert "report written to" in proc.stdout and "0.3" in proc.stdout

    html_path = tmp_path / "report.html"
    assert report_cli.main([str(tiny_run), "-o", str(html_path), "-q", "--no-fibers"]) == 0
    text = html_path.read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 2  # comparison + thresholds (fibers over time skipped)
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in images)
    exp = report.find_experiment(tiny_run)
    for c in exp.collapses:
        assert f"<td>{c.fibers['params_after']:,}</td>" in text  # type: ignore[index]
    assert sorted(tmp_path.iterdir()) == sorted([html_path, png])  # no temp files left


def test_upstream_fork_restarting_at_one_is_shifted(shared_run_copy: Path, tmp_path: Path) -> None:
    """An upstream log (epochs 0..54) as a resumed run of a collapse at 51 is shifted by +51."""
    resumed = shared_run_copy / "collapsed_model_thr_03_000051" / "beam_rider-0badcafe"
    resumed.mkdir(parents=True)
    shutil.copy(shared_run_copy / "log.out", resumed / "log_collapsed.out")
    exp = report.find_experiment(shared_run_copy)
    (c,) = exp.collapses
    assert (c.threshold, c.epoch, c.fibers) == (0.3, 51, None)
    data = report.collect(exp, _args(no_fibers=True))
    curves, notes = report.return_curves(data)
    original, collapsed = curves
    assert collapsed.epochs[0] == original.epochs[0] + 51
    assert notes and "+51" in notes[0]
    (_, row) = report.table_rows(data)
    assert row[report.TABLE_COLUMNS.index("epochs")] == "51–105 (log 0–54)"
    out = tmp_path / "upstream.png"
    assert report_cli.main([str(shared_run_copy), "-o", str(out), "-q", "--no-fibers"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_cli.main([str(tmp_path / "nope")]) == 2
    assert report_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("report: error:") for line in err)
    assert "does not exist" in err[0] and "no training run" in err[1]


@pytest.mark.slow
def test_bad_output_suffix_writes_nothing(shared_run_copy: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "pufferfiber", "report", str(shared_run_copy)]
    proc = subprocess.run(
        [*cmd, "-o", str(out_dir / "r.pdf")], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "must end in .png or .html" in proc.stderr
    assert list(out_dir.iterdir()) == []
    assert not (shared_run_copy / "report.png").exists()


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        report_cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("EXPERIMENT_DIR", "--output", "--smooth", "--flatten-colours", "--no-fibers",
                   "--dpi", "--quiet"):  # fmt: skip
        assert option in out
