"""Typed records of the files a run holds, used by the code that writes them and the code that
reads them: ``fidelity.json``, the fibers timeline cache, the ``fibers.pkl`` header and
``trainer_state.pt``.

Each record has ``to_dict`` (what is written) and ``from_dict`` (what is read back, checked for
type). Readers keep reading the files earlier versions wrote: a missing ``format`` key means
such a file, and ``fidelity.json`` files of other tools are read through a few known aliases.
A file that is not what its name says raises :class:`SchemaError` with a one-line reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pufferfiber.io.atomic import atomic_write_text

FIDELITY_FORMAT = "pufferfiber.fidelity/1"
TIMELINE_FORMAT = "pufferfiber.timeline/1"
FIBERS_FORMAT = "pufferfiber.fibers/1"
TRAINER_STATE_FORMAT = "pufferfiber.trainer_state/1"


# The PPO losses of metrics.jsonl and the dashboard's Losses column, in their order.
LOSS_NAMES = (
    "policy_loss",
    "value_loss",
    "entropy",
    "old_approx_kl",
    "approx_kl",
    "clipfrac",
    "explained_variance",
)


def json_number(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SchemaError(ValueError):
    """A file whose content does not match its record (one-line message)."""


def _where(path: Path | str | None) -> str:
    return f"{path}: " if path is not None else ""


def _check(value: Any, kind: type | tuple[type, ...], what: str, path: Path | str | None) -> Any:
    """``value`` if it is a ``kind`` (bools are not numbers here), else :class:`SchemaError`."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        shown = "missing" if value is _MISSING else f"{type(value).__name__} {value!r:.40}"
        raise SchemaError(f"{_where(path)}{what} is {shown}")
    return value


_MISSING: Any = object()
_NUMBER = (int, float)


# ----------------------------------------------------------------------------------------------
# fidelity.json


# Names other tools (and early drafts of the guide) use for the fields the report reads.
_FIDELITY_ALIASES: dict[str, tuple[str, ...]] = {
    "return_mean": ("return", "mean_return"),
    "kl": ("kl_mean", "mean_kl", "policy_kl"),
    "value_mae": ("value_error", "value_abs_error"),
}


@dataclass
class Fidelity:
    """``fidelity.json``: how faithful a collapsed policy is (:mod:`~pufferfiber.core.divergence`).

    The measured numbers are NaN (``None`` in the file) when a file lacks them;
    ``return_mean`` / ``return_std`` are ``None`` when no episode was played. Keys this record
    does not name (the data criterion's ``calibration``, say) are kept in ``extra``.
    """

    env: str = ""
    threshold: float = math.nan
    epoch: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    kl: float = math.nan
    value_mae: float = math.nan
    value_mean_abs: float = math.nan
    steps: int | None = None
    return_mean: float | None = None
    return_std: float | None = None
    episodes: int | None = None
    returns: list[float] | None = None
    fibers: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    collapsed_layers: list[str] = field(default_factory=list)
    # A size target (:mod:`pufferfiber.core.budget`): the fraction asked, the fraction kept, the
    # τ it corresponds to, and why the size missed the target by more than 1 point (or None).
    # None in files of a collapse at a threshold, and in files written before targets existed.
    target: float | None = None
    achieved: float | None = None
    tau: float | None = None
    target_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_fraction(self) -> float:
        if not self.params_before or self.params_after is None:
            return math.nan
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written (NaN as ``null``; ``params_fraction`` for readers of
        the file that do not compute it)."""
        out: dict[str, Any] = {"format": FIDELITY_FORMAT}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "returns" and value is None:
                continue
            out[f.name] = None if isinstance(value, float) and not math.isfinite(value) else value
        out["params_fraction"] = _finite_or_none(self.params_fraction)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | str | None = None) -> Fidelity:
        """Read a ``fidelity.json`` object; fields are looked up under their name, then their
        aliases, at the top level or one level down (other tools nest them)."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{_where(path)}fidelity is not a JSON object")
        fmt = data.get("format", FIDELITY_FORMAT)
        if fmt != FIDELITY_FORMAT:
            raise SchemaError(f"{_where(path)}unknown fidelity format {fmt!r:.40}")
        scopes = [data] + [v for v in data.values() if isinstance(v, Mapping)]

        def find(name: str) -> Any:
            for scope in scopes:
                for key in (name, *_FIDELITY_ALIASES.get(name, ())):
                    if key in scope and scope[key] is not None:
                        return scope[key]
            return _MISSING

        def number(name: str, default: Any = math.nan) -> Any:
            value = find(name)
            if value is _MISSING:
                return default
            return float(_check(value, _NUMBER, name, path))

        def count(name: str) -> int | None:
            value = find(name)
            return None if value is _MISSING else int(_check(value, int, name, path))

        def mapping(name: str) -> dict[str, int]:
            value = data.get(name, {})
            return {str(k): int(v) for k, v in _check(value, dict, name, path).items()}

        returns = data.get("returns")
        if returns is not None:
            returns = [float(r) for r in _check(returns, list, "returns", path)]
        layers = _check(data.get("collapsed_layers", []), list, "collapsed_layers", path)
        known = {f.name for f in fields(cls)} | {"format", "params_fraction"}
        return cls(
            env=str(data.get("env", "")),
            threshold=number("threshold"),
            epoch=count("epoch"),
            params_before=count("params_before"),
            params_after=count("params_after"),
            kl=number("kl"),
            value_mae=number("value_mae"),
            value_mean_abs=number("value_mean_abs"),
            steps=count("steps"),
            return_mean=number("return_mean", None),
            return_std=number("return_std", None),
            episodes=count("episodes"),
            returns=returns,
            fibers=mapping("fibers"),
            sizes=mapping("sizes"),
            collapsed_layers=[str(x) for x in layers],
            target=number("target", None),
            achieved=number("achieved", None),
            tau=number("tau", None),
            target_note=None if data.get("target_note") is None else str(data["target_note"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_fidelity(path: Path, fidelity: Mapping[str, Any] | Fidelity) -> Fidelity:
    """Write ``fidelity.json`` atomically through the record (so it reads back)."""

    record = fidelity if isinstance(fidelity, Fidelity) else Fidelity.from_dict(fidelity, path)
    atomic_write_text(Path(path), json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def read_fidelity(path: Path) -> Fidelity | None:
    """``fidelity.json`` as a record; ``None`` when the file is missing, not JSON or not ours
    (the report then shows the numbers as unknown)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Fidelity.from_dict(data, path)
    except (OSError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------
# The fibers timeline (cache of fibers per checkpoint)


@dataclass
class TimelineEntry:
    """Fibers of one checkpoint (:func:`pufferfiber.workflows.timeline.fibers_at`)."""

    epoch: int
    global_step: int
    fibers: dict[str, int]
    sizes: dict[str, int]
    params_full: int
    params_collapsed: int
    lstm_rounds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, path: Path | str | None = None) -> TimelineEntry:
        if not isinstance(data, Mapping):
            raise SchemaError(f"{_where(path)}timeline entry is not an object")
        get = data.get
        rounds = get("lstm_rounds")
        return cls(
            epoch=_check(get("epoch", _MISSING), int, "epoch", path),
            global_step=_check(get("global_step", _MISSING), int, "global_step", path),
            fibers=dict(_check(get("fibers", _MISSING), dict, "fibers", path)),
            sizes=dict(_check(get("sizes", _MISSING), dict, "sizes", path)),
            params_full=_check(get("params_full", _MISSING), int, "params_full", path),
            params_collapsed=_check(
                get("params_collapsed", _MISSING), int, "params_collapsed", path
            ),
            lstm_rounds=None if rounds is None else _check(rounds, int, "lstm_rounds", path),
        )

    @classmethod
    def valid(cls, data: Any) -> bool:
        """Whether ``data`` reads as an entry (a damaged cache entry is recomputed)."""
        try:
            cls.from_dict(data)
        except SchemaError:
            return False
        return True


# ----------------------------------------------------------------------------------------------
# fibers.pkl


@dataclass
class FibersLayer:
    """One hidden layer of ``fibers.pkl`` (the ``labels`` array and other keys stay in the
    file's dict; this is what readers of the header rely on)."""

    label: str
    size: int
    n_fibers: int
    collapsed: bool = True
    name: str = ""
    kind: str = ""


@dataclass
class FibersHeader:
    """The header of ``fibers.pkl`` (:func:`pufferfiber.io.fibersfile.fibers_dict` writes it)."""

    threshold: float
    epoch: int
    env: str
    params_before: int
    params_after: int
    layers: list[FibersLayer]
    flatten_colours: str = "positions"
    criterion: str | None = None

    @classmethod
    def from_dict(cls, data: Any, path: Path | str | None = None) -> FibersHeader:
        """Check the keys the readers use; :class:`SchemaError` names the first bad one."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{_where(path)}fibers file is not a dict")
        fmt = data.get("format")
        if fmt != FIBERS_FORMAT:
            raise SchemaError(
                f"{_where(path)}not a pufferfiber fibers file (format {FIBERS_FORMAT})"
            )
        get = data.get
        layers = []
        for i, layer in enumerate(_check(get("layers", _MISSING), list, "layers", path)):
            where = f"layers[{i}]."
            if not isinstance(layer, Mapping):
                raise SchemaError(f"{_where(path)}layers[{i}] is not a dict")
            layers.append(
                FibersLayer(
                    label=_check(layer.get("label", _MISSING), str, where + "label", path),
                    size=_check(layer.get("size", _MISSING), int, where + "size", path),
                    n_fibers=_check(layer.get("n_fibers", _MISSING), int, where + "n_fibers", path),
                    collapsed=bool(layer.get("collapsed", True)),
                    name=str(layer.get("name", "")),
                    kind=str(layer.get("kind", "")),
                )
            )
        return cls(
            threshold=float(_check(get("threshold", _MISSING), _NUMBER, "threshold", path)),
            epoch=_check(get("epoch", _MISSING), int, "epoch", path),
            env=_check(get("env", _MISSING), str, "env", path),
            params_before=_check(get("params_before", _MISSING), int, "params_before", path),
            params_after=_check(get("params_after", _MISSING), int, "params_after", path),
            layers=layers,
            flatten_colours=str(get("flatten_colours", "positions")),
            criterion=None if get("criterion") is None else str(get("criterion")),
        )


# ----------------------------------------------------------------------------------------------
# trainer_state.pt


@dataclass
class TrainerState:
    """``trainer_state.pt``: what ``--resume`` needs besides the checkpoint.

    The file name is PufferLib's, the content is not (PufferLib stores
    ``optimizer_state_dict``, ``update``...), hence the ``format`` key. ``hooks`` maps each
    training hook's name to its state (e.g. symmetry breaking's unit ages).
    """

    optimizer: dict[str, Any]
    epoch: int
    global_step: int = 0
    checkpoint: str | None = None
    end_epoch: int | None = None
    hooks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": TRAINER_STATE_FORMAT,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "hooks": dict(self.hooks),
        }
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.end_epoch is not None:
            out["end_epoch"] = self.end_epoch
        return out

    @classmethod
    def from_dict(cls, data: Any, path: Path | str | None = None) -> TrainerState:
        """Validate a loaded ``trainer_state.pt``. Files of earlier versions (no ``format``,
        hook states as a list) are read; PufferLib's own file is named as such."""
        where = _where(path)
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}not a trainer state file")
        fmt = data.get("format")
        if fmt is None and "optimizer_state_dict" in data:
            raise SchemaError(
                f"{where}this is PufferLib's trainer state, not pufferfiber's; resume the run "
                "with PufferLib, or import its checkpoint (--allow-pickle) and train anew"
            )
        if fmt is not None and fmt != TRAINER_STATE_FORMAT:
            raise SchemaError(
                f"{where}unknown trainer state format {fmt!r:.40} (this version reads "
                f"{TRAINER_STATE_FORMAT})"
            )
        epoch = data.get("epoch", _MISSING)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            _check(epoch, int, "epoch", path)
            raise SchemaError(f"{where}epoch is {epoch}, not >= 0")
        hooks = data.get("hooks") or {}
        if isinstance(hooks, list | tuple):  # before format 1: by position
            hooks = {f"#{i}": s for i, s in enumerate(hooks) if s is not None}
        end = data.get("end_epoch")
        checkpoint = data.get("checkpoint")
        return cls(
            optimizer=dict(_check(data.get("optimizer", _MISSING), dict, "optimizer", path)),
            epoch=epoch,
            global_step=_check(data.get("global_step", 0), int, "global_step", path),
            checkpoint=None if checkpoint is None else _check(checkpoint, str, "checkpoint", path),
            end_epoch=None if end is None else _check(end, int, "end_epoch", path),
            hooks=dict(_check(hooks, dict, "hooks", path)),
        )
