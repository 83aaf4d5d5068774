"""Every file and folder name of a run, in one place (the layout is a contract: keep it).

An experiment folder, in the layout of the step-by-step guide::

    <data_dir>/<env>-<id8>/                         a run (RUN_DIR_RE)
        model_EEEEEE.pt                             checkpoints (checkpoint_name, CHECKPOINT_RE)
        trainer_state.pt                            optimizer + counters for --resume
        metrics.jsonl                               one JSON line per finished epoch (the record)
        log.out / log_collapsed.out                 plain-text copies of the dashboard
        breaking.jsonl, redo.jsonl                  per-epoch logs of the training hooks
        fibers_timeline.json                        cache of fibers per checkpoint
        tensorboard/                                TensorBoard event files (--train.tracker)
        .pufferfiber.lock                           held while a process trains in the run
        collapsed_model_thr_TT_EEEEEE/              a collapse (collapse_dir_name)
        collapsed_model_target_PP_EEEEEE/           a collapse to a size target (same files)
            model_EEEEEE_collapsed.pt               the collapsed policy
            fibers.pkl, fidelity.json               its fibers and measured fidelity
            <env>-<id8>/                            the run resumed from it

Readers and writers import these names; no module spells a run's file name itself. The names
match PufferLib 2.0's where a file has an upstream counterpart (``model_EEEEEE.pt``,
``trainer_state.pt``, ``log.out``).
"""

from __future__ import annotations

import re

# -- a run folder -------------------------------------------------------------------------------

# ``<env>-<id8>``: env names are lower-case words joined by underscores (``beam_rider``,
# ``puffer_breakout``), the id is 8 hex digits. The one regex every reader uses.
RUN_DIR_RE = re.compile(r"^(?P<env>[a-z0-9_]+)-(?P<id>[0-9a-f]{8})$")

CHECKPOINT_RE = re.compile(r"^model_(?P<epoch>\d{6,})\.pt$")
CHECKPOINT_GLOB = "model_XXXXXX.pt"  # how messages name the checkpoints of a run
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
RETURN_KEY = "episode_return"  # the metrics.jsonl field of the mean return of finished episodes
LENGTH_KEY = "episode_length"  # ... and of their mean length in agent steps (per game)
LOG = "log.out"
LOG_COLLAPSED = "log_collapsed.out"
# Dashboard copies, most specific first (a run resumed from a collapse writes LOG_COLLAPSED).
LOG_NAMES = (LOG_COLLAPSED, LOG)
BREAKING_LOG = "breaking.jsonl"
REDO_LOG = "redo.jsonl"
TIMELINE_CACHE = "fibers_timeline.json"
TENSORBOARD_DIR = "tensorboard"
LOCK = ".pufferfiber.lock"
REPORT_PNG = "report.png"

# Leftovers of a training write killed before its rename (``.<name>.<8 random>.tmp``, from
# mkstemp): only the files the lock holder writes, never another tool's (e.g. the report's cache).
STALE_TEMP_RE = re.compile(
    r"^\.(model_\d{6,}\.pt|" + re.escape(TRAINER_STATE) + "|" + re.escape(METRICS) + r")"
    r"\.[A-Za-z0-9_]{8}\.tmp$"
)

# -- a collapse folder ---------------------------------------------------------------------------

# ``collapsed_model_thr_TT_EEEEEE`` (a threshold) or ``collapsed_model_target_PP_EEEEEE`` (a size
# target, PP its percentage with ``p`` for the point: ``20``, ``5``, ``0p5``).
COLLAPSE_DIR_RE = re.compile(
    r"^collapsed_model_(?:thr_(?P<tt>\d+)|target_(?P<pct>\d+(?:p\d+)?))_(?P<epoch>\d+)$"
)
COLLAPSED_MODEL_RE = re.compile(r"^model_\d{6,}_collapsed\.pt$")
FIBERS = "fibers.pkl"
FIDELITY = "fidelity.json"

# -- a sweep folder ------------------------------------------------------------------------------

SWEEP_SPEC = "sweep.json"
SWEEP_SUMMARY = "summary.csv"
SWEEP_RESULTS = "results.json"
SWEEP_EVAL = "eval.json"
SWEEP_LOG = "sweep.log"
SWEEP_JOB = "job.json"  # the typed TrainJob of a cell's latest run, beside sweep.log
SWEEP_REPORT_HTML = "report.html"
SWEEP_TRAJECTORY = "trajectory.json"  # fibers and dormant units over a run, per sweep run


def run_dir_name(env: str, run_id: str) -> str:
    """``beam_rider-5eed0001`` for env ``beam_rider`` and id ``5eed0001``."""
    return f"{env}-{run_id}"


def checkpoint_name(epoch: int) -> str:
    """``model_000051.pt`` for epoch 51."""
    return f"model_{int(epoch):06d}.pt"


def collapsed_model_name(epoch: int) -> str:
    """``model_000051_collapsed.pt`` for a policy collapsed at epoch 51."""
    return f"model_{int(epoch):06d}_collapsed.pt"


def collapse_dir_name(tag: str, epoch: int) -> str:
    """``collapsed_model_thr_03_000051`` for the threshold tag ``03`` (τ = 0.3) at epoch 51."""
    return f"collapsed_model_thr_{tag}_{int(epoch):06d}"


def collapse_target_dir_name(target: float, epoch: int) -> str:
    """``collapsed_model_target_20_000051`` for a size target of 0.2 (20 %) at epoch 51
    (``0p5`` for 0.5 %: the percentage, ``p`` for its point)."""
    pct = f"{round(100 * float(target), 6):g}".replace(".", "p")
    return f"collapsed_model_target_{pct}_{int(epoch):06d}"


def sweep_seed_dir_name(seed: int) -> str:
    """``seed_3``: one cell of a sweep's grid, below its env folder."""
    return f"seed_{int(seed)}"
