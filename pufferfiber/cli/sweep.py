"""``pufferfiber sweep``: the command line of :mod:`pufferfiber.experiments.sweep`.

Parses and validates the grid (``--env``, ``--thresholds`` or ``--targets``, ``--criterion``,
...) into a :class:`~pufferfiber.experiments.sweep.SweepSpec`, then hands it to the library,
which runs the cells on Ray Tune and writes ``summary.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from pufferfiber.cli.common import Parser, normalise_argv, run_command
from pufferfiber.config.sections import (
    FLATTEN_COLOURS,
    parse_overrides,
    validate_target,
    validate_threshold,
)
from pufferfiber.core.criteria import CRITERIA, DEFAULT_CRITERION, check_criterion
from pufferfiber.experiments.sweep import (
    CONTROLS,
    DEFAULT_FLATTEN,
    INTERVENTIONS,
    PROTOCOLS,
    Arm,
    SweepError,
    SweepSpec,
    check_cluster_options,
    check_intervention_options,
    check_out,
    check_schedule,
    collapse_point,
    final_epoch,
    oversubscribed,
    prepare_out,
    run_sweep,
    start_ray,
    stop_ray,
    unfinished_cells,
    write_summary,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m pufferfiber sweep",
        description="Run the guide's protocol (train to the end of the schedule, collapse the "
        "checkpoint near --collapse-epoch, train the collapsed network to the same final epoch, "
        "evaluate) for every env × threshold × criterion × flatten colouring × seed, on Ray "
        "Tune; --protocol trained also collapses the final checkpoint and fine-tunes it, and "
        "--controls adds networks of the same sizes trained from scratch or cut at random. "
        "Writes the runs and summary.csv into --out; 'python -m pufferfiber report OUT' "
        "aggregates the seeds. Extra --SECTION.KEY settings (--train.KEY, --env.KEY...) go to "
        "every run (see 'pufferfiber train --env ENV --help'); --break.KEY / --redo.KEY set "
        "the interventions.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--env", required=True,
        help="environment(s), comma-separated, e.g. puffer_pong or puffer_pong,puffer_breakout",
    )  # fmt: skip
    p.add_argument(
        "--thresholds", default=None, metavar="TAU[,TAU...]",
        help="collapse thresholds τ in (0, 2], comma-separated, e.g. 0.1,0.3; CRITERION:TAU is a "
             "threshold of that criterion only (default: none, only the originals are trained)",
    )  # fmt: skip
    p.add_argument(
        "--targets", default=None, metavar="F[,F...]",
        help="size targets in (0, 1], fractions of the full model's parameters, comma-separated, "
             "e.g. 0.5,0.2,0.1,0.05: an alternative to --thresholds (each arm keeps that share; "
             "summary.csv gives the τ it corresponded to); CRITERION:F is a size of that "
             "criterion only, e.g. 0.5,0.2,weights:0.1 with --criterion data,weights",
    )  # fmt: skip
    p.add_argument(
        "--interventions", default="none", metavar="NAME[,NAME...]",
        help=f"what runs during training, comma-separated: {', '.join(INTERVENTIONS)} (symmetry "
             "breaking on fibers, on fibers and opfibers, ReDo); settings with demo.py's "
             "--break.KEY / --redo.KEY options (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=5, metavar="N",
        help="seeds 1..N for every cell (default: 5)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="sweep folder")
    p.add_argument(
        "--criterion", default=DEFAULT_CRITERION, metavar="NAME[,NAME...]",
        help=f"collapse criteria, comma-separated; choices: {', '.join(CRITERIA)} "
             f"(default: {DEFAULT_CRITERION})",
    )  # fmt: skip
    p.add_argument(
        "--flatten-colours", default=DEFAULT_FLATTEN, metavar="MODE[,MODE...]",
        help="conv->Linear colourings, comma-separated: positions, pooled (default: positions; "
             "no effect on MLP policies)",
    )  # fmt: skip
    p.add_argument(
        "--collapse-epoch", type=int, default=50,
        help="collapse the checkpoint closest to this epoch (default: 50)",
    )  # fmt: skip
    p.add_argument(
        "--collapse-until", type=int, default=None,
        help="last epoch of every run (default: the schedule's last epoch, "
             "total_timesteps / batch_size)",
    )  # fmt: skip
    p.add_argument(
        "--protocol", default="guide", metavar="NAME[,NAME...]",
        help="protocols, comma-separated: guide (collapse near --collapse-epoch, train to the "
             "schedule's end), trained (collapse the final checkpoint and fine-tune "
             "--finetune-epochs, beside the original fine-tuned as long) (default: guide)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-epochs", type=int, default=None, metavar="K",
        help="epochs of fine-tuning in --protocol trained (default: 10 %% of the schedule's "
             "epochs, at least 1)",
    )  # fmt: skip
    p.add_argument(
        "--controls", default=None, metavar="NAME[,NAME...]",
        help="controls at the widths of every collapsed arm, comma-separated: scratch (those "
             "sizes freshly initialised, trained for the arm's total epochs), random (random "
             "units kept with their trained weights, trained like the arm) (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--controls-at", default=None, metavar="F[,F...]",
        help="only the arms of these sizes (values of --targets or --thresholds) get the "
             "controls; CRITERION:F names one criterion's arm, e.g. data:0.2,data:0.05 "
             "(default: every arm)",
    )  # fmt: skip
    p.add_argument(
        "--eval-episodes", type=int, default=20, metavar="N",
        help="episodes played by each final policy (default: 20)",
    )  # fmt: skip
    p.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="attach to this Ray cluster (e.g. auto or ray://host:10001); pufferfiber must be "
             "installed on its nodes and --out reachable by them (default: start a local Ray)",
    )  # fmt: skip
    p.add_argument(
        "--num-cpus", type=int, default=None, metavar="N",
        help="CPUs of the local Ray (default: all of this machine's cores; more than the cores "
             "makes cells share them: each trains slower, and SPS measures the sharing)",
    )  # fmt: skip
    p.add_argument(
        "--cpus-per-cell", type=float, default=1.0, metavar="N",
        help="CPUs reserved for each env × seed cell (default: 1)",
    )  # fmt: skip
    return p


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _sizes(
    text: str | None, option: str, validate: Callable[[str, str], float], criteria: list[str]
) -> list[tuple[str | None, float]]:
    """``--thresholds`` / ``--targets`` as ``(criterion, size)``: ``F`` is a size of every
    criterion (``None``), ``CRITERION:F`` a size of that criterion only."""
    sizes = []
    for item in _split(text or ""):
        criterion, _, value = item.rpartition(":")
        if criterion and criterion not in criteria:
            raise SweepError(f"{option} {item}: {criterion!r} is not a --criterion of this sweep")
        sizes.append((criterion or None, validate(value, option)))
    return sizes


def _control_sizes(text: str | None, controls: list[str], arms: tuple[Arm, ...]) -> tuple[str, ...]:
    """``--controls-at`` as ``"F"`` / ``"CRITERION:F"`` entries, each naming at least one arm."""
    if text is None:
        return ()
    if not controls:
        raise SweepError("--controls-at needs --controls")
    entries = []
    for item in _split(text) or [""]:
        criterion, _, value = item.rpartition(":")
        try:
            entry = f"{criterion}:{float(value):g}" if criterion else f"{float(value):g}"
        except ValueError:
            raise SweepError(f"--controls-at takes F or CRITERION:F, got {item!r}") from None
        if not any(a.at(entry) for a in arms):
            raise SweepError(f"--controls-at {item}: no arm of the sweep has that size")
        entries.append(entry)
    return tuple(dict.fromkeys(entries))


def spec_from_args(argv: Sequence[str]) -> tuple[SweepSpec, argparse.Namespace]:
    """The validated grid of a command line (``SweepError`` / ``ConfigError`` on bad input)."""
    ns, rest = build_parser().parse_known_args(normalise_argv(argv))
    check_cluster_options(ns.ray_address, ns.num_cpus)
    overrides = parse_overrides(rest)
    options = {k: v for k, v in overrides.items() if k.split(".")[0] in ("break", "redo")}
    overrides = {k: v for k, v in overrides.items() if k not in options}
    envs = _split(ns.env)
    if ns.thresholds is not None and ns.targets is not None:
        raise SweepError("give either --thresholds or --targets, not both")
    try:
        criteria = list(dict.fromkeys(check_criterion(c) for c in _split(ns.criterion)))
        thresholds = _sizes(ns.thresholds, "--thresholds", validate_threshold, criteria)
        targets = _sizes(ns.targets, "--targets", validate_target, criteria)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    if (ns.thresholds is not None and not thresholds) or any(t == 0 for _, t in thresholds):
        raise SweepError("--thresholds needs one or more τ in (0, 2] (the original is always run)")
    if ns.targets is not None and not targets:
        raise SweepError("--targets needs one or more fractions in (0, 1]")
    interventions = list(dict.fromkeys(_split(ns.interventions)))
    bad = [i for i in interventions if i not in INTERVENTIONS]
    if bad or not interventions:
        raise SweepError(f"--interventions must be among {', '.join(INTERVENTIONS)}")
    check_intervention_options(options, interventions)
    colours = _split(ns.flatten_colours)
    bad = [c for c in colours if c not in FLATTEN_COLOURS]
    if bad or not colours:
        raise SweepError(f"--flatten-colours must be among {', '.join(FLATTEN_COLOURS)}")
    if ns.seeds < 1 or ns.eval_episodes < 1 or ns.cpus_per_cell <= 0:
        raise SweepError("--seeds, --eval-episodes and --cpus-per-cell must be positive")
    if not envs:
        raise SweepError("--env needs at least one environment")
    protocols = list(dict.fromkeys(_split(ns.protocol)))
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        raise SweepError(f"--protocol must be among {', '.join(PROTOCOLS)}, got {ns.protocol!r}")
    controls = list(dict.fromkeys(_split(ns.controls or "")))
    if ns.controls is not None and (not controls or any(c not in CONTROLS for c in controls)):
        raise SweepError(f"--controls must be among {', '.join(CONTROLS)}, got {ns.controls!r}")
    if ns.finetune_epochs is not None:
        if "trained" not in protocols:
            raise SweepError("--finetune-epochs needs --protocol trained")
        if ns.finetune_epochs < 1:
            raise SweepError(f"--finetune-epochs must be at least 1, got {ns.finetune_epochs}")
    # (threshold, target, the size as asked): thresholds rising, targets falling
    sizes = [(t, None, t) for t in sorted({t for _, t in thresholds})] + [
        (0.0, f, f) for f in sorted({f for _, f in targets}, reverse=True)
    ]
    asked = set(thresholds) | set(targets)  # (criterion, size); criterion None: every criterion
    arms = tuple(
        Arm(t, c, f, target)
        for t, target, size in sizes
        for c in criteria
        if (None, size) in asked or (c, size) in asked
        for f in dict.fromkeys(colours)
    )
    if controls and not arms:
        raise SweepError("--controls need collapsed arms: give --thresholds or --targets")
    control_sizes = _control_sizes(ns.controls_at, controls, arms)
    spec = SweepSpec(
        out=str(ns.out.resolve()),
        envs=tuple(dict.fromkeys(envs)),
        seeds=tuple(range(1, ns.seeds + 1)),
        arms=arms,
        collapse_epoch=ns.collapse_epoch,
        collapse_until=ns.collapse_until,
        eval_episodes=ns.eval_episodes,
        overrides=tuple(sorted(overrides.items())),
        interventions=tuple(interventions),
        intervention_options=tuple(sorted(options.items())),
        protocols=tuple(protocols),
        finetune_epochs=ns.finetune_epochs,
        controls=tuple(controls),
        control_sizes=control_sizes,
    )
    for env in spec.envs:
        check_schedule(spec, env, checkpoints=False)
    if "train.checkpoint_interval" not in overrides and any(
        collapse_point(spec, env) >= final_epoch(spec, env) for env in spec.envs
    ):
        # e.g. cartpole saves every 10 epochs: a short sweep still needs its collapse checkpoint
        print(
            f"sweep: note: --train.checkpoint-interval {spec.collapse_epoch} so that a checkpoint "
            "exists at the collapse epoch",
            file=sys.stderr,
        )
        extra = {**overrides, "train.checkpoint_interval": str(spec.collapse_epoch)}
        spec = replace(spec, overrides=tuple(sorted(extra.items())))
    for env in spec.envs:
        check_schedule(spec, env)
    return spec, ns


def main(argv: list[str] | None = None) -> int:
    """``pufferfiber sweep``; returns the exit code (bad input: one line, code 2)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_command("sweep", lambda: _sweep(argv), errors=(SweepError,))


def _interrupted(spec: SweepSpec) -> int:
    """Ctrl-C: the finished cells' summary, how to go on, and the shell's code for SIGINT."""
    path, n = write_summary(spec)
    print(f"sweep: interrupted; {n} rows in {path}; run the same command again", file=sys.stderr)
    return 130


def _sweep(argv: list[str]) -> int:
    spec, ns = spec_from_args(argv)
    check_out(spec)  # a different sweep in --out is refused before Ray starts
    if warning := oversubscribed(ns.num_cpus):
        print(warning, file=sys.stderr)
    start_ray(ns.ray_address, ns.num_cpus, ns.cpus_per_cell)  # bad cluster input: no folder made
    try:
        prepare_out(spec)
        start = time.perf_counter()
        try:
            errors = run_sweep(spec, ns.cpus_per_cell)
        except KeyboardInterrupt:
            return _interrupted(spec)
        if not errors and unfinished_cells(spec):  # Tune caught the Ctrl-C and returned
            return _interrupted(spec)
    finally:
        stop_ray()
    path, n = write_summary(spec)
    print(f"sweep: {n} rows in {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    for error in errors:
        print(f"sweep: a cell failed: {error}", file=sys.stderr)
    if errors:
        print("sweep: run the same command again to retry the failed cells", file=sys.stderr)
        return 1
    return 0
