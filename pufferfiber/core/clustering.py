"""Partitions of weight rows: the clustering behind fibers (exact and approximate).

Rows are compared by direction (cosine distance ``1 - cos``, in ``[0, 2]``):

* ``threshold == 0``: **exact** partition, rows equal up to a relative float tolerance
  :data:`EXACT_RTOL` (``scale_free``: up to a positive factor, for ReLU layers);
* ``0 < threshold <= 2``: **approximate** partition, agglomerative clustering with average
  linkage, merging while the distance is ``<= threshold`` (scipy ``linkage`` +
  ``fcluster(criterion="distance")``), each connected component of the "distance <= τ" graph
  clustered on its own (same result, far less memory).

Zero rows: the cosine distance between two all-zero rows is 0 (both units output the same
constant, so they are the same signal) and between a zero row and a non-zero row it is 1 (no
direction in common, as scikit-learn's ``cosine_distances``). Labels are numbered by first
occurrence, so a partition's representative (lowest index) carries the first label.

The pairwise products (the ``n²·d`` part) run with numpy, or on a GPU inside
:func:`products_on`; everything else stays on the CPU, so both give the same labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

EXACT_RTOL = 1e-5  # relative Euclidean tolerance for "equal" rows (float32 weights summed)
_BLOCK = 1024  # rows per block of pairwise products (bounds peak memory to ~n·block floats)
_SLACK = 1e-5  # float32 products: keep every edge that float64 could put at distance <= τ
_MAX_EDGES_PER_ROW = 64  # denser "close" graphs are clustered whole (one big component anyway)
# Where the pairwise products run (None = numpy on the CPU); set with :func:`products_on`.
_PRODUCTS_DEVICE: ContextVar[torch.device | None] = ContextVar("products_device", default=None)


# --------------------------------------------------------------------------- partitions


def relabel_first_occurrence(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance (deterministic fiber ids)."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def meet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The common refinement of two partitions (units together iff together in both)."""
    _, inverse = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    return relabel_first_occurrence(inverse.reshape(-1))


@contextmanager
def products_on(device: str | torch.device | None) -> Iterator[None]:
    """Run the pairwise row products (the ``n²·d`` part of finding fibers) on ``device``.

    ``with products_on("cuda"): compute_fibers(...)`` gives the same fibers as the CPU: only
    the candidate products move (full float32/float64 precision, TF32 off); the exact tests,
    the clustering and the labels stay on the CPU. ``None`` or ``"cpu"``: numpy, the default.
    """
    target = None if device is None else torch.device(device)
    token = _PRODUCTS_DEVICE.set(None if target is None or target.type == "cpu" else target)
    try:
        yield
    finally:
        _PRODUCTS_DEVICE.reset(token)


def _gram_blocks(x: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(i0, i1, x[i0:i1] @ x[i0:].T)`` for the row blocks of ``x`` (upper block rows only),
    computed in ``x``'s dtype with numpy or on the device of :func:`products_on`."""
    n, device = len(x), _PRODUCTS_DEVICE.get()
    if device is None:
        for i0 in range(0, n, _BLOCK):
            i1 = min(n, i0 + _BLOCK)
            yield i0, i1, x[i0:i1] @ x[i0:].T
        return
    on_device = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would break the float32 slack bounds
    try:
        for i0 in range(0, n, _BLOCK):
            i1 = min(n, i0 + _BLOCK)
            yield i0, i1, (on_device[i0:i1] @ on_device[i0:].T).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def cosine_distances_condensed(rows: np.ndarray) -> np.ndarray:
    """Condensed (scipy ``pdist`` layout) cosine distances ``1 - cos`` in ``[0, 2]``.

    Computed by blocks of matrix products (no per-unit loop); zero rows as the module says.
    """
    x = np.asarray(rows, dtype=np.float64)
    n = x.shape[0]
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = x / np.where(zero, 1.0, norms)[:, None]
    out = np.empty(n * (n - 1) // 2)
    pos = 0
    for i0, i1, gram in _gram_blocks(unit):
        d = 1.0 - gram
        d[zero[i0:i1, None] & zero[None, i0:]] = 0.0
        np.clip(d, 0.0, 2.0, out=d)
        # Strict upper triangle of this block row, row-major = the condensed segment.
        upper = np.arange(n - i0)[None, :] > np.arange(i1 - i0)[:, None]
        seg = d[upper]
        out[pos : pos + seg.size] = seg
        pos += seg.size
    return out


def exact_partition(rows: np.ndarray, *, scale_free: bool) -> np.ndarray:
    """Units whose rows are equal (``scale_free``: equal up to a positive factor).

    Equal means ``|a - b| <= EXACT_RTOL · max(|a|, |b|)``; groups are the connected components
    of that relation (for truly equal rows it is already transitive).
    """
    x = np.asarray(rows, dtype=np.float64)
    n = x.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    if scale_free:
        x = x / np.sqrt(np.where(sq == 0, 1.0, sq))[:, None]
        sq = (sq > 0).astype(np.float64)
    # Candidates from float32 products (loose bound), then the exact test in float64 on those
    # pairs only: the float32 cancellation error (~1e-7·|a|²) is far above EXACT_RTOL².
    x32, sq32 = x.astype(np.float32), sq.astype(np.float32)
    src, dst = [], []
    for i0, i1, gram in _gram_blocks(x32):
        dist2 = sq32[i0:i1, None] + sq32[None, i0:] - 2.0 * gram
        i, j = np.nonzero(dist2 <= 1e-4 * np.maximum(sq32[i0:i1, None], sq32[None, i0:]))
        src.append(i + i0)
        dst.append(j + i0)
    s, d = np.concatenate(src), np.concatenate(dst)
    diff2 = np.einsum("ij,ij->i", x[s] - x[d], x[s] - x[d])
    keep = diff2 <= EXACT_RTOL**2 * np.maximum(sq[s], sq[d])
    s, d = s[keep], d[keep]
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return relabel_first_occurrence(labels)


def average_linkage_labels(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage clusters of all ``rows`` at once (merge while distance ``<= threshold``)."""
    if len(rows) <= 1:
        return np.zeros(len(rows), dtype=np.int64)
    tree = linkage(cosine_distances_condensed(rows), method="average")
    return relabel_first_occurrence(fcluster(tree, t=threshold, criterion="distance"))


def close_components(rows: np.ndarray, threshold: float) -> np.ndarray | None:
    """Connected components of the graph "cosine distance <= threshold" (``None``: too dense).

    Average-linkage clusters never span two components: merging clusters A and B needs an
    average distance <= τ, hence some pair (a, b) at distance <= τ, hence an edge. So each
    component can be clustered on its own, which avoids the ``n²`` condensed matrix. Products
    are float32 with a small slack: an extra edge only joins components, never changes a result.
    """
    x = np.asarray(rows, dtype=np.float64)
    n = len(x)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = (x / np.where(zero, 1.0, norms)[:, None]).astype(np.float32)
    src, dst, edges = [], [], 0
    for i0, i1, gram in _gram_blocks(unit):
        close = gram >= np.float32(1.0 - threshold - _SLACK)
        close[zero[i0:i1, None] & zero[None, i0:]] = True
        i, j = np.nonzero(close)
        edges += i.size
        if edges > _MAX_EDGES_PER_ROW * n:
            return None
        src.append(i + i0)
        dst.append(j + i0)
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cluster_rows(rows: np.ndarray, threshold: float, *, scale_free: bool = True) -> np.ndarray:
    """Fiber labels of ``rows``: exact at ``threshold == 0``, else average-linkage clusters.

    For ``threshold > 0`` clusters merge while their average cosine distance is ``<=
    threshold`` (scipy semantics; scikit-learn's ``distance_threshold`` merges on ``<``, which
    differs only on exact ties). Each component of the "distance <= τ" graph is clustered on
    its own (same result, see :func:`close_components`); singletons and pairs need no linkage.
    """
    n = len(rows)
    if threshold == 0 or n <= 1:
        return exact_partition(rows, scale_free=scale_free)
    components = close_components(rows, threshold)
    if components is None:
        return average_linkage_labels(rows, threshold)
    order = np.argsort(components, kind="stable")
    sizes = np.bincount(components)
    labels = components.astype(np.int64) * n  # room for sub-cluster ids inside a component
    groups = np.split(order, np.cumsum(sizes)[:-1])
    triples = np.array([g for g in groups if len(g) == 3], dtype=np.int64).reshape(-1, 3)
    labels[triples] += _triple_labels(np.asarray(rows, dtype=np.float64)[triples], threshold)
    for members in (g for g in groups if len(g) > 3):  # loop over components, not units
        labels[members] += average_linkage_labels(rows[members], threshold)
    return relabel_first_occurrence(labels)


def _triple_labels(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Average linkage of many 3-point components at once (``rows``: ``[m, 3, d]``).

    The closest pair merges when its distance is <= τ; the third point joins when its mean
    distance to that pair is <= τ (the linkage tree of three points, vectorised).
    """
    norms = np.linalg.norm(rows, axis=2, keepdims=True)
    unit = rows / np.where(norms == 0, 1.0, norms)
    zero = norms[..., 0] == 0
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    d = 1.0 - np.einsum("mpd,mpd->mp", unit[:, pairs[:, 0]], unit[:, pairs[:, 1]])
    d[zero[:, pairs[:, 0]] & zero[:, pairs[:, 1]]] = 0.0
    d = np.clip(d, 0.0, 2.0)
    first = d.argmin(axis=1)  # pair (0,1), (0,2) or (1,2); the third point is 2, 1 or 0
    d_first = d[np.arange(len(d)), first]
    d_third = (d.sum(axis=1) - d_first) / 2.0
    merge_pair = d_first <= threshold
    merge_all = merge_pair & (d_third <= threshold)
    out = np.tile(np.arange(3), (len(d), 1))
    lone = 2 - first  # index of the point outside the closest pair
    paired = np.where(merge_pair[:, None], np.where(np.arange(3) == lone[:, None], 1, 0), out)
    return np.where(merge_all[:, None], 0, paired)


def count_labels(rows: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """Average-linkage clusters of ``rows`` cut at (at most) ``count`` clusters, and the height
    of the cut: the τ (cosine distance) at which :func:`cluster_rows` gives the same clusters.

    The dendrogram is cut with scipy's ``maxclust``: tied merge heights can give fewer
    clusters than ``count`` (the fibers jump there). A size target's weight criterion.
    """
    n = len(rows)
    if count >= n or n <= 1:
        return np.arange(n, dtype=np.int64), 0.0
    tree = linkage(cosine_distances_condensed(rows), method="average")
    labels = relabel_first_occurrence(fcluster(tree, t=max(1, int(count)), criterion="maxclust"))
    clusters = int(labels.max()) + 1
    height = float(tree[n - clusters - 1, 2]) if clusters < n else 0.0
    return labels, height
