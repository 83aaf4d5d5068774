"""Dormant units and ReDo resets (Sokar et al., ICML 2023), the baseline for symmetry breaking.

A unit's *activity* is its mean absolute activation on a batch of observations: the ReLU output
of a Linear neuron, of a conv channel (averaged over positions too), or the recurrent layer's
(LSTM or GRU) hidden output ``h``; each layer kind reads its own
(:meth:`pufferfiber.core.graph.LayerKind.activity`). Its dormancy score is the activity divided by
the layer's mean activity, ``s_i = E|a_i| / mean_k E|a_k|``; a unit is *τ-dormant* when
``s_i <= τ`` (τ = 0: dead units).

:class:`DormantReset` is a per-epoch training hook that every ``interval`` epochs recycles the
τ-dormant units as ReDo does: fresh incoming weights (same scale rule as symmetry breaking),
outgoing weights zeroed (for a recurrent unit its heads' columns and its ``W_hh`` column), and the
optimizer moments of every edited entry zeroed. Unlike symmetry breaking nothing is folded: a
dormant unit is not a copy of anything, so the function changes by whatever the unit still
contributed (little, by definition of dormant). The unit surgery is shared with
:mod:`pufferfiber.rl.breaking` and goes through :mod:`pufferfiber.core.graph`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.core.graph import LayerNode, build_graph, named_tensors
from pufferfiber.core.policy import Policy, RecurrentState
from pufferfiber.io.runfiles import REDO_LOG
from pufferfiber.rl.breaking import (
    Edit,
    append_json_line,
    fold_outgoing,
    reinitialise_incoming,
    reset_optimizer_moments,
    selected_labels,
)


@torch.no_grad()
def unit_activity(
    policy: Policy, obs: torch.Tensor, state: RecurrentState | None = None
) -> dict[str, np.ndarray]:
    """Layer label → mean |activation| of every unit on ``obs`` (``[B, *obs]`` or
    ``[B, T, *obs]``, run from ``state`` or zeros)."""
    graph = build_graph(policy)
    activity: dict[str, np.ndarray] = {}
    handles = []
    for node in graph.hidden:

        def record(_m: Any, _i: Any, out: Any, node: LayerNode = node) -> None:
            activity[node.label] = node.spec.activity(out).double().cpu().numpy()

        handles.append(policy.get_submodule(node.name).register_forward_hook(record))
    try:
        policy(obs, state)
    finally:
        for h in handles:
            h.remove()
    return activity


def dormancy_scores(activity: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``s_i = a_i / mean(a)`` per layer (all zeros when the whole layer is silent)."""
    scores = {}
    for label, a in activity.items():
        mean = float(np.mean(a)) if a.size else 0.0
        scores[label] = a / mean if mean > 0 else np.zeros_like(a)
    return scores


def dormant_units(activity: Mapping[str, np.ndarray], tau: float) -> dict[str, np.ndarray]:
    """Indices of the τ-dormant units of every layer."""
    return {label: np.flatnonzero(s <= tau) for label, s in dormancy_scores(activity).items()}


def dormant_fraction(policy: Policy, obs: torch.Tensor, tau: float = 0.1) -> dict[str, float]:
    """Share of τ-dormant units per layer on ``obs``."""
    activity = unit_activity(policy, obs)
    return {
        label: len(idx) / max(len(activity[label]), 1)
        for label, idx in dormant_units(activity, tau).items()
    }


def recycle_units(
    policy: Policy,
    units: Mapping[str, np.ndarray],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> list[Edit]:
    """ReDo's reset of ``units`` (layer label → indices): fresh incoming, zero outgoing, moments."""
    graph = build_graph(policy)
    tensors = named_tensors(policy)
    generator = generator or torch.Generator().manual_seed(0)
    edits: list[Edit] = []
    with torch.no_grad():
        for node in graph.hidden:  # forward order, as for symmetry breaking
            idx = np.asarray(units.get(node.label, ()), dtype=np.int64)
            if idx.size == 0:
                continue
            edits += fold_outgoing(graph, node, tensors, idx, None)
            edits += reinitialise_incoming(graph, node, tensors, idx, generator)
    reset_optimizer_moments(optimizer, policy, edits)
    return edits


ObservationSource = Callable[[Any], torch.Tensor]


@dataclass
class ResetReport:
    epoch: int
    reset: dict[str, int]
    dormant_fraction: dict[str, float]
    seconds: float


class DormantReset:
    """Per-epoch hook recycling τ-dormant units every ``interval`` epochs (ReDo).

    Parameters:
        observations: ``f(ctx) -> obs`` giving a recent batch (``[B, T, *obs]`` sequences are
            run from a zero recurrent state), e.g. a slice of the trainer's rollout buffer. When
            ``None`` the hook reads ``ctx.observations``.
        tau: dormancy threshold on ``s_i`` (ReDo uses 0.025-0.1; 0 = only dead units).
        interval: reset every ``interval`` epochs.
        layers: labels / names / kinds of the layers to reset; ``None`` = every hidden layer.
        seed: seeds the fresh weights (deterministic given the seed).
        log_name: JSON-lines log in the run folder (``None``: no log).
    """

    def __init__(
        self,
        observations: ObservationSource | None = None,
        tau: float = 0.1,
        interval: int = 10,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        log_name: str | None = REDO_LOG,
    ) -> None:
        if tau < 0:
            raise ValueError(f"dormancy threshold tau must be >= 0, got {tau}")
        if interval < 1:
            raise ValueError(f"reset interval must be at least 1 epoch, got {interval}")
        self.observations = observations
        self.tau, self.interval, self.seed = float(tau), int(interval), int(seed)
        self.layers = None if layers is None else list(layers)
        self.log_name = log_name
        self._gen = torch.Generator().manual_seed(seed)
        self.total_reset: dict[str, int] = {}

    # -- bookkeeping (stored in trainer_state.pt, so --resume continues the same resets) --------

    kind = "redo"  # in its saved state: tells its settings from symmetry breaking's

    def settings(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "interval": self.interval,
            "layers": self.layers,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "settings": self.settings(),
            "total_reset": dict(self.total_reset),
            "generator": self._gen.get_state().tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total_reset = dict(state.get("total_reset", {}))
        if "generator" in state:
            self._gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

    def check(self, policy: Policy) -> None:
        """Raise ``ValueError`` now (not at the first reset) if ``layers`` names no hidden
        layer of ``policy``."""
        self._chosen(policy)

    def _chosen(self, policy: Policy) -> set[str]:
        try:
            return set(selected_labels(build_graph(policy), self.layers))
        except ValueError as exc:
            raise ValueError(str(exc).replace("--break.layers", "--redo.layers")) from None

    def step(
        self, policy: Policy, optimizer: torch.optim.Optimizer | None, epoch: int, obs: torch.Tensor
    ) -> ResetReport:
        start = time.perf_counter()
        chosen = self._chosen(policy)
        activity = unit_activity(policy, obs.to(next(policy.parameters()).device))
        dormant = dormant_units(activity, self.tau)
        units = {label: idx for label, idx in dormant.items() if label in chosen}
        recycle_units(policy, units, optimizer=optimizer, generator=self._gen)
        for label, idx in units.items():
            self.total_reset[label] = self.total_reset.get(label, 0) + len(idx)
        return ResetReport(
            epoch=epoch,
            reset={label: len(idx) for label, idx in units.items()},
            dormant_fraction={
                label: len(idx) / len(activity[label]) for label, idx in dormant.items()
            },
            seconds=time.perf_counter() - start,
        )

    def __call__(self, ctx: Any) -> dict[str, float] | None:
        if ctx.epoch <= 0 or ctx.epoch % self.interval:
            return None
        source = self.observations
        obs = source(ctx) if source is not None else ctx.observations
        report = self.step(ctx.policy, ctx.optimizer, ctx.epoch, obs)
        if self.log_name is not None and ctx.run_dir is not None:
            Path(ctx.run_dir).mkdir(parents=True, exist_ok=True)
            append_json_line(
                Path(ctx.run_dir) / self.log_name,
                {
                    "epoch": report.epoch,
                    "global_step": ctx.global_step,
                    "reset": report.reset,
                    "dormant_fraction": report.dormant_fraction,
                    "tau": self.tau,
                    "interval": self.interval,
                    "seconds": round(report.seconds, 4),
                },
            )
        return {f"redo_{label}": float(n) for label, n in report.reset.items()}
