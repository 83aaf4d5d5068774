"""Playing a recurrent policy: the one rollout helper, the transition record and the PPO buffer.

:class:`Actor` is what the trainer, :func:`pufferfiber.rl.evaluate.play_episodes` and
:func:`pufferfiber.rl.evaluate.collect_observations` share: it runs the policy on a batch of
observations with each env's recurrent state, picks actions (sampled, or greedy), carries the
new state and zeroes it where an episode ended. The recurrent state is a tuple of ``[1, B, H]``
tensors (an LSTM's ``(h, c)``; a GRU would have one); nothing here unpacks it.

:class:`Transition` is one step of a batch of envs as the trainer stores it, and
:class:`RolloutBuffer` holds one epoch of them per env, cut into training sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pufferfiber.core.policy import Policy

# The recurrent state of a batch of envs: a tuple of [1, B, H] tensors.
State = tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------------------------
# Choosing actions


def sample_actions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one action per row from torch's global generator, where the logits are;
    returns ``(actions, log-probabilities)`` (the trainer's rollout)."""
    logp = torch.log_softmax(logits, dim=-1)
    actions = torch.multinomial(logp.exp(), 1).squeeze(-1)
    return actions, logp.gather(-1, actions[:, None]).squeeze(-1)


def choose_actions(
    logits: torch.Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(actions, log-probabilities)`` of one action per row.

    ``greedy`` takes the most likely action. Otherwise a ``generator`` samples on the CPU (a
    seed then plays the same episodes on any device: evaluation); without one,
    :func:`sample_actions` samples where the logits are (training).
    """
    if generator is None and not greedy:
        return sample_actions(logits)
    logits = logits.float().cpu()
    if greedy:
        actions = logits.argmax(-1)
    else:
        probs = torch.softmax(logits, -1)
        actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    logp = torch.log_softmax(logits, -1).gather(-1, actions[:, None]).squeeze(-1)
    return actions, logp


# ----------------------------------------------------------------------------------------------
# The rollout helper


@dataclass
class Acted:
    """What :meth:`Actor.act` returns for one batch of observations."""

    actions: torch.Tensor  # [B], where the policy is (sampled without a generator) or CPU
    logprobs: torch.Tensor  # [B]
    values: torch.Tensor  # [B]
    state: State  # the recurrent state each env had *before* this step


class Actor:
    """Plays ``policy`` for ``num_envs`` envs: forward with state, action choice, state carry.

    Every env has its own recurrent state, zeroed at the start and wherever an episode ends
    (:meth:`act`'s ``reset``, or :meth:`reset` once the env has reported it), so episodes never
    leak into each other. ``env_ids`` lets asynchronous vector envs step any subset of envs.
    """

    def __init__(
        self,
        policy: Policy,
        num_envs: int,
        device: torch.device,
        *,
        encoder_bf16: bool = False,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.policy, self.device, self.num_envs = policy, device, num_envs
        self.encoder_bf16, self.greedy, self.generator = encoder_bf16, greedy, generator
        self.state: State = tuple(policy.initial_state(num_envs, device))
        self._all_ids = np.arange(num_envs)

    def _everyone(self, ids: np.ndarray | None) -> bool:
        if ids is None:
            return True
        return len(ids) == self.num_envs and bool((ids == self._all_ids).all())

    @torch.inference_mode()
    def act(
        self,
        obs: torch.Tensor,
        env_ids: np.ndarray | None = None,
        reset: torch.Tensor | None = None,
    ) -> Acted:
        """Actions for observations ``obs`` ``[B, *obs]`` of the envs ``env_ids`` (default: all,
        in order). ``reset`` ``[B]`` (1 = the episode ended with this observation) zeroes those
        envs' new state, so their next observation starts from zeros."""
        everyone = self._everyone(env_ids)
        state = self.state if everyone else tuple(s[:, env_ids] for s in self.state)
        logits, values, new_state = self.policy.step(obs.to(self.device), state, self.encoder_bf16)
        actions, logprobs = choose_actions(logits, greedy=self.greedy, generator=self.generator)
        if reset is not None:
            keep = 1.0 - reset.to(self.device)[None, :, None]
            new_state = tuple(s * keep for s in new_state)
        if everyone:
            self.state = tuple(new_state)
        else:
            for mine, new in zip(self.state, new_state, strict=True):
                mine[:, env_ids] = new
        return Acted(actions, logprobs, values, state)

    @torch.inference_mode()
    def reset(self, env: int) -> None:
        """Zero env ``env``'s recurrent state (its episode has just ended)."""
        for s in self.state:
            s[:, env] = 0.0


# ----------------------------------------------------------------------------------------------
# Rollout storage


@dataclass
class Transition:
    """One step of the envs ``env_ids`` as the trainer stores it (every field indexed like
    ``env_ids``). The reward and done arrived with ``obs`` (PufferLib's convention)."""

    env_ids: np.ndarray
    obs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    state: State  # recurrent state before this step, [1, B, H] tensors

    def select(self, keep: np.ndarray) -> Transition:
        """The envs where the boolean mask ``keep`` is set."""
        k = torch.from_numpy(keep)
        return Transition(
            self.env_ids[keep],
            self.obs[k],
            self.rewards[k],
            self.dones[k],
            self.actions[k],
            self.logprobs[k],
            self.values[k],
            tuple(s[:, k.to(s.device)] for s in self.state),
        )


# Per-step fields of a Transition, stored as [num_envs, steps] (obs: [num_envs, steps, *obs]).
_STEP_FIELDS = ("obs", "rewards", "dones", "actions", "logprobs", "values")


class RolloutBuffer:
    """One epoch of experience, stored per environment: ``[num_envs, steps_per_env, ...]``.

    Every env contributes the same number of steps so that GAE runs along real trajectories
    and each env's steps cut into whole ``bptt_horizon`` sequences. Each env has its own write
    pointer, so asynchronous vector envs (which return a subset of envs per step) fill it too;
    steps of an env that is already full are dropped. ``state_sizes`` are the widths of the
    recurrent state's tensors (``(H, H)`` for an LSTM); the state at the first step of every
    training sequence is kept, one tensor per state tensor, in :attr:`initial_state`.
    """

    def __init__(
        self,
        num_envs: int,
        steps: int,
        bptt: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        state_sizes: Sequence[int],
    ) -> None:
        self.num_envs, self.steps, self.bptt = num_envs, steps, bptt
        self.obs = torch.zeros(num_envs, steps, *obs_shape, dtype=obs_dtype)
        self.actions = torch.zeros(num_envs, steps, dtype=torch.int64)
        self.logprobs = torch.zeros(num_envs, steps)
        self.values = torch.zeros(num_envs, steps)
        self.rewards = torch.zeros(num_envs, steps)
        self.dones = torch.zeros(num_envs, steps)
        self.initial_state: State = tuple(
            torch.zeros(num_envs, steps // bptt, size) for size in state_sizes
        )
        self.ptr = np.zeros(num_envs, dtype=np.int64)

    @property
    def full(self) -> bool:
        return bool(self.ptr.min() >= self.steps)

    def reset(self) -> None:
        self.ptr[:] = 0

    def free_rows(self, env_ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the envs in ``env_ids`` that still have room."""
        return self.ptr[env_ids] < self.steps

    def store(self, step: Transition, room: np.ndarray | None = None) -> None:
        """Write one step; with ``room``, only the envs where it is set (the others' steps
        are dropped)."""
        if room is not None and not room.all():
            step = step.select(room)
        env_ids = step.env_ids
        slots = self.ptr[env_ids]
        if len(env_ids) == self.num_envs and (slots == slots[0]).all():
            self._store_all(int(slots[0]), step)
            return
        e, s = torch.from_numpy(env_ids), torch.from_numpy(slots)
        for name in _STEP_FIELDS:
            getattr(self, name)[e, s] = getattr(step, name)
        starts = torch.from_numpy(slots % self.bptt == 0)
        if bool(starts.any()):
            seq = s[starts] // self.bptt
            for mine, new in zip(self.initial_state, step.state, strict=True):
                mine[e[starts], seq] = new[0, starts.to(new.device)].cpu()
        self.ptr[env_ids] += 1

    def _store_all(self, slot: int, step: Transition) -> None:
        """Fast path of :meth:`store` when every env steps at the same slot (synchronous envs):
        plain slice copies instead of scatter."""
        order = torch.from_numpy(np.argsort(step.env_ids))
        identity = bool((step.env_ids == np.arange(self.num_envs)).all())

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if identity else x[order.to(x.device)]

        for name in _STEP_FIELDS:
            getattr(self, name)[:, slot] = pick(getattr(step, name))
        if slot % self.bptt == 0:
            for mine, new in zip(self.initial_state, step.state, strict=True):
                mine[:, slot // self.bptt] = pick(new[0]).cpu()
        self.ptr[step.env_ids] += 1

    def sequences(self, advantages: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch as ``[num_sequences, bptt, ...]`` tensors, plus the recurrent state at the
        start of each sequence as ``state0``, ``state1``... (``[num_sequences, H]`` each)."""
        n, b = self.num_envs * (self.steps // self.bptt), self.bptt
        adv = torch.from_numpy(advantages)
        data = {
            "obs": self.obs.reshape(n, b, *self.obs.shape[2:]),
            "actions": self.actions.reshape(n, b),
            "logprobs": self.logprobs.reshape(n, b),
            "values": self.values.reshape(n, b),
            "dones": self.dones.reshape(n, b),
            "advantages": adv.reshape(n, b),
            "returns": (adv + self.values).reshape(n, b),
        }
        for i, s in enumerate(self.initial_state):
            data[f"state{i}"] = s.reshape(n, -1)
        return data
