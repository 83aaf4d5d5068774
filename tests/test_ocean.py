"""PufferLib's Ocean games: the compiled extensions really play, and every command works on them.

The end-to-end part runs the real commands on puffer_breakout with tiny budgets (random play
finishes a game in ~160 steps, so even a few epochs log episode returns): train, eval,
``--collapse`` with ``--break-symmetry``, the ``collapse`` command, ``report`` and the notebook.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pufferfiber.config.sections import family_of, load_config
from pufferfiber.envs.ocean import OCEAN_GAMES, OceanEnv, OceanError
from pufferfiber.envs.registry import OCEAN_ENVS, EnvError, architecture_for, make_vecenv
from pufferfiber.io.checkpoints import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["puffer_pong", "puffer_breakout"])
def test_games_move_score_and_end(name: str) -> None:
    """Guards the symbol clash: bound to libc's step(), the games would never change."""
    env = OceanEnv(name, 64, frameskip=4)
    obs, _ = env.reset()
    first = obs.copy()
    rng = np.random.default_rng(0)
    rewards, ends, infos = np.zeros(64), 0, []
    for _ in range(1500):
        _, r, term, _, info = env.step(rng.integers(0, env.game.n_actions, 64))
        rewards += r
        ends += int(term.sum())
        infos += info
    assert not np.array_equal(first, env.observations)
    assert np.abs(rewards).sum() > 0 and ends > 0 and infos
    assert {"episode_return", "episode_length", "score"} <= set(infos[0])
    env.close()
    env.close()  # closing twice is harmless


def test_episode_return_is_the_sum_of_rewards() -> None:
    """Pong's C log leaves out the +0.1 per return; our episode_return counts every reward."""
    env = OceanEnv("puffer_pong", 1, frameskip=4, max_score=3)
    env.reset()
    total, rng = 0.0, np.random.default_rng(1)
    for _ in range(20_000):
        _, r, term, _, info = env.step(rng.integers(0, 3, 1))
        total += float(r[0])
        if term[0]:
            assert info[0]["episode_return"] == pytest.approx(total, abs=1e-4)
            assert info[0]["score"] == -3  # random play loses every point
            return
    pytest.fail("no game ended")


def test_seeded_reset_replays_the_same_games() -> None:
    def play(seed: int) -> np.ndarray:
        env = OceanEnv("puffer_breakout", 4)
        env.reset(seed)
        frames = [env.step(np.ones(4, dtype=np.int64))[0].copy() for _ in range(60)]
        env.close()
        return np.stack(frames)

    assert np.array_equal(play(5), play(5))
    assert not np.array_equal(play(5), play(6))


def test_single_copy_for_evaluation_uses_the_ini_settings() -> None:
    from pufferfiber.rl.evaluate import make_configured_env

    env = make_configured_env("puffer_pong")
    assert env.env.settings["frameskip"] == load_config("puffer_pong").env["frameskip"]
    obs, _ = env.reset(seed=3)
    assert obs.shape == (8,) and obs.dtype == np.float32
    obs2, reward, term, trunc, _ = env.step(1)
    assert obs2.shape == (8,) and isinstance(reward, float) and not (term or trunc)
    env.close()


def test_config_vecenv_and_policy() -> None:
    assert family_of("puffer_pong") == "ocean" and family_of("cartpole") == "classic_control"
    cfg = load_config("puffer_breakout", {"env.brick_rows": "2"})
    vecenv = make_vecenv("puffer_breakout", "serial", 8, env_kwargs=dict(cfg.env))
    assert vecenv.num_agents == 8 and vecenv.single_observation_space.shape == (11 + 2 * 18,)
    arch = architecture_for("puffer_breakout", vecenv)
    assert (arch.kind, arch.hidden, arch.lstm, arch.n_actions) == ("mlp", (128,), 128, 4)
    vecenv.close()
    with pytest.raises(EnvError, match="--vec serial"):
        make_vecenv("puffer_pong", "multiprocessing", 8)
    with pytest.raises(OceanError, match=r"unknown setting env\.bogus"):
        OceanEnv("puffer_pong", 2, bogus=1)
    assert tuple(OCEAN_GAMES) == OCEAN_ENVS


# ---------------------------------------------------------------- the commands, end to end

TINY = ["--env", "puffer_breakout", "--train.batch-size", "2048", "--train.minibatch-size", "1024",
        "--vec.num-envs", "32", "--train.total-timesteps", "12288", "--train.checkpoint-interval",
        "2"]  # fmt: skip


def _run(*args: str, stdout: Path | None = None) -> subprocess.CompletedProcess[str]:
    with open(stdout, "w") if stdout else open(os.devnull, "w") as out:
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            stdout=out if stdout else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def breakout_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The guide's steps 1 and 2 on puffer_breakout (6 epochs, collapse at 4 with breaking)."""
    work = tmp_path_factory.mktemp("ocean")
    data = work / "experiments"
    _run("demo.py", "--mode", "train", *TINY, "--train.data-dir", str(data),
         stdout=work / "log.out")  # fmt: skip
    _run("demo.py", "--mode", "train", *TINY, "--train.data-dir", str(data), "--collapse", "0.3",
         "--collapse-epoch", "4", "--break-symmetry", "--break.interval", "1",
         stdout=work / "log_collapsed.out")  # fmt: skip
    (run,) = list(data.iterdir())
    (collapsed,) = list(run.glob("collapsed_model_thr_03_*"))
    logs = {"LOG_ORIGINAL": work / "log.out", "LOG_COLLAPSED": work / "log_collapsed.out"}
    return {"work": work, "data": data, "run": run, "collapsed": collapsed, **logs}


@pytest.mark.slow
def test_train_and_collapse_with_breaking(breakout_runs: dict[str, Path]) -> None:
    run, collapsed = breakout_runs["run"], breakout_runs["collapsed"]
    assert [e for e, _ in list_checkpoints(run)] == [2, 4, 6]
    assert "episode_return" in (run / "metrics.jsonl").read_text()
    ckpt = load_checkpoint(run / "model_000006.pt", expect_env="puffer_breakout")
    assert ckpt.arch.obs_shape == (119,) and ckpt.arch.hidden == (128,)
    (child,) = [p for p in collapsed.iterdir() if p.is_dir()]
    assert [e for e, _ in list_checkpoints(child)] == [6]
    assert (child / "breaking.jsonl").is_file()
    assert (collapsed / "fidelity.json").is_file() and (collapsed / "fibers.pkl").is_file()


@pytest.mark.slow
def test_eval_collapse_command_and_report(breakout_runs: dict[str, Path]) -> None:
    run, data, work = breakout_runs["run"], breakout_runs["data"], breakout_runs["work"]
    proc = _run("demo.py", "--mode", "eval", "--env", "puffer_breakout", "--train.data-dir",
                str(data), "--eval-episodes", "3")  # fmt: skip
    assert "over 3 episodes" in proc.stdout
    out = work / "standalone"
    _run("-m", "pufferfiber", "collapse", str(run / "model_000004.pt"), "--threshold", "0",
         "--out", str(out), "--episodes", "1")  # fmt: skip
    assert (out / "model_000004_collapsed.pt").is_file()
    _run("-m", "pufferfiber", "report", str(run), "-o", str(work / "report.png"), "-q")
    assert (work / "report.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_notebook_on_breakout(breakout_runs: dict[str, Path]) -> None:
    from test_notebook import _execute  # tests/ is on sys.path under pytest

    params = {k: breakout_runs[k] for k in ("LOG_ORIGINAL", "LOG_COLLAPSED")}
    params.update(EXPERIMENT_DIR=breakout_runs["run"], COLLAPSED_DIR=breakout_runs["collapsed"],
                  FIGURE_PATH=breakout_runs["work"] / "fig.png")  # fmt: skip
    nb = _execute(params)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert (breakout_runs["work"] / "fig.png").stat().st_size > 10_000
