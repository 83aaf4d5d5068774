"""Fibers on the data: collapse what real observations show is redundant.

Two units are redundant for the agent when their outputs agree on the observations it actually
meets, not only when their weights do. On a *calibration set* of real observation sequences
(played by the policy itself, LSTM state carried, reset at episode ends), every collapsible layer
(conv channels, Linear units, LSTM hidden units), in forward order, is handled like this:

1. The first and second moments of the layer's outputs ``a`` (after its ReLU; the LSTM's ``h``;
   a conv channel pools its positions) are accumulated on the calibration set, through the
   network whose upstream layers are already collapsed.
2. Units are *selected* greedily until every other unit ``j`` is explained, i.e. its *relative
   fit error* ``w_j · rms(a_j - â_j) / sqrt(mean_k w_k² var(a_k))`` is at most ``τ`` (``w_j``:
   the norm of its outgoing weights, so the error counts where the consumers see it). Among the
   units not yet explained, the next kept one is (``pivot="consumer"``, default) the one whose
   fit removes the most error from the consumers' inputs, ``tr(G R)`` with ``G`` the Gram
   matrix of the outgoing weights and ``R`` the residual covariance, or (``"variance"``,
   pivoted Cholesky) the one with the largest weighted unexplained variance. At equal size the
   consumer pivot has 1.5-2.5x less held-out value error on BeamRider (README).
3. Each unit that is not kept is *reconstructed*: ``â_j = Σ_k M_jk · a_k + t_j``.

   * ``fit="affine"`` (one representative, the fibers of the issue): ``a_j ≈ s·a_r + t``; ``j``
     joins the fiber of ``r`` (``s`` may be negative).
   * ``fit="lstsq"`` (default): least squares on every kept unit of the layer (several units
     explain one; strictly better on the calibration set at equal size).
   * A unit whose (weighted) variance is already below the tolerance is *constant*:
     ``M_j = 0``, ``t_j`` = its mean.
4. The fold: every consumer (next conv, the Linear after the flatten, the LSTM's ``W_ih``, the
   LSTM's own ``W_hh`` and the heads) is linear before its nonlinearity, so its weight ``W``
   becomes ``W·M`` on the kept units and ``W·t`` is added to its bias (summed over kernel or
   image positions). The kept units keep their rows. Exact wherever the relations are exact.

τ = 0 removes only exact relations (dead and constant units, exact affine copies), to float
precision. One caveat is inherent to the LSTM: its state starts at ``h = 0``, so at the first
step after a reset a folded offset ``t_j`` (e.g. a constant unit at ``c ≠ 0``) is seen through
``W_hh`` where the original saw 0; the held-out fidelity includes those steps.

Held-out figures: the same per-unit error, measured on other sequences with the calibration
fit, shows units whose relation does not generalise (e.g. dead on calibration, alive later).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from pufferfiber.core.budget import budget_record, next_width, smallest_fraction, validate_target
from pufferfiber.core.colouring import Fibration, LayerFibers
from pufferfiber.core.graph import (
    LayerGraph,
    LayerNode,
    bias_view,
    build_graph,
    encoder_index,
    recurrent_view,
    unview_bias,
    unview_weight,
    weight_view,
)
from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.core.types import DATA_FITS, DATA_PIVOTS, validate_threshold

# Calibration sequences: 16 streams × 512 steps (8,192 frames) by default, played on env seeds
# CALIBRATION_SEED_OFFSET + seed + i, disjoint from the held-out fidelity frames (seed + i).
# Long streams, because short ones only see the first steps of episodes: on BeamRider, at 16.6 %
# of the parameters, 32 × 128 calibration frames gave KL 0.065 on 512-step held-out sequences,
# 16 × 512 gave 0.009 (same pivot; README).
DEFAULT_CALIBRATION_BATCH = 16
DEFAULT_CALIBRATION_STEPS = 512
CALIBRATION_SEED_OFFSET = 1000
_EXACT_REL_VAR = 1e-10  # at τ = 0: relative residual variance counted as zero (float64 moments)
_FRAMES = 512  # frames per forward pass / moment update (bounds the intermediate memory)

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- moments


@dataclass
class Moments:
    """First and second raw moments of a layer's outputs (float64)."""

    count: int
    total: np.ndarray  # [units] Σ a
    outer: np.ndarray  # [units, units] Σ a aᵀ

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def second(self) -> np.ndarray:
        return self.outer / max(self.count, 1)

    @property
    def cov(self) -> np.ndarray:
        mu = self.mean
        cov: np.ndarray = self.second - np.outer(mu, mu)
        cov = 0.5 * (cov + cov.T)
        np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
        return cov


class LayerInputs:
    """The inputs of the next layer on a set of sequences, passed on from layer to layer.

    Once a layer is collapsed, the next layer's inputs are exactly the outputs of its kept
    units (their rows do not change), so every layer is computed once on the calibration set
    instead of re-running the network from the observations for each layer.
    """

    def __init__(self, observations: torch.Tensor) -> None:
        self.batch, self.steps = int(observations.shape[0]), int(observations.shape[1])
        self.x = observations.reshape(-1, *observations.shape[2:])  # frames, b-major
        self.raw = True  # still observations (scaled by the policy's input scale)
        self.after = -1  # index in ``policy.network`` of the last module applied

    @torch.inference_mode()
    def outputs(self, policy: Policy, node: LayerNode) -> torch.Tensor:
        """``node``'s outputs ``[frames, units, *positions]`` (after its ReLU; the recurrent
        layer: ``h``)."""
        if node.recurrent:  # whole sequences, state from zeros, as Policy.forward
            seq = self.x.float().reshape(self.batch, self.steps, -1).transpose(0, 1)
            return policy.recurrent(seq)[0].transpose(0, 1).reshape(-1, node.size)
        modules = policy.network[self.after + 1 : encoder_index(policy, node) + 2]  # to its ReLU
        scale = policy.input_scale if self.raw else 1.0
        return torch.cat([modules(chunk.float() * scale) for chunk in torch.split(self.x, _FRAMES)])

    def advance(
        self, policy: Policy, node: LayerNode, outputs: torch.Tensor, kept: np.ndarray | None
    ) -> None:
        """The next layer reads ``outputs`` of the ``kept`` units (``None``: all)."""
        if node.recurrent:
            return
        self.x = outputs if kept is None else outputs.index_select(1, torch.from_numpy(kept))
        self.raw, self.after = False, encoder_index(policy, node) + 1


def output_moments(outputs: torch.Tensor, node: LayerNode) -> Moments:
    """Moments of a layer's outputs (conv channels pool their image positions)."""
    total = torch.zeros(node.size, dtype=torch.float64)
    outer = torch.zeros(node.size, node.size, dtype=torch.float64)
    for chunk in torch.split(outputs, _FRAMES):
        a = node.spec.unit_samples(chunk, node.size).double()
        total += a.sum(0)
        outer += a.T @ a
    count = outputs.numel() // node.size
    return Moments(count, total.numpy(), outer.numpy())


# --------------------------------------------------------------------------- selection


@dataclass
class Reconstruction:
    """How one layer is collapsed: ``a ≈ coef @ a[kept] + offset`` for every unit.

    ``kept``: sorted indices of the units kept (the representatives); ``coef`` ``[units, kept]``
    (identity rows for kept units); ``offset`` ``[units]``; ``constant``: units folded as a
    constant; ``fit_error`` / ``heldout_error``: relative fit error of each unit on the
    calibration / held-out set (see the module docstring; 0 for kept units on calibration).
    """

    node: LayerNode
    kept: np.ndarray
    coef: np.ndarray
    offset: np.ndarray
    constant: np.ndarray
    fit_error: np.ndarray
    heldout_error: np.ndarray | None = None

    def labels(self) -> np.ndarray:
        """Fiber of each unit: its kept unit with the largest coefficient (constants: fiber 0)."""
        labels = np.abs(self.coef).argmax(axis=1)
        labels[self.constant] = 0
        return labels.astype(np.int64)


def _row_forms(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``diag(A M Aᵀ)``: the quadratic form of every row of ``a``, by one matrix product (a
    three-operand einsum loops in C without BLAS: ~100x slower for 512 units)."""
    return ((a @ m) * a).sum(axis=1)


def _weighted_residuals(cov: np.ndarray, weights: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Weighted residual variance of each unit under ``a - full @ a`` (``full`` is ``[n, n]``)."""
    p = np.eye(len(cov)) - full
    return _row_forms(p, cov) * weights**2


def select_units(
    moments: Moments,
    gram: np.ndarray,
    threshold: float,
    fit: str = "lstsq",
    pivot: str = "consumer",
    count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kept units, reconstruction ``coef`` ``[n, k]``, ``offset`` and ``constant`` mask.

    ``count`` (a size target's share of this layer, :mod:`pufferfiber.core.budget`): keep units
    in the same greedy order until ``count`` are kept, whatever their error (``threshold`` is
    then ignored; fewer are kept only when the others are exactly explained already).

    ``gram``: :func:`outgoing_gram` of the layer (``w_j = sqrt(gram_jj)``). Greedy: units are
    kept until every other unit's weighted unexplained variance is within
    ``τ² · mean_k w_k² var_k`` (at least one unit is always kept). Among the units not yet
    within it, ``fit="lstsq"`` keeps next the one whose fit removes the most error where the
    consumers see it (``pivot="consumer"``) or the one with the largest weighted unexplained
    variance (``pivot="variance"``, pivoted Cholesky).
    """
    if pivot not in DATA_PIVOTS:
        raise ValueError(f"pivot must be one of {DATA_PIVOTS}, got {pivot!r}")
    weights = unit_weights(gram)
    if fit not in DATA_FITS:
        raise ValueError(f"fit must be one of {DATA_FITS}, got {fit!r}")
    cov, mean = moments.cov, moments.mean
    n = len(cov)
    var = np.diag(cov).copy()
    signal = var * weights**2
    scale = float(signal.mean())
    tol = max(0.0 if count is not None else threshold**2, _EXACT_REL_VAR) * scale
    constant = signal <= tol
    limit = n if count is None else max(1, min(n, int(count)))
    if fit == "lstsq" and pivot == "consumer":
        kept = _consumer_greedy(cov, gram, tol, limit)
    elif fit == "lstsq":
        kept = _pivoted_cholesky(cov * np.outer(weights, weights), tol, limit)
    else:
        kept, _ = _greedy_pairs(cov, signal, tol, limit=limit)
    kept = np.sort(kept)
    coef = np.zeros((n, len(kept)))
    coef[kept, np.arange(len(kept))] = 1.0
    rest = np.setdiff1d(np.arange(n), kept)
    rest = rest[~constant[rest]]
    if len(rest):
        if fit == "lstsq":
            ck = cov[np.ix_(kept, kept)]
            ridge = 1e-12 * max(float(np.trace(ck)), 1e-300) / len(kept)
            coef[rest] = scipy.linalg.solve(
                ck + ridge * np.eye(len(kept)), cov[np.ix_(kept, rest)], assume_a="pos"
            ).T
        else:
            _, rep = _greedy_pairs(cov, signal, tol, kept)
            rest = rest[rep[rest] >= 0]  # no representative helps: explained by its mean
            r = rep[rest]
            coef[rest, np.searchsorted(kept, r)] = cov[rest, r] / np.where(var[r] > 0, var[r], 1)
    offset = mean - coef @ mean[kept]
    offset[kept] = 0.0
    return kept, coef, offset, constant


def _consumer_greedy(
    cov: np.ndarray, gram: np.ndarray, tol: float, limit: int | None = None
) -> np.ndarray:
    """Greedy least-squares selection measured where the consumers see the error.

    With ``R`` the residual covariance of the layer's outputs given the kept units, the error
    the consumers receive is ``tr(G R)``; keeping unit ``p`` lowers it by ``(R G R)_pp / R_pp``.
    Only units still above ``tol`` (weighted residual ``G_jj R_jj``) are candidates, so a
    near-constant unit is never used to explain others (its coefficients would blow up on new
    data). ``R`` and ``diag(R G R)`` are updated in ``O(n²)`` per kept unit.
    """
    n = len(cov)
    resid = cov.copy()
    gain = _row_forms(resid, gram)  # diag(R G R), R symmetric
    w2 = np.diag(gram).copy()
    kept: list[int] = []
    for _ in range(n if limit is None else limit):
        d = np.diag(resid).copy()
        open_ = w2 * d > tol
        open_[kept] = False
        if not open_.any():
            if not kept:  # every unit is constant: one kept unit is enough
                kept.append(int(np.argmax(w2 * d)))
            break
        score = np.where(open_, gain / np.where(open_, d, 1.0), -np.inf)
        p = int(np.argmax(score))
        kept.append(p)
        r, rho = resid[:, p].copy(), d[p]
        s = resid @ (gram @ r)
        gain = gain - 2.0 * r * s / rho + r**2 * float(r @ gram @ r) / rho**2
        resid -= np.outer(r, r) / rho
    return np.array(kept, dtype=np.int64)


def _pivoted_cholesky(gram: np.ndarray, tol: float, limit: int | None = None) -> np.ndarray:
    """Greedy column selection: pivot on the largest residual diagonal until all are ``<= tol``
    (or ``limit`` are kept)."""
    n = len(gram)
    d = np.diag(gram).copy()
    chol = np.zeros((n, n))
    kept: list[int] = []
    for m in range(n if limit is None else limit):
        cand = d.copy()
        cand[kept] = -np.inf
        p = int(np.argmax(cand))
        if cand[p] <= tol and kept:
            break
        kept.append(p)
        if d[p] <= 0:  # all remaining units are constant: one kept unit is enough
            break
        col = (gram[:, p] - chol[:, :m] @ chol[p, :m]) / np.sqrt(d[p])
        chol[:, m] = col
        d = np.maximum(d - col**2, 0.0)
        d[p] = 0.0
    return np.array(kept, dtype=np.int64)


def _greedy_pairs(
    cov: np.ndarray,
    signal: np.ndarray,
    tol: float,
    kept: np.ndarray | None = None,
    *,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy selection where each unit is explained by ONE kept unit (``a_j ≈ s·a_r + t``).

    Returns the kept units and each unit's representative (``-1``: explained by its mean). With
    ``kept`` given, only assigns representatives among those; ``limit``: at most that many kept.
    """
    var = np.diag(cov)
    denom = np.sqrt(np.outer(var, var))
    corr2 = np.where(denom > 0, cov**2 / np.where(denom > 0, denom**2, 1.0), 0.0)
    d = signal.copy()
    rep = np.full(len(cov), -1, dtype=np.int64)
    order = list(kept) if kept is not None else None
    chosen: list[int] = []
    while True:
        if order is not None:
            if not order:
                break
            p = int(order.pop(0))
        else:
            cand = d.copy()
            cand[chosen] = -np.inf
            p = int(np.argmax(cand))
            if cand[p] <= tol and chosen:
                break
        chosen.append(p)
        residual = signal * (1.0 - np.minimum(corr2[:, p], 1.0))
        better = residual < d
        d = np.where(better, residual, d)
        rep[better] = p
        d[p], rep[p] = 0.0, p
        if order is None and len(chosen) == (len(cov) if limit is None else limit):
            break
    return np.array(chosen, dtype=np.int64), rep


# --------------------------------------------------------------------------- fold


def outgoing_gram(
    graph: LayerGraph, node: LayerNode, params: dict[str, torch.Tensor]
) -> np.ndarray:
    """``G`` ``[n, n]``: Gram matrix of the units' outgoing weights (every consumer and the
    ``W_hh`` columns), so that an error ``δ`` in the layer's outputs reaches the consumers'
    pre-activations with squared norm ``δᵀ G δ`` (summed over kernel or image positions).
    ``w_j = sqrt(G_jj)`` is the norm of unit ``j``'s outgoing weights."""
    views = [weight_view(c, params[c.weight_key]).double() for c in graph.consumers(node)]
    if node.recurrent_key is not None:
        views.append(recurrent_view(node, params[node.recurrent_key]).double())
    gram = torch.zeros(node.size, node.size, dtype=torch.float64)
    for w in views:
        gram += torch.einsum("ugne,ugme->nm", w, w)
    return gram.numpy()


def unit_weights(gram: np.ndarray) -> np.ndarray:
    """``w_j``: the norm of unit ``j``'s outgoing weights, from :func:`outgoing_gram`."""
    return np.sqrt(np.clip(np.diag(gram), 0.0, None))


def _fold_columns(
    consumer: LayerNode,
    params: dict[str, torch.Tensor],
    weight_key: str,
    view: torch.Tensor,
    coef: torch.Tensor,
    offset: torch.Tensor,
) -> torch.Tensor:
    """Replace a consumer's producer columns by ``view @ coef``; add ``view @ offset`` to the
    bias its kind pairs with ``weight_key``. Returns the new unit view."""
    bias_key = consumer.spec.shift_bias_key(consumer, weight_key)
    shift = torch.einsum("ugne,n->ug", view, offset)
    params[bias_key] = unview_bias(consumer, bias_view(consumer, params[bias_key]) + shift)
    new = torch.einsum("ugne,nk->ugke", view, coef)
    if weight_key == consumer.weight_key:
        params[weight_key] = unview_weight(consumer, new)
    return new


def fold_layer(
    graph: LayerGraph, params: dict[str, torch.Tensor], rec: Reconstruction
) -> dict[str, torch.Tensor]:
    """New float64 parameters with ``rec``'s layer collapsed to its kept units."""
    params = dict(params)
    node = rec.node
    coef = torch.from_numpy(rec.coef)
    offset = torch.from_numpy(rec.offset)
    kept = torch.from_numpy(rec.kept)
    for consumer in graph.consumers(node):
        view = weight_view(consumer, params[consumer.weight_key])
        _fold_columns(consumer, params, consumer.weight_key, view, coef, offset)
    w_in = weight_view(node, params[node.weight_key]).index_select(0, kept)
    params[node.weight_key] = unview_weight(node, w_in)
    if node.recurrent_key is not None:  # a recurrent layer reads its own h: columns, then rows
        hh = recurrent_view(node, params[node.recurrent_key])
        hh = _fold_columns(node, params, node.recurrent_key, hh, coef, offset)
        params[node.recurrent_key] = unview_weight(node, hh.index_select(0, kept))
    for key in node.bias_keys:
        params[key] = unview_bias(node, bias_view(node, params[key]).index_select(0, kept))
    return params


def _resized(policy: Policy, node: LayerNode, size: int) -> Architecture:
    return build_graph(policy).resized(policy.arch, {node.name: size})


def policy_from_params(
    arch: Architecture, params: dict[str, torch.Tensor], dtype: torch.dtype
) -> Policy:
    """A :class:`Policy` of ``arch`` holding ``params`` (cast to ``dtype``), built without init."""
    with torch.device("meta"):
        policy = Policy(arch)
    policy = policy.to_empty(device="cpu")
    policy.load_state_dict({k: v.to(dtype) for k, v in params.items()}, strict=True)
    return policy.eval()


# --------------------------------------------------------------------------- the criterion


@dataclass
class DataFibration(Fibration):
    """Fibers found on data: per layer, the :class:`Reconstruction` that collapses it."""

    reconstructions: dict[str, Reconstruction] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)


def _layer_figures(rec: Reconstruction, threshold: float) -> dict[str, Any]:
    fig: dict[str, Any] = {
        "units": int(rec.node.size),
        "kept": len(rec.kept),
        "constant": int(rec.constant.sum()),
        "fit_error_max": float(rec.fit_error.max()),
        "fit_error_mean": float(rec.fit_error.mean()),
    }
    if rec.heldout_error is not None:
        bad = rec.heldout_error > max(threshold, np.sqrt(_EXACT_REL_VAR)) * (1 + 1e-6)
        fig.update(
            heldout_error_max=float(rec.heldout_error.max()),
            heldout_error_mean=float(rec.heldout_error.mean()),
            heldout_over_threshold=int(bad.sum()),
            heldout_constant_over_threshold=int((bad & rec.constant).sum()),
        )
    return fig


def _heldout_error(
    moments: Moments, rec: Reconstruction, weights: np.ndarray, scale: float
) -> np.ndarray:
    """Relative error of each unit's reconstruction on other data (mean shifts included)."""
    n = rec.node.size
    full = np.zeros((n, n))
    full[:, rec.kept] = rec.coef
    p = np.concatenate([np.eye(n) - full, -rec.offset[:, None]], axis=1)  # r = p @ [a; 1]
    second = np.empty((n + 1, n + 1))
    second[:n, :n], second[:n, n], second[n, :n] = moments.second, moments.mean, moments.mean
    second[n, n] = 1.0
    mse = np.maximum(_row_forms(p, second), 0.0)
    return np.sqrt(mse * weights**2 / scale)


def data_fibers(
    policy: Policy,
    threshold: float,
    calibration: torch.Tensor,
    *,
    heldout: torch.Tensor | None = None,
    layers: list[str] | None = None,
    fit: str = "lstsq",
    pivot: str = "consumer",
    progress: Progress | None = None,
    target: float | None = None,
) -> tuple[DataFibration, Policy]:
    """Fibers of ``policy`` on ``calibration`` sequences and the collapsed policy.

    ``heldout`` (other sequences) adds each layer's held-out error figures; ``fit`` and
    ``pivot``: see :func:`select_units`. ``target`` (a fraction of the parameters, in place of
    ``threshold``): before each layer the widths are planned by
    :func:`pufferfiber.core.budget.plan_widths` and the layer keeps its share; the fibration's
    ``threshold`` is then the τ this corresponds to (the largest fit error of a removed unit),
    and ``extra["budget"]`` holds target, achieved fraction, per-layer τ and a note.
    """
    threshold = 0.0 if target is not None else validate_threshold(threshold)
    if target is not None:
        target = validate_target(target)
    dtype = next(policy.parameters()).dtype
    params = {k: v.detach().cpu().double() for k, v in policy.state_dict().items()}
    # A CPU copy: the caller's module (maybe on a GPU, maybe training) is never moved or edited.
    current = policy_from_params(policy.arch, params, dtype)
    chosen = {n.name for n in build_graph(policy).select_hidden(layers)}
    recs: dict[str, Reconstruction] = {}
    fibers: list[LayerFibers] = []
    figures: dict[str, Any] = {"frames": int(calibration.shape[0] * calibration.shape[1])}
    start = time.perf_counter()
    streams = [LayerInputs(calibration)] + ([LayerInputs(heldout)] if heldout is not None else [])
    full_graph = build_graph(policy)
    full_params = policy.parameter_count()
    done: dict[str, int] = {}
    planned: dict[str, int] = {}
    taus: dict[str, float] = {}
    for original in full_graph.hidden:
        graph = build_graph(current)
        node = graph[original.name]
        outputs = [stream.outputs(current, node) for stream in streams]
        if node.name not in chosen:
            fibers.append(LayerFibers(original, np.arange(node.size), collapsed=False))
            for stream, out in zip(streams, outputs, strict=True):
                stream.advance(current, node, out, None)
            continue
        moments = output_moments(outputs[0], node)
        gram = outgoing_gram(graph, node, params)
        weights = unit_weights(gram)
        count = None
        if target is not None:
            count = next_width(
                full_graph, policy.arch, target, node.name, chosen, done, full_params
            )
            planned[node.name] = count
        kept, coef, offset, constant = select_units(moments, gram, threshold, fit, pivot, count)
        scale = float((np.diag(moments.cov) * weights**2).mean()) or 1.0
        full = np.zeros((node.size, node.size))
        full[:, kept] = coef
        fit_error = np.sqrt(_weighted_residuals(moments.cov, weights, full).clip(0) / scale)
        rec = Reconstruction(node, kept, coef, offset, constant, fit_error)
        if heldout is not None:
            held = output_moments(outputs[1], node)
            rec.heldout_error = _heldout_error(held, rec, weights, scale)
        recs[node.name] = rec
        done[node.name] = len(kept)
        taus[node.label] = float(fit_error.max())
        fibers.append(LayerFibers(original, rec.labels()))
        # with a target, "over τ" on held-out frames compares with the layer's own τ
        figures[node.label] = _layer_figures(rec, threshold if count is None else taus[node.label])
        params = fold_layer(graph, params, rec)
        current = policy_from_params(_resized(current, node, len(kept)), params, dtype)
        for stream, out in zip(streams, outputs, strict=True):
            stream.advance(current, node, out, kept)
        del outputs
        if progress is not None:
            progress(
                f"data fibers: {node.label} {node.size} -> {len(kept)} units "
                f"({int(constant.sum())} constant)"
            )
    figures["seconds"] = time.perf_counter() - start
    extra: dict[str, Any] = {"criterion": "data", "fit": fit, "pivot": pivot}
    if target is not None:
        achieved = current.parameter_count() / full_params
        smallest = smallest_fraction(full_graph, policy.arch, sorted(chosen), full_params)
        short = [full_graph[n].label for n in planned if done[n] < planned[n]]
        jumped = (
            f"{', '.join(short)}: fewer units than its share already explain the others exactly "
            "on the calibration set"
            if short
            else None
        )
        extra["budget"] = budget_record(target, achieved, taus, smallest, jumped)
        threshold = extra["budget"]["tau"]  # the τ the target corresponds to
    fibration = DataFibration(threshold, "positions", fibers, extra=extra)
    fibration.reconstructions = recs
    fibration.calibration = figures
    return fibration, current


def apply_reconstructions(policy: Policy, fibration: DataFibration) -> Policy:
    """The collapsed policy from recorded reconstructions (same result as :func:`data_fibers`)."""
    dtype = next(policy.parameters()).dtype
    params = {k: v.detach().cpu().double() for k, v in policy.state_dict().items()}
    current = policy_from_params(policy.arch, params, dtype)  # a CPU copy (see data_fibers)
    for name, rec in fibration.reconstructions.items():
        graph = build_graph(current)
        params = fold_layer(graph, params, rec)
        current = policy_from_params(_resized(current, graph[name], len(rec.kept)), params, dtype)
    return current


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
