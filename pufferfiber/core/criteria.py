"""Fiber criteria: the one seam through which fibers are computed.

A *criterion* decides which units of a network form fibers and how the quotient is built. Every
criterion is an object with the same small interface, scikit-learn style (settings in
``__init__``, learned state in attributes ending in ``_``, deterministic for fixed inputs):

* ``fit(net, observations=None) -> self``: finds the fibers, kept in ``fibration_``;
* ``transform(net)``: the collapsed network (a new one; ``net`` is untouched);
* ``fit_transform(net, observations=None)``: both, in one pass where the criterion can;
* ``fit_predict(net, observations=None) -> Fibration``: the fibers only;
* ``describe() -> dict``: its settings, plain values (saved in ``fidelity.json``).

``net`` is our :class:`~pufferfiber.core.policy.Policy` (the collapsed network is then a
``Policy``) or a user's module adapted by :func:`pufferfiber.core.adapt.adapt` (the collapsed
network is then a new module of the user's own class). ``observations`` (``[B, T, *obs]``, the
raw observations the network sees) are what the data criterion calibrates on; the weight
criterion ignores them. No criterion plays an environment: callers collect observations (e.g.
:func:`pufferfiber.rl.evaluate.collect_observations`).

The criteria, by name (:data:`CRITERIA`, the one list other code should take names from):

* ``"weights"`` (:class:`WeightCriterion`, the default): units whose input-collapsed weight rows
  agree within cosine distance τ (average linkage), the fibers of ``docs/method.md``; its LSTM
  part is ours (``lstm_criterion="units"``) or the published reference's (``"published"``,
  :mod:`pufferfiber.core.published`), see :data:`LSTM_CRITERIA`.
* ``"data"`` (:class:`DataCriterion`): units whose outputs are constant or affinely related on
  a calibration set of real observation sequences (:mod:`pufferfiber.core.datafibers`).

:func:`make_criterion` builds one from a name and options (what the command lines call).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, overload

import torch
from torch import nn

from pufferfiber.core.adapt import AdaptedNetwork
from pufferfiber.core.budget import check_threshold_or_target, validate_target
from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.colouring import DEFAULT_LSTM_ROUNDS, Fibration
from pufferfiber.core.datafibers import (
    CALIBRATION_SEED_OFFSET,
    DEFAULT_CALIBRATION_BATCH,
    DEFAULT_CALIBRATION_STEPS,
    DataFibration,
    Progress,
    apply_reconstructions,
    data_fibers,
)
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.graph import build_graph
from pufferfiber.core.policy import Policy
from pufferfiber.core.types import (
    CRITERIA,
    DATA_FITS,
    DATA_PIVOTS,
    FLATTEN_COLOURS,
    LSTM_CRITERIA,
)

DEFAULT_CRITERION = CRITERIA[0]  # "weights"

__all__ = [
    "CRITERIA",
    "DATA_FITS",
    "DATA_PIVOTS",
    "DEFAULT_CRITERION",
    "FLATTEN_COLOURS",
    "LSTM_CRITERIA",
    "DataCriterion",
    "FiberCriterion",
    "Network",
    "WeightCriterion",
    "check_criterion",
    "make_criterion",
]


Network = Policy | AdaptedNetwork  # what a criterion fits and transforms


def _as_policy(net: Network) -> Policy:
    if isinstance(net, AdaptedNetwork):
        return net.to_policy()
    if isinstance(net, Policy):
        return net
    raise TypeError(
        f"a criterion takes a Policy or pufferfiber.adapt(module, ...), not {type(net).__name__}"
    )


def _returned(net: Network, collapsed: Policy) -> Policy | nn.Module:
    """The collapsed network in the caller's form: a Policy, or the user's own class."""
    return net.from_policy(collapsed) if isinstance(net, AdaptedNetwork) else collapsed


class FiberCriterion(ABC):
    """The interface every criterion implements (see the module docstring)."""

    name: ClassVar[str]
    threshold: float | None
    target: float | None
    fibration_: Fibration | None

    def _check_size_knob(self) -> None:
        """Exactly one of ``threshold`` (τ) and ``target`` (fraction of the parameters)."""
        check_threshold_or_target(self.threshold, self.target)
        if self.target is not None:
            self.target = validate_target(self.target)

    def _size_description(self) -> dict[str, Any]:
        """``threshold``, and with a target: ``target``, then once fitted the ``achieved``
        fraction, the τ it corresponds to and the note (see :mod:`pufferfiber.core.budget`)."""
        out: dict[str, Any] = {
            "threshold": None if self.threshold is None else float(self.threshold)
        }
        if self.target is not None:
            out["target"] = float(self.target)
            budget = self.fibration_.extra.get("budget") if self.fibration_ is not None else None
            if budget:
                out.update(
                    achieved=budget["achieved"], tau=budget["tau"], target_note=budget["note"]
                )
        return out

    @abstractmethod
    def fit(self, net: Network, observations: torch.Tensor | None = None) -> FiberCriterion:
        """Find the fibers of every hidden layer of ``net`` (stored in ``fibration_``)."""

    @abstractmethod
    def _collapse(self, policy: Policy, fibration: Fibration) -> Policy:
        """The quotient of ``policy`` by ``fibration``."""

    @overload
    def transform(self, net: Policy) -> Policy: ...
    @overload
    def transform(self, net: AdaptedNetwork) -> nn.Module: ...
    def transform(self, net: Network) -> Policy | nn.Module:
        """The collapsed network (a new one; ``net`` is untouched) by the fitted fibers."""
        fibration = self._fitted()
        policy = _as_policy(net)
        sizes = {f.node.name: f.node.size for f in fibration.layers}
        here = {n.name: n.size for n in build_graph(policy).hidden}
        if here != sizes:
            raise ValueError("this criterion was fitted on a network of other sizes; fit it first")
        return _returned(net, self._collapse(policy, fibration))

    @overload
    def fit_transform(self, net: Policy, observations: torch.Tensor | None = None) -> Policy: ...
    @overload
    def fit_transform(
        self, net: AdaptedNetwork, observations: torch.Tensor | None = None
    ) -> nn.Module: ...
    def fit_transform(
        self, net: Network, observations: torch.Tensor | None = None
    ) -> Policy | nn.Module:
        """Fit, then the collapsed network: a Policy for a Policy, the user's class for an
        adapted module."""
        return self.fit(net, observations).transform(net)

    def fit_predict(self, net: Network, observations: torch.Tensor | None = None) -> Fibration:
        """The fibers of ``net`` (also kept in ``fibration_``)."""
        self.fit(net, observations)
        return self._fitted()

    def _fitted(self) -> Fibration:
        if self.fibration_ is None:
            raise ValueError(f"the {self.name} criterion is not fitted yet: call fit first")
        return self.fibration_

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The criterion's name and settings as plain values."""


@dataclass
class WeightCriterion(FiberCriterion):
    """Fibers from the weights (:func:`pufferfiber.core.fibers.compute_fibers`), unchanged.

    Give ``threshold`` (τ) or ``target`` (a fraction of the parameters in ``(0, 1]``: each
    layer's dendrogram is cut at its share of the budget, see :mod:`pufferfiber.core.budget`).
    """

    name: ClassVar[str] = "weights"
    threshold: float | None = None
    flatten_colours: str = "positions"
    layers: list[str] | None = None
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS
    lstm_criterion: str = "units"
    target: float | None = None
    fibration_: Fibration | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_size_knob()

    def fit(self, net: Network, observations: torch.Tensor | None = None) -> WeightCriterion:
        """The fibers from ``net``'s weights (``observations`` are not needed and ignored)."""
        self.fibration_ = compute_fibers(
            _as_policy(net),
            0.0 if self.threshold is None else self.threshold,
            flatten_colours=self.flatten_colours,
            layers=self.layers,
            max_lstm_rounds=self.max_lstm_rounds,
            lstm_criterion=self.lstm_criterion,
            target=self.target,
        )
        return self

    def _collapse(self, policy: Policy, fibration: Fibration) -> Policy:
        return collapse_policy(policy, fibration)

    def describe(self) -> dict[str, Any]:
        return {
            "criterion": self.name,
            **self._size_description(),
            "flatten_colours": self.flatten_colours,
            "lstm_criterion": self.lstm_criterion,
            "max_lstm_rounds": int(self.max_lstm_rounds),
        }


@dataclass
class DataCriterion(FiberCriterion):
    """Fibers from real observations (:func:`pufferfiber.core.datafibers.data_fibers`).

    ``fit(net, observations)`` calibrates on ``observations`` ``[B, T, *obs]`` (required);
    ``heldout`` (other sequences, a keyword of :meth:`fit`) adds held-out error figures per
    layer. ``calibration_batch`` × ``calibration_steps`` and ``seed`` describe the calibration
    set callers that play an env collect (env seeds ``seed + CALIBRATION_SEED_OFFSET + i``, see
    :func:`pufferfiber.workflows.collapse.collapse_to_folder`); the criterion itself plays
    nothing. ``fit_method`` (the ``fit`` option of the config and :func:`make_criterion`) is one
    of :data:`DATA_FITS`, ``pivot`` one of :data:`DATA_PIVOTS` (see
    :func:`pufferfiber.core.datafibers.select_units`). Give ``threshold`` (τ) or ``target`` (a
    fraction of the parameters in ``(0, 1]``: each layer keeps units in the greedy order until
    its share of the budget, see :mod:`pufferfiber.core.budget`).

    Learned: ``fibration_`` (a :class:`DataFibration`: reconstructions and per-layer figures)
    and ``calibration_shape_`` (``[B, T]`` of the calibration set).
    """

    name: ClassVar[str] = "data"
    threshold: float | None = None
    calibration_batch: int = DEFAULT_CALIBRATION_BATCH
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS
    seed: int = 0
    layers: list[str] | None = None
    fit_method: str = "lstsq"
    pivot: str = "consumer"
    progress: Progress | None = field(default=None, repr=False)
    target: float | None = None
    fibration_: Fibration | None = field(default=None, init=False, repr=False)
    calibration_shape_: list[int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._check_size_knob()
        if self.fit_method not in DATA_FITS:
            raise ValueError(f"fit must be one of {DATA_FITS}, got {self.fit_method!r}")
        if self.pivot not in DATA_PIVOTS:
            raise ValueError(f"pivot must be one of {DATA_PIVOTS}, got {self.pivot!r}")
        if self.calibration_batch < 1 or self.calibration_steps < 1:
            raise ValueError("the calibration set needs at least one sequence of one step")

    def _fit_quotient(
        self, net: Network, observations: torch.Tensor | None, heldout: torch.Tensor | None
    ) -> Policy:
        if observations is None:
            raise ValueError(
                "the data criterion needs calibration observations [B, T, *obs]: "
                "fit(net, observations)"
            )
        if observations.dim() < 3:
            raise ValueError(
                f"observations must be [B, T, *obs], got shape {tuple(observations.shape)}"
            )
        if isinstance(net, AdaptedNetwork):
            observations = net.policy_observations(observations)
            heldout = None if heldout is None else net.policy_observations(heldout)
        self.fibration_, quotient = data_fibers(
            _as_policy(net),
            0.0 if self.threshold is None else self.threshold,
            observations,
            target=self.target,
            heldout=heldout,
            layers=self.layers,
            fit=self.fit_method,
            pivot=self.pivot,
            progress=self.progress,
        )
        self.calibration_shape_ = [int(observations.shape[0]), int(observations.shape[1])]
        return quotient

    def fit(
        self,
        net: Network,
        observations: torch.Tensor | None = None,
        *,
        heldout: torch.Tensor | None = None,
    ) -> DataCriterion:
        """The fibers of ``net`` on the calibration ``observations`` (``heldout``: figures)."""
        self._fit_quotient(net, observations, heldout)
        return self

    @overload
    def fit_transform(
        self,
        net: Policy,
        observations: torch.Tensor | None = None,
        *,
        heldout: torch.Tensor | None = None,
    ) -> Policy: ...
    @overload
    def fit_transform(
        self,
        net: AdaptedNetwork,
        observations: torch.Tensor | None = None,
        *,
        heldout: torch.Tensor | None = None,
    ) -> nn.Module: ...
    def fit_transform(
        self,
        net: Network,
        observations: torch.Tensor | None = None,
        *,
        heldout: torch.Tensor | None = None,
    ) -> Policy | nn.Module:
        """Fibers and the collapsed network in one pass over the calibration set."""
        return _returned(net, self._fit_quotient(net, observations, heldout))

    def _collapse(self, policy: Policy, fibration: Fibration) -> Policy:
        if not isinstance(fibration, DataFibration):
            raise TypeError("the data criterion collapses the fibers it found (a DataFibration)")
        return apply_reconstructions(policy, fibration)

    def describe(self) -> dict[str, Any]:
        shape = self.calibration_shape_ or [self.calibration_batch, self.calibration_steps]
        return {
            "criterion": self.name,
            **self._size_description(),
            "fit": self.fit_method,
            "pivot": self.pivot,
            "calibration_sequences": list(shape),
            "calibration_seed": int(self.seed + CALIBRATION_SEED_OFFSET),
        }


def make_criterion(name: str, threshold: float | None = None, **options: Any) -> FiberCriterion:
    """A criterion by name (one of :data:`CRITERIA`); ``options`` are its dataclass fields
    (``target=F`` in place of ``threshold``: a size target, see :mod:`pufferfiber.core.budget`).

    Options that the criterion does not have and that are ``None`` are ignored, so a command
    line can pass all its options; a set option that does not apply is a ``ValueError``. The
    data criterion's ``fit`` option (the config's name) is its ``fit_method`` setting.
    """
    classes: dict[str, type[WeightCriterion] | type[DataCriterion]] = {
        "weights": WeightCriterion,
        "data": DataCriterion,
    }
    if name not in classes:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {name!r}")
    cls = classes[name]
    if name == "data" and "fit" in options:
        options["fit_method"] = options.pop("fit")
    fields = set(cls.__dataclass_fields__)
    unknown = {k: v for k, v in options.items() if k not in fields and v is not None}
    if unknown:
        raise ValueError(f"options {sorted(unknown)} do not apply to the {name!r} criterion")
    return cls(threshold=threshold, **{k: v for k, v in options.items() if k in fields})


def check_criterion(name: str) -> str:
    """``name`` if it is a known criterion, else ``ValueError`` listing the valid ones."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return name
