"""The training dashboard, in PufferLib 2.0's layout and labels.

One :class:`DashboardState` per epoch is rendered with rich into the same boxes PufferLib prints
(Summary, Performance, Losses, User Stats, Message). On a terminal the box is redrawn in place;
when stdout is redirected each epoch prints one complete plain-text block, so ``> log.out``
holds every epoch, and the same text is appended to the run folder's own copy. Labels are kept
exactly (``Agent Steps``, ``episode_return``...): the notebook's log parser reads them.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from pufferfiber.io.schemas import LOSS_NAMES

# Wide enough that no label or duration is truncated or wrapped in the plain-text log.
PLAIN_WIDTH = 100
# (label, key into DashboardState.times); indented rows are parts of the row above.
PERF_ROWS = (
    ("Evaluate", "evaluate"),
    ("  Forward", "eval_forward"),
    ("  Env", "env"),
    ("  Misc", "eval_misc"),
    ("Train", "train"),
    ("  Forward", "train_forward"),
    ("  Learn", "learn"),
    ("  Misc", "train_misc"),
)
ROUND_OPEN = box.Box("╭──╮\n│  │\n│  │\n│  │\n│  │\n│  │\n│  │\n╰──╯\n")
C1, C2, B2 = "[bright_cyan]", "[white]", "[bright_white]"


def abbreviate(num: float) -> str:
    """PufferLib's number format: 950, 30.7k, 1.7m, 2.0b."""
    for scale, suffix in ((1e12, "t"), (1e9, "b"), (1e6, "m"), (1e3, "k")):
        if abs(num) >= scale:
            return f"{num / scale:.1f}{suffix}"
    return f"{num:.0f}"


def duration(seconds: float) -> str:
    """PufferLib's duration format: ``45s``, ``2m 33s``, ``1h 5m 15s``."""
    s = max(int(seconds), 0)
    h, m, s = s // 3600, (s % 3600) // 60, s % 60
    if h:
        return f"{h}h {m}m {s}s"
    return f"{m}m {s}s" if m else f"{s}s"


@dataclass
class DashboardState:
    """The numbers one dashboard block shows."""

    env_name: str
    global_step: int = 0
    epoch: int = 0
    sps: float = 0.0
    uptime: float = 0.0
    remaining: float = 0.0
    times: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    user_stats: dict[str, float] = field(default_factory=dict)
    message: str = ""
    cpu_percent: float = 0.0
    dram_percent: float = 0.0
    gpu_percent: float = 0.0
    vram_percent: float = 0.0


def _header(state: DashboardState) -> Table:
    table = Table(box=None, expand=True, show_header=False)
    for justify in ("left", "center", "center", "center", "right"):
        table.add_column(justify=justify)
    table.add_row(
        f":blowfish: {C1}pufferfiber {B2}(PufferLib 2.0)",
        f"{C1}CPU: {B2}{state.cpu_percent:.1f}%",
        f"{C1}GPU: {B2}{state.gpu_percent:.1f}%",
        f"{C1}DRAM: {B2}{state.dram_percent:.1f}%",
        f"{C1}VRAM: {B2}{state.vram_percent:.1f}%",
    )
    return table


def _summary(state: DashboardState) -> Table:
    s = Table(box=None, expand=True)
    s.add_column(f"{C1}Summary", justify="left", vertical="top", no_wrap=True)
    s.add_column(f"{C1}Value", justify="right", vertical="top", no_wrap=True)
    s.add_row(f"{C2}Environment", f"{B2}{state.env_name}")
    s.add_row(f"{C2}Agent Steps", f"{B2}{abbreviate(state.global_step)}")
    s.add_row(f"{C2}SPS", f"{B2}{abbreviate(state.sps)}")
    s.add_row(f"{C2}Epoch", f"{B2}{state.epoch}")
    s.add_row(f"{C2}Uptime", f"{B2}{duration(state.uptime)}")
    s.add_row(f"{C2}Remaining", f"{B2}{duration(state.remaining)}")
    return s


def _performance(state: DashboardState) -> Table:
    p = Table(box=None, expand=True)
    p.add_column(f"{C1}Performance", justify="left", no_wrap=True)
    p.add_column(f"{C1}Time", justify="right", no_wrap=True)
    p.add_column(f"{C1}%", justify="right", no_wrap=True)
    for label, key in PERF_ROWS:
        t = state.times.get(key, 0.0)
        percent = int(100 * t / state.uptime) if state.uptime > 0 else 0
        p.add_row(f"{C1}{label}", f"{B2}{duration(t)}", f"{B2}{percent:2d}%")
    return p


def _losses(state: DashboardState) -> Table:
    losses = Table(box=None, expand=True)
    losses.add_column(f"{C1}Losses", justify="left", no_wrap=True)
    losses.add_column(f"{C1}Value", justify="right", no_wrap=True)
    for name in LOSS_NAMES:
        losses.add_row(f"{C2}{name}", f"{B2}{state.losses.get(name, 0.0):.3f}")
    return losses


def _user_stats(stats: Mapping[str, float]) -> Table:
    """Two columns of ``User Stats``, filled alternately like PufferLib."""
    halves = [Table(box=None, expand=True), Table(box=None, expand=True)]
    for half in halves:
        half.add_column(f"{C1}User Stats", justify="left", no_wrap=True)
        half.add_column(f"{C1}Value", justify="right", no_wrap=True)
    for i, (name, value) in enumerate(stats.items()):
        halves[i % 2].add_row(f"{C2}{name}", f"{B2}{value:.3f}")
    row = Table(box=None, expand=True, pad_edge=False, show_header=False)
    row.add_row(*halves)
    return row


def build_table(state: DashboardState) -> Table:
    """The whole dashboard as one rich table."""
    dashboard = Table(box=ROUND_OPEN, expand=True, show_header=False, border_style="bright_cyan")
    dashboard.add_row(_header(state))
    monitor = Table(box=None, expand=True, pad_edge=False, show_header=False)
    monitor.add_row(_summary(state), _performance(state), _losses(state))
    dashboard.add_row(monitor)
    dashboard.add_row(_user_stats(state.user_stats))
    dashboard.add_row(f" {C1}Message: {C2}{state.message}")
    return dashboard


def render_text(state: DashboardState, width: int = PLAIN_WIDTH) -> str:
    """One plain-text block (no colour codes), as written to ``log.out``."""
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
    )
    with console.capture() as capture:
        console.print(build_table(state))
    return capture.get()


class Dashboard:
    """Prints one block per epoch to ``stream`` and appends it to ``copy_path``.

    ``live=None`` decides by ``stream.isatty()``: a terminal gets an in-place redraw with
    colours, anything else a plain block per epoch.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        copy_path: Path | None = None,
        live: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.copy_path = copy_path
        self.live = self.stream.isatty() if live is None else live
        self._cleared = False

    def show(self, state: DashboardState) -> str:
        """Draw ``state``; returns the plain-text block that went to the copy."""
        text = render_text(state)
        if self.live:
            self._redraw(state)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()
        if self.copy_path is not None:
            with open(self.copy_path, "a", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def _redraw(self, state: DashboardState) -> None:
        console = Console(file=self.stream, force_terminal=True)
        if not self._cleared:
            console.clear()
            self._cleared = True
        with console.capture() as capture:
            console.print(build_table(state))
        # Home the cursor and overwrite the previous frame, as PufferLib does.
        self.stream.write("\033[0;0H" + capture.get())
        self.stream.flush()


def machine_usage() -> dict[str, float]:
    """CPU / DRAM / GPU / VRAM percentages for the header (zeros where unknown)."""
    usage = {"cpu_percent": 0.0, "dram_percent": 0.0, "gpu_percent": 0.0, "vram_percent": 0.0}
    try:
        import psutil

        usage["cpu_percent"] = float(psutil.cpu_percent())
        usage["dram_percent"] = float(psutil.virtual_memory().percent)
    except ImportError:  # psutil comes with PufferLib; the header just shows zeros without it
        pass
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                usage["vram_percent"] = 100.0 * (1 - free / total)
                usage["gpu_percent"] = float(torch.cuda.utilization())  # through NVML
        except (ImportError, RuntimeError, AttributeError):  # no NVML: the header shows 0
            pass
    return usage
