"""The quotient network: planted symmetries collapse exactly, approximate collapses are sound."""

from __future__ import annotations

import pytest
import torch

from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.graph import build_graph, named_tensors, put_units, take_units
from pufferfiber.core.policy import Architecture, Policy, observation_batch

CNN = Architecture.atari(5, channels=(6, 8, 7), hidden=24, lstm=12)
MLP = Architecture.mlp(6, 3, hidden=(20, 16), lstm=10)


def plant(policy: Policy, label: str, src: int, dst: int, factor: float = 1.0) -> None:
    """Make unit ``dst`` of a layer copy ``factor`` × unit ``src``'s incoming rows and bias."""
    g = build_graph(policy)
    tensors = named_tensors(policy)
    for axis in g.incoming_axes(g[label]):
        put_units(
            axis, tensors[axis.key], [dst], take_units(axis, tensors[axis.key], [src]) * factor
        )


def planted(arch: Architecture, seed: int = 0) -> Policy:
    """Duplicates and positive multiples in every hidden layer (LSTM: duplicates only)."""
    torch.manual_seed(seed)
    policy = Policy(arch)
    for node in build_graph(policy).hidden:
        plant(policy, node.label, 1, 3)
        plant(policy, node.label, 0, 4)
        if node.spec.homogeneous:
            plant(policy, node.label, 1, 5, factor=2.5)
            plant(policy, node.label, 0, 2, factor=0.3)
    return policy


def sequence(arch: Architecture, batch: int = 3, steps: int = 6) -> torch.Tensor:
    return observation_batch(arch, batch * steps, seed=1).reshape(batch, steps, *arch.obs_shape)


def max_output_error(a: Policy, b: Policy, obs: torch.Tensor) -> float:
    with torch.no_grad():
        la, va, _ = a(obs)
        lb, vb, _ = b(obs)
    scale = max(la.abs().max().item(), va.abs().max().item(), 1.0)
    return max((la - lb).abs().max().item(), (va - vb).abs().max().item()) / scale


@pytest.mark.parametrize("arch", [CNN, MLP], ids=["cnn", "mlp"])
def test_planted_symmetries_collapse_exactly(arch: Architecture) -> None:
    policy = planted(arch)
    fibration = compute_fibers(policy, 0.0)
    for layer in fibration.layers:
        removed = 4 if layer.node.spec.homogeneous else 2
        assert layer.n_fibers == layer.node.size - removed, layer.node.label
        assert layer.labels[3] == layer.labels[1] and layer.labels[4] == layer.labels[0]
    quotient = collapse_policy(policy, fibration)
    assert quotient.parameter_count() < policy.parameter_count()
    assert quotient.parameter_count() == quotient.arch.parameter_count()
    assert max_output_error(policy, quotient, sequence(arch)) < 1e-5


def test_lstm_state_carried_between_calls_stays_exact() -> None:
    policy = planted(MLP)
    quotient = collapse_policy(policy, compute_fibers(policy, 0.0))
    obs = sequence(MLP, steps=8)
    with torch.no_grad():
        _, _, s1 = policy(obs[:, :4])
        _, _, q1 = quotient(obs[:, :4])
        l2, v2, _ = policy(obs[:, 4:], s1)
        m2, w2, _ = quotient(obs[:, 4:], q1)
    assert torch.allclose(l2, m2, atol=1e-5) and torch.allclose(v2, w2, atol=1e-5)


def test_positive_multiples_need_the_fold_factor() -> None:
    policy = planted(MLP)
    fibration = compute_fibers(policy, 0.0)
    plain = collapse_policy(policy, fibration, scale_aware=False)
    assert max_output_error(policy, plain, sequence(MLP)) > 1e-3


@pytest.mark.parametrize("arch", [CNN, MLP], ids=["cnn", "mlp"])
def test_collapsed_model_collapses_again(arch: Architecture) -> None:
    policy = planted(arch)
    once = collapse_policy(policy, compute_fibers(policy, 0.0))
    again_fibers = compute_fibers(once, 0.0)
    assert all(f.n_fibers == f.node.size for f in again_fibers.layers)
    twice = collapse_policy(once, compute_fibers(once, 0.6))
    assert twice.parameter_count() < once.parameter_count()
    logits, value, _ = twice(sequence(arch))
    assert logits.shape[-1] == arch.n_actions and torch.isfinite(value).all()


def test_zero_threshold_on_random_network_changes_nothing() -> None:
    torch.manual_seed(3)
    policy = Policy(CNN)
    quotient = collapse_policy(policy, compute_fibers(policy, 0.0))
    assert quotient.arch == policy.arch
    for key, value in policy.state_dict().items():
        assert torch.allclose(value, quotient.state_dict()[key], atol=1e-6), key


def test_layer_selection_keeps_other_layers_whole() -> None:
    policy = planted(CNN)
    fibration = compute_fibers(policy, 0.0, layers=["linear", "lstm"])
    quotient = collapse_policy(policy, fibration)
    assert quotient.arch.channels == CNN.channels
    assert quotient.arch.hidden == (CNN.hidden[0] - 4,) and quotient.arch.lstm == CNN.lstm - 2
    assert max_output_error(policy, quotient, sequence(CNN)) < 1e-5


def test_parameter_count_matches_spec_formula_for_beam_rider_sizes() -> None:
    arch = Architecture.atari(9)
    for k1, k2 in [(512, 512), (298, 304), (17, 5)]:
        small = arch.replace(hidden=(k1,), lstm=k2)
        expected = 71_840 + 3_457 * k1 + 4 * k2 * (k1 + k2) + 18 * k2 + 10
        assert small.parameter_count() == expected


def test_approximate_collapse_keeps_units_of_a_fiber_consistent() -> None:
    torch.manual_seed(5)
    policy = Policy(MLP)
    fibration = compute_fibers(policy, 0.8)
    quotient = collapse_policy(policy, fibration)
    assert quotient.arch.hidden == tuple(fibration[f"linear{i}"].n_fibers for i in (1, 2))
    assert quotient.arch.lstm == fibration["lstm"].n_fibers
    # The quotient's rows are fiber means. linear1's inputs are the observation (discrete
    # colours), so each of its quotient rows is exactly the mean of its fiber's rows.
    w = policy.state_dict()["policy.policy.network.1.weight"].double()
    labels = torch.as_tensor(fibration["linear1"].labels)
    assert 1 < fibration["linear1"].n_fibers < MLP.hidden[0]  # merges and singletons both
    means = torch.stack([w[labels == k].mean(dim=0) for k in range(int(labels.max()) + 1)])
    quotient_w = quotient.state_dict()["policy.policy.network.1.weight"].double()
    torch.testing.assert_close(quotient_w, means, atol=1e-6, rtol=1e-6)
