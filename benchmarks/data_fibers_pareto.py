"""Pareto table of the fiber criteria on one checkpoint: % parameters vs held-out fidelity.

For every setting (``weights`` with position or pooled colours, ``data`` with the ``lstsq`` fit
and either pivot, or the ``affine`` fit, at several τ) the checkpoint is collapsed and measured
on the SAME held-out frames (``--heldout-batch`` × ``--heldout-steps`` real steps played by the
original policy on env seeds 0..; the data criterion calibrates on other seeds, 1000..) and by
the return of ``--episodes`` evaluation episodes before any retraining (same env seeds for every
policy, the original included). Times: observation collection separately; then each criterion's
fit + collapse, with the weights criterion at τ = 0.3 as the baseline of the same run.

    python benchmarks/data_fibers_pareto.py CHECKPOINT [--allow-pickle] [--episodes 10]
        [--only data/lstsq]

Writes ``benchmarks/results/data_fibers_pareto.json`` and ``.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.core.criteria import DataCriterion, FiberCriterion, WeightCriterion
from pufferfiber.core.datafibers import CALIBRATION_SEED_OFFSET
from pufferfiber.core.divergence import output_divergence
from pufferfiber.core.policy import Policy
from pufferfiber.io.atomic import atomic_write_text
from pufferfiber.io.checkpoints import load_checkpoint
from pufferfiber.rl.evaluate import collect_observations, play_episodes

RESULTS = Path(__file__).resolve().parent / "results"
T95_10 = 2.262  # Student t, 9 degrees of freedom, 95 % two-sided


def settings(quick: bool) -> list[tuple[str, FiberCriterion]]:
    """(label, criterion) pairs; the data criteria get their frames later."""
    out: list[tuple[str, FiberCriterion]] = []
    for tau in (0.3,) if quick else (0.3, 0.5, 0.7):
        out.append((f"weights/positions τ={tau}", WeightCriterion(tau)))
    for tau in (0.3,) if quick else (0.1, 0.3):
        out.append((f"weights/pooled τ={tau}", WeightCriterion(tau, flatten_colours="pooled")))
    for tau in (0.1, 0.3) if quick else (0.05, 0.1, 0.2, 0.25, 0.3, 0.4):
        out.append((f"data/lstsq τ={tau}", DataCriterion(tau)))
    for tau in () if quick else (0.05, 0.1, 0.2, 0.25, 0.3, 0.4):
        out.append((f"data/lstsq-variance τ={tau}", DataCriterion(tau, pivot="variance")))
    for tau in () if quick else (0.1, 0.3):
        out.append((f"data/affine τ={tau}", DataCriterion(tau, fit_method="affine")))
    return out


def returns_summary(returns: list[float]) -> dict[str, Any]:
    n = len(returns)
    mean = float(np.mean(returns)) if n else math.nan
    std = float(np.std(returns, ddof=1)) if n > 1 else math.nan
    half = (T95_10 if n == 10 else 1.96) * std / math.sqrt(n) if n > 1 else math.nan
    return {"returns": returns, "return_mean": mean, "return_std": std, "return_ci95": half}


def measure(
    label: str,
    criterion: FiberCriterion,
    policy: Policy,
    heldout: torch.Tensor,
    env: str,
    episodes: int,
    calibration: torch.Tensor,
) -> dict[str, Any]:
    start = time.perf_counter()
    quotient = criterion.fit_transform(policy, calibration)  # the weight criterion ignores it
    fibration = criterion.fibration_
    assert fibration is not None
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        "setting": label,
        "criterion": criterion.describe(),
        "fibers": fibration.counts,
        "params_after": quotient.parameter_count(),
        "params_fraction": quotient.parameter_count() / policy.parameter_count(),
        "fit_collapse_seconds": seconds,
    }
    row.update(output_divergence(policy, quotient, heldout).to_dict())
    if episodes:
        row.update(returns_summary(play_episodes(quotient, env, episodes, seed=0)))
    return row


def table(rows: list[dict[str, Any]], original: dict[str, Any]) -> str:
    lines = [
        "| setting | conv1/2/3 | linear1 | LSTM | % params | held-out KL | value MAE | "
        "return (mean ± std, 95 % CI) | fit+collapse s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| original | 32/64/64 | 512 | 512 | 100.0 | 0 | 0 | "
        f"{original['return_mean']:.0f} ± {original['return_std']:.0f} "
        f"(± {original['return_ci95']:.0f}) | – |",
    ]
    for r in rows:
        f = r["fibers"]
        ret = (
            f"{r['return_mean']:.0f} ± {r['return_std']:.0f} (± {r['return_ci95']:.0f})"
            if "return_mean" in r
            else "–"
        )
        lines.append(
            f"| {r['setting']} | {f['conv1']}/{f['conv2']}/{f['conv3']} | {f['linear1']} | "
            f"{f['lstm']} | {100 * r['params_fraction']:.1f} | {r['kl']:.2g} | "
            f"{r['value_mae']:.3g} | {ret} | {r['fit_collapse_seconds']:.1f} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["setting"].split(" ")[0], []).append(r)
    for name, items in groups.items():
        items = sorted(items, key=lambda r: r["params_fraction"])
        ax.plot(
            [100 * r["params_fraction"] for r in items],
            [max(r["kl"], 1e-9) for r in items],
            marker="o",
            label=name,
        )
    ax.axhline(0.01, color="grey", ls=":", lw=1)
    ax.axvline(15, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("% of the original parameters")
    ax.set_ylabel("held-out KL(original ‖ collapsed)")
    ax.set_title("Fiber criteria on BeamRider epoch 51 (before retraining)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--allow-pickle", action="store_true", help="trusted PufferLib 2.0 files")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default 10)")
    p.add_argument("--heldout-batch", type=int, default=16)
    p.add_argument("--heldout-steps", type=int, default=64)
    p.add_argument("--calibration-batch", type=int, default=32)
    p.add_argument("--calibration-steps", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="fewer settings")
    p.add_argument(
        "--only", default="", metavar="PREFIX",
        help="only the settings whose label starts with PREFIX, e.g. data/lstsq (default: all)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS / "data_fibers_pareto.json")
    args = p.parse_args()
    load = os.getloadavg()[0]
    print(f"torch threads {torch.get_num_threads()}, load {load:.2f}", flush=True)
    ckpt = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    policy = ckpt.policy.cpu().eval()
    start = time.perf_counter()
    heldout = collect_observations(policy, ckpt.env, args.heldout_batch, args.heldout_steps, 0)
    t_heldout = time.perf_counter() - start
    start = time.perf_counter()
    calibration = collect_observations(
        policy, ckpt.env, args.calibration_batch, args.calibration_steps, CALIBRATION_SEED_OFFSET
    )
    t_calibration = time.perf_counter() - start
    print(f"collected held-out {t_heldout:.1f} s, calibration {t_calibration:.1f} s", flush=True)
    played = play_episodes(policy, ckpt.env, args.episodes, seed=0) if args.episodes else []
    original = returns_summary(played)
    print(f"original return {original['return_mean']:.0f} ± {original['return_std']:.0f}")
    rows = []
    for label, crit in [s for s in settings(args.quick) if s[0].startswith(args.only)]:
        rows.append(measure(label, crit, policy, heldout, ckpt.env, args.episodes, calibration))
        r = rows[-1]
        print(
            f"{label}: {100 * r['params_fraction']:.1f} % params, KL {r['kl']:.3g}, "
            f"MAE {r['value_mae']:.3g}, return {r.get('return_mean', math.nan):.0f}, "
            f"{r['fit_collapse_seconds']:.1f} s (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    weights = [r["fit_collapse_seconds"] for r in rows if r["setting"].startswith("weights")]
    for r in rows:  # the first weights row is the run's baseline (none with --only data...)
        r["seconds_vs_weights"] = r["fit_collapse_seconds"] / weights[0] if weights else None
    report = {
        "checkpoint": str(args.checkpoint),
        "load_at_start": load,
        "heldout": [args.heldout_batch, args.heldout_steps],
        "calibration": [args.calibration_batch, args.calibration_steps],
        "collect_seconds": {"heldout": t_heldout, "calibration": t_calibration},
        "original": original,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    figure(rows, args.out.with_suffix(".png"))
    print(table(rows, original))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
