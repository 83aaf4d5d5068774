"""The collapse pipeline: checkpoint → fibers → quotient → folder.

:func:`collapse_to_folder` is what ``demo.py --collapse τ`` and ``pufferfiber collapse`` both
call (their command line is :mod:`pufferfiber.cli.main`, the method docs/method.md): a criterion
(:func:`criterion_from_config` builds one from ``[collapse]``), a :class:`FidelitySpec` for the
frames the result is measured on, and a :class:`WriteMode` for what may already be in the folder.
:func:`collapse` does the work in memory; :func:`write_collapse` writes, into one folder and
atomically (all three or nothing)::

    model_<EPOCH:06d>_collapsed.pt   the collapsed policy (our weights-only checkpoint format)
    fibers.pkl                       the fibers (see :func:`pufferfiber.io.fibersfile.fibers_dict`)
    fidelity.json                    KL, value error, return, sizes (see core.divergence)

Folder names follow the guide: ``collapsed_model_thr_<TT>_<EPOCH:06d>`` with ``TT = 10·τ`` as
two digits (0.3 → ``03``, 1.0 → ``10``); a τ that is not a multiple of 0.1 keeps all its
digits without the point (0.25 → ``025``, 0.125 → ``0125``), which can never clash with a
two-digit name because τ ≤ 2 has a single integer digit.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pufferfiber.config.sections import CollapseConfig
from pufferfiber.core.ablation import RandomUnits, hidden_widths
from pufferfiber.core.clustering import products_on
from pufferfiber.core.colouring import Fibration
from pufferfiber.core.criteria import DataCriterion, FiberCriterion, make_criterion
from pufferfiber.core.datafibers import (
    CALIBRATION_SEED_OFFSET,
    DataFibration,
    stderr_progress,
)
from pufferfiber.core.divergence import fidelity_report, format_fidelity
from pufferfiber.core.policy import Policy
from pufferfiber.core.types import validate_target, validate_threshold
from pufferfiber.io.atomic import atomic_dir, check_writable
from pufferfiber.io.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from pufferfiber.io.fibersfile import fibers_dict, save_fibers
from pufferfiber.io.runfiles import (
    COLLAPSED_MODEL_RE,
    FIBERS,
    FIDELITY,
    collapse_dir_name,
    collapse_target_dir_name,
    collapsed_model_name,
)
from pufferfiber.io.schemas import write_fidelity
from pufferfiber.rl.evaluate import collect_observations, policy_on, return_figures


class WriteMode(enum.Enum):
    """What :func:`write_collapse` may do to a folder that already holds something."""

    NEW = "new"  # the folder must be absent or empty
    UPDATE = "update"  # replace the three files only; keep the rest (a resumed run inside)
    # ``--force``: a folder holding only an earlier collapse's files is replaced as a whole; one
    # that holds more (a resumed run) keeps that, but no collapsed model of another epoch stays
    REPLACE = "replace"


@dataclass(frozen=True)
class FidelitySpec:
    """The frames a collapse is measured on: ``batch × steps`` real frames played by the
    original policy (env seeds ``seed``...), or the given ``observations`` (``[B, T, *obs]``);
    and ``episodes`` played by the collapsed policy for its return (0: none)."""

    episodes: int = 3
    batch: int = 8
    steps: int = 64
    observations: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class CollapseResult:
    """What :func:`collapse` computed and :func:`write_collapse` wrote.

    ``checkpoint`` is the collapsed checkpoint (``path`` = its final location, ``meta["collapse"]``
    says threshold and source), ``fibers`` the ``fibers.pkl`` dict, ``fidelity`` the
    ``fidelity.json`` dict, ``fibration`` the in-memory fibers.
    """

    checkpoint: Checkpoint
    out_dir: Path
    fibers: dict[str, Any]
    fidelity: dict[str, Any]
    fibration: Fibration


def threshold_tag(tau: float) -> str:
    """``03`` for 0.3, ``10`` for 1.0, ``025`` for 0.25 (see the module docstring)."""
    tau = validate_threshold(tau)
    tenths = round(tau * 10)
    if abs(tau * 10 - tenths) < 1e-9:
        return f"{tenths:02d}"
    return f"{tau:.6f}".rstrip("0").replace(".", "")


def collapse_folder_name(
    threshold: float | None, epoch: int, *, target: float | None = None
) -> str:
    """``collapsed_model_thr_03_000051`` for τ = 0.3 at epoch 51;
    ``collapsed_model_target_20_000051`` for a size ``target`` of 0.2."""
    if target is not None:
        return collapse_target_dir_name(validate_target(target), epoch)
    return collapse_dir_name(threshold_tag(0.0 if threshold is None else threshold), epoch)


def criterion_from_config(c: CollapseConfig, seed: int = 0) -> FiberCriterion:
    """The criterion ``[collapse]`` names, carrying its own options (a one-line ``ValueError``
    for an option of the other criterion). ``seed``: the data criterion's calibration games."""
    weight_options = {
        "flatten_colours": c.flatten_colours,
        "max_lstm_rounds": c.lstm_rounds,
        "lstm_criterion": c.lstm_criterion,
    }
    knob = c.size_knob  # a threshold τ, or a size target (core.budget)
    if c.criterion == "weights":
        return make_criterion(
            "weights", knob["threshold"], target=knob["target"], layers=c.layer_list,
            **weight_options,
        )  # fmt: skip
    if c.flatten_colours != "positions":
        raise ValueError("--flatten-colours pooled applies to the weights criterion only")
    if c.lstm_criterion != "units":
        raise ValueError("--lstm-criterion applies to the weights criterion only")
    return make_criterion(
        c.criterion,
        knob["threshold"],
        target=knob["target"],
        seed=seed,
        layers=c.layer_list,
        progress=stderr_progress,
        fit=c.fit,
        pivot=c.pivot,
        calibration_batch=c.calibration_batch,
        calibration_steps=c.calibration_steps,
    )


def fidelity_from_config(c: CollapseConfig) -> FidelitySpec:
    """The frames and episodes ``[collapse]`` measures a collapse on."""
    return FidelitySpec(episodes=c.episodes_played, batch=c.fidelity_batch, steps=c.fidelity_steps)


def check_out_dir(out_dir: Path, mode: WriteMode) -> None:
    """Refuse, before any slow work, a folder ``mode`` may not write into."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"output {out_dir} exists and is not a folder")
    if mode is WriteMode.NEW and out_dir.is_dir() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"output folder {out_dir} already exists and is not empty "
            "(pass --force to replace its collapsed model)"
        )
    check_writable(out_dir)


def collapse(
    ckpt: Checkpoint,
    criterion: FiberCriterion,
    *,
    fidelity: FidelitySpec = FidelitySpec(),
    seed: int = 0,
    device: str | torch.device | None = None,
) -> CollapseResult:
    """Collapse ``ckpt`` with ``criterion`` and measure the result; nothing is written
    (``out_dir`` and the checkpoint's ``path`` are those of :func:`collapse_folder_name`
    beside the source until :func:`write_collapse` says where).

    KL and value error are measured on ``fidelity``'s frames (env seeds ``seed``...), so for
    the data criterion they are held-out frames (its calibration set is played on other
    seeds). ``device`` (default: the CPU) runs the fibers' pairwise products and the fidelity's
    forward passes and episodes, e.g. on a GPU; the collapse itself is float64 algebra on the
    CPU. Raises ``ValueError`` with one-line messages.
    """
    if criterion.threshold is not None:
        validate_threshold(criterion.threshold)
    policy = ckpt.policy.cpu().eval()
    original_on = policy_on(policy, device)[0]
    observations, observation_seeds = fidelity.observations, None
    if observations is None:
        observations = collect_observations(
            original_on, ckpt.env, fidelity.batch, fidelity.steps, seed
        )
        observation_seeds = [seed, seed + fidelity.batch - 1]
    collection_seconds = None
    with products_on(device):
        if isinstance(criterion, DataCriterion):  # calibrates on other seeds; held-out figures
            calibration, collection_seconds = _calibration_set(policy, ckpt.env, criterion)
            quotient = criterion.fit_transform(policy, calibration, heldout=observations)
        else:
            quotient = criterion.fit_transform(policy)
    fibration = criterion.fibration_
    assert isinstance(quotient, Policy) and fibration is not None
    quotient = quotient.eval()
    quotient_on = policy_on(quotient, device)[0]
    figures = fidelity_report(
        original_on, quotient_on, fibration, env=ckpt.env, observations=observations
    )
    figures.update(return_figures(quotient_on, ckpt.env, fidelity.episodes, seed=seed))
    described = criterion.describe()
    if isinstance(criterion, DataCriterion):
        described["collection_seconds"] = collection_seconds
    figures.update(epoch=ckpt.epoch, source=str(ckpt.path), criterion=described)
    figures["observation_seeds"] = observation_seeds
    fibers = fibers_dict(
        fibration,
        epoch=ckpt.epoch,
        env=ckpt.env,
        params_before=policy.parameter_count(),
        params_after=quotient.parameter_count(),
    )
    fibers["criterion"] = criterion.name
    if isinstance(fibration, DataFibration):
        figures["calibration"] = fibration.calibration
        _add_data_layers(fibers, fibration)
    meta = dict(ckpt.meta)
    meta["collapse"] = _collapse_meta(ckpt, fibration, figures)
    folder = collapse_folder_name(criterion.threshold, ckpt.epoch, target=criterion.target)
    out_dir = ckpt.path.parent / folder
    collapsed = Checkpoint(
        policy=quotient,
        arch=quotient.arch,
        epoch=ckpt.epoch,
        global_step=ckpt.global_step,
        env=ckpt.env,
        config=dict(ckpt.config),
        path=out_dir / collapsed_model_name(ckpt.epoch),
        meta=meta,
    )
    return CollapseResult(collapsed, out_dir, fibers, figures, fibration)


def write_collapse(
    result: CollapseResult, out_dir: Path, mode: WriteMode = WriteMode.NEW
) -> CollapseResult:
    """Write ``result``'s three files into ``out_dir`` as ``mode`` allows; on any error nothing
    is left half-written. Returns the result with its paths in ``out_dir``."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, mode)
    c = result.checkpoint
    name = collapsed_model_name(c.epoch)
    whole = mode is WriteMode.REPLACE and out_dir.is_dir() and not _other_contents(out_dir)
    with atomic_dir(out_dir) if whole else _output_folder(out_dir) as tmp:
        save_checkpoint(
            tmp / name,
            c.policy,
            epoch=c.epoch,
            global_step=c.global_step,
            env=c.env,
            config=c.config,
            meta=c.meta,
        )
        save_fibers(tmp / FIBERS, result.fibers)
        write_fidelity(tmp / FIDELITY, result.fidelity)
    c = dataclasses.replace(c, path=out_dir / name)
    return dataclasses.replace(result, checkpoint=c, out_dir=out_dir)


def collapse_to_folder(
    ckpt: Checkpoint,
    criterion: FiberCriterion,
    out_dir: Path,
    *,
    fidelity: FidelitySpec = FidelitySpec(),
    mode: WriteMode = WriteMode.NEW,
    seed: int = 0,
    echo: bool = True,
    device: str | torch.device | None = None,
) -> CollapseResult:
    """:func:`collapse` then :func:`write_collapse` into ``out_dir`` (checked first, so a folder
    that may not be written fails before the slow work); ``echo`` prints the fidelity table."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, mode)
    result = write_collapse(
        collapse(ckpt, criterion, fidelity=fidelity, seed=seed, device=device), out_dir, mode
    )
    if echo:
        print(format_fidelity(result.fidelity))
        if "calibration" in result.fidelity:
            print(format_calibration(result.fidelity["calibration"]))
    return result


def ablate_to_folder(
    ckpt: Checkpoint,
    like: Policy,
    out_dir: Path,
    *,
    fidelity: FidelitySpec = FidelitySpec(),
    seed: int = 0,
    mode: WriteMode = WriteMode.UPDATE,
) -> CollapseResult:
    """The random-ablation control of a collapse: ``ckpt`` cut to the hidden widths of ``like``
    (e.g. its collapsed network) by :class:`~pufferfiber.core.ablation.RandomUnits` (units drawn
    with ``seed``), written into ``out_dir`` like a collapse (model, ``fibers.pkl``,
    ``fidelity.json`` measured on the same frames), so it trains like one."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, mode)
    criterion = RandomUnits(hidden_widths(like), seed=seed)
    return write_collapse(collapse(ckpt, criterion, fidelity=fidelity, seed=seed), out_dir, mode)


def _calibration_set(
    policy: Policy, env: str, criterion: DataCriterion
) -> tuple[torch.Tensor, float]:
    """The data criterion's calibration sequences, played by ``policy`` on env seeds
    ``criterion.seed + CALIBRATION_SEED_OFFSET + i``, and the seconds it took."""
    if criterion.progress is not None:
        criterion.progress(
            f"data fibers: playing {criterion.calibration_batch} x {criterion.calibration_steps} "
            "calibration steps"
        )
    start = time.perf_counter()
    frames = collect_observations(
        policy,
        env,
        criterion.calibration_batch,
        criterion.calibration_steps,
        criterion.seed + CALIBRATION_SEED_OFFSET,
    )
    return frames, time.perf_counter() - start


def format_calibration(figures: dict[str, Any]) -> str:
    """The data criterion's per-layer figures: kept, constant, fit error (calibration and
    held-out), units whose relation fails on the held-out frames."""
    lines = [
        f"data fibers on {figures['frames']} calibration frames "
        f"(relative fit error: calibration max / held-out max, units over τ on held-out)"
    ]
    for label, fig in figures.items():
        if isinstance(fig, dict):
            lines.append(
                f"  {label:<8} {fig['units']:>4} -> {fig['kept']:>4} kept, "
                f"{fig['constant']:>4} constant, error {fig['fit_error_max']:.3g} / "
                f"{fig.get('heldout_error_max', float('nan')):.3g}, "
                f"{fig.get('heldout_over_threshold', 0)} over τ "
                f"({fig.get('heldout_constant_over_threshold', 0)} of them constant)"
            )
    return "\n".join(lines)


def _add_data_layers(fibers: dict[str, Any], fibration: DataFibration) -> None:
    """``fibers.pkl`` of the data criterion: per layer also ``kept`` (representatives) and
    ``constant`` (units folded as constants; listed in fiber 0, their ``s`` is 0)."""
    for layer in fibers["layers"]:
        rec = fibration.reconstructions.get(layer["name"])
        if rec is not None:
            layer["kept"] = np.asarray(rec.kept, dtype=np.int64)
            layer["constant"] = np.asarray(rec.constant, dtype=bool)


def _collapse_meta(ckpt: Checkpoint, fibration: Fibration, fidelity: dict) -> dict[str, Any]:
    return {
        "criterion": fidelity["criterion"],
        "threshold": fibration.threshold,
        "target": fidelity.get("target"),
        "flatten_colours": fibration.flatten_colours,
        "collapsed_layers": fidelity["collapsed_layers"],
        "fibers": fidelity["fibers"],
        "lstm_rounds": fibration.lstm_rounds,
        "params_before": fidelity["params_before"],
        "params_after": fidelity["params_after"],
        "source": str(ckpt.path),
        "source_epoch": ckpt.epoch,
        "source_architecture": ckpt.arch.to_dict(),
    }


def _other_contents(out_dir: Path) -> list[str]:
    """What a collapse folder holds besides a collapse's own files (e.g. resumed runs)."""
    own = (FIBERS, FIDELITY)
    return sorted(
        p.name
        for p in out_dir.iterdir()
        if not (p.name in own or COLLAPSED_MODEL_RE.match(p.name) or p.name.startswith("."))
    )


class _output_folder:
    """A new folder via :func:`atomic_dir`; an existing one gets files moved in one by one.

    Either way the files are first written completely into a temporary folder; a failure
    before the move leaves the destination exactly as it was.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._inner: Any = None
        self._tmp: Path | None = None

    def __enter__(self) -> Path:
        if not self.out_dir.is_dir():
            self._inner = atomic_dir(self.out_dir)
            return Path(self._inner.__enter__())
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir))
        except OSError as exc:
            raise CheckpointError(f"cannot write into {self.out_dir}: {exc.strerror}") from None
        return self._tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._inner is not None:
            return bool(self._inner.__exit__(exc_type, exc, tb))
        assert self._tmp is not None
        try:
            if exc_type is None:
                written = {f.name for f in self._tmp.iterdir()}
                for name in sorted(written):
                    os.replace(self._tmp / name, self.out_dir / name)
                for stale in self.out_dir.iterdir():  # an earlier collapse of another epoch
                    if COLLAPSED_MODEL_RE.match(stale.name) and stale.name not in written:
                        stale.unlink()
        except OSError as err:
            raise CheckpointError(f"cannot write into {self.out_dir}: {err.strerror}") from None
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False
