"""Criteria through the command line and the pipeline: ``--criterion data`` writes held-out
fidelity and calibration figures; ``--lstm-criterion published`` reproduces published counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pufferfiber.cli.main import collapse_main
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import architecture_for
from pufferfiber.io.checkpoints import load_checkpoint, save_checkpoint
from pufferfiber.io.fibersfile import load_fibers

FAST = ["--fidelity-batch", "2", "--fidelity-steps", "8"]
CALIBRATION = ["--calibration-batch", "4", "--calibration-steps", "16"]


def cartpole_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    policy = Policy(architecture_for("cartpole"))
    return save_checkpoint(
        folder / "model_000006.pt", policy, epoch=6, global_step=600, env="cartpole", config={}
    )


def test_collapse_command_data_criterion(tmp_path: Path, capsys) -> None:
    ckpt_path = cartpole_checkpoint(tmp_path / "cartpole-0000abcd")
    argv = [str(ckpt_path), "-t", "0.2", "--criterion", "data", "--episodes", "10"]
    assert collapse_main([*argv, *FAST, *CALIBRATION]) == 0
    out_dir = ckpt_path.parent / "collapsed_model_thr_02_000006"
    fidelity = json.loads((out_dir / "fidelity.json").read_text())
    fibers = load_fibers(out_dir / "fibers.pkl")
    collapsed = load_checkpoint(out_dir / "model_000006_collapsed.pt", expect_env="cartpole")
    assert "data fibers: linear1" in capsys.readouterr().err  # progress
    assert fidelity["criterion"]["criterion"] == "data"
    assert fidelity["criterion"]["calibration_sequences"] == [4, 16]
    assert fidelity["criterion"]["calibration_seed"] == 1000
    assert fidelity["observation_seeds"] == [0, 1]  # the held-out frames: other seeds
    assert fidelity["calibration"]["frames"] == 64
    for label in ("linear1", "lstm"):
        figures = fidelity["calibration"][label]
        assert {"kept", "constant", "fit_error_max", "heldout_error_max"} <= set(figures)
        layer = next(x for x in fibers["layers"] if x["label"] == label)
        assert layer["n_fibers"] == figures["kept"] == len(layer["kept"])
        assert layer["constant"].dtype == np.bool_ and np.all(layer["labels"] >= 0)
    assert fibers["criterion"] == "data"
    assert collapsed.arch.hidden == (fidelity["calibration"]["linear1"]["kept"],)
    assert fidelity["params_after"] == collapsed.policy.parameter_count()
    assert fidelity["episodes"] == 10 and len(fidelity["returns"]) == 10
    assert np.isfinite(fidelity["kl"]) and fidelity["return_mean"] > 0


def test_collapse_command_rejects_options_of_another_criterion(tmp_path: Path, capsys) -> None:
    ckpt_path = cartpole_checkpoint(tmp_path / "run")
    argv = [str(ckpt_path), "-t", "0.2", "--criterion", "data", "--lstm-criterion", "published"]
    assert collapse_main(argv) == 2
    assert "weights criterion only" in capsys.readouterr().err
    assert not (ckpt_path.parent / "collapsed_model_thr_02_000006").exists()
    assert collapse_main([str(ckpt_path), "-t", "0.2", "--criterion", "magic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collapse: error:") and "invalid choice: 'magic'" in err


@pytest.mark.slow
def test_published_lstm_criterion_reproduces_published_counts(shared_run: Path) -> None:
    """The published reference: pooled linear1 at τ = 0.3 on epoch 51, rounds 1-5 give 207,
    273, 288, 297, 304 LSTM fibers."""
    policy = load_checkpoint(shared_run / "model_000051.pt", allow_pickle=True).policy
    layers = ["linear1", "lstm"]
    published = compute_fibers(
        policy, 0.3, flatten_colours="pooled", layers=layers, lstm_criterion="published"
    )
    assert published.extra["published_lstm_counts"] == [207, 273, 288, 297, 304]
    assert published.counts["linear1"] == 298 and published.counts["lstm"] == 304
    ours = compute_fibers(policy, 0.3, flatten_colours="pooled", layers=layers)
    assert ours.counts["lstm"] == 94 and ours.extra["lstm_criterion"] == "units"


@pytest.mark.slow
def test_demo_collapse_with_data_criterion(tmp_path: Path, capsys) -> None:
    """``demo.py --collapse τ --criterion data``: collapse on data, then resume training."""
    from pufferfiber.cli import main as cli

    data = tmp_path / "experiments"
    cartpole_checkpoint(data / "cartpole-0000abcd")
    tiny = ["--train.batch-size", "512", "--train.minibatch-size", "128", "--vec.num-envs", "2"]
    argv = ["--env", "cartpole", "--train.data-dir", str(data), "--collapse", "0.2"]
    argv += ["--criterion", "data", "--collapse-epoch", "6", "--collapse-until", "7", *tiny]
    assert cli.main(argv) == 0, capsys.readouterr().err
    folder = data / "cartpole-0000abcd" / "collapsed_model_thr_02_000006"
    fidelity = json.loads((folder / "fidelity.json").read_text())
    assert fidelity["criterion"]["criterion"] == "data" and fidelity["episodes"] == 10
    collapsed = load_checkpoint(folder / "model_000006_collapsed.pt")
    assert collapsed.meta["collapse"]["criterion"]["criterion"] == "data"
    assert collapsed.policy.parameter_count() == fidelity["params_after"]
    (child,) = [p for p in folder.iterdir() if p.is_dir()]
    assert (child / "model_000007.pt").is_file()
