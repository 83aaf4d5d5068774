"""Figures comparing an original training run with its collapsed, resumed runs.

Used by both ``python -m pufferfiber report`` and the guide's notebook, so the notebook stays a
few lines per step. Every function draws into a matplotlib ``Figure`` (or ``SubFigure``, so the
report can stack several into one PNG) and returns it; nothing here reads files.

* :func:`draw_comparison` — smoothed episode return of the original run and of each collapsed
  run (already shifted to absolute epochs), and on a second axis the parameter count of the
  collapsed model over time, with a % scale relative to the FULL original model.
* :func:`draw_fibers` — fibers per layer over time, one panel per layer.
* :func:`draw_tradeoff` — parameters vs return vs KL per threshold τ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure, FigureBase
from matplotlib.ticker import FuncFormatter

# Figures are built without pyplot: no global figure registry, no display backend needed
# (savefig renders with Agg), and a notebook still shows them inline.
COLOURS = mpl.rcParams["axes.prop_cycle"].by_key()["color"]


@dataclass
class Curve:
    """One line: ``values`` at absolute ``epochs``, with a legend label and a colour."""

    label: str
    epochs: np.ndarray
    values: np.ndarray
    colour: str | None = None
    style: str = "-"


@dataclass
class TradeoffPoint:
    """One threshold's outcome: size after collapse, return reached, policy change (KL)."""

    threshold: float
    params: float
    params_full: float
    final_return: float
    kl: float

    @property
    def percent(self) -> float:
        return 100.0 * self.params / self.params_full


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start), NaN-free input."""
    y = np.asarray(values, dtype=float)
    if window <= 1 or y.size == 0:
        return y.copy()
    csum = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def new_figure(width: float = 11.0, height: float = 6.0) -> Figure:
    """A figure not registered with pyplot (no global state, nothing left open)."""
    return Figure(figsize=(width, height), layout="constrained")


def _colour(i: int, curve: Curve) -> str:
    return curve.colour or COLOURS[i % len(COLOURS)]


# ---------------------------------------------------------------- return vs size over time


def draw_comparison(
    fig: FigureBase,
    returns: Sequence[Curve],
    sizes: Sequence[Curve] = (),
    *,
    params_full: float | None = None,
    collapse_epochs: Sequence[tuple[int, str]] = (),
    smooth_window: int = 5,
    title: str = "Episode return: original vs collapsed",
    note: str = "",
) -> FigureBase:
    """Episode return per epoch and, on a second axis, the collapsed parameter count.

    Args:
        returns: return curves (raw values; drawn faint, smoothed on top).
        sizes: parameter counts over time (e.g. from fibers over time).
        params_full: parameters of the full original model: the 100 % of the % scale.
        collapse_epochs: ``(epoch, label)`` marks where a collapsed run branches off.
        note: a line under the title (e.g. how collapsed curves were shifted).
    """
    ax = fig.add_subplot()
    for i, c in enumerate(returns):
        col = _colour(i, c)
        ax.plot(c.epochs, c.values, color=col, alpha=0.25, linewidth=1)
        label = f"{c.label} (smoothed, {smooth_window})" if smooth_window > 1 else c.label
        ax.plot(c.epochs, smooth(c.values, smooth_window), c.style, color=col, lw=2, label=label)
    for epoch, label in collapse_epochs:
        ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
        ax.annotate(label, (epoch, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                    rotation=90, va="bottom", ha="right", color="grey")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if sizes:
        h2, l2 = _draw_sizes(ax, sizes, params_full, first_colour=len(returns))
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.85)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def _draw_sizes(
    ax: Any, sizes: Sequence[Curve], params_full: float | None, first_colour: int
) -> tuple[list[Any], list[str]]:
    """Parameter counts on a twin axis, plus a % axis relative to the full model."""
    ax2 = ax.twinx()
    for i, c in enumerate(sizes):
        ax2.plot(c.epochs, c.values, c.style, color=_colour(i + first_colour, c), marker="o",
                 ms=3, lw=1.5, label=c.label)  # fmt: skip
    top = max([float(np.max(c.values)) for c in sizes if c.values.size] + [params_full or 0.0])
    ax2.set_ylim(0, 1.08 * top if top > 0 else 1)
    ax2.set_ylabel("parameters of the collapsed model")
    ax2.yaxis.set_major_formatter(FuncFormatter(_count))
    if params_full:
        full = float(params_full)
        ax2.axhline(full, color="black", lw=0.8, ls="--", alpha=0.6, label="full model")
        pct = ax2.secondary_yaxis(
            1.13, functions=(lambda p: 100.0 * p / full, lambda q: q * full / 100.0)
        )
        pct.set_ylabel(f"% of the full model ({full:,.0f} parameters)")
    return ax2.get_legend_handles_labels()


def _count(value: float, _pos: object = None) -> str:
    """Axis label for a parameter count: 3.9M, 250k, 900."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.0f}k" if abs(value) >= 1e3 else f"{value:.0f}"


def comparison_figure(returns: Sequence[Curve], sizes: Sequence[Curve] = (), **kw: Any) -> Figure:
    """:func:`draw_comparison` on a new figure."""
    fig = new_figure(11, 6)
    draw_comparison(fig, returns, sizes, **kw)
    return fig


# ---------------------------------------------------------------- fibers per layer


def draw_fibers(
    fig: FigureBase,
    timelines: Mapping[str, Sequence[Mapping[str, Any]]],
    layer_sizes: Mapping[str, int] | None = None,
    *,
    epoch_shift: Mapping[str, int] | None = None,
    styles: Mapping[str, tuple[str, str]] | None = None,
    only_layers: Sequence[str] | None = None,
    title: str = "Fibers per layer over training",
) -> FigureBase:
    """Number of fibers of each layer per checkpoint, one panel per layer.

    Args:
        timelines: ``{series label: fibers_over_time(...) list}``; each entry has ``epoch``
            and ``fibers`` ({layer label: count}).
        layer_sizes: units per layer in the full model (drawn as a dashed line).
        epoch_shift: added to a series' epochs (a resumed run whose epochs restart at 1).
        styles: ``{series label: (colour, linestyle)}`` to match the return figure's colours.
        only_layers: draw just these layers (e.g. the ones a collapse merged).
    """
    layers: dict[str, None] = {}
    for entries in timelines.values():
        for e in entries:
            layers.update(dict.fromkeys(e["fibers"]))
    if only_layers:
        layers = {k: None for k in layers if k in only_layers}
    if not layers:
        fig.suptitle(title + " (no checkpoints)")
        return fig
    ncols = min(3, len(layers))
    nrows = -(-len(layers) // ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for ax, layer in zip(axes, layers, strict=False):
        for i, (name, entries) in enumerate(timelines.items()):
            pts = [(e["epoch"], e["fibers"][layer]) for e in entries if layer in e["fibers"]]
            if not pts:
                continue
            ep, n = np.array(pts, dtype=float).T
            ep = ep + (epoch_shift or {}).get(name, 0)
            colour, style = (styles or {}).get(name, (COLOURS[(i + 1) % len(COLOURS)], "-"))
            ax.plot(ep, n, style, marker="o", ms=3, color=colour, label=name)
        if layer_sizes and layer in layer_sizes:
            ax.axhline(layer_sizes[layer], color="black", ls="--", lw=0.8, label="layer size")
        ax.set_title(layer, fontsize=10)
        ax.tick_params(labelbottom=True)
        ax.set_ylabel("fibers")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    for ax in axes[: len(layers)]:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- thresholds


def draw_tradeoff(
    fig: FigureBase,
    points: Sequence[TradeoffPoint],
    *,
    original_return: float | None = None,
    return_label: str = "final episode return (smoothed)",
    title: str = "Thresholds: parameters vs return vs KL",
) -> FigureBase:
    """Left: return vs % parameters, coloured by KL; right: KL and % parameters per τ."""
    pts = sorted(points, key=lambda p: p.threshold)
    left, right = fig.subplots(1, 2)
    pct = np.array([p.percent for p in pts])
    ret = np.array([p.final_return for p in pts])
    kl = np.array([p.kl for p in pts])
    known = np.isfinite(kl) & (kl > 0)
    norm = LogNorm(vmin=kl[known].min(), vmax=max(kl[known].max(), kl[known].min() * 10)) if (
        known.any()
    ) else None  # fmt: skip
    sc = left.scatter(pct, ret, c=np.where(known, kl, np.nan) if norm else "tab:blue",
                      norm=norm, cmap="viridis", s=60, edgecolors="black", zorder=3)  # fmt: skip
    for p, x, y in zip(pts, pct, ret, strict=True):
        left.annotate(f"τ={p.threshold:g}", (x, y), textcoords="offset points", xytext=(5, 5),
                      fontsize=8)  # fmt: skip
    if original_return is not None and np.isfinite(original_return):
        left.axhline(
            original_return, color="black", ls="--", lw=0.8, label="original run (final return)"
        )
        left.legend(fontsize=8)
    if norm is not None:
        fig.colorbar(sc, ax=left, label="KL(original || collapsed) at collapse")
    if not np.isfinite(ret).any():
        left.text(0.5, 0.5, "no return measured yet\n(no resumed run, no fidelity episodes)",
                  transform=left.transAxes, ha="center", va="center", color="grey")  # fmt: skip
        left.set_xlim(0, 105)
    left.set_xlabel("% of the full model's parameters")
    left.set_ylabel(return_label)
    left.grid(alpha=0.3)

    taus = np.array([p.threshold for p in pts])
    right.plot(taus, np.where(known, kl, np.nan), "o-", color="tab:red", label="KL")
    if known.any():
        right.set_yscale("log")
    right.set_xlabel("threshold τ")
    right.set_ylabel("KL at collapse", color="tab:red")
    twin = right.twinx()
    twin.plot(taus, pct, "s--", color="tab:blue", label="% parameters")
    twin.set_ylabel("% of the full model's parameters", color="tab:blue")
    twin.set_ylim(0, 105)
    right.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
