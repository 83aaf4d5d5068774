"""Per-epoch progress of a sweep cell's training runs, handed to Ray Tune while they train.

A cell's runs train in child processes (:func:`pufferfiber.experiments.sweep._train`), and each
child appends one JSON line per finished epoch to its run folder's ``metrics.jsonl``. Nothing
crosses the process boundary but that file, so :class:`EpochFollower` reads it: it notes the
metrics files under the run's data folder before the child starts, then, every
``POLL_SECONDS`` until the child exits (and once more after), finds the one the child is writing
(new or changed since) and hands its newest epoch to a reporter. In a Tune trial the reporter is
``ray.tune.report``, so Tune's progress table and its ``result.json`` follow each cell's return
epoch by epoch.

The reporter is per process (:func:`reporting`), not a parameter threaded through the cell's
steps: a Tune trial is a process of its own (``reuse_actors=False``), and outside Tune no
reporter is set, so a training run is then just waited for.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pufferfiber.io.runfiles import METRICS, RETURN_KEY

POLL_SECONDS = 2.0  # how often a running child's metrics file is read
TAIL_BYTES = 65_536  # the end of metrics.jsonl that is read (~100 epochs; the file only grows)
STEP_KEYS = ("agent_steps", "global_step")  # the trainer writes global_step

Reporter = Callable[[dict[str, Any]], None]

_reporter: Reporter | None = None


@contextlib.contextmanager
def reporting(report: Reporter) -> Iterator[None]:
    """Within this block, training runs started by this process hand their epochs to
    ``report`` (see :func:`current_reporter`)."""
    global _reporter
    before, _reporter = _reporter, report
    try:
        yield
    finally:
        _reporter = before


def current_reporter() -> Reporter | None:
    """The reporter set by :func:`reporting`, ``None`` outside it."""
    return _reporter


def _stamps(root: Path) -> dict[Path, tuple[int, int]]:
    """``(mtime_ns, size)`` of every metrics file under ``root``."""
    stamps = {}
    for path in root.rglob(METRICS):
        with contextlib.suppress(OSError):  # removed meanwhile (a stale run cleaned up)
            st = path.stat()
            stamps[path] = (st.st_mtime_ns, st.st_size)
    return stamps


def latest_epoch(path: Path) -> dict[str, Any] | None:
    """The newest epoch in a ``metrics.jsonl``: ``epoch``, ``agent_steps`` and the newest
    finite ``episode_return`` of the file's end (NaN if no game finished there); ``None`` when
    no whole line holds an epoch yet."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = tail.splitlines()
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line read may be cut
    newest: dict[str, Any] | None = None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line the child is writing
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            continue
        if newest is None:
            steps = next((record[k] for k in STEP_KEYS if k in record), math.nan)
            newest = {RETURN_KEY: math.nan, "epoch": record["epoch"], "agent_steps": steps}
        value = record.get(RETURN_KEY)
        if isinstance(value, int | float) and math.isfinite(value):
            newest[RETURN_KEY] = float(value)
            break
    return newest


class EpochFollower:
    """Hands each new epoch of the run a child process trains under ``root`` to ``report``.

    Made before the child starts: the metrics files already under ``root`` are noted then, so
    the child's is the one that appears or changes afterwards (a resumed run appends to its old
    file). Each report holds the newest epoch's ``episode_return``, ``epoch``, ``agent_steps``
    (numbers first: Tune's table shows the first numeric keys it sees), then ``run`` (the run
    folder relative to ``root``) and ``job`` (``new``, ``resume``, ``collapse``)."""

    def __init__(self, root: Path, job: str, report: Reporter) -> None:
        self.root = root
        self.job = job
        self.report = report
        self.before = _stamps(root)
        self.reported: tuple[Path, int] | None = None

    def check(self) -> None:
        """Report the child's newest epoch if it is one not reported yet."""
        changed = [(s, p) for p, s in _stamps(self.root).items() if self.before.get(p) != s]
        if not changed:
            return
        _, path = max(changed)  # the most recently written
        newest = latest_epoch(path)
        if newest is None or self.reported == (path, newest["epoch"]):
            return
        self.reported = (path, newest["epoch"])
        run = path.parent.relative_to(self.root).as_posix()
        self.report({**newest, "run": run, "job": self.job})

    def wait(self, proc: subprocess.Popen[Any], interval: float = POLL_SECONDS) -> int:
        """Wait for ``proc``, reporting as it trains; its exit code. The last check comes after
        it exits, so a run shorter than ``interval`` still reports its final epoch."""
        while True:
            try:
                code = proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                self.check()
                continue
            self.check()
            return code
