"""Policy shapes, parameter counts and the collapsed-size formula."""

from __future__ import annotations

import pytest
import torch

from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.envs.registry import architecture_for


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
def test_architecture_round_trip_and_validation() -> None:
    arch = Architecture.atari(9)
    assert Architecture.from_dict(arch.to_dict()) == arch
    with pytest.raises(ValueError, match="at least one unit"):
        arch.replace(lstm=0)
    with pytest.raises(ValueError, match="kind"):
        Architecture("rnn", (4,), 2)
    with pytest.raises(ValueError, match="observation shape"):
        Policy(arch)(torch.zeros(2, 4))


def _stepwise_reference(
    policy: Policy, obs: torch.Tensor, state: tuple[torch.Tensor, ...], dones: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One policy step at a time, the state zeroed after each done: the rollout's semantics."""
    logits, values = [], []
    for t in range(obs.shape[1]):
        step_logits, step_value, state = policy.step(obs[:, t], state)
        keep = (1.0 - dones[:, t])[None, :, None]
        state = tuple(s * keep for s in state)
        logits.append(step_logits)
        values.append(step_value)
    return torch.stack(logits, 1), torch.stack(values, 1)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_unroll_matches_policy_and_resets_after_done(rnn: str) -> None:
    torch.manual_seed(0)
    policy = Policy(Architecture.mlp(4, 2, hidden=(8,), lstm=6, rnn=rnn))
    obs = observation_batch(policy.arch, 3 * 5).reshape(3, 5, 4)
    state = tuple(torch.randn_like(s) for s in policy.initial_state(3))
    with torch.no_grad():
        logits, value = policy.unroll(obs, state, torch.zeros(3, 5))
        ref_logits, ref_value, _ = policy(obs, state)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(value, ref_value)
        dones = torch.zeros(3, 5)
        dones[1, 2] = 1.0  # env 1 ends at step 2: steps 3.. start from a zero state
        logits, _ = policy.unroll(obs, state, dones)
        fresh, _, _ = policy(obs[1:2, 3:], None)
        torch.testing.assert_close(logits[1, 3:], fresh[0])
        torch.testing.assert_close(logits[0], ref_logits[0])


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_masked_unroll_equals_stepping_and_keeps_gradients(rnn: str) -> None:
    """Sequences with and without episode ends in one batch (fused and stepped paths mixed,
    and each path alone) give the step-by-step rollout's outputs and the same gradients."""
    torch.manual_seed(1)
    policy = Policy(Architecture.mlp(5, 3, hidden=(7,), lstm=6, rnn=rnn))
    b, t = 6, 8
    obs = observation_batch(policy.arch, b * t, seed=2).reshape(b, t, 5)
    state = tuple(torch.randn_like(s) for s in policy.initial_state(b))
    mixed = torch.zeros(b, t)
    mixed[1, 3] = mixed[4, 0] = mixed[4, 5] = mixed[2, t - 1] = 1.0  # 2: done only at the end
    every = torch.zeros(b, t)
    every[:, 2] = 1.0
    for dones in (mixed, every, torch.zeros(b, t)):
        policy.zero_grad()
        logits, value = policy.unroll(obs, state, dones)
        (logits.square().sum() + value.sum()).backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        policy.zero_grad()
        ref_logits, ref_value = _stepwise_reference(policy, obs, state, dones)
        (ref_logits.square().sum() + ref_value.sum()).backward()
        ref_grads = [p.grad for p in policy.parameters() if p.grad is not None]
        torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(value, ref_value, atol=1e-6, rtol=1e-5)
        assert len(grads) == len(ref_grads) == len(list(policy.parameters()))
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_bfloat16_encoder_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    policy = Policy(Architecture.atari(4, channels=(4, 8, 8), hidden=16, lstm=8))
    obs = observation_batch(policy.arch, 6).reshape(3, 2, *policy.arch.obs_shape)
    state = policy.initial_state(3)
    with torch.no_grad():
        ref, ref_v = policy.unroll(obs, state, torch.zeros(3, 2))
        low, low_v = policy.unroll(obs, state, torch.zeros(3, 2), encoder_bf16=True)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # really ran in bf16
    with torch.no_grad():  # the rollout's single steps agree with the update's sequences
        step_logits, step_value, _ = policy.step(obs[:, 0], state, encoder_bf16=True)
        f32_logits, _, f32_state = policy.step(obs[:, 0], state)
        ref_step, _, ref_state = policy(obs[:, 0], state)
    torch.testing.assert_close(step_logits, low[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(step_value, low_v[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(f32_logits, ref_step)
    torch.testing.assert_close(f32_state[0], ref_state[0])
    torch.testing.assert_close(low, ref, rtol=0, atol=2e-2)
    torch.testing.assert_close(low_v, ref_v, rtol=0, atol=2e-2)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_initial_state_is_one_zero_tensor_per_state_of_the_recurrent_layer(rnn: str) -> None:
    policy = Policy(Architecture.mlp(4, 2, hidden=(8,), lstm=6, rnn=rnn))
    state = policy.initial_state(5)
    assert len(state) == {"lstm": 2, "gru": 1}[rnn]
    assert all(s.shape == (1, 5, 6) and not s.any() for s in state)
    hidden = policy.encode_observations(observation_batch(policy.arch, 5))
    logits, value = policy.decode_actions(torch.zeros(5, 6))
    assert hidden.shape == (5, 8) and logits.shape == (5, 2) and value.shape == (5,)
