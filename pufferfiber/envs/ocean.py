"""PufferLib's Ocean environments (compiled C, shipped inside the pufferlib 2.0.2 wheel).

The wheel holds ``pufferlib/ocean/<game>/cy_<game>*.so`` but not the Python wrappers that
``pufferlib.ocean`` imports, so the package itself fails to import. This module loads each
compiled extension from its file and wraps it as a PufferLib native vector environment
(:class:`OceanEnv`: one object, ``num_envs`` agents, numpy buffers the C code writes into),
as PufferLib's own Ocean wrappers do. Constructor arguments follow the ``.pyx`` beside each
``.so``: observation, action, reward and terminal buffers, ``num_envs``, then the game's sizes.

**Symbol clash.** The extensions export plain C names (``step``, ``reset``, ``init``). Loaded
normally, the call to ``step`` binds to glibc's obsolete regexp ``step()`` and the games never
move (observations frozen, no reward, no episode end, yet tens of millions of "steps" per
second). We load them with ``RTLD_DEEPBIND`` so each library uses its own symbols (the tests
check that games move, score and end).

Games (PufferLib's names):

* ``puffer_pong`` (8 observations, 3 actions; the agent is the right paddle: +1 per point won,
  -1 per point lost, +0.1 per return; 21 points end the game);
* ``puffer_breakout`` (11 + bricks observations, 4 actions: noop, fire, left, right; five balls);
* ``puffer_enduro`` (68 observations, 9 actions: Atari Enduro's; +1 per car passed, +1 per day
  completed, +0.05 per step with the lane ahead empty, a small per-step bonus after a pass,
  -0.01 per step while crashed; a game ends when a day (13,920 steps) ends with fewer cars
  passed than required: 200 on day 1, 300 after);
* ``puffer_squared`` (``size``² observations 0/1/2: empty, agent, target; 5 actions: noop,
  down, up, left, right; +1 for reaching the target, -1 for leaving the grid or running out of
  steps, either ends the game);
* ``puffer_connect4`` (42 observations: 1 the agent's pieces, -1 the opponent's; 7 actions,
  the columns; the C opponent answers each move with a depth-3 negamax search; +1 for a win,
  -1 for a loss or an illegal move into a full column, either ends the game; the step after a
  game's end is the C code's reset step, which ignores the action);
* ``puffer_go`` (7 x 7 board: 2 x 49 + 2 observations, own stones, the opponent's, capture
  counts; 50 actions: pass or an intersection; the C opponent plays a greedy capture else a
  random move; +0.1 per legal move, -0.1 per illegal one, -0.25 per pass; the game ends when
  the opponent cannot move or after 3 x 49 steps, scored by area with komi 7.5: +1 win, -1
  loss);
* ``puffer_tripletriad`` (114 observations: board, action mask, hands and card values; 15
  actions: noop, select one of 5 cards, place it on one of 9 cells; the C opponent plays a
  random card on a random cell; +1 win, 0 draw, -1 loss by cards owned when the board is full,
  -0.1 per noop, card selection or illegal placement; a reset step follows each game, as in
  connect4).

**Enduro's lost terminals.** In the 2.0.2 wheel ``c_step`` sets ``terminals = 1`` when a day is
failed and then calls ``reset_round``, which sets it back to 0 before returning: no terminal
ever reaches Python (PufferLib's own trainer only saw the C log). :class:`OceanEnv` restores it
from what the step leaves visible (:attr:`OceanGame.day_clock`): the day clock observation
wraps on the step a day ends, and on a failed day ``reset_round`` has also zeroed the reward,
while a completed day pays +1 on that step. The tests check this against the C log. Go's
``end_game`` does the same (it resets the board, clearing the flag): there a finished game is
where the observation is all zeros, an empty board, which no move leaves behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from pufferlib.environment import PufferEnv


@dataclass(frozen=True)
class OceanGame:
    """One compiled Ocean game: where it lives and how its constructor is called.

    ``params`` are the constructor arguments after ``num_envs``, in the ``.pyx`` order, with
    PufferLib's defaults; the ``[env]`` section of the game's ini may override any of them.
    """

    folder: str
    cls: str
    n_actions: int
    params: tuple[tuple[str, float | int], ...]
    # episode length cap for single-copy play (evaluation): breakout waits for FIRE forever
    eval_max_steps: int = 20_000
    # the observation buffer's dtype (as the .pyx types it) and nominal bounds
    obs_dtype: type = np.float32
    obs_low: float = 0.0
    obs_high: float = 1.0
    # enduro's constructor also takes a truncations buffer (after the terminals)
    takes_truncations: bool = False
    # False: the score is the game's result, the reward of its last step (squared's extension
    # has no log(); connect4's and tripletriad's log a game a step after its end)
    has_log: bool = True
    # the C log's entry reported as ``score``
    score_key: str = "score"
    # index of enduro's day-clock observation (time of day in [0, 1)); see the module docstring
    day_clock: int | None = None
    # go: a finished game leaves an empty board behind (see the module docstring)
    empty_board_ends: bool = False
    # enduro seeds each game in its constructor from the module's ``rng`` (a SystemRandom), not
    # from libc's rand(): a seeded reset rebuilds the games with this attribute seeded
    seed_attr: str | None = None

    def action_count(self, settings: dict[str, Any]) -> int:
        if self.folder == "go":
            return int(settings["grid_size"]) ** 2 + 1  # pass, then one per intersection
        return self.n_actions

    def obs_size(self, settings: dict[str, Any]) -> int:
        if self.folder == "go":
            # own stones, the opponent's stones, then the two capture counts
            return 2 * int(settings["grid_size"]) ** 2 + 2
        if self.folder == "breakout":
            return 11 + int(settings["brick_rows"]) * int(settings["brick_cols"])
        if self.folder == "squared":
            return int(settings["size"]) ** 2
        if self.folder == "connect4":
            return 42  # 6 rows x 7 columns
        if self.folder == "tripletriad":
            # board 9, action mask 15, selected cards 2, scores 2, board card values 9 x 4,
            # cards in hand 2 x 5 x 4, card locations 2 x 5
            return 114
        if self.folder == "enduro":
            return 68  # OBSERVATIONS_MAX_SIZE in enduro.h (67 written, the last stays 0)
        return 8


OCEAN_GAMES: dict[str, OceanGame] = {
    "puffer_pong": OceanGame(
        "pong",
        "CyPong",
        3,
        (
            ("width", 500.0),
            ("height", 640.0),
            ("paddle_width", 20.0),
            ("paddle_height", 70.0),
            ("ball_width", 32.0),
            ("ball_height", 32.0),
            ("paddle_speed", 8.0),
            ("ball_initial_speed_x", 10.0),
            ("ball_initial_speed_y", 1.0),
            ("ball_max_speed_y", 13.0),
            ("ball_speed_y_increment", 3.0),
            ("max_score", 21),
            ("frameskip", 1),
        ),
    ),
    "puffer_breakout": OceanGame(
        "breakout",
        "CyBreakout",
        4,
        (
            ("frameskip", 4),
            ("width", 576),
            ("height", 330),
            ("paddle_width", 62.0),
            ("paddle_height", 8.0),
            ("ball_width", 32),
            ("ball_height", 32),
            ("brick_width", 32),
            ("brick_height", 12),
            ("brick_rows", 6),
            ("brick_cols", 18),
        ),
    ),
    "puffer_enduro": OceanGame(
        "enduro",
        "CyEnduro",
        9,
        (),  # the C constructor takes no game settings
        # a good policy completes day after day and never ends a game by itself
        eval_max_steps=30_000,
        obs_low=-1.0,  # drift direction, cars' motion
        obs_high=1.5,  # cars to pass / 200 is 1.5 after day 1
        takes_truncations=True,
        # Atari Enduro's score is the cars passed (the C "score" is an odometer)
        score_key="passed_cars",
        day_clock=62,
        seed_attr="rng",
    ),
    "puffer_squared": OceanGame(
        "squared",
        "CySquared",
        5,
        (("size", 11),),
        obs_dtype=np.uint8,
        obs_high=2.0,
        has_log=False,
    ),
    "puffer_connect4": OceanGame(
        "connect4",
        "CyConnect4",
        7,
        # window and piece sizes: used only by rendering
        (("width", 672), ("height", 576), ("piece_width", 96), ("piece_height", 96)),
        obs_low=-1.0,
        # the C code logs a game on the step after it ended (the reset step): its score is
        # read from the final reward instead, which is the game's result
        has_log=False,
    ),
    "puffer_tripletriad": OceanGame(
        "tripletriad",
        "CyTripleTriad",
        15,
        # window and card sizes: used only by rendering
        (("width", 990), ("height", 1000), ("card_width", 192), ("card_height", 224)),
        # a policy that only selects cards never ends a game (it pays -0.1 per step)
        eval_max_steps=1_000,
        obs_low=-1.0,  # the opponent's cells, "no card selected"
        obs_high=10.0,  # card values 1-7, cards owned 0-10
        has_log=False,  # logged a step late, as connect4
    ),
    "puffer_go": OceanGame(
        "go",
        "CyGo",
        50,  # at grid_size 7: pass + 49 intersections (action_count)
        (
            # window and board sizes: used only by rendering
            ("width", 950),
            ("height", 512),
            ("grid_size", 7),
            ("board_width", 600),
            ("board_height", 600),
            ("grid_square_size", 66),
            # the game's starting state
            ("moves_made", 0),
            ("komi", 7.5),
            ("score", 0.0),
            ("last_capture_position", -1),
            ("reward_move_pass", -0.25),
            ("reward_move_invalid", -0.1),
            ("reward_move_valid", 0.1),
            # the 2.0.2 .pyx takes these two but never stores them: captures pay nothing
            ("reward_player_capture", 0.25),
            ("reward_opponent_capture", -0.25),
        ),
        obs_high=float(2 * 7 * 7),  # capture counts
        empty_board_ends=True,
    ),
}


# enduro: one day of game time, 232 s at 60 steps per second
DAY_STEPS = 13_920


class OceanError(ValueError):
    """An Ocean game that cannot be loaded or configured (one-line message)."""


def ocean_dir() -> Path:
    import pufferlib

    return Path(pufferlib.__file__).parent / "ocean"


@functools.cache
def load_extension(name: str) -> ModuleType:
    """The compiled module of Ocean game ``name``, loaded from its ``.so`` (cached)."""
    game = OCEAN_GAMES[name]
    folder = ocean_dir() / game.folder
    found = sorted(folder.glob(f"cy_{game.folder}*.so"))
    if not found:
        raise OceanError(f"{name}: no compiled extension cy_{game.folder}*.so in {folder}")
    spec = importlib.util.spec_from_file_location(
        f"pufferlib.ocean.{game.folder}.cy_{game.folder}", found[0]
    )
    if spec is None or spec.loader is None:
        raise OceanError(f"{name}: cannot load {found[0]}")
    previous = sys.getdlopenflags()
    # The library's own step()/reset() must win over same-named libc symbols (module docstring);
    # module_from_spec is where the extension is dlopen-ed.
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise OceanError(f"{name}: cannot load {found[0].name}: {exc}") from None
    finally:
        sys.setdlopenflags(previous)
    return module


def game_settings(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The constructor settings of ``name``: defaults, then ``overrides`` (unknown keys: error)."""
    game = OCEAN_GAMES[name]
    defaults = dict(game.params)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise OceanError(
            f"unknown setting env.{unknown[0]} for {name}; valid: "
            + ", ".join(f"env.{k}" for k in defaults)
        )
    settings = {**defaults, **overrides}
    # The C constructor is typed: keep ints ints and floats floats.
    return {k: type(defaults[k])(v) for k, v in settings.items()}


class OceanEnv(PufferEnv):
    """``num_envs`` copies of an Ocean game in one PufferLib native vector env.

    ``reset`` / ``step`` follow PufferLib's ``PufferEnv`` (and so do ``async_reset``, ``send``
    and ``recv``, inherited). The C code resets a finished game by itself: the observation
    returned with ``terminal = 1`` is the first of the next game (pong, breakout, squared) or
    the last of the finished one (enduro; connect4 and tripletriad, whose next step is a reset
    step that ignores the action). ``infos`` holds one dict per step in which games ended: the
    mean ``episode_return`` (the sum of the rewards the agent received, counted here: pong's C
    log leaves out the +0.1 per return) and ``episode_length`` of those games, and the game's
    ``score``: from the C log for pong (points won minus points lost), breakout (the score,
    equal to the return) and enduro (cars passed in the game), else the game's result, the
    reward of its last step (squared, connect4: equal to the return; tripletriad: +1, 0, -1).
    """

    def __init__(self, name: str, num_envs: int = 1, **settings: Any) -> None:
        import gymnasium

        if name not in OCEAN_GAMES:
            raise OceanError(f"unknown Ocean env {name!r}; valid: {', '.join(OCEAN_GAMES)}")
        if num_envs < 1:
            raise OceanError("an Ocean env needs num_envs >= 1")
        game = OCEAN_GAMES[name]
        self.name, self.game = name, game
        self.settings = game_settings(name, settings)
        self.num_agents = int(num_envs)
        self.single_observation_space = gymnasium.spaces.Box(
            low=game.obs_low,
            high=game.obs_high,
            shape=(game.obs_size(self.settings),),
            dtype=game.obs_dtype,
        )
        self.single_action_space = gymnasium.spaces.Discrete(game.action_count(self.settings))
        self.render_mode = None
        super().__init__(None)
        self.c_envs = self._make_games()
        self._closed = False
        self._return = np.zeros(self.num_agents, dtype=np.float64)
        self._length = np.zeros(self.num_agents, dtype=np.int64)
        self._clock = np.zeros(self.num_agents, dtype=np.float32)

    def _make_games(self, seed: int | None = None) -> Any:
        """The C object holding the games (``seed``: for games that seed in the constructor)."""
        module = load_extension(self.name)
        buffers = [self.observations, self.actions, self.rewards, self.terminals]
        if self.game.takes_truncations:
            buffers.append(self.truncations)
        attr = self.game.seed_attr
        saved = getattr(module, attr) if attr else None
        if attr and seed is not None:
            setattr(module, attr, random.Random(seed))
        try:
            # enduro's constructor prints a line per 100 games: keep training logs clean
            with contextlib.redirect_stdout(io.StringIO()):
                return getattr(module, self.game.cls)(
                    *buffers, self.num_agents, *self.settings.values()
                )
        finally:
            if attr:
                setattr(module, attr, saved)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, float]]]:
        if seed is not None:
            # The games draw from the C library's rand() (one state per process); PufferLib
            # exposes no seed for it, so seed it here.
            ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))
            if self.game.seed_attr and not self._closed:
                self.c_envs.close()
                self.c_envs = self._make_games(seed)
        self.c_envs.reset()
        self._return[:] = 0.0
        self._length[:] = 0
        # enduro's reset leaves the previous game's observation in the buffer: its clock must
        # not count as a wrap on the first step
        self._clock[:] = 0.0
        return self.observations, []

    def _restore_terminals(self) -> bool:
        """Enduro: set the terminal the C step cleared (module docstring). A day ended where
        the clock went backwards; it was failed (game over) where the reward is exactly 0.

        A completed day also writes a C log entry (a snapshot of the game so far): it is
        dropped here so that ``score`` averages whole games only. Returns False when a day was
        completed in one game on the step another game ended (their entries cannot be told
        apart: that step logs no ``score``)."""
        assert self.game.day_clock is not None
        clock = self.observations[:, self.game.day_clock]
        wrapped = clock < self._clock - 0.5
        self._clock[:] = clock
        lost = wrapped & (self.rewards == 0.0)
        self.terminals[:] = lost
        if (wrapped & ~lost).any():
            if lost.any():
                return False
            self.c_envs.log()  # clears the completed days' entries
        return True

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, float]]]:
        self.actions[:] = actions
        if self.game.empty_board_ends:
            # go's C step reads the flag as game state (set: end the game now) and always
            # leaves it 0; the restored flags of the last step must not reach it
            self.terminals[:] = 0
        self.c_envs.step()
        clean_log = True
        if self.game.day_clock is not None:
            clean_log = self._restore_terminals()
        elif self.game.empty_board_ends:
            # after any move the board holds a stone; only a finished game's reset empties it
            self.terminals[:] = ~self.observations.any(axis=1)
        self._return += self.rewards
        self._length += 1
        infos: list[dict[str, float]] = []
        if self.terminals.any():
            done = self.terminals.astype(bool)
            info = {
                "episode_return": float(self._return[done].mean()),
                "episode_length": float(self._length[done].mean()),
            }
            if self.game.has_log:
                log = self.c_envs.log()
                if log["episode_length"] > 0 and clean_log:
                    info["score"] = float(log[self.game.score_key])
            else:
                info["score"] = float(self.rewards[done].mean())
            infos.append(info)
            self._return[done] = 0.0
            self._length[done] = 0
        return self.observations, self.rewards, self.terminals, self.truncations, infos

    def close(self) -> None:
        if not self._closed:  # the C close() frees the games: only once
            self._closed = True
            self.c_envs.close()


class OceanSingle:
    """One copy of an Ocean game with the single-agent API of PufferLib's emulated envs
    (``reset`` → ``(obs, info)``, ``step(action)`` → ``(obs, reward, terminal, truncated,
    info)``), for evaluation and fidelity sequences. Observations are copies. A game longer
    than the game's ``eval_max_steps`` is cut (``truncated``).

    Enduro: a freshly built game starts at a random time of day (its first day is short), and
    the C reset afterwards seeds the game's generator with 0 (every later game identical). So
    ``reset`` rebuilds the game from a seed (the given one, else the previous one + 1) and plays
    that partial first day with no-ops to its end: every game played here starts at dawn, as
    every training game after each env's first does."""

    def __init__(self, name: str, **settings: Any) -> None:
        self.env = OceanEnv(name, 1, **settings)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.max_steps = self.env.game.eval_max_steps
        self._steps = 0
        self._seed = 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if self.env.game.day_clock is None:
            obs, _ = self.env.reset(seed)
        else:
            self._seed = self._seed + 1 if seed is None else seed
            obs, _ = self.env.reset(self._seed)
            noop = np.zeros(1, dtype=np.int32)
            for _ in range(2 * DAY_STEPS):  # the first day is at most one day long
                obs, _, terminals, _, _ = self.env.step(noop)
                if terminals[0]:
                    break
            else:
                raise OceanError(f"{self.env.name}: the first day did not end")
        self._steps = 0
        return obs[0].copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, rewards, terminals, _, infos = self.env.step(np.asarray(action).reshape(1))
        self._steps += 1
        terminal = bool(terminals[0])
        truncated = not terminal and self._steps >= self.max_steps
        if terminal or truncated:
            self._steps = 0
            if truncated:
                self.reset()  # the caller's next reset(seed) replaces this game anyway
        return obs[0].copy(), float(rewards[0]), terminal, truncated, (infos[0] if infos else {})

    def close(self) -> None:
        self.env.close()
