"""Symmetry breaking: function preserved exactly on planted fibers, precise edits and optimizer
resets, the hook's schedule, ages and log, and a real (tiny) training run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.graph import build_graph, named_tensors, put_units, take_units
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.rl.breaking import (
    BreakPlan,
    SymmetryBreaker,
    apply_plans,
    function_change,
    redundant_members,
)

TINY_CNN = Architecture.atari(4, obs_shape=(1, 44, 44), channels=(4, 6, 6), hidden=12, lstm=8)
TINY_MLP = Architecture.mlp(4, 2, hidden=(10, 9), lstm=7)


def make_policy(arch: Architecture, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(arch)


def plant(policy: Policy, label: str, rep: int, members: list[int], factor: float = 1.0) -> None:
    """Make ``members`` exact copies of ``rep`` (every incoming row, LSTM gates and biases).

    ``factor`` != 1 plants positive multiples instead (only exact for ReLU layers)."""
    graph = build_graph(policy)
    tensors = named_tensors(policy)
    node = graph[label]
    for axis in graph.incoming_axes(node):
        row = take_units(axis, tensors[axis.key], [rep])
        put_units(
            axis,
            tensors[axis.key],
            members,
            row.expand_as(take_units(axis, tensors[axis.key], members)) * factor,
        )


def sequences(policy: Policy, seed: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A batch of 5 sequences of 6 steps and the LSTM state the policy reaches after a warm-up
    of 4 steps on other observations (so members of LSTM fibers have equal h and c)."""
    arch = policy.arch
    warm = observation_batch(arch, 5 * 4, seed).reshape(5, 4, *arch.obs_shape)
    obs = observation_batch(arch, 5 * 6, seed + 1).reshape(5, 6, *arch.obs_shape)
    with torch.no_grad():
        _, _, state = policy(warm, None)
    return obs, state


def outputs(policy: Policy, obs: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple:
    with torch.no_grad():
        logits, value, _ = policy(obs, state)
    return logits, value


def break_all(policy: Policy, threshold: float = 0.0, layers: list[str] | None = None):
    breaker = SymmetryBreaker(
        interval=1,
        fiber_threshold=threshold,
        maturity=0,
        fraction=1.0,
        layers=layers,
        seed=3,
        log_name=None,
    )
    return breaker, breaker.step(policy, None, epoch=5)


# --------------------------------------------------------------------------- function preserved

CASES = {
    "conv1": (TINY_CNN, {"conv1": (1, [2])}),
    "conv2-multiple": (TINY_CNN, {"conv2": (0, [3, 5])}),
    "linear1": (TINY_CNN, {"linear1": (2, [4, 7, 9])}),
    "lstm": (TINY_CNN, {"lstm": (1, [3, 6])}),
    "all-layers": (
        TINY_CNN,
        {"conv1": (0, [3]), "conv3": (2, [4]), "linear1": (5, [1]), "lstm": (0, [7])},
    ),
    "mlp": (TINY_MLP, {"linear1": (0, [5]), "linear2": (1, [2, 8]), "lstm": (4, [6])}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_function_unchanged_when_planted_duplicates_break(case: str) -> None:
    arch, plants = CASES[case]
    policy = make_policy(arch)
    for label, (rep, members) in plants.items():
        factor = 2.5 if case == "conv2-multiple" else 1.0  # ReLU: positive multiples fold too
        plant(policy, label, rep, members, factor)
    obs, state = sequences(policy)
    before = copy.deepcopy(policy)
    logits0, value0 = outputs(policy, obs, state)

    _, report = break_all(policy)

    logits1, value1 = outputs(policy, obs, state)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value1, value0, atol=1e-5, rtol=1e-5)
    for label, (rep, members) in plants.items():
        assert report.broken[label] == len(members)
        plan = next(p for p in report.plans if p.layer == label)
        group = sorted([rep, *members])  # the representative is the fiber's lowest index
        assert sorted(plan.broken.tolist()) == group[1:]
        assert set(plan.representatives.tolist()) == {group[0]}
    # The broken units are new units: the fibers of the edited network are all singletons.
    after = compute_fibers(policy, 0.0)
    assert all(f.n_fibers == f.node.size for f in after.layers)
    assert function_change(before, policy, obs, state)["mean_kl"] < 1e-9


def test_layer_with_nothing_redundant_is_left_untouched() -> None:
    policy = make_policy(TINY_CNN)
    plant(policy, "linear1", 0, [1])
    untouched = {k: v.clone() for k, v in policy.state_dict().items() if "network.0." in k}
    _, report = break_all(policy)
    assert report.broken["conv1"] == 0 and report.broken["lstm"] == 0
    assert report.broken["linear1"] == 1
    for k, v in untouched.items():
        assert torch.equal(policy.state_dict()[k], v)


def test_layer_where_everything_is_redundant_keeps_one_unit() -> None:
    policy = make_policy(TINY_CNN)
    n = TINY_CNN.hidden[0]
    plant(policy, "linear1", 3, [u for u in range(n) if u != 3])
    obs, state = sequences(policy)
    logits0, value0 = outputs(policy, obs, state)
    _, report = break_all(policy, layers=["linear1"])
    assert report.broken == {"linear1": n - 1}
    logits1, value1 = outputs(policy, obs, state)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value1, value0, atol=1e-5, rtol=1e-5)
    # Every LSTM input now comes from the representative (the lowest index) alone.
    assert torch.count_nonzero(policy.recurrent.weight_ih_l0[:, 1:]) == 0
    assert torch.count_nonzero(policy.recurrent.weight_ih_l0[:, 0]) > 0


def test_everything_redundant_lstm() -> None:
    policy = make_policy(TINY_MLP)
    k = TINY_MLP.lstm
    plant(policy, "lstm", 0, list(range(1, k)))
    obs, state = sequences(policy)
    logits0, value0 = outputs(policy, obs, state)
    _, report = break_all(policy, layers=["lstm"])
    assert report.broken == {"lstm": k - 1}
    logits1, value1 = outputs(policy, obs, state)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value1, value0, atol=1e-5, rtol=1e-5)


def test_lstm_fold_needs_equal_states() -> None:
    """The fold reads h_r where h_j was read: with h_j != h_r in the given state it is not
    function-preserving (why the exact test runs from states the network produced)."""
    policy = make_policy(TINY_MLP)
    plant(policy, "lstm", 1, [4])
    obs, (h, c) = sequences(policy)
    h = h.clone()
    h[..., 4] += 0.5
    logits0, _ = outputs(policy, obs, (h, c))
    break_all(policy, layers=["lstm"])
    logits1, _ = outputs(policy, obs, (h, c))
    assert (logits1 - logits0).abs().max() > 1e-4


def test_approximate_fibers_change_the_function_a_little() -> None:
    policy = make_policy(TINY_MLP)
    plant(policy, "linear2", 1, [2, 8])
    with torch.no_grad():  # near duplicates: a little noise on the planted rows
        policy.network[3].weight[[2, 8]] += 1e-3 * torch.randn(2, 10)
    obs, state = sequences(policy)
    before = copy.deepcopy(policy)
    assert break_all(policy, layers=["linear2"], threshold=0.01)[1].broken["linear2"] == 2
    change = function_change(before, policy, obs, state)
    assert 0 < change["max_logit_diff"] < 1e-2
    assert change["mean_kl"] < 1e-4


# --------------------------------------------------------------------------- precise edits


def _adam_with_moments(policy: Policy) -> torch.optim.Adam:
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    obs, state = sequences(policy)
    for _ in range(2):
        logits, value, _ = policy(obs, state)
        (logits.square().mean() + value.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_adam_moments_reset_exactly_at_edited_entries_linear() -> None:
    policy = make_policy(TINY_MLP)
    opt = _adam_with_moments(policy)
    key_w, key_b = "policy.policy.network.3.weight", "policy.policy.network.3.bias"
    consumer = "policy.recurrent.weight_ih_l0"
    moments = {
        k: {m: t.clone() for m, t in opt.state[p].items()} for k, p in policy.named_parameters()
    }
    plan = BreakPlan("linear2", np.array([2, 8]), np.array([1, 1]), np.ones(2))
    apply_plans(policy, [plan], optimizer=opt)

    params = dict(policy.named_parameters())
    for key, p in params.items():
        for m in ("exp_avg", "exp_avg_sq"):
            expected = moments[key][m].clone()
            if key in (key_w, key_b):
                expected[[2, 8]] = 0
            elif key == consumer:
                expected[:, [1, 2, 8]] = 0
            assert torch.equal(opt.state[p][m], expected), (key, m)
        assert opt.state[p]["step"] == moments[key]["step"]


def test_adam_moments_and_weights_edited_exactly_for_lstm() -> None:
    policy = make_policy(TINY_MLP)
    opt = _adam_with_moments(policy)
    k = TINY_MLP.lstm
    sd0 = {key: v.clone() for key, v in policy.state_dict().items()}
    moments = {
        key: {m: t.clone() for m, t in opt.state[p].items()} for key, p in policy.named_parameters()
    }
    j, r = 5, 2
    apply_plans(
        policy, [BreakPlan("lstm", np.array([j]), np.array([r]), np.ones(1))], optimizer=opt
    )
    sd = policy.state_dict()
    rows = [g * k + j for g in range(4)]  # unit j's four gate rows (i, f, g, o)
    other_rows = [i for i in range(4 * k) if i not in rows]
    hh, hh0 = sd["policy.recurrent.weight_hh_l0"], sd0["policy.recurrent.weight_hh_l0"]
    # W_hh column j folded onto column r for every other row, then zeroed.
    assert torch.allclose(hh[other_rows, r], hh0[other_rows, r] + hh0[other_rows, j])
    assert torch.count_nonzero(hh[other_rows, j]) == 0  # j's own rows are fresh
    cols = [c for c in range(k) if c not in (j, r)]
    assert torch.equal(hh[np.ix_(other_rows, cols)], hh0[np.ix_(other_rows, cols)])
    # Unit j's gate rows are fresh (not the old ones), biases zero.
    assert not torch.allclose(
        sd["policy.recurrent.weight_ih_l0"][rows], sd0["policy.recurrent.weight_ih_l0"][rows]
    )
    for b in ("bias_ih_l0", "bias_hh_l0"):
        assert torch.count_nonzero(sd[f"policy.recurrent.{b}"][rows]) == 0
    # Heads: column j folded onto r (the published code zeroes other indices).
    for head in ("policy.policy.actor.weight", "policy.policy.value_fn.weight"):
        assert torch.count_nonzero(sd[head][:, j]) == 0
        assert torch.allclose(sd[head][:, r], sd0[head][:, r] + sd0[head][:, j])
        others = [c for c in range(k) if c not in (j, r)]
        assert torch.equal(sd[head][:, others], sd0[head][:, others])
    # Moments: zero exactly at the edited entries.
    params = dict(policy.named_parameters())
    for key, p in params.items():
        for m in ("exp_avg", "exp_avg_sq"):
            expected = moments[key][m].clone()
            if key in (
                "policy.recurrent.weight_ih_l0",
                "policy.recurrent.bias_ih_l0",
                "policy.recurrent.bias_hh_l0",
            ):
                expected[rows] = 0
            elif key == "policy.recurrent.weight_hh_l0":
                expected[rows] = 0
                expected[:, [j, r]] = 0
            elif key in ("policy.policy.actor.weight", "policy.policy.value_fn.weight"):
                expected[:, [j, r]] = 0
            assert torch.equal(opt.state[p][m], expected), (key, m)


def test_fresh_rows_have_the_layers_scale() -> None:
    policy = make_policy(TINY_CNN)
    w0 = policy.network[7].weight.detach().clone()
    apply_plans(policy, [BreakPlan("linear1", np.arange(1, 12), np.zeros(11, int), np.ones(11))])
    fresh = policy.network[7].weight[1:].detach()
    assert not torch.allclose(fresh, w0[1:])
    ratio = float(fresh.std() / w0.std())
    assert 0.8 < ratio < 1.25


def test_broken_unit_learns_again() -> None:
    """Zero outgoing weights but a live activation: its outgoing column gets a gradient."""
    policy = make_policy(TINY_MLP)
    plant(policy, "linear1", 0, [5])
    break_all(policy, layers=["linear1"])
    obs, state = sequences(policy)
    logits, value, _ = policy(obs, state)
    (logits.square().mean() + value.square().mean()).backward()
    assert policy.network[3].weight.grad[:, 5].abs().sum() > 0


def test_redundant_members() -> None:
    members, reps = redundant_members(np.array([0, 1, 0, 2, 1, 0]))
    assert members.tolist() == [2, 4, 5]
    assert reps.tolist() == [0, 1, 0]


# --------------------------------------------------------------------------- the hook


def _ctx(policy: Policy, epoch: int, run_dir: Path | None, opt=None) -> SimpleNamespace:
    return SimpleNamespace(
        policy=policy, optimizer=opt, epoch=epoch, global_step=epoch * 100, run_dir=run_dir
    )


def test_hook_schedule_log_and_maturity(tmp_path: Path) -> None:
    policy = make_policy(TINY_MLP)
    plant(policy, "linear1", 0, [1, 2, 3, 4])
    breaker = SymmetryBreaker(interval=2, fiber_threshold=0.0, maturity=3, fraction=0.5, seed=1)
    assert breaker(_ctx(policy, 1, tmp_path)) is None  # not due
    assert breaker(_ctx(policy, 2, tmp_path)) == {
        "broken_linear1": 0.0,
        "broken_linear2": 0.0,
        "broken_lstm": 0.0,
    }  # not mature
    stats = breaker(_ctx(policy, 4, tmp_path))
    assert stats is not None and stats["broken_linear1"] == 2  # ceil(0.5 · 4)
    broken_now = np.flatnonzero(breaker.born["linear1"] == 4)
    assert len(broken_now) == 2
    plant(policy, "linear1", 0, broken_now.tolist())  # redundant again, but young
    stats = breaker(_ctx(policy, 6, tmp_path))
    assert stats is not None and stats["broken_linear1"] == 1  # ceil(0.5 · 2 mature)
    lines = [json.loads(s) for s in (tmp_path / "breaking.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in lines] == [2, 4, 6]
    assert [d["broken"]["linear1"] for d in lines] == [0, 2, 1]
    assert lines[1]["fibers"]["linear1"] == TINY_MLP.hidden[0] - 4
    assert lines[1]["redundant"]["linear1"] == 4 and lines[1]["fiber_threshold"] == 0.0


def test_deterministic_given_seed() -> None:
    results = []
    for _ in range(2):
        policy = make_policy(TINY_CNN)
        plant(policy, "linear1", 0, list(range(1, 12)))
        SymmetryBreaker(
            interval=1, fiber_threshold=0.0, maturity=0, fraction=0.5, seed=7, log_name=None
        ).step(policy, None, 3)
        results.append(policy.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_state_dict_round_trip_keeps_ages() -> None:
    policy = make_policy(TINY_MLP)
    plant(policy, "linear1", 0, [1, 2])
    a = SymmetryBreaker(interval=1, fiber_threshold=0.0, maturity=0, fraction=1.0, log_name=None)
    a.step(policy, None, 9)
    b = SymmetryBreaker(log_name=None)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert np.array_equal(b.born["linear1"], a.born["linear1"])
    assert b.total_broken == {"linear1": 2, "linear2": 0, "lstm": 0}


def test_unknown_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no layer 'conv1'; choose from linear1, linear2, lstm"):
        SymmetryBreaker(layers=["conv1"]).check(make_policy(TINY_MLP))
    SymmetryBreaker(layers=["conv", "lstm"]).check(make_policy(TINY_CNN))
    with pytest.raises(ValueError, match="no layer 'linear7'"):
        SymmetryBreaker(layers=["linear7"]).step(make_policy(TINY_MLP), None, 1)
    with pytest.raises(ValueError, match="head"):
        SymmetryBreaker(layers=["actor"]).step(make_policy(TINY_MLP), None, 1)


def test_opfibers_restrict_breaking() -> None:
    """Duplicate incoming rows but different outgoing columns: fibers say redundant, opfibers
    (at an exact threshold) do not, so nothing breaks when opfibers are required."""
    policy = make_policy(TINY_MLP)
    plant(policy, "linear2", 0, [4])
    with_op = SymmetryBreaker(
        interval=1,
        fiber_threshold=0.0,
        opfiber_threshold=0.0,
        maturity=0,
        fraction=1.0,
        layers=["linear2"],
        log_name=None,
    )
    assert with_op.step(policy, None, 1).broken == {"linear2": 0}
    without = SymmetryBreaker(
        interval=1, fiber_threshold=0.0, maturity=0, fraction=1.0, layers=["linear2"], log_name=None
    )
    assert without.step(policy, None, 1).broken == {"linear2": 1}


# --------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_breaking_in_a_real_cartpole_run(tmp_path: Path) -> None:
    from pufferfiber.config.sections import load_config
    from pufferfiber.envs.registry import architecture_for, make_vecenv
    from pufferfiber.rl.trainer import Trainer

    cfg = load_config(
        "cartpole",
        {
            "train.total_timesteps": "4096",
            "train.device": "cpu",
            "train.checkpoint_interval": "100",
            "vec.num_workers": "1",
        },
    )
    vecenv = make_vecenv("cartpole", "serial", cfg.vec.num_envs)
    policy = Policy(architecture_for("cartpole", vecenv))
    breaker = SymmetryBreaker(interval=2, fiber_threshold=0.6, maturity=0, fraction=1.0, seed=0)
    trainer = Trainer(cfg, vecenv, policy, tmp_path / "run", hooks=[breaker])
    try:
        trainer.train()
    finally:
        trainer.close()
    lines = [json.loads(s) for s in (tmp_path / "run" / "breaking.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in lines] == [2, 4]
    assert sum(sum(d["broken"].values()) for d in lines) > 0  # τ = 0.6 finds redundant units
    metrics = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["broken_linear1"] == lines[0]["broken"]["linear1"]
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())


def test_channels_last_policy_breaks_like_a_contiguous_one() -> None:
    """The trainer keeps CNN policies in channels-last memory format: edits must still land."""
    policy = make_policy(TINY_CNN)
    policy.to(memory_format=torch.channels_last)
    assert not policy.network[2].weight.is_contiguous()
    opt = _adam_with_moments(policy)
    plant(policy, "conv2", 1, [4])  # after training steps, which would split the copies again
    plant(policy, "linear1", 0, [3])
    obs, state = sequences(policy)
    logits0, value0 = outputs(policy, obs, state)
    breaker = SymmetryBreaker(
        interval=1, fiber_threshold=0.0, maturity=0, fraction=1.0, seed=3, log_name=None
    )
    report = breaker.step(policy, opt, epoch=5)
    assert report.broken["conv2"] == 1 and report.broken["linear1"] == 1
    logits1, value1 = outputs(policy, obs, state)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value1, value0, atol=1e-5, rtol=1e-5)
    assert not policy.network[2].weight.is_contiguous()  # layout kept
    moment = opt.state[policy.network[2].weight]["exp_avg"]
    assert torch.count_nonzero(moment[4]) == 0 and torch.count_nonzero(moment[5]) > 0
