"""The Ocean games added after pong and breakout: ``puffer_enduro``, ``puffer_squared``,
``puffer_connect4``, ``puffer_tripletriad`` and ``puffer_go``.

Each game must move (observations change), score (rewards arrive and ``score`` is logged) and
end (episodes finish and are counted) under random or scripted play; enduro's terminals, which
the 2.0.2 C code clears before returning (see :mod:`pufferfiber.envs.ocean`), must be restored
exactly where the C code logged a lost game.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pufferfiber.config.sections import load_config
from pufferfiber.envs.ocean import DAY_STEPS, OceanEnv, OceanSingle
from pufferfiber.envs.registry import architecture_for, make_vecenv

NEW_GAMES = (
    "puffer_enduro",
    "puffer_squared",
    "puffer_connect4",
    "puffer_tripletriad",
    "puffer_go",
)
DAY = DAY_STEPS


def _play(env: OceanEnv, steps: int, seed: int = 0) -> tuple[np.ndarray, int, list[dict]]:
    """Random play: (summed reward per game, games ended, infos)."""
    rng = np.random.default_rng(seed)
    rewards, ends, infos = np.zeros(env.num_agents), 0, []
    for _ in range(steps):
        _, r, term, _, info = env.step(rng.integers(0, env.game.n_actions, env.num_agents))
        rewards += r
        ends += int(term.sum())
        infos += info
    return rewards, ends, infos


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("puffer_enduro", 3000),
        ("puffer_squared", 300),
        ("puffer_connect4", 60),
        ("puffer_tripletriad", 300),
        ("puffer_go", 300),
    ],
)
def test_games_move_score_and_end(name: str, steps: int) -> None:
    env = OceanEnv(name, 64)
    obs, _ = env.reset(0)
    first = obs.copy()
    rewards, ends, infos = _play(env, steps)
    assert not np.array_equal(first, env.observations)
    assert np.abs(rewards).sum() > 0
    # enduro: each game's first day starts at a random time of day, so some end within 3,000
    # steps; squared: a game lasts at most 3 * size + 2 steps
    assert ends > 0 and infos
    assert {"episode_return", "episode_length", "score"} <= set(infos[0])
    assert all(i["episode_length"] >= 1 for i in infos)
    env.close()


def test_enduro_terminals_are_where_the_c_code_logged_a_lost_day() -> None:
    """Every terminal comes with a C log entry and every C log entry with a terminal (random
    play never completes a day, so every entry is a lost game); whole games last one day."""
    env = OceanEnv("puffer_enduro", 8)
    env.reset(0)
    rng = np.random.default_rng(1)
    length, lengths, ends = np.zeros(8, dtype=np.int64), [], 0
    for _ in range(2 * DAY + 200):
        _, _, term, _, info = env.step(rng.integers(0, 9, 8))
        length += 1
        done = term.astype(bool)
        if done.any():
            ends += int(done.sum())
            lengths.append(length[done].copy())
            length[done] = 0
            assert info and "score" in info[0]  # the wrapper read the C log's entry
        else:
            assert not info
            assert env.c_envs.log()["episode_length"] == 0  # no entry without a terminal
    env.close()
    assert ends >= 8  # every game's first (partial) day ended
    # games after the first start at dawn and last exactly one day (+1: the step that ends it)
    later = np.concatenate(lengths)[8:]
    assert later.size > 0 and set(later.tolist()) == {DAY + 1}


def test_enduro_completed_day_is_not_a_terminal() -> None:
    """The restoring rule itself: a clock wrap ends the game only if the step paid nothing (the
    C reset zeroes it); a completed day pays +1 on the wrap and the game goes on. A step where
    one game completes a day and another ends logs no score (the C entries are mixed)."""
    env = OceanEnv("puffer_enduro", 3)
    env.reset(0)
    clock = env.game.day_clock
    assert clock is not None

    def restore(clocks: list[float], rewards: list[float]) -> tuple[list[int], bool]:
        env._clock[:] = 0.9999
        env.observations[:, clock] = clocks
        env.rewards[:] = rewards
        clean = env._restore_terminals()
        return env.terminals.tolist(), clean

    # lost day, completed day, an ordinary unpaid step
    assert restore([0.0001, 0.0001, 0.99995], [0.0, 1.05, 0.0]) == ([1, 0, 0], False)
    assert restore([0.0001, 0.99995, 0.99995], [1.0, 0.0, 0.05]) == ([0, 0, 0], True)
    assert restore([0.0001, 0.99995, 0.0001], [0.0, 0.05, 0.0]) == ([1, 0, 1], True)
    env.close()


def test_squared_scripted_walker_always_wins() -> None:
    """Walking straight to the target earns +1 in every game, and the score is the return."""
    env = OceanEnv("puffer_squared", 16)
    obs, _ = env.reset(0)
    size = int(env.settings["size"])
    returns: list[float] = []
    for _ in range(400):
        grid = obs.reshape(16, size, size)
        agent = np.argwhere(grid == 1)[np.argsort(np.argwhere(grid == 1)[:, 0], kind="stable")]
        target = np.argwhere(grid == 2)
        target = target[np.argsort(target[:, 0], kind="stable")]
        dr, dc = target[:, 1] - agent[:, 1], target[:, 2] - agent[:, 2]
        # actions: 0 noop, 1 down, 2 up, 3 left, 4 right
        action = np.where(dr > 0, 1, np.where(dr < 0, 2, np.where(dc < 0, 3, 4)))
        obs, _, _, _, info = env.step(action)
        returns += [i["episode_return"] for i in info]
        assert all(i["score"] == i["episode_return"] for i in info)
    env.close()
    assert len(returns) > 50 and set(returns) == {1.0}


def test_squared_random_play_mostly_loses() -> None:
    env = OceanEnv("puffer_squared", 64)
    env.reset(0)
    rewards, ends, _ = _play(env, 300)
    env.close()
    assert ends > 64 and rewards.sum() < 0  # leaving the grid or timing out costs -1


@pytest.mark.parametrize(("name", "obs", "dtype", "n_actions"), [
    ("puffer_enduro", 68, np.float32, 9), ("puffer_squared", 121, np.uint8, 5),
    ("puffer_connect4", 42, np.float32, 7), ("puffer_tripletriad", 114, np.float32, 15),
    ("puffer_go", 100, np.float32, 50),
])  # fmt: skip
def test_config_vecenv_policy_and_single_copy(
    name: str, obs: int, dtype: type, n_actions: int
) -> None:
    from pufferfiber.rl.evaluate import make_configured_env

    cfg = load_config(name)
    train, num_envs = cfg.train, cfg.vec.num_envs
    # the schedule is whole rollouts of bptt-long segments, 300 epochs as the guide's protocol
    assert train.batch_size % (num_envs * train.bptt_horizon) == 0
    assert train.total_timesteps // train.batch_size == 300
    vecenv = make_vecenv(name, "serial", num_envs, env_kwargs=dict(cfg.env))
    assert vecenv.single_observation_space.shape == (obs,)
    assert vecenv.single_observation_space.dtype == dtype
    arch = architecture_for(name, vecenv)
    assert (arch.kind, arch.hidden, arch.lstm, arch.n_actions) == ("mlp", (128,), 128, n_actions)
    vecenv.close()
    single = make_configured_env(name)
    first, _ = single.reset(seed=2)
    assert first.shape == (obs,) and first.dtype == dtype
    nxt, reward, _, _, _ = single.step(1)
    assert nxt.shape == (obs,) and isinstance(reward, float)
    single.close()


@pytest.mark.parametrize("name", NEW_GAMES)
def test_seeded_reset_replays_the_same_games(name: str) -> None:
    def play(seed: int) -> np.ndarray:
        env = OceanEnv(name, 4)
        env.reset(seed)
        moves = np.random.default_rng(0)  # the same moves for every seed: only the game's differ
        n = env.single_action_space.n
        frames = [env.step(moves.integers(0, n, 4))[0].copy() for _ in range(200)]
        env.close()
        return np.stack(frames)

    assert np.array_equal(play(5), play(5))
    assert not np.array_equal(play(5), play(6))


def test_enduro_single_copy_plays_whole_seeded_games_from_dawn() -> None:
    """Evaluation games start at dawn (not at the random time of day of a new game) and last
    one day under no-ops; a seed replays the same game."""

    def play(seed: int) -> tuple[int, np.ndarray]:
        env = OceanSingle("puffer_enduro")
        obs, _ = env.reset(seed=seed)
        assert obs[env.env.game.day_clock] < 0.001  # the clock has just wrapped: dawn
        frames, steps = [], 0
        while True:
            obs, _, term, trunc, info = env.step(np.int64(1))  # FIRE: accelerate
            frames.append(obs)
            steps += 1
            if term or trunc:
                assert term and "score" in info
                env.close()
                return steps, np.stack(frames[:500])

    steps, first = play(3)
    assert steps == DAY + 1
    assert np.array_equal(first, play(3)[1]) and not np.array_equal(first, play(4)[1])


def test_connect4_games_end_in_a_result_then_a_reset_step() -> None:
    """Random play: every game ends +1 or -1 (random play against the search almost always
    loses); the step after is the C reset step: empty board, no reward, not an end."""
    env = OceanEnv("puffer_connect4", 32)
    env.reset(0)
    rng = np.random.default_rng(0)
    results: list[float] = []
    ended = np.zeros(32, dtype=bool)
    for _ in range(200):
        obs, r, term, _, _ = env.step(rng.integers(0, 7, 32))
        # the step after an end: the board is empty and nothing is paid
        assert not term[ended].any() and not r[ended].any()
        assert not obs[ended].any()
        ended = term.astype(bool)
        results += r[ended].tolist()
        assert set(np.unique(obs)) <= {-1.0, 0.0, 1.0}
    env.close()
    assert len(results) > 100 and set(results) <= {-1.0, 1.0}
    assert np.mean(results) < -0.9


def test_tripletriad_score_is_the_result_and_the_return_pays_for_wasted_moves() -> None:
    """Random play: each game's score is its result (+1, 0, -1) and its return the result minus
    0.1 per noop, selection or illegal placement; the random opponent loses about as often as
    it wins."""
    env = OceanEnv("puffer_tripletriad", 1)
    env.reset(0)
    rng = np.random.default_rng(3)
    total, games = 0.0, []
    for _ in range(20_000):
        _, r, term, _, info = env.step(rng.integers(0, 15, 1))
        total += float(r[0])
        if term[0]:
            (i,) = info
            assert i["score"] in (-1.0, 0.0, 1.0) and float(r[0]) == i["score"]
            assert i["episode_return"] == pytest.approx(total, abs=1e-4)
            assert i["episode_return"] <= i["score"]
            games.append(i["score"])
            total = 0.0
    env.close()
    assert len(games) > 100 and {-1.0, 1.0} <= set(games)


def test_eval_runs_with_the_ini_torch_threads(tmp_path: Path, monkeypatch: Any) -> None:
    """``--mode eval`` uses the ini's ``train.torch_threads`` (1 for Ocean games), as training
    does: torch's default oversubscribed the shared cores (enduro's evaluation ~40x slower)."""
    import torch

    from pufferfiber.cli import main as cli
    from pufferfiber.core.policy import Policy
    from pufferfiber.io.checkpoints import save_checkpoint

    policy = Policy(architecture_for("puffer_squared"))
    path = save_checkpoint(
        tmp_path / "model_000001.pt", policy, epoch=1, global_step=1, env="puffer_squared",
        config={},
    )  # fmt: skip
    seen: list[int] = []

    def fake_play(*args: Any, **kwargs: Any) -> list[float]:
        seen.append(torch.get_num_threads())
        return [0.0]

    monkeypatch.setattr(cli, "play_episodes", fake_play)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = cli.main(
            ["--mode", "eval", "--env", "puffer_squared", "--eval-model-path", str(path)]
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0 and seen == [load_config("puffer_squared").train.torch_threads] == [1]


def test_go_games_end_where_the_c_code_logged_them() -> None:
    """Go's terminals (cleared by the C ``end_game``) are restored exactly where the C log got
    a game, each game ends with its result (+1, 0, -1) on top of the move reward, and a game
    lasts at most 3 x 49 steps (+1: the step that ends it)."""
    env = OceanEnv("puffer_go", 16)
    env.reset(0)
    rng = np.random.default_rng(2)
    length, games, longest = np.zeros(16, dtype=np.int64), 0, 0
    for _ in range(400):
        _, _, term, _, info = env.step(rng.integers(0, 50, 16))
        length += 1
        done = term.astype(bool)
        if done.any():
            games += int(done.sum())
            longest = max(longest, int(length[done].max()))
            length[done] = 0
            # the wrapper read the C log's entries: one per game ended on this step
            assert info and "score" in info[0]
        else:
            assert not info
            assert env.c_envs.log()["games_played"] == 0
        assert not env.terminals[~done].any()
    env.close()
    assert games >= 16 and longest <= 3 * 49 + 1


def test_go_restored_flags_do_not_end_the_next_game() -> None:
    """The C step reads its terminal flag as state: a restored flag left in the buffer would end
    every following game at once. After a game ends, the next one lasts."""
    env = OceanEnv("puffer_go", 1)
    env.reset(0)
    rng = np.random.default_rng(4)
    lengths, length = [], 0
    for _ in range(1_000):
        _, _, term, _, _ = env.step(rng.integers(1, 50, 1))
        length += 1
        if term[0]:
            lengths.append(length)
            length = 0
    env.close()
    assert len(lengths) >= 3 and min(lengths) > 10
