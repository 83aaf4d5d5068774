"""Fibers: exact and approximate clustering, scikit-learn agreement, opfibers, fibers.pkl."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import squareform
from sklearn.cluster import AgglomerativeClustering

from pufferfiber.core.clustering import (
    average_linkage_labels,
    cluster_rows,
    cosine_distances_condensed,
    exact_partition,
    relabel_first_occurrence,
)
from pufferfiber.core.colouring import Colouring, node_rows, recurrent_rows
from pufferfiber.core.fibers import compute_fibers, compute_opfibers
from pufferfiber.core.graph import build_graph, named_tensors, put_units, take_units
from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.io.fibersfile import FibersFileError, fibers_dict, load_fibers, save_fibers

MLP = Architecture.mlp(6, 3, hidden=(24, 16), lstm=12)
CNN = Architecture.atari(4, channels=(5, 6, 4), hidden=16, lstm=8)
TAUS = (0.0, 0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0)


def sklearn_labels(rows: np.ndarray, tau: float) -> np.ndarray:
    model = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=tau
    )
    return relabel_first_occurrence(model.fit(squareform(cosine_distances_condensed(rows))).labels_)


def correlated_rows(n: int, d: int, seed: int) -> np.ndarray:
    """Rows around a few directions, so every τ has real merges to make."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 6), d))
    return centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.6, size=(n, d))


def test_relabel_numbers_fibers_by_first_occurrence() -> None:
    assert relabel_first_occurrence(np.array([7, 3, 7, 1, 3])).tolist() == [0, 1, 0, 2, 1]


def test_cosine_distances_match_definition_including_zero_rows() -> None:
    rows = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    d = squareform(cosine_distances_condensed(rows))
    assert d[0, 1] == pytest.approx(0.0) and d[0, 2] == pytest.approx(1.0)
    assert d[0, 5] == pytest.approx(2.0) and d[3, 4] == 0.0 and d[0, 3] == 1.0


def test_blocked_distances_equal_direct_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    import pufferfiber.core.clustering as clustering

    rows = np.random.default_rng(0).normal(size=(37, 5))
    full = cosine_distances_condensed(rows)
    monkeypatch.setattr(clustering, "_BLOCK", 8)
    assert np.allclose(cosine_distances_condensed(rows), full, atol=1e-14)
    assert exact_partition(np.repeat(rows, 2, axis=0), scale_free=False).max() == 36


def test_exact_partition_scale_free_only_for_relu() -> None:
    rows = np.array([[1.0, 2.0, -1.0], [2.0, 4.0, -2.0], [1.0, 2.0, -1.0 + 1e-9], [1.0, 0.0, 0.0]])
    assert exact_partition(rows, scale_free=True).tolist() == [0, 0, 0, 1]
    assert exact_partition(rows, scale_free=False).tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.1, 0.3, 0.6, 1.0, 1.4])
def test_clustering_equals_sklearn_on_random_rows(seed: int, tau: float) -> None:
    rows = correlated_rows(60 + 20 * seed, 9, seed)
    assert np.array_equal(cluster_rows(rows, tau), sklearn_labels(rows, tau))


@pytest.mark.slow
@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 1.0])
def test_clustering_equals_sklearn_on_trained_layers(shared_run: Path, tau: float) -> None:
    from pufferfiber.io.checkpoints import load_checkpoint

    policy = load_checkpoint(shared_run / "model_000051.pt", allow_pickle=True).policy
    g = build_graph(policy)
    params = policy.state_dict()
    lin = g["linear1"]
    conv3 = Colouring.discrete(lin.in_units)
    for pooled in (False, True):
        rows = node_rows(lin, params, conv3, pooled=pooled).numpy()
        assert np.array_equal(cluster_rows(rows, tau), sklearn_labels(rows, tau))
    lstm = g["lstm"]
    # The production row builder of the recurrent layer, at its first approximate round.
    rows = recurrent_rows(lstm, params, Colouring.discrete(lstm.in_units))(np.arange(lstm.size))
    assert np.array_equal(cluster_rows(rows, tau), sklearn_labels(rows, tau))


@pytest.mark.parametrize("tau", [0.05, 0.15, 0.3])
def test_component_shortcuts_equal_one_full_linkage(tau: float) -> None:
    """Small components (pairs, vectorised triples) give the full linkage's partition."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(60, 12))
    rows = np.repeat(centres, 3, axis=0) + rng.normal(scale=0.12, size=(180, 12))
    rows = np.concatenate([rows, np.zeros((3, 12))])  # a triple of zero rows: one fiber
    expected = average_linkage_labels(rows, tau)
    assert np.array_equal(cluster_rows(rows, tau), expected)
    assert np.array_equal(expected, sklearn_labels(rows, tau))
    assert cluster_rows(rows, tau)[-1] == cluster_rows(rows, tau)[-3]


def test_larger_threshold_never_gives_more_fibers_on_a_layer() -> None:
    rows = correlated_rows(80, 7, 4)
    counts = [cluster_rows(rows, tau).max() + 1 for tau in TAUS]
    assert counts == sorted(counts, reverse=True) and counts[0] == 80 and counts[-1] == 1


@pytest.mark.parametrize("arch", [MLP, CNN], ids=["mlp", "cnn"])
def test_larger_threshold_never_gives_more_fibers_in_a_network(arch: Architecture) -> None:
    torch.manual_seed(0)
    policy = Policy(arch)
    counts = [compute_fibers(policy, tau).counts for tau in TAUS]
    for label in counts[0]:
        series = [c[label] for c in counts]
        assert series == sorted(series, reverse=True), (label, series)
    assert counts[0] == {n.label: n.size for n in build_graph(policy).hidden}


def test_bad_settings_are_rejected() -> None:
    policy = Policy(MLP)
    with pytest.raises(ValueError, match="between 0 and 2"):
        compute_fibers(policy, 2.5)
    with pytest.raises(ValueError, match="flatten_colours"):
        compute_fibers(policy, 0.3, flatten_colours="channels")
    with pytest.raises(ValueError, match="head"):
        compute_fibers(policy, 0.3, layers=["actor"])
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        compute_fibers(policy, 0.3, layers=["conv9"])


def test_pooled_colours_merge_at_least_as_much_as_positions() -> None:
    torch.manual_seed(1)
    policy = Policy(CNN)
    for tau in (0.3, 0.8):
        pos = compute_fibers(policy, tau, layers=["linear"])["linear1"].n_fibers
        pooled = compute_fibers(policy, tau, layers=["linear"], flatten_colours="pooled")
        assert pooled["linear1"].n_fibers <= pos


def test_lstm_exact_fibers_are_a_fixed_point_of_the_recurrence() -> None:
    """A 3-cycle of LSTM units with equal W_hh row sums is one fiber only if W_ih rows agree."""
    torch.manual_seed(2)
    policy = Policy(MLP)
    g = build_graph(policy)
    t = named_tensors(policy)
    lstm = g["lstm"]
    for axis in g.incoming_axes(lstm):
        if axis.role != "recurrent":  # same W_ih rows and biases for units 0, 1, 2
            put_units(axis, t[axis.key], [1, 2], take_units(axis, t[axis.key], [0, 0]))
    hh = t[lstm.recurrent_key].view(4, lstm.size, lstm.size)
    hh[:, :3, :3] = torch.tensor([[0.0, 0.5, 0.2], [0.2, 0.0, 0.5], [0.5, 0.2, 0.0]])
    hh[:, 1:3, 3:] = hh[:, 0:1, 3:]
    fib = compute_fibers(policy, 0.0, layers=["lstm"])["lstm"]
    assert fib.labels[0] == fib.labels[1] == fib.labels[2] and fib.n_fibers == lstm.size - 2
    assert fib.rounds >= 2


def test_opfibers_find_units_with_equal_outgoing_columns() -> None:
    torch.manual_seed(4)
    policy = Policy(MLP)
    g = build_graph(policy)
    t = named_tensors(policy)
    for label in ("linear2", "lstm"):
        for axis in g.outgoing_axes(g[label]):
            put_units(axis, t[axis.key], [5], take_units(axis, t[axis.key], [2]))
    op = compute_opfibers(policy, 0.0)
    for label in ("linear2", "lstm"):
        assert (
            op[label].labels[5] == op[label].labels[2] and op[label].n_fibers == g[label].size - 1
        )
    assert op["linear1"].n_fibers == g["linear1"].size
    assert [f.n_fibers for f in compute_opfibers(policy, 2.0).layers] == [1, 1, 1]


def test_fibers_pkl_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = Policy(CNN)
    fibration = compute_fibers(policy, 0.7)
    d = fibers_dict(fibration, epoch=51, env="beam_rider", params_before=10, params_after=5)
    path = save_fibers(tmp_path / "fibers.pkl", d)
    back = load_fibers(path)
    assert back["threshold"] == 0.7 and back["epoch"] == 51 and back["env"] == "beam_rider"
    assert [layer["label"] for layer in back["layers"]] == [
        "conv1",
        "conv2",
        "conv3",
        "linear1",
        "lstm",
    ]
    for mine, theirs in zip(d["layers"], back["layers"], strict=True):
        assert theirs["labels"].dtype == np.int64
        assert np.array_equal(mine["labels"], theirs["labels"])
        assert theirs["n_fibers"] == mine["labels"].max() + 1
    assert [p.name for p in tmp_path.iterdir()] == ["fibers.pkl"]


class Sneaky:
    def __reduce__(self) -> tuple:
        return (print, ("code ran",))


def test_fibers_loader_refuses_code_and_garbage(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"format": "pufferfiber.fibers/1", "x": Sneaky()}))
    with pytest.raises(FibersFileError, match=r"refusing to load builtins\.print"):
        load_fibers(evil)
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(FibersFileError, match="not a valid fibers file"):
        load_fibers(corrupt)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"labels": np.arange(3)}))
    with pytest.raises(FibersFileError, match="not a pufferfiber fibers file"):
        load_fibers(other)
    with pytest.raises(FibersFileError, match="cannot read"):
        load_fibers(tmp_path / "missing.pkl")
    with pytest.raises(Exception, match="refusing"):
        save_fibers(tmp_path / "bad.pkl", {"format": "pufferfiber.fibers/1", "x": Sneaky()})
    assert not (tmp_path / "bad.pkl").exists()
