"""The collapse pipeline and command line: files, names, fidelity, errors, timeline cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pufferfiber.workflows.collapse as pipeline
from pufferfiber.cli.main import collapse_main
from pufferfiber.core.criteria import WeightCriterion
from pufferfiber.core.policy import Policy
from pufferfiber.core.types import validate_threshold
from pufferfiber.envs.registry import architecture_for
from pufferfiber.io.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from pufferfiber.io.fibersfile import load_fibers
from pufferfiber.workflows import timeline
from pufferfiber.workflows.collapse import collapse_folder_name

FAST = ["--episodes", "1", "--fidelity-batch", "2", "--fidelity-steps", "8"]


def cartpole_checkpoint(folder: Path, epoch: int = 6, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    policy = Policy(architecture_for("cartpole"))
    return save_checkpoint(
        folder / f"model_{epoch:06d}.pt",
        policy,
        epoch=epoch,
        global_step=epoch * 100,
        env="cartpole",
        config={"seed": seed},
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("bad", [-0.1, 2.01, float("nan"), "abc", None])
def test_threshold_out_of_range_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match="between 0 and 2"):
        validate_threshold(bad)


def test_threshold_bounds_are_allowed() -> None:
    assert validate_threshold("0") == 0.0 and validate_threshold(2) == 2.0


def test_folder_names_follow_the_guide_and_stay_distinct() -> None:
    assert collapse_folder_name(0.3, 51) == "collapsed_model_thr_03_000051"
    assert collapse_folder_name(1.0, 50) == "collapsed_model_thr_10_000050"
    assert collapse_folder_name(2, 7) == "collapsed_model_thr_20_000007"
    assert collapse_folder_name(0.1 + 0.2, 3) == "collapsed_model_thr_03_000003"
    taus = [0.2, 0.25, 0.3, 0.125, 0.05, 0.5, 1.05, 1.5]
    names = [collapse_folder_name(t, 1) for t in taus]
    assert len(set(names)) == len(taus)
    assert collapse_folder_name(0.25, 1) == "collapsed_model_thr_025_000001"


@pytest.mark.slow
def test_collapse_command_writes_model_fibers_and_fidelity(tmp_path: Path, capsys) -> None:
    ckpt_path = cartpole_checkpoint(tmp_path / "cartpole-0000abcd")
    assert collapse_main([str(ckpt_path), "--threshold", "1.0", *FAST]) == 0
    out_dir = ckpt_path.parent / "collapsed_model_thr_10_000006"
    assert leftovers(out_dir) == ["fibers.pkl", "fidelity.json", "model_000006_collapsed.pt"]
    assert "KL(original||collapsed)" in capsys.readouterr().out
    collapsed = load_checkpoint(out_dir / "model_000006_collapsed.pt", expect_env="cartpole")
    fibers = load_fibers(out_dir / "fibers.pkl")
    fidelity = json.loads((out_dir / "fidelity.json").read_text())
    counts = {layer["label"]: layer["n_fibers"] for layer in fibers["layers"]}
    assert collapsed.arch.hidden == (counts["linear1"],) and collapsed.arch.lstm == counts["lstm"]
    assert (
        fidelity["fibers"] == counts
        and fidelity["params_after"] == collapsed.policy.parameter_count()
    )
    assert fibers["params_after"] == fidelity["params_after"] < fidelity["params_before"]
    assert (fibers["threshold"], fibers["epoch"], collapsed.epoch) == (1.0, 6, 6)
    assert collapsed.meta["collapse"]["threshold"] == 1.0
    assert collapsed.meta["collapse"]["source"] == str(ckpt_path)
    for key in (
        "kl",
        "value_mae",
        "return_mean",
        "return_std",
        "episodes",
        "threshold",
        "flatten_colours",
        "params_before",
        "params_after",
        "lstm_rounds",
    ):
        assert key in fidelity
    assert fidelity["kl"] > 0 and fidelity["episodes"] == 1 and fidelity["return_mean"] > 0


def test_exact_collapse_has_zero_divergence(tmp_path: Path) -> None:
    ckpt = load_checkpoint(cartpole_checkpoint(tmp_path))
    result = pipeline.collapse_to_folder(
        ckpt,
        WeightCriterion(threshold=0.0),
        tmp_path / "out",
        fidelity=pipeline.FidelitySpec(episodes=0, batch=2, steps=10),
        echo=False,
    )
    assert result.fidelity["kl"] < 1e-10 and result.fidelity["value_mae"] < 1e-6
    assert result.fidelity["return_mean"] is None
    assert result.checkpoint.arch == ckpt.arch and result.checkpoint.path.is_file()


@pytest.mark.slow
def test_collapse_upstream_pickle_needs_allow_pickle(shared_run_copy: Path, capsys) -> None:
    src = shared_run_copy / "model_000051.pt"
    assert collapse_main([str(src), "--threshold", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-pickle" in err
    assert (
        collapse_main(
            [
                str(src),
                "--threshold",
                "0.5",
                "--allow-pickle",
                "--layers",
                "linear,lstm",
                "--episodes",
                "0",
                "--fidelity-batch",
                "2",
                "--fidelity-steps",
                "4",
            ]
        )
        == 0
    )
    out = shared_run_copy / "collapsed_model_thr_05_000051"
    fibers = load_fibers(out / "fibers.pkl")
    counts = {layer["label"]: layer["n_fibers"] for layer in fibers["layers"]}
    assert counts["conv3"] == 64 and counts["linear1"] < 512 and counts["lstm"] < 512
    assert fibers["layers"][3]["name"] == "policy.policy.network.7"
    collapsed = load_checkpoint(out / "model_000051_collapsed.pt")
    assert collapsed.env == "beam_rider" and collapsed.arch.hidden == (counts["linear1"],)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "2.5"], "between 0 and 2"),
        (["--threshold", "0.3", "--env", "pong"], "not 'pong'"),
        (["--threshold", "0.3", "--env", "nonsense_env"], "unknown env"),
        (["--threshold", "0.3", "--layers", "actor"], "head"),
        (["--threshold", "0.3", "--layers", "linear7"], "no layer"),
        (["--threshold", "0.3", "--lstm-rounds", "0"], "error: --lstm-rounds must be at least 1"),
        (["-t", "0.3", "--calibration-steps", "0"], "--calibration-steps must be at least 1"),
        (["--threshold", "0.3", "--fit", "cubic"], "invalid choice: 'cubic'"),
        (["--threshold", "0.3", "--config", "none.ini"], "config file none.ini not found"),
        (["--layers", "lstm"], "give --threshold TAU or --target F"),
        (["-t", "0.3", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
@pytest.mark.slow
def test_bad_arguments_give_one_line_and_no_folder(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    ckpt = cartpole_checkpoint(tmp_path / "run")
    before = leftovers(ckpt.parent)
    assert collapse_main([str(ckpt), *args, *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collapse: error: ") and err.count("\n") == 1 and message in err
    assert leftovers(ckpt.parent) == before


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path: Path, capsys) -> None:
    assert collapse_main([str(tmp_path / "model_000001.pt"), "-t", "0.3"]) == 2
    assert "not found" in capsys.readouterr().err
    corrupt = tmp_path / "model_000002.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert collapse_main([str(corrupt), "-t", "0.3"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    other = cartpole_checkpoint(tmp_path / "other")
    data = torch.load(other, weights_only=True)
    data["architecture"]["lstm"] = 7  # weights no longer match the recorded architecture
    torch.save(data, other)
    assert collapse_main([str(other), "-t", "0.3"]) == 2
    assert "do not match" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["model_000002.pt", "other"]


@pytest.mark.slow
def test_read_only_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    ckpt = cartpole_checkpoint(tmp_path / "run")
    ckpt.parent.chmod(0o555)
    try:
        assert collapse_main([str(ckpt), "-t", "0.3", *FAST]) == 2
        assert "permission denied" in capsys.readouterr().err
        assert leftovers(ckpt.parent) == [ckpt.name]
    finally:
        ckpt.parent.chmod(0o755)


@pytest.mark.slow
def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Whatever fails mid-write (here the fibers file), no folder or temp file is left."""
    ckpt = cartpole_checkpoint(tmp_path / "run")

    def refuse(path: Path, fibers: dict) -> Path:
        raise CheckpointError(f"cannot write {path}: permission denied (read-only folder?)")

    monkeypatch.setattr(pipeline, "save_fibers", refuse)
    assert collapse_main([str(ckpt), "-t", "0.3", *FAST]) == 2
    assert "permission denied" in capsys.readouterr().err
    assert leftovers(ckpt.parent) == [ckpt.name]


@pytest.mark.slow
def test_existing_folder_needs_force_and_keeps_other_contents(tmp_path: Path, capsys) -> None:
    ckpt = cartpole_checkpoint(tmp_path / "run")
    out = tmp_path / "out"
    (out / "cartpole-1234abcd").mkdir(parents=True)
    assert collapse_main([str(ckpt), "-t", "0.5", "--out", str(out), *FAST]) == 2
    assert "--force" in capsys.readouterr().err and leftovers(out) == ["cartpole-1234abcd"]
    assert collapse_main([str(ckpt), "-t", "0.5", "--out", str(out), "--force", *FAST]) == 0
    assert leftovers(out) == [
        "cartpole-1234abcd",
        "fibers.pkl",
        "fidelity.json",
        "model_000006_collapsed.pt",
    ]


def test_help_explains_every_option(capsys, tmp_path: Path) -> None:
    """Every ``[collapse]`` setting of a standalone collapse is an option whose help shows the
    value it runs with: the base file's, or a ``--config`` file's."""
    import re

    from pufferfiber.config.sections import CollapseConfig, load_section, option_fields

    mine = tmp_path / "mine.ini"
    mine.write_text("[collapse]\nlstm_rounds = 4\nfit = affine\n")
    for extra, settings in (
        ([], load_section(CollapseConfig)),
        (["--config", str(mine)], load_section(CollapseConfig, extra_files=[mine])),
    ):
        with pytest.raises(SystemExit) as exit_info:
            collapse_main(["--help", *extra])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for option in ("CHECKPOINT", "--threshold", "--out", "--allow-pickle", "--env", "--force",
                       "--seed", "--device", "--config"):  # fmt: skip
            assert option in text
        for field in option_fields(CollapseConfig):
            option = f"--{field.name.replace('_', '-')}"
            if field.name == "threshold":  # -t/--threshold TAU, required
                assert "--threshold TAU, -t TAU" in text
                continue
            if field.name in CollapseConfig.TRAINING_ONLY:  # settings of collapse-and-retrain
                assert f"{option} " not in text
                continue
            start = text.index(f"{option} ", text.index("[collapse] settings:"))
            match = re.compile(r"\(default: ([^)]*)\)").search(text, start)
            assert match is not None
            value = getattr(settings, field.name)
            assert match.group(1) == (value if isinstance(value, str) else repr(value)), option
    assert settings.lstm_rounds == 4 and settings.fit == "affine"


@pytest.mark.slow
def test_timeline_counts_every_checkpoint_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "cartpole-0000beef"
    for epoch in (3, 9, 6):
        cartpole_checkpoint(run, epoch=epoch, seed=epoch)
    seen: list[int] = []
    first = timeline.fibers_over_time(run, 0.8, progress=lambda i, n, e: seen.append(e))
    assert [e["epoch"] for e in first] == [3, 6, 9] == seen
    for entry in first:
        assert entry["params_collapsed"] <= entry["params_full"]
        assert set(entry["fibers"]) == {"linear1", "lstm"}
    assert (run / timeline.CACHE_NAME).is_file()

    def boom(*args: object, **kwargs: object) -> dict:
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(timeline, "fibers_at", boom)
    assert timeline.fibers_over_time(run, 0.8) == first
    with pytest.raises(AssertionError):  # other settings are not in the cache
        timeline.fibers_over_time(run, 0.8, flatten_colours="pooled")
    cartpole_checkpoint(run, epoch=9, seed=99)  # rewritten file: stale entry
    with pytest.raises(AssertionError):
        timeline.fibers_over_time(run, 0.8)


def test_timeline_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoints"):
        timeline.fibers_over_time(tmp_path, 0.3)
    with pytest.raises(ValueError, match="between 0 and 2"):
        timeline.fibers_over_time(tmp_path, 3.0)


@pytest.mark.slow
def test_timeline_on_a_read_only_upstream_run(shared_run_copy: Path) -> None:
    shared_run_copy.chmod(0o555)
    try:
        entries = timeline.fibers_over_time(
            shared_run_copy, 0.3, layers=["linear", "lstm"], allow_pickle=True
        )
    finally:
        shared_run_copy.chmod(0o755)
    assert [e["epoch"] for e in entries] == [3, 27, 51]
    assert (
        entries[-1]["fibers"]["linear1"] == 509
    )  # the published run, position-faithful criterion (README)
    assert all(e["params_full"] == 3_948_202 for e in entries)
    assert not (shared_run_copy / timeline.CACHE_NAME).exists()
