"""Speed and memory of fibers + collapse against a straightforward implementation.

The straightforward implementation is written here, in the way such code is usually first
written: a Python loop over units to build each input-collapsed row, scikit-learn's
``AgglomerativeClustering(metric="cosine", linkage="average", distance_threshold=τ)`` on the
rows, and a loop over fibers to build the quotient's rows and columns. It computes the same
fibers (the script checks the counts agree) and the same collapsed network.

Two measurements, each implementation in a forked child process (time, and peak memory as the
child's peak RSS above its RSS at start):

1. the whole policy: the 3.9M-parameter BeamRider network (the trained upstream checkpoint when
   found, else a random one), all layers, τ = 0.3;
2. one wide layer: an MLP policy whose Linear layer has 512 .. 8192 units (512 inputs, rows
   drawn around n/4 directions so that real merges happen), τ = 0.3.

Usage::

    .venv/bin/python benchmarks/fibers_speed.py [--checkpoint PATH] [--sizes 512,...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.graph import (
    LayerNode,
    bias_view,
    build_graph,
    recurrent_view,
    weight_view,
)
from pufferfiber.core.policy import Architecture, Policy, observation_batch

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[2] / "shared/data/beam_rider-5eed0001/model_000051.pt"
)

# --------------------------------------------------------------------------- straightforward


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def naive_fibers(policy: Policy, tau: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-unit rows + scikit-learn clustering; returns label → (labels, fold scales)."""
    from sklearn.cluster import AgglomerativeClustering

    graph = build_graph(policy)
    sd = policy.state_dict()
    colours: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in graph.hidden:
        producer = graph.producer(node)
        in_labels, in_scales = (
            colours[producer.name]
            if producer
            else (np.arange(node.in_units), np.ones(node.in_units))
        )
        onehot = np.zeros((node.in_units, in_labels.max() + 1))
        onehot[np.arange(node.in_units), in_labels] = in_scales
        w = _np(weight_view(node, sd[node.weight_key]))
        bias: np.ndarray = np.sum([_np(bias_view(node, sd[k])) for k in node.bias_keys], axis=0)
        hh = _np(recurrent_view(node, sd[node.recurrent_key])) if node.recurrent_key else None
        rows = []
        for i in range(node.size):  # one unit at a time
            parts = [np.einsum("gme,mk->gke", w[i], onehot).reshape(node.gates, -1)]
            if hh is not None:
                parts.append(hh[i].reshape(node.gates, -1))
            parts.append(bias[i][:, None])
            rows.append(np.concatenate(parts, axis=1).ravel())
        x = np.array(rows)
        model = AgglomerativeClustering(
            n_clusters=None, metric="cosine", linkage="average", distance_threshold=tau
        )
        raw = model.fit(x).labels_ if len(x) > 1 else np.zeros(len(x), dtype=int)
        first: dict[int, int] = {}
        labels = np.array([first.setdefault(int(r), len(first)) for r in raw])
        scales = np.ones(node.size)
        if node.activation == "relu":
            for f in range(labels.max() + 1):  # one fiber at a time
                members = np.flatnonzero(labels == f)
                mean = x[members].mean(0)
                den = mean @ mean
                scales[members] = np.clip(x[members] @ mean / den, 0, None) if den > 0 else 1.0
        colours[node.name] = (labels, scales)
        out[node.label] = (labels, scales)
    return out


def _sum_columns(w: np.ndarray, labels: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    shape = list(w.shape)
    shape[axis] = labels.max() + 1
    out = np.zeros(shape)
    for f in range(shape[axis]):  # one fiber at a time
        members = np.flatnonzero(labels == f)
        taken = np.take(w, members, axis=axis)
        s = scales[members].reshape([-1 if a == axis else 1 for a in range(w.ndim)])
        idx: list[Any] = [slice(None)] * w.ndim
        idx[axis] = f
        out[tuple(idx)] = (taken * s).sum(axis)
    return out


def _mean_rows(w: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([w[labels == f].mean(0) for f in range(labels.max() + 1)])


def _unview(node: LayerNode, v: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    units, gates, inputs, extent = v.shape
    t = torch.from_numpy(v)
    if gates > 1:
        return t.transpose(0, 1).reshape(gates * units, inputs * extent)
    if node.kind == "conv":
        return t.reshape(units, inputs, *shape[2:])
    return t.reshape(units, inputs * extent)


def naive_collapse(policy: Policy, fibers: dict[str, tuple[np.ndarray, np.ndarray]]) -> Policy:
    """Per-fiber loops: mean rows, summed (fold-scaled) columns."""
    graph = build_graph(policy)
    sd = policy.state_dict()
    new: dict[str, torch.Tensor] = {}
    part: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in graph:
        own = fibers.get(node.label, (np.arange(node.size), np.ones(node.size)))
        part[node.name] = own
        producer = graph.producer(node)
        p_labels, p_scales = (
            part[producer.name] if producer else (np.arange(node.in_units), np.ones(node.in_units))
        )
        w = _sum_columns(_np(weight_view(node, sd[node.weight_key])), p_labels, p_scales, 2)
        if node.hidden:
            w = _mean_rows(w, own[0])
        new[node.weight_key] = _unview(node, w, sd[node.weight_key].shape)
        for key in node.bias_keys:
            b = _np(bias_view(node, sd[key]))
            b = _mean_rows(b, own[0]) if node.hidden else b
            new[key] = torch.from_numpy(b).transpose(0, 1).reshape(-1)
        if node.recurrent_key:
            hh = _sum_columns(
                _np(recurrent_view(node, sd[node.recurrent_key])), own[0], np.ones(node.size), 2
            )
            new[node.recurrent_key] = _unview(node, _mean_rows(hh, own[0]), hh.shape)
    counts = {n.label: int(part[n.name][0].max()) + 1 for n in graph.hidden}
    arch = policy.arch.replace(
        channels=tuple(counts[n.label] for n in graph.hidden if n.kind == "conv"),
        hidden=tuple(counts[n.label] for n in graph.hidden if n.kind == "linear"),
        lstm=counts["lstm"],
    )
    quotient = Policy(arch)
    quotient.load_state_dict({k: v.float() for k, v in new.items()})
    return quotient


# --------------------------------------------------------------------------- measuring


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _child(case: tuple[str, Any], impl: str, tau: float, repeat: int, conn: Any) -> None:
    policy = make_case(case)
    fn = ours if impl == "ours" else straightforward
    fn(make_case((case[0], "warm-up")), tau)  # imports and first-call set-up are not timed
    start = _rss_kib()
    seconds = float("inf")
    for _ in range(repeat):  # best of N: the machine is shared, the minimum is the signal
        t0 = time.perf_counter()
        result = fn(policy, tau)
        seconds = min(seconds, time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts, state = result  # plain arrays: torch tensors would travel as shared-memory handles
    state = {k: v.detach().numpy().copy() for k, v in state.items()}
    conn.send((seconds, max(0, peak - start) / 1024, (counts, state)))


def measure(case: tuple[str, Any], impl: str, tau: float, repeat: int) -> tuple[float, float, Any]:
    """(seconds, peak extra MiB, result) of one implementation, in a fresh (spawned) process.

    Spawned, not forked: a fork after torch has run its thread pool can deadlock.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, impl, tau, repeat, child))
    proc.start()
    while not parent.poll(0.5):
        if not proc.is_alive():
            raise RuntimeError(f"{impl} failed on {case} (see its traceback above)")
    out = parent.recv()
    proc.join()
    return out


def make_case(case: tuple[str, Any]) -> Policy:
    kind, arg = case
    if arg == "warm-up":
        return Policy(Architecture.atari(9, channels=(4, 4, 4), hidden=8, lstm=8))
    if kind == "network":
        return load_network(arg)[0]
    return wide_layer_policy(int(arg))


def ours(policy: Policy, tau: float) -> Any:
    fibration = compute_fibers(policy, tau)
    quotient = collapse_policy(policy, fibration)
    return fibration.counts, quotient.state_dict()


def straightforward(policy: Policy, tau: float) -> Any:
    fibers = naive_fibers(policy, tau)
    quotient = naive_collapse(policy, fibers)
    return {k: int(v[0].max()) + 1 for k, v in fibers.items()}, quotient.state_dict()


def compare(case: tuple[str, Any], tau: float, name: str, repeat: int) -> tuple[float, float]:
    policy = make_case(case)
    t_ours, m_ours, (c_ours, sd_ours) = measure(case, "ours", tau, repeat)
    t_naive, m_naive, (c_naive, sd_naive) = measure(case, "straightforward", tau, repeat)
    agree = c_ours == c_naive
    diff = float("nan")
    if agree:
        a = Policy(_arch_of(policy, c_ours))
        a.load_state_dict({k: torch.from_numpy(v) for k, v in sd_ours.items()})
        b = Policy(_arch_of(policy, c_naive))
        b.load_state_dict({k: torch.from_numpy(v) for k, v in sd_naive.items()})
        obs = observation_batch(policy.arch, 8, seed=0).unsqueeze(1)
        with torch.no_grad():
            diff = float((a(obs)[0] - b(obs)[0]).abs().max())
    print(
        f"{name:<28}{t_ours:>9.3f}{t_naive:>11.3f}{t_naive / t_ours:>8.1f}x"
        f"{m_ours:>10.0f}{m_naive:>10.0f}   fibers agree: {agree} (logit diff {diff:.1e})"
    )
    if not agree:
        print(f"    ours {c_ours}\n    straightforward {c_naive}")
    return t_ours, t_naive


def _arch_of(policy: Policy, counts: dict[str, int]) -> Architecture:
    graph = build_graph(policy)
    return policy.arch.replace(
        channels=tuple(counts[n.label] for n in graph.hidden if n.kind == "conv"),
        hidden=tuple(counts[n.label] for n in graph.hidden if n.kind == "linear"),
        lstm=counts["lstm"],
    )


def wide_layer_policy(units: int, inputs: int = 512, seed: int = 0) -> Policy:
    """An MLP policy whose Linear layer has ``units`` units clustered around units/4 directions."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = Policy(Architecture.mlp(inputs, 8, hidden=(units,), lstm=32))
    centres = rng.normal(size=(max(1, units // 4), inputs + 1))
    rows = centres[rng.integers(0, len(centres), units)]
    rows = rows + rng.normal(scale=0.25, size=rows.shape)
    rows *= rng.uniform(0.5, 2.0, size=(units, 1)) / np.sqrt(inputs)
    lin = policy.network[1]
    assert isinstance(lin, torch.nn.Linear)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(rows[:, :-1]))
        lin.bias.copy_(torch.from_numpy(rows[:, -1]))
    return policy


def load_network(path: Path | None) -> tuple[Policy, str]:
    if path is not None and path.is_file():
        from pufferfiber.io.checkpoints import load_checkpoint

        return load_checkpoint(path, allow_pickle=True).policy, f"trained {path.name}"
    torch.manual_seed(0)
    return Policy(Architecture.atari(9)), "random init"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="BeamRider checkpoint (PufferLib pickle or ours; default: the shared "
        "upstream epoch-51 one, else a random network)",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="τ (default: 0.3)")
    p.add_argument(
        "--sizes",
        default="512,1024,2048,4096,8192",
        help="comma-separated widths of the wide-layer test",
    )
    p.add_argument("--skip-network", action="store_true", help="only the wide-layer cases")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is shown)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    header = (
        f"{'case':<28}{'ours s':>9}{'straight s':>11}{'ratio':>9}{'ours MiB':>10}{'str. MiB':>10}"
    )
    print(
        f"fibers + collapse at τ = {args.threshold}; best of {args.repeat} runs; "
        "peak MiB = extra RSS of the child\n"
    )
    print(header)
    if not args.skip_network:
        what = "trained" if args.checkpoint.is_file() else "random"
        name = f"BeamRider 3.9M ({what})"
        compare(("network", args.checkpoint), args.threshold, name, args.repeat)
    for units in (int(s) for s in args.sizes.split(",")):
        compare(("layer", units), args.threshold, f"Linear {units} units", args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
