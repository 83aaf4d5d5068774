"""Symmetry breaking during training: re-initialise redundant units without changing the function.

Every ``interval`` epochs :class:`SymmetryBreaker` computes the fibers of the policy
(:func:`pufferfiber.core.fibers.compute_fibers`, optionally met with the opfibers) and, in every
selected layer, picks a ``fraction`` of the *mature* redundant units: members of a non-trivial
fiber other than its representative (the fiber's lowest unit index) whose age (epochs since
their last (re)initialisation) is at least ``maturity``. For each broken unit ``j`` with
representative ``r`` (``docs/method.md`` §5):

1. its outgoing weights are folded onto ``r``'s, ``w_out,r += s · w_out,j``, then zeroed. Here
   ``s = a_j / a_r`` is the fold factor (1 for duplicates; for ReLU units whose rows are positive
   multiples, the ratio of their projections on the fiber's mean row). For a recurrent (LSTM or
   GRU) unit the outgoing weights are the heads' columns *and* its ``W_hh`` column, i.e. how
   ``h_j`` feeds every gate of every unit;
2. its incoming weights get fresh random values with the layer's own scale (the standard
   deviation of the tensor they live in), biases zero; for a recurrent unit these are its gate
   rows (4 for the LSTM, 3 for the GRU) of ``W_ih`` and ``W_hh`` and both biases;
3. its age is reset and every optimizer state tensor shaped like an edited parameter (Adam's
   ``exp_avg`` / ``exp_avg_sq``, SGD's momentum...) is zeroed at every edited entry: the broken
   unit's rows, its zeroed columns and the representative's columns that received the fold.

Why the function is unchanged. Nothing reads a broken unit any more (all its outgoing weights are
zero), and every reader of ``j`` now reads ``r`` with the weight ``j`` had: exact when
``a_j = s · a_r`` for every input, i.e. for exact fibers (threshold 0). For the recurrent layer
this needs equal states (LSTM: ``h_j = h_r`` *and* ``c_j = c_r``; GRU: ``h_j = h_r``) in the
state the network is run from; by induction over time
every other unit then follows its old trajectory (``r`` included), so the outputs are identical.
Exact fibers keep equal states equal from the zero initial state, so this holds for states the
network produced itself. At a threshold above 0 members only approximately compute the same
signal and the fold changes the outputs a little (measured by :func:`function_change`).

Layers are processed in forward order, so a consumer's freshly drawn rows are not disturbed by
folds made for its producer afterwards. All structural edits go through :mod:`~.core.graph`
unit views; no layer position is assumed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.core.clustering import meet
from pufferfiber.core.colouring import Fibration
from pufferfiber.core.criteria import FiberCriterion, WeightCriterion
from pufferfiber.core.fibers import compute_opfibers, fiber_colourings, validate_threshold
from pufferfiber.core.graph import (
    LayerGraph,
    LayerNode,
    Role,
    UnitAxis,
    add_units,
    build_graph,
    named_tensors,
    put_units,
    take_units,
    unit_view,
)
from pufferfiber.core.policy import Policy, RecurrentState
from pufferfiber.io.runfiles import BREAKING_LOG

BREAK_LOG = BREAKING_LOG

# --------------------------------------------------------------------------- unit surgery


@dataclass
class Edit:
    """Entries of one parameter that were written: ``units`` along ``axis``'s unit axis."""

    axis: UnitAxis
    units: torch.Tensor  # long


def _as_index(units: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(units, dtype=np.int64))


def fold_outgoing(
    graph: LayerGraph,
    node: LayerNode,
    tensors: Mapping[str, torch.Tensor],
    broken: Sequence[int] | np.ndarray,
    representatives: Sequence[int] | np.ndarray | None,
    scales: Sequence[float] | np.ndarray | None = None,
) -> list[Edit]:
    """Add ``scales[i] ·`` column ``broken[i]`` onto column ``representatives[i]``, zero the former.

    Applies to every consumer's weight and, for the LSTM, to ``W_hh``'s columns. With
    ``representatives=None`` the columns are only zeroed (a ReDo reset). Returns the edits.
    """
    broken_idx = _as_index(broken)
    edits: list[Edit] = []
    for axis in graph.outgoing_axes(node):
        tensor = tensors[axis.key]
        if representatives is not None:
            reps = _as_index(representatives)
            cols = take_units(axis, tensor, broken_idx)
            if scales is not None:
                shape = [1] * cols.dim()
                shape[axis.axis] = -1
                s = torch.as_tensor(np.asarray(scales), dtype=cols.dtype, device=cols.device)
                cols = cols * s.view(shape)
            add_units(axis, tensor, reps, cols)
            edits.append(Edit(axis, reps))
        put_units(axis, tensor, broken_idx, 0.0)
        edits.append(Edit(axis, broken_idx))
    return edits


def reinitialise_incoming(
    graph: LayerGraph,
    node: LayerNode,
    tensors: Mapping[str, torch.Tensor],
    units: Sequence[int] | np.ndarray,
    generator: torch.Generator,
) -> list[Edit]:
    """Fresh Gaussian incoming rows for ``units`` (std of their own tensor), zero biases.

    The scale is taken from the live tensor (all of its rows) so that a new unit starts like
    its neighbours rather than like an untrained layer. The LSTM's ``W_ih`` and ``W_hh`` rows
    each get their own tensor's scale.
    """
    idx = _as_index(units)
    edits: list[Edit] = []
    for axis in graph.incoming_axes(node):
        tensor = tensors[axis.key]
        if axis.role == Role.BIAS:
            put_units(axis, tensor, idx, 0.0)
        else:
            shape = list(unit_view(axis, tensor).shape)
            shape[axis.axis] = len(idx)
            std = float(tensor.float().std()) if tensor.numel() > 1 else 1.0
            fresh = torch.randn(shape, generator=generator) * std
            put_units(axis, tensor, idx, fresh.to(tensor.device))
        edits.append(Edit(axis, idx))
    return edits


def reset_optimizer_moments(
    optimizer: torch.optim.Optimizer | None, policy: Policy, edits: Iterable[Edit]
) -> int:
    """Zero, in every optimizer state tensor shaped like an edited parameter, the edited entries.

    Covers Adam's ``exp_avg`` / ``exp_avg_sq`` (and ``max_exp_avg_sq``), SGD's momentum buffer
    and the like; scalar state (Adam's ``step``) is left alone. Returns the number of state
    tensors touched.
    """
    if optimizer is None:
        return 0
    params = dict(policy.named_parameters())
    touched = 0
    for edit in edits:
        state = optimizer.state.get(params[edit.axis.key])
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == params[edit.axis.key].shape:
                put_units(edit.axis, value, edit.units, 0.0)
                touched += 1
    return touched


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class BreakPlan:
    """Units to break in one layer: ``broken[i]`` folds onto ``representatives[i]`` with factor
    ``scales[i]`` (its signal is ``scales[i]`` times the representative's)."""

    layer: str
    broken: np.ndarray
    representatives: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.broken)


def layer_fold_scales(
    policy: Policy, graph: LayerGraph, fibration: Fibration
) -> dict[str, np.ndarray]:
    """Fold factor of every unit relative to its fiber's mean row (1 for the recurrent layer).

    The factors :func:`pufferfiber.core.fibers.compute_fibers` stored with the fibers (the same walk
    as the collapse, producers' factors included) so that ReLU fibers of positive multiples
    fold exactly.
    """
    params = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    colourings = fiber_colourings(graph, params, fibration)
    return {n.label: colourings[n.name].scales.numpy() for n in graph.hidden}


def redundant_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(members, representatives)``: every unit that shares its fiber with a lower-index unit,
    and that fiber's representative (lowest index)."""
    labels = np.asarray(labels, dtype=np.int64)
    _, first = np.unique(labels, return_index=True)
    rep_of_label = np.empty(labels.max() + 1 if labels.size else 0, dtype=np.int64)
    rep_of_label[labels[first]] = first
    reps = rep_of_label[labels]
    members = np.flatnonzero(reps != np.arange(labels.size))
    return members, reps[members]


def plan_layer(
    label: str,
    labels: np.ndarray,
    ages: np.ndarray,
    scales: np.ndarray,
    *,
    maturity: int,
    fraction: float,
    rng: np.random.Generator,
) -> BreakPlan:
    """Pick ``ceil(fraction · n)`` of the ``n`` mature redundant units of a layer at random.

    Members whose fold factor relative to their representative is not positive and finite (a
    ReLU row pointing away from the representative's) are not foldable and are skipped.
    """
    members, reps = redundant_members(labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = scales[members] / scales[reps]
    ok = (ages[members] >= maturity) & np.isfinite(factor) & (factor > 0)
    members, reps, factor = members[ok], reps[ok], factor[ok]
    n = math.ceil(fraction * len(members) - 1e-9)
    pick = np.sort(rng.choice(len(members), size=n, replace=False)) if n else np.zeros(0, int)
    return BreakPlan(label, members[pick], reps[pick], factor[pick])


def apply_plans(
    policy: Policy,
    plans: Sequence[BreakPlan],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    graph: LayerGraph | None = None,
) -> list[Edit]:
    """Fold, re-initialise and reset moments for every plan, layers in forward order."""
    graph = graph or build_graph(policy)
    generator = generator or torch.Generator().manual_seed(0)
    tensors = named_tensors(policy)
    order = {n.label: i for i, n in enumerate(graph.nodes)}
    edits: list[Edit] = []
    with torch.no_grad():
        for plan in sorted(plans, key=lambda p: order[p.layer]):
            if not len(plan):
                continue
            node = graph[plan.layer]
            # Fold before drawing fresh rows: the LSTM's own W_hh rows of j must end up fresh.
            edits += fold_outgoing(
                graph, node, tensors, plan.broken, plan.representatives, plan.scales
            )
            edits += reinitialise_incoming(graph, node, tensors, plan.broken, generator)
    reset_optimizer_moments(optimizer, policy, edits)
    return edits


# --------------------------------------------------------------------------- the hook


def append_json_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor: a reader
    never sees half a line, and an interrupted run leaves only whole lines."""
    data = (json.dumps(record, sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class BreakReport:
    """What one breaking step did: per-layer counts and the fibers it saw."""

    epoch: int
    broken: dict[str, int]
    redundant: dict[str, int]
    fibers: dict[str, int]
    seconds: float
    plans: list[BreakPlan] = field(default_factory=list)

    def record(self, global_step: int, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": global_step,
            "broken": self.broken,
            "redundant": self.redundant,
            "fibers": self.fibers,
            "seconds": round(self.seconds, 4),
            **settings,
        }


class SymmetryBreaker:
    """Per-epoch training hook that breaks symmetries (see the module docstring).

    Parameters:
        interval: break every ``interval`` epochs (epochs are absolute: 10, 20, ...).
        fiber_threshold: τ of the fibers (0 = exact fibers, function exactly preserved; up to 2).
        opfiber_threshold: τ of the opfibers; ``None`` (default) = fibers alone decide. When set,
            a unit is redundant only if it shares both its fiber and its opfiber.
        maturity: minimum age in epochs (since start of training or the unit's last
            re-initialisation) before a unit may be broken.
        fraction: share of the mature redundant units broken per layer each time (rounded up).
        layers: layer labels (``conv1``, ``linear1``, ``lstm``), names, or kinds (``conv``,
            ``linear``, ``lstm``); ``None`` = every hidden layer.
        seed: seeds the choice of units and their fresh weights (deterministic given the seed).
        log_name: JSON-lines log written in the run folder (``None``: no log).
        criterion: how fibers are computed (a ``"weights"``
            :class:`~pufferfiber.core.criteria.FiberCriterion`); default: the weight fibers at
            ``fiber_threshold`` with position colours. Breaking folds a member onto its
            representative unchanged, which is exact for weight fibers only.
    """

    def __init__(
        self,
        interval: int = 10,
        fiber_threshold: float = 0.3,
        opfiber_threshold: float | None = None,
        maturity: int = 20,
        fraction: float = 0.5,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        log_name: str | None = BREAK_LOG,
        criterion: FiberCriterion | None = None,
    ) -> None:
        _check_settings(interval, fiber_threshold, opfiber_threshold, maturity, fraction)
        if criterion is None:
            criterion = WeightCriterion(float(fiber_threshold), flatten_colours="positions")
        elif criterion.name != "weights":
            raise ValueError(f"symmetry breaking needs weight fibers, not {criterion.name!r}")
        self.criterion = criterion
        self.interval = int(interval)
        self.fiber_threshold = float(fiber_threshold)
        self.opfiber_threshold = None if opfiber_threshold is None else float(opfiber_threshold)
        self.maturity = int(maturity)
        self.fraction = float(fraction)
        self.layers = None if layers is None else list(layers)
        self.seed = int(seed)
        self.log_name = log_name
        self._rng = np.random.default_rng(seed)
        self.born: dict[str, np.ndarray] = {}  # layer label -> epoch each unit was (re)born
        self.total_broken: dict[str, int] = {}

    # -- bookkeeping ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "fiber_threshold": self.fiber_threshold,
            "opfiber_threshold": self.opfiber_threshold,
            "maturity": self.maturity,
            "fraction": self.fraction,
            "layers": self.layers,
            "seed": self.seed,
        }

    def ages(self, graph: LayerGraph, epoch: int) -> dict[str, np.ndarray]:
        """Age in epochs of every unit; units first seen are taken as born at epoch 0."""
        for node in graph.hidden:
            if len(self.born.get(node.label, ())) != node.size:
                self.born[node.label] = np.zeros(node.size, dtype=np.int64)
        return {label: epoch - born for label, born in self.born.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (ages, totals, random generator) for ``trainer_state.pt``."""
        return {
            "settings": self.settings(),
            "born": {k: v.tolist() for k, v in self.born.items()},
            "total_broken": dict(self.total_broken),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.born = {k: np.asarray(v, dtype=np.int64) for k, v in state["born"].items()}
        self.total_broken = dict(state.get("total_broken", {}))
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]

    # -- breaking ------------------------------------------------------------------------------

    def check(self, policy: Policy) -> None:
        """Raise ``ValueError`` now (not at the first break) if ``layers`` names no hidden layer
        of ``policy``; call it when training starts."""
        selected_labels(build_graph(policy), self.layers)

    def due(self, epoch: int) -> bool:
        return epoch > 0 and epoch % self.interval == 0

    def step(
        self, policy: Policy, optimizer: torch.optim.Optimizer | None, epoch: int
    ) -> BreakReport:
        """Compute fibers now and break; returns what was done (no logging)."""
        start = time.perf_counter()
        graph = build_graph(policy)
        fibration = self.criterion.fit_predict(policy)
        labels = {f.node.label: f.labels for f in fibration.layers}
        if self.opfiber_threshold is not None:
            opfibers = compute_opfibers(policy, self.opfiber_threshold)
            labels = {f.node.label: meet(labels[f.node.label], f.labels) for f in opfibers.layers}
        chosen = selected_labels(graph, self.layers)
        ages = self.ages(graph, epoch)
        scales = layer_fold_scales(policy, graph, fibration)
        plans = [
            plan_layer(
                label,
                labels[label],
                ages[label],
                scales[label],
                maturity=self.maturity,
                fraction=self.fraction,
                rng=self._rng,
            )
            for label in chosen
        ]
        generator = torch.Generator().manual_seed(int(self._rng.integers(2**62)))
        apply_plans(policy, plans, optimizer=optimizer, generator=generator, graph=graph)
        for plan in plans:
            self.born[plan.layer][plan.broken] = epoch
            self.total_broken[plan.layer] = self.total_broken.get(plan.layer, 0) + len(plan)
        return BreakReport(
            epoch=epoch,
            broken={p.layer: len(p) for p in plans},
            redundant={label: len(redundant_members(labels[label])[0]) for label in chosen},
            fibers=fibration.counts,
            seconds=time.perf_counter() - start,
            plans=plans,
        )

    def __call__(self, ctx: Any) -> dict[str, float] | None:
        """Trainer hook: breaks when due, logs to ``run_dir/breaking.jsonl``, returns the
        per-layer counts for the dashboard (``broken_<layer>``)."""
        if not self.due(ctx.epoch):
            return None
        report = self.step(ctx.policy, ctx.optimizer, ctx.epoch)
        if self.log_name is not None and ctx.run_dir is not None:
            Path(ctx.run_dir).mkdir(parents=True, exist_ok=True)
            append_json_line(
                Path(ctx.run_dir) / self.log_name, report.record(ctx.global_step, self.settings())
            )
        return {f"broken_{label}": float(n) for label, n in report.broken.items()}


def selected_labels(graph: LayerGraph, layers: Sequence[str] | None) -> list[str]:
    """Labels of the selected hidden layers in forward order (clear error for unknown ones)."""
    try:
        return [n.label for n in graph.select_hidden(layers)]
    except ValueError as exc:
        raise ValueError(f"--break.layers: {exc}") from None


def _check_settings(
    interval: int,
    fiber_threshold: float,
    opfiber_threshold: float | None,
    maturity: int,
    fraction: float,
) -> None:
    if int(interval) < 1:
        raise ValueError(f"break interval must be at least 1 epoch, got {interval}")
    for name, tau in (("fiber", fiber_threshold), ("opfiber", opfiber_threshold)):
        if tau is not None:
            validate_threshold(tau, f"break {name} threshold")
    if int(maturity) < 0:
        raise ValueError(f"break maturity must be >= 0 epochs, got {maturity}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"break fraction must be in [0, 1], got {fraction}")


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def function_change(
    before: Policy, after: Policy, obs: torch.Tensor, state: RecurrentState | None
) -> dict[str, float]:
    """How much ``after`` differs from ``before`` on sequences ``obs`` ``[B, T, *obs]`` from
    recurrent ``state``: max |Δlogits|, max |Δvalue| and mean KL(before ‖ after) of the actions."""
    la, va, _ = before(obs, state)
    lb, vb, _ = after(obs, state)
    pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
    kl = (pa.exp() * (pa - pb)).sum(-1).mean()
    return {
        "max_logit_diff": float((la - lb).abs().max()),
        "max_value_diff": float((va - vb).abs().max()),
        "mean_kl": float(kl),
    }
