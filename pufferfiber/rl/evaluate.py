"""Play a policy in its environment: episode returns and batches of real observations.

Used by ``demo.py --mode eval``, by the collapse fidelity report (return before retraining,
observation sequences for the KL) and by experiments. Environments are stepped one copy per
episode slot without PufferLib's vectoriser: evaluation wants exact episode accounting, not
throughput.

Both play through :class:`pufferfiber.rl.rollout.Actor`, the rollout helper the trainer uses too.
They run the policy where it already lives (or on ``device``), without moving the
caller's module: a hook may call them on the policy being trained on a GPU. Actions are sampled
on the CPU from a seeded generator, so a seed plays the same episodes on any device.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from pufferfiber.config.sections import load_config
from pufferfiber.core.policy import Policy
from pufferfiber.envs.registry import is_ocean, make_env
from pufferfiber.rl.rollout import Actor


def make_configured_env(env_name: str) -> Any:
    """One env to play: an Ocean game as configured in ``configs/ocean/<env>.ini``."""
    return make_env(env_name, **(dict(load_config(env_name).env) if is_ocean(env_name) else {}))


def policy_on(policy: Policy, device: str | torch.device | None) -> tuple[Policy, torch.device]:
    """``policy`` on ``device`` (``None``: where it is) and that device; a copy when it moves."""
    here = next(policy.parameters()).device
    target = here if device is None else torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if target == here:
        return policy, here
    return copy.deepcopy(policy).to(target), target


@torch.inference_mode()
def play_episodes(
    policy: Policy,
    env_name: str,
    episodes: int,
    *,
    seed: int = 0,
    num_envs: int | None = None,
    device: str | torch.device | None = None,
    greedy: bool = False,
    max_steps: int | None = None,
) -> list[float]:
    """Returns of ``episodes`` complete episodes (LSTM state reset at each episode start).

    ``num_envs`` environments run side by side (default: ``min(episodes, 8)``); each starts
    new episodes until ``episodes`` have been started in total. ``max_steps`` caps the steps
    per env (episodes cut short are not counted). ``device``: where the policy runs (default:
    where it is).
    """
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    n = min(num_envs or min(episodes, 8), episodes)
    policy, device = policy_on(policy, device)
    gen = torch.Generator().manual_seed(seed)
    envs = [make_configured_env(env_name) for _ in range(n)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    actor = Actor(policy, n, device, greedy=greedy, generator=gen)
    started, returns, running = n, [], np.zeros(n)
    active = np.ones(n, dtype=bool)
    steps = 0
    try:
        while active.any() and (max_steps is None or steps < max_steps):
            actions = actor.act(torch.as_tensor(obs)).actions.numpy()
            steps += 1
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                ob, reward, term, trunc, _ = env.step(np.asarray(actions[i]))
                running[i] += float(np.asarray(reward).sum())
                obs[i] = ob
                if np.asarray(term).any() or np.asarray(trunc).any():
                    returns.append(running[i])
                    running[i] = 0.0
                    actor.reset(i)
                    if started < episodes:
                        obs[i] = env.reset(seed=seed + started)[0]
                        started += 1
                    else:
                        active[i] = False
    finally:
        for env in envs:
            env.close()
    return [float(r) for r in returns]


@torch.inference_mode()
def collect_observations(
    policy: Policy,
    env_name: str,
    batch: int,
    steps: int,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``[batch, steps, *obs_shape]`` real observations from ``batch`` envs played by ``policy``.

    Episodes that end are restarted in place, so every row is a contiguous stream the
    policy actually saw (fidelity measurements replay them with the LSTM state carried).
    The policy runs on the CPU (a copy when it lives elsewhere; the caller's module is neither
    moved nor switched to eval mode), so a seed collects the same frames from any device.
    """
    policy = policy_on(policy, "cpu")[0]  # a CPU copy where it lives elsewhere: never moved
    gen = torch.Generator().manual_seed(seed)
    envs = [make_configured_env(env_name) for _ in range(batch)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    frames = np.empty((batch, steps, *obs.shape[1:]), dtype=obs.dtype)
    # The state is carried across restarts (not reset), as the fidelity replay does.
    actor = Actor(policy, batch, torch.device("cpu"), generator=gen)
    try:
        for t in range(steps):
            frames[:, t] = obs
            actions = actor.act(torch.as_tensor(obs)).actions.numpy()
            for i, env in enumerate(envs):
                ob, _, term, trunc, _ = env.step(np.asarray(actions[i]))
                if np.asarray(term).any() or np.asarray(trunc).any():
                    ob = env.reset()[0]
                obs[i] = ob
    finally:
        for env in envs:
            env.close()
    return torch.from_numpy(frames)


def return_figures(
    policy: Policy, env_name: str, episodes: int, *, seed: int = 0, max_steps: int | None = None
) -> dict[str, Any]:
    """``episodes``, ``return_mean``, ``return_std`` (``None`` when none were played) and
    ``returns`` of ``policy`` in ``env_name``: the return part of ``fidelity.json``."""
    figures: dict[str, Any] = {"episodes": int(episodes), "return_mean": None, "return_std": None}
    if episodes > 0:
        returns = play_episodes(policy, env_name, episodes, seed=seed, max_steps=max_steps)
        figures["returns"] = returns
        if returns:
            figures["return_mean"] = float(np.mean(returns))
            figures["return_std"] = float(np.std(returns))
    return figures
