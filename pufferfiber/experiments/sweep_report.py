"""``python -m pufferfiber report SWEEP_DIR``: a sweep's seeds aggregated, with 95 % confidence.

Reads the sweep's ``summary.csv`` (one row per env × seed × arm) and each run's
``metrics.jsonl``, and for every env draws

1. the training return over epochs of every arm: the mean over seeds with a 95 % confidence
   band (Student t over the seeds that finished episodes in that epoch); a collapsed arm's curve
   is the original's up to the collapse epoch, then its resumed run;
2. the trade-off: % of the full model's parameters vs final return (mean of the last 10 % of
   epochs), with 95 % confidence intervals on both, the original as a horizontal band;

and a table per arm: % parameters, KL at collapse, final and evaluation return, and the
difference of each to the original of the same seed (paired over seeds) with its 95 % interval.
A sentence says which arms are indistinguishable from the original (the interval of the
difference contains 0), which are below and which above.

A sweep with interventions (``--interventions``: none, break, break-opfibers, redo) compares every
intervention's runs with the run of the same seed trained without one (``none``), and draws per
env the units edited per epoch (``breaking.jsonl`` / ``redo.jsonl``), the fibers per layer over
training and the dormant-unit fraction over training (each run's ``trajectory.json``).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pufferfiber.experiments import plots
from pufferfiber.experiments.report import ReportError, check_dpi, html_table, png_base64
from pufferfiber.experiments.runlog import history
from pufferfiber.experiments.sweep import (
    CONTROLS,
    INTERVENTIONS,
    PROTOCOLS,
    SPEC_NAME,
    SUMMARY_NAME,
    TRAJECTORY_NAME,
    SweepSpec,
)
from pufferfiber.io.atomic import atomic_write_bytes, atomic_write_text
from pufferfiber.io.runfiles import SWEEP_REPORT_HTML

ORIGINAL = "original"
NONE = "none"
GUIDE = PROTOCOLS[0]
# What a protocol's verdicts compare. The guide's arms train for hundreds of epochs after the
# collapse, so their final training return (last 10 % of epochs) is the measure; a trained
# policy's K fine-tuning epochs finish few episodes of a long game (pong: envs all restart
# together, a game lasts ~30 epochs), so the trained protocol compares evaluation returns.
MEASURES = {GUIDE: "final_return", "trained": "eval_return"}
MEASURE_WORDS = {
    "final_return": "final return (last 10 % of epochs, equal agent steps)",
    "eval_return": "evaluation return (episodes of the final policy, equal agent steps)",
}


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SUMMARY_NAME).is_file() and (Path(path) / SPEC_NAME).is_file()


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, half-width of the 95 % t interval, n)`` of the finite ``values``."""
    from scipy import stats

    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return float(x.mean()), half, n


@dataclass
class ArmSummary:
    """One arm of one env over its seeds."""

    env: str
    arm: str
    threshold: float
    rows: list[dict[str, Any]]
    params_pct: tuple[float, float, int]
    kl: tuple[float, float, int]
    final: tuple[float, float, int]
    evaluation: tuple[float, float, int]
    final_diff: tuple[float, float, int]
    eval_diff: tuple[float, float, int]
    intervention: str = NONE
    baseline: bool | None = None  # the reference of the paired differences (default: original)
    protocol: str = GUIDE
    control: str = ""
    sps: tuple[float, float, int] = (math.nan, math.nan, 0)
    equal_time: tuple[float, float, int] = (math.nan, math.nan, 0)
    # control name -> paired difference of `measure` to that control (same seed)
    control_diffs: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.arm == ORIGINAL if self.baseline is None else self.baseline

    @property
    def measure(self) -> str:
        """The return the verdicts compare (:data:`MEASURES`)."""
        return MEASURES.get(self.protocol, "final_return")

    @property
    def diff(self) -> tuple[float, float, int]:
        """The paired difference to the baseline of :attr:`measure`."""
        return self.final_diff if self.measure == "final_return" else self.eval_diff

    @property
    def verdict(self) -> str:
        """How :attr:`measure` compares with the baseline's (paired 95 % interval)."""
        return "" if self.is_baseline else _verdict(self.diff)


def _verdict(diff: tuple[float, float, int]) -> str:
    mean, half, n = diff
    if n < 2 or not math.isfinite(half):
        return "too few seeds to tell"
    if mean - half <= 0 <= mean + half:
        return "indistinguishable"
    return "below" if mean < 0 else "above"


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    with open(Path(sweep_dir) / SUMMARY_NAME, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("threshold", "params_pct", "kl", "final_return", "eval_return"):
            row[key] = _float(row[key])
        for key in ("units_edited", "train_seconds", "sps", "wall_seconds", "equal_time_return"):
            row[key] = _float(row.get(key, ""))  # columns an older sweep did not write
        row["seed"] = int(row["seed"])
        row["intervention"] = row.get("intervention") or NONE  # sweeps before interventions
        row["protocol"] = row.get("protocol") or GUIDE  # sweeps before protocols
        row["control"] = row.get("control") or ""
        _leave_out_cut_short(row)
    with_interventions = any(r["intervention"] != NONE for r in rows)
    for row in rows:
        row["label"] = _label(row, with_interventions)
    base = _baseline_label(rows)
    for row in rows:
        row["base"] = _prefixed(row["protocol"], base)
    return rows


def _leave_out_cut_short(row: dict[str, Any]) -> None:
    """A final return whose games restarted too late for the final window (the sweep's
    ``final_restart``: :func:`~pufferfiber.experiments.runlog.restart_before_window`) is biased
    low: it leaves the means and paired differences, kept as ``final_cut_short`` for the note
    under the table."""
    restart = row.get("final_restart") or ""  # sweeps before the column: nothing left out
    row["final_restart"] = int(restart) if restart != "" else None
    if row["final_restart"] is not None:
        row["final_cut_short"], row["final_return"] = row["final_return"], math.nan


def left_out(arms: list[ArmSummary]) -> str:
    """One line naming the final returns :func:`_leave_out_cut_short` left out: per arm and
    restart epoch, the seeds and their values ("" when none was)."""
    parts = []
    for arm in arms:
        by_epoch: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in arm.rows:
            if r.get("final_restart") is not None:
                by_epoch[r["final_restart"]].append(r)
        for epoch, cut in sorted(by_epoch.items()):
            values = sorted(v for r in cut if math.isfinite(v := r["final_cut_short"]))
            span = (
                "no game ended in the window"
                if not values
                else f"{values[0]:.4g}" + (f" to {values[-1]:.4g}" if len(values) > 1 else "")
            )
            seeds = ", ".join(str(r["seed"]) for r in sorted(cut, key=lambda r: r["seed"]))
            plural = "s" if len(cut) > 1 else ""
            parts.append(f"{arm.arm}, seed{plural} {seeds} (restarted at epoch {epoch}: {span})")
    if not parts:
        return ""
    return (
        "Final returns left out (their games restarted too late for the final window to count "
        "whole games; the values stay in summary.csv): " + "; ".join(parts) + "."
    )


def _prefixed(protocol: str, name: str) -> str:
    return name if protocol == GUIDE else f"{protocol} {name}"


def _label(row: dict[str, Any], with_interventions: bool) -> str:
    """The arm's name in tables and legends: ``tau=…`` as before, or with interventions the
    intervention's name (``none``, ``break``…) for its originals and ``<intervention> tau=…``;
    then the protocol in front (``trained …``, the guide's goes unnamed) and the control
    behind (``… scratch``, ``… random``)."""
    if not with_interventions:
        name = str(row["arm"])
    elif row["arm"] == ORIGINAL:
        name = str(row["intervention"])
    else:
        name = f"{row['intervention']} {row['arm']}"
    name = _prefixed(row.get("protocol", GUIDE), name)
    return f"{name} {row['control']}" if row.get("control") else name


def _paired(
    rows: list[dict[str, Any]], originals: dict[int, dict[str, Any]], key: str
) -> list[float]:
    return [r[key] - originals[r["seed"]][key] for r in rows if r["seed"] in originals]


def _baseline_label(rows: list[dict[str, Any]]) -> str:
    """``original`` (its training without intervention), or ``none`` in an intervention sweep."""
    labels = {r.get("label", r["arm"]) for r in rows}
    return NONE if NONE in labels and ORIGINAL not in labels else ORIGINAL


def _order(intervention: str) -> int:
    return (
        INTERVENTIONS.index(intervention) if intervention in INTERVENTIONS else len(INTERVENTIONS)
    )


def summarise(rows: list[dict[str, Any]]) -> list[ArmSummary]:
    """Per env and arm (by protocol; the baseline first, then by intervention and τ, each
    control after its arm): means, intervals, paired differences to the protocol's baseline
    (its original, or ``none`` with interventions) and to the arm's controls."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["env"], row.get("label", row["arm"]))].append(row)
    out = []
    for (env, arm), members in sorted(groups.items(), key=_arm_order):
        first = members[0]
        base = first.get("base", _baseline_label(rows))
        originals = {r["seed"]: r for r in groups.get((env, base), [])}
        controls = {}
        measure = MEASURES.get(str(first.get("protocol", GUIDE)), "final_return")
        if not first.get("control"):
            for control in CONTROLS:
                paired = {r["seed"]: r for r in groups.get((env, f"{arm} {control}"), [])}
                if paired:
                    controls[control] = mean_ci(_paired(members, paired, measure))
        out.append(
            ArmSummary(
                env,
                arm,
                first["threshold"],
                members,
                mean_ci([r["params_pct"] for r in members]),
                mean_ci([r["kl"] for r in members]),
                mean_ci([r["final_return"] for r in members]),
                mean_ci([r["eval_return"] for r in members]),
                mean_ci(_paired(members, originals, "final_return")),
                mean_ci(_paired(members, originals, "eval_return")),
                intervention=str(first.get("intervention", NONE)),
                baseline=arm == base,
                protocol=str(first.get("protocol", GUIDE)),
                control=str(first.get("control", "")),
                sps=mean_ci([r.get("sps", math.nan) for r in members]),
                equal_time=mean_ci([r.get("equal_time_return", math.nan) for r in members]),
                control_diffs=controls,
            )
        )
    return out


def _arm_order(item: tuple[tuple[str, str], list[dict[str, Any]]]) -> tuple[Any, ...]:
    (env, label), members = item
    first = members[0]
    protocol = str(first.get("protocol", GUIDE))
    control = str(first.get("control", ""))
    return (
        env,
        PROTOCOLS.index(protocol) if protocol in PROTOCOLS else len(PROTOCOLS),
        label != first.get("base", ORIGINAL),
        _order(first.get("intervention", NONE)),
        first["threshold"],
        label.removesuffix(f" {control}") if control else label,
        control,
    )


def sentence(env: str, arms: list[ArmSummary]) -> str:
    """Which arms keep the baseline's final return, in words, for each protocol (with the
    difference and how many seeds fell below every seed of the baseline, since a wide interval
    also "contains 0"), then how each collapsed arm compares with its controls."""
    mine = [a for a in arms if a.env == env]
    protocols = list(dict.fromkeys(a.protocol for a in mine)) or [GUIDE]
    return " ".join(
        _protocol_sentence(env, [a for a in mine if a.protocol == p]) for p in protocols
    )


def _protocol_sentence(env: str, arms: list[ArmSummary]) -> str:
    mine = [a for a in arms if not a.is_baseline]
    base = next((a.arm for a in arms if a.is_baseline), ORIGINAL)
    the = "the original" if base == ORIGINAL else f"'{base}'"
    protocol = arms[0].protocol if arms else GUIDE
    where = env if protocol == GUIDE else f"{env} ({protocol} protocol)"
    if not mine:
        what = "collapsed arm" if base == ORIGINAL else "arm"
        return f"{where}: no {what} has finished yet."
    measure = MEASURES.get(protocol, "final_return")
    originals = [r[measure] for a in arms if a.is_baseline for r in a.rows]
    originals = [v for v in originals if math.isfinite(v)]  # a final return left out
    floor = min(originals) if originals else math.nan
    parts = []
    for verdict, words in (
        ("indistinguishable", f"indistinguishable from {the}"),
        ("below", f"below {the}"),
        ("above", f"above {the}"),
        ("too few seeds to tell", "not comparable yet (fewer than 2 seeds)"),
    ):
        names = [_describe(a, floor, the) for a in mine if a.verdict == verdict]
        if names:
            parts.append(f"{'; '.join(names)}: {words}")
    n = max(len(a.rows) for a in arms)
    text = (
        f"{where}, {MEASURE_WORDS[measure]}, paired over up to {n} "
        f"seeds, 95 % intervals of the difference: " + " | ".join(parts) + "."
    )
    against = [_against_controls(a) for a in mine if a.control_diffs]
    if against:
        text += " Against the controls of the same sizes: " + "; ".join(against) + "."
    return text


def _against_controls(arm: ArmSummary) -> str:
    said = []
    for control, (mean, half, n) in arm.control_diffs.items():
        verdict = _verdict((mean, half, n))
        spread = f" ± {half:.2f}" if math.isfinite(half) else ""
        said.append(f"vs {control} Δ {mean:+.2f}{spread} ({verdict})")
    return f"{arm.arm} {', '.join(said)}"


def _describe(arm: ArmSummary, floor: float, the: str = "the original") -> str:
    mean, half, _ = arm.diff
    counted = [r[arm.measure] for r in arm.rows if math.isfinite(r[arm.measure])]
    below = sum(v < floor for v in counted)
    diff = f"Δ {mean:+.2f}" + (f" ± {half:.2f}" if math.isfinite(half) else "")
    size = f"{arm.params_pct[0]:.1f} % of the parameters, " if arm.params_pct[0] < 100 else ""
    seed_word = "original seed" if the == "the original" else f"seed of {the}"
    return f"{arm.arm} ({size}{diff}, {below} of {len(counted)} seeds below every {seed_word})"


# ---------------------------------------------------------------- curves and figures


def arm_curve(row: dict[str, Any], original_run: Path | None) -> dict[int, float]:
    """Epoch → return of one seed of one arm (the original's epochs before its collapse or
    fine-tuning; a scratch control's run is its own from epoch 1)."""
    points = dict(history(Path(row["run_dir"])))
    if row.get("collapse_epoch") not in ("", None) and original_run is not None:
        collapse = int(row["collapse_epoch"])  # continued from the original's checkpoint
        points = {**{e: v for e, v in history(original_run) if e <= collapse}, **points}
    return points


def mean_band(
    curves: list[dict[int, float]], window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and 95 % half-width over the seeds' smoothed curves.

    Long games (pong) end in some epochs of a seed and not in others: each seed's smoothed
    curve is interpolated onto every epoch between its first and last point, so that each
    epoch's interval is taken over all the seeds running then, not over the few that happened
    to finish a game in it. Epochs reached by fewer than half the seeds are left out (at the
    ends of the runs the t interval of two seeds is ±12.7 standard deviations wide)."""
    from scipy import stats

    curves = [c for c in curves if c]
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    grid = np.arange(min(min(c) for c in curves), max(max(c) for c in curves) + 1)
    table = np.full((len(curves), grid.size), np.nan)
    for i, c in enumerate(curves):
        epochs = np.array(sorted(c))
        values = plots.smooth(np.array([c[e] for e in epochs]), window)
        inside = (grid >= epochs[0]) & (grid <= epochs[-1])
        table[i, inside] = np.interp(grid[inside], epochs, values)
    n = np.sum(np.isfinite(table), axis=0)
    mean = np.nanmean(table, axis=0)
    with warnings.catch_warnings():  # epochs only one seed reached: no spread (n = 1 below)
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanstd(table, axis=0, ddof=1) if len(curves) > 1 else np.zeros(grid.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * spread / np.sqrt(n), 0.0)
    enough = n >= (len(curves) + 1) // 2
    return grid[enough], mean[enough], np.nan_to_num(half)[enough]


MARKERS = {"": "o", "scratch": "x", "random": "s"}
_MEASURE_AXES = {
    "final_return": "final return (last 10 % of epochs)",
    "eval_return": "evaluation return (final policy)",
}  # a collapsed arm and its two controls


def env_figure(env: str, arms: list[ArmSummary], window: int) -> Figure:
    """Training return over epochs of every arm (of the guide protocol), then per protocol the
    trade-off of size and its measure (:data:`MEASURES`): collapsed arms as dots, their
    ``scratch`` controls as crosses and ``random`` controls as squares, each in its arm's
    colour, the baseline as a band."""
    mine = [a for a in arms if a.env == env]
    # a protocol gets a trade-off panel when it has arms beside its baseline
    protocols = list(dict.fromkeys(a.protocol for a in mine if not a.is_baseline)) or [GUIDE]
    fig = plots.new_figure(13 + 4 * (len(protocols) - 1), 5)
    ax_curve, *ax_trades = fig.subplots(
        1, 1 + len(protocols), width_ratios=[3] + [2] * len(protocols)
    )
    originals = {
        (r.get("intervention", NONE), r["seed"]): Path(r["run_dir"])
        for a in mine
        for r in a.rows
        if r["arm"] == ORIGINAL and r.get("protocol", GUIDE) == GUIDE
    }
    colours = _arm_colours(mine)
    # the guide's curves, and the runs of their own (scratch): a trained protocol's K epochs
    # would only repeat the original's curve
    for arm in [a for a in mine if a.protocol == GUIDE or a.control == "scratch"] or mine:
        curves = [
            arm_curve(r, originals.get((r.get("intervention", NONE), r["seed"]))) for r in arm.rows
        ]
        epochs, mean, half = mean_band(curves, window)
        if not epochs.size:
            continue
        colour = colours[arm.arm]
        style = {"": "-", "scratch": ":", "random": "--"}.get(arm.control, "-")
        label = f"{arm.arm} ({arm.params_pct[0]:.1f} %, n={len(arm.rows)})"
        ax_curve.plot(epochs, mean, style, color=colour, label=label)
        ax_curve.fill_between(
            epochs, mean - half, mean + half, color=colour, alpha=0.15, linewidth=0
        )
    ax_curve.set(
        xlabel="epoch", ylabel="training return", title=f"{env}: mean over seeds, 95 % band"
    )
    ax_curve.legend(fontsize=7)
    for ax, protocol in zip(ax_trades, protocols, strict=True):
        _trade_off(ax, [a for a in mine if a.protocol == protocol], colours, protocol)
    return fig


def _arm_colours(arms: list[ArmSummary]) -> dict[str, str]:
    """One colour per arm, shared by its controls (and by the same arm in every protocol)."""

    def key(a: ArmSummary) -> str:
        name = a.arm.removesuffix(f" {a.control}") if a.control else a.arm
        return name.removeprefix(f"{a.protocol} ") if a.protocol != GUIDE else name

    order = list(dict.fromkeys(key(a) for a in arms))
    return {a.arm: plots.COLOURS[order.index(key(a)) % len(plots.COLOURS)] for a in arms}


def _trade_off(ax: Any, arms: list[ArmSummary], colours: dict[str, str], protocol: str) -> None:
    for arm in arms:
        colour = colours[arm.arm]
        final_mean, final_half, _ = arm.final if arm.measure == "final_return" else arm.evaluation
        if arm.params_pct[0] >= 100 and not arm.is_baseline:
            continue  # an uncollapsed intervention: its return is in the table, not a trade-off
        if arm.is_baseline:
            ax.axhspan(
                final_mean - _z(final_half),
                final_mean + _z(final_half),
                color=colour,
                alpha=0.2,
                label=f"{arm.arm} (95 %)",
            )
            ax.axhline(final_mean, color=colour)
            continue
        ax.errorbar(
            arm.params_pct[0], final_mean, xerr=_z(arm.params_pct[1]), yerr=_z(final_half),
            fmt=MARKERS.get(arm.control, "o"), color=colour, capsize=3, label=arm.arm,
        )  # fmt: skip
    title = "trade-off (mean, 95 % intervals)"
    measure = MEASURES.get(protocol, "final_return")
    ax.set(
        xlabel="% of the full model's parameters", ylabel=_MEASURE_AXES[measure],
        title=title if protocol == GUIDE else f"{protocol} protocol: {title}",
    )  # fmt: skip
    ax.legend(fontsize=7)


def read_trajectory(run_dir: Path) -> dict[str, Any]:
    """A run's ``trajectory.json`` (empty when the run has none, e.g. an older sweep)."""
    try:
        data = json.loads((Path(run_dir) / TRAJECTORY_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mean_over_seeds(curves: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Epochs measured in every seed and the mean there (seeds share the checkpoint epochs)."""
    curves = [c for c in curves if c]
    if not curves:
        return np.zeros(0), np.zeros(0)
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(epochs), np.array([np.mean([c[e] for c in curves]) for e in epochs])


def _edited_per_epoch(traj: dict[str, Any]) -> dict[int, float]:
    return {int(e): float(sum(per.values())) for e, per in (traj.get("edited") or {}).items()}


def _per_layer(traj: dict[str, Any], key: str, layer: str) -> dict[int, float]:
    return {
        int(p["epoch"]): float(p[key][layer])
        for p in traj.get("points") or []
        if layer in (p.get(key) or {})
    }


def intervention_figure(env: str, arms: list[ArmSummary], window: int) -> Figure:
    """Per intervention (uncollapsed runs): training return with its 95 % band, units edited per
    epoch, fibers per layer and the dormant-unit fraction over training (means over seeds)."""
    fig = plots.new_figure(13, 9)
    (ax_ret, ax_edit), (ax_fib, ax_dorm) = fig.subplots(2, 2)
    mine = [a for a in arms if a.env == env and all(r["arm"] == ORIGINAL for r in a.rows)]
    styles = {"lstm": "-", "linear1": "--"}
    fiber_tau = dormant_tau = None
    for i, arm in enumerate(mine):
        colour = plots.COLOURS[i % len(plots.COLOURS)]
        n = len(arm.rows)
        epochs, mean, half = mean_band([arm_curve(r, None) for r in arm.rows], window)
        if epochs.size:
            ax_ret.plot(epochs, mean, color=colour, label=f"{arm.arm} (n={n})")
            ax_ret.fill_between(
                epochs, mean - half, mean + half, color=colour, alpha=0.2, linewidth=0
            )
        trajs = [read_trajectory(Path(r["run_dir"])) for r in arm.rows]
        trajs = [t for t in trajs if t]
        if not trajs:
            continue
        fiber_tau = trajs[0]["key"]["fiber_threshold"]
        dormant_tau = trajs[0]["key"]["dormant_threshold"]
        edited = [_edited_per_epoch(t) for t in trajs]
        if any(edited):
            x, y = _mean_over_seeds(edited)
            ax_edit.plot(x, y, "o-", color=colour, markersize=3, label=arm.arm)
        layers = [lab for lab in styles if any(_per_layer(t, "fibers", lab) for t in trajs)]
        for layer in layers:
            x, y = _mean_over_seeds([_per_layer(t, "fibers", layer) for t in trajs])
            ax_fib.plot(x, y, styles[layer], color=colour, label=f"{arm.arm} {layer}")
            x, y = _mean_over_seeds([_per_layer(t, "dormant_fraction", layer) for t in trajs])
            ax_dorm.plot(x, 100 * y, styles[layer], color=colour, label=f"{arm.arm} {layer}")
    ax_ret.set(xlabel="epoch", ylabel="training return", title=f"{env}: mean, 95 % band")
    ax_edit.set(
        xlabel="epoch", ylabel="units edited (all layers)",
        title="units broken / recycled per epoch (mean over seeds)",
    )  # fmt: skip
    ax_fib.set(
        xlabel="epoch", ylabel="fibers",
        title=f"fibers per layer at τ = {fiber_tau} (mean over seeds)",
    )  # fmt: skip
    ax_dorm.set(
        xlabel="epoch", ylabel="% dormant units",
        title=f"dormant units (ReDo's τ = {dormant_tau}, mean over seeds)",
    )  # fmt: skip
    for ax in (ax_ret, ax_edit, ax_fib, ax_dorm):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def fiber_turns(arm: ArmSummary) -> str:
    """Whether the LSTM's fiber count (mean over seeds) first falls, then rises again."""
    trajs = [t for t in (read_trajectory(Path(r["run_dir"])) for r in arm.rows) if t]
    x, y = _mean_over_seeds([_per_layer(t, "fibers", "lstm") for t in trajs])
    if y.size < 3:
        return f"{arm.arm}: no fiber trajectory"
    low = int(np.argmin(y))
    rise = float(y[-1] - y[low])
    shape = (
        "falls, then rises again"
        if 0 < low < y.size - 1 and rise >= 0.05 * max(float(y[0]), 1.0)
        else "falls and stays down"
        if y[-1] < y[0]
        else "does not fall"
    )
    return (
        f"{arm.arm}: LSTM fibers {y[0]:.0f} at epoch {x[0]} → {y[low]:.0f} at epoch {x[low]} → "
        f"{y[-1]:.0f} at epoch {x[-1]} ({shape})"
    )


def _z(half: float) -> float:
    return 0.0 if not math.isfinite(half) else half


# ---------------------------------------------------------------- table and output

TABLE_COLUMNS = (
    "env", "arm", "seeds", "% params", "KL at collapse", "final return", "Δ final vs original",
    "eval return", "Δ eval vs original", "verdict",
)  # fmt: skip


def _pm(stat: tuple[float, float, int], digits: int = 2) -> str:
    mean, half, n = stat
    if n == 0:
        return ""
    if not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table_header(arms: list[ArmSummary]) -> list[str]:
    base = next((a.arm for a in arms if a.is_baseline), ORIGINAL)
    if _has_protocols(arms):
        base = "its original" if base == ORIGINAL else base
    header = [c.replace("vs original", f"vs {base}") for c in TABLE_COLUMNS]
    header += ["units edited", "train s"] if _has_interventions(arms) else []
    header += ["SPS", "equal-time return"] if _has_speed(arms) else []
    # a guide arm's Δ to its control is on the final return, a trained one's on the evaluation
    which = "final/eval" if _has_protocols(arms) else "final"
    return header + [f"Δ {which} vs {c}" for c in _controls(arms)]


def _has_protocols(arms: list[ArmSummary]) -> bool:
    return any(a.protocol != GUIDE for a in arms)


def _has_speed(arms: list[ArmSummary]) -> bool:
    return any(a.sps[2] for a in arms)


def _controls(arms: list[ArmSummary]) -> list[str]:
    present = {c for a in arms for c in a.control_diffs}
    return [c for c in CONTROLS if c in present]


def _has_interventions(arms: list[ArmSummary]) -> bool:
    return any(a.intervention != NONE for a in arms)


def table_rows(arms: list[ArmSummary]) -> list[list[str]]:
    rows = []
    for a in arms:
        original = a.is_baseline
        rows.append(
            [
                a.env,
                a.arm,
                str(len(a.rows)),
                _pm(a.params_pct, 1),
                ""
                if original or _uncollapsed(a) or not math.isfinite(a.kl[0])
                else f"{a.kl[0]:.3g}",
                _pm(a.final),
                "" if original else _pm(a.final_diff),
                _pm(a.evaluation),
                "" if original else _pm(a.eval_diff),
                a.verdict,
            ]
            + (
                [
                    _pm(mean_ci([r["units_edited"] for r in a.rows]), 0),
                    _pm(mean_ci([r["train_seconds"] for r in a.rows]), 0),
                ]
                if _has_interventions(arms)
                else []
            )
            + ([_pm(a.sps, 0), _pm(a.equal_time)] if _has_speed(arms) else [])
            + [_pm(a.control_diffs[c]) if c in a.control_diffs else "" for c in _controls(arms)]
        )
    return rows


def render_html(
    sweep_dir: Path, arms: list[ArmSummary], figures: dict[str, Figure], dpi: int
) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>pufferfiber sweep</title>",
        "<style>body{font-family:sans-serif;max-width:1300px;margin:auto}"
        "td,th{padding:2px 8px;text-align:right}</style>",
        f"<h1>Sweep {html.escape(str(sweep_dir))}</h1>",
        f"<p>{html.escape(_intro(sweep_dir, arms))}</p>",
    ]
    for env, fig in figures.items():
        parts.append(f"<h2>{html.escape(env)}</h2><p><b>{html.escape(sentence(env, arms))}</b></p>")
        parts.append(f"<img src='data:image/png;base64,{png_base64(fig, dpi)}'>")
        turns = [fiber_turns(a) for a in arms if a.env == env and _uncollapsed(a)]
        if any(a.intervention != NONE for a in arms):
            parts.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in turns) + "</ul>")
    parts.append(html_table([table_header(arms), *table_rows(arms)]))
    if note := left_out(arms):
        parts.append(f"<p>{html.escape(note)}</p>")
    return "\n".join(parts)


def _intro(sweep_dir: Path, arms: list[ArmSummary]) -> str:
    spec = SweepSpec.from_dict(json.loads((sweep_dir / SPEC_NAME).read_text()))
    return (
        f"{len(spec.seeds)} seeds, collapse near epoch {spec.collapse_epoch}, {len(spec.arms)} "
        "arms; ± = 95 % confidence interval (Student t over seeds); Δ = paired difference to the "
        "original of the same seed."
    )


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; the first row is the header."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def render_markdown(sweep_dir: Path, arms: list[ArmSummary], image: str) -> str:
    """The report as Markdown (for ``docs/results/``): per env its sentence and table, and the
    figures in ``image`` (written beside it)."""
    parts = [f"# Sweep `{sweep_dir.name}`", "", _intro(sweep_dir, arms), "", f"![figures]({image})"]
    for env in dict.fromkeys(a.env for a in arms):
        mine = [a for a in arms if a.env == env]
        parts += ["", f"## {env}", "", sentence(env, arms), ""]
        parts.append(markdown_table([table_header(mine), *table_rows(mine)]))
        if note := left_out(mine):
            parts += ["", note]
    return "\n".join(parts) + "\n"


def write_sweep_report(args: argparse.Namespace) -> int:
    """The ``report`` command on a sweep folder (``args`` from
    :func:`pufferfiber.cli.report.build_parser`). Raises
    :class:`~pufferfiber.experiments.report.ReportError` for bad input."""

    check_dpi(args.dpi)
    sweep_dir = Path(args.experiment_dir)
    out = Path(args.output) if args.output else sweep_dir / SWEEP_REPORT_HTML
    if out.suffix.lower() not in (".png", ".html", ".htm", ".md"):
        raise ReportError(f"output must end in .png, .html or .md, not {out.name!r}")
    rows = read_summary(sweep_dir)
    if not rows:
        raise ReportError(f"{sweep_dir / SUMMARY_NAME} has no rows yet")
    arms = summarise(rows)
    envs = list(dict.fromkeys(a.env for a in arms))
    figures = {env: _env_figures(env, arms, max(1, args.smooth)) for env in envs}
    if out.suffix.lower() in (".png", ".md"):
        buf = io.BytesIO()
        fig = figures[envs[0]] if len(envs) == 1 else _stack(figures)
        fig.savefig(buf, format="png", dpi=args.dpi)
        image = out.with_suffix(".png")
        atomic_write_bytes(image, buf.getvalue())
        if out.suffix.lower() == ".md":
            atomic_write_text(out, render_markdown(sweep_dir, arms, image.name))
    else:
        atomic_write_text(out, render_html(sweep_dir, arms, figures, args.dpi))
    if not args.quiet:
        for row in table_rows(arms):
            print("  ".join(row))
    for env in envs:
        print(sentence(env, arms))
        if any(a.intervention != NONE for a in arms):
            for arm in arms:
                if arm.env == env and _uncollapsed(arm):
                    print("  " + fiber_turns(arm))
    print(f"report written to {out}")
    return 0


def _uncollapsed(arm: ArmSummary) -> bool:
    return all(r["arm"] == ORIGINAL for r in arm.rows)


def _env_figures(env: str, arms: list[ArmSummary], window: int) -> Figure:
    """The collapse figure, the intervention figure, or both stacked."""
    mine = [a for a in arms if a.env == env]
    interventions = any(a.intervention != NONE for a in mine)
    collapsed = any(not _uncollapsed(a) for a in mine)
    if not interventions:
        return env_figure(env, arms, window)
    if not collapsed:
        return intervention_figure(env, arms, window)
    return _stack(
        {"collapse": env_figure(env, arms, window), "i": intervention_figure(env, arms, window)}
    )


def _stack(figures: dict[str, Figure]) -> Figure:
    """All envs' figures as one image (rendered, then stacked vertically)."""
    from matplotlib.image import imread

    images = []
    for fig in figures.values():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        buf.seek(0)
        images.append(imread(buf))
    width = max(im.shape[1] for im in images)
    canvas = np.ones((sum(im.shape[0] for im in images), width, images[0].shape[2]))
    y = 0
    for im in images:
        canvas[y : y + im.shape[0], : im.shape[1]] = im
        y += im.shape[0]
    fig = plots.new_figure(width / 80, canvas.shape[0] / 80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas)
    ax.axis("off")
    return fig
