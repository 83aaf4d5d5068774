"""``python -m pufferfiber sweep``: the guide's protocol over a grid of envs, arms and seeds, on
Ray Tune, with the controls that tell whether collapsing was worth it.

One *cell* is one env, one intervention and one seed. It trains the original run once
(what ``demo.py --mode train`` does, to the end of the schedule), then for every *protocol*
(``--protocol``) and every *arm* (threshold τ or size target ``--targets`` × collapse criterion ×
``--flatten-colours``):

* ``guide`` (the default): collapse the checkpoint closest to ``--collapse-epoch`` and train the
  collapsed network to the same final epoch (what ``demo.py --collapse`` does), so every arm of
  a seed has the same total agent steps;
* ``trained``: collapse the original's final checkpoint (epoch E) and fine-tune it for
  ``--finetune-epochs`` K (default 10 % of the schedule); the original itself is fine-tuned for
  the same K epochs from its final checkpoint (a row ``trained original``), so both have equal
  steps. Both start with fresh Adam moments, on a schedule of E + K epochs.

``--controls`` adds, at the widths of each collapsed arm of the same seed and protocol:
``scratch`` (that architecture freshly initialised and trained from epoch 0 for the arm's total
epochs) and ``random`` (randomly chosen units kept with their trained weights, the others
dropped without folding, then trained exactly like the collapsed arm;
:class:`~pufferfiber.core.ablation.RandomUnits`). Every row records its training speed
(``sps``: agent steps per second of its own run), the wall time behind it (``wall_seconds``,
the original's share included for a run that continued from it) and ``equal_time_return``: the
return each row had reached after the wall time of the protocol's fastest row. ``final_restart``
names the epoch where a row's games restarted too late for its final return to count whole games
(:func:`~pufferfiber.experiments.runlog.restart_before_window`); the report leaves those out.

Each run is a typed :class:`~pufferfiber.workflows.job.TrainJob` run in a process of its own
(``job.json`` beside ``sweep.log`` holds the latest). Each finished run is evaluated on
``--eval-episodes`` episodes. Ray Tune runs the cells (a grid search over env × intervention ×
seed, one CPU each by default), on a local Ray started here or on the cluster at
``--ray-address``.

The *intervention* (``--interventions``) is what runs during training, in the original run and in
the resumed runs of its collapsed networks alike: ``none``, ``break`` (symmetry breaking on the
fibers), ``break-opfibers`` (fibers met with opfibers) or ``redo`` (ReDo's dormant-unit resets),
with the settings given as ``--break.KEY`` / ``--redo.KEY`` (``demo.py``'s options). Without
``--thresholds`` a cell trains only its original. Every finished run also gets
``trajectory.json``: fibers per layer and the dormant-unit fraction over its checkpoints, which the
report draws.

Layout of ``--out DIR``::

    sweep.json                            the grid (a restart must ask for the same one)
    summary.csv                           one row per env × seed × protocol × arm × control
    <env>/seed_<S>/<env>-<id8>/           the original run (the guide's layout, report works on it)
        collapsed_model_thr_TT_EEEEEE/    the default arm (weights, positions) and its resumed run
        collapsed_model_target_PP_EEEEEE/ the same for a size target (``--targets``)
    <env>/seed_<S>/<criterion>-<colours>/<env>-<id8>/collapsed_model_thr_TT_EEEEEE/
                                          other arms, beside a copy of the collapsed checkpoint
    <env>/seed_<S>/trained/<env>-<id8>/   the original fine-tuned K epochs (``--protocol trained``)
    <env>/seed_<S>/controls/<protocol>-<arm folder>-<criterion>-<colours>/scratch/<env>-<id8>/
    <env>/seed_<S>/controls/<protocol>-<arm folder>-<criterion>-<colours>/random/
                                          the ablated model (+ fidelity.json) and its run
    <env>/seed_<S>/results.json           the cell's rows
    <env>/<intervention>/seed_<S>/...     the same for every intervention but ``none``

Starting the same command again continues a killed sweep: finished runs are kept, an
interrupted original resumes from its last checkpoint, an interrupted arm or control is trained
again from its start, evaluations already made are reused. The same command with more seeds,
arms (``--targets``, ``--criterion``...), protocols or controls *extends* the sweep: its finished
runs are reused and only the new ones are trained; any other difference is refused.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pufferfiber.config.sections import (
    FLATTEN_COLOURS,
    BreakConfig,
    RedoConfig,
    load_config,
    load_section,
)
from pufferfiber.core.criteria import DEFAULT_CRITERION
from pufferfiber.experiments import progress
from pufferfiber.experiments.runlog import (
    FINAL_FRACTION,
    final_return,
    history,
    restart_before_window,
    timeline,
    train_seconds,
    uptime_at,
)
from pufferfiber.io.atomic import atomic_write_bytes, atomic_write_text, check_writable
from pufferfiber.io.checkpoints import closest_checkpoint, list_checkpoints, load_checkpoint
from pufferfiber.io.runfiles import (
    FIDELITY,
    RUN_DIR_RE,
    SWEEP_EVAL,
    SWEEP_JOB,
    SWEEP_LOG,
    SWEEP_RESULTS,
    SWEEP_SPEC,
    SWEEP_SUMMARY,
    SWEEP_TRAJECTORY,
    collapsed_model_name,
    sweep_seed_dir_name,
)
from pufferfiber.rl.breaking import BREAK_LOG
from pufferfiber.rl.evaluate import collect_observations, play_episodes
from pufferfiber.rl.redo import REDO_LOG, dormant_fraction
from pufferfiber.workflows.collapse import (
    ablate_to_folder,
    collapse_folder_name,
    fidelity_from_config,
)
from pufferfiber.workflows.hooks import RunError, hooks_from
from pufferfiber.workflows.job import JobKind, TrainJob
from pufferfiber.workflows.timeline import fibers_at

REPO = Path(__file__).resolve().parents[2]  # the package's parent, for Ray workers' path
SPEC_NAME = SWEEP_SPEC
SUMMARY_NAME = SWEEP_SUMMARY
RESULTS_NAME = SWEEP_RESULTS
EVAL_NAME = SWEEP_EVAL
DEFAULT_FLATTEN = FLATTEN_COLOURS[0]  # positions: the true fibration
SUMMARY_COLUMNS = (
    "env",
    "seed",
    "intervention",
    "protocol",
    "arm",
    "control",
    "threshold",
    "target",
    "criterion",
    "flatten_colours",
    "params",
    "params_pct",
    "kl",
    "value_mae",
    "return_at_collapse",
    "final_return",
    "final_restart",
    "eval_return",
    "eval_std",
    "eval_episodes",
    "collapse_epoch",
    "final_epoch",
    "agent_steps",
    "units_edited",
    "train_seconds",
    "sps",
    "wall_seconds",
    "equal_time_return",
    "run_dir",
)
INTERVENTIONS = ("none", "break", "break-opfibers", "redo")
# guide: collapse near --collapse-epoch, train on to the schedule's end (the guide's protocol);
# trained: collapse the final checkpoint and fine-tune K epochs, beside the original fine-tuned
# for the same K epochs
PROTOCOLS = ("guide", "trained")
# scratch: the collapsed widths freshly initialised, trained for the arm's total epochs;
# random: randomly chosen units kept (trained weights, no folding), trained like the arm
CONTROLS = ("scratch", "random")
FINETUNE_FRACTION = 0.1  # default K of --protocol trained: 10 % of the schedule's epochs
TRAINED_DIR = "trained"  # <seed dir>/trained/: the original fine-tuned K epochs
CONTROLS_DIR = "controls"  # <seed dir>/controls/<protocol>-<arm folder>-<criterion>-<colours>/
TRAJECTORY_NAME = SWEEP_TRAJECTORY
TRAJECTORY_POINTS = 25  # checkpoints per run measured for trajectory.json (evenly spaced)
DORMANT_STEPS = 64  # rollout steps per game for the dormant fraction (as ReDo's hook sees)
DORMANT_GAMES = 16
RAY_CONNECT_SECONDS = 5.0  # a cluster address that does not answer in this time is refused


class SweepError(ValueError):
    """A user-facing sweep problem (one line, exit code 2)."""


@dataclass(frozen=True)
class Arm:
    """One collapse setting of the grid: a threshold τ, or a size ``target`` (a fraction of
    the parameters, ``--targets``; ``threshold`` is then 0 and unused)."""

    threshold: float
    criterion: str = DEFAULT_CRITERION
    flatten_colours: str = DEFAULT_FLATTEN
    target: float | None = None

    @property
    def name(self) -> str:
        size = f"tau={self.threshold:g}" if self.target is None else f"target={self.target:g}"
        return f"{size}/{self.criterion}/{self.flatten_colours}"

    def collapse_settings(self) -> dict[str, str]:
        """The ``[collapse]`` setting of this arm's size knob (τ, or a size target)."""
        if self.target is None:
            return {"collapse.threshold": f"{self.threshold:g}"}
        return {"collapse.target": f"{self.target:g}"}

    def at(self, entry: str) -> bool:
        """Whether ``entry`` of ``--controls-at`` (``"F"`` or ``"CRITERION:F"``) names this arm;
        ``ValueError`` when F is not a number."""
        criterion, _, value = entry.rpartition(":")
        size = self.threshold if self.target is None else self.target
        return criterion in ("", self.criterion) and float(value) == size

    @property
    def default_view(self) -> bool:
        """Whether the collapse folder lives in the original run (the guide's layout)."""
        return (self.criterion, self.flatten_colours) == (DEFAULT_CRITERION, DEFAULT_FLATTEN)


@dataclass(frozen=True)
class SweepSpec:
    """The grid and the settings every run shares."""

    out: str
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    collapse_epoch: int
    collapse_until: int | None
    eval_episodes: int
    overrides: tuple[tuple[str, str], ...]
    interventions: tuple[str, ...] = ("none",)
    # --break.KEY / --redo.KEY settings of the interventions (dotted key, value)
    intervention_options: tuple[tuple[str, str], ...] = ()
    protocols: tuple[str, ...] = ("guide",)
    finetune_epochs: int | None = None  # K of the trained protocol (None: FINETUNE_FRACTION)
    controls: tuple[str, ...] = ()
    # --controls-at: the arms that get the controls, as "F" (every criterion at size F) or
    # "CRITERION:F"; empty: every arm
    control_sizes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"] = [list(kv) for kv in self.overrides]
        d["intervention_options"] = [list(kv) for kv in self.intervention_options]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        return cls(
            out=str(d["out"]),
            envs=tuple(d["envs"]),
            seeds=tuple(int(s) for s in d["seeds"]),
            arms=tuple(
                Arm(
                    float(a["threshold"]),
                    a["criterion"],
                    a["flatten_colours"],
                    None if a.get("target") is None else float(a["target"]),
                )
                for a in d["arms"]
            ),
            collapse_epoch=int(d["collapse_epoch"]),
            collapse_until=None if d["collapse_until"] is None else int(d["collapse_until"]),
            eval_episodes=int(d["eval_episodes"]),
            overrides=tuple((str(k), str(v)) for k, v in d["overrides"]),
            interventions=tuple(d.get("interventions") or ("none",)),
            intervention_options=tuple(
                (str(k), str(v)) for k, v in d.get("intervention_options") or ()
            ),
            protocols=tuple(d.get("protocols") or ("guide",)),
            finetune_epochs=None if d.get("finetune_epochs") is None else int(d["finetune_epochs"]),
            controls=tuple(d.get("controls") or ()),
            control_sizes=tuple(d.get("control_sizes") or ()),
        )

    def controls_of(self, arm: Arm) -> tuple[str, ...]:
        """The controls trained at ``arm``'s widths (``--controls``, narrowed by
        ``--controls-at``)."""
        if not self.control_sizes or any(arm.at(e) for e in self.control_sizes):
            return self.controls
        return ()

    def options(self, section: str) -> dict[str, str]:
        """``--break.*`` or ``--redo.*`` settings given to the sweep (dotted key → value)."""
        return {k: v for k, v in self.intervention_options if k.startswith(section + ".")}

    def intervention_settings(self, intervention: str) -> dict[str, str]:
        """The settings (dotted key → value) that switch ``intervention`` on with the sweep's
        ``--break.*`` / ``--redo.*``. ``break`` ignores ``--break.opfiber-threshold``;
        ``break-opfibers`` defaults it to the fiber threshold."""
        if intervention == "none":
            return {}
        if intervention == "redo":
            return {"redo.enabled": "true", **self.options("redo")}
        settings = self.options("break")
        opfiber = settings.pop("break.opfiber_threshold", None)
        out = {"break.enabled": "true", **settings}
        if intervention == "break-opfibers":
            fiber = settings.get(
                "break.fiber_threshold", str(load_section(BreakConfig).fiber_threshold)
            )
            out["break.opfiber_threshold"] = opfiber or fiber
        return out

    def fiber_threshold(self) -> float:
        """τ of the fibers drawn over training: the breaking threshold."""
        default = load_section(BreakConfig).fiber_threshold
        return float(self.options("break").get("break.fiber_threshold", default))

    def dormancy_threshold(self) -> float:
        """τ of the dormant fraction drawn over training: ReDo's threshold."""
        default = load_section(RedoConfig).tau
        return float(self.options("redo").get("redo.tau", default))


def cell_dir(spec: SweepSpec, env: str, intervention: str, seed: int) -> Path:
    """``<env>/seed_<S>`` without intervention (the layout of earlier sweeps), else
    ``<env>/<intervention>/seed_<S>``."""
    base = Path(spec.out) / env
    if intervention != "none":
        base = base / intervention
    return base / sweep_seed_dir_name(seed)


def check_intervention_options(options: dict[str, str], interventions: list[str]) -> None:
    """The ``--break.*`` / ``--redo.*`` settings must be ``[break]`` / ``[redo]`` keys with
    valid values (checked as a training run checks them)."""
    for key in options:
        section = key.split(".")[0]
        wanted = ("break", "break-opfibers") if section == "break" else ("redo",)
        if not any(i in wanted for i in interventions):
            raise SweepError(f"--{key.replace('_', '-')} needs --interventions {wanted[0]}")
    switched_on = {**options, "break.enabled": "True", "redo.enabled": "True"}
    try:
        hooks_from(load_section(BreakConfig, switched_on), load_section(RedoConfig, switched_on), 0)
    except RunError as exc:
        raise SweepError(str(exc)) from None


def collapse_point(spec: SweepSpec, env: str) -> int:
    """The epoch of the checkpoint the collapse will pick (as ``closest_checkpoint`` does)."""
    t = run_config(spec, env).train
    saved = [*range(t.checkpoint_interval, t.end_epoch + 1, t.checkpoint_interval), t.end_epoch]
    return min(saved, key=lambda e: (abs(e - spec.collapse_epoch), -e))


def run_config(spec: SweepSpec, env: str, seed: int = 1) -> Any:
    """The validated configuration of the runs of ``env`` (raises ``ConfigError``)."""

    return load_config(env, {**dict(spec.overrides), "train.seed": str(seed)})


def check_schedule(spec: SweepSpec, env: str, checkpoints: bool = True) -> None:
    """The collapse epoch and final epoch must fit the schedule (and, with ``checkpoints``, the
    checkpoint interval must give a checkpoint to collapse before the final epoch)."""
    cfg = run_config(spec, env)
    end = cfg.train.end_epoch
    until = end if spec.collapse_until is None else spec.collapse_until
    if until > end:
        raise SweepError(
            f"--collapse-until ({until}) is after the last epoch of {env}'s schedule ({end})"
        )
    if not 1 <= spec.collapse_epoch < until:
        raise SweepError(
            f"--collapse-epoch ({spec.collapse_epoch}) must be in 1..{until - 1} for {env}"
        )
    point = collapse_point(spec, env)
    if checkpoints and point >= until:
        raise SweepError(
            f"the checkpoint closest to --collapse-epoch {spec.collapse_epoch} is epoch {point}, "
            f"not before the last epoch {until} ({env}); lower --train.checkpoint-interval"
        )


def final_epoch(spec: SweepSpec, env: str) -> int:
    end = int(run_config(spec, env).train.end_epoch)
    return end if spec.collapse_until is None else spec.collapse_until


def finetune_epochs(spec: SweepSpec, env: str) -> int:
    """K of ``--protocol trained``: ``--finetune-epochs``, or 10 % of the schedule's epochs."""
    if spec.finetune_epochs is not None:
        return spec.finetune_epochs
    return max(1, math.ceil(FINETUNE_FRACTION * run_config(spec, env).train.end_epoch))


@dataclass(frozen=True)
class Schedule:
    """Where one protocol's arms start and end: the collapse takes the checkpoint closest to
    ``collapse_epoch`` and training runs to ``until``; ``settings`` are added to every run of
    the protocol (after the sweep's own, so they hold)."""

    protocol: str
    collapse_epoch: int
    until: int
    settings: tuple[tuple[str, str], ...] = ()


def schedule(spec: SweepSpec, env: str, protocol: str) -> Schedule:
    """``guide``: near ``--collapse-epoch`` to the schedule's end (or ``--collapse-until``).
    ``trained``: the original's final epoch E to E + K, on a schedule of E + K epochs (with
    ``anneal_lr`` the learning rate restarts at K / (E + K) of its base, where a schedule that
    long would have it, and anneals to 0)."""
    if protocol == "guide":
        return Schedule(protocol, spec.collapse_epoch, final_epoch(spec, env))
    t = run_config(spec, env).train
    until = int(t.end_epoch) + finetune_epochs(spec, env)
    longer = (("train.total_timesteps", str(until * int(t.batch_size))),)
    return Schedule(protocol, int(t.end_epoch), until, longer)


# what a sweep may grow by when it is run again with more (seeds, arms, protocols, controls):
# every other setting must be the same, or its finished runs would not be rows of one sweep
GRID_KEYS = ("seeds", "arms", "protocols", "controls", "control_sizes")


def extends(new: SweepSpec, old: SweepSpec) -> bool:
    """Whether ``new`` is ``old`` with more seeds, arms, protocols or controls (nothing taken
    away, every shared setting the same)."""
    # K matters only to a sweep that already fine-tuned
    grid = GRID_KEYS if "trained" in old.protocols else (*GRID_KEYS, "finetune_epochs")
    fixed = {k: v for k, v in new.to_dict().items() if k not in grid}
    if fixed != {k: v for k, v in old.to_dict().items() if k not in grid}:
        return False
    return (
        set(old.seeds) <= set(new.seeds)
        and set(old.arms) <= set(new.arms)
        and set(old.protocols) <= set(new.protocols)
        and all(set(old.controls_of(a)) <= set(new.controls_of(a)) for a in old.arms)
    )


def _stored_spec(path: Path) -> dict[str, Any]:
    """The grid in ``path`` (a ``sweep.json``) as the current version writes it."""
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"cannot read {path}: {exc}") from None
    # a sweep.json of an older version lacks the newer keys (they take their defaults)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        before = SweepSpec.from_dict(before).to_dict()
    return json.loads(json.dumps(before))


def _same(spec: SweepSpec, stored: dict[str, Any]) -> bool:
    return stored == json.loads(json.dumps(spec.to_dict()))


def check_out(spec: SweepSpec) -> bool:
    """Whether ``--out`` already holds this sweep, or one this sweep extends (``False``: it can
    be created); :class:`SweepError` for a different sweep or a folder of something else.
    Reads only."""
    out = Path(spec.out)
    path = out / SPEC_NAME
    if path.is_file():
        before = _stored_spec(path)
        if _same(spec, before):
            return True
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if extends(spec, SweepSpec.from_dict(before)):
                return True
        raise SweepError(
            f"{out} holds a different sweep ({SPEC_NAME} differs in more than added seeds, "
            "arms, protocols or controls); use another --out or repeat the original command"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"--out {out} exists and is not an empty folder nor a sweep")
    check_writable(out)
    return False


def prepare_out(spec: SweepSpec) -> None:
    """Create ``--out`` with ``sweep.json``, or check that it holds this sweep or one this sweep
    extends (``sweep.json`` then becomes the larger grid; the finished runs are kept)."""
    out = Path(spec.out)
    if check_out(spec):
        if _same(spec, _stored_spec(out / SPEC_NAME)):
            return
        print(f"sweep: extending the sweep in {out} (its finished runs are kept)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPEC_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")


# ---------------------------------------------------------------------------- one cell


def _say(tag: str, message: str) -> None:
    print(f"[{tag}] {message}", flush=True)


def _package_path() -> str:
    """``PYTHONPATH`` under which a child process imports this very package (a checkout or
    an installed copy), whatever its working directory."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _train(kind: JobKind, env: str, settings: dict[str, str], log: Path, **job: Any) -> None:
    """Run one training job (``kind``, ``settings`` on top of ``env``'s config files) in its own
    process, stdout/stderr appended to ``log``; raise on failure. The job travels as the typed
    configuration in ``job.json`` beside ``log``, not as command-line text."""

    job_file = log.with_name(SWEEP_JOB)
    path = TrainJob(kind, load_config(env, settings), settings, **job).save(job_file)
    report = progress.current_reporter()  # set in a Tune trial (_cell_trainable), else None
    root = Path(settings.get("train.data_dir", log.parent))
    follower = None if report is None else progress.EpochFollower(root, kind, report)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {kind} run of {env}: {json.dumps(settings)}\n")
        f.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pufferfiber.cli.job", str(path)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _package_path()},
        )
        with proc:  # a failure while following (or Tune stopping the trial) ends the child
            try:
                code = proc.wait() if follower is None else follower.wait(proc)
            except BaseException:
                proc.kill()
                raise
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"{kind} run of {env} failed ({code}): {' '.join(tail)}")


def _runs_in(folder: Path, env: str) -> list[Path]:

    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and (m := RUN_DIR_RE.match(p.name)) and m.group("env") == env
    )


def _last_epoch(run: Path) -> int:

    found = list_checkpoints(run)
    return found[-1][0] if found else 0


def ensure_original(
    spec: SweepSpec,
    env: str,
    seed: int,
    seed_dir: Path,
    tag: str,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """The finished original run of this cell: trained, resumed, or already there (``extra``:
    the intervention's settings)."""
    end = int(run_config(spec, env, seed).train.end_epoch)
    runs = [r for r in _runs_in(seed_dir, env) if _last_epoch(r) > 0]
    for r in _runs_in(seed_dir, env):
        if _last_epoch(r) == 0:  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(r)
    settings = {
        "train.data_dir": str(seed_dir),
        "train.seed": str(seed),
        **(extra or {}),
        **dict(spec.overrides),
    }
    log = seed_dir / SWEEP_LOG
    if not runs:
        _say(tag, f"original: training epochs 1..{end}")
        _train("new", env, settings, log)
        runs = _runs_in(seed_dir, env)
    run = runs[-1]
    if _last_epoch(run) < end:
        _say(tag, f"original: resuming {run.name} at epoch {_last_epoch(run)}")
        _train("resume", env, settings, log, exp_id=run.name)
    return run


def _arm_base(original: Path, arm: Arm, source: Path) -> Path:
    """The run folder whose collapse folder holds this arm (a view for non-default arms)."""
    if arm.default_view:
        return original
    view = original.parent / f"{arm.criterion}-{arm.flatten_colours}" / original.name
    if not (view / source.name).is_file():
        view.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(view / source.name, source.read_bytes())
    return view


def _finished_run(
    folder: Path, env: str, until: int, tag: str, what: str, train: Callable[[], None]
) -> Path:
    """The run in ``folder`` that reached ``until``; else ``train()`` makes it (runs left by a
    killed attempt are removed first: each of them starts again from its own start)."""
    done = [r for r in _runs_in(folder, env) if _last_epoch(r) >= until]
    if done:
        return done[-1]
    for stale in _runs_in(folder, env):
        shutil.rmtree(stale)
    _say(tag, what)
    train()
    (run,) = [r for r in _runs_in(folder, env) if _last_epoch(r) >= until]
    return run


def _settings(
    spec: SweepSpec, seed: int, data_dir: Path, sched: Schedule, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """Every run's settings: where, which seed, the intervention's, the sweep's own, then the
    protocol's schedule."""
    return {
        "train.data_dir": str(data_dir),
        "train.seed": str(seed),
        **(extra or {}),
        **dict(spec.overrides),
        **dict(sched.settings),
    }


def ensure_arm(
    spec: SweepSpec,
    env: str,
    seed: int,
    original: Path,
    arm: Arm,
    tag: str,
    extra: Mapping[str, str] | None = None,
    sched: Schedule | None = None,
) -> tuple[Path, Path]:
    """``(collapse folder, finished resumed run)`` of one arm, collapsing and training if needed
    (``sched``: the protocol's; default the guide's)."""

    sched = sched or schedule(spec, env, "guide")
    epoch, source = closest_checkpoint(original, sched.collapse_epoch)
    base = _arm_base(original, arm, source)
    folder = base / collapse_folder_name(arm.threshold, epoch, target=arm.target)
    settings = {
        **_settings(spec, seed, base.parent, sched, extra),
        **arm.collapse_settings(),
        "collapse.epoch": str(sched.collapse_epoch),
        "collapse.until": str(sched.until),
        "collapse.flatten_colours": arm.flatten_colours,
        "collapse.criterion": arm.criterion,
    }
    log = original.parent / SWEEP_LOG
    run = _finished_run(
        folder,
        env,
        sched.until,
        tag,
        f"{_named(sched, arm.name)}: collapsing epoch {epoch}, training to epoch {sched.until}",
        lambda: _train("collapse", env, settings, log, exp_id=base.name),
    )
    return folder, run


def _named(sched: Schedule, name: str) -> str:
    return name if sched.protocol == "guide" else f"{sched.protocol} {name}"


def ensure_finetuned_original(
    spec: SweepSpec,
    env: str,
    seed: int,
    original: Path,
    tag: str,
    extra: Mapping[str, str] | None,
    sched: Schedule,
) -> Path:
    """The original fine-tuned from its final checkpoint for the trained protocol's K epochs
    (fresh Adam moments, as the collapsed networks get), in ``<seed dir>/trained/``."""
    epoch, path = list_checkpoints(original)[-1]
    folder = original.parent / TRAINED_DIR
    settings = {**_settings(spec, seed, folder, sched, extra), "collapse.until": str(sched.until)}
    log = original.parent / SWEEP_LOG
    return _finished_run(
        folder,
        env,
        sched.until,
        tag,
        f"trained original: fine-tuning epoch {epoch} to epoch {sched.until}",
        lambda: _train("checkpoint", env, settings, log, checkpoint=str(path)),
    )


def control_dir(original: Path, arm: Arm, folder: Path, sched: Schedule, control: str) -> Path:
    """``<seed dir>/controls/<protocol>-<arm's collapse folder>-<criterion>-<colours>/`` and
    ``<control>`` in it."""
    name = f"{sched.protocol}-{folder.name}-{arm.criterion}-{arm.flatten_colours}"
    return original.parent / CONTROLS_DIR / name / control


def ensure_control(
    spec: SweepSpec,
    env: str,
    seed: int,
    original: Path,
    arm: Arm,
    folder: Path,
    control: str,
    tag: str,
    extra: Mapping[str, str] | None,
    sched: Schedule,
) -> tuple[Path, Path]:
    """``(control folder, finished run)`` of one control of one collapsed arm (``folder``: the
    arm's collapse folder, whose network gives the widths).

    ``scratch``: that network's sizes freshly initialised, trained from epoch 0 to the arm's
    last epoch (equal total agent steps; a schedule of that many epochs). ``random``: the
    checkpoint the arm collapsed, cut to the same widths by random units
    (:func:`~pufferfiber.workflows.collapse.ablate_to_folder`), then trained exactly as the arm.
    """
    where = control_dir(original, arm, folder, sched, control)
    epoch = int(json.loads((folder / FIDELITY).read_text())["epoch"])
    model = folder / collapsed_model_name(epoch)
    log = original.parent / SWEEP_LOG
    what = f"{_named(sched, arm.name)} {control}"
    if control == "scratch":
        cfg = run_config(spec, env, seed)
        settings = {
            **_settings(spec, seed, where, sched, extra),
            "train.total_timesteps": str(sched.until * int(cfg.train.batch_size)),
        }
        run = _finished_run(
            where,
            env,
            sched.until,
            tag,
            f"{what}: training the collapsed sizes from scratch to epoch {sched.until}",
            lambda: _train("scratch", env, settings, log, checkpoint=str(model)),
        )
        return where, run
    settings = {**_settings(spec, seed, where, sched, extra), "collapse.until": str(sched.until)}

    def ablate_and_train() -> None:
        if not (where / FIDELITY).is_file():
            source = load_checkpoint(closest_checkpoint(original, epoch)[1], expect_env=env)
            like = load_checkpoint(model, expect_env=env).policy
            c = load_config(env, settings).collapse
            ablate_to_folder(source, like, where, fidelity=fidelity_from_config(c), seed=seed)
        _train("checkpoint", env, settings, log, checkpoint=str(where / model.name))

    run = _finished_run(
        where,
        env,
        sched.until,
        tag,
        f"{what}: random units of epoch {epoch}, training to epoch {sched.until}",
        ablate_and_train,
    )
    return where, run


def evaluate_run(run: Path, env: str, seed: int, episodes: int) -> dict[str, Any]:
    """Mean and std of the return of ``run``'s last checkpoint (cached in ``eval.json``)."""
    import numpy as np

    _, path = list_checkpoints(run)[-1]
    cache = run / EVAL_NAME
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("checkpoint") == path.name and saved.get("episodes") == episodes:
            return saved
    ckpt = load_checkpoint(path, expect_env=env)
    returns = np.asarray(play_episodes(ckpt.policy, env, episodes, seed=10_000 + seed))
    result = {
        "checkpoint": path.name,
        "episodes": episodes,
        "eval_return": float(returns.mean()),
        "eval_std": float(returns.std()),
    }
    atomic_write_text(cache, json.dumps(result) + "\n")
    return result


@dataclass(frozen=True)
class _Cell:
    """What every row of one env × intervention × seed shares."""

    spec: SweepSpec
    env: str
    seed: int
    intervention: str
    original: Path
    full_params: int
    batch_size: int
    num_envs: int


def _row(
    cell: _Cell,
    run: Path,
    *,
    protocol: str,
    until: int,
    start_epoch: int = 0,
    arm: Arm | None = None,
    control: str = "",
    params: int | None = None,
    fidelity: Mapping[str, Any] | None = None,
    arm_fidelity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One summary row. ``start_epoch``: the original's epoch the run continued from (0: a run
    of its own); ``fidelity``: the ``fidelity.json`` of the network it started from (a collapse
    or a random ablation; ``None`` for a run of its own); ``arm_fidelity``: the collapsed arm's
    (for the τ a size target corresponded to)."""
    spec, env, seed = cell.spec, cell.env, cell.seed
    evaluation = evaluate_run(run, env, seed, spec.eval_episodes)
    own_seconds = train_seconds(run)
    params = cell.full_params if params is None else params
    threshold = 0.0 if arm is None else arm.threshold
    if arm is not None and arm.target is not None and arm_fidelity is not None:
        threshold = float(arm_fidelity["tau"])  # the τ the target corresponded to in this seed
    kl = (0.0 if arm is None else math.nan) if fidelity is None else float(fidelity["kl"])
    mae = (0.0 if arm is None else math.nan) if fidelity is None else fidelity["value_mae"]
    return {
        "env": env,
        "seed": seed,
        "intervention": cell.intervention,
        "protocol": protocol,
        "arm": "original" if arm is None else arm.name,
        "control": control,
        "threshold": threshold,
        "target": "" if arm is None or arm.target is None else arm.target,
        "criterion": "" if arm is None else arm.criterion,
        "flatten_colours": "" if arm is None else arm.flatten_colours,
        "params": params,
        "params_pct": 100.0 * params / cell.full_params,
        "kl": kl,
        "value_mae": float(mae),
        "return_at_collapse": _nan((fidelity or {}).get("return_mean")),
        # epochs after start_epoch only: the original's before it are every arm's
        "final_return": final_return(history(run), until, since=start_epoch),
        # where its games restarted too late for that window to count whole games
        "final_restart": _blank(
            restart_before_window(
                run,
                until,
                cell.batch_size / cell.num_envs,
                since=start_epoch,
                before=cell.original,
            )
        ),
        "eval_return": evaluation["eval_return"],
        "eval_std": evaluation["eval_std"],
        "eval_episodes": spec.eval_episodes,
        "collapse_epoch": start_epoch or "",
        "final_epoch": until,
        "agent_steps": until * cell.batch_size,
        "sps": (_last_epoch(run) - start_epoch) * cell.batch_size / own_seconds,
        "wall_seconds": own_seconds + (uptime_at(cell.original, start_epoch) if start_epoch else 0),
        **_run_facts(spec, run, env, seed),
    }


def _timed_curve(original: Path, row: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``(wall seconds since the row's training began, return)``: a run that continued from the
    original is preceded by the original's epochs up to that point."""
    start = int(row["collapse_epoch"] or 0)
    offset = uptime_at(original, start) if start else 0.0
    points = [(t, v) for e, t, v in timeline(original) if e <= start] if start else []
    points += [(offset + t, v) for _, t, v in timeline(Path(row["run_dir"]))]
    return [(t, v) for t, v in points if math.isfinite(t) and math.isfinite(v)]


def equal_time_returns(original: Path, rows: list[dict[str, Any]]) -> None:
    """Set each row's ``equal_time_return``: its mean return over the last 10 % of the wall time
    T that the fastest row of the same protocol took to finish (the other rows at their point
    of T seconds of training, so a smaller, faster network's saved compute shows); the last
    return before T where no episode ended in that window."""
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        finite = [r["wall_seconds"] for r in mine if math.isfinite(r["wall_seconds"])]
        if not finite:
            continue
        budget = min(finite)
        since = budget * (1 - FINAL_FRACTION)
        for r in mine:
            curve = [(t, v) for t, v in _timed_curve(original, r) if t <= budget]
            window = [v for t, v in curve if t > since] or [v for _, v in curve[-1:]]
            r["equal_time_return"] = sum(window) / len(window) if window else math.nan


def row_name(row: Mapping[str, Any]) -> str:
    """``[protocol] arm [control]``: ``trained target=0.2/data/positions scratch``; the guide
    protocol is the default and goes unnamed."""
    protocol = "" if row.get("protocol", "guide") in ("", "guide") else str(row["protocol"])
    return " ".join(x for x in (protocol, str(row["arm"]), str(row.get("control") or "")) if x)


def _report_row(tag: str, row: Mapping[str, Any]) -> None:
    size = f"{row['params_pct']:.1f} % params, " if row["arm"] != "original" else ""
    kl = f"KL {row['kl']:.4g}, " if math.isfinite(row["kl"]) and row["arm"] != "original" else ""
    _say(
        tag,
        f"{row_name(row)}: {size}{kl}final return {row['final_return']:.2f}, "
        f"eval {row['eval_return']:.2f}, {row['sps']:.0f} SPS",
    )


def run_cell(
    spec: SweepSpec, env: str, seed: int, intervention: str = "none"
) -> list[dict[str, Any]]:
    """The original and every arm (and control) of every protocol of one env × intervention ×
    seed; returns (and saves) the summary rows."""

    tag = f"{env} seed {seed}" if intervention == "none" else f"{env} {intervention} seed {seed}"
    seed_dir = cell_dir(spec, env, intervention, seed)
    seed_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extra = spec.intervention_settings(intervention)
    original = ensure_original(spec, env, seed, seed_dir, tag, extra)
    full = load_checkpoint(original / _checkpoint_name(original), expect_env=env)
    config = run_config(spec, env, seed)
    cell = _Cell(
        spec,
        env,
        seed,
        intervention,
        original,
        full.policy.parameter_count(),
        int(config.train.batch_size),
        int(config.vec.num_envs),
    )
    rows = [_row(cell, original, protocol="guide", until=final_epoch(spec, env))]
    _report_row(tag, rows[0])
    for protocol in spec.protocols:
        sched = schedule(spec, env, protocol)
        if protocol == "trained":
            run = ensure_finetuned_original(spec, env, seed, original, tag, extra, sched)
            first = sched.collapse_epoch
            rows.append(_row(cell, run, protocol=protocol, until=sched.until, start_epoch=first))
            _report_row(tag, rows[-1])
        for arm in spec.arms:
            folder, run = ensure_arm(spec, env, seed, original, arm, tag, extra, sched)
            fidelity = json.loads((folder / FIDELITY).read_text())
            # the arm and its controls share its size, schedule and τ
            arm_row = functools.partial(
                _row,
                cell,
                protocol=protocol,
                until=sched.until,
                arm=arm,
                params=int(fidelity["params_after"]),
                arm_fidelity=fidelity,
            )
            at = int(fidelity["epoch"])
            rows.append(arm_row(run, start_epoch=at, fidelity=fidelity))
            _report_row(tag, rows[-1])
            for control in spec.controls_of(arm):
                where, run = ensure_control(
                    spec, env, seed, original, arm, folder, control, tag, extra, sched
                )
                own = json.loads((where / FIDELITY).read_text()) if control == "random" else None
                start_at = at if own else 0  # scratch is a run of its own
                rows.append(arm_row(run, control=control, start_epoch=start_at, fidelity=own))
                _report_row(tag, rows[-1])
    equal_time_returns(original, rows)
    atomic_write_text(seed_dir / RESULTS_NAME, json.dumps(rows, indent=1) + "\n")
    _say(tag, f"cell done in {time.perf_counter() - start:.0f} s")
    return rows


def units_edited(run: Path) -> dict[int, dict[str, int]]:
    """Epoch → layer → units broken (``breaking.jsonl``) or recycled (``redo.jsonl``)."""

    edited: dict[int, dict[str, int]] = {}
    for name, key in ((BREAK_LOG, "broken"), (REDO_LOG, "reset")):
        path = run / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill; the epoch is trained again
                continue
            per_layer = edited.setdefault(int(record["epoch"]), {})
            for label, n in dict(record.get(key) or {}).items():
                per_layer[label] = per_layer.get(label, 0) + int(n)
    return edited


def trajectory(spec: SweepSpec, run: Path, env: str, seed: int) -> dict[str, Any]:
    """Fibers per layer (at the breaking threshold) and the dormant-unit fraction (at ReDo's
    threshold) at up to ``TRAJECTORY_POINTS`` checkpoints of ``run``, cached in
    ``trajectory.json``. The dormant fraction is measured as ReDo's hook measures it: on
    ``DORMANT_GAMES`` games × ``DORMANT_STEPS`` steps that the checkpoint itself plays, run
    from a zero LSTM state."""

    found = list_checkpoints(run)
    step = max(1, math.ceil(len(found) / TRAJECTORY_POINTS))
    chosen = found[::step] + ([found[-1]] if (len(found) - 1) % step else [])
    fiber_tau, dormant_tau = spec.fiber_threshold(), spec.dormancy_threshold()
    key = {
        "fiber_threshold": fiber_tau,
        "dormant_threshold": dormant_tau,
        "checkpoints": [p.name for _, p in chosen],
    }
    cache = run / TRAJECTORY_NAME
    if cache.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return dict(saved)
    points = []
    for epoch, path in chosen:
        entry = fibers_at(path, fiber_tau)
        policy = load_checkpoint(path, expect_env=env).policy
        obs = collect_observations(policy, env, DORMANT_GAMES, DORMANT_STEPS, seed=20_000 + seed)
        dormant = dormant_fraction(policy, obs, dormant_tau)
        points.append(
            {
                "epoch": epoch,
                "fibers": entry["fibers"],
                "sizes": entry["sizes"],
                "params_collapsed": entry["params_collapsed"],
                "dormant_fraction": dormant,
            }
        )
    result = {"key": key, "points": points, "edited": units_edited(run)}
    atomic_write_text(cache, json.dumps(result) + "\n")
    return json.loads(json.dumps(result))  # epochs as keys come back as strings, as cached


def _run_facts(spec: SweepSpec, run: Path, env: str, seed: int) -> dict[str, Any]:
    """Summary columns every run has: units edited, wall time, its folder (and, as a side
    effect, its ``trajectory.json``)."""
    trajectory(spec, run, env, seed)
    edited = units_edited(run)
    return {
        "units_edited": sum(sum(per.values()) for per in edited.values()),
        "train_seconds": train_seconds(run),
        "run_dir": str(run),
    }


def _checkpoint_name(run: Path) -> str:

    return list_checkpoints(run)[-1][1].name


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _blank(value: int | None) -> int | str:
    return "" if value is None else value


# ---------------------------------------------------------------------------- Ray Tune


def _cell_trainable(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's function trainable: one env × seed cell. Each training run's epochs are
    reported to Tune as they finish (:mod:`~pufferfiber.experiments.progress`), every result
    with the id of the Ray node the cell runs on (``node``); the last result repeats the
    newest epoch beside the cell's ``arms``."""
    import ray
    from ray import tune

    spec = SweepSpec.from_dict(config["spec"])
    env, intervention, seed = config["cell"]
    node = ray.get_runtime_context().get_node_id()
    newest: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        newest.update(metrics)
        tune.report({**metrics, "node": node})

    with progress.reporting(report):
        rows = run_cell(spec, env, int(seed), intervention)
    return {**newest, "arms": len(rows), "done": 1, "node": node}


def _trial_name(trial: Any) -> str:
    """``<env>-<intervention>-seed<S>`` of a Tune trial (its ``cell``)."""
    env, intervention, seed = trial.config["cell"]
    return f"{env}-{intervention}-seed{seed}"


def check_ray_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster address (``None`` for ``auto``); :class:`SweepError` for
    anything else, before Ray is imported."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise SweepError(
            f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}"
        )
    return host, int(port)


def _check_reachable(address: str, host: str, port: int) -> None:
    # Ray waits for an unreachable GCS for minutes; a plain connect says it in seconds.
    try:
        with socket.create_connection((host, port), timeout=RAY_CONNECT_SECONDS):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SweepError(
            f"--ray-address {address}: no Ray cluster answers there ({reason})"
        ) from None


def check_cluster_options(address: str | None, num_cpus: int | None) -> None:
    """``--ray-address`` and ``--num-cpus`` as given, checked in seconds without Ray (an address
    is well formed and something listens there)."""
    if num_cpus is not None and num_cpus < 1:
        raise SweepError(f"--num-cpus must be at least 1, got {num_cpus}")
    if address:
        if num_cpus is not None:
            raise SweepError("--num-cpus sizes a local Ray; a cluster (--ray-address) has its own")
        where = check_ray_address(address)
        if where is not None:
            _check_reachable(address, *where)


def machine_cores() -> int:
    """This machine's cores, as a local Ray counts them by default."""
    return os.cpu_count() or 1


def oversubscribed(num_cpus: int | None) -> str:
    """One line when a local Ray is given more CPUs than this machine has ("" otherwise): its
    cells then share cores, each trains slower, and their SPS and wall times measure that (3 on
    2 cores gave about a third less throughput in all on enduro)."""
    cores = machine_cores()
    if num_cpus is None or num_cpus <= cores:
        return ""
    return (
        f"sweep: --num-cpus {num_cpus} is more than this machine's {cores} cores: cells will "
        "share cores, each trains slower, and their SPS and wall times measure the sharing"
    )


def start_ray(address: str | None, num_cpus: int | None, cpus_per_cell: float = 1.0) -> None:
    """Attach to ``address`` or start a local Ray whose workers import this checkout; then check
    that a cell's ``cpus_per_cell`` fit on one of its nodes (Tune would wait for ever)."""
    check_cluster_options(address, num_cpus)
    # Ray reads this when it is imported: without it, alike log lines of different workers are
    # folded ("repeated 2x across cluster"), which hides the cells' progress lines.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                num_cpus=num_cpus or machine_cores(),
                include_dashboard=False,
                log_to_driver=True,
                runtime_env={"env_vars": {"PYTHONPATH": _package_path(), "OMP_NUM_THREADS": "1"}},
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--ray-address {address}" if address else "the local Ray"
        raise SweepError(f"{where}: {_one_line(exc)}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((float(n["Resources"].get("CPU", 0)) for n in nodes), default=0.0)
    if cpus_per_cell > largest:
        ray.shutdown()
        raise SweepError(
            f"--cpus-per-cell {cpus_per_cell:g}: no node of this Ray has that many CPUs (the "
            f"largest has {largest:g}), so no cell could start"
        )


def stop_ray() -> None:
    import ray

    ray.shutdown()


def cell_order(spec: SweepSpec) -> list[list[Any]]:
    """The cells as ``[env, intervention, seed]``, in the order Tune starts them."""
    # seed-major: a sweep stopped early has whole seeds of every intervention. Cells without
    # results go first: a seed added to a grown sweep still trains its original, the longest run
    # of a cell, and started last it would leave the other cores idle while it trains alone
    cells = [[e, i, s] for s in spec.seeds for e in spec.envs for i in spec.interventions]
    return sorted(cells, key=lambda cell: (cell_dir(spec, *cell) / RESULTS_NAME).is_file())


def run_sweep(spec: SweepSpec, cpus: float) -> list[str]:
    """Run every cell on Ray Tune (on the Ray :func:`start_ray` started or attached to), ``cpus``
    each; returns the errors of failed cells."""
    from ray import tune

    cells = cell_order(spec)
    print(
        f"sweep: {len(cells)} cells (env × intervention × seed), {len(spec.arms)} collapse "
        f"arm(s) each, into {spec.out}",
        flush=True,
    )
    tuner = tune.Tuner(
        tune.with_resources(_cell_trainable, {"cpu": cpus}),
        param_space={
            "spec": spec.to_dict(),
            "cell": tune.grid_search(cells),
        },
        # a trial is named by its cell: Tune's table shows the trial name whole, its grid value
        # cut to 20 characters
        tune_config=tune.TuneConfig(reuse_actors=False, trial_name_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(spec.out) / "_tune"),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with _without_restore_hint():
        results = tuner.fit()
    found = [results[i] for i in range(len(results))]
    return [_one_line(r.error) for r in found if r.error is not None]


class _RestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(path=..., trainable=...)" after a
    Ctrl-C: a sweep is continued by running the same command again (which the sweep says), not
    by an API call, and Tune's restore would not reuse the finished runs the way a sweep does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def _without_restore_hint() -> Iterator[None]:
    logger, hint = logging.getLogger("ray.tune.tune"), _RestoreHint()
    logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    useful = [line for line in lines if "Error" in line] or lines or [type(exc).__name__]
    return useful[-1]


# ---------------------------------------------------------------------------- summary


def write_summary(spec: SweepSpec) -> tuple[Path, int]:
    """``summary.csv`` from the cells' ``results.json`` (cells not finished are left out)."""

    rows: list[dict[str, Any]] = []
    for path in _results_paths(spec):
        if path.is_file():
            rows.extend(json.loads(path.read_text()))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in SUMMARY_COLUMNS})
    path = Path(spec.out) / SUMMARY_NAME
    atomic_write_text(path, buf.getvalue())
    return path, len(rows)


def unfinished_cells(spec: SweepSpec) -> int:
    """How many cells have no results yet. Tune catches Ctrl-C itself (it stops the trials
    and saves its state) and returns as if the sweep were done: this is how one tells."""
    return sum(not path.is_file() for path in _results_paths(spec))


def _results_paths(spec: SweepSpec) -> list[Path]:
    return [
        cell_dir(spec, env, intervention, seed) / RESULTS_NAME
        for env in spec.envs
        for intervention in spec.interventions
        for seed in spec.seeds
    ]


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
