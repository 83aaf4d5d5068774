"""Training throughput on PufferLib's Ocean games next to raw env stepping, in one run.

    .venv/bin/python benchmarks/ocean_sps.py [--env puffer_pong,puffer_breakout] [--epochs 3]
        [--setting reference|config|both]

For each game and setting this measures, in the same process, raw stepping of the same Ocean
env object (random actions, no policy) and whole training epochs of
:class:`pufferfiber.rl.trainer.Trainer` (collect + PPO update; the first epoch is a warm-up).

Settings:

* ``reference``: the issue's comparison point, PufferLib's published trainer settings: 1,024
  envs, batch 65,536, minibatch 16,384, bptt 16, one update epoch, MLP 128 → LSTM 128. The ratio
  to PufferLib 2.0.6 (pong 79k, breakout 63k SPS) and 3.0 (35k / 40k) on this kind of machine is
  against those recorded numbers (their trainers are not importable from the 2.0.2 wheel), so
  run it on an idle machine and read the load printed with it. ``benchmarks/upstream_sps.py``
  builds both upstream trainers in venvs of their own and measures them in the same run.
* ``config``: our ``pufferfiber/configs/ocean/<env>.ini`` settings (the sweep's).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from train_sps import timed_epochs

from pufferfiber.config.sections import load_config
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.start import RunStart
from pufferfiber.rl.trainer import Trainer

# Recorded trainer throughput on a 2-core machine of this kind (agent steps/s), issue 8.
PUFFERLIB_SPS = {
    "puffer_pong": {"2.0.6": 79_000, "3.0": 35_000},
    "puffer_breakout": {"2.0.6": 63_000, "3.0": 40_000},
}
REFERENCE = {
    "vec.num_envs": "1024",
    "train.batch_size": "65536",
    "train.minibatch_size": "16384",
    "train.bptt_horizon": "16",
    "train.update_epochs": "1",
}


def reference_trainer(
    env: str, torch_threads: int, run_dir: Path, reference: bool = True
) -> Trainer:
    """A quiet :class:`Trainer` of a fresh policy on ``env`` (serial backend, float32, no
    checkpoints), at the ``REFERENCE`` settings or the env's own config."""
    overrides = {
        **(REFERENCE if reference else {}),
        "train.torch_threads": str(torch_threads),
        "train.precision": "float32",
        "train.checkpoint_interval": "1000000",
    }
    cfg = load_config(env, overrides)
    vecenv = make_vecenv(env, "serial", cfg.vec.num_envs, env_kwargs=dict(cfg.env))
    torch.manual_seed(cfg.train.seed)
    policy = Policy(architecture_for(env, vecenv))
    dashboard = Dashboard(stream=io.StringIO(), live=False)
    start = RunStart(end_epoch=10**9)
    return Trainer(cfg, vecenv, policy, run_dir, start=start, dashboard=dashboard)


def raw_env_sps(env: str, overrides: dict[str, str], seconds: float = 2.0) -> float:
    """Agent steps per second of the env object alone (random actions, pre-drawn)."""
    cfg = load_config(env, overrides)
    vecenv = make_vecenv(env, "serial", cfg.vec.num_envs, env_kwargs=dict(cfg.env))
    n, n_actions = cfg.vec.num_envs, int(vecenv.single_action_space.n)
    actions = np.random.default_rng(0).integers(0, n_actions, (64, n))
    vecenv.async_reset(0)
    vecenv.recv()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vecenv.send(actions[steps % 64])
        vecenv.recv()
        steps += 1
    elapsed = time.perf_counter() - start
    vecenv.close()
    return steps * n / elapsed


def training_sps(env: str, overrides: dict[str, str], epochs: int) -> tuple[float, dict]:
    """Mean SPS of ``epochs`` training epochs after one warm-up, and the phase times."""
    cfg = load_config(env, {**overrides, "train.checkpoint_interval": "1000000"})
    vecenv = make_vecenv(env, "serial", cfg.vec.num_envs, env_kwargs=dict(cfg.env))
    return timed_epochs(cfg, vecenv, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--env", default="puffer_pong,puffer_breakout",
        help="Ocean games, comma-separated (default: puffer_pong,puffer_breakout)",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, default=3,
        help="timed training epochs after one warm-up epoch (default: 3)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", choices=("reference", "config", "both"), default="both",
        help="PufferLib's reference settings, our config's, or both (default: both)",
    )  # fmt: skip
    parser.add_argument(
        "--torch-threads", type=int, default=None,
        help="train.torch_threads for both settings (default: each config's, 1 for Ocean)",
    )  # fmt: skip
    args = parser.parse_args()
    threads = {} if args.torch_threads is None else {"train.torch_threads": str(args.torch_threads)}
    settings = {"reference": {**REFERENCE, **threads}, "config": threads}
    chosen = list(settings) if args.setting == "both" else [args.setting]
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    for env in [e.strip() for e in args.env.split(",") if e.strip()]:
        for name in chosen:
            overrides = settings[name]
            cfg = load_config(env, overrides)
            raw = raw_env_sps(env, overrides)
            sps, phases = training_sps(env, overrides, args.epochs)
            t = cfg.train
            print(
                f"\n{env}, {name} settings: {cfg.vec.num_envs} envs, batch {t.batch_size}, "
                f"minibatch {t.minibatch_size}, bptt {t.bptt_horizon}, update epochs "
                f"{t.update_epochs}, torch threads {t.torch_threads or torch.get_num_threads()}"
            )
            print(f"  raw env stepping      {raw:12,.0f} SPS")
            print(f"  pufferfiber training  {sps:12,.0f} SPS   ({sps / raw:.2%} of raw)")
            if name == "reference":
                for version, ref in PUFFERLIB_SPS[env].items():
                    print(
                        f"  vs PufferLib {version:<6}  {sps / ref:12.2f}x  (recorded {ref:,} SPS)"
                    )
            total = sum(phases.values())
            print(
                "  time per phase: "
                + ", ".join(
                    f"{k} {v / total:.0%}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
                )
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
