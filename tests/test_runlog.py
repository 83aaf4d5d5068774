"""A run's metrics read back as one run: where its games restarted too late for its final window,
and how the sweep's report leaves such a final return out."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pufferfiber.experiments.runlog import (
    final_window_start,
    restart_before_window,
    resumptions,
)
from pufferfiber.experiments.sweep import SUMMARY_COLUMNS
from pufferfiber.experiments.sweep_report import left_out, read_summary, summarise

STEPS_PER_EPOCH = 512  # enduro: 32,768 agent steps per epoch over 64 games
TWO_DAYS = 27_842  # an enduro game of two days, in agent steps: 54.4 epochs of 512


def write_run(run: Path, first: int, last: int, resumed_at: tuple[int, ...] = ()) -> Path:
    """A run's metrics.jsonl over epochs ``first..last``: a game of two days ends every 3rd
    epoch, and a new process (uptime from 0) takes over at each epoch of ``resumed_at``."""
    run.mkdir(parents=True, exist_ok=True)
    lines, uptime = [], 0.0
    for epoch in range(first, last + 1):
        uptime = 1.0 if epoch in resumed_at else uptime + 1.0
        record = {"epoch": epoch, "global_step": epoch * 32_768, "sps": 1.0, "uptime": uptime}
        if epoch % 3 == 0:
            record |= {"episode_return": 100.0, "episode_length": TWO_DAYS}
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_a_late_resumption_cuts_the_final_window_short(tmp_path: Path) -> None:
    # resumed at 238 of 300: a game of 54 epochs begun there ends late in the window (271-300)
    late = write_run(tmp_path / "late", 1, 300, resumed_at=(157, 238))
    assert resumptions(late) == [157, 238]
    assert final_window_start(300) == 270
    assert restart_before_window(late, 300, STEPS_PER_EPOCH) == 238
    # resumed at 157 only: its games are whole again long before epoch 270
    early = write_run(tmp_path / "early", 1, 300, resumed_at=(157,))
    assert restart_before_window(early, 300, STEPS_PER_EPOCH) is None
    # with short games the same late resumption is harmless
    assert restart_before_window(late, 300, STEPS_PER_EPOCH * 20) is None


def test_a_continued_run_restarts_its_games_where_it_began(tmp_path: Path) -> None:
    original = write_run(tmp_path / "original", 1, 300)
    # the trained protocol: 30 epochs of fine-tuning from epoch 300 finish no game of 54 epochs
    finetuned = write_run(tmp_path / "trained", 301, 330)
    assert restart_before_window(
        finetuned, 330, STEPS_PER_EPOCH, since=300, before=original
    ) == 300  # fmt: skip
    # ... while games of 2.7 epochs cut only the first few of its 30 epochs short
    assert restart_before_window(
        finetuned, 330, STEPS_PER_EPOCH * 20, since=300, before=original
    ) is None  # fmt: skip
    # the guide's arm, collapsed at 51, has 219 epochs before its window opens
    arm = write_run(tmp_path / "arm", 52, 300)
    assert restart_before_window(arm, 300, STEPS_PER_EPOCH, since=51, before=original) is None
    # a run with no game length logged (older metrics) is never flagged
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metrics.jsonl").write_text('{"epoch": 1, "uptime": 1.0}\n')
    assert restart_before_window(tmp_path / "bare", 300, STEPS_PER_EPOCH) is None


def test_the_report_leaves_a_cut_short_final_return_out(tmp_path: Path) -> None:
    def row(seed: int, arm: str, final: float, restart: int | str = "") -> dict[str, object]:
        values: dict[str, object] = {c: "" for c in SUMMARY_COLUMNS}
        values |= {
            "env": "puffer_enduro", "seed": seed, "intervention": "none", "protocol": "guide",
            "arm": arm, "threshold": 0.0 if arm == "original" else 0.5, "params": 10,
            "params_pct": 100.0 if arm == "original" else 20.0, "kl": 0.0,
            "final_return": final, "final_restart": restart, "eval_return": final,
            "run_dir": str(tmp_path),
        }  # fmt: skip
        return values

    rows = [row(1, "original", 5700.0), row(2, "original", 5600.0), row(3, "original", 2133.0, 238)]
    rows += [row(s, "trained", v, 300) for s, v in ((1, 300.0), (2, math.nan), (3, 250.0))]
    rows += [row(s, "target=0.2", v) for s, v in ((1, 5200.0), (2, 5300.0), (3, 5100.0))]
    with open(tmp_path / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    read = read_summary(tmp_path)
    assert math.isnan(read[2]["final_return"]) and read[2]["final_cut_short"] == 2133.0
    original, arm, trained = summarise(read)
    assert original.final[0] == pytest.approx(5650.0) and original.final[2] == 2
    assert arm.final_diff[:1] == pytest.approx((-400.0,)) and arm.final_diff[2] == 2
    assert arm.eval_diff[2] == 3  # the evaluation return is not cut short
    note = left_out([original, arm])
    assert "original, seed 3 (restarted at epoch 238: 2133)" in note
    assert left_out([arm]) == ""
    assert "trained, seeds 1, 2, 3 (restarted at epoch 300: 250 to 300)" in left_out([trained])
