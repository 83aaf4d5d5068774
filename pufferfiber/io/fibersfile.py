"""``fibers.pkl``: the fibers of a collapse, as plain data, and its restricted reader.

The file is a pickle of plain containers, numbers, strings and numpy arrays only (the guide
names it ``fibers.pkl`` and its notebook loads it); :func:`load_fibers` reads it back with an
unpickler that refuses anything else, so opening a fibers file never runs code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pufferfiber.core.colouring import Fibration
from pufferfiber.io.atomic import atomic_write_bytes
from pufferfiber.io.schemas import FIBERS_FORMAT, FibersHeader


def fibers_dict(
    fibration: Fibration,
    *,
    epoch: int,
    env: str,
    params_before: int,
    params_after: int,
) -> dict[str, Any]:
    """The documented ``fibers.pkl`` content (plain Python + numpy only).

    Keys: ``format``, ``threshold``, ``epoch``, ``env``, ``flatten_colours``, ``max_lstm_rounds``,
    ``lstm_rounds``, ``params_before``, ``params_after`` and ``layers``: one dict per hidden layer
    in forward order with ``name`` (state-dict module path), ``label``, ``kind``, ``size``,
    ``n_fibers``, ``collapsed`` (bool) and ``labels`` (``np.int64`` array, fiber id per unit).
    """
    return {
        "format": FIBERS_FORMAT,
        "threshold": float(fibration.threshold),
        "epoch": int(epoch),
        "env": str(env),
        "flatten_colours": fibration.flatten_colours,
        "max_lstm_rounds": int(fibration.max_lstm_rounds),
        "lstm_rounds": int(fibration.lstm_rounds),
        "params_before": int(params_before),
        "params_after": int(params_after),
        "layers": [
            {
                "name": f.node.name,
                "label": f.node.label,
                "kind": str(f.node.kind.value),
                "size": int(f.node.size),
                "n_fibers": int(f.n_fibers),
                "collapsed": bool(f.collapsed),
                "labels": np.asarray(f.labels, dtype=np.int64),
            }
            for f in fibration.layers
        ],
    }


class FibersFileError(ValueError):
    """``fibers.pkl`` is missing, corrupt, or holds something other than plain data."""


_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "bool"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "slice"),
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays; refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def save_fibers(path: Path | str, fibers: dict[str, Any]) -> Path:
    """Write ``fibers.pkl`` atomically (checks it reads back with the restricted loader)."""
    data = pickle.dumps(fibers, protocol=4)
    _PlainUnpickler(io.BytesIO(data)).load()  # never write what load_fibers would refuse
    FibersHeader.from_dict(fibers, path)  # nor a header the readers could not use
    return atomic_write_bytes(Path(path), data)


def load_fibers(path: Path | str) -> dict[str, Any]:
    """Read ``fibers.pkl`` with the restricted unpickler; :class:`FibersFileError` otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FibersFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        obj = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise FibersFileError(f"{path} is not a valid fibers file: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FIBERS_FORMAT:
        raise FibersFileError(f"{path} is not a pufferfiber fibers file (format {FIBERS_FORMAT})")
    return obj
