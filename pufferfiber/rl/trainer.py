"""PPO with a recurrent policy, following PufferLib 2.0's ``clean_pufferl`` (read top to bottom).

One *epoch* = :meth:`Trainer.collect` ``batch_size`` agent steps from the vector environment
(a recurrent state carried per env by the shared rollout helper, :class:`~pufferfiber.rl.rollout.
Actor`) + :meth:`Trainer.update`: GAE(γ, λ) advantages, then ``update_epochs`` passes over the
batch cut into sequences of ``bptt_horizon`` steps and minibatches of ``minibatch_size`` steps,
each with the clipped policy loss, the clipped value loss, an entropy bonus, per-minibatch
advantage normalisation, grad-norm clipping and Adam (eps 1e-5). After each epoch the training
hooks run (:mod:`pufferfiber.rl.callbacks`), every ``checkpoint_interval`` epochs and at the end
``model_EEEEEE.pt`` + ``trainer_state.pt`` are saved, and the epoch's numbers go to the metric
sinks (:mod:`pufferfiber.rl.sinks`: the dashboard, ``metrics.jsonl``, an optional tracker). Epochs
and agent steps are absolute: a run resumed at epoch 51 continues at 52. Ctrl-C never leaves a
checkpoint whose weights, optimizer state and step count disagree: during the rollout or the
update the epoch is dropped (weights and Adam state go back to the last finished epoch), after
the update the epoch finishes first; then that epoch is saved.

Conventions (PufferLib's): the reward and done stored with observation ``o_t`` are those the
environment returned with it, i.e. the outcome of the previous action; a done observation is the
terminal one, its action is ignored and the next observation starts a new episode. Two
deliberate differences: the recurrent state is zeroed after a done (so episodes never leak into
each other, as in evaluation), and each training sequence starts from the state the rollout had
at that point (CleanRL) rather than from the previous minibatch's final state.
"""

from __future__ import annotations

import copy
import math
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pufferfiber.config.sections import ConfigError, RunConfig
from pufferfiber.core.policy import Policy
from pufferfiber.io.runfiles import METRICS
from pufferfiber.rl.callbacks import (
    HOOK_STEPS,
    Checkpointer,
    EpochContext,
    Hook,
    named_hooks,
)
from pufferfiber.rl.dashboard import Dashboard, abbreviate
from pufferfiber.rl.rollout import (
    Actor,
    RolloutBuffer,
    Transition,
    sample_actions,
)
from pufferfiber.rl.sinks import EpochMetrics, MetricSink, run_sinks, trim_metrics, with_totals
from pufferfiber.rl.start import NEW_RUN, RunStart

# Names other modules (and experiments) import from here.
__all__ = [
    "HOOK_STEPS",
    "METRICS_FILE",
    "EpochContext",
    "Hook",
    "RolloutBuffer",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "Transition",
    "compute_gae",
    "explained_variance",
    "resolve_device",
    "sample_actions",
    "trim_metrics",
    "use_bf16",
]

METRICS_FILE = METRICS  # one JSON line per finished epoch, in the run folder

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
# Trainer


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


def make_adam(
    policy: nn.Module, learning_rate: float, state: dict[str, Any] | None = None
) -> torch.optim.Adam:
    """PPO's Adam (eps 1e-5), in torch's fused kernel: one pass over every parameter instead
    of a dozen small ops per tensor (1.08x faster update at PufferLib's reference settings,
    ``benchmarks/update_levers.py``); the same algorithm, to rounding. ``state`` (a saved
    ``state_dict``, fused or not) continues its moments."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate, eps=1e-5, fused=True)
    if state is not None:
        optimizer.load_state_dict(state)
        for group in optimizer.param_groups:  # a state saved unfused says fused=None
            group["fused"], group["foreach"] = True, None
    return optimizer


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
        config: the run's settings (``config.train`` hyperparameters, ``config.vec.num_envs``,
            ``config.train.tracker``).
        vecenv: a PufferLib vector env of ``config.vec.num_envs`` envs (not yet reset).
        policy: the network to train (any :class:`Architecture`, e.g. a collapsed one).
        run_dir: where checkpoints, ``trainer_state.pt``, the log copy and metrics go.
        start_epoch / start_global_step: where the run resumes (0 for a new run).
        end_epoch: last epoch to train (default ``config.train.end_epoch``).
        optimizer_state: Adam state to resume from (``--resume``), else a fresh optimizer.
        hooks: called after every epoch's update; returned numbers become User Stats; their
            state is saved by name (see :mod:`pufferfiber.rl.callbacks`).
        dashboard: the dashboard to draw (default: stdout, copied to ``run_dir/log_name``).
        log_name: name of the plain-text dashboard copy in ``run_dir``.
        meta: extra metadata stored in every checkpoint (e.g. what it was collapsed from).
        sinks: more metric sinks, beside the dashboard, ``metrics.jsonl`` and the tracker.
    """

    def __init__(
        self,
        config: RunConfig,
        vecenv: Any,
        policy: Policy,
        run_dir: Path,
        *,
        start: RunStart = NEW_RUN,
        hooks: Sequence[Hook] = (),
        dashboard: Dashboard | None = None,
        sinks: Sequence[MetricSink] = (),
    ) -> None:
        t = config.train
        self.config, self.cfg, self.vecenv, self.run_dir = config, t, vecenv, Path(run_dir)
        self.device = resolve_device(t.device)
        self.policy = policy.to(self.device)
        self.optimizer = make_adam(self.policy, t.learning_rate, start.optimizer_state)
        self.epoch, self.global_step = start.epoch, start.global_step
        self.end_epoch = t.end_epoch if start.end_epoch is None else start.end_epoch
        self.hooks = named_hooks(hooks)
        self.meta = dict(start.meta)
        self.num_envs = config.vec.num_envs
        if policy.arch.kind == "cnn":
            # oneDNN's convolutions (forward and backward) run ~1.5-2x faster in NHWC on CPU.
            self.policy.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # CPU threads for the update: torch's default on a CPU; one beside a GPU, where the CPU
        # only does GAE and copies, and more OpenMP threads spin against the env workers.
        cpu_default = torch.get_num_threads() if self.device.type == "cpu" else 1
        self.update_threads = t.torch_threads or cpu_default
        # The rollout's threads: with the serial backend the envs step between inferences in
        # this thread, so the update's threads are free for the policy's step (1.6x faster
        # rollout on 2 cores at 1,024 envs, benchmarks/update_levers.py). Env worker processes
        # (or a GPU's: 16 OpenMP threads against 16 busy workers made the rollout's bookkeeping
        # 85 % of the epoch) get one thread.
        serial_cpu = self.device.type == "cpu" and config.vec.backend == "serial"
        self.rollout_threads = t.rollout_threads or (self.update_threads if serial_cpu else 1)
        self.encoder_bf16 = use_bf16(t.precision, self.device)
        self.actor = Actor(self.policy, self.num_envs, self.device, encoder_bf16=self.encoder_bf16)
        obs_space = vecenv.single_observation_space
        self.buffer = RolloutBuffer(
            self.num_envs,
            t.batch_size // self.num_envs,
            t.bptt_horizon,
            tuple(obs_space.shape),
            torch.from_numpy(np.zeros(0, dtype=obs_space.dtype)).dtype,
            [s.shape[-1] for s in self.actor.state],
        )
        self.checkpointer = Checkpointer(self.run_dir, t.checkpoint_interval)
        self.dashboard = dashboard or Dashboard(copy_path=self.run_dir / start.log_name)
        self.sinks = run_sinks(self.dashboard, self.run_dir, t.tracker, start.global_step)
        self.sinks += list(sinks)
        self.profile = Profile()
        self.message = f"Model Size: {abbreviate(policy.parameter_count())} parameters"
        self._started = False
        self._start_time = time.time()
        # State at the start of the epoch in progress (see _drop_unfinished_epoch).
        self._epoch_start_step: int | None = None
        self._before_update: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    @property
    def checkpoints(self) -> list[Path]:
        """The checkpoints this trainer has written, in order."""
        return self.checkpointer.saved

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
            with prof("eval_forward"):
                # A done observation ends its episode: that env's next step starts from zeros.
                acted = self.actor.act(obs_t, ids, reset=done)
                actions = acted.actions.cpu()
            with prof("eval_misc"):
                step = Transition(
                    ids,
                    obs_t,
                    torch.from_numpy(rewards),
                    done,
                    actions,
                    acted.logprobs.cpu(),
                    acted.values.cpu(),
                    acted.state,
                )
                buf.store(step, room=buf.free_rows(ids) & np.asarray(mask, dtype=bool))
                for key, value in _numeric_infos(infos):
                    episode_stats[key].append(value)
            with prof("env"):
                self.vecenv.send(actions.numpy())
        self.global_step += self.cfg.batch_size
        return {k: float(np.mean(v)) for k, v in episode_stats.items() if v}

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
        with self.profile("train_forward"):
            loss, stats = self.losses(mb)
        with self.profile("learn"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
        return {k: v.item() for k, v in stats.items()}

    def losses(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The PPO loss of one minibatch and its statistics (PufferLib's names), as tensors.
        One pure function of the minibatch and the weights, so it can be compiled alone."""
        cfg = self.cfg
        # The recurrent state at the start of each sequence: [1, B, H] tensors.
        n_state = len(self.buffer.initial_state)
        state = tuple(mb[f"state{i}"][None].contiguous() for i in range(n_state))
        logits, newvalue = self.policy.unroll(mb["obs"], state, mb["dones"], self.encoder_bf16)
        logp_all = torch.log_softmax(logits, dim=-1)
        newlogprob = logp_all.gather(-1, mb["actions"][..., None]).squeeze(-1).reshape(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
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
            v_clipped = old_v + torch.clamp(newvalue - old_v, -cfg.vf_clip_coef, cfg.vf_clip_coef)
            v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - ret) ** 2).mean()
        else:
            v_loss = 0.5 * v_loss_unclipped.mean()
        entropy_loss = entropy.mean()
        loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
        stats = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy_loss.detach(),
            "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl,
            "clipfrac": clipfrac,
        }
        return loss, stats

    # -- after the update: hooks, checkpoint, metrics --------------------------------------------

    def save(self) -> Path:
        """Checkpoint of the current epoch + optimizer state and hook states (see
        :meth:`pufferfiber.rl.callbacks.Checkpointer.save`)."""
        path = self.checkpointer.save(
            self.policy,
            self.optimizer,
            epoch=self.epoch,
            global_step=self.global_step,
            end_epoch=self.end_epoch,
            env=self.config.env_name,
            config=self.config.to_dict(),
            meta=self.meta,
            hooks=self.hooks,
        )
        self.message = f"Checkpoint saved at update {self.epoch}"
        return path

    def _run_hooks(self) -> dict[str, float]:
        recent = self.buffer.obs[:, : min(self.buffer.steps, HOOK_STEPS)]
        ctx = EpochContext(
            self.policy, self.optimizer, self.epoch, self.global_step, self.run_dir, recent
        )
        stats: dict[str, float] = {}
        for hook in self.hooks.values():
            stats.update({k: float(v) for k, v in (hook(ctx) or {}).items()})
        return stats

    def _report(
        self, losses: dict[str, float], user_stats: dict[str, float], epoch_seconds: float
    ) -> None:
        sps = self.cfg.batch_size / epoch_seconds if epoch_seconds > 0 else 0.0
        remaining = (self.end_epoch - self.epoch) * self.cfg.batch_size / sps if sps else 0.0
        metrics = EpochMetrics(
            self.config.env_name,
            self.epoch,
            self.global_step,
            sps,
            time.time() - self._start_time,
            remaining,
            with_totals(self.profile.seconds),
            losses,
            user_stats,
            self.message,
        )
        for sink in self.sinks:
            sink.write(metrics)

    def train_epoch(self) -> None:
        """Collect, update, run hooks, checkpoint when due, report to the sinks.

        Ctrl-C during the collection or the update drops the epoch (see
        :meth:`_drop_unfinished_epoch`); once the update is done, the rest of the epoch (hooks,
        checkpoint, dashboard, ``metrics.jsonl`` line) finishes before Ctrl-C is acted on.
        """
        start = time.perf_counter()
        self._epoch_start_step = self.global_step
        with _torch_threads(self.rollout_threads):
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
            if self.checkpointer.due(self.epoch, self.end_epoch):
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
                path = self.checkpointer.path(self.epoch)
                if self.checkpointer.saved_epoch != self.epoch or not path.is_file():
                    path = self.save()
            finally:
                signal.signal(signal.SIGINT, previous)
            raise TrainingInterrupted(self.epoch, path) from None
        finally:
            self._close_sinks()
        return TrainResult(self.epoch, self.global_step, self.checkpoints, self.run_dir)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # a tracker failing to flush must not hide the outcome
                print(f"warning: closing a metric sink failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._close_sinks()
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
