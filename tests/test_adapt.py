"""Users' own recurrent agents: adapt, collapse into the user's class, measure, refuse clearly.

The agent class below has the shape of CleanRL's ``ppo_atari_lstm.Agent`` (encoder Sequential,
one LSTM or GRU, Linear actor and critic; pixels scaled by 1/255 outside the encoder) with its
own ``forward``, which pf never calls: the collapsed copy must run it unchanged.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pufferfiber as pf
from pufferfiber.core.policy import Architecture, Policy

REPO = Path(__file__).resolve().parents[1]
HEADS = {"actor": "actor", "value": "critic"}


class Agent(nn.Module):
    """CleanRL-shaped: ``network`` → ``lstm`` / ``gru`` → ``actor``, ``critic``."""

    def __init__(self, kind: str = "cnn", rnn: str = "lstm", n_actions: int = 5) -> None:
        super().__init__()
        if kind == "cnn":  # Atari-like on 4 x 36 x 36 frames
            self.scale = 1 / 255
            self.network = nn.Sequential(
                nn.Conv2d(4, 8, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(8, 10, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(10, 9, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(9 * 1 * 1, 24),
                nn.ReLU(),
            )
        else:
            self.scale = 1.0
            self.network = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 24), nn.ReLU())
        self.rnn_name = rnn
        setattr(self, rnn, (nn.LSTM if rnn == "lstm" else nn.GRU)(24, 12))
        self.actor = nn.Linear(12, n_actions)
        self.critic = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, *obs]`` → logits ``[B, T, A]``, value ``[B, T]`` (state from zeros)."""
        b, t = x.shape[:2]
        hidden = self.network(x.reshape(b * t, *x.shape[2:]).float() * self.scale)
        out, _ = getattr(self, self.rnn_name)(hidden.reshape(b, t, -1).transpose(0, 1))
        out = out.transpose(0, 1)
        return self.actor(out), self.critic(out).squeeze(-1)


def frames(kind: str, batch: int = 3, steps: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "cnn":
        return torch.randint(0, 256, (batch, steps, 4, 36, 36), generator=gen, dtype=torch.uint8)
    return torch.randn(batch, steps, 6, generator=gen)


def adapted(agent: Agent) -> pf.AdaptedNetwork:
    return pf.adapt(
        agent, encoder="network", recurrent=agent.rnn_name, heads=HEADS, obs_scale=agent.scale
    )


@torch.no_grad()
def plant(agent: Agent) -> None:
    """Unit 3 duplicates unit 1 in every hidden layer (rows copied, so τ = 0 finds them)."""
    for m in agent.network:
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.weight[3] = m.weight[1]
            m.bias[3] = m.bias[1]
    rnn = getattr(agent, agent.rnn_name)
    n = rnn.hidden_size
    for g in range(4 if agent.rnn_name == "lstm" else 3):
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            p = getattr(rnn, name)
            p[g * n + 3] = p[g * n + 1]


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_planted_fibers_collapse_into_the_users_class_exactly(kind: str, rnn: str) -> None:
    torch.manual_seed(0)
    agent = Agent(kind, rnn)
    plant(agent)
    before = state_copy(agent)
    net = adapted(agent)
    assert net.arch.kind == kind and net.arch.rnn == rnn
    if kind == "cnn":
        assert net.arch.obs_shape == (4, 36, 36)  # inferred from the flatten width
    crit = pf.WeightCriterion(threshold=0.0)
    small = crit.fit_transform(net)
    assert type(small) is type(agent)
    assert crit.fibration_ is not None
    assert all(f.n_fibers == f.node.size - 1 for f in crit.fibration_.layers if f.node.hidden)
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in agent.parameters())
    assert getattr(small, rnn).hidden_size == 11
    obs = frames(kind)
    with torch.no_grad():
        logits_o, value_o = agent(obs)
        logits_c, value_c = small(obs)  # the user's own forward, unchanged
    assert torch.allclose(logits_o, logits_c, atol=1e-5)
    assert torch.allclose(value_o, value_c, atol=1e-5)
    ref_logits, ref_value = net.unroll(obs)  # the adapter's own run agrees with the forward
    assert torch.allclose(ref_logits, logits_o, atol=1e-6)
    assert torch.allclose(ref_value, value_o, atol=1e-6)
    div = pf.output_divergence(net, small, obs)
    assert div.kl < 1e-9 and div.value_mae < 1e-5 and div.steps == 21
    assert "KL" in str(div)
    assert_same_state(agent, before)
    # transform applies the fitted fibers again; fit_predict gives them.
    again = crit.transform(net)
    assert_same_state(small, state_copy(again))
    assert crit.fit_predict(net).counts == crit.fibration_.counts


def test_mapped_policy_is_our_policy_with_the_users_outputs() -> None:
    torch.manual_seed(1)
    agent = Agent("cnn", "lstm")
    net = adapted(agent)
    policy = net.to_policy()
    assert isinstance(policy, Policy)
    obs = frames("cnn")
    with torch.no_grad():
        logits_p, value_p, _ = policy(obs)  # 1/255 inside our Policy = obs_scale here
    logits_u, value_u = net.unroll(obs)
    assert torch.allclose(logits_p, logits_u, atol=1e-6)
    assert torch.allclose(value_p, value_u, atol=1e-6)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_data_criterion_on_users_agent_reports_finite_heldout_kl(kind: str) -> None:
    torch.manual_seed(2)
    agent = Agent(kind, "lstm")
    before = state_copy(agent)
    net = adapted(agent)
    crit = pf.DataCriterion(threshold=0.2)
    calibration, heldout = frames(kind, 8, 16, seed=1), frames(kind, 4, 16, seed=2)
    with pytest.raises(ValueError, match="calibration observations"):
        crit.fit_transform(net)
    small = crit.fit_transform(net, calibration, heldout=heldout)
    assert type(small) is Agent
    assert crit.calibration_shape_ == [8, 16]
    div = pf.output_divergence(net, small, heldout)
    assert 0.0 <= div.kl < float("inf") and div.value_mae < float("inf")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in agent.parameters())
    with torch.no_grad():
        small(heldout)  # runs its own forward at its new sizes
    assert_same_state(agent, before)


def test_data_criterion_exact_at_zero_on_planted_copies() -> None:
    torch.manual_seed(3)
    agent = Agent("mlp", "gru")
    plant(agent)
    net = adapted(agent)
    small = pf.DataCriterion(threshold=0.0).fit_transform(net, frames("mlp", 8, 16, seed=1))
    div = pf.output_divergence(net, small, frames("mlp", 4, 16, seed=2))
    assert div.kl < 1e-9 and div.value_mae < 1e-5


class _Variant(nn.Module):
    def __init__(self, encoder: nn.Sequential, rnn: nn.Module) -> None:
        super().__init__()
        self.network, self.lstm = encoder, rnn
        self.actor, self.critic = nn.Linear(12, 3), nn.Linear(12, 1)


@pytest.mark.parametrize(
    ("encoder", "rnn", "message"),
    [
        (nn.Sequential(nn.Linear(6, 24), nn.ReLU()), nn.LSTM(24, 12, 2), "2-layer LSTM"),
        (
            nn.Sequential(nn.Linear(6, 24), nn.ReLU()),
            nn.LSTM(24, 6, bidirectional=True),
            "bidirectional",
        ),
        (
            nn.Sequential(nn.Linear(6, 24), nn.LayerNorm(24), nn.ReLU()),
            nn.LSTM(24, 12),
            "LayerNorm is not supported",
        ),
        (nn.Sequential(nn.Linear(6, 24), nn.Tanh()), nn.LSTM(24, 12), "Tanh is not supported"),
        (nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Dropout()), nn.LSTM(24, 12), "Dropout"),
        (nn.Sequential(nn.Linear(6, 20), nn.ReLU()), nn.LSTM(24, 12), "20 encoder features"),
        (nn.Sequential(nn.Linear(6, 24)), nn.LSTM(24, 12), "needs a ReLU"),
        (
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 24)),
            nn.LSTM(24, 12),
            "padding",
        ),
        (nn.Sequential(nn.Linear(6, 24), nn.ReLU()), nn.RNN(24, 12), "needs nn.LSTM or nn.GRU"),
    ],
)
def test_refusals_are_one_line(encoder: nn.Sequential, rnn: nn.Module, message: str) -> None:
    with pytest.raises(pf.AdaptError, match=re.escape(message)) as err:
        pf.adapt(_Variant(encoder, rnn), encoder="network", recurrent="lstm", heads=HEADS)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_wrong_names_and_heads_are_refused() -> None:
    agent = Agent("mlp")
    with pytest.raises(pf.AdaptError, match="no submodule 'encoder'"):
        pf.adapt(agent, encoder="encoder", recurrent="lstm", heads=HEADS)
    with pytest.raises(pf.AdaptError, match="exactly 'actor' and 'value'"):
        pf.adapt(agent, encoder="network", recurrent="lstm", heads={"actor": "actor"})
    with pytest.raises(pf.AdaptError, match="value head must have one output"):
        pf.adapt(
            agent, encoder="network", recurrent="lstm", heads={"actor": "critic", "value": "actor"}
        )


def test_batch_first_rnn_and_given_obs_shape() -> None:
    torch.manual_seed(4)
    agent = _Variant(nn.Sequential(nn.Linear(6, 24), nn.ReLU()), nn.LSTM(24, 12, batch_first=True))
    net = pf.adapt(agent, encoder="network", recurrent="lstm", heads=HEADS, obs_shape=(6,))
    agent.rnn_name = "lstm"
    plant(agent)  # type: ignore[arg-type]
    small = pf.WeightCriterion(threshold=0.0).fit_transform(net)
    assert small.lstm.batch_first and small.lstm.hidden_size == 11
    obs = frames("mlp")
    div = pf.output_divergence(net, small, obs)
    assert div.kl < 1e-9
    policy = net.to_policy()
    assert Architecture.from_dict(policy.arch.to_dict()) == net.arch


def test_policies_still_collapse_to_policies() -> None:
    torch.manual_seed(5)
    policy = Policy(Architecture.mlp(6, 3, hidden=(20,), lstm=10))
    small = pf.WeightCriterion(threshold=0.5).fit_transform(policy)
    assert isinstance(small, Policy)
    div = pf.output_divergence(policy, small, frames("mlp"))
    assert div.to_dict().keys() == {"kl", "value_mae", "value_mean_abs", "steps"}
    with pytest.raises(TypeError, match="two Policies or two adapted"):
        pf.output_divergence(policy, adapted(Agent("mlp")), frames("mlp"))


def test_import_pufferfiber_loads_no_torch() -> None:
    code = "import sys, pufferfiber as pf; assert 'torch' not in sys.modules; print(pf.__all__)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("adapt", "WeightCriterion", "DataCriterion", "output_divergence"):
        assert name in out.stdout


def readme_library_block() -> str | None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Use it as a library\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if section is None:
        return None
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    return None if block is None else block.group(1)


@pytest.mark.slow
def test_readme_library_example_runs() -> None:
    code = readme_library_block()
    assert code is not None, "README.md lost its '## Use it as a library' python block"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "Agent"  # the user's own class comes back
    assert "KL" in out.stdout


def test_copy_of_agent_is_independent() -> None:
    """The collapsed copy shares no tensor with the original."""
    agent = Agent("mlp")
    small = pf.WeightCriterion(threshold=0.0).fit_transform(adapted(agent))
    ptrs = {p.data_ptr() for p in agent.parameters()}
    assert not ptrs & {p.data_ptr() for p in small.parameters()}
    assert copy.deepcopy(small).actor.out_features == 5


def test_collection_and_data_criterion_leave_the_callers_policy_alone() -> None:
    """Item 6: neither moves the caller's module, switches its mode or edits its weights."""
    from pufferfiber.rl.evaluate import collect_observations

    torch.manual_seed(6)
    policy = Policy(Architecture.mlp(4, 2, hidden=(20,), lstm=10))  # cartpole's sizes
    policy.train()
    before = state_copy(policy)
    params = list(policy.parameters())
    obs = collect_observations(policy, "cartpole", 3, 16, seed=1)
    small = pf.DataCriterion(threshold=0.1).fit_transform(policy, obs, heldout=obs)
    assert isinstance(small, Policy) and small is not policy
    assert policy.training
    assert list(policy.parameters()) == params  # the same parameter objects
    assert all(p.device.type == "cpu" for p in params)
    assert_same_state(policy, before)
