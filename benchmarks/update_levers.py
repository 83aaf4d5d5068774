"""The levers on training SPS at PufferLib's reference settings, each against a baseline measured
in the same run, on the same batch.

    .venv/bin/python benchmarks/update_levers.py [--env puffer_pong] [--rounds 5] [--threads 2]

One :class:`pufferfiber.rl.trainer.Trainer` at ``benchmarks/ocean_sps.py``'s reference settings
(1,024 envs, batch 65,536, minibatch 16,384, bptt 16, one update epoch, float32) collects a
real batch after one warm-up epoch. Then, in ``--rounds`` interleaved rounds:

* **rollout**: :meth:`Trainer.collect` of a whole batch on ``--threads`` torch threads (what
  the trainer does with the serial backend, ``train.rollout_threads`` auto) and on one thread
  (what it did before);
* **update**: :meth:`Trainer.update` on that same batch, from the same weights and Adam state
  every time, as the trainer does it (``baseline``) and with one change each. Levers not
  kept: ``compile`` (``torch.compile`` of :meth:`Trainer.losses`, the forward and the loss;
  the LSTM stays oneDNN's kernel) and ``bf16-encoder`` (the MLP encoder in bfloat16, the
  recurrent state and the LSTM in float32: ``train.precision bfloat16``, not float32). What the
  trainer did before: ``unfused-adam`` (Adam's per-tensor loop instead of its fused kernel) and
  ``gather-mask`` (the masked unroll that ran the sequences without a done and those with one
  in separate calls, gathered and scattered back). A diagnosis: ``no-mask`` (the state is
  *not* zeroed at dones inside a training sequence, as PufferLib 2.0.6's and 3.0's trainers
  do, so every sequence runs in one fused LSTM call).

Prints each variant's median seconds per batch and its ratio to the baseline of the same
phase, and the epoch SPS each would give (rollout + update medians). The lines
``ratio LEVER/baseline: X.XX`` are for scripts. Run on a quiet machine (the load is printed).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ocean_sps import reference_trainer

from pufferfiber.core.policy import Policy
from pufferfiber.rl.trainer import Trainer, _torch_threads

UPDATE_LEVERS = ("compile", "bf16-encoder", "no-mask", "unfused-adam", "gather-mask")


def cut_fraction(trainer: Trainer) -> float:
    """Share of the batch's training sequences with a done before their last step (those the
    masked unroll steps through time)."""
    values = trainer.buffer.values.numpy()
    dones = trainer.buffer.sequences(np.zeros_like(values))["dones"]
    return float(dones[:, :-1].bool().any(dim=1).float().mean())


class Lever:
    """A variant of the update: ``on`` / ``off`` switch it on the trainer around one timing."""

    def __init__(self, trainer: Trainer, name: str) -> None:
        self.trainer, self.name = trainer, name
        self.saved: dict[str, Any] = {}
        if name == "compile":
            self.compiled = torch.compile(trainer.losses)
        if name == "unfused-adam":
            self.plain = torch.optim.Adam(
                trainer.policy.parameters(), lr=trainer.cfg.learning_rate, eps=1e-5
            )

    def on(self) -> None:
        t, policy = self.trainer, self.trainer.policy
        if self.name == "compile":
            t.losses = self.compiled  # type: ignore[method-assign]
        elif self.name == "unfused-adam":
            self.saved["optimizer"] = t.optimizer
            self.plain.load_state_dict(t.optimizer.state_dict())
            for group in self.plain.param_groups:
                group["fused"] = None
            t.optimizer = self.plain
        elif self.name == "bf16-encoder":
            t.encoder_bf16 = True
        elif self.name == "no-mask":
            policy._masked = lambda x, state, dones: policy._recur(x, state)[0]  # type: ignore[method-assign]
        elif self.name == "gather-mask":
            policy._masked = functools.partial(gather_mask, policy)  # type: ignore[method-assign]

    def off(self) -> None:
        t = self.trainer
        for attr in ("losses", "_masked"):
            t.__dict__.pop(attr, None)
            t.policy.__dict__.pop(attr, None)
        t.encoder_bf16 = False
        if "optimizer" in self.saved:
            t.optimizer = self.saved.pop("optimizer")


def gather_mask(
    policy: Policy, x: torch.Tensor, state: tuple[torch.Tensor, ...], dones: torch.Tensor
) -> torch.Tensor:
    """The masked unroll as the trainer had it before: the sequences without a done inside in
    one call, those with one stepped, both gathered out and scattered back."""
    cut = dones[:, :-1].bool().any(dim=1)
    n_cut = int(cut.sum())
    if n_cut == 0:
        return policy._recur(x, state)[0]
    if n_cut == len(cut):
        return policy._stepwise(x, state, dones)
    loop, fused = cut.nonzero().squeeze(1), (~cut).nonzero().squeeze(1)
    out_fused = policy._recur(x[:, fused], tuple(s[:, fused] for s in state))[0]
    out_loop = policy._stepwise(x[:, loop], tuple(s[:, loop] for s in state), dones[loop])
    inverse = torch.argsort(torch.cat([fused, loop]))
    return torch.cat([out_fused, out_loop], dim=1)[:, inverse]


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="puffer_pong", help="Ocean game (default: puffer_pong)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds (default: 5)"
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch threads of the update, and of the rollout's multi-thread variant (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", choices=("reference", "config"), default="reference",
        help="PufferLib's reference settings (Ocean games) or the env's own config, e.g. for "
             "beam_rider (default: reference)",
    )  # fmt: skip
    parser.add_argument(
        "--levers", default=",".join(UPDATE_LEVERS),
        help=f"update levers, comma-separated (default: {','.join(UPDATE_LEVERS)})",
    )  # fmt: skip
    args = parser.parse_args()
    levers = [x for x in args.levers.split(",") if x]
    bad = [x for x in levers if x not in UPDATE_LEVERS]
    if bad:
        print(
            f"update_levers: unknown lever(s) {bad}; choose from {UPDATE_LEVERS}", file=sys.stderr
        )
        raise SystemExit(2)
    load = os.getloadavg()
    print(f"# {args.env}, {args.setting} settings, float32, {args.threads} threads, "
          f"load {load[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = reference_trainer(args.env, args.threads, Path(tmp), args.setting == "reference")
        trainer.train_epoch()  # warm-up: env reset, allocator, first-call overheads
        times: dict[str, list[float]] = {"baseline": [], **{x: [] for x in levers}}
        many = f"{args.threads} threads"
        rollout: dict[str, list[float]] = {many: [], "1 thread": []}
        variants = {x: Lever(trainer, x) for x in levers}
        with _torch_threads(args.threads):
            for warm in variants.values():  # compile and first-call costs outside the timing
                warm.on()
                trainer.update()
                warm.off()
        for r in range(args.rounds):
            for name, n in ((many, args.threads), ("1 thread", 1))[:: 1 if r % 2 else -1]:
                with _torch_threads(n):
                    rollout[name].append(seconds(trainer.collect))
            weights = copy.deepcopy(trainer.policy.state_dict())
            adam = copy.deepcopy(trainer.optimizer.state_dict())
            names = list(times)
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
                trainer.policy.load_state_dict(weights)
                trainer.optimizer.load_state_dict(adam)
                lever = variants.get(name)
                if lever:
                    lever.on()
                with _torch_threads(args.threads):
                    times[name].append(seconds(trainer.update))
                if lever:
                    lever.off()
            line = ", ".join(f"{k} {v[-1]:.3f} s" for k, v in {**rollout, **times}.items())
            print(f"round {r + 1}: {line}", flush=True)
        cut = cut_fraction(trainer)
        phases = {k: trainer.profile.seconds[k] for k in ("env", "eval_forward", "eval_misc")}
        trainer.close()
    batch = trainer.cfg.batch_size
    base_roll = statistics.median(rollout[many])
    base = statistics.median(times["baseline"])
    print(f"sequences with a done inside (stepped through time): {cut:.1%}")
    total = sum(phases.values())
    split = ", ".join(f"{k} {v / total:.0%}" for k, v in phases.items())
    print(f"rollout time (all rounds, both thread counts): {split}")
    print(f"baseline epoch: rollout {base_roll:.3f} s + update {base:.3f} s = "
          f"{batch / (base_roll + base):,.0f} SPS")  # fmt: skip
    for name, values in rollout.items():
        m = statistics.median(values)
        print(f"rollout {name}: {m:.3f} s ({base_roll / m:.2f}x), epoch "
              f"{batch / (m + base):,.0f} SPS")  # fmt: skip
    for name, values in times.items():
        m = statistics.median(values)
        print(f"update {name}: {m:.3f} s ({base / m:.2f}x), epoch "
              f"{batch / (base_roll + m):,.0f} SPS")  # fmt: skip
    print(
        f"ratio rollout-1-thread/baseline: {base_roll / statistics.median(rollout['1 thread']):.2f}"
    )
    for name in levers:
        print(f"ratio {name}/baseline: {base / statistics.median(times[name]):.2f}")


if __name__ == "__main__":
    main()
