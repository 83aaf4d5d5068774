"""A sweep on a two-node Ray cluster (``--ray-address``), and the per-epoch progress its cells
report to Tune."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pufferfiber.experiments import progress
from pufferfiber.experiments.report import RETURN_KEY
from pufferfiber.io.runfiles import METRICS

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
# The cluster's processes and the sweep that attaches to it: workers import this checkout; no
# token authentication (a loopback cluster of the test's own, and CI has no ~/.ray/auth_token).
CLUSTER_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    "OMP_NUM_THREADS": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
NODE_START_SECONDS = 60


# ---------------------------------------------------------------- progress, without Ray

# A stand-in for a training child: writes epochs 1 and 2 to metrics.jsonl, each time waiting
# until the parent has reported it (``ack_N``), then epoch 3 and a half-written line, and exits.
CHILD = """
import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1])
run.mkdir()
with open(run / "metrics.jsonl", "a") as f:
    for epoch, extra in ((1, {"episode_return": 1.5}), (2, {}), (3, {"episode_return": 3.5})):
        f.write(json.dumps({"epoch": epoch, "global_step": 1024 * epoch, **extra}) + "\\n")
        f.flush()
        while epoch < 3 and not (run.parent / f"ack_{epoch}").exists():
            time.sleep(0.02)
    f.write('{"epoch": 4, "glob')
"""


def test_follower_reports_each_epoch_while_the_child_trains(tmp_path: Path) -> None:
    older = tmp_path / "cartpole-00000000"  # another run's file, written before: never reported
    older.mkdir()
    (older / METRICS).write_text(json.dumps({"epoch": 9, "episode_return": 9.0}) + "\n")
    reports: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any]) -> None:
        reports.append(metrics)
        (tmp_path / f"ack_{metrics['epoch']}").touch()

    assert progress.current_reporter() is None  # outside a Tune trial, _train only waits
    with progress.reporting(report):
        assert progress.current_reporter() is report
    assert progress.current_reporter() is None
    follower = progress.EpochFollower(tmp_path, "new", report)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cartpole-11111111")])
    assert follower.wait(child, interval=0.05) == 0
    assert [r["epoch"] for r in reports] == [1, 2, 3]  # epoch 3: the check after the exit
    assert reports[0] == {
        "episode_return": 1.5, "epoch": 1, "agent_steps": 1024, "run": "cartpole-11111111",
        "job": "new",
    }  # fmt: skip
    assert reports[1]["episode_return"] == 1.5  # no game ended in epoch 2: the newest return
    assert reports[2]["episode_return"] == 3.5 and reports[2]["agent_steps"] == 3072
    assert progress.RETURN_KEY == RETURN_KEY  # Tune shows the return the report plots


# ---------------------------------------------------------------- two nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(temp: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``ray start --block`` of one 1-CPU node in its own process group; its own ports (other
    Rays may run on this machine) and temp folder."""
    log = open(temp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--num-cpus", "1", "--temp-dir", str(temp / name),
         "--object-store-memory", str(100 * 2**20),
         "--dashboard-agent-listen-port", str(_free_port()),
         "--metrics-export-port", str(_free_port()),
         "--runtime-env-agent-port", str(_free_port()), *args],
        stdout=log, stderr=subprocess.STDOUT, env=CLUSTER_ENV, start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM: `ray start --block` drains its node and stops its processes (they share its fate)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=40)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of its process group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _alive_nodes(address: str) -> int:
    script = (
        f"import ray; ray.init(address={address!r}); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=CLUSTER_ENV,
        timeout=60,
    )  # fmt: skip
    return int(out.stdout.split()[-1]) if out.returncode == 0 and out.stdout.split() else 0


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """The address of a Ray cluster of two 1-CPU nodes on this machine, stopped afterwards."""
    # a short folder: Ray's Unix sockets live under it (108 bytes at most for their paths)
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        procs.append(
            _ray_start(temp, "head", "--head", "--port", str(port), "--include-dashboard=false",
                       "--ray-client-server-port", str(_free_port()))
        )  # fmt: skip
        procs.append(_ray_start(temp, "worker", "--address", address))
        deadline = time.monotonic() + NODE_START_SECONDS
        logs = [temp / "head.log", temp / "worker.log"]
        # each node's `ray start` says this once it runs; then the cluster is asked (seconds)
        while not all("Ray runtime started" in log.read_text() for log in logs):
            assert all(p.poll() is None for p in procs), logs[-1].read_text()[-2000:]
            assert time.monotonic() < deadline, "the two Ray nodes did not start"
            time.sleep(0.2)
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline, "the worker node did not join the head"
            time.sleep(1)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _results(out: Path) -> list[list[dict[str, Any]]]:
    """Every trial's results as Tune wrote them (``_tune/<experiment>/<trial>/result.json``)."""
    files = sorted(out.glob("_tune/*/*/result.json"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_on_two_nodes_runs_cells_on_both(two_nodes: str, tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "sweep", "--env", "cartpole", "--thresholds", "0.3",
         "--seeds", "2", "--collapse-epoch", "2", "--eval-episodes", "2",
         "--train.total-timesteps", "4096", "--train.batch-size", "1024",
         "--ray-address", two_nodes, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=CLUSTER_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "summary.csv").read_text().count("\n") == 5  # header + 2 seeds × 2 runs
    trials = _results(out)
    assert len(trials) == 2
    # One CPU per node and per cell: the second cell cannot start beside the first, so the two
    # cells, started together, run on the two nodes.
    nodes = [{r["node"] for r in results} for results in trials]
    assert all(len(n) == 1 for n in nodes) and len(nodes[0] | nodes[1]) == 2, nodes
    for results in trials:
        epochs = [r for r in results if math.isfinite(r.get("episode_return", math.nan))]
        # the original's epochs, then the collapsed run's, then the cell's last result
        runs = [r["run"] for r in epochs]
        assert len(set(runs)) == 2 and runs[0].count("/") == 0, runs
        assert epochs[-1]["arms"] == 2 and epochs[-1]["epoch"] == 4
        assert all(r["epoch"] >= 1 and r["agent_steps"] == 1024 * r["epoch"] for r in epochs)
    # Tune's progress table has the return column
    # Tune's last progress table: a row per cell, named by it, with its newest return
    lines = proc.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("│ Trial name")]
    assert headers, proc.stdout[-3000:]
    header = headers[-1]
    assert "episode_return" in lines[header], proc.stdout[-3000:]
    assert any("cartpole-none-seed2   TERMINATED" in line for line in lines[header:])
