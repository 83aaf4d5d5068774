"""Training throughput on BeamRider next to raw environment stepping, in one run.

    .venv/bin/python benchmarks/train_sps.py [--epochs 3] [--batch-size 8192] [--num-envs 16]

Raw env SPS steps the same serial PufferLib vector env with random actions (no policy); training
SPS is whole epochs of :class:`pufferfiber.rl.trainer.Trainer` (collect + PPO update) with the
guide's BeamRider hyperparameters except the batch size. The first epoch is a warm-up and is
not counted. Ratios are printed against raw stepping and against PufferLib 2.0's own trainer
on this kind of machine (README, Benchmarks: ~380 SPS serial; targets: ≥ 1.2× and ≥ 30 % of raw).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.config.sections import RunConfig, load_config
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.start import RunStart
from pufferfiber.rl.trainer import Trainer

# PufferLib 2.0 clean_pufferl on this 2-core machine, recorded in the README (Benchmarks)
PUFFERLIB_SERIAL_SPS = 380.0


def raw_env_sps(env: str, num_envs: int, steps: int, seed: int = 0) -> float:
    """Agent steps per second of the vector env alone (random actions)."""
    vecenv = make_vecenv(env, "serial", num_envs)
    rng = np.random.default_rng(seed)
    n_actions = int(vecenv.single_action_space.n)
    vecenv.async_reset(seed)
    vecenv.recv()
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        vecenv.send(rng.integers(0, n_actions, num_envs))
        vecenv.recv()
    elapsed = time.perf_counter() - start
    vecenv.close()
    return (steps // num_envs) * num_envs / elapsed


def training_sps(
    env: str, num_envs: int, batch_size: int, epochs: int, overrides: dict[str, str]
) -> tuple[float, dict]:
    """Mean SPS of ``epochs`` training epochs after one warm-up, and the phase times."""
    settings = {
        "train.batch_size": str(batch_size),
        "vec.num_envs": str(num_envs),
        "train.checkpoint_interval": "1000000",
        **overrides,
    }
    cfg = load_config(env, settings)
    return timed_epochs(cfg, make_vecenv(env, "serial", num_envs), epochs)


def timed_epochs(cfg: RunConfig, vecenv: Any, epochs: int) -> tuple[float, dict]:
    """Mean SPS of ``epochs`` epochs of a fresh policy after one warm-up epoch, and the
    trainer's phase times (the vector env is closed afterwards)."""
    torch.manual_seed(cfg.train.seed)
    policy = Policy(architecture_for(cfg.env_name, vecenv))
    with tempfile.TemporaryDirectory() as tmp:
        dashboard = Dashboard(stream=io.StringIO(), live=False)
        trainer = Trainer(
            cfg, vecenv, policy, Path(tmp), start=RunStart(end_epoch=10**6), dashboard=dashboard
        )
        trainer.train_epoch()  # warm-up: env reset, allocator, first-call overheads
        trainer.profile.seconds.clear()
        start = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch()
        elapsed = time.perf_counter() - start
        trainer.close()
    return epochs * cfg.train.batch_size / elapsed, dict(trainer.profile.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="beam_rider", help="environment (default: beam_rider)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs; the first is a warm-up (default: 3)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8192, help="agent steps per epoch (default: 8192)"
    )
    parser.add_argument(
        "--num-envs", type=int, default=16, help="serial environments (default: 16)"
    )
    parser.add_argument(
        "--raw-steps",
        type=int,
        default=16384,
        help="agent steps of raw env stepping (default: 16384)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads (default: the config's)"
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "auto"),
        default="auto",
        help="encoder precision of the update (default: auto = bfloat16 where native)",
    )
    args = parser.parse_args()
    overrides = {"train.precision": args.precision}
    if args.torch_threads is not None:
        overrides["train.torch_threads"] = str(args.torch_threads)

    raw = raw_env_sps(args.env, args.num_envs, args.raw_steps)
    sps, phases = training_sps(args.env, args.num_envs, args.batch_size, args.epochs, overrides)
    print(
        f"env {args.env}, serial, {args.num_envs} envs, batch {args.batch_size}, "
        f"update threads {load_config(args.env, overrides).train.torch_threads or 'all'}, "
        "rollout threads 1, "
        f"precision {args.precision}"
    )
    print(f"raw env stepping      {raw:8.0f} SPS")
    print(f"pufferfiber training  {sps:8.0f} SPS")
    print(f"training / raw env    {sps / raw:8.1%}   (target >= 30%)")
    print(
        f"vs PufferLib 2.0      {sps / PUFFERLIB_SERIAL_SPS:8.2f}x  "
        f"(reference {PUFFERLIB_SERIAL_SPS:.0f} SPS; target >= 1.2x)"
    )
    total = sum(phases.values())
    print(
        "time per phase (s):  "
        + ", ".join(
            f"{k} {v:.1f} ({v / total:.0%})"
            for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
        )
    )


if __name__ == "__main__":
    main()
