"""What a run's ``metrics.jsonl`` says over its epochs: one run, however many processes trained it.

A run interrupted and resumed is trained by several processes. Each starts its uptime at 0 and
restarts every game. This module reads the file back as one run: its training wall time over
every stretch (:func:`timeline`), its returns (:func:`history`), the final return of its last
epochs (:func:`final_return`), and whether a restart came too late for that final window to
count whole games (:func:`restart_before_window`).
"""

from __future__ import annotations

import math
from pathlib import Path

from pufferfiber.io.runfiles import LENGTH_KEY, METRICS, RETURN_KEY
from pufferfiber.io.upstream_log import EpochRecord, LogParseError, read_metrics

FINAL_FRACTION = 0.1  # final return = mean over the last 10 % of the schedule's epochs


def _records(run: Path) -> list[EpochRecord]:
    try:
        return read_metrics(Path(run) / METRICS)
    except LogParseError:
        return []


def _stretches(records: list[EpochRecord]) -> list[tuple[EpochRecord, float, bool]]:
    """``(record, seconds of the earlier stretches, whether a new process began here)``. A
    process's uptime starts again at 0, so a fall in uptime is where the run was resumed."""
    out, before, last = [], 0.0, math.nan
    for r in records:
        uptime = float(r.summary.get("uptime", math.nan))
        resumed = math.isfinite(uptime) and uptime < last
        if resumed:
            before += last
        if math.isfinite(uptime):
            last = uptime
        out.append((r, before, resumed))
    return out


def timeline(run: Path) -> list[tuple[int, float, float]]:
    """``(epoch, training wall time in seconds, episode return or NaN)`` of every logged epoch
    of a run. The time of each resumed stretch is added to what came before: a resumed run's
    time is its whole training's, as if it had never stopped (the epochs lost after its last
    checkpoint are not logged)."""
    return [
        (
            int(r.epoch),
            before + float(r.summary.get("uptime", math.nan)),
            float(r.user_stats.get(RETURN_KEY, math.nan)),
        )
        for r, before, _ in _stretches(_records(run))
    ]


def resumptions(run: Path) -> list[int]:
    """The epochs at which a new process took the run over (the first epoch it logged)."""
    return _resumed(_records(run))


def _resumed(records: list[EpochRecord]) -> list[int]:
    return [int(r.epoch) for r, _, resumed in _stretches(records) if resumed]


def history(run: Path) -> list[tuple[int, float]]:
    """``(epoch, episode_return)`` of a run's epochs that finished episodes."""
    return [(e, v) for e, _, v in timeline(run) if math.isfinite(v)]


def uptime_at(run: Path, epoch: int) -> float:
    """The run's training wall time up to the end of ``epoch`` (0 before its first epoch)."""
    times = [t for e, t, _ in timeline(run) if e <= epoch and math.isfinite(t)]
    return times[-1] if times else 0.0


def train_seconds(run: Path) -> float:
    """Wall time of the run's training, every resumed stretch of it (:func:`timeline`)."""
    times = [t for _, t, _ in timeline(run) if math.isfinite(t)]
    return times[-1] if times else math.nan


def final_window_start(last_epoch: int, since: int = 0) -> int:
    """The final window is the epochs after this one up to ``last_epoch``: the last 10 % of the
    schedule, but none before ``since`` (a run continued from another's checkpoint counts only
    its own epochs)."""
    return max(last_epoch - max(1, math.ceil(FINAL_FRACTION * last_epoch)), since)


def final_return(points: list[tuple[int, float]], last_epoch: int, since: int = 0) -> float:
    """Mean return over the final window (:func:`final_window_start`): epochs after ``since``
    only (a fine-tuned run's own: the original's epochs before it are every arm's, and would make
    their paired differences 0); NaN if no episode finished there."""
    first = final_window_start(last_epoch, since)
    values = [v for e, v in points if first < e <= last_epoch]
    return sum(values) / len(values) if values else math.nan


def _game_lengths(records: list[EpochRecord], up_to: int | None = None) -> list[tuple[int, float]]:
    """``(epoch, mean length in agent steps of the games that ended in it)``."""
    return [
        (int(r.epoch), float(r.user_stats[LENGTH_KEY]))
        for r in records
        if LENGTH_KEY in r.user_stats and (up_to is None or r.epoch <= up_to)
    ]


def restart_before_window(
    run: Path,
    last_epoch: int,
    steps_per_game_epoch: float,
    *,
    since: int = 0,
    before: Path | None = None,
) -> int | None:
    """The epoch at which the run's games restarted too late for its final window, or ``None``.

    Every game starts again when a run continues from a checkpoint (``since``: a collapse, a
    fine-tuning, whose earlier epochs are ``before``'s) or resumes after an interruption. The
    games that end in the next epochs are then only the short ones: a game as long as those
    the policy was already playing cannot have finished yet. The final return weighs every epoch
    of its window alike, so when a game as long as the longest that ended before the restart,
    begun there, would end only in the second half of the window or later, at least half of it
    counts games cut short and its mean is biased low: an enduro original resumed at epoch 238
    of 300 (games of 54 epochs by then) ended at 2,133, its other seeds at 5,600-6,000. A few
    such epochs at the start of a long window (a breakout game lasts ~5 of 30) are tolerated.

    ``steps_per_game_epoch``: the agent steps one game advances per epoch (``batch_size /
    num_envs``), to turn a game's length into epochs.
    """
    middle = (final_window_start(last_epoch, since) + last_epoch) / 2
    records = _records(run)  # read once for its game lengths and its resumptions
    lengths = _game_lengths(_records(before), since) if since and before is not None else []
    lengths += _game_lengths(records)
    restarts = ([since] if since else []) + _resumed(records)
    for restart in sorted(set(restarts), reverse=True):
        longest = max((n for e, n in lengths if e <= restart), default=0.0)
        if longest and restart + longest / steps_per_game_epoch > middle:
            return restart
    return None
