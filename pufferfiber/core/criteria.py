"""Fiber criteria: the one seam through which fibers are computed.

A *criterion* decides which units of a policy form fibers and how the quotient is built. Every
criterion is an object with the same small interface (scikit-learn style, deterministic for fixed
inputs and seeds):

* ``fit_predict(policy) -> Fibration``: the fibers of every hidden layer;
* ``transform(policy, fibration) -> Policy``: the collapsed policy;
* ``fit_transform(policy) -> (Fibration, Policy)``: both (one pass where the criterion can);
* ``describe() -> dict``: its settings, plain values (saved in ``fidelity.json``).

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
from typing import Any, ClassVar

import torch

from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.datafibers import (
    CALIBRATION_SEED_OFFSET,
    DEFAULT_CALIBRATION_BATCH,
    DEFAULT_CALIBRATION_STEPS,
    DataFibration,
    Progress,
    apply_reconstructions,
    data_fibers,
)
from pufferfiber.core.fibers import DEFAULT_LSTM_ROUNDS, Fibration, compute_fibers
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
    "WeightCriterion",
    "check_criterion",
    "make_criterion",
]


class FiberCriterion(ABC):
    """The interface every criterion implements (see the module docstring)."""

    name: ClassVar[str]
    threshold: float

    @abstractmethod
    def fit_predict(self, policy: Policy) -> Fibration:
        """The fibers of every hidden layer of ``policy``."""

    @abstractmethod
    def transform(self, policy: Policy, fibration: Fibration) -> Policy:
        """The collapsed policy (a new one; ``policy`` is untouched)."""

    def fit_transform(self, policy: Policy) -> tuple[Fibration, Policy]:
        fibration = self.fit_predict(policy)
        return fibration, self.transform(policy, fibration)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The criterion's name and settings as plain values."""


@dataclass
class WeightCriterion(FiberCriterion):
    """Fibers from the weights (:func:`pufferfiber.core.fibers.compute_fibers`), unchanged."""

    name: ClassVar[str] = "weights"
    threshold: float
    flatten_colours: str = "positions"
    layers: list[str] | None = None
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS
    lstm_criterion: str = "units"

    def fit_predict(self, policy: Policy) -> Fibration:
        return compute_fibers(
            policy,
            self.threshold,
            flatten_colours=self.flatten_colours,
            layers=self.layers,
            max_lstm_rounds=self.max_lstm_rounds,
            lstm_criterion=self.lstm_criterion,
        )

    def transform(self, policy: Policy, fibration: Fibration) -> Policy:
        return collapse_policy(policy, fibration)

    def describe(self) -> dict[str, Any]:
        return {
            "criterion": self.name,
            "threshold": float(self.threshold),
            "flatten_colours": self.flatten_colours,
            "lstm_criterion": self.lstm_criterion,
            "max_lstm_rounds": int(self.max_lstm_rounds),
        }


@dataclass
class DataCriterion(FiberCriterion):
    """Fibers from real observations (:func:`pufferfiber.core.datafibers.data_fibers`).

    ``calibration`` (``[B, T, *obs]``) is used when given; otherwise ``calibration_batch``
    sequences of ``calibration_steps`` steps are played by the policy in ``env`` on env seeds
    ``seed + CALIBRATION_SEED_OFFSET + i``. ``heldout`` (other sequences) adds held-out error
    figures per layer. ``fit`` is one of :data:`DATA_FITS`, ``pivot`` one of
    :data:`DATA_PIVOTS` (see :func:`pufferfiber.core.datafibers.select_units`).
    """

    name: ClassVar[str] = "data"
    threshold: float
    env: str | None = None
    calibration: torch.Tensor | None = None
    heldout: torch.Tensor | None = None
    calibration_batch: int = DEFAULT_CALIBRATION_BATCH
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS
    seed: int = 0
    layers: list[str] | None = None
    fit: str = "lstsq"
    pivot: str = "consumer"
    progress: Progress | None = field(default=None, repr=False)
    collection_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.fit not in DATA_FITS:
            raise ValueError(f"fit must be one of {DATA_FITS}, got {self.fit!r}")
        if self.pivot not in DATA_PIVOTS:
            raise ValueError(f"pivot must be one of {DATA_PIVOTS}, got {self.pivot!r}")
        if self.calibration_batch < 1 or self.calibration_steps < 1:
            raise ValueError("the calibration set needs at least one sequence of one step")

    def calibration_set(self, policy: Policy) -> torch.Tensor:
        """The calibration sequences (collected once, then reused)."""
        if self.calibration is None:
            if self.env is None:
                raise ValueError("the data criterion needs an env or calibration observations")
            import time

            from pufferfiber.rl.evaluate import collect_observations

            if self.progress is not None:
                self.progress(
                    f"data fibers: playing {self.calibration_batch} x {self.calibration_steps} "
                    "calibration steps"
                )
            start = time.perf_counter()
            self.calibration = collect_observations(
                policy,
                self.env,
                self.calibration_batch,
                self.calibration_steps,
                self.seed + CALIBRATION_SEED_OFFSET,
            )
            self.collection_seconds = time.perf_counter() - start
        return self.calibration

    def fit_transform(self, policy: Policy) -> tuple[Fibration, Policy]:
        return data_fibers(
            policy,
            self.threshold,
            self.calibration_set(policy),
            heldout=self.heldout,
            layers=self.layers,
            fit=self.fit,
            pivot=self.pivot,
            progress=self.progress,
        )

    def fit_predict(self, policy: Policy) -> Fibration:
        return self.fit_transform(policy)[0]

    def transform(self, policy: Policy, fibration: Fibration) -> Policy:
        if not isinstance(fibration, DataFibration):
            raise TypeError("the data criterion collapses the fibers it found (a DataFibration)")
        return apply_reconstructions(policy, fibration)

    def describe(self) -> dict[str, Any]:
        shape = (
            list(self.calibration.shape[:2])
            if self.calibration is not None
            else [self.calibration_batch, self.calibration_steps]
        )
        return {
            "criterion": self.name,
            "threshold": float(self.threshold),
            "fit": self.fit,
            "pivot": self.pivot,
            "calibration_sequences": shape,
            "calibration_seed": int(self.seed + CALIBRATION_SEED_OFFSET),
            "collection_seconds": self.collection_seconds,
        }


def make_criterion(name: str, threshold: float, **options: Any) -> FiberCriterion:
    """A criterion by name (one of :data:`CRITERIA`); ``options`` are its dataclass fields.

    Options that the criterion does not have and that are ``None`` are ignored, so a command
    line can pass all its options; a set option that does not apply is a ``ValueError``.
    """
    classes: dict[str, type[WeightCriterion] | type[DataCriterion]] = {
        "weights": WeightCriterion,
        "data": DataCriterion,
    }
    if name not in classes:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {name!r}")
    cls = classes[name]
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
