"""Fibers over time: fibers per layer and collapsed size for every checkpoint of a run.

:func:`fibers_over_time` is what the notebook and the plots call. Computing fibers of a 3.9M
network takes about a second, so results are cached in ``<run>/fibers_timeline.json``, keyed by
each checkpoint file's name, size and modification time plus the settings (threshold, flatten
colours, layers, LSTM rounds). A changed or new checkpoint is recomputed; a run folder that
cannot be written (e.g. shared read-only data) simply is not cached.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pufferfiber.core.colouring import DEFAULT_LSTM_ROUNDS
from pufferfiber.core.criteria import FiberCriterion, WeightCriterion
from pufferfiber.core.fibers import validate_threshold
from pufferfiber.core.graph import build_graph
from pufferfiber.io.atomic import atomic_write_text, folder_writable
from pufferfiber.io.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from pufferfiber.io.runfiles import CHECKPOINT_GLOB, TIMELINE_CACHE
from pufferfiber.io.schemas import TIMELINE_FORMAT, TimelineEntry

CACHE_NAME = TIMELINE_CACHE
CACHE_FORMAT = TIMELINE_FORMAT

Progress = Callable[[int, int, int], None]  # (index, total, epoch)


def _settings_key(
    threshold: float, flatten_colours: str, layers: list[str] | None, rounds: int
) -> str:
    chosen = ",".join(layers) if layers else "all"
    return f"thr={threshold!r};flatten={flatten_colours};layers={chosen};rounds={rounds}"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache, or an empty one if it is missing or damaged (it is then rebuilt and
    rewritten); entries that do not have the expected shape are dropped and recomputed."""
    empty: dict[str, Any] = {"format": CACHE_FORMAT, "entries": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return empty
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return empty
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return empty
    data["entries"] = {
        settings: {key: entry for key, entry in per_file.items() if TimelineEntry.valid(entry)}
        for settings, per_file in entries.items()
        if isinstance(per_file, dict)
    }
    return data


def fibers_at(
    path: Path,
    threshold: float,
    *,
    flatten_colours: str = "positions",
    layers: list[str] | None = None,
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS,
    allow_pickle: bool = False,
    criterion: FiberCriterion | None = None,
) -> dict[str, Any]:
    """One timeline entry for one checkpoint file (no cache). ``criterion`` replaces the
    weight fibers built from ``threshold``, ``flatten_colours``, ``layers`` and rounds."""
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle)
    if criterion is None:
        criterion = WeightCriterion(threshold, flatten_colours, layers, max_lstm_rounds)
    fibration = criterion.fit_predict(ckpt.policy)
    counts = fibration.counts
    graph = build_graph(ckpt.policy)
    collapsed_arch = graph.resized(ckpt.arch, counts)
    return TimelineEntry(
        epoch=ckpt.epoch,
        global_step=ckpt.global_step,
        fibers=counts,
        sizes={n.label: n.size for n in graph.hidden},
        params_full=ckpt.arch.parameter_count(),
        params_collapsed=collapsed_arch.parameter_count(),
        lstm_rounds=fibration.lstm_rounds,
    ).to_dict()


def fibers_over_time(
    run_dir: Path | str,
    threshold: float,
    *,
    flatten_colours: str = "positions",
    layers: list[str] | None = None,
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    criterion: FiberCriterion | None = None,
) -> list[dict[str, Any]]:
    """One dict per checkpoint of ``run_dir``, by epoch.

    Each dict: ``epoch``, ``global_step``, ``fibers`` (layer label → count), ``sizes`` (layer
    label → units), ``params_full``, ``params_collapsed``, ``lstm_rounds``. ``criterion``
    (see :mod:`pufferfiber.core.criteria`) replaces the weight fibers of the other settings.
    ``allow_pickle`` admits PufferLib 2.0 pickled checkpoints (trusted files only). Raises
    :class:`CheckpointError` when the run has no checkpoints.
    """
    threshold = validate_threshold(threshold)
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints ({CHECKPOINT_GLOB}) in {run_dir}")
    cache_path = run_dir / CACHE_NAME
    cache = _read_cache(cache_path)
    settings = _settings_key(threshold, flatten_colours, layers, max_lstm_rounds)
    if criterion is not None:
        settings = json.dumps(criterion.describe(), sort_keys=True)
    entries: dict[str, Any] = cache["entries"].setdefault(settings, {})
    result, dirty = [], False
    for i, (epoch, path) in enumerate(found):
        if progress is not None:
            progress(i, len(found), epoch)
        key = _file_key(path)
        if key not in entries:
            entries[key] = fibers_at(
                path,
                threshold,
                flatten_colours=flatten_colours,
                layers=layers,
                max_lstm_rounds=max_lstm_rounds,
                allow_pickle=allow_pickle,
                criterion=criterion,
            )
            dirty = True
        result.append(entries[key])
    if dirty and folder_writable(run_dir):
        live = {_file_key(p) for _, p in found}
        cache["entries"][settings] = {k: v for k, v in entries.items() if k in live}
        with contextlib.suppress(CheckpointError):  # read-only run: just no cache
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")
    return result
