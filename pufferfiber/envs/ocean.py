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

Games (PufferLib's names): ``puffer_pong`` (8 observations, 3 actions; the agent is the right
paddle: +1 per point won, -1 per point lost, +0.1 per return; 21 points end the game) and
``puffer_breakout`` (11 + bricks observations, 4 actions: noop, fire, left, right; five balls).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
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

    def obs_size(self, settings: dict[str, Any]) -> int:
        if self.folder == "breakout":
            return 11 + int(settings["brick_rows"]) * int(settings["brick_cols"])
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
}


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
    returned with ``terminal = 1`` is the first of the next game. ``infos`` holds one dict per
    step in which games ended: the mean ``episode_return`` (the sum of the rewards the agent
    received, counted here: pong's C log leaves out the +0.1 per return) and
    ``episode_length`` of those games, and the game's ``score`` from the C log (pong: points
    won minus points lost; breakout: the score, equal to the return).
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
            low=0.0, high=1.0, shape=(game.obs_size(self.settings),), dtype=np.float32
        )
        self.single_action_space = gymnasium.spaces.Discrete(game.n_actions)
        self.render_mode = None
        super().__init__(None)
        cls = getattr(load_extension(name), game.cls)
        self.c_envs = cls(
            self.observations,
            self.actions,
            self.rewards,
            self.terminals,
            self.num_agents,
            *self.settings.values(),
        )
        self._closed = False
        self._return = np.zeros(self.num_agents, dtype=np.float64)
        self._length = np.zeros(self.num_agents, dtype=np.int64)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, float]]]:
        if seed is not None:
            # The games draw from the C library's rand() (one state per process); PufferLib
            # exposes no seed for it, so seed it here.
            ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        self.c_envs.reset()
        self._return[:] = 0.0
        self._length[:] = 0
        return self.observations, []

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, float]]]:
        self.actions[:] = actions
        self.c_envs.step()
        self._return += self.rewards
        self._length += 1
        infos: list[dict[str, float]] = []
        if self.terminals.any():
            done = self.terminals.astype(bool)
            info = {
                "episode_return": float(self._return[done].mean()),
                "episode_length": float(self._length[done].mean()),
            }
            log = self.c_envs.log()
            if log["episode_length"] > 0:
                info["score"] = float(log["score"])
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
    than the game's ``eval_max_steps`` is cut (``truncated``)."""

    def __init__(self, name: str, **settings: Any) -> None:
        self.env = OceanEnv(name, 1, **settings)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.max_steps = self.env.game.eval_max_steps
        self._steps = 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _ = self.env.reset(seed)
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
                self.env.reset()
        return obs[0].copy(), float(rewards[0]), terminal, truncated, (infos[0] if infos else {})

    def close(self) -> None:
        self.env.close()
