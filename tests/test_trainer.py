"""PPO trainer: GAE, rollout storage, sequence forward, checkpoints, resume, learning (cartpole)."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pufferfiber.config.sections import RunConfig, load_config
from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.envs.registry import architecture_for, make_vecenv
from pufferfiber.io.checkpoints import list_checkpoints, load_checkpoint, load_trainer_state
from pufferfiber.rl.dashboard import Dashboard
from pufferfiber.rl.start import RunStart
from pufferfiber.rl.trainer import (
    EpochContext,
    RolloutBuffer,
    Trainer,
    Transition,
    compute_gae,
    explained_variance,
)


def gae_direct(
    dones: np.ndarray, values: np.ndarray, rewards: np.ndarray, gamma: float, lam: float
) -> np.ndarray:
    """A_t = Σ_l (γλ)^l δ_{t+l}, the sum cut at the first done, written step by step."""
    n = len(values)
    adv = np.zeros(n)
    for t in range(n - 1):
        total, weight = 0.0, 1.0
        for k in range(t, n - 1):
            alive = 1.0 - dones[k + 1]
            delta = rewards[k + 1] + gamma * values[k + 1] * alive - values[k]
            total += weight * delta
            weight *= gamma * lam * alive
            if not alive:
                break
        adv[t] = total
    return adv


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9906, 0.1453), (1.0, 1.0), (0.5, 0.0)])
def test_gae_matches_the_direct_formula(gamma: float, lam: float) -> None:
    rng = np.random.default_rng(0)
    envs, steps = 3, 40
    dones = (rng.random((envs, steps)) < 0.1).astype(np.float32)
    values = rng.normal(size=(envs, steps)).astype(np.float32)
    rewards = rng.normal(size=(envs, steps)).astype(np.float32)
    got = compute_gae(dones, values, rewards, gamma, lam)
    for e in range(envs):
        want = gae_direct(dones[e], values[e], rewards[e], gamma, lam)
        np.testing.assert_allclose(got[e], want, rtol=1e-4, atol=1e-4)


def test_gae_hand_case() -> None:
    # λ = γ = 1, no dones: A_t = r_{t+1} + ... + r_{T-1} + V_{T-1} − V_t; last step 0.
    values = np.array([1.0, 2.0, 3.0, 4.0])
    rewards = np.array([0.0, 10.0, 20.0, 30.0])
    adv = compute_gae(np.zeros(4), values, rewards, 1.0, 1.0)
    np.testing.assert_allclose(adv, [60 + 4 - 1, 50 + 4 - 2, 30 + 4 - 3, 0.0])
    # a done arriving with step 2 stops bootstrapping from it: A_1 = r_2 − V_1
    adv = compute_gae(np.array([0, 0, 1, 0.0]), values, rewards, 1.0, 1.0)
    assert adv[1] == pytest.approx(20.0 - 2.0)


def test_explained_variance() -> None:
    y = np.array([1.0, 2.0, 3.0])
    assert explained_variance(y, y) == 1.0
    assert np.isnan(explained_variance(y, np.ones(3)))


def _transition(rng: np.random.Generator, ids: np.ndarray, sizes: tuple[int, ...]) -> Transition:
    n = len(ids)
    return Transition(
        ids,
        torch.from_numpy(rng.integers(0, 255, (n, 1, 4, 4), dtype=np.uint8)),
        torch.randn(n),
        torch.zeros(n),
        torch.randint(0, 3, (n,)),
        torch.randn(n),
        torch.randn(n),
        tuple(torch.randn(1, n, size) for size in sizes),
    )


@pytest.mark.parametrize("sizes", [(3, 3), (5,)], ids=["lstm-state", "gru-state"])
def test_rollout_buffer_async_and_sync_paths_agree(sizes: tuple[int, ...]) -> None:
    """Envs arriving in any order and subset land in the same slots as a synchronous step,
    for a recurrent state of any number of tensors."""
    rng = np.random.default_rng(1)
    fast = RolloutBuffer(4, 4, 2, (1, 4, 4), torch.uint8, sizes)
    slow = RolloutBuffer(4, 4, 2, (1, 4, 4), torch.uint8, sizes)
    for _ in range(4):
        step = _transition(rng, np.array([2, 0, 3, 1]), sizes)
        fast.store(step)
        for half in ([True, True, False, False], [False, False, True, True]):
            slow.store(step, room=np.array(half))  # the same step, two partial batches
    assert fast.full and slow.full
    for name in ("obs", "actions", "logprobs", "values", "rewards", "dones"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name))
    assert len(fast.initial_state) == len(sizes)
    for a, b in zip(fast.initial_state, slow.initial_state, strict=True):
        torch.testing.assert_close(a, b)
    assert slow.free_rows(np.arange(4)).sum() == 0
    # env 0's first sequence starts from the state stored with its first step (env 0 was
    # second in the step's order)
    data = fast.sequences(np.zeros((4, 4), dtype=np.float32))
    assert [data[f"state{i}"].shape for i in range(len(sizes))] == [(8, s) for s in sizes]


def test_buffer_drops_the_steps_of_full_envs() -> None:
    rng = np.random.default_rng(2)
    buf = RolloutBuffer(2, 2, 2, (1, 4, 4), torch.uint8, (3,))
    first = _transition(rng, np.array([0]), (3,))
    buf.store(first)
    buf.store(_transition(rng, np.array([0]), (3,)))
    buf.store(_transition(rng, np.array([0, 1]), (3,)), room=buf.free_rows(np.array([0, 1])))
    assert list(buf.ptr) == [2, 1]  # env 0 was full: its third step was dropped
    torch.testing.assert_close(buf.initial_state[0][0, 0], first.state[0][0, 0])


def _cartpole(**train: Any) -> RunConfig:
    settings = {
        "train.total_timesteps": "2048",
        "train.checkpoint_interval": "2",
        "vec.num_envs": "4",
        "train.batch_size": "512",
        "train.minibatch_size": "128",
    }
    settings.update({f"train.{k}": str(v) for k, v in train.items()})
    return load_config("cartpole", settings)


def _trainer(cfg: RunConfig, run_dir: Path, policy: Policy | None = None, **kw: Any) -> Trainer:
    vecenv = make_vecenv("cartpole", "serial", cfg.vec.num_envs)
    torch.manual_seed(0)
    policy = policy or Policy(architecture_for("cartpole", vecenv))
    stream = io.StringIO()
    return Trainer(
        cfg,
        vecenv,
        policy,
        run_dir,
        dashboard=Dashboard(stream, run_dir / "log.out", live=False),
        **kw,
    )


@pytest.mark.slow
def test_training_writes_checkpoints_metrics_log_and_runs_hooks(tmp_path: Path) -> None:
    cfg = _cartpole(total_timesteps=1536, checkpoint_interval=2)  # 3 epochs
    seen: list[EpochContext] = []

    def hook(ctx: EpochContext) -> dict[str, float]:
        seen.append(ctx)
        return {"my_stat": 10.0 * ctx.epoch}

    trainer = _trainer(cfg, tmp_path, hooks=[hook])
    result = trainer.train()
    trainer.close()
    assert result.epoch == 3 and result.global_step == 3 * 512
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]  # interval + the end
    assert [c.epoch for c in seen] == [1, 2, 3] and seen[-1].optimizer is trainer.optimizer
    obs = seen[-1].observations
    assert obs is not None and obs.shape == (4, 64, 4) and obs.abs().sum() > 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert [x["my_stat"] for x in lines] == [10.0, 20.0, 30.0]
    assert all("episode_return" in x and x["episode_length"] > 0 for x in lines)
    log = (tmp_path / "log.out").read_text()
    assert log.count("Agent Steps") == 3 and "Checkpoint saved at update 3" in log
    ckpt = load_checkpoint(tmp_path / "model_000003.pt", expect_env="cartpole")
    assert ckpt.global_step == 1536 and ckpt.config["train"]["batch_size"] == 512
    state = load_trainer_state(tmp_path)
    assert state is not None and state["epoch"] == 3 and state["checkpoint"] == "model_000003.pt"


@pytest.mark.slow
def test_resume_continues_epochs_steps_and_optimizer(tmp_path: Path) -> None:
    cfg = _cartpole(total_timesteps=1024)
    first = _trainer(cfg, tmp_path)
    first.train()
    first.close()
    state = load_trainer_state(tmp_path)
    assert state is not None
    ckpt = load_checkpoint(tmp_path / "model_000002.pt")
    steps_before = float(state["optimizer"]["state"][0]["step"])
    resumed = _trainer(
        cfg,
        tmp_path,
        policy=ckpt.policy,
        start=RunStart(
            ckpt.epoch, ckpt.global_step, end_epoch=4, optimizer_state=state["optimizer"]
        ),
    )
    # the resumed policy is the checkpoint, bit for bit
    for a, b in zip(
        resumed.policy.state_dict().values(), first.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    resumed.train()
    resumed.close()
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 4]
    after = load_trainer_state(tmp_path)
    assert after is not None and after["global_step"] == 4 * 512
    updates_per_epoch = cfg.train.update_epochs * cfg.train.batch_size // cfg.train.minibatch_size
    assert after["optimizer"]["state"][0]["step"] == steps_before + 2 * updates_per_epoch
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_keyboard_interrupt_saves_a_checkpoint(tmp_path: Path, monkeypatch: Any) -> None:
    from pufferfiber.rl.trainer import TrainingInterrupted

    trainer = _trainer(_cartpole(total_timesteps=4096, checkpoint_interval=100), tmp_path)
    real_update = trainer.update
    calls = {"n": 0}

    def update_then_interrupt() -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_update()

    monkeypatch.setattr(trainer, "update", update_then_interrupt)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    trainer.close()
    assert stop.value.epoch == 1 and stop.value.path == tmp_path / "model_000001.pt"
    state = load_trainer_state(tmp_path)
    assert state is not None and state["epoch"] == 1


@pytest.mark.slow
def test_cartpole_learns(tmp_path: Path) -> None:
    """The shipped cartpole settings reach a return near CartPole-v0's maximum (200)."""
    cfg = load_config("cartpole", {"train.checkpoint_interval": "1000"})
    trainer = _trainer(cfg, tmp_path)
    trainer.train()
    trainer.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([x["episode_return"] for x in lines[:3]])
    last = np.mean([x["episode_return"] for x in lines[-5:]])
    assert first < 60 and last > 150, (first, last)


def test_dashboard_formats_and_modes(tmp_path: Path) -> None:
    from pufferfiber.rl.dashboard import DashboardState, abbreviate, duration, render_text

    assert [abbreviate(x) for x in (950, 30720, 1_700_000, 2e9)] == ["950", "30.7k", "1.7m", "2.0b"]
    assert [duration(x) for x in (45, 153, 3915)] == ["45s", "2m 33s", "1h 5m 15s"]
    state = DashboardState(
        "beam_rider",
        30720,
        1,
        383.0,
        80.0,
        4000.0,
        losses={"approx_kl": 0.25, "old_approx_kl": 0.5},
        user_stats={"episode_return": 368.5, "episode_length": 1350.375},
        message="Model Size: 3.9m parameters",
    )
    text = render_text(state)
    for label in (
        "Summary",
        "Environment",
        "beam_rider",
        "Agent Steps",
        "30.7k",
        "SPS",
        "383",
        "Epoch",
        "Uptime",
        "1m 20s",
        "Remaining",
        "1h 6m 40s",
        "Evaluate",
        "Forward",
        "Env",
        "Misc",
        "Train",
        "Learn",
        "Losses",
        "explained_variance",
        "User Stats",
        "368.500",
        "1350.375",
        "Message: Model Size: 3.9m parameters",
    ):
        assert label in text, label
    kl_line = next(line for line in text.splitlines() if " approx_kl" in line)
    assert "0.250" in kl_line and "old_approx_kl" not in kl_line
    assert "\033" not in text
    plain, live = io.StringIO(), io.StringIO()
    Dashboard(plain, tmp_path / "copy.out", live=False).show(state)
    Dashboard(live, None, live=True).show(state)
    assert plain.getvalue().strip() == (tmp_path / "copy.out").read_text().strip() == text.strip()
    assert "\033[0;0H" in live.getvalue()  # redrawn in place on a terminal


def test_precision_setting(monkeypatch: Any) -> None:
    from pufferfiber.rl import trainer as trainer_mod

    cpu = torch.device("cpu")
    assert trainer_mod.use_bf16("bfloat16", cpu) and not trainer_mod.use_bf16("float32", cpu)
    for native in (True, False):
        monkeypatch.setattr(trainer_mod, "native_bf16", lambda device, n=native: n)
        assert trainer_mod.use_bf16("auto", cpu) is native
    assert load_config("beam_rider").train.precision == "auto"
    assert load_config("cartpole").train.precision == "float32"


class _OneTensorState(torch.nn.Module):
    """A GRU-like recurrent policy: the state is a 1-tuple ``(h,)``; ``h`` counts steps since the
    last reset, and the logits prefer action ``h mod 2`` (so actions reveal the state)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def initial_state(self, batch: int, device: Any = "cpu") -> tuple[torch.Tensor]:
        return (torch.zeros(1, batch, 2, device=device),)

    def step(
        self, obs: torch.Tensor, state: tuple[torch.Tensor], encoder_bf16: bool = False
    ) -> Any:
        return self(obs, state)  # the Policy.step contract the rollout calls

    def forward(self, obs: torch.Tensor, state: tuple[torch.Tensor]) -> Any:
        (h,) = state
        h = h + 1
        parity = h[0, :, 0] % 2
        logits = torch.stack([parity * 50.0, (1 - parity) * 50.0], dim=-1)
        return logits, obs.float().sum(-1), (h,)


def test_actor_carries_a_one_tensor_state_and_resets_it() -> None:
    from pufferfiber.rl.rollout import Actor

    actor = Actor(_OneTensorState(), 3, torch.device("cpu"), greedy=True)  # type: ignore[arg-type]
    obs = torch.zeros(3, 4)
    first = actor.act(obs)
    assert first.actions.tolist() == [0, 0, 0] and first.state[0].abs().sum() == 0
    # env 1 reports the end of its episode with this observation: its next step starts at zero
    second = actor.act(obs, reset=torch.tensor([0.0, 1.0, 0.0]))
    assert second.actions.tolist() == [1, 1, 1] and actor.state[0][0, :, 0].tolist() == [2, 0, 2]
    # an async vector env steps a subset: only those envs' states move
    third = actor.act(obs[:2], env_ids=np.array([2, 1]))
    assert third.state[0][0, :, 0].tolist() == [2, 0]  # the states before the step
    assert actor.state[0][0, :, 0].tolist() == [2, 1, 3]
    actor.reset(2)
    assert actor.state[0][0, :, 0].tolist() == [2, 1, 0]


class _PushAfter(_OneTensorState):
    """Pushes left for 4 steps after a reset, then always right (a short, deterministic
    episode whose length depends on the state being reset)."""

    def forward(self, obs: torch.Tensor, state: tuple[torch.Tensor]) -> Any:
        (h,) = state
        h = h + 1
        right = (h[0, :, 0] > 4).float()
        return torch.stack([(1 - right) * 50, right * 50], -1), obs.float().sum(-1), (h,)


def _plain_loop(policy: Any, episodes: int, n: int, seed: int, greedy: bool) -> list[float]:
    """Evaluation as a plain loop: policy on the batch, CPU sampling from the seeded
    generator (or argmax), the state zeroed when an episode ends."""
    from pufferfiber.envs.registry import make_env

    gen = torch.Generator().manual_seed(seed)
    envs = [make_env("cartpole") for _ in range(n)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    state = policy.initial_state(n)
    started, returns, running, active = n, [], np.zeros(n), np.ones(n, dtype=bool)
    with torch.no_grad():
        while active.any():
            logits, _, state = policy(torch.as_tensor(obs), state)
            probs = torch.softmax(logits, -1)
            actions = probs.argmax(-1) if greedy else torch.multinomial(probs, 1, generator=gen)
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                ob, reward, term, trunc, _ = env.step(np.asarray(actions[i].item()))
                running[i] += float(reward)
                obs[i] = ob
                if term or trunc:
                    returns.append(running[i])
                    running[i] = 0.0
                    for s in state:
                        s[:, i] = 0.0
                    if started < episodes:
                        obs[i] = env.reset(seed=seed + started)[0]
                        started += 1
                    else:
                        active[i] = False
    return returns


@pytest.mark.slow
@pytest.mark.parametrize("which", ["lstm-sampled", "one-tensor-greedy"])
def test_play_episodes_matches_a_plain_loop(which: str) -> None:
    """The shared rollout helper plays the same episodes as a plain evaluation loop."""
    from pufferfiber.rl.evaluate import play_episodes

    torch.manual_seed(3)
    greedy = which.endswith("greedy")
    policy: Any = _PushAfter() if greedy else Policy(Architecture.mlp(4, 2, (8,), lstm=6))
    want = _plain_loop(policy.eval(), 6, 2, 11, greedy)
    assert play_episodes(policy, "cartpole", 6, seed=11, num_envs=2, greedy=greedy) == want


@pytest.mark.slow
def test_collect_observations_is_seeded() -> None:
    from pufferfiber.rl.evaluate import collect_observations

    policy = Policy(Architecture.mlp(4, 2, hidden=(8,), lstm=6))
    frames = collect_observations(policy, "cartpole", 3, 20, seed=1)
    assert frames.shape == (3, 20, 4) and frames.abs().sum() > 0
    assert torch.equal(frames, collect_observations(policy, "cartpole", 3, 20, seed=1))
    assert not torch.equal(frames, collect_observations(policy, "cartpole", 3, 20, seed=2))


class _Counter:
    """A stateful hook: counts the epochs it has seen, saved under its ``name``."""

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, 0

    def __call__(self, ctx: EpochContext) -> dict[str, float]:
        self.seen += 1
        return {f"{self.name}_seen": float(self.seen)}

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = state["seen"]


@pytest.mark.slow
def test_hook_state_is_saved_and_restored_by_name(tmp_path: Path) -> None:
    from pufferfiber.rl.callbacks import named_hooks, restore_hook_states

    cfg = _cartpole(total_timesteps=1024, checkpoint_interval=1)
    a, b = _Counter("alpha"), _Counter("beta")
    b.seen = 10
    trainer = _trainer(cfg, tmp_path, hooks=[a, b, lambda ctx: None])
    trainer.train()
    trainer.close()
    state = load_trainer_state(tmp_path)
    assert state is not None and state["hooks"] == {"alpha": {"seen": 2}, "beta": {"seen": 12}}
    # resumed with the hooks in another order (and one more): each gets its own state back
    new_b, new_a, extra = _Counter("beta"), _Counter("alpha"), _Counter("gamma")
    restored = restore_hook_states([new_b, extra, new_a], state["hooks"])
    assert sorted(restored) == ["alpha", "beta"]
    assert (new_a.seen, new_b.seen, extra.seen) == (2, 12, 0)
    assert list(named_hooks([a, _Counter("alpha")])) == ["alpha", "alpha#2"]


def test_adam_is_fused_and_continues_an_unfused_state() -> None:
    """The trainer's Adam is torch's fused kernel; a state saved by the plain loop (older
    checkpoints) continues in it, and both take the same steps to rounding."""
    from pufferfiber.rl.trainer import make_adam

    torch.manual_seed(0)
    policy = Policy(Architecture.mlp(4, 2, hidden=(8,), lstm=6))
    twin = copy.deepcopy(policy)
    plain = torch.optim.Adam(twin.parameters(), lr=1e-2, eps=1e-5)
    fused = make_adam(policy, 1e-2)
    obs = torch.randn(5, 3, 4)

    def step(net: Policy, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        logits, value = net.unroll(obs, None, torch.zeros(5, 3))
        (logits.square().mean() + value.mean()).backward()
        opt.step()

    for _ in range(3):
        step(twin, plain)
        step(policy, fused)
    resumed = make_adam(policy, 1e-2, plain.state_dict())
    assert all(g["fused"] for g in fused.param_groups + resumed.param_groups)
    for a, b in zip(policy.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    resumed.load_state_dict(fused.state_dict())  # moments and steps carried over
    assert float(resumed.state_dict()["state"][0]["step"]) == 3.0


def test_rollout_threads_follow_the_backend(tmp_path: Path) -> None:
    """auto: the update's threads with the serial backend on a CPU, one with env workers."""
    serial = _trainer(_cartpole(torch_threads=2), tmp_path / "a")
    assert (serial.update_threads, serial.rollout_threads) == (2, 2)
    serial.close()
    cfg = _cartpole(torch_threads=2)
    workers = replace(cfg, vec=replace(cfg.vec, backend="multiprocessing"))
    trainer = _trainer(workers, tmp_path / "b")  # the env object itself stays serial here
    assert trainer.rollout_threads == 1
    trainer.close()
    own = _trainer(_cartpole(torch_threads=2, rollout_threads=1), tmp_path / "c")
    assert own.rollout_threads == 1
    own.close()
