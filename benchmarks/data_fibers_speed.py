"""Time of the data criterion on one checkpoint: calibration statistics + selection + collapse.

Observation collection (playing the policy) is timed separately. The baseline measured in the
same run is the weights criterion (fibers + quotient) at τ = 0.3; the ratio is printed.

    python benchmarks/data_fibers_speed.py CHECKPOINT [--allow-pickle] [--tau 0.2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from pufferfiber.core.criteria import DataCriterion, WeightCriterion
from pufferfiber.core.datafibers import (
    CALIBRATION_SEED_OFFSET,
    DEFAULT_CALIBRATION_BATCH,
    DEFAULT_CALIBRATION_STEPS,
)
from pufferfiber.io.checkpoints import load_checkpoint
from pufferfiber.rl.evaluate import collect_observations


def best_of(repeat: int, work: object) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--allow-pickle", action="store_true", help="trusted PufferLib 2.0 files")
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--calibration-batch", type=int, default=DEFAULT_CALIBRATION_BATCH)
    p.add_argument("--calibration-steps", type=int, default=DEFAULT_CALIBRATION_STEPS)
    p.add_argument("--heldout-batch", type=int, default=16, help="0: no held-out figures")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    ckpt = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    policy = ckpt.policy.cpu().eval()
    start = time.perf_counter()
    calibration = collect_observations(
        policy, ckpt.env, args.calibration_batch, args.calibration_steps, CALIBRATION_SEED_OFFSET
    )
    collect = time.perf_counter() - start
    heldout = (
        collect_observations(policy, ckpt.env, args.heldout_batch, 64, 0)
        if args.heldout_batch
        else None
    )
    print(f"collecting {calibration.shape[0]} x {calibration.shape[1]} frames: {collect:.1f} s")
    base = best_of(args.repeat, lambda: WeightCriterion(0.3).fit_transform(policy))
    data = best_of(
        args.repeat,
        lambda: DataCriterion(args.tau).fit_transform(policy, calibration, heldout=heldout),
    )
    print(f"weights criterion τ=0.3 (baseline): {base:.2f} s")
    print(
        f"data criterion τ={args.tau}, calibration statistics + selection + collapse"
        f"{' + held-out figures' if heldout is not None else ''}: {data:.2f} s "
        f"({data / base:.1f}x the baseline), load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
