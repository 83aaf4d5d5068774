"""Cost of the per-epoch snapshot that lets Ctrl-C drop an unfinished epoch (issue 11).

Before each PPO update the trainer copies the weights and the Adam state, so that an interrupt
during the update can restore the last finished epoch. This measures that copy for the guide's
BeamRider network (3.9M parameters) against one update minibatch step (forward + backward +
Adam on 1,024 agent steps, the guide's minibatch) measured in the same run, and prints the
snapshot's share of a whole BeamRider update (90 minibatch steps: 30,720 / 1,024 × 3 epochs).

    .venv/bin/python benchmarks/epoch_snapshot.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch

from pufferfiber.core.policy import Architecture, Policy, observation_batch

MINIBATCH, BPTT, STEPS_PER_UPDATE = 1024, 2, 30720 // 1024 * 3


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="best of N (default 5)")
    args = parser.parse_args()
    torch.manual_seed(0)
    policy = Policy(Architecture.atari(9))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4, eps=1e-5)
    seqs = MINIBATCH // BPTT
    obs = observation_batch(policy.arch, seqs * BPTT).reshape(seqs, BPTT, *policy.arch.obs_shape)
    state = policy.initial_state(seqs, torch.device("cpu"))
    dones = torch.zeros(seqs, BPTT)

    def minibatch_step() -> None:
        logits, values = policy.unroll(obs, state, dones)
        loss = logits.logsumexp(-1).mean() + values.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def snapshot() -> None:
        weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        moments = copy.deepcopy(optimizer.state_dict())
        del weights, moments

    minibatch_step()  # Adam state exists from here on, as in training
    step_s = best(minibatch_step, args.repeat)
    snap_s = best(snapshot, args.repeat)
    update_s = step_s * STEPS_PER_UPDATE
    print(f"parameters: {policy.parameter_count():,}")
    print(f"snapshot (weights + Adam state): {snap_s * 1e3:.1f} ms")
    print(f"one minibatch step ({MINIBATCH} agent steps): {step_s * 1e3:.1f} ms (baseline)")
    print(f"snapshot / minibatch step: {snap_s / step_s:.3f}")
    print(f"snapshot / whole update ({STEPS_PER_UPDATE} steps): {100 * snap_s / update_s:.3f} %")


if __name__ == "__main__":
    main()
