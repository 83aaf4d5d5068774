"""The same work on every device: training, checkpoints, collapse, fidelity, symmetry breaking and
the fibers' pairwise products give the same results on a CUDA GPU as on the CPU.

Each test runs on the CPU everywhere and again on ``cuda`` where a GPU exists (the ``cuda``
marker; ``benchmarks/gpu_check.sh`` runs them on the GPU machine).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pufferfiber.cli import main as cli
from pufferfiber.core.clustering import cluster_rows, products_on
from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.criteria import WeightCriterion
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.io.checkpoints import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from pufferfiber.rl.breaking import SymmetryBreaker
from pufferfiber.rl.evaluate import policy_on
from pufferfiber.workflows.collapse import FidelitySpec, collapse_to_folder

sys.path.insert(0, str(Path(__file__).parent))
from test_collapse import max_output_error, planted, sequence

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
CNN = Architecture.atari(5, channels=(6, 8, 7), hidden=24, lstm=12)
MLP = Architecture.mlp(4, 2, hidden=(20, 16), lstm=10)  # cartpole's sizes


def all_on(module: torch.nn.Module, device_type: str) -> bool:
    return all(t.device.type == device_type for t in module.state_dict().values())


def train(data: Path, device: str, *extra: str) -> int:
    return cli.main(
        [
            "--mode",
            "train",
            "--train.data-dir",
            str(data),
            "--train.device",
            device,
            "--train.checkpoint-interval",
            "1",
            "--vec.num-envs",
            "4",
            *extra,
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_training_resume_and_eval_on_device(device: str, tmp_path: Path, capsys: Any) -> None:
    tiny = ["--env", "cartpole", "--train.batch-size", "256", "--train.minibatch-size", "64"]
    assert train(tmp_path, device, *tiny, "--train.total-timesteps", "512") == 0
    run = next(tmp_path.iterdir())
    assert f"device {device}" in capsys.readouterr().err
    # Checkpoints are device-free: every tensor loads on the CPU without a map_location.
    for _, path in list_checkpoints(run):
        raw = torch.load(path, weights_only=True)
        assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    assert train(tmp_path, device, *tiny, "--train.total-timesteps", "768", "--resume") == 0
    assert [e for e, _ in list_checkpoints(run)] == [1, 2, 3]
    where = ["--train.data-dir", str(tmp_path), "--train.device", device]
    code = cli.main(["--mode", "eval", "--env", "cartpole", *where, "--eval-episodes", "2"])
    assert code == 0
    assert "return" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_cnn_bfloat16_training_on_device(device: str, tmp_path: Path) -> None:
    """The Atari CNN with the encoder under bfloat16 autocast, asynchronous env batches."""
    tiny = ["--env", "beam_rider", "--train.batch-size", "128", "--train.minibatch-size", "64"]
    tiny += ["--train.bptt-horizon", "2", "--train.precision", "bfloat16"]
    assert train(tmp_path, device, *tiny, "--train.total-timesteps", "256") == 0
    ckpt = load_checkpoint(list_checkpoints(next(tmp_path.iterdir()))[-1][1])
    assert ckpt.epoch == 2 and ckpt.global_step == 256
    assert all(torch.isfinite(t).all() for t in ckpt.policy.state_dict().values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", [CNN, MLP], ids=["cnn", "mlp"])
def test_exact_collapse_of_a_policy_on_device(device: str, arch: Architecture) -> None:
    policy = planted(arch).to(device)
    quotient = collapse_policy(policy, compute_fibers(policy, 0.0))
    assert all_on(quotient, device) and all_on(policy, device)
    assert quotient.parameter_count() < policy.parameter_count()
    # cuBLAS and cuDNN's LSTM sum in other orders than the CPU: float32 rounding, ~1e-5 either way.
    assert max_output_error(policy, quotient, sequence(arch).to(device)) < (
        1e-5 if device == "cpu" else 3e-5
    )


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_products_on_device_give_the_same_fibers(device: str) -> None:
    torch.manual_seed(0)
    rows = torch.randn(300, 40, dtype=torch.float64)
    rows[100:200] = rows[:100] * torch.rand(100, 1, dtype=torch.float64) * 3  # multiples
    rows[200:] = rows[:100] + 0.05 * torch.randn(100, 40, dtype=torch.float64)  # near copies
    rows[-1] = 0.0
    x = rows.numpy()
    policy = planted(CNN, seed=3)
    for tau in (0.0, 0.01, 0.3, 0.9):
        expected = [cluster_rows(x, tau), compute_fibers(policy, tau)]
        with products_on(device):
            got = [cluster_rows(x, tau), compute_fibers(policy, tau)]
        np.testing.assert_array_equal(got[0], expected[0])
        for a, b in zip(got[1].layers, expected[1].layers, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("device", DEVICES)
def test_symmetry_breaking_on_device_keeps_the_function(device: str) -> None:
    policy = planted(CNN).to(device)
    # lr 0: the step fills Adam's moments (on the device) but keeps the planted duplicates.
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.0)
    obs = sequence(CNN).to(device)
    policy(obs)[1].sum().backward()
    optimizer.step()
    before = copy.deepcopy(policy)
    before.recurrent.flatten_parameters()  # a deep copy's LSTM weights are not one cuDNN chunk
    breaker = SymmetryBreaker(interval=1, fiber_threshold=0.0, maturity=0, fraction=1.0, seed=3)
    report = breaker.step(policy, optimizer, epoch=1)
    assert sum(report.broken.values()) > 0
    assert all_on(policy, device)
    for state in optimizer.state.values():
        assert all(v.device.type == device for v in state.values() if v.dim() > 0)
    assert max_output_error(before, policy, obs) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_collapse_pipeline_on_device(device: str, tmp_path: Path) -> None:
    policy = planted(MLP)
    path = save_checkpoint(
        tmp_path / "model_000004.pt", policy, epoch=4, global_step=4096, env="cartpole", config={}
    )
    ckpt = load_checkpoint(path)
    result = collapse_to_folder(
        ckpt,
        WeightCriterion(threshold=0.0),
        tmp_path / "out",
        device=device,
        fidelity=FidelitySpec(episodes=1, batch=2, steps=16),
        echo=False,
    )
    assert result.fidelity["kl"] < 1e-9 and result.fidelity["value_mae"] < 1e-5
    assert result.fidelity["return_mean"] is not None
    assert all_on(ckpt.policy, "cpu")  # the caller's policy was not moved
    saved = torch.load(result.checkpoint.path, weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    assert isinstance(result.checkpoint, Checkpoint)


def test_policy_on_copies_only_when_the_device_changes() -> None:
    policy = Policy(MLP)
    same, here = policy_on(policy, None)
    assert same is policy and here.type == "cpu"
    assert policy_on(policy, "cpu")[0] is policy
    moved, there = policy_on(policy, "meta")
    assert moved is not policy and there.type == "meta"
    assert all_on(moved, "meta") and all_on(policy, "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_collection_and_data_criterion_do_not_move_the_callers_policy(device: str) -> None:
    """A hook may collect observations from, or data-collapse, the policy being trained on a
    GPU: the caller's module stays where it is, with the same parameters and values."""
    from pufferfiber.core.criteria import DataCriterion
    from pufferfiber.rl.evaluate import collect_observations

    torch.manual_seed(0)
    policy = Policy(MLP).to(device)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    params = list(policy.parameters())
    frames = collect_observations(policy, "cartpole", 3, 16, seed=1)
    # The same frames as a CPU copy collects (the policy runs on the CPU either way).
    assert torch.equal(
        frames, collect_observations(copy.deepcopy(policy).cpu(), "cartpole", 3, 16, 1)
    )
    small = DataCriterion(0.1).fit_transform(policy, frames)
    assert isinstance(small, Policy)
    assert list(policy.parameters()) == params
    assert all_on(policy, device)
    for key, value in policy.state_dict().items():
        assert torch.equal(value, before[key]), key
