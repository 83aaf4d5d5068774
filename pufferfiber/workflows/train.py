"""The training use cases: a new run, a resumed run, and collapse-and-retrain (the guide's
``--collapse TAU``): the command line and the sweep both call these.

Each opens the vector env before any folder is made, holds the run folder's lock while it trains,
and returns an exit code (0, or 130 when Ctrl-C stopped it after saving a checkpoint); notes on
what it did go to stderr, one line each, so stdout stays the dashboard (the guide's ``log.out``).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pufferfiber.config.sections import RunConfig, load_config, section_names
from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.envs.registry import EnvError, architecture_for, make_vecenv
from pufferfiber.io.checkpoints import (
    CheckpointError,
    closest_checkpoint,
    find_run,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    locked_run,
    new_run_dir,
)
from pufferfiber.io.checkpoints import check_fits_env as check
from pufferfiber.io.runfiles import CHECKPOINT_GLOB, LOG, LOG_COLLAPSED
from pufferfiber.rl.callbacks import restore_hook_states
from pufferfiber.rl.start import NEW_RUN, RunStart
from pufferfiber.workflows.hooks import RunError, check_hooks, training_hooks

EXIT_INTERRUPTED = 130


def say(message: str) -> None:
    """One note for the user, on stderr."""
    print(message, file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """An exception as the one line a user sees."""
    if isinstance(exc, KeyError) and exc.args:
        exc = Exception(exc.args[0])
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def build_vecenv(cfg: RunConfig) -> Any:
    """The vector env of ``cfg``; its ``[env]`` settings go to the environment's constructor."""
    from pufferlib.exceptions import APIUsageError

    v = cfg.vec
    # Worker processes inherit "ignore SIGINT": Ctrl-C then reaches only the trainer, which
    # saves a checkpoint and closes the workers (instead of each printing a traceback).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return make_vecenv(
            cfg.env_name, v.backend, v.num_envs, v.num_workers, v.env_batch_size, dict(cfg.env)
        )
    except APIUsageError as exc:  # PufferLib's own consistency checks on the vec settings
        raise EnvError(f"vectorisation settings rejected by PufferLib: {exc}") from None
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def opened_vecenv(cfg: RunConfig) -> Iterator[Any]:
    """The run's vector env, closed afterwards whatever happens. Built before any folder is
    created, so a bad vec setting (e.g. ray missing) leaves nothing behind."""
    vecenv = build_vecenv(cfg)
    try:
        yield vecenv
    finally:
        try:
            vecenv.close()
        except Exception as exc:  # dead workers after Ctrl-C must not hide the real outcome
            say(f"warning: closing the environments failed: {one_line(exc)}")


def run_training(
    cfg: RunConfig,
    vecenv: Any,
    policy: Any,
    run_dir: Path,
    *,
    start: RunStart = NEW_RUN,
    hooks: Sequence[Any] = (),
) -> int:
    """Train ``policy`` in ``run_dir`` (a new or resumed run, from ``start``); returns the exit
    code. ``hooks`` are per-epoch trainer hooks (e.g. symmetry breaking), see ``Trainer``."""
    from pufferfiber.rl.trainer import Trainer, TrainingInterrupted

    trainer = Trainer(cfg, vecenv, policy, run_dir, start=start, hooks=hooks)
    say(
        f"run folder: {run_dir} (epochs {start.epoch + 1}..{trainer.end_epoch}, "
        f"device {trainer.device})"
    )
    try:
        result = trainer.train()
    except TrainingInterrupted as stop:
        say(f"interrupted: checkpoint of epoch {stop.epoch} saved to {stop.path}")
        say(f"resume with: {resume_command(cfg, run_dir)}")
        return EXIT_INTERRUPTED
    last = result.checkpoints[-1] if result.checkpoints else None
    say(f"done: epoch {result.epoch}, {result.global_step} agent steps; last checkpoint {last}")
    return 0


def resume_command(cfg: RunConfig, run_dir: Path) -> str:
    """The command that continues ``run_dir``; ``--resume`` restores the rest of the settings
    (hyperparameters, ``[vec]``, ``[env]``, symmetry breaking) from the run itself."""
    return (
        f"python demo.py --mode train --env {cfg.env_name} --vec {cfg.vec.backend} --resume "
        f"--exp-id {run_dir.name} --train.data-dir {run_dir.parent}"
    )


@contextmanager
def new_run(parent: Path, env_name: str) -> Iterator[Path]:
    """A new locked run folder in ``parent``, removed again if the run fails before its first
    checkpoint (a full disk, an error), so no empty run folder is left behind."""
    import shutil

    run_dir = new_run_dir(parent, env_name)
    try:
        with locked_run(run_dir):
            yield run_dir
    except BaseException:
        if not list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _note_schedule(cfg: RunConfig) -> None:
    """Say when total_timesteps is not a whole number of batches (a batch is never cut)."""
    t = cfg.train
    if t.total_timesteps % t.batch_size:
        say(
            f"note: train.total_timesteps ({t.total_timesteps}) is not a whole number of batches "
            f"of {t.batch_size} steps: the schedule runs {t.end_epoch} epoch(s) = "
            f"{t.end_epoch * t.batch_size} agent steps"
        )


def train_new(cfg: RunConfig, hooks: Sequence[Any] = (), arch: Architecture | None = None) -> int:
    """``--mode train``: a fresh run folder ``<data_dir>/<env>-<id8>``. ``arch``: the network's
    sizes (default: the env's standard network), e.g. a collapsed network's, freshly
    initialised (the sweep's ``scratch`` control)."""
    import torch

    _note_schedule(cfg)
    with opened_vecenv(cfg) as vecenv:
        torch.manual_seed(cfg.train.seed)
        standard = architecture_for(cfg.env_name, vecenv, rnn=cfg.policy.rnn)
        if arch is not None and (arch.obs_shape, arch.n_actions) != (
            standard.obs_shape,
            standard.n_actions,
        ):
            raise RunError(
                f"that network sees {arch.obs_shape} and acts {arch.n_actions} ways; "
                f"{cfg.env_name} has {standard.obs_shape} and {standard.n_actions}"
            )
        policy = Policy(standard if arch is None else arch)
        check_hooks(hooks, policy)
        with new_run(Path(cfg.train.data_dir), cfg.env_name) as run_dir:
            return run_training(cfg, vecenv, policy, run_dir, hooks=hooks)


def train_resume(
    cfg: RunConfig,
    exp_id: str | None,
    allow_pickle: bool,
    overrides: dict[str, str] | None = None,
    backend: str | None = None,
) -> int:
    """``--resume``: the latest checkpoint + optimizer state of the chosen run, same folder,
    with the settings stored in the checkpoint (symmetry breaking included); ``overrides``
    (``--section.key``) and ``backend`` (``--vec``) given now replace stored values, and each
    change is reported.

    The run keeps its own last epoch (a collapsed run stops at its ``--collapse-until``) unless
    ``--train.total-timesteps`` is given, which extends or shortens it.
    """
    from pufferfiber.rl.trainer import trim_metrics

    overrides = overrides or {}
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, exp_id)
    with locked_run(run_dir):
        state = load_trainer_state(run_dir) or {}
        epoch, path = _resume_point(run_dir, state)
        ckpt = _load_latest(run_dir, path, allow_pickle, cfg.env_name)
        check_same_network(ckpt, overrides)  # before resumed_config reports the changes
        cfg = keep_network(resumed_config(cfg, ckpt, overrides, backend, state), ckpt)
        check_device(cfg)
        optimizer_state = state.get("optimizer") if state.get("epoch") == epoch else None
        if optimizer_state is None:
            say(f"warning: no optimizer state for epoch {epoch} in {run_dir}; fresh Adam moments")
        hooks = training_hooks(cfg, overrides)
        check_hooks(hooks, ckpt.policy)
        restore_hook_states(hooks, state.get("hooks"))  # e.g. symmetry breaking's unit ages
        new_schedule = "train.total_timesteps" in overrides
        end_epoch = cfg.train.end_epoch
        if not new_schedule and "end_epoch" in state:
            end_epoch = int(state["end_epoch"])
        if new_schedule:
            _note_schedule(cfg)
        if epoch >= end_epoch:
            say(f"{run_dir.name} already finished at epoch {epoch} (schedule ends at {end_epoch})")
            return 0
        log_name = LOG_COLLAPSED if (run_dir / LOG_COLLAPSED).exists() else LOG
        say(f"resuming {run_dir.name} from {path.name}")
        dropped = trim_metrics(run_dir, ckpt.epoch)
        if dropped:
            say(
                f"resume: dropped {len(dropped)} metrics.jsonl line(s) after epoch {ckpt.epoch} "
                "(logged after the last checkpoint; those epochs are trained again)"
            )
        with opened_vecenv(cfg) as vecenv:
            check_fits_env(ckpt, vecenv)
            return run_training(
                cfg,
                vecenv,
                ckpt.policy,
                run_dir,
                start=RunStart(
                    ckpt.epoch, ckpt.global_step, end_epoch, optimizer_state, log_name, ckpt.meta
                ),
                hooks=hooks,
            )


def _resume_point(run_dir: Path, state: dict[str, Any]) -> tuple[int, Path]:
    """The latest checkpoint, or, if the run was killed between writing a checkpoint and its
    optimizer state, the previous one that has both (the orphan is trained again)."""

    epoch, path = latest_checkpoint(run_dir)
    paired = dict(list_checkpoints(run_dir)).get(state.get("epoch", -1))
    if state.get("epoch") != epoch and paired is not None and state.get("epoch", -1) < epoch:
        say(
            f"warning: {path.name} has no saved optimizer state (the run stopped while saving "
            f"it); resuming from {paired.name}, the last checkpoint saved with it"
        )
        return int(state["epoch"]), paired
    return epoch, path


def _load_latest(run_dir: Path, path: Path, allow_pickle: bool, env_name: str) -> Any:
    """The run's latest checkpoint; if it is unreadable, the error names the previous one."""

    try:
        return load_checkpoint(path, allow_pickle=allow_pickle, expect_env=env_name)
    except CheckpointError as exc:
        earlier = [p for _, p in list_checkpoints(run_dir) if p != path]
        if not earlier:
            raise
        raise CheckpointError(
            f"{exc}; to resume from the previous checkpoint {earlier[-1].name}, move "
            f"{path.name} out of {run_dir}"
        ) from None


# Settings that say where the run is, not how it trains: never restored from the run.
_NOT_RESTORED = ("train.data_dir",)


def resumed_config(
    cfg: RunConfig,
    ckpt: Any,
    overrides: dict[str, str],
    backend: str | None,
    state: dict[str, Any] | None = None,
) -> RunConfig:
    """The run's own settings (stored in its checkpoint) with this command's ``overrides``
    and ``--vec`` applied on top; every changed value is reported in one line."""
    stored = dict(ckpt.config) if isinstance(ckpt.config, dict) else {}
    if not stored.get("train"):
        say(
            f"warning: {ckpt.path.name} records no settings (an imported checkpoint?); resuming "
            "with the config files and this command line"
        )
        return cfg
    if "break" not in stored:  # runs saved before [break] was a config section
        stored["break"] = _stored_break(state or {})
    known = cfg.to_dict()
    restored: dict[str, str] = {}
    for section in section_names():
        for key, value in dict(stored.get(section) or {}).items():
            dotted = f"{section}.{key}"
            if key in known[section] and dotted not in _NOT_RESTORED and dotted != "vec.backend":
                restored[dotted] = value if isinstance(value, str) else repr(value)
    stored_backend = str(dict(stored.get("vec") or {}).get("backend") or cfg.vec.backend)
    original = load_config(cfg.env_name, restored, backend=stored_backend)
    restored.update({k: v for k, v in overrides.items() if k != "train.data_dir"})
    restored["train.data_dir"] = cfg.train.data_dir
    resumed = load_config(cfg.env_name, restored, backend=backend or stored_backend)
    changes = _changes(original.to_dict(), resumed.to_dict())
    if changes:
        say(f"resume: the run's settings, except {', '.join(changes)} (given now)")
    for name, before, now in (
        ("symmetry breaking", original.breaking, resumed.breaking),
        ("ReDo", original.redo, resumed.redo),
    ):
        if before.enabled and now.enabled and f"{now.SECTION}.enabled" not in overrides:
            say(f"resume: {name} continues with the run's settings {dataclasses.asdict(now)}")
    return resumed


def keep_network(cfg: RunConfig, ckpt: Any) -> RunConfig:
    """``cfg`` with the ``[policy]`` choices of the network in ``ckpt``: a resumed or collapsed
    run keeps its own recurrent layer (stored with the run, so the record stays true)."""
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, rnn=ckpt.arch.rnn))


def check_same_network(ckpt: Any, given: Mapping[str, str]) -> None:
    """``--policy.rnn`` given now for another layer than ``ckpt``'s is an error rather than
    silently ignored."""
    wanted = given.get("policy.rnn")
    if wanted is not None and wanted.strip() != ckpt.arch.rnn:
        raise RunError(
            f"--policy.rnn {wanted.strip()}: {ckpt.path.name} is a {ckpt.arch.rnn} network; the "
            "recurrent layer is chosen when a run starts"
        )


def _stored_break(state: dict[str, Any]) -> dict[str, Any]:
    """The ``[break]`` settings of a run that stored them only with its hook state."""
    hooks = state.get("hooks") or []
    stored = hooks.values() if isinstance(hooks, dict) else hooks  # {name: state}, or a list (0.1)
    breaking = [h for h in stored if isinstance(h, dict) and h.get("kind", "break") == "break"]
    found = [h.get("settings") for h in breaking]
    settings = next((x for x in found if isinstance(x, dict)), None)
    if settings is None:
        return {"enabled": False}
    layers = settings.get("layers")
    return {
        **{k: v for k, v in settings.items() if k not in ("layers", "seed")},
        "enabled": True,
        "layers": "all" if not layers else ",".join(layers),
    }


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for section in section_names():
        for key, value in after[section].items():
            old = before[section].get(key)
            if f"{section}.{key}" not in _NOT_RESTORED and old != value:
                name = "--vec" if (section, key) == ("vec", "backend") else f"{section}.{key}"
                out.append(f"{name} {value} (was {old})")
    return out


def check_fits_env(ckpt: Any, vecenv: Any = None) -> None:
    """The checkpoint's action count and observation size must be those of its env."""

    check(ckpt, architecture_for(ckpt.env, vecenv), ckpt.env)


def check_device(cfg: RunConfig) -> None:
    from pufferfiber.rl.trainer import resolve_device

    resolve_device(cfg.train.device)


def train_collapsed(cfg: RunConfig, exp_id: str | None, allow_pickle: bool) -> int:
    """``--collapse τ``: collapse the checkpoint closest to ``--collapse-epoch`` of the run, then
    train the collapsed policy (fresh optimizer, same hyperparameters) to ``--collapse-until``
    in a new run folder inside the collapse folder."""

    c = cfg.collapse
    hooks = training_hooks(cfg)
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, exp_id)
    epoch, path = closest_checkpoint(run_dir, c.epoch)
    if epoch != c.epoch:
        say(
            f"--collapse-epoch {c.epoch}: no checkpoint of that epoch; using the "
            f"closest, {path.name} ({abs(epoch - c.epoch)} epochs away)"
        )
    until = cfg.train.end_epoch if c.until is None else c.until
    if until <= epoch:
        raise RunError(f"--collapse-until ({until}) must be after the collapsed epoch ({epoch})")
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle, expect_env=cfg.env_name)
    cfg = keep_network(cfg, ckpt)
    check_hooks(hooks, ckpt.policy)  # layer names survive the collapse
    with opened_vecenv(cfg) as vecenv:
        check_fits_env(ckpt, vecenv)
        collapsed = collapse_checkpoint(ckpt, run_dir, epoch, cfg)
        return _train_further(cfg, vecenv, collapsed, collapsed.path.parent, until, hooks)


def train_checkpoint(cfg: RunConfig, checkpoint: Path, allow_pickle: bool) -> int:
    """Train the network of the file ``checkpoint`` from its epoch to ``--collapse-until``
    (default: the schedule's end) with fresh Adam moments, in a new run folder in
    ``--train.data-dir``: how the sweep fine-tunes a trained original (``--protocol trained``)
    and trains its random-ablation control, exactly as a collapsed network is trained."""
    ckpt = load_checkpoint(checkpoint, allow_pickle=allow_pickle, expect_env=cfg.env_name)
    cfg = keep_network(cfg, ckpt)
    until = cfg.train.end_epoch if cfg.collapse.until is None else cfg.collapse.until
    if until <= ckpt.epoch:
        raise RunError(
            f"--collapse-until ({until}) must be after the checkpoint's epoch ({ckpt.epoch})"
        )
    hooks = training_hooks(cfg)
    check_hooks(hooks, ckpt.policy)
    with opened_vecenv(cfg) as vecenv:
        check_fits_env(ckpt, vecenv)
        return _train_further(cfg, vecenv, ckpt, Path(cfg.train.data_dir), until, hooks)


def _train_further(
    cfg: RunConfig, vecenv: Any, ckpt: Any, parent: Path, until: int, hooks: Sequence[Any]
) -> int:
    """Train ``ckpt``'s network from its epoch to ``until`` in a new run folder in ``parent``,
    with a fresh optimizer (a collapsed network's parameters are new ones)."""
    # PufferLib's own checkpoints do not record agent steps: count whole epochs instead.
    steps = ckpt.global_step or ckpt.epoch * cfg.train.batch_size
    with new_run(parent, cfg.env_name) as child:
        return run_training(
            cfg,
            vecenv,
            ckpt.policy,
            child,
            start=RunStart(ckpt.epoch, steps, until, log_name=LOG_COLLAPSED, meta=ckpt.meta),
            hooks=hooks,
        )


def collapse_checkpoint(ckpt: Any, run_dir: Path, epoch: int, cfg: RunConfig) -> Any:
    """Write ``run_dir/collapsed_model_thr_TT_EEEEEE/`` (``..._target_PP_...`` for a size
    target; model, fibers.pkl, fidelity.json) as ``cfg.collapse`` says; returns the collapsed
    checkpoint."""
    from pufferfiber.rl.trainer import resolve_device
    from pufferfiber.workflows.collapse import (
        WriteMode,
        collapse_folder_name,
        collapse_to_folder,
        criterion_from_config,
        fidelity_from_config,
    )

    knob = cfg.collapse.size_knob
    out_dir = run_dir / collapse_folder_name(knob["threshold"], epoch, target=knob["target"])
    how = (
        f"threshold {knob['threshold']}"
        if knob["target"] is None
        else f"target {knob['target']:g} of the parameters"
    )
    say(f"collapsing {run_dir.name}/{ckpt.path.name} at {how} into {out_dir.name}")
    try:
        result = collapse_to_folder(
            ckpt,
            criterion_from_config(cfg.collapse, seed=cfg.train.seed),
            out_dir,
            fidelity=fidelity_from_config(cfg.collapse),
            mode=WriteMode.UPDATE,  # re-collapsing replaces the three files, keeps earlier runs
            seed=cfg.train.seed,
            echo=False,
            device=resolve_device(cfg.train.device),
        )
    except ValueError as exc:  # the pipeline's one-line input errors
        raise RunError(str(exc)) from None
    collapsed = result.checkpoint
    say(
        f"collapsed model: {collapsed.path} ({collapsed.policy.parameter_count()} of "
        f"{ckpt.policy.parameter_count()} parameters)"
    )
    return collapsed


def latest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    """The newest checkpoint of ``run_dir`` as ``(epoch, path)``."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints ({CHECKPOINT_GLOB}) in {run_dir}")
    return found[-1]
