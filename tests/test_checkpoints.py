"""Checkpoint files: round trip, weights-only loading, atomic writes, bad files, run folders,
and the importer for PufferLib 2.0's own whole-module checkpoints."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.io import atomic
from pufferfiber.io import checkpoints as ck

SMALL = Architecture.atari(9, channels=(4, 8, 8), hidden=16, lstm=8)


def _save(
    path: Path, arch: Architecture = SMALL, epoch: int = 3, env: str = "beam_rider"
) -> Policy:
    policy = Policy(arch)
    ck.save_checkpoint(
        path,
        policy,
        epoch=epoch,
        global_step=epoch * 100,
        env=env,
        config={"train": {"lr": 1e-3, "data_dir": Path("x")}},
        meta={"a": 1},
    )
    return policy


def _same_outputs(a: Policy, b: Policy, arch: Architecture) -> None:
    obs = observation_batch(arch, 6).reshape(2, 3, *arch.obs_shape)
    with torch.no_grad():
        la, va, _ = a(obs)
        lb, vb, _ = b(obs)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)


def test_round_trip_is_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "run" / ck.checkpoint_name(3)
    policy = _save(path)
    raw = torch.load(path, weights_only=True)  # no code is unpickled
    assert raw["format"] == ck.FORMAT and raw["architecture"]["hidden"] == [16]
    loaded = ck.load_checkpoint(path, expect_env="beam_rider")
    assert (loaded.epoch, loaded.global_step, loaded.env) == (3, 300, "beam_rider")
    assert loaded.config["train"]["data_dir"] == "x" and loaded.meta == {"a": 1}
    _same_outputs(policy, loaded.policy, SMALL)
    assert [p.name for p in path.parent.iterdir()] == ["model_000003.pt"]  # no temp files left


def test_trainer_state_round_trip(tmp_path: Path) -> None:
    assert ck.load_trainer_state(tmp_path) is None
    policy = Policy(SMALL)
    opt = torch.optim.Adam(policy.parameters(), eps=1e-5)
    policy(observation_batch(SMALL, 2))[1].sum().backward()
    opt.step()
    ck.save_trainer_state(tmp_path, {"epoch": 4, "optimizer": opt.state_dict()})
    state = ck.load_trainer_state(tmp_path)
    assert state is not None and state["epoch"] == 4
    opt2 = torch.optim.Adam(policy.parameters(), eps=1e-5)
    opt2.load_state_dict(state["optimizer"])


@pytest.mark.parametrize(
    "content,match",
    [(b"", "corrupt"), (b"not a checkpoint at all", "corrupt"), (None, "not found")],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "model_000001.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ck.CheckpointError, match=match):
        ck.load_checkpoint(path)


def test_truncated_foreign_and_wrong_env(tmp_path: Path) -> None:
    good = tmp_path / "model_000001.pt"
    _save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.load_checkpoint(trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ck.CheckpointError, match="not a pufferfiber checkpoint"):
        ck.load_checkpoint(foreign)
    with pytest.raises(ck.CheckpointError, match="of env 'beam_rider', not 'breakout'"):
        ck.load_checkpoint(good, expect_env="breakout")


def test_architecture_mismatch_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "model_000001.pt"
    _save(path)
    raw = torch.load(path, weights_only=True)
    raw["architecture"]["lstm"] = 16  # record says 16 units, weights have 8
    torch.save(raw, path)
    with pytest.raises(ck.CheckpointError, match="do not match"):
        ck.load_checkpoint(path)


def test_failed_write_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "model_000001.pt"
    _save(path)
    before = path.read_bytes()

    class Boom:
        def __reduce__(self) -> tuple:
            raise OSError(28, "No space left on device")

    with pytest.raises((ck.CheckpointError, OSError)):
        atomic.atomic_torch_save({"x": Boom()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_000001.pt"]


def test_disk_full_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ck.CheckpointError, match="disk full"):
        atomic.atomic_write_text(tmp_path / "a.txt", "hello")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_commits_or_vanishes(tmp_path: Path) -> None:
    final = tmp_path / "collapsed"
    with pytest.raises(RuntimeError), atomic.atomic_dir(final) as tmp:
        (tmp / "half.pt").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(final) as tmp:
        (tmp / "done.pt").write_bytes(b"x")
    assert [p.name for p in final.iterdir()] == ["done.pt"]


def test_read_only_folders_are_respected_even_by_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)  # no write bit: read-only for everyone, root included
    try:
        with pytest.raises(ck.CheckpointError, match="permission"):
            ck.new_run_dir(tmp_path / "experiments", "cartpole")
        with pytest.raises(ck.CheckpointError, match="permission"):
            atomic.atomic_write_text(tmp_path / "a.txt", "x")
        with (
            pytest.raises(ck.CheckpointError, match="permission"),
            atomic.atomic_dir(tmp_path / "d"),
        ):
            pass
        assert list(tmp_path.iterdir()) == []
    finally:
        tmp_path.chmod(0o755)


def test_written_files_have_the_usual_modes(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    with atomic.atomic_dir(tmp_path / "d"):
        pass
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_new_run_dir_on_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "experiments"
    blocker.write_text("a file where the data dir should be")
    with pytest.raises(ck.CheckpointError, match="cannot write"):
        ck.new_run_dir(blocker, "cartpole")


def test_run_selection_never_picks_another_env(tmp_path: Path) -> None:
    old = ck.new_run_dir(tmp_path, "beam_rider")
    _save(old / ck.checkpoint_name(3))
    time.sleep(0.01)
    other = ck.new_run_dir(tmp_path, "breakout")
    _save(other / ck.checkpoint_name(3), env="breakout")
    empty = ck.new_run_dir(tmp_path, "beam_rider")  # newest, but holds no checkpoint
    assert ck.find_run(tmp_path, "beam_rider") == old
    assert ck.find_run(tmp_path, "breakout") == other
    assert ck.find_run(tmp_path, "beam_rider", old.name.split("-")[-1]) == old
    with pytest.raises(ck.CheckpointError, match="is a run of 'breakout'"):
        ck.find_run(tmp_path, "beam_rider", other.name)
    with pytest.raises(ck.CheckpointError, match="no pong run"):
        ck.find_run(tmp_path, "pong")
    with pytest.raises(ck.CheckpointError, match="no checkpoints"):
        ck.closest_checkpoint(empty, 50)


def test_closest_checkpoint(tmp_path: Path) -> None:
    for epoch in (3, 27, 48, 51, 54):
        (tmp_path / ck.checkpoint_name(epoch)).write_bytes(b"")
    (tmp_path / "model_51.pt").write_bytes(b"")  # not our naming: ignored
    assert [e for e, _ in ck.list_checkpoints(tmp_path)] == [3, 27, 48, 51, 54]
    assert ck.closest_checkpoint(tmp_path, 50)[0] == 51
    assert ck.closest_checkpoint(tmp_path, 0)[0] == 3
    assert ck.closest_checkpoint(tmp_path, 1000)[0] == 54


def _upstream_policy() -> torch.nn.Module:
    """A PufferLib 2.0 Atari policy built with PufferLib's own classes."""
    import pufferlib.cleanrl
    from pufferlib.environments.atari import torch as atari_torch

    from pufferfiber.envs.registry import make_env

    env = make_env("beam_rider")
    module = pufferlib.cleanrl.RecurrentPolicy(
        atari_torch.Recurrent(env, atari_torch.Policy(env, framestack=1, flat_size=64 * 6 * 9))
    )
    env.close()
    return module


def test_import_pufferlib_module_gives_identical_outputs(tmp_path: Path) -> None:
    upstream = _upstream_policy()
    run = tmp_path / "beam_rider-0badcafe"
    run.mkdir()
    path = run / ck.checkpoint_name(12)
    torch.save(upstream, path)  # PufferLib 2.0's own format: the whole module pickled
    with pytest.raises(ck.CheckpointError, match="--allow-pickle"):
        ck.load_checkpoint(path)
    imported = ck.load_checkpoint(path, allow_pickle=True)
    assert (imported.env, imported.epoch) == ("beam_rider", 12)
    assert imported.policy.parameter_count() == 3_948_202
    obs = observation_batch(imported.arch, 4).reshape(2, 2, *imported.arch.obs_shape)
    with torch.no_grad():
        logits, value, _ = imported.policy(obs)
        ref_logits, ref_value, _ = upstream.policy(obs, None)
    torch.testing.assert_close(logits.reshape(4, -1), ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value.reshape(4), ref_value.reshape(4), atol=1e-5, rtol=1e-5)
    # converted and saved in our format, it loads weights-only
    ck.save_checkpoint(
        tmp_path / "ours.pt", imported.policy, epoch=12, global_step=0, env="beam_rider", config={}
    )
    assert ck.load_checkpoint(tmp_path / "ours.pt").arch == imported.arch


def test_import_real_upstream_run(shared_run: Path) -> None:
    ckpt = ck.load_checkpoint(shared_run / "model_000051.pt", allow_pickle=True)
    assert (ckpt.env, ckpt.epoch, ckpt.arch) == ("beam_rider", 51, Architecture.atari(9))
    assert ck.closest_checkpoint(shared_run, 50)[0] == 51
