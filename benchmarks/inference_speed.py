"""Inference speed of the original and of collapsed Ocean policies, in PyTorch and in C.

A collapsed policy is the same :class:`~pufferfiber.core.policy.Policy` with fewer Linear and
LSTM units, and its speed depends on its widths only, so the collapsed networks here are the
pong / breakout policy with both widths shrunk together to about 50, 20 and 5 % of the
parameters (``--fractions``); ``--checkpoint PATH`` adds a real checkpoint (a collapse of
yours, say) as one more row. Every network is timed, in one run, on:

* PyTorch (``Policy.step`` under ``inference_mode``, ``--threads`` threads): one agent per
  step (latency) and a batch of 1,024 (throughput);
* C (the ``policy.c`` that ``pufferfiber export --format puffernet`` generates, built with
  ``cc -O2``, timed by its own ``--bench BATCH STEPS``): one agent, and the batch of agents our
  Ocean settings step (``[vec] num_envs``, 256).

* training (``--train-epochs N``, default 4; 0 skips it): agent steps per second of whole
  :class:`~pufferfiber.rl.trainer.Trainer` epochs (collect + PPO update) at our Ocean settings
  (``configs/ocean/<env>.ini``, serial env), after one warm-up epoch: the compute the guide's
  protocol saves once it retrains the collapsed network.

Each figure is the median of ``--repeat`` timings (training: the mean over the epochs); the
ratios (original / collapsed, training: collapsed / original) come from the same run, and the
machine and its load average are printed with them.

    .venv/bin/python benchmarks/inference_speed.py [--envs puffer_pong,puffer_breakout]
        [--fractions 0.5,0.2,0.05] [--repeat 5] [--threads 1] [--train-epochs 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pufferfiber.config.sections import load_config
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.io import puffernet
from pufferfiber.io.checkpoints import load_checkpoint
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.trainer import Trainer
from pufferfiber.workflows.export import compile_c, find_compiler, puffernet_include

TORCH_BATCH = 1024
C_BATCH = 256  # [vec] num_envs of configs/ocean/puffer_pong.ini and puffer_breakout.ini


def shrunk(arch: Architecture, fraction: float) -> Architecture:
    """``arch`` with the Linear and LSTM widths shrunk together (one width for both, as a
    collapse of a square 128/128 policy tends to give) to the parameter count nearest
    ``fraction`` of the original's."""
    full = arch.parameter_count()
    best = min(
        range(1, max(arch.lstm, *arch.hidden) + 1),
        key=lambda k: abs(arch.replace(hidden=(k,) * len(arch.hidden), lstm=k).parameter_count()
                          / full - fraction),
    )  # fmt: skip
    return arch.replace(hidden=(best,) * len(arch.hidden), lstm=best)


def median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def torch_seconds_per_step(policy: Policy, batch: int, repeat: int) -> float:
    """Median seconds of one ``Policy.step`` of ``batch`` agents (the state carried)."""
    obs = observation_batch(policy.arch, batch, seed=1)
    state = policy.initial_state(batch)
    # enough steps per timing for ~0.2 s at the expected cost, at least 5
    steps = max(5, min(2000, int(2e8 / (policy.parameter_count() * batch + 2e5))))
    for _ in range(3):
        _, _, state = policy.step(obs, state)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(steps):
            _, _, state = policy.step(obs, state)
        times.append((time.perf_counter() - start) / steps)
    return median(times)


def c_seconds_per_step(
    binary: Path, weights: Path, n_params: int, batch: int, repeat: int
) -> float:
    """Median seconds per batched step of the generated program's own ``--bench``."""
    steps = max(5, min(200000, int(3e8 / (n_params * batch))))
    times = []
    for _ in range(repeat):
        done = subprocess.run(
            [str(binary), str(weights), "--bench", str(batch), str(steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        fields = done.stdout.split()
        times.append(float(fields[fields.index("seconds_per_step") + 1]))
    return median(times)


def training_sps(env: str, policy: Policy, epochs: int, threads: int) -> float:
    """Agent steps per second of ``epochs`` training epochs of a copy of ``policy`` at our
    Ocean settings, after one warm-up epoch (env reset, allocator, first calls)."""
    overrides = {"train.checkpoint_interval": "1000000", "train.torch_threads": str(threads)}
    cfg = load_config(env, overrides)
    vecenv = make_vecenv(env, "serial", cfg.vec.num_envs, env_kwargs=dict(cfg.env))
    trained = Policy(policy.arch)
    trained.load_state_dict(policy.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        dashboard = Dashboard(stream=io.StringIO(), live=False)
        # the schedule's own end epoch (hundreds) is far beyond the few timed here
        trainer = Trainer(cfg, vecenv, trained, Path(tmp), dashboard=dashboard)
        try:
            trainer.train_epoch()
            start = time.perf_counter()
            for _ in range(epochs):
                trainer.train_epoch()
            elapsed = time.perf_counter() - start
        finally:
            trainer.close()
    return epochs * cfg.train.batch_size / elapsed


def measure(policy: Policy, build: Path, repeat: int) -> dict[str, float]:
    policy = policy.cpu().eval()
    n = policy.parameter_count()
    (build / "weights.bin").write_bytes(puffernet.weights_bytes(policy))
    (build / "policy.c").write_text(puffernet.policy_source(policy.arch))
    compile_c(build / "policy.c", build / "policy", [puffernet_include()])
    c_args = (build / "policy", build / "weights.bin", n)
    return {
        "parameters": n,
        "torch_b1_s": torch_seconds_per_step(policy, 1, repeat),
        f"torch_b{TORCH_BATCH}_s": torch_seconds_per_step(policy, TORCH_BATCH, repeat),
        "c_b1_s": c_seconds_per_step(*c_args, 1, repeat),
        f"c_b{C_BATCH}_s": c_seconds_per_step(*c_args, C_BATCH, repeat),
    }


def machine(threads: int) -> dict[str, Any]:
    cc = find_compiler() or "none"
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cc": version.stdout.splitlines()[0] if version.stdout else cc,
        "load_average_before": round(os.getloadavg()[0], 2),
    }


def row_text(name: str, r: dict[str, float], base: dict[str, float]) -> str:
    def pair(key: str, batch: int) -> str:
        rate = batch / r[key]
        ratio = base[key] / r[key]
        shown = f"{r[key] * 1e6:8.1f} us" if batch == 1 else f"{rate / 1e3:7.1f} k/s"
        return f"{shown} ({ratio:4.1f}x)"

    pct = 100 * r["parameters"] / base["parameters"]
    train = ""
    if "train_sps" in r:
        train = f"  {r['train_sps'] / 1e3:7.1f} k/s ({r['train_sps'] / base['train_sps']:4.2f}x)"
    return (
        f"{name:<26}{r['parameters']:>9,} {pct:5.1f}%  "
        f"{pair('torch_b1_s', 1)}  {pair(f'torch_b{TORCH_BATCH}_s', TORCH_BATCH)}  "
        f"{pair('c_b1_s', 1)}  {pair(f'c_b{C_BATCH}_s', C_BATCH)}{train}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="puffer_pong,puffer_breakout", help="Ocean envs")
    parser.add_argument("--fractions", default="0.5,0.2,0.05", help="collapsed sizes")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="add a checkpoint as a row of its env (repeatable)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="median of N (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--train-epochs", type=int, default=4,
                        help="timed training epochs per policy, 0: none (default 4)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fractions = [float(f) for f in args.fractions.split(",")]
    info = machine(args.threads)
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    print(
        f"{'policy':<26}{'params':>9} {'share':>6}  {'torch b1 latency':>20}  "
        f"{f'torch b{TORCH_BATCH} agent-steps':>20}  {'C b1 latency':>20}  "
        f"{f'C b{C_BATCH} agent-steps':>20}  {'training SPS':>20}   (ratios: original / this; "
        "training: this / original)"
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    extra = {c: load_checkpoint(c) for c in args.checkpoint}
    with tempfile.TemporaryDirectory(prefix="inference-speed-") as tmp:
        for env in args.envs.split(","):
            arch = architecture_for(env)
            policies = {"original": Policy(arch)}
            for f in fractions:
                small = shrunk(arch, f)
                policies[f"{f:.0%} ({small.hidden[0]}/{small.lstm})"] = Policy(small)
            for path, ckpt in extra.items():
                if ckpt.env == env:
                    policies[path.name] = ckpt.policy
            results[env] = {}
            print(env)
            for name, policy in policies.items():
                build = Path(tmp) / f"{env}-{len(results[env])}"
                build.mkdir()
                results[env][name] = r = measure(policy, build, args.repeat)
                if args.train_epochs > 0:
                    r["train_sps"] = training_sps(env, policy, args.train_epochs, args.threads)
                print("  " + row_text(name, r, results[env]["original"]))
    info["load_average_after"] = round(os.getloadavg()[0], 2)
    print(f"load average after: {info['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
