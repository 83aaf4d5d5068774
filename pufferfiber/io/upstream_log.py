"""Importer for upstream PufferLib 2.0 runs' dashboard logs (``log.out``, ``log_collapsed.out``).

An upstream run has no ``metrics.jsonl``: its numbers exist only as the dashboard it printed.
:func:`parse_log` reads such a log into per-epoch records (the report and the notebook plot
them), and :func:`import_log` writes them as a ``metrics.jsonl``, the record our own runs keep.
Our trainer prints the same dashboard, so its ``log.out`` reads the same way.

The dashboard is a rich box redrawn once per print: a Summary column, a Performance column and
a Losses column side by side, then two User Stats columns and a Message line. Captured to a
file it is messy: each block starts with ``ESC[0;0H``, labels are truncated (``beam_…``,
``explained_var…``), values wrap onto the next line inside their column (``Uptime 1h 6m`` then
``30s``), and the last block may be cut off. This module reads such text column by column:

* the epoch is the dashboard's own ``Epoch`` field, never a block count (blocks repeat and a
  resumed run starts at its own epoch);
* ``30.7k`` / ``1.7m`` / ``1b`` are numbers (30 700, 1.7e6, 1e9), ``1h 5m 15s`` is 3 915 s;
* names match whole cells, so ``approx_kl`` never picks up ``old_approx_kl``;
* ANSI escape codes are removed and an incomplete last block keeps what it has.

:func:`read_metrics` turns a trainer's ``metrics.jsonl`` into the same records, and
:func:`columns` gives a numpy view (one array per field, NaN where a block lacks it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pufferfiber.io.atomic import atomic_write_text
from pufferfiber.io.schemas import LOSS_NAMES, json_number

# CSI (colours, cursor moves) and OSC (titles, links) escape sequences.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_BLOCK_TOP = "╭"
_BLOCK_BOTTOM = "╰"
_ELLIPSIS = "…"
# A cell: a label, at least two spaces, then the value (labels may hold single spaces).
_CELL = re.compile(r"^(?P<label>\S(?:.*?\S)?)\s{2,}(?P<value>\S.*)$")
_NUMBER = re.compile(r"^(?P<num>[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?P<suffix>[kmbt]?)$", re.I)
_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?\s*(?:(?P<m>\d+)m)?\s*(?:(?P<s>\d+)s)?$")
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
# A continuation line starts this many columns right of the label column (wrapped values are
# right-aligned in the value column; sub-items of the Performance column are indented by 2).
_CONTINUATION_INDENT = 5

SUMMARY_FIELDS = ("environment", "agent_steps", "sps", "epoch", "uptime", "remaining")
LOSS_FIELDS = LOSS_NAMES  # the dashboard's Losses column, in its order
_DURATION_FIELDS = frozenset({"uptime", "remaining"})
_STRING_FIELDS = frozenset({"environment"})
_PERF_PARTS = ("evaluate", "train", "forward", "env", "misc", "learn")


# One dashboard cell: (indent of its label, label, value text with wrapped tails joined).
_Cell = tuple[int, str, str]


class LogParseError(ValueError):
    """A log that holds no dashboard block at all (wrong file, empty file)."""


@dataclass
class EpochRecord:
    """Everything one dashboard block says about one epoch.

    Attributes:
        epoch: the epoch shown by the dashboard (absolute for resumed runs).
        summary: Summary column; ``agent_steps``/``sps`` as floats, ``uptime``/``remaining``
            in seconds, ``environment`` as printed (possibly truncated, e.g. ``beam_…``).
        performance: time spent per phase in seconds (``evaluate``, ``evaluate_forward``, ...,
            ``train_learn``) and its share of uptime as ``<phase>_pct``.
        losses: the Losses column (``policy_loss``, ..., ``explained_variance``).
        user_stats: the User Stats columns (``episode_return``, ``episode_length``, ...);
            a name the dashboard truncated keeps its ``…``.
        message: the Message line.
        complete: False when the block was cut off (the last block of a running log).
    """

    epoch: int
    summary: dict[str, float | str] = field(default_factory=dict)
    performance: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    user_stats: dict[str, float] = field(default_factory=dict)
    message: str = ""
    complete: bool = True

    def flat(self) -> dict[str, float | str]:
        """All fields in one dict; performance keys get a ``time_`` prefix."""
        out: dict[str, float | str] = dict(self.summary)
        out.update({f"time_{k}": v for k, v in self.performance.items()})
        out.update(self.losses)
        out.update(self.user_stats)
        out["epoch"] = float(self.epoch)
        return out

    def update(self, later: EpochRecord) -> None:
        """Merge a later block of the same epoch into this one (later values win)."""
        self.summary.update(later.summary)
        self.performance.update(later.performance)
        self.losses.update(later.losses)
        self.user_stats.update(later.user_stats)
        self.message = later.message or self.message
        self.complete = self.complete or later.complete


# ---------------------------------------------------------------- value parsing


def parse_number(text: str) -> float:
    """``"30.7k"`` → 30700.0, ``"1.7m"`` → 1.7e6, ``"-0.000"`` → -0.0, ``"nan"`` → nan.

    Raises:
        ValueError: the text is not a (suffixed) number.
    """
    t = text.strip().replace(",", "")
    if t.lower() in ("nan", "inf", "+inf", "-inf"):
        return float(t)
    m = _NUMBER.match(t)
    if m is None:
        raise ValueError(f"not a number: {text!r}")
    return float(m["num"]) * _SUFFIX[m["suffix"].lower()]


def parse_duration(text: str) -> float:
    """``"1h 5m 15s"`` → 3915.0, ``"19m"`` → 1140.0, ``"0s"`` → 0.0 (seconds).

    Raises:
        ValueError: the text is not a dashboard duration.
    """
    t = " ".join(text.split())
    m = _DURATION.match(t)
    if not t or m is None or not any(m.groupdict().values()):
        raise ValueError(f"not a duration: {text!r}")
    h, mi, s = (int(m[g] or 0) for g in ("h", "m", "s"))
    return float(3600 * h + 60 * mi + s)


def _value(name: str, text: str) -> float | str | None:
    """Parse a cell value by field name; None when it cannot be read (e.g. truncated)."""
    if name in _STRING_FIELDS:
        return text
    try:
        return parse_duration(text) if name in _DURATION_FIELDS else parse_number(text)
    except ValueError:
        return None


def _key(label: str, known: Sequence[str] = ()) -> str:
    """Normalise a label to a key; a truncated label resolves to the one known name it starts."""
    key = re.sub(r"\s+", "_", label.strip().lower())
    if not key.endswith(_ELLIPSIS):
        return key
    stem = key[:-1]
    matches = [k for k in known if k.startswith(stem)]
    return matches[0] if len(matches) == 1 else key


# ---------------------------------------------------------------- block layout


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences and carriage returns."""
    return _ANSI.sub("", text).replace("\r", "")


def split_blocks(text: str) -> list[tuple[list[str], bool]]:
    """Split dashboard text into blocks of inner lines (box edges removed) + completeness."""
    clean = strip_ansi(text)
    if not clean.endswith("\n"):
        # The last line is still being written: a cut number would parse as a wrong value.
        clean = clean[: clean.rfind("\n") + 1]
    blocks: list[tuple[list[str], bool]] = []
    current: list[str] | None = None
    for line in clean.splitlines():
        stripped = line.strip()
        if stripped.startswith(_BLOCK_TOP):
            if current is not None:
                blocks.append((current, False))
            current = []
        elif current is not None and stripped.startswith(_BLOCK_BOTTOM):
            blocks.append((current, True))
            current = None
        elif current is not None and stripped.startswith("│"):
            current.append(_inner(line))
    if current is not None:
        blocks.append((current, False))
    return blocks


def _inner(line: str) -> str:
    """The text between the box's side bars, keeping column positions."""
    start = line.index("│") + 1
    end = line.rfind("│")
    return line[start:end] if end >= start else line[start:]


def _segment(line: str, start: int, end: int | None) -> str:
    return line[start:end] if end is not None else line[start:]


def _cells(lines: Iterable[str], start: int, end: int | None, base: int = 0) -> list[_Cell]:
    """Read one column region into ``(indent, label, value)`` cells, joining wrapped values.

    ``base`` is the indent of the region's top-level labels; a line indented well past it
    holds only the wrapped tail of the previous cell's value.
    """
    cells: list[_Cell] = []
    for line in lines:
        seg = _segment(line, start, end).rstrip()
        body = seg.lstrip()
        if not body:
            continue
        indent = len(seg) - len(body)
        if indent - base >= _CONTINUATION_INDENT:
            if cells:  # a value that wrapped onto this line
                i, label, value = cells[-1]
                cells[-1] = (i, label, _join_wrapped(value, body))
            continue
        m = _CELL.match(body)
        if m is not None:
            cells.append((indent, m["label"], m["value"]))
    return cells


def _join_wrapped(value: str, tail: str) -> str:
    """Append a wrapped tail; in a Performance row it belongs to the time, before the ``%``."""
    head, _, last = value.rpartition(" ")
    if head and last.endswith("%"):
        return f"{head} {tail} {last}"
    return f"{value} {tail}"


# ---------------------------------------------------------------- block parsing


def _find(lines: Sequence[str], word: str) -> int:
    return next((i for i, line in enumerate(lines) if word in line), -1)


def parse_block(lines: Sequence[str], complete: bool = True) -> EpochRecord | None:
    """Parse one block's inner lines; None when it shows no epoch (e.g. cut before it).

    In a cut-off block the last cell of a section that may still continue is dropped: its
    value could be missing a wrapped tail (``1h 5m`` of ``1h 5m 14s``).
    """
    head = _find(lines, "Summary")
    if head < 0:
        return None
    header = lines[head]
    stats_at = _find(lines, "User Stats")
    monitor_open = not complete and stats_at < head
    monitor = lines[head : stats_at if stats_at > head else len(lines)]
    s0 = header.index("Summary")
    p0 = header.index("Value", s0) + len("Value")
    losses_at = header.find("Losses")
    l0 = losses_at if losses_at > p0 else None

    summary = _summary(_closed(_cells(monitor[1:], s0, p0), monitor_open))
    if not isinstance(summary.get("epoch"), float):
        return None
    record = EpochRecord(epoch=round(float(summary["epoch"])), summary=summary, complete=complete)
    perf_header = _segment(header, p0, l0)
    perf_base = len(perf_header) - len(perf_header.lstrip())
    perf_cells = _cells(monitor, p0, l0, perf_base)
    record.performance = _performance(_closed(perf_cells, monitor_open))
    if l0 is not None:
        loss_cells = _cells(monitor[1:], l0, None)
        record.losses = _numeric(_closed(loss_cells, monitor_open), LOSS_FIELDS)
    if stats_at > head:
        record.user_stats, record.message = _user_stats(lines[stats_at:], complete)
    return record


def _closed(cells: list[_Cell], still_open: bool) -> list[_Cell]:
    """The cells whose values are final: all but the last one of a section still being cut."""
    return cells[:-1] if still_open else cells


def _summary(cells: list[_Cell]) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for _, label, text in cells:
        key = _key(label, SUMMARY_FIELDS)
        value = _value(key, text)
        if value is not None:
            out[key] = value
    return out


def _numeric(cells: list[_Cell], known: Sequence[str] = ()) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, label, text in cells:
        try:
            out[_key(label, known)] = parse_number(text)
        except ValueError:
            continue  # a value rich had to truncate cannot be trusted
    return out


def _performance(cells: list[_Cell]) -> dict[str, float]:
    """Phase times: top-level rows (Evaluate, Train) name the parent of indented rows."""
    if not cells:
        return {}
    base = min(indent for indent, _, _ in cells)
    parent = ""
    out: dict[str, float] = {}
    for indent, label, text in cells:
        name = _key(label, _PERF_PARTS)
        if indent <= base:
            parent = name
            key = name
        else:
            key = f"{parent}_{name}" if parent else name
        *time_words, pct = text.split()
        try:
            out[key] = parse_duration(" ".join(time_words))
            out[f"{key}_pct"] = parse_number(pct.rstrip("%"))
        except ValueError:
            continue
    return out


def _user_stats(lines: Sequence[str], complete: bool) -> tuple[dict[str, float], str]:
    """The two side-by-side User Stats columns, then the Message line."""
    header = lines[0]
    left = header.index("User Stats")
    right = header.find("User Stats", left + 1)
    right_at = right if right > left else None
    rows: list[str] = []
    message: str | None = None
    for line in lines[1:]:
        if "Message:" in line:
            message = line.split("Message:", 1)[1].strip()
            break
        rows.append(line)
    still_open = not complete and message is None
    stats = _numeric(_closed(_cells(rows, left, right_at), still_open))
    if right_at is not None:
        stats.update(_numeric(_closed(_cells(rows, right_at, None), still_open)))
    return stats, message or ""


# ---------------------------------------------------------------- public entry points


def parse_dashboard(text: str) -> list[EpochRecord]:
    """Parse dashboard text into one record per epoch, in order of first appearance.

    Blocks that repeat an epoch are merged into it (later values win), so the record holds the
    last statistics the dashboard showed for that epoch.
    """
    by_epoch: dict[int, EpochRecord] = {}
    for lines, complete in split_blocks(text):
        record = parse_block(lines, complete)
        if record is None:
            continue
        if record.epoch in by_epoch:
            by_epoch[record.epoch].update(record)
        else:
            by_epoch[record.epoch] = record
    return sorted(by_epoch.values(), key=lambda r: r.epoch)


def parse_log(path: str | Path) -> list[EpochRecord]:
    """Parse a captured dashboard log file (``log.out``, ``log_collapsed.out``).

    Raises:
        LogParseError: the file cannot be read or shows no dashboard block with an epoch.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise LogParseError(f"cannot read log {p}: {e.strerror or e}") from None
    records = parse_dashboard(text)
    if not records:
        raise LogParseError(f"no PufferLib dashboard found in {p} (is it the training stdout?)")
    return records


def import_log(log: str | Path, out: str | Path) -> list[EpochRecord]:
    """Write the records of the upstream dashboard log ``log`` to ``out`` as ``metrics.jsonl``
    lines (atomically), in our trainer's keys: ``epoch``, ``global_step``, ``sps``,
    ``uptime``, the losses, then the user stats. Returns the records.

    Raises:
        LogParseError: as :func:`parse_log`.
    """

    records = parse_log(log)
    lines = []
    for r in records:
        row: dict[str, object] = {"epoch": r.epoch}
        for ours, theirs in (("global_step", "agent_steps"), ("sps", "sps"), ("uptime", "uptime")):
            if theirs in r.summary:
                value = r.summary[theirs]
                row[ours] = int(value) if ours == "global_step" else value
        row.update(r.losses)
        row.update(r.user_stats)
        lines.append(json.dumps({k: json_number(v) for k, v in row.items()}) + "\n")
    atomic_write_text(Path(out), "".join(lines))
    return records


_JSON_SUMMARY = {"global_step": "agent_steps", "agent_steps": "agent_steps", "sps": "sps"}
_JSON_SUMMARY_SAME = ("uptime", "remaining", "environment", "env")


def read_metrics(path: str | Path) -> list[EpochRecord]:
    """Read a trainer's ``metrics.jsonl`` (one JSON object per epoch) into records.

    Known summary and loss names go to their sections; every other number is a user stat.
    A cut-off last line (run still writing) is skipped.

    Raises:
        LogParseError: the file cannot be read or holds no object with an ``epoch``.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise LogParseError(f"cannot read metrics {p}: {e.strerror or e}") from None
    by_epoch: dict[int, EpochRecord] = {}
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        record = _metrics_record(obj) if isinstance(obj, dict) else None
        if record is not None:
            by_epoch.setdefault(record.epoch, record).update(record)
    if not by_epoch:
        raise LogParseError(f"no per-epoch metrics found in {p}")
    return sorted(by_epoch.values(), key=lambda r: r.epoch)


def _metrics_record(obj: dict[str, object]) -> EpochRecord | None:
    epoch = obj.get("epoch")
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return None
    record = EpochRecord(epoch=int(epoch))
    record.summary["epoch"] = float(epoch)
    for name, value in obj.items():
        if name == "epoch":
            continue
        if isinstance(value, str) and name in _JSON_SUMMARY_SAME:
            record.summary["environment"] = value
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if name in _JSON_SUMMARY:
            record.summary[_JSON_SUMMARY[name]] = float(value)
        elif name in _JSON_SUMMARY_SAME:
            record.summary[name] = float(value)
        elif name in LOSS_FIELDS:
            record.losses[name] = float(value)
        else:
            record.user_stats[name] = float(value)
    return record


def columns(records: Sequence[EpochRecord]) -> dict[str, np.ndarray]:
    """Column view: one float array per numeric field (NaN where a record lacks it).

    ``columns(r)["epoch"]`` are the epochs; strings (the environment name) are left out.
    """
    flats = [r.flat() for r in records]
    names: dict[str, None] = {}
    for f in flats:
        names.update({k: None for k, v in f.items() if not isinstance(v, str)})
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = [f.get(name, math.nan) for f in flats]
        out[name] = np.array([v if not isinstance(v, str) else math.nan for v in values], float)
    return out


def series(records: Sequence[EpochRecord], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of one field, only the epochs where it is known."""
    cols = columns(records)
    if name not in cols:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    keep = ~np.isnan(cols[name])
    return cols["epoch"][keep].astype(np.int64), cols[name][keep]
