"""``demo.py``: the guide's command line (train, resume, evaluate, collapse-and-retrain).

    python demo.py --mode train --vec multiprocessing --env beam_rider > log.out 2> log.err
    python demo.py --mode train --env beam_rider --resume [--exp-id ID]
    python demo.py --mode train --env beam_rider --collapse 0.3 > log_collapsed.out
    python demo.py --mode eval --env beam_rider [--eval-model-path PATH] [--eval-episodes N]

The dashboard goes to stdout, everything else (run folder, warnings, errors) to stderr. Bad
input gives one ``error:`` line on stderr and exit code 2, never a traceback; Ctrl-C during
training saves a checkpoint, says how to resume, and exits 130.
"""

from __future__ import annotations

import warnings

# torch's import warns about pynvml on some machines; keep stderr to our own messages.
warnings.filterwarnings("ignore", message=".*pynvml package is deprecated.*")

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from pufferfiber.config import ConfigError, RunConfig, help_epilog, load_config  # noqa: E402
from pufferfiber.config import parse_overrides as parse_config_overrides  # noqa: E402
from pufferfiber.envs import VEC_BACKENDS, EnvError  # noqa: E402

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEFAULT_COLLAPSE_EPOCH = 50


class UsageError(Exception):
    """Bad command-line usage (reported as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="demo.py",
        description="Train PufferLib agents (PPO + LSTM), evaluate them, and collapse them with "
        "symmetry fibrations.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--mode",
        choices=("train", "eval"),
        default="train",
        help="train (default) or eval (play episodes with a checkpoint)",
    )
    parser.add_argument(
        "--env",
        default="beam_rider",
        help="environment: cartpole, an Ocean game (puffer_pong, puffer_breakout) or an Atari "
        "game such as beam_rider (default: beam_rider)",
    )
    parser.add_argument(
        "--vec",
        choices=VEC_BACKENDS,
        default=None,
        help="vectorisation backend (default: serial, or the run's own with --resume; ray "
        "needs the 'ray' extra)",
    )
    parser.add_argument(
        "--exp-id",
        default=None,
        help="run folder to resume / evaluate / collapse: <env>-<id8> or its id8 "
        "(default: the newest run of --env)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a run from its latest checkpoint and optimizer state, with the "
        "settings stored with the run (options given now override them, and are reported)",
    )
    parser.add_argument(
        "--eval-model-path",
        type=Path,
        default=None,
        help="checkpoint to evaluate (default: the newest of the run)",
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=10, help="episodes played by --mode eval (default: 10)"
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept PufferLib 2.0's pickled whole-module checkpoints (runs code "
        "from the file: only for files you trust)",
    )
    group = parser.add_argument_group("collapse (with --mode train)")
    group.add_argument(
        "--collapse",
        type=float,
        default=0.0,
        metavar="TAU",
        help="collapse fibers at cosine distance <= TAU (0 < TAU <= 2; 0 = off), "
        "then resume training from the collapsed model",
    )
    group.add_argument(
        "--collapse-epoch",
        type=int,
        default=DEFAULT_COLLAPSE_EPOCH,
        help="collapse the checkpoint closest to this epoch (default: 50; the one picked is "
        "reported when it differs)",
    )
    group.add_argument(
        "--collapse-until",
        type=int,
        default=None,
        help="train the collapsed model up to this epoch (default: the last epoch "
        "of the schedule, total_timesteps / batch_size)",
    )
    group.add_argument(
        "--flatten-colours",
        choices=("positions", "pooled"),
        default="positions",
        help="conv->Linear colours: positions (a true fibration, default) or "
        "pooled (the published reference's criterion)",
    )
    from pufferfiber.criteria import CRITERIA, DEFAULT_CRITERION, LSTM_CRITERIA

    group.add_argument(
        "--criterion",
        choices=CRITERIA,
        default=DEFAULT_CRITERION,
        help="how fibers are found: weights (cosine distance of weight rows <= TAU, "
        "default) or data (outputs constant or affinely related on real observations "
        "played by the policy, relative fit error <= TAU)",
    )
    group.add_argument(
        "--lstm-criterion",
        choices=LSTM_CRITERIA,
        default="units",
        help="weights criterion, LSTM: units (ours, default) or published (the "
        "reference's joint gate-row clustering)",
    )
    from pufferfiber.breaking import add_break_arguments
    from pufferfiber.redo import add_redo_arguments

    add_break_arguments(parser)
    add_redo_arguments(parser)
    return parser


@dataclass
class Args:
    """Parsed command line: options plus ``--section.key`` config overrides."""

    ns: argparse.Namespace
    overrides: dict[str, str]


def parse_args(argv: list[str]) -> Args:
    ns, rest = build_parser().parse_known_args(argv)
    overrides = parse_config_overrides(rest)
    if ns.eval_episodes < 1:
        raise UsageError("--eval-episodes must be at least 1")
    if ns.collapse_epoch < 0:
        raise UsageError(f"--collapse-epoch must be >= 0, got {ns.collapse_epoch}")
    return Args(ns, overrides)


# ----------------------------------------------------------------------------------------------
# Building blocks


def build_vecenv(cfg: RunConfig) -> Any:
    """The vector env of ``cfg``; its ``[env]`` settings go to the environment's constructor."""
    from pufferlib.exceptions import APIUsageError

    from pufferfiber.envs import make_vecenv

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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
            _say(f"warning: closing the environments failed: {_one_line(exc)}")


def run_training(
    cfg: RunConfig,
    vecenv: Any,
    policy: Any,
    run_dir: Path,
    *,
    start_epoch: int = 0,
    start_global_step: int = 0,
    end_epoch: int | None = None,
    optimizer_state: dict[str, Any] | None = None,
    log_name: str = "log.out",
    meta: dict[str, Any] | None = None,
    hooks: Sequence[Any] = (),
) -> int:
    """Train ``policy`` in ``run_dir`` (a new or resumed run); returns the exit code.

    ``hooks`` are per-epoch trainer hooks (e.g. symmetry breaking), see ``Trainer``."""
    from pufferfiber.trainer import Trainer, TrainingInterrupted

    trainer = Trainer(
        cfg,
        vecenv,
        policy,
        run_dir,
        start_epoch=start_epoch,
        start_global_step=start_global_step,
        end_epoch=end_epoch,
        optimizer_state=optimizer_state,
        log_name=log_name,
        meta=meta,
        hooks=hooks,
    )
    _say(
        f"run folder: {run_dir} (epochs {start_epoch + 1}..{trainer.end_epoch}, "
        f"device {trainer.device})"
    )
    try:
        result = trainer.train()
    except TrainingInterrupted as stop:
        _say(f"interrupted: checkpoint of epoch {stop.epoch} saved to {stop.path}")
        _say(f"resume with: {resume_command(cfg, run_dir)}")
        return EXIT_INTERRUPTED
    last = result.checkpoints[-1] if result.checkpoints else None
    _say(f"done: epoch {result.epoch}, {result.global_step} agent steps; last checkpoint {last}")
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

    from pufferfiber.checkpoints import list_checkpoints, locked_run, new_run_dir

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
        _say(
            f"note: train.total_timesteps ({t.total_timesteps}) is not a whole number of batches "
            f"of {t.batch_size} steps: the schedule runs {t.end_epoch} epoch(s) = "
            f"{t.end_epoch * t.batch_size} agent steps"
        )


def train_new(cfg: RunConfig, hooks: Sequence[Any] = ()) -> int:
    """``--mode train``: a fresh run folder ``<data_dir>/<env>-<id8>``."""
    import torch

    from pufferfiber.envs import architecture_for
    from pufferfiber.policy import Policy

    _note_schedule(cfg)
    with opened_vecenv(cfg) as vecenv:
        torch.manual_seed(cfg.train.seed)
        policy = Policy(architecture_for(cfg.env_name, vecenv))
        check_hooks(hooks, policy)
        with new_run(Path(cfg.train.data_dir), cfg.env_name) as run_dir:
            return run_training(cfg, vecenv, policy, run_dir, hooks=hooks)


def train_resume(
    cfg: RunConfig,
    exp_id: str | None,
    allow_pickle: bool,
    overrides: dict[str, str] | None = None,
    backend: str | None = None,
    hooks: Sequence[Any] = (),
) -> int:
    """``--resume``: the latest checkpoint + optimizer state of the chosen run, same folder,
    with the settings stored in the checkpoint; ``overrides`` (``--section.key``) and
    ``backend`` (``--vec``) given now replace stored values, and each change is reported.

    The run keeps its own last epoch (a collapsed run stops at its ``--collapse-until``) unless
    ``--train.total-timesteps`` is given, which extends or shortens it.
    """
    from pufferfiber.checkpoints import find_run, load_trainer_state, locked_run
    from pufferfiber.trainer import trim_metrics

    overrides = overrides or {}
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, exp_id)
    with locked_run(run_dir):
        state = load_trainer_state(run_dir) or {}
        epoch, path = _resume_point(run_dir, state)
        ckpt = _load_latest(run_dir, path, allow_pickle, cfg.env_name)
        cfg = resumed_config(cfg, ckpt, overrides, backend)
        _check_device(cfg)
        optimizer_state = state.get("optimizer") if state.get("epoch") == epoch else None
        if optimizer_state is None:
            _say(f"warning: no optimizer state for epoch {epoch} in {run_dir}; fresh Adam moments")
        hooks = resumed_hooks(hooks, state)
        check_hooks(hooks, ckpt.policy)
        for hook, hook_state in zip(hooks, state.get("hooks") or [], strict=False):
            if hook_state is not None and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(hook_state)  # e.g. symmetry breaking's unit ages
        new_schedule = "train.total_timesteps" in overrides
        end_epoch = cfg.train.end_epoch
        if not new_schedule and "end_epoch" in state:
            end_epoch = int(state["end_epoch"])
        if new_schedule:
            _note_schedule(cfg)
        if epoch >= end_epoch:
            _say(f"{run_dir.name} already finished at epoch {epoch} (schedule ends at {end_epoch})")
            return 0
        log_name = "log_collapsed.out" if (run_dir / "log_collapsed.out").exists() else "log.out"
        _say(f"resuming {run_dir.name} from {path.name}")
        dropped = trim_metrics(run_dir, ckpt.epoch)
        if dropped:
            _say(
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
                start_epoch=ckpt.epoch,
                start_global_step=ckpt.global_step,
                end_epoch=end_epoch,
                optimizer_state=optimizer_state,
                log_name=log_name,
                meta=ckpt.meta,
                hooks=hooks,
            )


def _resume_point(run_dir: Path, state: dict[str, Any]) -> tuple[int, Path]:
    """The latest checkpoint, or, if the run was killed between writing a checkpoint and its
    optimizer state, the previous one that has both (the orphan is trained again)."""
    from pufferfiber.checkpoints import list_checkpoints

    epoch, path = _latest_checkpoint(run_dir)
    paired = dict(list_checkpoints(run_dir)).get(state.get("epoch", -1))
    if state.get("epoch") != epoch and paired is not None and state.get("epoch", -1) < epoch:
        _say(
            f"warning: {path.name} has no saved optimizer state (the run stopped while saving "
            f"it); resuming from {paired.name}, the last checkpoint saved with it"
        )
        return int(state["epoch"]), paired
    return epoch, path


def _load_latest(run_dir: Path, path: Path, allow_pickle: bool, env_name: str) -> Any:
    """The run's latest checkpoint; if it is unreadable, the error names the previous one."""
    from pufferfiber.checkpoints import CheckpointError, list_checkpoints, load_checkpoint

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
    cfg: RunConfig, ckpt: Any, overrides: dict[str, str], backend: str | None
) -> RunConfig:
    """The run's own settings (stored in its checkpoint) with this command's ``overrides``
    and ``--vec`` applied on top; every changed value is reported in one line."""
    stored = ckpt.config if isinstance(ckpt.config, dict) else {}
    if not stored.get("train"):
        _say(
            f"warning: {ckpt.path.name} records no settings (an imported checkpoint?); resuming "
            "with the config files and this command line"
        )
        return cfg
    known = cfg.to_dict()
    restored: dict[str, str] = {}
    for section in ("train", "vec", "env"):
        for key, value in dict(stored.get(section) or {}).items():
            dotted = f"{section}.{key}"
            if key in known[section] and dotted not in _NOT_RESTORED and key != "backend":
                restored[dotted] = value if isinstance(value, str) else repr(value)
    stored_backend = str(dict(stored.get("vec") or {}).get("backend") or cfg.vec.backend)
    original = load_config(cfg.env_name, restored, backend=stored_backend)
    restored.update({k: v for k, v in overrides.items() if k != "train.data_dir"})
    restored["train.data_dir"] = cfg.train.data_dir
    resumed = load_config(cfg.env_name, restored, backend=backend or stored_backend)
    changes = _changes(original.to_dict(), resumed.to_dict())
    if changes:
        _say(f"resume: the run's settings, except {', '.join(changes)} (given now)")
    return resumed


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for section in ("train", "vec", "env"):
        for key, value in after[section].items():
            old = before[section].get(key)
            if f"{section}.{key}" not in _NOT_RESTORED and old != value:
                name = "--vec" if (section, key) == ("vec", "backend") else f"{section}.{key}"
                out.append(f"{name} {value} (was {old})")
    return out


def _hook_kind(hook_or_state: Any) -> str:
    """``"redo"`` or ``"break"`` (states saved before ReDo was a hook carry no kind)."""
    if isinstance(hook_or_state, dict):
        return str(hook_or_state.get("kind") or "break")
    return str(getattr(hook_or_state, "kind", "break"))


_HOOK_NAMES = {"break": "symmetry breaking", "redo": "ReDo"}


def resumed_hooks(hooks: Sequence[Any], state: dict[str, Any]) -> list[Any]:
    """Symmetry breaking and ReDo continue with the run's stored settings when ``--break-symmetry``
    / ``--redo`` is not given again; given settings that differ from the stored ones are
    reported. The hooks come back in the stored order, so each one gets its own saved state."""
    from pufferfiber.breaking import SymmetryBreaker
    from pufferfiber.redo import DormantReset

    found = [h for h in (state.get("hooks") or []) if isinstance(h, dict)]
    stored = [(_hook_kind(h), h["settings"]) for h in found if isinstance(h.get("settings"), dict)]
    given = {_hook_kind(h): h for h in hooks}
    out: list[Any] = []
    for kind, settings in stored:
        name = _HOOK_NAMES.get(kind, kind)
        hook = given.pop(kind, None)
        if hook is None:
            make = DormantReset if kind == "redo" else SymmetryBreaker
            try:
                hook = make(**settings)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"the run's stored {name} settings are invalid: {exc}") from None
            _say(f"resume: {name} continues with the run's settings {settings}")
        else:
            now = hook.settings() if hasattr(hook, "settings") else settings
            changed = [
                f"{k} {now.get(k)} (was {v})" for k, v in settings.items() if now.get(k) != v
            ]
            if changed:
                _say(f"resume: {name} with {', '.join(changed)} (given now)")
        out.append(hook)
    return out + [h for h in hooks if any(h is g for g in given.values())]


def check_fits_env(ckpt: Any, vecenv: Any = None) -> None:
    """The checkpoint's action count and observation size must be those of its env."""
    from pufferfiber.checkpoints import check_fits_env as check
    from pufferfiber.envs import architecture_for

    check(ckpt, architecture_for(ckpt.env, vecenv), ckpt.env)


def _check_device(cfg: RunConfig) -> None:
    from pufferfiber.trainer import resolve_device

    resolve_device(cfg.train.device)


def train_collapsed(cfg: RunConfig, ns: argparse.Namespace, hooks: Sequence[Any] = ()) -> int:
    """``--collapse τ``: collapse the checkpoint closest to ``--collapse-epoch`` of the run, then
    train the collapsed policy (fresh optimizer, same hyperparameters) to ``--collapse-until``
    in a new run folder inside the collapse folder."""
    from pufferfiber.checkpoints import closest_checkpoint, find_run, load_checkpoint

    tau = _check_threshold(ns.collapse)
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, ns.exp_id)
    epoch, path = closest_checkpoint(run_dir, ns.collapse_epoch)
    if epoch != ns.collapse_epoch:
        _say(
            f"--collapse-epoch {ns.collapse_epoch}: no checkpoint of that epoch; using the "
            f"closest, {path.name} ({abs(epoch - ns.collapse_epoch)} epochs away)"
        )
    until = cfg.train.end_epoch if ns.collapse_until is None else ns.collapse_until
    if until <= epoch:
        raise UsageError(f"--collapse-until ({until}) must be after the collapsed epoch ({epoch})")
    ckpt = load_checkpoint(path, allow_pickle=ns.allow_pickle, expect_env=cfg.env_name)
    check_hooks(hooks, ckpt.policy)  # layer names survive the collapse
    with opened_vecenv(cfg) as vecenv:
        check_fits_env(ckpt, vecenv)
        collapsed = collapse_checkpoint(
            ckpt,
            tau,
            run_dir,
            epoch,
            ns.flatten_colours,
            cfg,
            criterion=ns.criterion,
            lstm_criterion=ns.lstm_criterion,
        )
        # PufferLib's own checkpoints do not record agent steps: count whole epochs instead.
        steps = collapsed.global_step or collapsed.epoch * cfg.train.batch_size
        with new_run(collapsed.path.parent, cfg.env_name) as child:
            return run_training(
                cfg,
                vecenv,
                collapsed.policy,
                child,
                start_epoch=collapsed.epoch,
                start_global_step=steps,
                end_epoch=until,
                log_name="log_collapsed.out",
                meta=collapsed.meta,
                hooks=hooks,
            )


def collapse_checkpoint(
    ckpt: Any,
    tau: float,
    run_dir: Path,
    epoch: int,
    flatten_colours: str,
    cfg: RunConfig,
    *,
    criterion: str = "weights",
    lstm_criterion: str = "units",
) -> Any:
    """Write ``run_dir/collapsed_model_thr_TT_EEEEEE/`` (model, fibers.pkl, fidelity.json) with
    the fibers engineer's pipeline; returns the collapsed checkpoint."""
    from pufferfiber.pipeline import collapse_folder_name, collapse_to_folder
    from pufferfiber.trainer import resolve_device

    out_dir = run_dir / collapse_folder_name(tau, epoch)
    _say(f"collapsing {run_dir.name}/{ckpt.path.name} at threshold {tau} into {out_dir.name}")
    try:
        result = collapse_to_folder(
            ckpt,
            tau,
            out_dir,
            flatten_colours=flatten_colours,
            criterion=criterion,
            lstm_criterion=lstm_criterion,
            fidelity_episodes=10 if criterion == "data" else 3,
            seed=cfg.train.seed,
            overwrite=True,  # re-collapsing replaces the three files, keeps earlier runs inside
            echo=False,
            device=resolve_device(cfg.train.device),
        )
    except ValueError as exc:  # the pipeline's one-line input errors
        raise UsageError(str(exc)) from None
    collapsed = result.checkpoint
    _say(
        f"collapsed model: {collapsed.path} ({collapsed.policy.parameter_count()} of "
        f"{ckpt.policy.parameter_count()} parameters)"
    )
    return collapsed


def evaluate(cfg: RunConfig, ns: argparse.Namespace) -> int:
    """``--mode eval``: play ``--eval-episodes`` episodes and print mean ± std return."""
    import numpy as np

    from pufferfiber.checkpoints import find_run, load_checkpoint
    from pufferfiber.evaluate import play_episodes
    from pufferfiber.trainer import resolve_device

    path = ns.eval_model_path
    if path is None:
        run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, ns.exp_id)
        path = _latest_checkpoint(run_dir)[1]
    ckpt = load_checkpoint(path, allow_pickle=ns.allow_pickle, expect_env=cfg.env_name)
    check_fits_env(ckpt)
    returns = np.asarray(
        play_episodes(
            ckpt.policy,
            cfg.env_name,
            ns.eval_episodes,
            seed=cfg.train.seed,
            device=resolve_device(cfg.train.device),
        )
    )
    print(
        f"{cfg.env_name} {path} (epoch {ckpt.epoch}): return {returns.mean():.2f} ± "
        f"{returns.std():.2f} over {len(returns)} episodes (min {returns.min():.2f}, "
        f"max {returns.max():.2f})",
        flush=True,
    )
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point


def _check_threshold(tau: float) -> float:
    from pufferfiber.pipeline import validate_threshold

    try:
        return validate_threshold(tau)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _latest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    from pufferfiber.checkpoints import CheckpointError, list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints (model_XXXXXX.pt) in {run_dir}")
    return found[-1]


def dispatch(args: Args) -> int:
    ns = args.ns
    if ns.collapse and ns.mode != "train":
        raise UsageError("--collapse works with --mode train")
    if ns.collapse != 0:
        _check_threshold(ns.collapse)  # before any expensive work
    cfg = load_config(ns.env, args.overrides, backend=ns.vec or "serial")
    hooks = training_hooks(ns, cfg)
    if ns.resume and ns.mode == "train" and not ns.collapse:
        # the run's own settings are known only once its checkpoint is read
        return train_resume(cfg, ns.exp_id, ns.allow_pickle, args.overrides, ns.vec, hooks)
    _check_device(cfg)  # before any folder is created
    if ns.mode == "eval":
        return evaluate(cfg, ns)
    if ns.collapse:
        return train_collapsed(cfg, ns, hooks)
    return train_new(cfg, hooks)


def check_hooks(hooks: Sequence[Any], policy: Any) -> None:
    """Let hooks with a ``check(policy)`` method validate their settings before any training."""
    for hook in hooks:
        if hasattr(hook, "check"):
            try:
                hook.check(policy)
            except ValueError as exc:
                raise UsageError(str(exc)) from None


def training_hooks(ns: argparse.Namespace, cfg: RunConfig) -> list[Any]:
    """Per-epoch hooks asked for on the command line (``--break-symmetry``, ``--redo``)."""
    from pufferfiber.breaking import breaker_from_args
    from pufferfiber.redo import reset_from_args

    defaults = build_parser()
    for flag, prefix, what in (
        ("break_symmetry", "break_", "--break-symmetry (symmetry breaking is off)"),
        ("redo", "redo_", "--redo (ReDo is off)"),
    ):
        if getattr(ns, flag):
            continue
        given = [
            "--" + dest.replace(prefix, prefix[:-1] + ".", 1).replace("_", "-")
            for dest in vars(ns)
            if dest.startswith(prefix) and getattr(ns, dest) != defaults.get_default(dest)
        ]
        if given:
            raise UsageError(f"{given[0]} needs {what}")
    try:
        breaker = breaker_from_args(ns, seed=cfg.train.seed)
        reset = reset_from_args(ns, seed=cfg.train.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return [h for h in (breaker, reset) if h is not None]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors are one line on stderr)."""
    from pufferfiber.checkpoints import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    try:
        return dispatch(parse_args(argv))
    except (UsageError, ConfigError, EnvError, CheckpointError) as exc:
        _say(f"demo.py: error: {_one_line(exc)}")
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. the dashboard's log copy on a full disk
        from pufferfiber.checkpoints import describe_os_error

        _say(f"demo.py: error: {describe_os_error(Path(exc.filename or '?'), exc)}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
