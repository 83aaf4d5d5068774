"""Fibers with the pairwise products on a GPU against the CPU: same fibers, and the time each takes.

The baseline is the default path (numpy products on the CPU), measured in the same run. The other
path runs the ``n²·d`` candidate products of :mod:`pufferfiber.core.fibers` on ``--device`` through
``products_on``; rows, exact tests, clustering and labels stay on the CPU. Cases:

1. the whole 3.9M-parameter BeamRider network (``--checkpoint``, else a random one), every
   layer, at each ``--thresholds`` value, both flatten colourings;
2. one wide Linear layer of 1024 .. 8192 units (rows around units/4 directions, as in
   ``fibers_speed.py``), where the products dominate.

Each case checks that both paths give identical labels and prints ``cpu s``, ``device s`` and
their ratio (best of ``--repeat`` after one warm-up run)::

    python benchmarks/fibers_device.py --device cuda [--checkpoint PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fibers_speed import DEFAULT_CHECKPOINT, load_network, wide_layer_policy

from pufferfiber.core.clustering import products_on
from pufferfiber.core.colouring import Fibration
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.policy import Policy


def best_seconds(work: Callable[[], Fibration], repeat: int) -> tuple[float, Fibration]:
    result = work()  # warm-up: allocator, CUDA context, BLAS threads
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare(
    name: str, policy: Policy, tau: float, colours: str, device: str, repeat: int
) -> dict[str, Any]:
    def work() -> Fibration:
        return compute_fibers(policy, tau, flatten_colours=colours)

    cpu_s, on_cpu = best_seconds(work, repeat)
    with products_on(device):
        dev_s, on_dev = best_seconds(work, repeat)
    same = all(
        np.array_equal(a.labels, b.labels)
        for a, b in zip(on_cpu.layers, on_dev.layers, strict=True)
    )
    row = {
        "case": name,
        "threshold": tau,
        "flatten_colours": colours,
        "cpu_s": cpu_s,
        "device_s": dev_s,
        "cpu_over_device": cpu_s / dev_s,
        "same_labels": same,
        "fibers": on_dev.counts,
    }
    print(
        f"{name:<42}{tau:>5}{colours:>10}{cpu_s:>9.3f}{dev_s:>9.3f}{cpu_s / dev_s:>8.2f}x"
        f"{'  same' if same else '  DIFFERENT'}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device of the products (default: cuda)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="BeamRider checkpoint (default: the shared upstream epoch-51 one, else random)",
    )
    p.add_argument(
        "--thresholds", default="0,0.3", help="comma-separated τ values (default: 0,0.3)"
    )
    p.add_argument(
        "--sizes", default="1024,4096,8192", help="wide-layer widths (default: 1024,4096,8192)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (default: 3)")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    policy, what = load_network(args.checkpoint)
    print(f"fibers: products on cpu (baseline) vs {args.device}; best of {args.repeat}")
    print(f"{'case':<42}{'τ':>5}{'colours':>10}{'cpu s':>9}{'dev s':>9}{'ratio':>9}")
    rows = []
    for tau in (float(t) for t in args.thresholds.split(",")):
        for colours in ("positions", "pooled"):
            name = f"BeamRider 3.9M ({what})"
            rows.append(compare(name, policy, tau, colours, args.device, args.repeat))
    for units in (int(s) for s in args.sizes.split(",") if s):
        wide = wide_layer_policy(units)
        name = f"Linear {units} units"
        rows.append(compare(name, wide, 0.3, "positions", args.device, args.repeat))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["same_labels"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
