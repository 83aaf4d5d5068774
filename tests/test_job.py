"""A training run as data (:class:`TrainJob`): its JSON round trip is exact, the sweep's child
process runs one, and a file that is not a job is one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pufferfiber.config.sections import ConfigError, RunConfig, load_config
from pufferfiber.io.runfiles import CHECKPOINT_RE
from pufferfiber.workflows.job import TrainJob

REPO = Path(__file__).resolve().parents[1]


def test_run_config_survives_json() -> None:
    given = {"train.seed": "7", "break.enabled": "true", "collapse.until": "9"}
    cfg = load_config("cartpole", given)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_job_survives_json(tmp_path: Path) -> None:
    cfg = load_config("cartpole", {"train.data_dir": str(tmp_path)})
    job = TrainJob("resume", cfg, {"train.data_dir": str(tmp_path)}, exp_id="abc", backend="serial")
    assert TrainJob.load(job.save(tmp_path / "job.json")) == job


def test_a_stored_config_is_validated_again() -> None:
    data = load_config("cartpole").to_dict()
    data["train"]["batch_size"] = 0
    with pytest.raises(ConfigError):
        RunConfig.from_dict(data)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="job kind"):
        TrainJob("retrain", load_config("cartpole"))  # type: ignore[arg-type]


def _job(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pufferfiber.cli.job", str(path)],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_the_child_process_trains_a_job(tmp_path: Path) -> None:
    given = {"train.data_dir": str(tmp_path), "train.total_timesteps": "4096"}
    job = TrainJob("new", load_config("cartpole", given), given).save(tmp_path / "job.json")
    proc = _job(job)
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert any(CHECKPOINT_RE.match(p.name) for p in run.iterdir()), sorted(run.iterdir())


@pytest.mark.slow
def test_a_file_that_is_not_a_job_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "job.json"
    bad.write_text('{"kind": "new"}')
    proc = _job(bad)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a training job" in proc.stderr, proc.stderr


def test_checkpoint_jobs_name_their_file(tmp_path: Path) -> None:
    """``scratch`` and ``checkpoint`` jobs need a model file (and survive JSON); the others take
    none."""
    cfg = load_config("cartpole")
    for kind in ("scratch", "checkpoint"):
        job = TrainJob(kind, cfg, checkpoint=str(tmp_path / "model_000002.pt"))
        assert TrainJob.load(job.save(tmp_path / f"{kind}.json")) == job
        with pytest.raises(ValueError, match=f"a {kind} job needs a checkpoint file"):
            TrainJob(kind, cfg)
    with pytest.raises(ValueError, match="a new job takes no checkpoint file"):
        TrainJob("new", cfg, checkpoint="model_000002.pt")
