"""``python -m pufferfiber report EXPERIMENT_DIR``: plot an experiment's original vs collapsed runs.

An experiment folder (the guide's layout) is ``experiments/<env>-<id8>/`` with the original
run's checkpoints and ``log.out`` / ``metrics.jsonl``, plus ``collapsed_model_thr_TT_EEEEEE/``
folders, each holding ``fibers.pkl``, ``fidelity.json`` and the resumed run ``<env>-<id8>/``.
This module finds all of them, reads each run's episode returns, computes the fibers of every
checkpoint (cached by :mod:`pufferfiber.workflows.timeline`, shown with a progress bar) and draws:

1. episode return of the original run and of each collapsed run (a resumed run whose epochs
   restart below its collapse epoch is shifted by it, as upstream forks do; ours are absolute),
   with the collapsed model's parameter count on a second axis, in % of the FULL model;
2. fibers per layer over time;
3. with two or more thresholds: parameters vs return vs KL per τ.

``-o FILE.png`` stacks the figures in one image; ``-o FILE.html`` embeds them (base64) with a
table of the numbers. Files are written atomically.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pufferfiber.experiments import plots
from pufferfiber.io.atomic import atomic_write_bytes, folder_writable
from pufferfiber.io.runfiles import (
    COLLAPSE_DIR_RE,
    FIBERS,
    FIDELITY,
    LOG,
    LOG_NAMES,
    METRICS,
    REPORT_PNG,
    RETURN_KEY,
    RUN_DIR_RE,
)
from pufferfiber.io.schemas import FibersHeader, Fidelity, SchemaError, read_fidelity
from pufferfiber.io.upstream_log import EpochRecord, LogParseError, parse_log, read_metrics, series

RUN_NAME = RUN_DIR_RE
COLLAPSE_NAME = COLLAPSE_DIR_RE
# Dashboard copies (LOG_NAMES, most specific first); metrics.jsonl is preferred over all of them
# because it holds full-precision numbers and untruncated names.
METRICS_NAME = METRICS
MAX_DPI = 1200  # a 3-panel figure at 1200 dpi is already ~100 MB of pixels


class ReportError(Exception):
    """A user-facing problem with the experiment folder or the output path (one line)."""


# ---------------------------------------------------------------- discovery


@dataclass
class RunHistory:
    """A run's per-epoch records and the file they came from."""

    run_dir: Path
    source: Path
    records: list[EpochRecord]

    def returns(self) -> tuple[np.ndarray, np.ndarray]:
        return series(self.records, RETURN_KEY)


@dataclass
class CollapseFolder:
    """One ``collapsed_model_thr_TT_EEEEEE`` folder and the runs resumed from it."""

    path: Path
    threshold: float
    epoch: int
    fibers: dict[str, Any] | None
    fidelity: Fidelity | None
    resumed: list[RunHistory] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"τ={self.threshold:g} @ {self.epoch}"


@dataclass
class Experiment:
    """The original run and its collapse folders."""

    run_dir: Path
    env: str
    history: RunHistory | None
    collapses: list[CollapseFolder]


def _has_checkpoints(path: Path) -> bool:
    from pufferfiber.io.checkpoints import list_checkpoints

    return bool(list_checkpoints(path))


def _is_run(path: Path) -> bool:
    return path.is_dir() and (
        _has_checkpoints(path)
        or (path / METRICS_NAME).is_file()
        or any((path / n).is_file() for n in LOG_NAMES)
    )


def load_history(run_dir: Path) -> RunHistory | None:
    """A run's history: ``metrics.jsonl`` if readable, else its dashboard log; None if neither."""
    for path in _history_files(run_dir):
        try:
            records = read_metrics(path) if path.suffix == ".jsonl" else parse_log(path)
        except (LogParseError, OSError, UnicodeDecodeError):
            continue
        return RunHistory(run_dir, path, records)
    return None


def _history_files(run_dir: Path) -> list[Path]:
    candidates = [run_dir / METRICS_NAME, *(run_dir / n for n in LOG_NAMES)]
    candidates += sorted(p for p in run_dir.glob("*.out") if p not in candidates)
    return [p for p in candidates if p.is_file()]


def _why_no_history(run_dir: Path) -> str:
    """Why :func:`load_history` found nothing: no file, or files it could not parse."""
    found = _history_files(run_dir)
    if not found:
        return f"no {METRICS_NAME} or {LOG}"
    reasons = []
    for path in found:
        try:
            read_metrics(path) if path.suffix == ".jsonl" else parse_log(path)
        except (LogParseError, OSError, UnicodeDecodeError) as e:
            reasons.append(f"{path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return "; ".join(reasons)[:300] or f"no episode returns in {', '.join(p.name for p in found)}"


def _threshold_from_name(tt: str) -> float:
    """``03`` → 0.3, ``10`` → 1.0, ``025`` → 0.25: the digits are τ with one integer digit."""
    return int(tt) / 10 ** (len(tt) - 1)


def _read_fibers(path: Path) -> dict[str, Any] | None:
    """``fibers.pkl`` if it loads and its header reads (see :class:`FibersHeader`), else None."""
    if not path.is_file():
        return None
    from pufferfiber.io.fibersfile import FibersFileError, load_fibers

    try:
        fibers = load_fibers(path)
        FibersHeader.from_dict(fibers, path)
    except (FibersFileError, SchemaError) as e:
        print(f"report: warning: {e}; using the folder name instead", file=sys.stderr)
        return None
    return fibers


def read_collapse_folder(path: Path) -> CollapseFolder:
    """Threshold and epoch from ``fibers.pkl`` (or the folder name), plus the resumed runs."""
    m = COLLAPSE_NAME.match(path.name)
    assert m is not None
    fibers = _read_fibers(path / FIBERS)
    if fibers:
        threshold = float(fibers["threshold"])
    else:  # a size target's folder does not name its τ
        threshold = _threshold_from_name(m["tt"]) if m["tt"] else float("nan")
    epoch = int(fibers["epoch"]) if fibers else int(m["epoch"])
    folder = CollapseFolder(path, threshold, epoch, fibers, read_fidelity(path / FIDELITY))
    for run in sorted(p for p in path.iterdir() if p.is_dir() and RUN_NAME.match(p.name)):
        history = load_history(run)
        if history is not None:
            folder.resumed.append(history)
    return folder


def find_experiment(path: Path) -> Experiment:
    """Resolve EXPERIMENT_DIR: a run folder, or a folder of runs (the newest one is used).

    Raises:
        ReportError: nothing that looks like a training run is there.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"experiment folder {path} does not exist")
    path = _original_run_of(path)
    if not _is_run(path) and not _collapse_dirs(path):
        runs = [p for p in path.iterdir() if RUN_NAME.match(p.name) and _is_run(p)]
        if not runs:
            raise ReportError(
                f"{path} holds no training run (no model_*.pt, {METRICS_NAME} or {LOG})"
            )
        path = max(runs, key=lambda p: p.stat().st_mtime)
        print(f"report: using the newest run {path} (pass a run folder to choose)", file=sys.stderr)
    m = RUN_NAME.match(path.name)
    collapses = [read_collapse_folder(p) for p in _collapse_dirs(path)]
    collapses.sort(key=lambda c: (c.threshold, c.epoch))
    env = m["env"] if m else next((str(c.fibers["env"]) for c in collapses if c.fibers), "run")
    return Experiment(path, env, load_history(path), collapses)


def _original_run_of(path: Path) -> Path:
    """A collapse folder, or a run resumed inside one, belongs to the run above it."""
    resolved = path.resolve()
    for candidate in (resolved, resolved.parent):
        if COLLAPSE_NAME.match(candidate.name):
            print(f"report: reporting the experiment {candidate.parent}", file=sys.stderr)
            return candidate.parent
    return path


def _collapse_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and COLLAPSE_NAME.match(p.name))


# ---------------------------------------------------------------- numbers for the figures


def shift_for(history: RunHistory, collapse_epoch: int) -> int:
    """Epochs to add to a resumed run: its collapse epoch if it restarted below it, else 0."""
    epochs = [r.epoch for r in history.records]
    return collapse_epoch if epochs and min(epochs) < collapse_epoch else 0


@dataclass(frozen=True)
class TimelineSettings:
    """How fibers over time are computed: as the collapse did, unless the user overrides."""

    flatten_colours: str | None = None
    allow_pickle: bool = False
    show_progress: bool = True


def _collapsed_layers(c: CollapseFolder) -> list[str] | None:
    """The layers the collapse merged (so sizes over time compare like with like)."""
    if not c.fibers:
        return None
    chosen = [str(layer["label"]) for layer in c.fibers["layers"] if layer.get("collapsed")]
    return chosen or None


def _fibers_timelines(
    exp: Experiment, settings: TimelineSettings
) -> dict[tuple[Path, float], list[dict[str, Any]]]:
    """Fibers over time of the original run and each resumed run, per threshold.

    A run whose checkpoints cannot be read (e.g. upstream pickles without ``--allow-pickle``)
    is left out with a warning; the rest of the report still comes out.
    """
    from pufferfiber.workflows.timeline import fibers_over_time

    out: dict[tuple[Path, float], list[dict[str, Any]]] = {}
    with _progress(settings.show_progress) as bar:
        for c in exp.collapses:
            colours = settings.flatten_colours or str(
                (c.fibers or {}).get("flatten_colours", "positions")
            )
            for run_dir in [exp.run_dir, *(h.run_dir for h in c.resumed)]:
                if (run_dir, c.threshold) in out or not _has_checkpoints(run_dir):
                    continue
                name = f"fibers τ={c.threshold:g} {_short(run_dir, exp.run_dir)}"
                try:
                    out[(run_dir, c.threshold)] = fibers_over_time(
                        run_dir, c.threshold, flatten_colours=colours, layers=_collapsed_layers(c),
                        allow_pickle=settings.allow_pickle, progress=bar(name),
                    )  # fmt: skip
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # one unreadable run must not cost the whole report
                    print(f"report: warning: {name} skipped: {e}", file=sys.stderr)
    return out


def _short(run_dir: Path, root: Path) -> str:
    return "original" if run_dir == root else str(run_dir.relative_to(root))


class _progress:
    """Rich progress bars on stderr; ``bar(name)`` gives a ``progress(done, total, epoch)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._rich: Any = None

    def __enter__(self) -> Callable[[str], Callable[[int, int, int], None] | None]:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._rich = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._rich.start()
        return self._task

    def _task(self, name: str) -> Callable[[int, int, int], None] | None:
        if self._rich is None:
            return None
        task = self._rich.add_task(name, total=None)

        def update(done: int, total: int, epoch: int) -> None:
            self._rich.update(task, completed=done, total=total, description=f"{name} ({epoch})")

        return update

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            for task in self._rich.tasks:  # the callback fires before each checkpoint
                self._rich.update(task.id, completed=task.total)
            self._rich.stop()


def _params_full(exp: Experiment, timelines: dict[tuple[Path, float], list[dict]]) -> float | None:
    """Parameters of the full original model: from the fibers files, else the timeline."""
    for c in exp.collapses:
        if c.fibers and c.fibers.get("params_before"):
            return float(c.fibers["params_before"])
    for (run_dir, _), entries in timelines.items():
        if run_dir == exp.run_dir and entries:
            return float(entries[0]["params_full"])
    return None


def _return_at_collapse(c: CollapseFolder) -> float:
    ret = c.fidelity.return_mean if c.fidelity else None
    return math.nan if ret is None else ret


def kl_of(c: CollapseFolder) -> float:
    return c.fidelity.kl if c.fidelity else math.nan


def final_return(history: RunHistory | None, window: int) -> float:
    """Mean return over the last ``window`` epochs that report one (NaN if none)."""
    if history is None:
        return math.nan
    _, values = history.returns()
    return float(np.mean(values[-window:])) if values.size else math.nan


@dataclass
class ReportData:
    """Everything the figures and the table show."""

    exp: Experiment
    params_full: float | None
    timelines: dict[tuple[Path, float], list[dict[str, Any]]]
    smooth_window: int


def return_curves(data: ReportData) -> tuple[list[plots.Curve], list[str]]:
    """Return curves at absolute epochs, and a note for each shifted one."""
    exp = data.exp
    curves: list[plots.Curve] = []
    notes: list[str] = []
    if exp.history is not None:
        e, v = exp.history.returns()
        curves.append(plots.Curve("original", e, v, plots.COLOURS[0]))
    shifts: set[int] = set()
    for i, c in enumerate(exp.collapses):
        colour = plots.COLOURS[(i + 1) % len(plots.COLOURS)]
        for h in c.resumed:
            e, v = h.returns()
            shift = shift_for(h, c.epoch)
            if shift:
                shifts.add(shift)
            curves.append(plots.Curve(f"collapsed {c.label}", e + shift, v, colour))
    if shifts:
        by = ", ".join(f"+{s}" for s in sorted(shifts))
        notes.append(
            f"collapsed runs whose epochs restart at 1 are shifted by the collapse epoch ({by})"
        )
    return curves, notes


def size_curves(data: ReportData) -> list[plots.Curve]:
    """Per τ: size if collapsed at each original checkpoint, then the collapsed run's size."""
    exp = data.exp
    curves: list[plots.Curve] = []
    for i, c in enumerate(exp.collapses):
        colour = plots.COLOURS[(i + 1) % len(plots.COLOURS)]
        original = data.timelines.get((exp.run_dir, c.threshold), [])
        if original:
            e = np.array([t["epoch"] for t in original])
            p = np.array([t["params_collapsed"] for t in original], float)
            curves.append(
                plots.Curve(f"size if collapsed now, τ={c.threshold:g}", e, p, colour, "--")
            )
        for h in c.resumed:
            curve = _collapsed_size_curve(data, c, h)
            if curve is not None:
                curves.append(plots.Curve(f"collapsed model {c.label}", *curve, colour, "-."))
    return curves


def _collapsed_size_curve(
    data: ReportData, c: CollapseFolder, h: RunHistory
) -> tuple[np.ndarray, np.ndarray] | None:
    """The resumed run's size: its collapsed size at the collapse epoch, then what fibers over
    time of its own checkpoints give (flat to its last epoch without a timeline)."""
    entries = data.timelines.get((h.run_dir, c.threshold), [])
    shift = shift_for(h, c.epoch)
    after = c.fibers["params_after"] if c.fibers else None
    if after is None:
        after = entries[0]["params_full"] if entries else None
    if after is None:
        return None
    epochs = [c.epoch] + [t["epoch"] + shift for t in entries]
    params = [float(after)] + [float(t["params_collapsed"]) for t in entries]
    if not entries and h.records:
        epochs.append(h.records[-1].epoch + shift)
        params.append(float(after))
    return np.array(epochs), np.array(params)


def _collapse_marks(exp: Experiment) -> list[tuple[int, str]]:
    """One vertical mark per collapse epoch, naming every τ collapsed there."""
    by_epoch: dict[int, list[str]] = {}
    for c in exp.collapses:
        by_epoch.setdefault(c.epoch, []).append(f"{c.threshold:g}")
    return [(e, f"collapse τ={', '.join(t)}") for e, t in sorted(by_epoch.items())]


# ---------------------------------------------------------------- figures and table


Panel = tuple[str, float, Callable[[Any], Any]]


def report_panels(data: ReportData) -> list[Panel]:
    """The report's figures as ``(name, height in inches, draw(fig))``, in order."""
    exp = data.exp
    returns, notes = return_curves(data)
    sizes = size_curves(data)

    def comparison(fig: Any) -> Any:
        return plots.draw_comparison(
            fig, returns, sizes, params_full=data.params_full,
            collapse_epochs=_collapse_marks(exp),
            smooth_window=data.smooth_window, note="; ".join(notes),
            title=f"{exp.env} ({exp.run_dir.name}): episode return"
            + (", original vs collapsed" if exp.collapses else ""),
        )  # fmt: skip

    panels: list[Panel] = [("comparison", 6.0, comparison)]
    fiber_series, styles = _fiber_series(data)
    if fiber_series:
        layer_sizes = _layer_sizes(exp)
        merged = [k for c in exp.collapses for k in (_collapsed_layers(c) or [])] or None

        def fibers(fig: Any) -> Any:
            return plots.draw_fibers(
                fig, fiber_series, layer_sizes, styles=styles, only_layers=merged
            )

        panels.append(("fibers", 5.5, fibers))
    points = tradeoff_points(data)
    if len(points) >= 2:
        resumed = any(c.resumed for c in exp.collapses)
        reference = final_return(exp.history, data.smooth_window) if resumed else None
        label = "final episode return (smoothed)" if resumed else "return of the collapsed model"

        def tradeoff(fig: Any) -> Any:
            return plots.draw_tradeoff(fig, points, original_return=reference, return_label=label)

        panels.append(("tradeoff", 4.5, tradeoff))
    return panels


def _fiber_series(data: ReportData) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Timelines per series label (resumed runs at absolute epochs) and their line styles."""
    out: dict[str, list[dict[str, Any]]] = {}
    styles: dict[str, tuple[str, str]] = {}
    for i, c in enumerate(data.exp.collapses):
        colour = plots.COLOURS[(i + 1) % len(plots.COLOURS)]
        original = data.timelines.get((data.exp.run_dir, c.threshold))
        if original:
            out[f"original, τ={c.threshold:g}"] = original
            styles[f"original, τ={c.threshold:g}"] = (colour, "--")
        for h in c.resumed:
            entries = data.timelines.get((h.run_dir, c.threshold))
            shift = shift_for(h, c.epoch)
            if entries:
                out[f"collapsed {c.label}"] = [{**t, "epoch": t["epoch"] + shift} for t in entries]
                styles[f"collapsed {c.label}"] = (colour, "-.")
    return out, styles


def _layer_sizes(exp: Experiment) -> dict[str, int]:
    for c in exp.collapses:
        if c.fibers:
            return {str(layer["label"]): int(layer["size"]) for layer in c.fibers["layers"]}
    return {}


def tradeoff_points(data: ReportData) -> list[plots.TradeoffPoint]:
    """One point per collapse folder with a known size."""
    points = []
    for c in data.exp.collapses:
        if not c.fibers or not data.params_full:
            continue
        resumed = c.resumed[-1] if c.resumed else None
        # Without a resumed run, the collapsed model's own return (fidelity episodes) if any.
        ret = final_return(resumed, data.smooth_window) if resumed else _return_at_collapse(c)
        points.append(
            plots.TradeoffPoint(
                c.threshold, float(c.fibers["params_after"]), data.params_full, ret, kl_of(c)
            )
        )
    return points


TABLE_COLUMNS = (
    "run", "τ", "collapse epoch", "parameters", "% of full", "fibers (kept/size)",
    "KL at collapse", "value error", "return at collapse", "final return", "epochs", "source",
)  # fmt: skip


def table_rows(data: ReportData) -> list[list[str]]:
    """The numbers behind the figures, one row per run."""
    exp = data.exp
    full = data.params_full
    rows: list[list[str]] = []
    if exp.history is not None or full:
        rows.append([
            "original", "", "", _int(full), "100.0" if full else "", "", "", "", "",
            _num(final_return(exp.history, data.smooth_window)), _epochs(exp.history),
            _src(exp.history),
        ])  # fmt: skip
    for c in exp.collapses:
        after = float(c.fibers["params_after"]) if c.fibers else math.nan
        fibers = ", ".join(
            f"{layer['label']} {layer['n_fibers']}/{layer['size']}"
            for layer in (c.fibers or {}).get("layers", [])
            if layer.get("collapsed", True) or layer["n_fibers"] < layer["size"]
        )
        value_error = c.fidelity.value_mae if c.fidelity else math.nan
        at_collapse = _return_at_collapse(c)
        common = [
            f"{c.threshold:g}", str(c.epoch), _int(after),
            _num(100 * after / full, 1) if full else "", fibers, _sci(kl_of(c)),
            _num(value_error, 3), _num(at_collapse),
        ]  # fmt: skip
        resumed: list[RunHistory | None] = list(c.resumed) or [None]
        for h in resumed:
            name = "collapsed" if h is None else f"collapsed ({h.run_dir.name})"
            shift = shift_for(h, c.epoch) if h is not None else 0
            final = _num(final_return(h, data.smooth_window))
            rows.append([name, *common, final, _epochs(h, shift), _src(h)])
    return rows


def _int(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _num(x: float, digits: int = 1) -> str:
    return "" if not math.isfinite(x) else f"{x:.{digits}f}"


def _sci(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.3g}"


def _epochs(h: RunHistory | None, shift: int = 0) -> str:
    """Epoch range of a run; a shifted one also shows the epochs its log printed."""
    if h is None or not h.records:
        return ""
    first, last = h.records[0].epoch, h.records[-1].epoch
    if shift:
        return f"{first + shift}–{last + shift} (log {first}–{last})"
    return f"{first}–{last}"


def _src(h: RunHistory | None) -> str:
    return "" if h is None else h.source.name


# ---------------------------------------------------------------- output


def render_png(data: ReportData, dpi: int) -> bytes:
    """All panels stacked in one image."""
    panels = report_panels(data)
    fig = Figure(figsize=(12, sum(h for _, h, _ in panels)), layout="constrained")
    subs = fig.subfigures(len(panels), 1, height_ratios=[h for _, h, _ in panels], squeeze=False)
    for sub, (_, _, draw) in zip(subs.ravel(), panels, strict=True):
        draw(sub)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def render_html(data: ReportData, dpi: int) -> str:
    """A self-contained page: each panel as a base64 PNG, then the table of numbers."""
    exp = data.exp
    images = []
    for name, height, draw in report_panels(data):
        fig = Figure(figsize=(12, height), layout="constrained")
        draw(fig)
        images.append(
            f'<p><img alt="{name}" src="data:image/png;base64,{png_base64(fig, dpi)}"></p>'
        )
    head = html.escape(f"pufferfiber report: {exp.env} ({exp.run_dir})")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{head}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;"
        "text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>{head}</h1>\n" + "\n".join(images) + "\n<h2>Numbers</h2>\n"
        f"{html_table(table_rows(data))}\n"
        f"<p>% of full = parameters relative to the full original model "
        f"({_int(data.params_full) or 'unknown'} parameters). Final return = mean of the last "
        f"{data.smooth_window} epochs.</p></body></html>\n"
    )


def png_base64(fig: Figure, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# ---------------------------------------------------------------- command line


def _output_path(args: argparse.Namespace, exp: Experiment) -> Path:
    out = Path(args.output) if args.output else exp.run_dir / REPORT_PNG
    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise ReportError(f"output must end in .png or .html, not {out.name!r}")
    if not out.parent.is_dir():
        raise ReportError(f"output folder {out.parent} does not exist")

    if not folder_writable(out.parent):  # before the work, not after it
        hint = "" if args.output else "; pass -o FILE to write elsewhere"
        raise ReportError(f"cannot write {out}: permission denied (read-only folder?){hint}")
    return out


def collect(exp: Experiment, args: argparse.Namespace) -> ReportData:
    """Fibers over time (unless disabled) and the full model size."""
    timelines: dict[tuple[Path, float], list[dict[str, Any]]] = {}
    if not args.no_fibers and exp.collapses:
        settings = TimelineSettings(args.flatten_colours, args.allow_pickle, not args.quiet)
        timelines = _fibers_timelines(exp, settings)
    return ReportData(exp, _params_full(exp, timelines), timelines, max(1, args.smooth))


def _print_table(data: ReportData) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{data.exp.env}: original vs collapsed")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name in ("run", "source") else "right")
    for row in table_rows(data):
        table.add_row(*row)
    Console(width=200).print(table)


def check_dpi(dpi: int) -> None:
    """:class:`ReportError` unless ``1 <= dpi <= MAX_DPI``."""
    if not 1 <= dpi <= MAX_DPI:
        raise ReportError(f"--dpi must be between 1 and {MAX_DPI}, got {dpi}")


def write_report(args: argparse.Namespace) -> int:
    """``pufferfiber report`` with its parsed options (:mod:`pufferfiber.cli.report`)."""

    check_dpi(args.dpi)
    exp = find_experiment(args.experiment_dir)
    out = _output_path(args, exp)
    if exp.history is None and not any(c.resumed for c in exp.collapses):
        raise ReportError(f"no episode returns in {exp.run_dir} ({_why_no_history(exp.run_dir)})")
    data = collect(exp, args)
    if out.suffix.lower() == ".png":
        payload = render_png(data, args.dpi)
    else:
        payload = render_html(data, args.dpi).encode("utf-8")
    atomic_write_bytes(out, payload)
    if not args.quiet:
        _print_table(data)
    print(f"report written to {out}")
    return 0
