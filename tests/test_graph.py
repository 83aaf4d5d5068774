"""The layer graph: nodes, producers/consumers and unit views, for CNN, MLP and collapsed sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pufferfiber.core.graph import (
    add_units,
    build_graph,
    named_tensors,
    put_units,
    take_units,
)
from pufferfiber.core.policy import Architecture, Policy


def small_cnn() -> Policy:
    torch.manual_seed(0)
    return Policy(Architecture.atari(5, channels=(4, 6, 3), hidden=10, lstm=7))


def test_cnn_graph_nodes_and_links() -> None:
    policy = small_cnn()
    g = build_graph(policy)
    assert [n.label for n in g] == ["conv1", "conv2", "conv3", "linear1", "lstm", "actor", "value"]
    assert [n.name for n in g.hidden] == [
        "policy.policy.network.0",
        "policy.policy.network.2",
        "policy.policy.network.4",
        "policy.policy.network.7",
        "policy.recurrent",
    ]
    keys = set(policy.state_dict())
    for node in g:
        assert node.weight_key in keys and set(node.bias_keys) <= keys
    c, h, w = policy.arch.conv_output_shape()
    lin = g["linear1"]
    assert (lin.mapping, lin.in_units, lin.extent) == ("flatten", c, h * w)
    assert g.producer(lin) is g["conv3"] and g.producer(g["conv1"]) is None
    assert [n.label for n in g.consumers(g["lstm"])] == ["actor", "value"]
    assert g["conv2"].activation == "relu" and g["lstm"].activation == "gates"
    assert g["lstm"].recurrent_key == "policy.recurrent.weight_hh_l0"


def test_mlp_graph_has_no_flatten_boundary() -> None:
    g = build_graph(Policy(Architecture.mlp(4, 2, hidden=(8, 5), lstm=6)))
    assert [n.label for n in g.hidden] == ["linear1", "linear2", "lstm"]
    assert g["linear1"].mapping == "identity" and g["linear1"].in_units == 4
    assert g["linear2"].producer == g["linear1"].name
    assert g["linear2"].name == "policy.policy.network.3"


def test_graph_of_smaller_policy_follows_its_sizes() -> None:
    g = build_graph(Policy(Architecture.atari(3, channels=(2, 3, 2), hidden=4, lstm=3)))
    assert [n.size for n in g] == [2, 3, 2, 4, 3, 3, 1]


def test_unsupported_layer_is_rejected() -> None:
    policy = small_cnn()
    policy.policy.policy.network[1] = nn.Tanh()
    with pytest.raises(ValueError, match="unsupported layer Tanh"):
        build_graph(policy)


def test_lstm_unit_views_address_gate_rows_and_columns() -> None:
    policy = small_cnn()
    g = build_graph(policy)
    t = named_tensors(policy)
    lstm = g["lstm"]
    n = lstm.size
    w_ih = t[lstm.weight_key]
    weight_axis = g.incoming_axes(lstm)[0]
    rows = take_units(weight_axis, w_ih, [2])
    assert torch.equal(rows[0, :, :, 0], w_ih[[2, n + 2, 2 * n + 2, 3 * n + 2]])
    put_units(weight_axis, w_ih, [2], 0.0)
    assert w_ih[[2, n + 2, 2 * n + 2, 3 * n + 2]].abs().sum() == 0
    assert w_ih[[1, n + 1]].abs().sum() > 0
    recurrent_out = next(a for a in g.outgoing_axes(lstm) if a.role == "recurrent_out")
    cols = take_units(recurrent_out, t[lstm.recurrent_key], [3])
    assert torch.equal(cols.reshape(n, 4).T.reshape(-1), t[lstm.recurrent_key][:, 3])


def test_flatten_outgoing_columns_cover_every_position() -> None:
    policy = small_cnn()
    g = build_graph(policy)
    t = named_tensors(policy)
    conv3, lin = g["conv3"], g["linear1"]
    (out_axis,) = g.outgoing_axes(conv3)
    hw = lin.extent
    before = t[lin.weight_key].clone()
    add_units(out_axis, t[lin.weight_key], [1], torch.ones(lin.size, 1, 1, hw))
    changed = (t[lin.weight_key] != before).any(dim=0).nonzero().flatten()
    assert changed.tolist() == list(range(hw, 2 * hw))


def test_views_edit_optimizer_moments_like_parameters() -> None:
    policy = small_cnn()
    g = build_graph(policy)
    conv2 = g["conv2"]
    moment = torch.ones_like(named_tensors(policy)[conv2.weight_key])
    put_units(g.incoming_axes(conv2)[0], moment, [0, 4], 0.0)
    assert moment[[0, 4]].sum() == 0 and moment[[1, 2, 3, 5]].min() == 1
