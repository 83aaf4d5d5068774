"""Policy shapes, parameter counts and the collapsed-size formula of SPEC §5."""

from __future__ import annotations

import pytest
import torch

from pufferfiber.envs import architecture_for
from pufferfiber.policy import Architecture, Policy, observation_batch


def test_beam_rider_network_matches_pufferlib() -> None:
    arch = architecture_for("beam_rider")
    policy = Policy(arch)
    assert arch.obs_shape == (1, 105, 80) and arch.n_actions == 9
    assert policy.parameter_count() == 3_948_202 == arch.parameter_count()
    assert arch.conv_output_shape() == (64, 9, 6) and arch.flat_size() == 3456
    keys = set(policy.state_dict())
    for k in ("network.0", "network.2", "network.4", "network.7", "actor", "value_fn"):
        assert f"policy.policy.{k}.weight" in keys
    assert "policy.recurrent.weight_hh_l0" in keys


@pytest.mark.parametrize("k1,k2", [(512, 512), (297, 230), (1, 1), (100, 7)])
def test_collapsed_parameter_formula(k1: int, k2: int) -> None:
    arch = Architecture.atari(9).replace(hidden=(k1,), lstm=k2)
    expected = 71_840 + 3_457 * k1 + 4 * k2 * (k1 + k2) + 18 * k2 + 10
    assert arch.parameter_count() == expected == Policy(arch).parameter_count()


@pytest.mark.parametrize(
    "arch",
    [
        Architecture.atari(4, channels=(8, 16, 16), hidden=32, lstm=16),
        Architecture.mlp(4, 2, hidden=(16, 8), lstm=12),
    ],
)
def test_forward_shapes_and_sequence_equals_steps(arch: Architecture) -> None:
    torch.manual_seed(0)
    policy = Policy(arch)
    obs = observation_batch(arch, 3 * 5).reshape(3, 5, *arch.obs_shape)
    logits, value, (h, c) = policy(obs)
    assert logits.shape == (3, 5, arch.n_actions) and value.shape == (3, 5)
    assert h.shape == c.shape == (1, 3, arch.lstm)
    state = None
    for t in range(5):  # a sequence equals its steps with the state carried
        step_logits, step_value, state = policy(obs[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_value, value[:, t], atol=1e-5, rtol=1e-5)


def test_architecture_round_trip_and_validation() -> None:
    arch = Architecture.atari(9)
    assert Architecture.from_dict(arch.to_dict()) == arch
    with pytest.raises(ValueError, match="at least one unit"):
        arch.replace(lstm=0)
    with pytest.raises(ValueError, match="kind"):
        Architecture("rnn", (4,), 2)
    with pytest.raises(ValueError, match="observation shape"):
        Policy(arch)(torch.zeros(2, 4))
