"""The command line: ``demo.py`` (the guide's), the ``pufferfiber`` command and their errors.

    python demo.py --mode train --vec multiprocessing --env beam_rider > log.out 2> log.err
    python demo.py --mode train --env beam_rider --resume [--exp-id ID]
    python demo.py --mode train --env beam_rider --collapse 0.3 > log_collapsed.out
    python demo.py --mode eval --env beam_rider [--eval-model-path PATH] [--eval-episodes N]

    pufferfiber train|eval [the options of demo.py but --mode]
    pufferfiber collapse CHECKPOINT -t TAU      (also: python -m pufferfiber ...)
    pufferfiber report EXPERIMENT_DIR | SWEEP_DIR
    pufferfiber sweep --env ENV --thresholds TAU,... --out DIR

The run settings are options generated from the typed sections of :mod:`pufferfiber.config.sections`
(``--train.batch-size``, ``--break.interval``, ``--collapse TAU``...), and ``--help`` shows the
values merged for the chosen ``--env``. Every command reports bad input the same way: one
``COMMAND: error: ...`` line on stderr and exit code 2, never a traceback. The dashboard goes
to stdout, everything else (run folder, warnings, errors) to stderr; Ctrl-C during training
saves a checkpoint, says how to resume, and exits 130.
"""

from __future__ import annotations

import warnings

# torch's import warns about pynvml on some machines; keep stderr to our own messages.
warnings.filterwarnings("ignore", message=".*pynvml package is deprecated.*")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from pufferfiber.config.sections import (  # noqa: E402
    CONFIG_DIR,
    ENV_HELP,
    BreakConfig,
    CollapseConfig,
    ConfigError,
    RedoConfig,
    RunConfig,
    field_type,
    load_config,
    load_section,
    merge_files,
    merged_settings,
    option_fields,
    parse_layers,
    parse_overrides,
    section_classes,
    section_name,
    section_names,
    shown_value,
    type_name,
)
from pufferfiber.envs.registry import VEC_BACKENDS, EnvError  # noqa: E402
from pufferfiber.io.runfiles import CHECKPOINT_GLOB, LOG, LOG_COLLAPSED  # noqa: E402

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEFAULT_ENV = "beam_rider"
CONFIG_DEST = "cfg:"  # argparse dest prefix of the generated --section.key options


class UsageError(Exception):
    """Bad command-line usage (reported as one line)."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one-line :class:`UsageError` s (exit code 2, no usage
    block), like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run_command(
    prog: str, body: Callable[[], int], errors: tuple[type[Exception], ...] = ()
) -> int:
    """Run a command's ``body``; bad input of any kind (``errors``: the command's own error
    types) becomes ``PROG: error: ...`` (one line) and exit code 2, Ctrl-C exit code 130."""
    from pufferfiber.core.fibers import FibersFileError
    from pufferfiber.io.checkpoints import CheckpointError, describe_os_error

    try:
        return body()
    except (UsageError, ConfigError, EnvError, CheckpointError, FibersFileError) as exc:
        _say(f"{prog}: error: {_one_line(exc)}")
    except errors as exc:
        _say(f"{prog}: error: {_one_line(exc)}")
    except OSError as exc:  # e.g. the dashboard's log copy on a full disk
        _say(f"{prog}: error: {describe_os_error(Path(exc.filename or '?'), exc)}")
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        exc = Exception(exc.args[0])
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------------------------
# Options generated from the config sections


def _dashed(key: str) -> str:
    return key.replace("_", "-")


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """``--train.batch_size`` → ``--train.batch-size``: config keys take dashes or
    underscores, argparse knows the dashed form."""
    out = []
    for token in argv:
        name, eq, value = token.partition("=")
        if token.startswith("--") and "." in name:
            section, _, key = name[2:].partition(".")
            token = f"--{section}.{_dashed(key)}{eq}{value}"
        out.append(token)
    return out


def _help_text(text: str, default: str | None) -> str:
    shown = f"{text} (default: {default})" if default is not None else text
    return shown.replace("%", "%%")


def add_section_options(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: dict[str, str],
    *,
    short_names: bool = False,
    skip: Sequence[str] = (),
) -> None:
    """One option per field of section ``cls``: ``--section.key`` and the field's own flag
    (``short_names``: ``--key`` instead, for a command about that section alone), with the
    field's help and its value in ``defaults`` (the ini texts merged for the chosen env).
    Options not given leave no attribute; :func:`given_settings` collects the given ones."""
    section = section_name(cls)
    group = parser.add_argument_group(f"[{section}] settings", (cls.__doc__ or "").strip())
    for field in option_fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        dotted = f"{section}.{field.name}"
        names = (
            [f"--{_dashed(field.name)}"] if short_names else [f"--{section}.{_dashed(field.name)}"]
        )
        flag = meta.get("flag")
        switch = flag is not None and type_name(field_type(cls, field.name)) == "BOOL"
        if flag and not switch and not short_names:
            names.insert(0, flag)
        group.add_argument(
            *names,
            dest=CONFIG_DEST + dotted,
            default=argparse.SUPPRESS,
            choices=meta.get("choices"),
            metavar=None
            if meta.get("choices")
            else meta.get("metavar") or type_name(field_type(cls, field.name)),
            help=_help_text(
                meta["help"], _shown(defaults.get(field.name), field_type(cls, field.name))
            ),
        )
        if flag and switch and not short_names:  # --break-symmetry: a switch for a boolean
            group.add_argument(
                flag,
                dest=CONFIG_DEST + dotted,
                action="store_const",
                const="True",
                default=argparse.SUPPRESS,
                help=f"same as --{section}.{_dashed(field.name)} True",
            )


def _shown(text: str | None, annotation: Any = None) -> str | None:
    return None if text is None else shown_value(text, annotation)


def add_env_options(parser: argparse.ArgumentParser, defaults: dict[str, str]) -> None:
    """``--env.KEY`` for the chosen env's constructor settings (declared by its ini files)."""
    if not defaults:
        return
    group = parser.add_argument_group("[env] settings", "the chosen environment's constructor")
    for key, text in defaults.items():
        group.add_argument(
            f"--env.{_dashed(key)}",
            dest=f"{CONFIG_DEST}env.{key}",
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=_help_text(ENV_HELP, shown_value(text)),
        )


def given_settings(ns: argparse.Namespace) -> dict[str, str]:
    """``{"train.batch_size": "2048", ...}``: the generated options given on the command line."""
    return {k[len(CONFIG_DEST) :]: v for k, v in vars(ns).items() if k.startswith(CONFIG_DEST)}


def _peek(argv: Sequence[str], option: str) -> str | None:
    """The value of ``option`` in ``argv`` before parsing (the defaults shown depend on it)."""
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


def help_defaults(env: str | None, config: str | None) -> dict[str, dict[str, str]]:
    """The ini texts shown as defaults: those merged for ``env`` (the base file when it is not
    a known env) and a ``--config`` file that exists."""
    extra = [Path(config)] if config and Path(config).is_file() else []
    try:
        if env is not None:
            return merged_settings(env, extra_files=extra)[0]
        return merge_files([CONFIG_DIR / "default.ini", *extra])
    except (ConfigError, EnvError):  # reported when the command runs
        try:
            return merge_files([CONFIG_DIR / "default.ini"])
        except ConfigError:
            return {s: {} for s in section_names()}


# ----------------------------------------------------------------------------------------------
# demo.py / pufferfiber train / pufferfiber eval


def build_parser(
    argv: Sequence[str] = (), *, prog: str = "demo.py", mode: str | None = None
) -> argparse.ArgumentParser:
    """The training / evaluation parser; its config defaults are those of ``--env`` in
    ``argv`` (so ``--env beam_rider --help`` shows beam_rider's batch size). ``mode`` fixes
    ``--mode`` (the ``train`` and ``eval`` subcommands)."""
    env = _peek(argv, "--env") or DEFAULT_ENV
    defaults = help_defaults(env, _peek(argv, "--config"))
    parser = Parser(
        prog=prog,
        usage="%(prog)s [options]",
        description="Train PufferLib agents (PPO + LSTM), evaluate them, and collapse them with "
        f"symmetry fibrations. Setting defaults shown are those of --env {env}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if mode is None:
        parser.add_argument(
            "--mode",
            choices=("train", "eval"),
            default="train",
            help="train (default) or eval (play episodes with a checkpoint)",
        )
    parser.set_defaults(mode=mode or "train")
    parser.add_argument(
        "--env",
        default=DEFAULT_ENV,
        help="environment: cartpole, an Ocean game (puffer_pong, puffer_breakout) or an Atari "
        f"game such as beam_rider (default: {DEFAULT_ENV})",
    )
    parser.add_argument(
        "--vec",
        choices=VEC_BACKENDS,
        default=None,
        help="vectorisation backend (default: serial, or the run's own with --resume; ray "
        "needs the 'ray' extra)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="an ini file merged after the env's own (same sections and keys), before the "
        "command line",
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
    for cls in section_classes().values():
        add_section_options(parser, cls, defaults.get(section_name(cls), {}))
    add_env_options(parser, defaults.get("env", {}))
    return parser


@dataclass
class Args:
    """Parsed command line: options plus the ``--section.key`` settings given."""

    ns: argparse.Namespace
    overrides: dict[str, str]


def parse_args(argv: Sequence[str], *, prog: str = "demo.py", mode: str | None = None) -> Args:
    argv = normalise_argv(argv)
    ns, rest = build_parser(argv, prog=prog, mode=mode).parse_known_args(argv)
    # what argparse does not know is either an unknown key (named with its closest match by
    # load_config) or a stray token
    overrides = {**parse_overrides(rest), **given_settings(ns)}
    if ns.eval_episodes < 1:
        raise UsageError("--eval-episodes must be at least 1")
    return Args(ns, overrides)


# ----------------------------------------------------------------------------------------------
# Building blocks


def build_vecenv(cfg: RunConfig) -> Any:
    """The vector env of ``cfg``; its ``[env]`` settings go to the environment's constructor."""
    from pufferlib.exceptions import APIUsageError

    from pufferfiber.envs.registry import make_vecenv

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
    log_name: str = LOG,
    meta: dict[str, Any] | None = None,
    hooks: Sequence[Any] = (),
) -> int:
    """Train ``policy`` in ``run_dir`` (a new or resumed run); returns the exit code.

    ``hooks`` are per-epoch trainer hooks (e.g. symmetry breaking), see ``Trainer``."""
    from pufferfiber.rl.trainer import Trainer, TrainingInterrupted

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

    from pufferfiber.io.checkpoints import list_checkpoints, locked_run, new_run_dir

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

    from pufferfiber.core.policy import Policy
    from pufferfiber.envs.registry import architecture_for

    _note_schedule(cfg)
    with opened_vecenv(cfg) as vecenv:
        torch.manual_seed(cfg.train.seed)
        policy = Policy(architecture_for(cfg.env_name, vecenv, rnn=cfg.policy.rnn))
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
    from pufferfiber.io.checkpoints import find_run, load_trainer_state, locked_run
    from pufferfiber.rl.callbacks import restore_hook_states
    from pufferfiber.rl.trainer import trim_metrics

    overrides = overrides or {}
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, exp_id)
    with locked_run(run_dir):
        state = load_trainer_state(run_dir) or {}
        epoch, path = _resume_point(run_dir, state)
        ckpt = _load_latest(run_dir, path, allow_pickle, cfg.env_name)
        check_same_network(ckpt, overrides)  # before resumed_config reports the changes
        cfg = keep_network(resumed_config(cfg, ckpt, overrides, backend, state), ckpt)
        _check_device(cfg)
        optimizer_state = state.get("optimizer") if state.get("epoch") == epoch else None
        if optimizer_state is None:
            _say(f"warning: no optimizer state for epoch {epoch} in {run_dir}; fresh Adam moments")
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
            _say(f"{run_dir.name} already finished at epoch {epoch} (schedule ends at {end_epoch})")
            return 0
        log_name = LOG_COLLAPSED if (run_dir / LOG_COLLAPSED).exists() else LOG
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
    from pufferfiber.io.checkpoints import list_checkpoints

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
    from pufferfiber.io.checkpoints import CheckpointError, list_checkpoints, load_checkpoint

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
        _say(
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
        _say(f"resume: the run's settings, except {', '.join(changes)} (given now)")
    for name, before, now in (
        ("symmetry breaking", original.breaking, resumed.breaking),
        ("ReDo", original.redo, resumed.redo),
    ):
        if before.enabled and now.enabled and f"{now.SECTION}.enabled" not in overrides:
            _say(f"resume: {name} continues with the run's settings {dataclasses.asdict(now)}")
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
        raise UsageError(
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
    from pufferfiber.envs.registry import architecture_for
    from pufferfiber.io.checkpoints import check_fits_env as check

    check(ckpt, architecture_for(ckpt.env, vecenv), ckpt.env)


def _check_device(cfg: RunConfig) -> None:
    from pufferfiber.rl.trainer import resolve_device

    resolve_device(cfg.train.device)


def train_collapsed(cfg: RunConfig, exp_id: str | None, allow_pickle: bool) -> int:
    """``--collapse τ``: collapse the checkpoint closest to ``--collapse-epoch`` of the run, then
    train the collapsed policy (fresh optimizer, same hyperparameters) to ``--collapse-until``
    in a new run folder inside the collapse folder."""
    from pufferfiber.io.checkpoints import closest_checkpoint, find_run, load_checkpoint

    c = cfg.collapse
    hooks = training_hooks(cfg)
    run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, exp_id)
    epoch, path = closest_checkpoint(run_dir, c.epoch)
    if epoch != c.epoch:
        _say(
            f"--collapse-epoch {c.epoch}: no checkpoint of that epoch; using the "
            f"closest, {path.name} ({abs(epoch - c.epoch)} epochs away)"
        )
    until = cfg.train.end_epoch if c.until is None else c.until
    if until <= epoch:
        raise UsageError(f"--collapse-until ({until}) must be after the collapsed epoch ({epoch})")
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle, expect_env=cfg.env_name)
    cfg = keep_network(cfg, ckpt)
    check_hooks(hooks, ckpt.policy)  # layer names survive the collapse
    with opened_vecenv(cfg) as vecenv:
        check_fits_env(ckpt, vecenv)
        collapsed = collapse_checkpoint(ckpt, run_dir, epoch, cfg)
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
                log_name=LOG_COLLAPSED,
                meta=collapsed.meta,
                hooks=hooks,
            )


def collapse_options(c: CollapseConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`~pufferfiber.workflows.collapse.collapse_to_folder` that the
    ``[collapse]`` section sets (threshold and output folder aside)."""
    options = {}
    if c.criterion == "data":
        options = {
            "fit": c.fit,
            "pivot": c.pivot,
            "calibration_batch": c.calibration_batch,
            "calibration_steps": c.calibration_steps,
        }
    return {
        "flatten_colours": c.flatten_colours,
        "layers": c.layer_list,
        "max_lstm_rounds": c.lstm_rounds,
        "lstm_criterion": c.lstm_criterion,
        "criterion": c.criterion,
        "criterion_options": options,
        "fidelity_episodes": c.episodes_played,
        "fidelity_batch": c.fidelity_batch,
        "fidelity_steps": c.fidelity_steps,
    }


def collapse_checkpoint(ckpt: Any, run_dir: Path, epoch: int, cfg: RunConfig) -> Any:
    """Write ``run_dir/collapsed_model_thr_TT_EEEEEE/`` (model, fibers.pkl, fidelity.json) as
    ``cfg.collapse`` says; returns the collapsed checkpoint."""
    from pufferfiber.rl.trainer import resolve_device
    from pufferfiber.workflows.collapse import collapse_folder_name, collapse_to_folder

    tau = cfg.collapse.threshold
    out_dir = run_dir / collapse_folder_name(tau, epoch)
    _say(f"collapsing {run_dir.name}/{ckpt.path.name} at threshold {tau} into {out_dir.name}")
    try:
        result = collapse_to_folder(
            ckpt,
            tau,
            out_dir,
            seed=cfg.train.seed,
            overwrite=True,  # re-collapsing replaces the three files, keeps earlier runs inside
            echo=False,
            device=resolve_device(cfg.train.device),
            **collapse_options(cfg.collapse),
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

    from pufferfiber.io.checkpoints import find_run, load_checkpoint
    from pufferfiber.rl.evaluate import play_episodes
    from pufferfiber.rl.trainer import resolve_device

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


def _latest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    from pufferfiber.io.checkpoints import CheckpointError, list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints ({CHECKPOINT_GLOB}) in {run_dir}")
    return found[-1]


def dispatch(args: Args) -> int:
    ns = args.ns
    cfg = load_config(
        ns.env,
        args.overrides,
        backend=ns.vec or "serial",
        extra_files=[ns.config] if ns.config else (),
    )
    collapse = cfg.collapse.threshold != 0
    if collapse and ns.mode != "train":
        raise UsageError("--collapse works with --mode train")
    if ns.resume and ns.mode == "train" and not collapse:
        # the run's own settings are known only once its checkpoint is read
        return train_resume(cfg, ns.exp_id, ns.allow_pickle, args.overrides, ns.vec)
    hooks = training_hooks(cfg, args.overrides)  # settings checked before any work
    _check_device(cfg)  # before any folder is created
    if ns.mode == "eval":
        return evaluate(cfg, ns)
    if collapse:
        return train_collapsed(cfg, ns.exp_id, ns.allow_pickle)
    return train_new(cfg, hooks)


def check_hooks(hooks: Sequence[Any], policy: Any) -> None:
    """Let hooks with a ``check(policy)`` method validate their settings before any training."""
    for hook in hooks:
        if hasattr(hook, "check"):
            try:
                hook.check(policy)
            except ValueError as exc:
                raise UsageError(str(exc)) from None


def training_hooks(cfg: RunConfig, given: dict[str, str] | None = None) -> list[Any]:
    """Per-epoch hooks of the run's settings: symmetry breaking (``[break] enabled``) and ReDo
    (``[redo] enabled``). ``given``: the settings on this command line; ``--break.*`` without
    breaking (``--redo.*`` without ReDo) is an error."""
    for section, switch, what in (
        ("break", cfg.breaking.enabled, "--break-symmetry (symmetry breaking is off)"),
        ("redo", cfg.redo.enabled, "--redo (ReDo is off)"),
    ):
        stray = sorted(
            k for k in given or {} if k.startswith(f"{section}.") and k != f"{section}.enabled"
        )
        if stray and not switch:
            raise UsageError(f"--{stray[0].replace('_', '-')} needs {what}")
    return hooks_from(cfg.breaking, cfg.redo, cfg.train.seed)


def hooks_from(breaking: BreakConfig, redo: RedoConfig, seed: int) -> list[Any]:
    """The hooks that ``breaking`` and ``redo`` switch on (``UsageError`` for a bad value)."""
    from pufferfiber.rl.breaking import SymmetryBreaker
    from pufferfiber.rl.redo import DormantReset

    b, r = breaking, redo
    hooks: list[Any] = []
    try:
        if b.enabled:
            hooks.append(
                SymmetryBreaker(
                    interval=b.interval,
                    fiber_threshold=b.fiber_threshold,
                    opfiber_threshold=b.opfiber_threshold,
                    maturity=b.maturity,
                    fraction=b.fraction,
                    layers=parse_layers(b.layers),
                    seed=seed,
                )
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if r.enabled:
            layers = parse_layers(r.layers)
            hooks.append(DormantReset(tau=r.tau, interval=r.interval, layers=layers, seed=seed))
    except ValueError as exc:
        raise UsageError(f"--redo: {exc}") from None
    return hooks


def main(
    argv: Sequence[str] | None = None, *, prog: str = "demo.py", mode: str | None = None
) -> int:
    """``demo.py`` (and ``pufferfiber train|eval`` with ``mode``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(prog, lambda: dispatch(parse_args(argv, prog=prog, mode=mode)))


# ----------------------------------------------------------------------------------------------
# pufferfiber collapse


def collapse_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``pufferfiber collapse``: its own options and the ``[collapse]`` settings as ``--KEY``
    (defaults: ``default.ini``, with ``--env`` that env's files, then ``--config``)."""
    env = _peek(argv, "--env")
    defaults = help_defaults(env, _peek(argv, "--config"))
    p = Parser(
        prog="pufferfiber collapse",
        description="Find the fibers of a checkpoint, collapse each fiber to one unit and write "
        "the collapsed model, fibers.pkl and fidelity.json (KL, value error, return before "
        "retraining) into one folder.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a pufferfiber checkpoint (model_XXXXXX.pt), or a PufferLib 2.0 pickled "
        "one with --allow-pickle",
    )
    p.add_argument(
        "--threshold",
        "-t",
        required=True,
        metavar="TAU",
        help="cosine-distance threshold τ in [0, 2]: 0 = exact fibers only (the function is "
        "unchanged); larger merges more units. With --criterion data: the largest relative fit "
        "error of a removed unit",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: collapsed_model_thr_<TT>_<EPOCH> beside the checkpoint)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow importing a PufferLib 2.0 whole-module checkpoint (unpickling "
        "runs code from the file: only for files you trust)",
    )
    p.add_argument(
        "--env",
        help="environment name; needed when a pickled checkpoint's folder "
        "does not say it (default: the checkpoint's own env)",
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="an ini file with a [collapse] section"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the envs and action sampling")
    p.add_argument(
        "--device",
        default="auto",
        help="where the fibers' pairwise products and the fidelity run: auto (CUDA when "
        "present, else CPU), cpu, cuda or cuda:N (default %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the output of an earlier collapse in --out (the folder as a whole; "
        "resumed runs inside are kept)",
    )
    add_section_options(
        p,
        CollapseConfig,
        defaults.get("collapse", {}),
        short_names=True,
        skip=("threshold", *CollapseConfig.TRAINING_ONLY),
    )
    return p


def _collapse(argv: list[str]) -> int:
    from pufferfiber.envs.registry import check_env_name
    from pufferfiber.io.checkpoints import load_checkpoint
    from pufferfiber.rl.trainer import resolve_device
    from pufferfiber.workflows.collapse import collapse_folder_name, collapse_to_folder

    args = collapse_parser(argv).parse_args(argv)
    given = {**given_settings(args), "collapse.threshold": args.threshold}
    if args.env is not None:
        check_env_name(args.env)
    try:
        settings = load_section(
            CollapseConfig,
            given,
            env_name=args.env,
            extra_files=[args.config] if args.config else (),
        )
    except ConfigError as exc:  # name the settings as this command's options (--lstm-rounds)
        short = re.sub(r"\bcollapse\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(exc))
        raise UsageError(short) from None
    ckpt = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle, expect_env=args.env)
    check_fits_env(ckpt)
    threshold = settings.threshold
    out = args.out or args.checkpoint.parent / collapse_folder_name(threshold, ckpt.epoch)
    try:
        result = collapse_to_folder(
            ckpt,
            threshold,
            out,
            seed=args.seed,
            replace=args.force,
            device=resolve_device(args.device),
            **collapse_options(settings),
        )
    except (ValueError, KeyError) as exc:  # the pipeline's one-line input errors
        raise UsageError(_one_line(exc)) from None
    except KeyboardInterrupt:
        _say("interrupted: nothing was written")
        return EXIT_INTERRUPTED
    print(f"wrote {result.out_dir}/ ({result.checkpoint.path.name}, fibers.pkl, fidelity.json)")
    return 0


def collapse_main(argv: Sequence[str] | None = None) -> int:
    """``pufferfiber collapse``; returns the exit code (bad input: one line, code 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command("collapse", lambda: _collapse(argv))


# ----------------------------------------------------------------------------------------------
# pufferfiber COMMAND


USAGE = """usage: pufferfiber COMMAND [options]     (or: python -m pufferfiber COMMAND ...)

commands:
  train      train a PPO + LSTM agent, resume a run, or collapse-and-retrain (--collapse TAU)
  eval       play episodes with a checkpoint and print the mean return
  collapse   find the fibers of a checkpoint, write the collapsed model, fibers.pkl, fidelity.json
  report     plot original vs collapsed training of an experiment folder (PNG or HTML), or
             aggregate the seeds of a sweep folder
  sweep      the guide's protocol over env x threshold x criterion x seed, on Ray Tune

Run 'pufferfiber COMMAND --help' for a command's options; 'train' and 'eval' take the options
of 'python demo.py' (the guide's entry point) without --mode."""


def _commands() -> dict[str, Callable[[list[str]], int]]:
    from pufferfiber.experiments import report, sweep

    return {
        "train": lambda argv: main(argv, prog="train", mode="train"),
        "eval": lambda argv: main(argv, prog="eval", mode="eval"),
        "collapse": collapse_main,
        "report": report.main,
        "sweep": sweep.main,
    }


def console_main(argv: Sequence[str] | None = None) -> int:
    """The ``pufferfiber`` command and ``python -m pufferfiber``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    commands = _commands()
    if argv[0] not in commands:
        _say(f"pufferfiber: error: unknown command {argv[0]!r} (choose {', '.join(commands)})")
        return EXIT_BAD_INPUT
    return commands[argv[0]](argv[1:])
