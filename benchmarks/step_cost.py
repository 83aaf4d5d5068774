"""The rollout's per-step policy cost and the FLOP bound on training SPS, Ocean reference shape.

    .venv/bin/python benchmarks/step_cost.py [--batch 1024] [--seconds 2] [--repeats 3]

Measurements in one process, each the median of ``--repeats`` interleaved ones, on the reference
Ocean policy (MLP 8 -> 128 -> LSTM 128, pong's observation of 8 floats, 3 actions):

* ``Policy.step`` on ``--batch`` envs under ``torch.no_grad`` on one thread (the rollout's
  thread count, see ``Trainer``), and the recurrent layer alone called two ways on the same
  weights: ``nn.LSTM`` on a length-1 sequence (what ``step`` does) and ``torch.lstm_cell``
  (the kernel ``nn.LSTMCell`` calls), to see whether the module's sequence path costs anything;
* the float32 matmul rate (GFLOP/s) on 1 and on 2 threads, for a large square product and for
  the LSTM's gate product (``[batch, 128] @ [128, 512]``), and the upper bound on training SPS
  each gives: rate / FLOPs per agent step, where FLOPs per agent step = the forward in the
  rollout + forward and backward (about 2x the forward) in one update epoch, counted from the
  layer shapes (matmuls only: the LSTM's element-wise gate arithmetic, the optimizer and the
  env are left out, so the bound is generous).

Run it on the machine state the SPS measurement it is read against had (load printed).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import cast

import torch

from pufferfiber.core.policy import Architecture, Policy

OBS, ACTIONS, HIDDEN, LSTM = 8, 3, 128, 128


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` after three warm-up calls."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def forward_flops(arch: Architecture) -> int:
    """Multiply-add FLOPs (2 per MAC) of one agent step's forward, from the layer shapes."""
    sizes = [arch.obs_shape[0], *arch.hidden]
    encoder = sum(2 * a * b for a, b in itertools.pairwise(sizes))
    lstm = 2 * (arch.hidden[-1] + arch.lstm) * 4 * arch.lstm
    heads = 2 * arch.lstm * (arch.n_actions + 1)
    return encoder + lstm + heads


def matmul_gflops(m: int, k: int, n: int, seconds: float) -> float:
    """float32 GFLOP/s of ``[m, k] @ [k, n]`` on the current thread count."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n * rate(lambda: a @ b, seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="envs per step (default 1024)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    args = parser.parse_args()
    print(f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    torch.manual_seed(0)
    arch = Architecture.mlp(OBS, ACTIONS, hidden=(HIDDEN,), lstm=LSTM)
    policy = Policy(arch).eval()
    obs = torch.randn(args.batch, OBS)
    state = policy.initial_state(args.batch)
    rnn = policy.recurrent
    x = torch.randn(args.batch, HIDDEN)
    h, c = state[0][0], state[1][0]
    weights = [
        cast(torch.Tensor, getattr(rnn, n))
        for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    ]

    torch.set_num_threads(1)
    calls: dict[str, Callable[[], object]] = {
        "step": lambda: policy.step(obs, state),
        "module": lambda: rnn(x[None], state),
        "cell": lambda: torch.lstm_cell(x, (h, c), *weights),
    }
    rates: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        # interleaved repeats, median: the load of a shared machine moves within seconds
        for _ in range(args.repeats):
            for name, fn in calls.items():
                rates[name].append(rate(fn, args.seconds))
    step, module, cell = (statistics.median(rates[k]) for k in ("step", "module", "cell"))
    b = args.batch
    print(f"\none thread, batch {b}:")
    for label, per_s in (
        ("Policy.step", step),
        ("nn.LSTM, length 1", module),
        ("torch.lstm_cell", cell),
    ):
        print(f"  {label:<20} {per_s * b:12,.0f} agent steps/s  ({1e6 / per_s:6.0f} us per call)")

    fwd = forward_flops(arch)
    per_step = fwd + 3 * fwd  # rollout forward; update forward + backward (~2x forward)
    lstm = 2 * (HIDDEN + LSTM) * 4 * LSTM
    print(
        f"\nFLOPs per agent step: forward {fwd / 1e3:.0f} k (LSTM {lstm / 1e3:.0f} k), "
        f"rollout + one update epoch {per_step / 1e6:.2f} M"
    )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        square = statistics.median(
            matmul_gflops(2048, 2048, 2048, args.seconds) for _ in range(args.repeats)
        )
        gate = statistics.median(
            matmul_gflops(b, HIDDEN, 4 * LSTM, args.seconds) for _ in range(args.repeats)
        )
        print(f"{threads} thread(s), float32 matmul (bound = rate / FLOPs per step):")
        for label, gflops in (("2048 x 2048 x 2048", square), (f"{b} x {HIDDEN} x 512", gate)):
            bound = gflops * 1e9 / per_step
            print(f"  {label:<20} {gflops:6.1f} GFLOP/s   SPS bound {bound:9,.0f}")
    print(f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
