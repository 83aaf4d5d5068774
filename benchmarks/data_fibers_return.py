"""Return before retraining of data-collapsed policies, with enough episodes to judge it.

The Pareto benchmark (``data_fibers_pareto.py``) plays 10 episodes per policy, which cannot
separate a policy from its collapse on BeamRider (the episode-to-episode std is ~20 % of the
mean). This script plays ``--episodes`` (default 30) episodes of the original and of the
``data`` collapses at ``--thresholds``, all on the SAME env seeds, with one or more calibration
shapes (streams × steps; long streams reach game sectors that short ones never see), and
reports for each: % parameters, held-out KL / value MAE on long held-out streams, and the
return (mean ± std, 95 % interval), plus the verdict of issue 9's target: within one standard
deviation of the original's mean, and the difference of the means with its 95 % interval.

    python benchmarks/data_fibers_return.py CHECKPOINT --allow-pickle [--episodes 30]

Writes ``benchmarks/results/data_fibers_return.json`` and prints a Markdown table.
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
from scipy import stats

from pufferfiber.core.criteria import DATA_PIVOTS, DataCriterion
from pufferfiber.core.datafibers import CALIBRATION_SEED_OFFSET
from pufferfiber.core.divergence import output_divergence
from pufferfiber.io.atomic import atomic_write_text
from pufferfiber.io.checkpoints import load_checkpoint
from pufferfiber.rl.evaluate import collect_observations, play_episodes

RESULTS = Path(__file__).resolve().parent / "results"


def interval(values: np.ndarray) -> float:
    """Half-width of the 95 % Student-t interval of the mean."""
    n = len(values)
    return (
        float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    )


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of means ``a - b`` and the half-width of its 95 % Welch interval."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))


def summary(returns: list[float]) -> dict[str, Any]:
    r = np.asarray(returns, dtype=float)
    return {
        "returns": returns,
        "mean": float(r.mean()),
        "std": float(r.std(ddof=1)),
        "ci95": interval(r),
    }


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        streams, steps = item.lower().split("x")
        shapes.append((int(streams), int(steps)))
    return shapes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--allow-pickle", action="store_true", help="trusted PufferLib 2.0 files")
    p.add_argument("--episodes", type=int, default=30, help="episodes per policy (default 30)")
    p.add_argument(
        "--thresholds", default="0.1,0.15,0.2", help="data τ values (default 0.1,0.15,0.2)"
    )
    p.add_argument(
        "--calibrations",
        default="32x128,8x512",
        help="calibration shapes streams x steps, comma-separated (default 32x128,8x512)",
    )
    p.add_argument(
        "--heldout", default="4x512",
        help="held-out shapes, comma-separated; the first is the row's KL / MAE, the others are "
        "reported beside it, e.g. 4x512,16x64 (default 4x512)",
    )  # fmt: skip
    p.add_argument(
        "--pivot", choices=DATA_PIVOTS, default=DATA_PIVOTS[0],
        help=f"the lstsq fit's choice of kept units (default {DATA_PIVOTS[0]})",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS / "data_fibers_return.json")
    args = p.parse_args()
    start_load = os.getloadavg()[0]
    ckpt = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    policy = ckpt.policy.cpu().eval()
    shapes = parse_shapes(args.heldout)
    hb, hs = shapes[0]
    heldouts = {f"{b}x{s}": collect_observations(policy, ckpt.env, b, s, 0) for b, s in shapes}
    heldout, *_ = heldouts.values()  # the first shape: the row's own KL / MAE
    t0 = time.perf_counter()
    original = summary(play_episodes(policy, ckpt.env, args.episodes, seed=0))
    print(
        f"original {original['mean']:.0f} ± {original['std']:.0f} "
        f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    base = np.asarray(original["returns"])
    rows = []
    for streams, steps in parse_shapes(args.calibrations):
        calibration = collect_observations(
            policy, ckpt.env, streams, steps, CALIBRATION_SEED_OFFSET
        )
        for tau in (float(t) for t in args.thresholds.split(",")):
            crit = DataCriterion(tau, pivot=args.pivot)
            quotient = crit.fit_transform(policy, calibration)
            row: dict[str, Any] = {
                "threshold": tau,
                "calibration": [streams, steps],
                "params_fraction": quotient.parameter_count() / policy.parameter_count(),
            }
            row.update(output_divergence(policy, quotient, heldout).to_dict())
            row["heldout_other"] = {
                name: output_divergence(policy, quotient, frames).to_dict()
                for name, frames in list(heldouts.items())[1:]
            }
            t0 = time.perf_counter()
            row.update(summary(play_episodes(quotient, ckpt.env, args.episodes, seed=0)))
            # play_episodes returns episodes in the order they end, not by env seed, and
            # sampled actions diverge after the first step anyway: compare unpaired (Welch).
            row["diff_mean"], row["diff_ci95"] = welch(np.asarray(row["returns"]), base)
            row["within_one_std"] = row["mean"] >= original["mean"] - original["std"]
            rows.append(row)
            for name, div in row["heldout_other"].items():
                print(f"  held-out {name}: KL {div['kl']:.2g}, MAE {div['value_mae']:.3g}")
            print(
                f"{streams}x{steps} τ={tau}: {100 * row['params_fraction']:.1f} % params, "
                f"KL {row['kl']:.2g}, MAE {row['value_mae']:.3g}, return {row['mean']:.0f} ± "
                f"{row['std']:.0f} ({time.perf_counter() - t0:.0f} s, "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    report = {
        "checkpoint": args.checkpoint.name,
        "episodes": args.episodes,
        "heldout": [hb, hs],
        "pivot": args.pivot,
        "load_at_start": start_load,
        "original": original,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(
        "| calibration | τ | % params | held-out KL | value MAE | return (mean ± std) "
        "| Δ (95 % CI) | within one std |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| original | | 100 | 0 | 0 | {original['mean']:.0f} ± {original['std']:.0f} | | |")
    for r in rows:
        print(
            f"| {r['calibration'][0]}×{r['calibration'][1]} | {r['threshold']} | "
            f"{100 * r['params_fraction']:.1f} | {r['kl']:.2g} | {r['value_mae']:.3g} | "
            f"{r['mean']:.0f} ± {r['std']:.0f} | {r['diff_mean']:+.0f} ± {r['diff_ci95']:.0f} | "
            f"{'yes' if r['within_one_std'] else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
