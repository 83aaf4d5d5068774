"""Metric sinks: metrics.jsonl, the TensorBoard tracker (read back offline), tracker choice."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest

from pufferfiber.config.sections import ConfigError, load_config
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.sinks import (
    DashboardSink,
    EpochMetrics,
    MetricsFile,
    TrackerError,
    make_tracker,
)
from pufferfiber.rl.start import RunStart
from pufferfiber.rl.trainer import Trainer


def _metrics(epoch: int, **losses: float) -> EpochMetrics:
    return EpochMetrics(
        "cartpole",
        epoch,
        512 * epoch,
        sps=300.0,
        uptime=2.0 * epoch,
        remaining=1.0,
        times={"env": 0.5 * epoch},
        losses=dict(losses),
        user_stats={"episode_return": 10.0 * epoch},
        message="m",
    )


def _event_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``log_dir``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_metrics_file_lines_in_order_with_nan_as_null(tmp_path: Path) -> None:
    sink = MetricsFile(tmp_path)
    sink.write(_metrics(1, policy_loss=-0.5, approx_kl=math.nan))
    sink.write(_metrics(2, policy_loss=-0.25, approx_kl=0.01))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0]) == [
        "epoch", "global_step", "sps", "uptime", "policy_loss", "approx_kl", "episode_return"
    ]  # fmt: skip
    assert rows[0]["approx_kl"] is None and rows[1]["approx_kl"] == 0.01
    assert [r["global_step"] for r in rows] == [512, 1024]


def test_dashboard_sink_draws_the_epoch(tmp_path: Path) -> None:
    stream = io.StringIO()
    DashboardSink(Dashboard(stream, tmp_path / "log.out", live=False)).write(_metrics(3))
    assert "Agent Steps" in stream.getvalue() and "1.5k" in stream.getvalue()
    assert (tmp_path / "log.out").read_text().strip() == stream.getvalue().strip()


def test_tracker_choice() -> None:
    assert make_tracker("none", Path("unused")) is None
    with pytest.raises(TrackerError, match=r"train\.tracker must be one of none, tensorboard"):
        make_tracker("wandb", Path("unused"))
    with pytest.raises(ConfigError, match=r"train\.tracker must be one of"):
        load_config("cartpole", {"train.tracker": "mlflow"})
    assert load_config("cartpole", {}).train.tracker == "none"


def test_tensorboard_missing_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(TrackerError, match=r"pip install tensorboard==2\.18\.0"):
        make_tracker("tensorboard", tmp_path)


def test_tensorboard_sink_writes_readable_events(tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorboard", reason="tensorboard is not installed (pip install tensorboard==2.18.0)"
    )
    sink = make_tracker("tensorboard", tmp_path)
    assert sink is not None
    sink.write(_metrics(1, policy_loss=-0.5, approx_kl=math.nan))
    sink.write(_metrics(2, policy_loss=-0.25, approx_kl=0.01))
    sink.close()
    scalars = _event_scalars(tmp_path / "tensorboard")
    assert scalars["losses/policy_loss"] == [(512, -0.5), (1024, -0.25)]
    assert scalars["losses/approx_kl"] == [(1024, pytest.approx(0.01))]  # NaN is not logged
    assert scalars["user_stats/episode_return"] == [(512, 10.0), (1024, 20.0)]
    assert scalars["charts/sps"] == [(512, 300.0), (1024, 300.0)]
    assert scalars["performance/env"] == [(512, 0.5), (1024, 1.0)]


@pytest.mark.slow
def test_training_with_the_tensorboard_tracker(tmp_path: Path) -> None:
    """``--train.tracker tensorboard``: the events hold what metrics.jsonl holds; a resumed
    run drops the events logged after its checkpoint and continues."""
    pytest.importorskip(
        "tensorboard", reason="tensorboard is not installed (pip install tensorboard==2.18.0)"
    )
    cfg = load_config(
        "cartpole",
        {
            "train.total_timesteps": "1024",
            "train.checkpoint_interval": "1",
            "vec.num_envs": "4",
            "train.batch_size": "512",
            "train.minibatch_size": "128",
            "train.tracker": "tensorboard",
        },
    )

    def run(**kw: object) -> None:
        vecenv = make_vecenv("cartpole", "serial", 4)
        policy = Policy(architecture_for("cartpole", vecenv))
        dashboard = Dashboard(io.StringIO(), None, live=False)
        trainer = Trainer(cfg, vecenv, policy, tmp_path, dashboard=dashboard, **kw)  # type: ignore[arg-type]
        trainer.train()
        trainer.close()

    run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = _event_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["losses/policy_loss"]] == [r["global_step"] for r in rows]
    for (_, value), row in zip(scalars["losses/policy_loss"], rows, strict=True):
        assert value == pytest.approx(row["policy_loss"], rel=1e-6)
    run(start=RunStart(epoch=1, global_step=512, end_epoch=3))
    steps = [s for s, _ in _event_scalars(tmp_path / "tensorboard")["losses/policy_loss"]]
    assert steps == [512, 1024, 1536]  # the first run's step 1024 was purged, then re-logged
