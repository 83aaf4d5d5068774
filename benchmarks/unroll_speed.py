"""Cost of the masked unroll in the PPO update: fused sequences vs stepping every sequence.

One minibatch step (``Policy.unroll`` forward + backward + Adam) of puffer_pong's network on
its minibatch sizes (ours: 256 sequences × 16 steps; PufferLib's reference: 1,024 × 16), with
episode ends drawn at the rate of real pong episodes (300 steps early in training, 2,000 in
the middle). ``stepped`` is the previous update: as soon as any sequence of the minibatch has
an episode end inside, every sequence steps through the LSTM one step at a time; ``unroll`` is
:meth:`Policy.unroll`, which runs the sequences without an end inside in one fused call and
steps only the others. Both give the same outputs (checked here).

    .venv/bin/python benchmarks/unroll_speed.py [--repeat 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

import torch

from pufferfiber.core.policy import Policy, RecurrentState, observation_batch
from pufferfiber.envs.registry import architecture_for

BPTT = 16
MINIBATCHES = {"ours (4,096)": 256, "reference (16,384)": 1024}
EPISODE_LENGTHS = (300, 2000)


def stepped_unroll(
    policy: Policy, obs: torch.Tensor, state: RecurrentState, dones: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous update's forward (trainer.sequence_forward before the policy owned it)."""
    b, t = obs.shape[:2]
    hidden = policy.encode_observations(obs.reshape(b * t, *obs.shape[2:]))
    hidden = hidden.reshape(b, t, -1).transpose(0, 1)
    h, c = state
    if not bool(dones[:, :-1].any()):
        out, _ = policy.recurrent(hidden, (h, c))
    else:
        steps = []
        for k in range(t):
            o, (h, c) = policy.recurrent(hidden[k : k + 1], (h, c))
            keep = (1.0 - dones[:, k])[None, :, None]
            h, c = h * keep, c * keep
            steps.append(o)
        out = torch.cat(steps, dim=0)
    return policy.decode_actions(out.transpose(0, 1))


def minibatch_step(
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    obs: torch.Tensor,
    state: RecurrentState,
    dones: torch.Tensor,
) -> None:
    """Forward, a PPO-shaped loss, backward and the Adam step."""
    logits, values = forward(policy, obs, state, dones)
    loss = logits.logsumexp(-1).mean() + values.pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (Adam state, allocator)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="median of N (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pong's: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = Policy(architecture_for("puffer_pong"))
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3, eps=1e-5)
    print(f"puffer_pong policy, {policy.parameter_count():,} parameters, {args.threads} thread(s)")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for name, seqs in MINIBATCHES.items():
        obs = observation_batch(policy.arch, seqs * BPTT).reshape(seqs, BPTT, -1)
        state = tuple(0.1 * torch.randn_like(s) for s in policy.initial_state(seqs))
        for length in EPISODE_LENGTHS:
            gen = torch.Generator().manual_seed(length)
            dones = (torch.rand(seqs, BPTT, generator=gen) < 1.0 / length).float()
            with_end = int(dones[:, :-1].any(dim=1).sum())

            with torch.no_grad():
                new, old = (
                    policy.unroll(obs, state, dones),
                    stepped_unroll(policy, obs, state, dones),
                )
            diff = max(float((a - b).abs().max()) for a, b in zip(new, old, strict=True))
            args_ = (policy, optimizer, obs, state, dones)
            t_old = timed(partial(minibatch_step, stepped_unroll, *args_), args.repeat)
            t_new = timed(partial(minibatch_step, Policy.unroll, *args_), args.repeat)
            print(
                f"{name:<20} episodes of {length:>5} steps ({with_end:>3}/{seqs} sequences with "
                f"an end): stepped {t_old * 1e3:7.1f} ms, unroll {t_new * 1e3:7.1f} ms "
                f"({t_old / t_new:.2f}x), max |diff| {diff:.1e}"
            )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
