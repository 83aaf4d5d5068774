"""The random-ablation control (:class:`pufferfiber.core.ablation.RandomUnits`): the widths
asked for, the same units for the same seed, and "dropped without folding" checked against the
full network with the dropped units silenced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pufferfiber.core.ablation import RandomUnits, hidden_widths
from pufferfiber.core.graph import build_graph
from pufferfiber.core.policy import Architecture, Policy, observation_batch


def _mlp() -> Policy:
    torch.manual_seed(0)
    return Policy(Architecture.mlp(6, 3, hidden=(16, 12), lstm=8)).eval()


WIDTHS = {"policy.policy.network.1": 5, "policy.policy.network.3": 4, "policy.recurrent": 3}


def _silenced(policy: Policy, kept: dict[str, np.ndarray]) -> Policy:
    """``policy`` with every unit not in ``kept`` made to output 0: a ReLU unit's row and bias
    zeroed; an LSTM unit's four gate rows zeroed (from a zero state its cell stays 0, so h = 0)."""
    params = {k: v.clone() for k, v in policy.state_dict().items()}
    for node in build_graph(policy).hidden:
        dropped = np.setdiff1d(np.arange(node.size), kept[node.name])
        rows = dropped
        if node.recurrent_key is not None:
            rows = np.concatenate([dropped + g * node.size for g in range(4)])
            params[node.recurrent_key][rows] = 0
        params[node.weight_key][rows] = 0
        for key in node.bias_keys:
            params[key][rows] = 0
    silenced = Policy(policy.arch).eval()
    silenced.load_state_dict(params)
    return silenced


def test_random_units_keep_the_widths_and_are_seeded() -> None:
    net = _mlp()
    small = RandomUnits(WIDTHS, seed=1).fit_transform(net)
    assert hidden_widths(small) == WIDTHS
    again = RandomUnits(WIDTHS, seed=1).fit_transform(net)
    other = RandomUnits(WIDTHS, seed=2).fit_transform(net)
    same = [torch.equal(a, b) for a, b in zip(small.parameters(), again.parameters(), strict=True)]
    assert all(same)
    assert not all(
        torch.equal(a, b) for a, b in zip(small.parameters(), other.parameters(), strict=True)
    )
    assert hidden_widths(net) == {k: 16 if "1" in k else 12 if "3" in k else 8 for k in WIDTHS}


def test_dropped_units_are_removed_without_folding() -> None:
    """The ablated network computes what the full one computes with the dropped units silenced
    (to float precision), and its kept rows are the trained rows, unchanged."""
    net = _mlp()
    crit = RandomUnits(WIDTHS, seed=4).fit(net)
    small = crit.transform(net)
    recs = crit.fibration_.reconstructions  # type: ignore[union-attr]
    kept = {name: rec.kept for name, rec in recs.items()}
    obs = observation_batch(net.arch, 5 * 7).reshape(5, 7, 6)
    logits, values, _ = small(obs)
    want_logits, want_values, _ = _silenced(net, kept)(obs)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(values, want_values, rtol=0, atol=1e-5)
    first = "policy.policy.network.1"
    torch.testing.assert_close(
        small.state_dict()[first + ".weight"], net.state_dict()[first + ".weight"][kept[first]]
    )
    # and it is not the collapse: the full network's output differs
    assert not torch.allclose(net(obs)[0], logits)


def test_cnn_widths_and_bad_widths() -> None:
    torch.manual_seed(0)
    net = Policy(Architecture.atari(4, channels=(8, 8, 8), hidden=32, lstm=16))
    widths = {n.name: max(1, n.size // 4) for n in build_graph(net).hidden}
    assert hidden_widths(RandomUnits(widths, seed=0).fit_transform(net)) == widths
    with pytest.raises(ValueError, match="fewer than the 99"):
        RandomUnits({"policy.recurrent": 99}).fit(net)
    with pytest.raises(ValueError, match="no hidden layer named nope"):
        RandomUnits({"nope": 1}).fit(net)
    with pytest.raises(ValueError, match="at least one unit"):
        RandomUnits({"policy.recurrent": 0})
