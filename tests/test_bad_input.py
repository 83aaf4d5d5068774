"""Bad input and damaged files: one line on stderr, exit code 2, nothing created or changed.

Covers the tracebacks and unhelpful messages a hostile-but-fair probe found: malformed but
loadable checkpoints, NaN weights, another game's action count, devices and files that are not
checkpoints, CUDA asked for without CUDA, report outputs that cannot be written, damaged
``fibers.pkl`` / ``log.out`` / ``fibers_timeline.json``, and option mistakes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pufferfiber.cli import main as cli
from pufferfiber.cli.main import collapse_main
from pufferfiber.cli.report import main as report_main
from pufferfiber.io.schemas import FIBERS_FORMAT
from pufferfiber.workflows.train import resume_command

REPO = Path(__file__).resolve().parents[1]
BATCH = 512
SMALL = [
    "--env", "cartpole", "--train.batch-size", str(BATCH), "--train.minibatch-size", "128",
    "--vec.num-envs", "4", "--train.checkpoint-interval", "1",
]  # fmt: skip
FAST = ["--episodes", "0", "--fidelity-batch", "2", "--fidelity-steps", "8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch cartpole run (checkpoints 1 and 2) and a collapse of epoch 2."""
    data = tmp_path_factory.mktemp("exp")
    assert cli.main([*SMALL, "--train.data-dir", str(data), "--train.total-timesteps", "1024"]) == 0
    (run,) = [p for p in data.iterdir() if p.is_dir()]
    assert collapse_main([str(run / "model_000002.pt"), "-t", "0.3", *FAST]) == 0
    return run


def one_line(capsys: pytest.CaptureFixture[str], message: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], err
    return err


def _edited(run: Path, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the run's epoch-2 checkpoint with its record edited (still weights-only)."""
    data = torch.load(run / "model_000002.pt", weights_only=True)
    edit(data)
    path = folder / "model_000002.pt"
    torch.save(data, path)
    return path


def _nan(data: dict[str, Any]) -> None:
    data["state_dict"]["policy.recurrent.weight_hh_l0"][3, 5] = float("nan")


def _three_actions(data: dict[str, Any]) -> None:
    data["architecture"]["n_actions"] = 3
    for name in ("policy.policy.actor.weight", "policy.policy.actor.bias"):
        old = data["state_dict"][name]
        data["state_dict"][name] = torch.cat([old, old[:1]])


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing epoch": (lambda d: d.pop("epoch"), "epoch must be an integer >= 0, got missing"),
    "epoch 'abc'": (lambda d: d.update(epoch="abc"), "epoch must be an integer >= 0, got 'abc'"),
    "negative steps": (lambda d: d.update(global_step=-1), "global_step must be an integer"),
    "env '../../etc'": (lambda d: d.update(env="../../etc"), "env '../../etc' is not a known env"),
    "config not a dict": (lambda d: d.update(config=[1]), "config is not a dict"),
    "NaN weights": (_nan, "not finite (1 NaN/inf values in policy.recurrent.weight_hh_l0"),
    "another action count": (_three_actions, "with 3 actions; env 'cartpole' has 2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EDITS))
def test_malformed_checkpoints_in_eval_and_collapse(
    case: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, message = EDITS[case]
    path = _edited(run, tmp_path, edit)
    argv = ["--mode", "eval", "--env", "cartpole", "--eval-model-path", str(path)]
    assert cli.main(argv) == 2
    one_line(capsys, message)
    assert collapse_main([str(path), "-t", "0.3", *FAST]) == 2
    one_line(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_000002.pt"]  # nothing written


def _symlink_to_dev_zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


def _sparse_5gib(p: Path) -> None:
    with open(p, "wb") as f:
        f.truncate(5 * 1024**3)


FILES: dict[str, tuple[Callable[[Path], Any], str]] = {
    "link to /dev/zero": (_symlink_to_dev_zero, "is not a regular file"),
    "5 GiB file": (_sparse_5gib, "larger than any plausible checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "it is empty"),
    "text": (lambda p: p.write_text("101\n"), "it is a text file"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(4096)), "not a PyTorch file"),
    "folder": (lambda p: p.mkdir(), "is a folder"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_files_that_are_not_checkpoints(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = FILES[case]
    path = tmp_path / "model_000001.pt"
    make(path)
    assert cli.main(["--mode", "eval", "--env", "cartpole", "--eval-model-path", str(path)]) == 2
    one_line(capsys, message)


def test_truncated_checkpoint_says_so(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (run / "model_000002.pt").read_bytes()
    path = tmp_path / "model_000002.pt"
    path.write_bytes(data[: len(data) // 3])
    assert cli.main(["--mode", "eval", "--env", "cartpole", "--eval-model-path", str(path)]) == 2
    one_line(capsys, "truncated or damaged")


def test_resume_on_a_corrupt_latest_checkpoint_names_the_previous_one(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "exp" / run.name
    shutil.copytree(run, copy)
    (copy / "model_000002.pt").write_bytes(b"\x00" * 100)
    before = (copy / "metrics.jsonl").read_bytes()
    argv = ["--env", "cartpole", "--resume", "--train.data-dir", str(tmp_path / "exp")]
    assert cli.main(argv) == 2
    err = one_line(capsys, "to resume from the previous checkpoint model_000001.pt")
    assert "fresh Adam" not in err and (copy / "metrics.jsonl").read_bytes() == before


def test_cuda_without_cuda_is_one_line_and_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tmp_path / "exp"
    assert cli.main([*SMALL, "--train.data-dir", str(data), "--train.device", "cuda"]) == 2
    one_line(capsys, "CUDA is not available")
    assert not data.exists()
    assert cli.main(["--mode", "eval", "--env", "cartpole", "--train.device", "cuda:1"]) == 2
    one_line(capsys, "CUDA is not available")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--break.interval", "3"], "--break.interval needs --break-symmetry"),
        (["--break.layers", "lstm"], "--break.layers needs --break-symmetry"),
        (["--break-symmetry", "--break.layers", "conv"], "no conv layer in this policy"),
        (["--collapse", "0.3", "--collapse-epoch", "-5"], "--collapse-epoch must be >= 0"),
    ],
)
def test_option_mistakes(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*SMALL, "--train.data-dir", str(tmp_path / "exp"), *argv]) == 2
    err = one_line(capsys, message)
    assert "kinds linear, lstm" in err or "conv" not in message
    assert not (tmp_path / "exp").exists()


def test_collapse_epoch_far_from_any_checkpoint_says_which_was_picked(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "exp"
    shutil.copytree(run, data / run.name)
    argv = [*SMALL, "--train.data-dir", str(data), "--collapse", "0.5", "--collapse-epoch", "999",
            "--collapse-until", "3"]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "--collapse-epoch 999: no checkpoint of that epoch; using the closest, " in err
    assert "model_000002.pt (997 epochs away)" in err


def test_total_timesteps_below_one_batch_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main([*SMALL, "--train.data-dir", str(tmp_path), "--train.total-timesteps", "100"]) == 0
    )
    err = capsys.readouterr().err
    assert "train.total_timesteps (100) is not a whole number of batches of 512 steps" in err
    assert "1 epoch(s) = 512 agent steps" in err


def test_printed_resume_command_names_the_backend() -> None:
    cfg = cli.load_config("cartpole", {}, backend="multiprocessing")
    command = resume_command(cfg, Path("/data/exp/cartpole-0123abcd"))
    assert command == (
        "python demo.py --mode train --env cartpole --vec multiprocessing --resume "
        "--exp-id cartpole-0123abcd --train.data-dir /data/exp"
    )


# ------------------------------------------------------------------------------------ report


@pytest.fixture()
def experiment(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("dpi", ["0", "-5", "100000"])
def test_report_refuses_bad_dpi(
    dpi: str, experiment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main([str(experiment), "-q", "--no-fibers", "--dpi", dpi]) == 2
    one_line(capsys, "--dpi must be between 1 and")


def test_report_checks_its_output_before_the_work(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    experiment.chmod(0o555)
    try:
        assert report_main([str(experiment), "-q", "-o", str(locked / "r.png")]) == 2
        one_line(capsys, "permission denied")
        assert report_main([str(experiment), "-q"]) == 2  # default output inside the run
        one_line(capsys, "pass -o FILE to write elsewhere")
    finally:
        experiment.chmod(0o755)
        locked.chmod(0o755)
    assert not (experiment / "fibers_timeline.json").exists()  # failed before the fibers work


def test_report_with_a_mistyped_fibers_pkl_warns_and_goes_on(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder,) = experiment.glob("collapsed_model_thr_03_*")
    bad = {"format": FIBERS_FORMAT, "threshold": 0.3, "epoch": "two", "layers": []}
    (folder / "fibers.pkl").write_bytes(pickle.dumps(bad, protocol=4))
    out = tmp_path / "r.png"
    assert report_main([str(experiment), "-q", "--no-fibers", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "fibers.pkl: epoch is str 'two'; using the folder name instead" in err
    assert "Traceback" not in err and out.is_file()


def test_report_on_a_garbage_log_says_it_cannot_parse_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "cartpole-0123abcd"
    run.mkdir()
    (run / "log.out").write_bytes(os.urandom(2000))
    assert report_main([str(run), "-q", "-o", str(tmp_path / "r.png")]) == 2
    err = one_line(capsys, "log.out: no PufferLib dashboard found")
    assert "no metrics.jsonl or log.out" not in err


def test_corrupt_fibers_timeline_cache_is_rebuilt(run: Path, tmp_path: Path) -> None:
    from pufferfiber.workflows.timeline import CACHE_FORMAT, CACHE_NAME, fibers_over_time

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    fresh = fibers_over_time(copy, 0.3)
    for damaged in (
        "{not json",
        json.dumps({"format": CACHE_FORMAT, "entries": []}),
        json.dumps({"format": CACHE_FORMAT, "entries": {"x": {"y": 1}}}),
    ):
        (copy / CACHE_NAME).write_text(damaged)
        assert fibers_over_time(copy, 0.3) == fresh
        cache = json.loads((copy / CACHE_NAME).read_text())
        assert cache["format"] == CACHE_FORMAT
        assert max(len(v) for v in cache["entries"].values()) == 2  # both checkpoints cached


def test_collapse_force_replaces_an_earlier_collapse_as_a_whole(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert collapse_main([str(run / "model_000001.pt"), "-t", "0.3", "--out", str(out), *FAST]) == 0
    assert collapse_main([str(run / "model_000002.pt"), "-t", "0.3", "--out", str(out), *FAST]) == 2
    one_line(capsys, "--force")
    argv = [str(run / "model_000002.pt"), "-t", "0.3", "--out", str(out), "--force", *FAST]
    assert collapse_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "fibers.pkl",
        "fidelity.json",
        "model_000002_collapsed.pt",
    ]


@pytest.mark.slow
def test_collapse_exit_code_is_2_for_bad_input(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pufferfiber", "collapse", str(tmp_path / "none.pt"), "-t", "0.3"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.slow
def test_upstream_checkpoint_of_another_game(
    shared_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The upstream BeamRider file (9 actions) with ``--env breakout`` (4): named, not a crash."""
    upstream = shared_run / "model_000051.pt"
    eval_argv = ["--mode", "eval", "--env", "breakout", "--allow-pickle", "--eval-episodes", "1"]
    assert cli.main([*eval_argv, "--eval-model-path", str(upstream)]) == 2
    one_line(capsys, "is a checkpoint of env 'beam_rider', not 'breakout'")
    loose = tmp_path / "model_000051.pt"  # outside its run folder: only the sizes tell
    shutil.copyfile(upstream, loose)
    assert cli.main([*eval_argv, "--eval-model-path", str(loose)]) == 2
    one_line(capsys, "with 9 actions; env 'breakout' has 4")
    assert collapse_main([str(loose), "--allow-pickle", "--env", "breakout", "-t", "0.3"]) == 2
    one_line(capsys, "with 9 actions; env 'breakout' has 4")
