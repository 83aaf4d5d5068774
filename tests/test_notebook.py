"""The guide's notebook runs top to bottom headless on a tiny real experiment and draws the figure.

The experiment follows the guide literally: ``demo.py --mode train > log.out`` then
``demo.py --mode train --collapse 0.3 > log_collapsed.out`` (cartpole, a few epochs), and the
notebook is given those two redirected logs plus the experiment and collapse folders.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from pufferfiber.io.fibersfile import load_fibers
from pufferfiber.io.logparse import parse_log, series

pytestmark = pytest.mark.notebook  # executes the guide notebook in a kernel

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "Collapsing_step_by_step_guide.ipynb"
PARAMETERS = ("LOG_ORIGINAL", "LOG_COLLAPSED", "EXPERIMENT_DIR", "COLLAPSED_DIR")
COLLAPSE_EPOCH, RESUME_TO = 4, 8
# Appended to the executed copy only: report every line of the final figure as JSON.
PROBE = """
import json
print("SERIES=" + json.dumps({
    line.get_label(): [[float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]]
    for ax in fig.get_axes() for line in ax.get_lines() if not line.get_label().startswith("_")
}))
"""


def _demo(data_dir: Path, stdout: Path, *extra: str) -> None:
    cmd = [sys.executable, "demo.py", "--mode", "train", "--env", "cartpole", "--train.data-dir",
           str(data_dir), "--train.total-timesteps", "6144", "--train.checkpoint-interval", "2",
           "--train.device", "cpu", *extra]  # fmt: skip
    with open(stdout, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Steps 1 and 2 of the guide; returns the logs and folders the notebook needs."""
    work = tmp_path_factory.mktemp("guide")
    experiments = work / "experiments"
    _demo(experiments, work / "log.out")
    _demo(experiments, work / "log_collapsed.out", "--collapse", "0.3", "--collapse-epoch",
          str(COLLAPSE_EPOCH), "--collapse-until", str(RESUME_TO))  # fmt: skip
    (run,) = list(experiments.iterdir())
    (collapsed,) = list(run.glob("collapsed_model_thr_03_*"))
    logs = {"LOG_ORIGINAL": work / "log.out", "LOG_COLLAPSED": work / "log_collapsed.out"}
    return {**logs, "EXPERIMENT_DIR": run, "COLLAPSED_DIR": collapsed,
            "FIGURE_PATH": work / "fig.png"}  # fmt: skip


def _execute(params: dict[str, Path]) -> nbformat.NotebookNode:
    """Run a copy of the notebook with ``params`` injected after its parameters cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {str(v)!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected))
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(REPO)}})  # fmt: skip
    client.execute()
    return nb


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def test_saved_notebook_is_clean_and_parameterised() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assigned = {t.id for node in ast.parse(code[0].source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}  # fmt: skip
    assert set(PARAMETERS) <= assigned
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5
    # it imports the installed package and points only to files of the repository
    assert not any("sys.path" in c.source for c in code)
    text = "\n".join(c.source for c in nb.cells)
    assert ".txt" not in text and "SPEC" not in text and "docs/method.md" in text
    assert (REPO / "docs" / "method.md").is_file()


@pytest.mark.slow
def test_notebook_runs_and_draws_the_comparison(guide_run: dict[str, Path]) -> None:
    nb = _execute(guide_run)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    figure = guide_run["FIGURE_PATH"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 1

    text = _stdout(nb)
    probe = json.loads(text.split("SERIES=", 1)[1])
    lines: dict[str, Any] = {k: (v[0], v[1]) for k, v in probe.items()}
    e0, r0 = series(parse_log(guide_run["LOG_ORIGINAL"]), "episode_return")
    e1, r1 = series(parse_log(guide_run["LOG_COLLAPSED"]), "episode_return")
    assert lines["original (smoothed, 5)"][0] == e0.tolist()
    assert lines["original (smoothed, 5)"][1][0] == pytest.approx(r0[0])
    # Our trainer's epochs are absolute (5..8 after a collapse at 4): not shifted.
    assert lines["collapsed τ=0.3 (smoothed, 5)"][0] == e1.tolist() == [5, 6, 7, 8]
    assert lines["collapsed τ=0.3 (smoothed, 5)"][1][0] == pytest.approx(r1[0])
    assert "not shifted" in text

    fibers = load_fibers(guide_run["COLLAPSED_DIR"] / "fibers.pkl")
    epochs, params = lines["collapsed model τ=0.3"]
    assert epochs == [COLLAPSE_EPOCH, 6, RESUME_TO]  # collapse, then each resumed checkpoint
    assert params[0] == fibers["params_after"] and max(params) <= fibers["params_after"]
    for layer in fibers["layers"]:
        assert f"{layer['size']:5d} units → {layer['n_fibers']:5d} fibers" in text
    assert (
        f"{100 * fibers['params_after'] / fibers['params_before']:.1f} % of the full model" in text
    )


@pytest.mark.slow
def test_missing_experiment_dir_is_named(tmp_path: Path) -> None:
    """A wrong EXPERIMENT_DIR says so, instead of "run step 2 first"."""
    from nbclient.exceptions import CellExecutionError

    missing = tmp_path / "experiments" / "cartpole-0123abcd"
    with pytest.raises(CellExecutionError) as failed:
        _execute({"EXPERIMENT_DIR": missing})
    assert failed.value.ename == "FileNotFoundError"
    assert failed.value.evalue.startswith(f"EXPERIMENT_DIR {missing} does not exist")
