"""The importer of upstream dashboard logs on real captured logs (PufferLib 2.0 and our trainer)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pufferfiber.io.upstream_log import (
    LOSS_FIELDS,
    LogParseError,
    columns,
    import_log,
    parse_dashboard,
    parse_duration,
    parse_log,
    parse_number,
    read_metrics,
    series,
)

UPSTREAM_BATCH = 30_720  # the run's batch_size: agent steps per epoch


@pytest.fixture(scope="module")
def upstream_text(shared_run: Path) -> str:
    if not (shared_run / "log.out").is_file():
        pytest.skip(f"the upstream BeamRider log.out is not at {shared_run}")
    return (shared_run / "log.out").read_text(encoding="utf-8")


def test_import_upstream_log_writes_our_metrics_record(
    shared_run: Path, upstream_text: str, tmp_path: Path
) -> None:
    """The real upstream log becomes a metrics.jsonl that reads back as the same numbers."""
    out = tmp_path / "metrics.jsonl"
    imported = import_log(shared_run / "log.out", out)
    assert [r.epoch for r in imported] == [r.epoch for r in parse_log(shared_run / "log.out")]
    back = read_metrics(out)
    assert [r.epoch for r in back] == [r.epoch for r in imported]
    for a, b in zip(imported, back, strict=True):
        assert b.losses == a.losses and b.user_stats == a.user_stats
        assert b.summary["agent_steps"] == int(a.summary["agent_steps"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(list(row)[:4] == ["epoch", "global_step", "sps", "uptime"] for row in rows)
    assert all("policy_loss" in row for row in rows)
    assert any("episode_return" in row for row in rows)


def test_import_log_of_our_dashboard(tmp_path: Path) -> None:
    """Blocks our dashboard printed import as the numbers that were shown."""
    from pufferfiber.rl.dashboard import DashboardState, render_text

    blocks = [
        render_text(DashboardState("cartpole", 300 * e, e, 300.0, 10.0 * e, 5.0,
                                   losses={"policy_loss": -0.01 * e},
                                   user_stats={"episode_return": 20.0 + e}))
        for e in (1, 2)
    ]  # fmt: skip
    (tmp_path / "log.out").write_text("\n".join(blocks))
    import_log(tmp_path / "log.out", tmp_path / "metrics.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["global_step"], r["episode_return"]) for r in rows] == [
        (1, 300, 21.0),
        (2, 600, 22.0),
    ]
    assert rows[1]["policy_loss"] == -0.02


def _block_values(block: str, label: str) -> list[str]:
    """The raw text after ``label`` on the block's lines (independent of the parser)."""
    return re.findall(rf"(?<!\w){re.escape(label)}\s+(\S+)", block)


@pytest.mark.parametrize(
    ("text", "value"),
    [("30.7k", 30_700.0), ("1.7m", 1.7e6), ("1b", 1e9), ("9.0m", 9e6), ("-0.000", 0.0),
     ("383", 383.0), ("2.5e-3", 2.5e-3)],
)  # fmt: skip
def test_numbers_with_suffixes(text: str, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h 5m 15s", 3915), ("19m", 1140), ("0s", 0), ("2m  29s", 149), ("1h 10m 46s", 4246)],
)
def test_durations_in_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_bad_values_are_refused() -> None:
    assert math.isnan(parse_number("nan"))
    for bad in ("beam_…", "12.3x", ""):
        with pytest.raises(ValueError):
            parse_number(bad)
    for bad in ("1.6m", "abc", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_upstream_log_every_block_and_field(shared_run: Path, upstream_text: str) -> None:
    records = parse_log(shared_run / "log.out")
    shown = [int(e) for e in re.findall(r"│\s+Epoch\s+(\d+)", upstream_text)]
    assert [r.epoch for r in records] == sorted(set(shown))
    for r in records[1:]:
        assert set(r.losses) == set(LOSS_FIELDS)
        assert {"episode_return", "episode_length"} <= set(r.user_stats)
        assert {"agent_steps", "sps", "uptime", "remaining", "environment"} <= set(r.summary)
        # Agent steps are abbreviated to 3 significant digits ("1.6m"): within rounding.
        steps = float(r.summary["agent_steps"])
        assert abs(steps - r.epoch * UPSTREAM_BATCH) <= 0.051 * max(steps, 1e3)
        assert r.performance["evaluate"] + r.performance["train"] <= r.summary["uptime"] + 2
    uptime = np.array([r.summary["uptime"] for r in records], float)
    assert np.all(np.diff(uptime) >= 0)
    assert records[-1].message.startswith("Checkpoint saved")


def test_values_match_the_raw_text(shared_run: Path, upstream_text: str) -> None:
    """approx_kl is its own cell (not old_approx_kl's) and every return is read exactly."""
    records = {r.epoch: r for r in parse_log(shared_run / "log.out")}
    for block in upstream_text.split("\x1b[0;0H"):
        epoch = _block_values(block, "Epoch")
        if not epoch or not _block_values(block, "episode_return"):
            continue
        r = records[int(epoch[0])]
        assert r.losses["approx_kl"] == float(_block_values(block, "approx_kl")[0])
        assert r.losses["old_approx_kl"] == float(_block_values(block, "old_approx_kl")[0])
        assert r.user_stats["episode_return"] == float(_block_values(block, "episode_return")[0])


def test_wrapped_durations_are_joined(shared_run: Path, upstream_text: str) -> None:
    """``Uptime 1h 6m`` + ``30s`` on the next line is 3990 s, not 3960 s."""
    records = parse_log(shared_run / "log.out")
    wrapped = re.findall(r"Uptime\s+(\d+)h (\d+)m\s.*\n│\s+(\d+)s", upstream_text)
    assert wrapped, "the real log has wrapped uptimes"
    expected = {3600 * int(h) + 60 * int(m) + int(s) for h, m, s in wrapped}
    assert expected <= {r.summary["uptime"] for r in records}


@pytest.mark.slow
def test_partial_last_block_keeps_only_final_values(upstream_text: str) -> None:
    full = {r.epoch: r.flat() for r in parse_dashboard(upstream_text)}
    start = upstream_text.rfind("\x1b[0;0H")
    seen_partial = False
    for cut in range(start, len(upstream_text), 53):
        records = parse_dashboard(upstream_text[:cut])
        assert records, "earlier epochs survive a cut"
        for r in records:
            flat = r.flat()
            assert {k: full[r.epoch][k] for k in flat} == flat, f"cut at {cut}"
        seen_partial |= not records[-1].complete
    assert seen_partial


def test_ansi_colours_and_blocks_out_of_order(upstream_text: str) -> None:
    """Colour codes around values do not change anything; epochs come from the dashboard."""
    plain = parse_dashboard(upstream_text)
    coloured = re.sub(
        r"(?<![\[;\d.])(\d+(?:\.\d+)?[kmb]?)", "\x1b[1;38;5;45m\\1\x1b[0m", upstream_text
    )
    assert [r.flat() for r in parse_dashboard(coloured)] == [r.flat() for r in plain]
    kept = "\x1b[0;0H".join(upstream_text.split("\x1b[0;0H")[::2])
    shown = sorted({int(e) for e in re.findall(r"│\s+Epoch\s+(\d+)", kept)})
    assert [r.epoch for r in parse_dashboard(kept)] == shown
    assert 0 < len(shown) < len(plain) - 10


def test_columns_view(shared_run: Path) -> None:
    records = parse_log(shared_run / "log.out")
    cols = columns(records)
    assert cols["epoch"].shape == (len(records),)
    assert np.isnan(cols["episode_return"][0])  # epoch 0 has no episodes yet
    epochs, returns = series(records, "episode_return")
    assert epochs[0] == 1 and len(epochs) == len(records) - 1
    assert np.all(returns > 0)
    assert "environment" not in cols


def test_not_a_dashboard(tmp_path: Path) -> None:
    p = tmp_path / "log.err"
    p.write_text("Traceback (most recent call last):\n  boom\n")
    with pytest.raises(LogParseError, match="no PufferLib dashboard"):
        parse_log(p)
    with pytest.raises(LogParseError, match="cannot read"):
        parse_log(tmp_path / "missing.out")


def test_metrics_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl"
    rows = [
        {"epoch": 52, "global_step": 1_597_440, "sps": 400.5, "approx_kl": 0.02,
         "old_approx_kl": 0.03, "episode_return": 650.0},
        {"epoch": 53, "global_step": 1_628_160, "sps": 410.0, "episode_return": 660.0},
    ]  # fmt: skip
    p.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"epoch": 54, "sps"')
    records = read_metrics(p)
    assert [r.epoch for r in records] == [52, 53]
    assert records[0].summary["agent_steps"] == 1_597_440
    assert records[0].losses == {"approx_kl": 0.02, "old_approx_kl": 0.03}
    assert series(records, "episode_return")[1].tolist() == [650.0, 660.0]


def test_our_dashboard_renderer_round_trip() -> None:
    """Every field our dashboard prints is read back (wide layout, long stat names, big values)."""
    dashboard = pytest.importorskip("pufferfiber.rl.dashboard")
    times = {key: 61.0 * (i + 1) for i, (_, key) in enumerate(dashboard.PERF_ROWS)}
    losses = {name: 0.001 * (i + 1) for i, name in enumerate(dashboard.LOSS_NAMES)}
    stats = {"episode_return": 663.172, "episode_length": 1201.5, "broken_linear1": 7.0,
             "a_rather_long_statistic_name": 123456.789}  # fmt: skip
    state = dashboard.DashboardState("beam_rider", 1_597_440, 52, 412.3, 3914.0, 149.0, times,
                                     losses, stats, "Checkpoint saved")  # fmt: skip
    blocks = [dashboard.render_text(state)]
    state.epoch, state.global_step = 53, 1_628_160
    blocks.append(dashboard.render_text(state))
    records = parse_dashboard("\n".join(blocks))
    assert [r.epoch for r in records] == [52, 53]
    r = records[0]
    assert r.summary["agent_steps"] == pytest.approx(1.6e6)
    assert (r.summary["uptime"], r.summary["remaining"], r.summary["sps"]) == (3914, 149, 412)
    assert r.losses == pytest.approx(losses)
    assert r.user_stats == pytest.approx(stats)
    assert r.performance["evaluate"] == times["evaluate"] and r.message == "Checkpoint saved"


@pytest.mark.slow
def test_real_log_of_our_trainer_matches_its_metrics(tmp_path: Path) -> None:
    """A real captured ``demo.py`` stdout agrees with the run's metrics.jsonl (within print
    rounding: 3 decimals, agent steps to 3 significant digits)."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "demo.py").is_file():
        pytest.skip("demo.py not present")
    cmd = [sys.executable, "demo.py", "--mode", "train", "--env", "cartpole",
           "--train.data-dir", str(tmp_path / "exp"), "--train.total-timesteps", "3072",
           "--train.device", "cpu"]  # fmt: skip
    log = tmp_path / "log.out"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=repo, stdout=out, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = list((tmp_path / "exp").iterdir())
    printed, copied = parse_log(log), parse_log(run / "log.out")
    exact = read_metrics(run / "metrics.jsonl")
    assert [r.epoch for r in printed] == [r.epoch for r in exact] == [1, 2, 3]
    assert [r.flat() for r in printed] == [r.flat() for r in copied]
    for p, e in zip(printed, exact, strict=True):
        assert p.losses == pytest.approx(e.losses, abs=6e-4)
        assert p.user_stats == pytest.approx(e.user_stats, abs=6e-4)
        steps = e.summary["agent_steps"]
        assert p.summary["agent_steps"] == pytest.approx(steps, rel=0.051)
