"""The published reference's LSTM criterion, to reproduce published fiber counts.

It differs from ours (``lstm_criterion="units"``, see :mod:`pufferfiber.core.fibers`) in four ways:

* it clusters the ``4·H`` **gate rows jointly** in one average-linkage clustering (a row of one
  gate may share a label with a row of another gate), where ours clusters units by their four
  gate rows concatenated;
* a row is ``[W_ih · P_inᵀ | W_hh · P_hᵀ]`` (incoming weights summed over the input colours and
  over the current hidden colours) **without the biases**;
* it starts from one hidden colour and one cell colour and runs **exactly**
  :data:`PUBLISHED_LSTM_ROUNDS` rounds (no fixed point);
* each round the cell colour of unit ``u`` becomes the class of (label of its i row, of its f row,
  of its g row, its previous cell colour) and its hidden colour the class of (label of its o
  row, its cell colour).

The result is a partition of the hidden units like ours, so the same quotient applies; it is not
a fibration (biases ignored, gates mixed), and the fidelity report shows what it costs.
"""

from __future__ import annotations

import numpy as np
import torch

from pufferfiber.core.clustering import cluster_rows, relabel_first_occurrence
from pufferfiber.core.colouring import Colouring, LayerFibers, input_part, sum_over_colours
from pufferfiber.core.graph import LSTM_GATES, LayerNode, recurrent_view

PUBLISHED_LSTM_ROUNDS = 5


def _classes(*keys: np.ndarray) -> np.ndarray:
    """One label per distinct tuple of keys (numbered by first occurrence)."""
    _, inverse = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)
    return relabel_first_occurrence(inverse.reshape(-1))


def published_lstm_fibers(
    node: LayerNode,
    params: dict[str, torch.Tensor],
    inputs: Colouring,
    threshold: float,
    rounds: int = PUBLISHED_LSTM_ROUNDS,
) -> tuple[LayerFibers, list[int]]:
    """Hidden-unit fibers by the published criterion, and the fiber count after each round.

    ``inputs`` is the producer's colouring; only its labels are used (plain sums, as published).
    """
    if node.gates != LSTM_GATES:
        raise ValueError(f"the published criterion is defined for the LSTM, not {node.kind}")
    plain = Colouring.of(inputs.labels.numpy())
    w_in = input_part(node, params, plain)  # [H, 4, colours]
    w_hh = recurrent_view(node, params[node.recurrent_key or ""])
    n = node.size
    hidden = np.zeros(n, dtype=np.int64)
    cell = np.zeros(n, dtype=np.int64)
    counts: list[int] = []
    for _ in range(rounds):
        hh = sum_over_colours(w_hh, Colouring.of(hidden)).flatten(2)  # [H, 4, hidden colours]
        rows = torch.cat([w_in, hh], dim=2)  # gate rows, no bias
        # Gate-major order (row g·H + u), as the reference stacks W_ih's rows.
        flat = rows.transpose(0, 1).reshape(LSTM_GATES * n, -1).numpy()
        labels = cluster_rows(flat, threshold, scale_free=True).reshape(LSTM_GATES, n)
        cell = _classes(labels[0], labels[1], labels[2], cell)
        hidden = _classes(labels[3], cell)
        counts.append(int(hidden.max()) + 1)
    return LayerFibers(node, hidden, rounds=rounds), counts
