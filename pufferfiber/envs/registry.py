"""Environments: names, creators and PufferLib vectorisation.

* Every ALE game under PufferLib 2.0's names (``beam_rider``, ``breakout``, ``pong``...), made
  with PufferLib's own Atari wrapper: grayscale, frameskip 4, no sticky actions, 210×160
  downsampled by 2 to a 1×105×80 uint8 observation, no frame stack, no reward clipping, and
  ``info['episode_return']`` = the raw game score. The ROMs ship with ``ale-py``.
* ``cartpole``: PufferLib's classic-control CartPole (CartPole-v0, 200 steps max), a fast
  environment on which a whole run takes seconds.
* ``puffer_pong``, ``puffer_breakout``, ``puffer_enduro``, ``puffer_squared``,
  ``puffer_connect4``, ``puffer_tripletriad``, ``puffer_go``: PufferLib's Ocean games, compiled C
  vectorised inside one env object (see :mod:`pufferfiber.envs.ocean`).

Each env belongs to one *family* (:data:`ENV_FAMILIES`), which names its config folder
(``pufferfiber/configs/<family>/``) and its default policy.

Vectorisation is PufferLib's: ``serial``, ``multiprocessing`` or ``ray`` (an optional extra).
Ocean games are already vectorised in C: ``serial`` runs all ``num_envs`` games in one object.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Callable
from typing import Any

from pufferfiber.core.policy import Architecture

VEC_BACKENDS = ("serial", "multiprocessing", "ray")
FAST_ENVS = ("cartpole",)
# The games of pufferfiber.envs.ocean.OCEAN_GAMES (named here so that listing envs loads no C code;
# a test checks that the two agree).
OCEAN_ENVS = (
    "puffer_pong",
    "puffer_breakout",
    "puffer_enduro",
    "puffer_squared",
    "puffer_connect4",
    "puffer_tripletriad",
    "puffer_go",
)


class EnvError(ValueError):
    """A user-facing problem with an environment name or vectorisation setting."""


@contextlib.contextmanager
def _quiet_imports() -> Any:
    """Silence import-time noise of pinned dependencies (gym's notice, shimmy's ALE plugin)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@functools.cache
def atari_games() -> tuple[str, ...]:
    """All ALE games whose ROMs ship with ale-py, under PufferLib's snake_case names."""
    with _quiet_imports():
        import ale_py.roms

        return tuple(sorted(ale_py.roms.get_all_rom_ids()))


# family -> its env names (its config folder is pufferfiber/configs/<family>/).
ENV_FAMILIES: dict[str, Callable[[], tuple[str, ...]]] = {
    "classic_control": lambda: FAST_ENVS,
    "ocean": lambda: OCEAN_ENVS,
    "atari": atari_games,
}


def env_names() -> tuple[str, ...]:
    return tuple(name for names in ENV_FAMILIES.values() for name in names())


def family_of(name: str) -> str:
    """The family of env ``name`` (``classic_control``, ``ocean`` or ``atari``)."""
    for family, names in ENV_FAMILIES.items():
        if name in names():
            return family
    raise EnvError(f"unknown env {name!r}; valid envs: {', '.join(env_names())}")


def is_atari(name: str) -> bool:
    return name in atari_games()


def is_ocean(name: str) -> bool:
    return name in OCEAN_ENVS


def check_env_name(name: str) -> None:
    """Raise :class:`EnvError` listing the valid names when ``name`` is unknown."""
    if name not in env_names():
        raise EnvError(f"unknown env {name!r}; valid envs: {', '.join(env_names())}")


def make_env(name: str, **kwargs: Any) -> Any:
    """One PufferLib-emulated environment (module-level so it pickles for worker processes)."""
    if is_ocean(name):
        from pufferfiber.envs.ocean import OceanSingle

        # The caller passes the settings (rl.evaluate.make_configured_env: the ini ones).
        return OceanSingle(name, **kwargs)
    with _quiet_imports():
        if name == "cartpole":
            from pufferlib.environments.classic_control import environment as cc

            return cc.make("cartpole", **kwargs)
        from pufferlib.environments.atari import environment as atari

        return atari.make(name, **kwargs)


def env_creator(name: str, **env_kwargs: Any) -> Callable[..., Any]:
    check_env_name(name)
    return functools.partial(make_env, name, **env_kwargs)


def make_vecenv(
    name: str,
    backend: str = "serial",
    num_envs: int = 8,
    num_workers: int | None = None,
    env_batch_size: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A PufferLib vector environment of ``num_envs`` copies of ``name``.

    ``env_kwargs`` go to the environment's constructor (e.g. Atari ``frameskip``).

    ``num_workers`` / ``env_batch_size`` only matter for multiprocessing and ray (defaults:
    one worker per env, and a batch of every env).
    """
    check_env_name(name)
    if backend not in VEC_BACKENDS:
        raise EnvError(f"unknown --vec {backend!r}; choose one of {', '.join(VEC_BACKENDS)}")
    if is_ocean(name):
        return _ocean_vecenv(name, backend, num_envs, env_kwargs or {})
    with _quiet_imports():
        import pufferlib.vector as pv
    creator = env_creator(name, **(env_kwargs or {}))
    if backend == "serial":
        return pv.make(creator, backend=pv.Serial, num_envs=num_envs)
    workers = num_workers or num_envs
    if num_envs % workers:
        raise EnvError(f"num_envs ({num_envs}) must be divisible by num_workers ({workers})")
    batch = env_batch_size or num_envs
    if batch % (num_envs // workers):
        raise EnvError(
            f"env_batch_size ({batch}) must be a multiple of envs per worker "
            f"({num_envs // workers})"
        )
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EnvError(
                "--vec ray needs Ray: pip install 'ray[tune]==2.60.0' 'pyarrow==18.1.0' "
                "(pinned in requirements.txt; or use --vec serial / --vec multiprocessing)"
            ) from None
        vec_cls = pv.Ray
    else:
        vec_cls = pv.Multiprocessing
    return pv.make(
        creator, backend=vec_cls, num_envs=num_envs, num_workers=workers, batch_size=batch
    )


def _ocean_vecenv(name: str, backend: str, num_envs: int, env_kwargs: dict[str, Any]) -> Any:
    """One Ocean env object holding ``num_envs`` games (PufferLib's native vectorisation)."""
    from pufferfiber.envs.ocean import OceanEnv, OceanError

    if backend != "serial":
        raise EnvError(
            f"{name} is vectorised in C inside one process: use --vec serial "
            f"(vec.num_envs games in one env object), not --vec {backend}"
        )
    try:
        return OceanEnv(name, num_envs, **env_kwargs)
    except OceanError as exc:
        raise EnvError(str(exc)) from None


def architecture_for(name: str, vecenv: Any = None, **choices: Any) -> Architecture:
    """The default policy architecture for ``name``: Atari CNN, CartPole MLP (64 → LSTM 64), or
    PufferLib's Ocean default (MLP 128 → LSTM 128). ``choices`` are :class:`Architecture`
    fields that are not sizes (``rnn="gru"``)."""
    if vecenv is None:
        env = make_env(name)
        obs_space, act_space = env.single_observation_space, env.single_action_space
        env.close()
    else:
        obs_space, act_space = vecenv.single_observation_space, vecenv.single_action_space
    n_actions = int(act_space.n)
    if is_atari(name):
        return Architecture.atari(n_actions, tuple(obs_space.shape), **choices)
    if is_ocean(name):
        choices = {"hidden": (128,), "lstm": 128, **choices}
    return Architecture.mlp(int(obs_space.shape[0]), n_actions, **choices)
