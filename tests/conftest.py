"""Shared test fixtures.

The real BeamRider run made by upstream PufferLib 2.0 lives in ``../shared/data`` beside the
checkout (CI has it; a user's clone does not): tests that need it skip with a clear reason.

Markers (declared in pyproject.toml): ``slow`` (over about a second here), ``ray`` (starts a local
Ray), ``notebook`` (executes the notebook), ``realdata`` (reads the upstream run; set here from
the fixtures), ``cuda``. The fast subset while editing: ``pytest -m "not slow"``.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_RUN = REPO.parent / "shared" / "data" / "beam_rider-5eed0001"


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`nohup make test &`) with SIGINT ignored, and Python then
    # keeps it ignored, in this process and in every child it spawns: the Ctrl-C tests would
    # test nothing. Give the tests a terminal's Ctrl-C (a Python handler resets to the default
    # in the children at exec, so they get it too).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared_run() -> Path:
    """The read-only upstream BeamRider run (checkpoints 3, 27, 51 and log.out)."""
    if not (SHARED_RUN / "model_000051.pt").is_file():
        pytest.skip(f"real BeamRider data not found at {SHARED_RUN} (only in CI / dev checkouts)")
    return SHARED_RUN


@pytest.fixture()
def shared_run_copy(shared_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the upstream run laid out as ``experiments/beam_rider-5eed0001``."""
    dst = tmp_path / "experiments" / shared_run.name
    shutil.copytree(shared_run, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


REALDATA_FIXTURES = ("shared_run", "shared_run_copy")
# module-scoped fixtures that train runs: every test that uses one is slow (the first pays the
# training, and a subset that kept any of them would pay it again)
TRAINING_FIXTURES = ("run", "trained", "tiny_run", "sweep_dir", "guide_run", "breakout_runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that read the upstream run ``realdata`` and tests that use a trained run
    ``slow`` (from the fixtures they use, so the marker cannot be forgotten), and skip
    ``@pytest.mark.cuda`` tests where torch sees no GPU."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures.intersection(REALDATA_FIXTURES):
            item.add_marker(pytest.mark.realdata)
        if fixtures.intersection(TRAINING_FIXTURES):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these there)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
