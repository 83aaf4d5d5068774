"""One training run as data: the use case (a new run, a resume, collapse-and-retrain) and its
typed :class:`RunConfig`, so the command line and the sweep start runs the same way.

The command line builds a :class:`TrainJob` from its options and calls :func:`run_job`; the
sweep builds one per run of a cell and hands it, as JSON, to a fresh process
(``python -m pufferfiber.cli.job FILE``) that calls the same function: each run keeps its own
process, so a crash or a leaked env cannot take the sweep down, but no settings travel as argv.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pufferfiber.config.sections import RunConfig
from pufferfiber.io.atomic import atomic_write_text
from pufferfiber.io.checkpoints import load_checkpoint
from pufferfiber.workflows.hooks import training_hooks
from pufferfiber.workflows.train import (
    check_device,
    train_checkpoint,
    train_collapsed,
    train_new,
    train_resume,
)

JobKind = Literal["new", "resume", "collapse", "scratch", "checkpoint"]
JOB_KINDS: tuple[JobKind, ...] = ("new", "resume", "collapse", "scratch", "checkpoint")


@dataclass(frozen=True)
class TrainJob:
    """A run to start or continue.

    ``config``: the run's settings, already validated. ``given``: the dotted settings named
    explicitly (``{"train.seed": "2"}``); a resume replaces the run's stored settings with these
    and keeps the rest, and ``--break.*`` without symmetry breaking is caught from them.
    ``exp_id``: the run folder to resume or collapse (``None``: the latest one).
    ``backend``: the ``--vec`` asked for on a resume (``None``: the run's own).
    ``checkpoint``: a model file; ``scratch`` trains a new run of that file's network sizes,
    freshly initialised, ``checkpoint`` trains that file's network further (fresh optimizer,
    to ``collapse.until``), each in a new run folder in ``train.data_dir``.
    """

    kind: JobKind
    config: RunConfig
    given: Mapping[str, str] = field(default_factory=dict)
    exp_id: str | None = None
    backend: str | None = None
    allow_pickle: bool = False
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"job kind {self.kind!r} is not one of {', '.join(JOB_KINDS)}")
        if (self.checkpoint is None) == (self.kind in ("scratch", "checkpoint")):
            needs = "needs a" if self.checkpoint is None else "takes no"
            raise ValueError(f"a {self.kind} job {needs} checkpoint file")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": self.config.to_dict(),
            "given": dict(self.given),
            "exp_id": self.exp_id,
            "backend": self.backend,
            "allow_pickle": self.allow_pickle,
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainJob:
        return cls(
            kind=data["kind"],
            config=RunConfig.from_dict(data["config"]),
            given={str(k): str(v) for k, v in dict(data.get("given") or {}).items()},
            exp_id=data.get("exp_id"),
            backend=data.get("backend"),
            allow_pickle=bool(data.get("allow_pickle", False)),
            checkpoint=data.get("checkpoint"),
        )

    def save(self, path: Path) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> TrainJob:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def run_job(job: TrainJob) -> int:
    """Run ``job``; returns the exit code (0, or 130 after Ctrl-C saved a checkpoint)."""
    cfg = job.config
    if job.kind == "resume":
        # the run's own settings are known only once its checkpoint is read
        return train_resume(cfg, job.exp_id, job.allow_pickle, dict(job.given), job.backend)
    hooks = training_hooks(cfg, dict(job.given))  # settings checked before any work
    check_device(cfg)  # before any folder is created
    if job.kind == "collapse":
        return train_collapsed(cfg, job.exp_id, job.allow_pickle)
    if job.kind == "checkpoint":
        return train_checkpoint(cfg, Path(str(job.checkpoint)), job.allow_pickle)
    if job.kind == "scratch":
        sizes = load_checkpoint(Path(str(job.checkpoint)), allow_pickle=job.allow_pickle).arch
        return train_new(cfg, hooks, arch=sizes)
    return train_new(cfg, hooks)
