"""PPO with an LSTM policy, following PufferLib 2.0's ``clean_pufferl`` (read top to bottom).

One *epoch* = :meth:`Trainer.collect` ``batch_size`` agent steps from the vector environment
(an LSTM state carried per env) + :meth:`Trainer.update`: GAE(γ, λ) advantages, then
``update_epochs`` passes over the batch cut into sequences of ``bptt_horizon`` steps and
minibatches of ``minibatch_size`` steps, each with the clipped policy loss, the clipped value
loss, an entropy bonus, per-minibatch advantage normalisation, grad-norm clipping and Adam
(eps 1e-5). After each epoch the hooks run, the dashboard is drawn, ``metrics.jsonl`` gets a line
and, every ``checkpoint_interval`` epochs and at the end, ``model_EEEEEE.pt`` + the optimizer
state are saved. Epochs and agent steps are absolute: a run resumed at epoch 51 continues at 52.
Ctrl-C never leaves a checkpoint whose weights, optimizer state and step count disagree: during
the rollout or the update the epoch is dropped (weights and Adam state go back to the last
finished epoch), after the update the epoch finishes first; then that epoch is saved.

Conventions (PufferLib's): the reward and done stored with observation ``o_t`` are those the
environment returned with it, i.e. the outcome of the previous action; a done observation is the
terminal one, its action is ignored and the next observation starts a new episode. Two
deliberate differences: the LSTM state is zeroed after a done (so episodes never leak into each
other, as in evaluation), and each training sequence starts from the LSTM state the rollout had
at that point (CleanRL) rather than from the previous minibatch's final state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pufferfiber.config import ConfigError, RunConfig
from pufferfiber.dashboard import Dashboard, DashboardState, abbreviate, machine_usage
from pufferfiber.policy import LSTMState, Policy

# ----------------------------------------------------------------------------------------------
# Advantages


def compute_gae(
    dones: np.ndarray, values: np.ndarray, rewards: np.ndarray, gamma: float, gae_lambda: float
) -> np.ndarray:
    """Generalised advantage estimates along the last (time) axis, PufferLib's convention.

    ``rewards[..., t+1]`` and ``dones[..., t+1]`` arrive with observation ``t+1`` and belong to
    the action taken at ``t``::

        δ_t = r_{t+1} + γ V_{t+1} (1 − d_{t+1}) − V_t
        A_t = δ_t + γ λ (1 − d_{t+1}) A_{t+1}

    The last step of each row has no successor and gets advantage 0. Vectorised over leading
    axes (one row per environment); the loop is over time only.
    """
    dones = np.asarray(dones, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    rewards = np.asarray(rewards, dtype=np.float32)
    advantages = np.zeros_like(values)
    not_done = 1.0 - dones[..., 1:]
    deltas = rewards[..., 1:] + gamma * values[..., 1:] * not_done - values[..., :-1]
    discounts = gamma * gae_lambda * not_done
    last = np.zeros(values.shape[:-1], dtype=np.float32)
    for t in range(values.shape[-1] - 2, -1, -1):
        last = deltas[..., t] + discounts[..., t] * last
        advantages[..., t] = last
    return advantages


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 − Var(target − predicted) / Var(target) (NaN when the target is constant)."""
    var = float(np.var(target))
    return math.nan if var == 0 else 1.0 - float(np.var(target - predicted)) / var


# ----------------------------------------------------------------------------------------------
# Rollout storage


class RolloutBuffer:
    """One epoch of experience, stored per environment: ``[num_envs, steps_per_env, ...]``.

    Every env contributes the same number of steps so that GAE runs along real trajectories
    and each env's steps cut into whole ``bptt_horizon`` sequences. Each env has its own write
    pointer, so asynchronous vector envs (which return a subset of envs per step) fill it too;
    steps of an env that is already full are dropped.
    """

    def __init__(
        self,
        num_envs: int,
        steps: int,
        bptt: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        lstm_size: int,
    ) -> None:
        self.num_envs, self.steps, self.bptt = num_envs, steps, bptt
        self.obs = torch.zeros(num_envs, steps, *obs_shape, dtype=obs_dtype)
        self.actions = torch.zeros(num_envs, steps, dtype=torch.int64)
        self.logprobs = torch.zeros(num_envs, steps)
        self.values = torch.zeros(num_envs, steps)
        self.rewards = torch.zeros(num_envs, steps)
        self.dones = torch.zeros(num_envs, steps)
        # LSTM state at the first step of every training sequence.
        self.h0 = torch.zeros(num_envs, steps // bptt, lstm_size)
        self.c0 = torch.zeros(num_envs, steps // bptt, lstm_size)
        self.ptr = np.zeros(num_envs, dtype=np.int64)

    @property
    def full(self) -> bool:
        return bool(self.ptr.min() >= self.steps)

    def reset(self) -> None:
        self.ptr[:] = 0

    def free_rows(self, env_ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the envs in ``env_ids`` that still have room."""
        return self.ptr[env_ids] < self.steps

    def store(
        self,
        env_ids: np.ndarray,
        obs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        actions: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        state: LSTMState,
    ) -> None:
        """Write one step of the envs ``env_ids`` (all arrays indexed like ``env_ids``)."""
        slots = self.ptr[env_ids]
        if len(env_ids) == self.num_envs and (slots == slots[0]).all():
            self._store_all(
                int(slots[0]), env_ids, obs, rewards, dones, actions, logprobs, values, state
            )
            return
        e, s = torch.from_numpy(env_ids), torch.from_numpy(slots)
        self.obs[e, s] = obs
        self.rewards[e, s] = rewards
        self.dones[e, s] = dones
        self.actions[e, s] = actions
        self.logprobs[e, s] = logprobs
        self.values[e, s] = values
        starts = torch.from_numpy(slots % self.bptt == 0)
        if bool(starts.any()):
            seq = s[starts] // self.bptt
            self.h0[e[starts], seq] = state[0][0, starts].cpu()
            self.c0[e[starts], seq] = state[1][0, starts].cpu()
        self.ptr[env_ids] += 1

    def store_where(
        self,
        room: np.ndarray,
        env_ids: np.ndarray,
        obs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        actions: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        state: LSTMState,
    ) -> None:
        """:meth:`store` for the envs where ``room`` is set; the others' steps are dropped."""
        if room.all():
            self.store(env_ids, obs, rewards, dones, actions, logprobs, values, state)
            return
        r = torch.from_numpy(room)
        self.store(
            env_ids[room],
            obs[r],
            rewards[r],
            dones[r],
            actions[r],
            logprobs[r],
            values[r],
            (state[0][:, r], state[1][:, r]),
        )

    def _store_all(
        self,
        slot: int,
        env_ids: np.ndarray,
        obs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        actions: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        state: LSTMState,
    ) -> None:
        """Fast path of :meth:`store` when every env steps at the same slot (synchronous envs):
        plain slice copies instead of scatter."""
        order = torch.from_numpy(np.argsort(env_ids))
        identity = bool((env_ids == np.arange(self.num_envs)).all())
        pick = (lambda x: x) if identity else (lambda x: x[order])
        self.obs[:, slot] = pick(obs)
        self.rewards[:, slot] = pick(rewards)
        self.dones[:, slot] = pick(dones)
        self.actions[:, slot] = pick(actions)
        self.logprobs[:, slot] = pick(logprobs)
        self.values[:, slot] = pick(values)
        if slot % self.bptt == 0:
            self.h0[:, slot // self.bptt] = pick(state[0][0].cpu())
            self.c0[:, slot // self.bptt] = pick(state[1][0].cpu())
        self.ptr[env_ids] += 1

    def sequences(self, advantages: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch as ``[num_sequences, bptt, ...]`` tensors (plus ``h0``/``c0`` per sequence)."""
        n, b = self.num_envs * (self.steps // self.bptt), self.bptt
        adv = torch.from_numpy(advantages)
        return {
            "obs": self.obs.reshape(n, b, *self.obs.shape[2:]),
            "actions": self.actions.reshape(n, b),
            "logprobs": self.logprobs.reshape(n, b),
            "values": self.values.reshape(n, b),
            "dones": self.dones.reshape(n, b),
            "advantages": adv.reshape(n, b),
            "returns": (adv + self.values).reshape(n, b),
            "h0": self.h0.reshape(n, -1),
            "c0": self.c0.reshape(n, -1),
        }


# ----------------------------------------------------------------------------------------------
# Policy evaluation helpers


def sample_actions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one action per row; returns ``(actions, log-probabilities)``."""
    logp = torch.log_softmax(logits, dim=-1)
    actions = torch.multinomial(logp.exp(), 1).squeeze(-1)
    return actions, logp.gather(-1, actions[:, None]).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Trainer


@dataclass
class EpochContext:
    """What a per-epoch hook sees (after the update of ``epoch``).

    ``observations`` is a read-only view of this epoch's rollout: ``[num_envs, T, *obs]``
    sequences (the first ``HOOK_STEPS`` steps of every env), e.g. for measuring activations.
    """

    policy: Policy
    optimizer: torch.optim.Optimizer
    epoch: int
    global_step: int
    run_dir: Path
    observations: torch.Tensor | None = None


Hook = Callable[[EpochContext], "dict[str, float] | None"]


HOOK_STEPS = 64  # rollout steps per env shown to hooks as EpochContext.observations
METRICS_FILE = "metrics.jsonl"  # one JSON line per finished epoch, in the run folder


class TrainingInterrupted(Exception):
    """Ctrl-C during training; a checkpoint of ``epoch`` was saved at ``path``."""

    def __init__(self, epoch: int, path: Path) -> None:
        super().__init__(f"interrupted; checkpoint of epoch {epoch} saved at {path}")
        self.epoch, self.path = epoch, path


@dataclass
class Profile:
    """Cumulative wall-clock seconds of each phase, named like PufferLib's dashboard rows."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass
class TrainResult:
    epoch: int
    global_step: int
    checkpoints: list[Path]
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; :class:`ConfigError` (one line) when it names a CUDA
    device this machine does not have, so nothing is created before the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device {name!r}: CUDA is not available here (torch "
                f"{torch.__version__}, no usable GPU); use --train.device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (emulated bf16 would be slower)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def use_bf16(precision: str, device: torch.device) -> bool:
    """``train.precision``: float32, bfloat16, or auto (bfloat16 where the hardware has it)."""
    return precision == "bfloat16" or (precision == "auto" and native_bf16(device))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


def _numeric_infos(infos: Any) -> Iterator[tuple[str, float]]:
    """``(key, value)`` of each numeric scalar in PufferLib's info dicts (nested: ``a/b``)."""
    items = infos if isinstance(infos, list | tuple) else [infos]
    for info in items:
        if not isinstance(info, dict):
            continue
        for key, value in info.items():
            if isinstance(value, dict):
                yield from ((f"{key}/{k}", v) for k, v in _numeric_infos(value))
            elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
                yield key, float(value)


class Trainer:
    """PPO on one vector environment; see the module docstring for the algorithm.

    Args:
        config: the run's settings (``config.train`` hyperparameters, ``config.vec.num_envs``).
        vecenv: a PufferLib vector env of ``config.vec.num_envs`` envs (not yet reset).
        policy: the network to train (any :class:`Architecture`, e.g. a collapsed one).
        run_dir: where checkpoints, ``trainer_state.pt``, the log copy and metrics go.
        start_epoch / start_global_step: where the run resumes (0 for a new run).
        end_epoch: last epoch to train (default ``config.train.end_epoch``).
        optimizer_state: Adam state to resume from (``--resume``), else a fresh optimizer.
        hooks: called after every epoch's update; returned numbers become User Stats.
        log_name: name of the plain-text dashboard copy in ``run_dir``.
        meta: extra metadata stored in every checkpoint (e.g. what it was collapsed from).
    """

    def __init__(
        self,
        config: RunConfig,
        vecenv: Any,
        policy: Policy,
        run_dir: Path,
        *,
        start_epoch: int = 0,
        start_global_step: int = 0,
        end_epoch: int | None = None,
        optimizer_state: dict[str, Any] | None = None,
        hooks: Sequence[Hook] = (),
        dashboard: Dashboard | None = None,
        log_name: str = "log.out",
        meta: dict[str, Any] | None = None,
    ) -> None:
        t = config.train
        self.config, self.cfg, self.vecenv, self.run_dir = config, t, vecenv, Path(run_dir)
        self.device = resolve_device(t.device)
        self.policy = policy.to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=t.learning_rate, eps=1e-5)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.epoch, self.global_step = start_epoch, start_global_step
        self.end_epoch = t.end_epoch if end_epoch is None else end_epoch
        self.hooks = list(hooks)
        self.meta = dict(meta or {})
        self.dashboard = dashboard or Dashboard(copy_path=self.run_dir / log_name)
        self.num_envs = config.vec.num_envs
        obs_space = vecenv.single_observation_space
        self.buffer = RolloutBuffer(
            self.num_envs,
            t.batch_size // self.num_envs,
            t.bptt_horizon,
            tuple(obs_space.shape),
            torch.from_numpy(np.zeros(0, dtype=obs_space.dtype)).dtype,
            policy.arch.lstm,
        )
        self.lstm_state = policy.initial_state(self.num_envs, self.device)
        self._all_ids = np.arange(self.num_envs)
        if policy.arch.kind == "cnn":
            # oneDNN's convolutions (forward and backward) run ~1.5-2x faster in NHWC on CPU.
            self.policy.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.profile = Profile()
        self.message = f"Model Size: {abbreviate(policy.parameter_count())} parameters"
        self.checkpoints: list[Path] = []
        # CPU threads for the update: torch's default on a CPU; one beside a GPU, where the CPU
        # only does GAE and copies, and more OpenMP threads spin against the env workers.
        cpu_default = torch.get_num_threads() if self.device.type == "cpu" else 1
        self.update_threads = t.torch_threads or cpu_default
        self.encoder_bf16 = use_bf16(t.precision, self.device)
        self._started = False
        self._start_time = time.time()
        # State at the start of the epoch in progress (see _drop_unfinished_epoch).
        self._epoch_start_step: int | None = None
        self._before_update: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self._saved_epoch: int | None = None

    # -- rollout -------------------------------------------------------------------------------

    @torch.inference_mode()
    def collect(self) -> dict[str, float]:
        """Fill the buffer with ``batch_size`` steps; returns the mean of each numeric info
        (``episode_return``, ``episode_length``...) over episodes finished meanwhile."""
        prof, buf = self.profile, self.buffer
        if not self._started:
            self.vecenv.async_reset(self.cfg.seed)
            self._started = True
        buf.reset()
        episode_stats: dict[str, list[float]] = defaultdict(list)
        while not buf.full:
            with prof("env"):
                obs, rewards, terms, truncs, infos, env_ids, mask = self.vecenv.recv()
            with prof("eval_misc"):
                ids = np.asarray(env_ids, dtype=np.int64)
                obs_t = torch.from_numpy(obs)
                done = torch.from_numpy(np.logical_or(terms, truncs).astype(np.float32))
                state = self._env_state(ids)
            with prof("eval_forward"):
                logits, value, new_state = self.policy.step(
                    obs_t.to(self.device), state, self.encoder_bf16
                )
                actions, logprob = sample_actions(logits)
            with prof("eval_misc"):
                self._set_env_state(ids, new_state, done)
                room = buf.free_rows(ids) & np.asarray(mask, dtype=bool)
                buf.store_where(
                    room,
                    ids,
                    obs_t,
                    torch.from_numpy(rewards),
                    done,
                    actions.cpu(),
                    logprob.cpu(),
                    value.cpu(),
                    state,
                )
                for key, value_ in _numeric_infos(infos):
                    episode_stats[key].append(value_)
            with prof("env"):
                self.vecenv.send(actions.cpu().numpy())
        self.global_step += self.cfg.batch_size
        return {k: float(np.mean(v)) for k, v in episode_stats.items() if v}

    def _everyone(self, ids: np.ndarray) -> bool:
        return len(ids) == self.num_envs and bool((ids == self._all_ids).all())

    def _env_state(self, ids: np.ndarray) -> LSTMState:
        """LSTM state of the envs ``ids`` (no gather when every env steps, in order)."""
        if self._everyone(ids):
            return self.lstm_state
        return self.lstm_state[0][:, ids], self.lstm_state[1][:, ids]

    def _set_env_state(self, ids: np.ndarray, new: LSTMState, done: torch.Tensor) -> None:
        """Store the envs' new LSTM state, zeroed where an episode just ended."""
        keep = 1.0 - done.to(self.device)[None, :, None]
        if self._everyone(ids):
            self.lstm_state = (new[0] * keep, new[1] * keep)
        else:
            self.lstm_state[0][:, ids] = new[0] * keep
            self.lstm_state[1][:, ids] = new[1] * keep

    # -- update --------------------------------------------------------------------------------

    def update(self) -> dict[str, float]:
        """PPO update on the collected batch; returns the mean losses (PufferLib's names)."""
        cfg, prof, buf = self.cfg, self.profile, self.buffer
        with prof("train_misc"):
            advantages = compute_gae(
                buf.dones.numpy(),
                buf.values.numpy(),
                buf.rewards.numpy(),
                cfg.gamma,
                cfg.gae_lambda,
            )
            data = buf.sequences(advantages)
            if self.device.type != "cpu":
                # One copy of the whole batch per update, not one per minibatch: on a GPU the
                # host-to-device copies would otherwise dominate the small minibatches.
                data = {k: v.to(self.device, non_blocking=True) for k, v in data.items()}
            n_seq = data["obs"].shape[0]
            seq_per_mb = cfg.minibatch_size // cfg.bptt_horizon
            totals: dict[str, float] = defaultdict(float)
            n_minibatches = 0
        for _ in range(cfg.update_epochs):
            order = torch.randperm(n_seq).to(self.device)
            for start in range(0, n_seq, seq_per_mb):
                with prof("train_misc"):
                    mb = {k: v[order[start : start + seq_per_mb]] for k, v in data.items()}
                stats = self._minibatch_step(mb)
                with prof("train_misc"):
                    for k, v in stats.items():
                        totals[k] += v
                    n_minibatches += 1
            if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
                break
        with prof("train_misc"):
            losses = {k: v / n_minibatches for k, v in totals.items()}
            losses["explained_variance"] = explained_variance(
                buf.values.numpy().ravel(), (advantages + buf.values.numpy()).ravel()
            )
            if cfg.anneal_lr:
                frac = max(0.0, 1.0 - self.global_step / cfg.total_timesteps)
                for group in self.optimizer.param_groups:
                    group["lr"] = frac * cfg.learning_rate
        return losses

    def _minibatch_step(self, mb: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, prof = self.cfg, self.profile
        with prof("train_forward"):
            state = (mb["h0"][None].contiguous(), mb["c0"][None].contiguous())
            logits, newvalue = self.policy.unroll(mb["obs"], state, mb["dones"], self.encoder_bf16)
            logp_all = torch.log_softmax(logits, dim=-1)
            newlogprob = logp_all.gather(-1, mb["actions"][..., None]).squeeze(-1).reshape(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        with prof("train_misc"):
            logratio = newlogprob - mb["logprobs"].reshape(-1)
            ratio = logratio.exp()
            with torch.no_grad():
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
            adv = mb["advantages"].reshape(-1)
            if cfg.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            # Clipped surrogate policy loss.
            pg_loss = torch.max(
                -adv * ratio, -adv * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
            ).mean()
            # Value loss, optionally clipped around the rollout's values.
            newvalue = newvalue.reshape(-1)
            ret, old_v = mb["returns"].reshape(-1), mb["values"].reshape(-1)
            v_loss_unclipped = (newvalue - ret) ** 2
            if cfg.clip_vloss:
                v_clipped = old_v + torch.clamp(
                    newvalue - old_v, -cfg.vf_clip_coef, cfg.vf_clip_coef
                )
                v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - ret) ** 2).mean()
            else:
                v_loss = 0.5 * v_loss_unclipped.mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
        with prof("learn"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        return {
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy_loss.item(),
            "old_approx_kl": old_approx_kl.item(),
            "approx_kl": approx_kl.item(),
            "clipfrac": clipfrac.item(),
        }

    # -- bookkeeping ---------------------------------------------------------------------------

    def save(self) -> Path:
        """Checkpoint of the current epoch + optimizer state (both written atomically).

        The two files always agree: if the trainer state cannot be written (e.g. the disk is
        full), a checkpoint this call created is removed again and the error is raised.
        """
        from pufferfiber.checkpoints import checkpoint_name, save_checkpoint, save_trainer_state

        target = self.run_dir / checkpoint_name(self.epoch)
        existed = target.exists()
        path = save_checkpoint(
            target,
            self.policy,
            epoch=self.epoch,
            global_step=self.global_step,
            env=self.config.env_name,
            config=self.config.to_dict(),
            meta=self.meta,
        )
        try:
            save_trainer_state(
                self.run_dir,
                {
                    "optimizer": self.optimizer.state_dict(),
                    "epoch": self.epoch,
                    "global_step": self.global_step,
                    "checkpoint": path.name,
                    "end_epoch": self.end_epoch,
                    # e.g. symmetry breaking's unit ages, so --resume continues them
                    "hooks": [
                        h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks
                    ],
                },
            )
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        self._saved_epoch = self.epoch
        self.message = f"Checkpoint saved at update {self.epoch}"
        return path

    def _run_hooks(self) -> dict[str, float]:
        recent = self.buffer.obs[:, : min(self.buffer.steps, HOOK_STEPS)]
        ctx = EpochContext(
            self.policy, self.optimizer, self.epoch, self.global_step, self.run_dir, recent
        )
        stats: dict[str, float] = {}
        for hook in self.hooks:
            stats.update({k: float(v) for k, v in (hook(ctx) or {}).items()})
        return stats

    def _report(
        self, losses: dict[str, float], user_stats: dict[str, float], epoch_seconds: float
    ) -> None:
        uptime = time.time() - self._start_time
        sps = self.cfg.batch_size / epoch_seconds if epoch_seconds > 0 else 0.0
        remaining = (self.end_epoch - self.epoch) * self.cfg.batch_size / sps if sps else 0.0
        times = dict(self.profile.seconds)
        times["evaluate"] = (
            times.get("env", 0) + times.get("eval_forward", 0) + times.get("eval_misc", 0)
        )
        times["train"] = (
            times.get("train_forward", 0) + times.get("learn", 0) + times.get("train_misc", 0)
        )
        self.dashboard.show(
            DashboardState(
                self.config.env_name,
                self.global_step,
                self.epoch,
                sps,
                uptime,
                remaining,
                times,
                losses,
                user_stats,
                self.message,
                **machine_usage(),
            )
        )
        record = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "sps": sps,
            "uptime": uptime,
            **losses,
            **user_stats,
        }
        line = json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n"
        _append_line(self.run_dir / METRICS_FILE, line)

    def train_epoch(self) -> None:
        """Collect, update, run hooks, report, and checkpoint when due.

        Ctrl-C during the collection or the update drops the epoch (see
        :meth:`_drop_unfinished_epoch`); once the update is done, the rest of the epoch (hooks,
        checkpoint, dashboard, ``metrics.jsonl`` line) finishes before Ctrl-C is acted on.
        """
        start = time.perf_counter()
        self._epoch_start_step = self.global_step
        # Rollout batches (num_envs observations) are too small to split across threads, and
        # env stepping is single-threaded anyway: one thread avoids contention with the env
        # workers (on a GPU machine 16 OpenMP threads against 16 busy workers made the rollout's
        # bookkeeping 85 % of the epoch).
        with _torch_threads(1):
            episode_stats = self.collect()
        self._before_update = (
            {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
        )
        with _torch_threads(self.update_threads):
            losses = self.update()
        with _sigint_deferred():
            self.epoch += 1
            self._epoch_start_step, self._before_update = None, None
            user_stats = {**episode_stats, **self._run_hooks()}
            if self.epoch % self.cfg.checkpoint_interval == 0 or self.epoch >= self.end_epoch:
                self.save()
            self._report(losses, user_stats, time.perf_counter() - start)

    def _drop_unfinished_epoch(self) -> None:
        """Undo an epoch interrupted before its end: agent steps and, once the update has
        begun, weights and optimizer state go back to the last finished epoch, so the checkpoint
        saved at Ctrl-C holds exactly that epoch."""
        if self._epoch_start_step is not None:
            self.global_step = self._epoch_start_step
        if self._before_update is not None:
            weights, optimizer = self._before_update
            self.policy.load_state_dict(weights)
            self.optimizer.load_state_dict(optimizer)
        self._epoch_start_step, self._before_update = None, None

    def train(self) -> TrainResult:
        """Train until ``end_epoch``; Ctrl-C saves a checkpoint of the last finished epoch and
        raises :class:`TrainingInterrupted`."""
        from pufferfiber.checkpoints import checkpoint_name

        seed_everything(self.cfg.seed + self.epoch, self.cfg.torch_deterministic)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.policy.train()
        try:
            while self.epoch < self.end_epoch:
                self.train_epoch()
        except KeyboardInterrupt:
            # A second Ctrl-C while saving would leave a half-finished save: ignore it.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self._drop_unfinished_epoch()
                path = self.run_dir / checkpoint_name(self.epoch)
                if self._saved_epoch != self.epoch or not path.is_file():
                    path = self.save()
            finally:
                signal.signal(signal.SIGINT, previous)
            raise TrainingInterrupted(self.epoch, path) from None
        return TrainResult(self.epoch, self.global_step, self.checkpoints, self.run_dir)

    def close(self) -> None:
        try:
            self.vecenv.close()
        except Exception as exc:  # closing dead workers must not hide the real outcome
            print(f"warning: closing the environments failed: {exc}", file=sys.stderr)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Run a short block to its end even if Ctrl-C arrives; then raise ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def trim_metrics(run_dir: Path, epoch: int) -> list[int]:
    """Drop the ``metrics.jsonl`` lines of epochs after ``epoch`` (a run killed between
    checkpoints logged epochs that a resume trains again); returns the dropped epochs."""
    from pufferfiber.checkpoints import atomic_write_text

    path = Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return []
    keep, dropped = [], []
    for line in lines:
        try:
            line_epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            line_epoch = None  # a damaged line: drop it too, it cannot be plotted
        if isinstance(line_epoch, int) and line_epoch <= epoch:
            keep.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped.append(line_epoch if isinstance(line_epoch, int) else -1)
    if dropped:
        atomic_write_text(path, "".join(keep))
    return dropped


def _append_line(path: Path, line: str) -> None:
    """Append one whole line to ``path``; a failed write (full disk) is cut off again, so the
    file never ends in half a line, and raised as a one-line ``CheckpointError``."""
    from pufferfiber.checkpoints import CheckpointError, describe_os_error

    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CheckpointError(describe_os_error(path, exc)) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # unbuffered: a short write is retried, an error is cut off below
                view = view[os.write(fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise CheckpointError(describe_os_error(path, exc)) from exc
    finally:
        os.close(fd)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _json_number(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
