"""The command line: ``demo.py`` (the guide's), the ``pufferfiber`` command and their errors.

    python demo.py --mode train --vec multiprocessing --env beam_rider > log.out 2> log.err
    python demo.py --mode train --env beam_rider --resume [--exp-id ID]
    python demo.py --mode train --env beam_rider --collapse 0.3 > log_collapsed.out
    python demo.py --mode eval --env beam_rider [--eval-model-path PATH] [--eval-episodes N]

    pufferfiber train|eval [the options of demo.py but --mode]
    pufferfiber collapse CHECKPOINT -t TAU      (also: python -m pufferfiber ...)
    pufferfiber report EXPERIMENT_DIR | SWEEP_DIR
    pufferfiber sweep --env ENV --thresholds TAU,... --out DIR
    pufferfiber export CHECKPOINT --format puffernet|torchscript --out DIR

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
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from pufferfiber.cli import export as export_cli  # noqa: E402
from pufferfiber.cli import report as report_cli  # noqa: E402
from pufferfiber.cli.common import (  # noqa: E402
    EXIT_BAD_INPUT,
    Parser,
    UsageError,
    add_checkpoint_format_option,
    normalise_argv,
    run_command,
)
from pufferfiber.config.sections import (  # noqa: E402
    CONFIG_DIR,
    ENV_HELP,
    CollapseConfig,
    ConfigError,
    RunConfig,
    field_type,
    load_config,
    load_section,
    merge_files,
    merged_settings,
    option_fields,
    parse_overrides,
    section_classes,
    section_name,
    section_names,
    shown_value,
    type_name,
)
from pufferfiber.envs.registry import (  # noqa: E402
    OCEAN_ENVS,
    VEC_BACKENDS,
    EnvError,
    check_env_name,
)
from pufferfiber.io.atomic import CheckpointError  # noqa: E402
from pufferfiber.io.checkpoints import find_run, load_checkpoint  # noqa: E402
from pufferfiber.rl.evaluate import play_episodes  # noqa: E402
from pufferfiber.workflows.hooks import training_hooks  # noqa: E402
from pufferfiber.workflows.job import JobKind, TrainJob, run_job  # noqa: E402
from pufferfiber.workflows.train import (  # noqa: E402  # noqa: E402
    EXIT_INTERRUPTED,
    check_device,
    check_fits_env,
    latest_checkpoint,
    one_line,
    say,
)

DEFAULT_ENV = "beam_rider"
CONFIG_DEST = "cfg:"  # argparse dest prefix of the generated --section.key options


# ----------------------------------------------------------------------------------------------
# Options generated from the config sections


def _dashed(key: str) -> str:
    return key.replace("_", "-")


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
        help="environment: cartpole, an Ocean game (" + ", ".join(OCEAN_ENVS) + ") or an Atari "
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
    add_checkpoint_format_option(parser)  # for --mode eval's checkpoint
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


def evaluate(cfg: RunConfig, ns: argparse.Namespace) -> int:
    """``--mode eval``: play ``--eval-episodes`` episodes and print mean ± std return."""
    import numpy as np

    from pufferfiber.rl.trainer import resolve_device

    path = ns.eval_model_path
    if path is None:
        run_dir = find_run(Path(cfg.train.data_dir), cfg.env_name, ns.exp_id)
        path = latest_checkpoint(run_dir)[1]
    ckpt = load_checkpoint(
        path,
        allow_pickle=ns.allow_pickle,
        expect_env=cfg.env_name,
        checkpoint_format=ns.checkpoint_format,
    )
    check_fits_env(ckpt)
    if cfg.train.torch_threads:
        import torch

        # the ini's thread count, as training uses: torch's default (every core) made enduro's
        # evaluation ~40x slower on the shared 2-core machine (cores oversubscribed)
        torch.set_num_threads(cfg.train.torch_threads)
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


def dispatch(args: Args) -> int:

    ns = args.ns
    cfg = load_config(
        ns.env,
        args.overrides,
        backend=ns.vec or "serial",
        extra_files=[ns.config] if ns.config else (),
    )
    collapse = cfg.collapse.enabled
    if collapse and ns.mode != "train":
        raise UsageError("--collapse and --collapse.target work with --mode train")
    if ns.checkpoint_format != "auto" and ns.mode != "eval":
        # training reads only its own run's checkpoints (ours, or 2.0's with --allow-pickle)
        raise UsageError("--checkpoint-format works with --mode eval (and the collapse command)")
    if ns.mode == "eval":
        training_hooks(cfg, args.overrides)  # the same settings checks as a training run
        check_device(cfg)
        return evaluate(cfg, ns)
    kind: JobKind = "collapse" if collapse else "resume" if ns.resume else "new"
    job = TrainJob(kind, cfg, args.overrides, ns.exp_id, ns.vec, ns.allow_pickle)
    return run_job(job)


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
        help="a pufferfiber checkpoint (model_XXXXXX.pt), a PufferLib 2.0 pickled "
        "one with --allow-pickle, or a PufferLib 3.0 state dict",
    )
    p.add_argument(
        "--threshold",
        "-t",
        metavar="TAU",
        help="cosine-distance threshold τ in [0, 2]: 0 = exact fibers only (the function is "
        "unchanged); larger merges more units. With --criterion data: the largest relative fit "
        "error of a removed unit. Give this or --target",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: collapsed_model_thr_<TT>_<EPOCH> beside the checkpoint; "
        "collapsed_model_target_<PP>_<EPOCH> with --target, PP its percentage)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow importing a PufferLib 2.0 whole-module checkpoint (unpickling "
        "runs code from the file: only for files you trust)",
    )
    add_checkpoint_format_option(p)
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
    from pufferfiber.rl.trainer import resolve_device
    from pufferfiber.workflows.collapse import (
        WriteMode,
        collapse_folder_name,
        collapse_to_folder,
        criterion_from_config,
        fidelity_from_config,
    )

    args = collapse_parser(argv).parse_args(argv)
    given = given_settings(args)
    if args.threshold is not None and given.get("collapse.target") is not None:
        raise UsageError("give either --threshold (τ) or --target (a fraction), not both")
    if args.threshold is not None:
        given["collapse.threshold"] = args.threshold
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
    if args.threshold is None and settings.target is None:
        raise UsageError("give --threshold TAU or --target F (a fraction of the parameters)")
    ckpt = load_checkpoint(
        args.checkpoint,
        allow_pickle=args.allow_pickle,
        expect_env=args.env,
        checkpoint_format=args.checkpoint_format,
    )

    if ckpt.arch.activation != "relu":  # e.g. PufferLib 3.0's Default, imported for eval
        raise CheckpointError(
            f"{args.checkpoint}: its encoder uses {ckpt.arch.activation.upper()}; collapse "
            "needs ReLU layers (fold factors of a positively homogeneous activation)"
        )
    check_fits_env(ckpt)
    knob = settings.size_knob
    out = args.out or args.checkpoint.parent / collapse_folder_name(
        knob["threshold"], ckpt.epoch, target=knob["target"]
    )
    try:
        result = collapse_to_folder(
            ckpt,
            criterion_from_config(settings, seed=args.seed),
            out,
            fidelity=fidelity_from_config(settings),
            mode=WriteMode.REPLACE if args.force else WriteMode.NEW,
            seed=args.seed,
            device=resolve_device(args.device),
        )
    except (ValueError, KeyError) as exc:  # the pipeline's one-line input errors
        raise UsageError(one_line(exc)) from None
    except KeyboardInterrupt:
        say("interrupted: nothing was written")
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
  export     a checkpoint as PufferLib C runtime code + weights or TorchScript, parity-checked

Run 'pufferfiber COMMAND --help' for a command's options; 'train' and 'eval' take the options
of 'python demo.py' (the guide's entry point) without --mode."""


def _commands() -> dict[str, Callable[[list[str]], int]]:
    from pufferfiber.cli import sweep as sweep_cli

    return {
        "train": lambda argv: main(argv, prog="train", mode="train"),
        "eval": lambda argv: main(argv, prog="eval", mode="eval"),
        "collapse": collapse_main,
        "report": report_cli.main,
        "sweep": sweep_cli.main,
        "export": export_cli.main,
    }


def console_main(argv: Sequence[str] | None = None) -> int:
    """The ``pufferfiber`` command and ``python -m pufferfiber``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    commands = _commands()
    if argv[0] not in commands:
        say(f"pufferfiber: error: unknown command {argv[0]!r} (choose {', '.join(commands)})")
        return EXIT_BAD_INPUT
    return commands[argv[0]](argv[1:])
