"""Where a training run's per-epoch numbers go: the dashboard, ``metrics.jsonl``, a tracker.

The trainer hands one :class:`EpochMetrics` per finished epoch to each :class:`MetricSink`:

* :class:`DashboardSink` draws PufferLib's dashboard (and appends it to ``log.out``);
* :class:`MetricsFile` appends one JSON line to ``metrics.jsonl``, the run's record (what the
  report and the sweep read; full precision, NaN written as ``null``);
* :class:`TensorBoardSink`, chosen with ``--train.tracker tensorboard``, writes TensorBoard
  event files under ``<run>/tensorboard/`` (offline: nothing leaves the machine; view them with
  ``tensorboard --logdir <run>/tensorboard``).

Appending is not atomic the way checkpoints are: a failed append (full disk) is cut back to the
last whole line, so ``metrics.jsonl`` never ends in half a line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pufferfiber.config.sections import TRACKERS, ConfigError
from pufferfiber.io.atomic import CheckpointError, atomic_write_text, describe_os_error
from pufferfiber.io.runfiles import METRICS, TENSORBOARD_DIR
from pufferfiber.io.schemas import json_number
from pufferfiber.rl.dashboard import Dashboard, DashboardState, machine_usage


@dataclass
class EpochMetrics:
    """The numbers of one finished epoch."""

    env_name: str
    epoch: int
    global_step: int
    sps: float
    uptime: float
    remaining: float
    times: dict[str, float] = field(default_factory=dict)  # seconds per phase (dashboard rows)
    losses: dict[str, float] = field(default_factory=dict)
    user_stats: dict[str, float] = field(default_factory=dict)  # episode infos + hook stats
    message: str = ""

    def record(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` line's fields, in the file's order."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "sps": self.sps,
            "uptime": self.uptime,
            **self.losses,
            **self.user_stats,
        }


class MetricSink(Protocol):
    """Receives every finished epoch's numbers."""

    def write(self, metrics: EpochMetrics) -> None: ...

    def close(self) -> None: ...


class DashboardSink:
    """PufferLib's dashboard (:mod:`pufferfiber.rl.dashboard`), with the machine's usage."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def write(self, metrics: EpochMetrics) -> None:
        m = metrics
        self.dashboard.show(
            DashboardState(
                m.env_name,
                m.global_step,
                m.epoch,
                m.sps,
                m.uptime,
                m.remaining,
                m.times,
                m.losses,
                m.user_stats,
                m.message,
                **machine_usage(),
            )
        )

    def close(self) -> None:
        pass


class MetricsFile:
    """``metrics.jsonl``: one JSON object per finished epoch, appended."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS

    def write(self, metrics: EpochMetrics) -> None:
        line = json.dumps({k: json_number(v) for k, v in metrics.record().items()}) + "\n"
        append_line(self.path, line)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """TensorBoard event files in ``<run>/tensorboard/``, one scalar per number, at the
    epoch's agent step: ``losses/*``, ``user_stats/*`` (episode infos, hook stats),
    ``performance/*`` (seconds per phase) and ``charts/sps``.

    ``start_step``: the agent step a resumed run continues from; events a killed run logged
    after it are dropped (TensorBoard's ``purge_step``), as ``metrics.jsonl`` drops its lines.
    """

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerError(
                "--train.tracker tensorboard needs the tensorboard package "
                "(pip install tensorboard==2.18.0)"
            ) from exc
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, metrics: EpochMetrics) -> None:
        step = metrics.global_step
        scalars = {"charts/sps": metrics.sps, "charts/epoch": float(metrics.epoch)}
        scalars.update({f"losses/{k}": v for k, v in metrics.losses.items()})
        scalars.update({f"user_stats/{k}": v for k, v in metrics.user_stats.items()})
        scalars.update({f"performance/{k}": v for k, v in metrics.times.items()})
        for tag, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrackerError(ConfigError):
    """The chosen tracker cannot run here (one line)."""


def run_sinks(
    dashboard: Dashboard, run_dir: Path, tracker: str, start_step: int = 0
) -> list[MetricSink]:
    """A training run's sinks: the dashboard, ``metrics.jsonl`` and the ``train.tracker``."""
    chosen = make_tracker(tracker, run_dir, start_step)
    sinks: list[MetricSink] = [DashboardSink(dashboard), MetricsFile(run_dir)]
    return sinks + ([chosen] if chosen is not None else [])


def with_totals(seconds: dict[str, float]) -> dict[str, float]:
    """Seconds per phase plus the dashboard's two totals, ``evaluate`` (env + forward + misc of
    the rollout) and ``train`` (forward + learn + misc of the update)."""
    times = dict(seconds)
    times["evaluate"] = sum(times.get(k, 0.0) for k in ("env", "eval_forward", "eval_misc"))
    times["train"] = sum(times.get(k, 0.0) for k in ("train_forward", "learn", "train_misc"))
    return times


def make_tracker(name: str, run_dir: Path, start_step: int = 0) -> MetricSink | None:
    """The sink of ``train.tracker`` (``None`` for ``none``)."""
    if name == "none":
        return None
    if name == "tensorboard":
        return TensorBoardSink(run_dir, start_step)
    raise TrackerError(f"train.tracker must be one of {', '.join(TRACKERS)}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def append_line(path: Path, line: str) -> None:
    """Append one whole line to ``path``; a failed write (full disk) is cut off again, so the
    file never ends in half a line, and raised as a one-line ``CheckpointError``."""

    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CheckpointError(describe_os_error(path, exc)) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # unbuffered: a short write is retried, an error is cut off below
                view = view[os.write(fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise CheckpointError(describe_os_error(path, exc)) from exc
    finally:
        os.close(fd)


def trim_metrics(run_dir: Path, epoch: int) -> list[int]:
    """Drop the ``metrics.jsonl`` lines of epochs after ``epoch`` (a run killed between
    checkpoints logged epochs that a resume trains again); returns the dropped epochs."""

    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return []
    keep, dropped = [], []
    for line in lines:
        try:
            line_epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            line_epoch = None  # a damaged line: drop it too, it cannot be plotted
        if isinstance(line_epoch, int) and line_epoch <= epoch:
            keep.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped.append(line_epoch if isinstance(line_epoch, int) else -1)
    if dropped:
        atomic_write_text(path, "".join(keep))
    return dropped
