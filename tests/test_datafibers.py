"""The data criterion: planted redundancies collapse exactly; held-out figures show what does
not generalise; the criteria seam keeps the weight fibers unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.criteria import (
    CRITERIA,
    LSTM_CRITERIA,
    DataCriterion,
    WeightCriterion,
    make_criterion,
)
from pufferfiber.core.datafibers import (
    Moments,
    _consumer_greedy,
    _pivoted_cholesky,
    apply_reconstructions,
    select_units,
)
from pufferfiber.core.divergence import output_divergence
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.policy import Architecture, Policy

H = 12  # LSTM units of the small policy


def small_policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    arch = Architecture.atari(4, obs_shape=(1, 44, 44), channels=(4, 6, 5), hidden=16, lstm=H)
    policy = Policy(arch).eval()
    with torch.no_grad():
        policy.actor.weight.mul_(300.0)  # a policy far from uniform, so KL measures something
        policy.recurrent.bias_ih_l0.normal_(0.0, 0.5)  # non-trivial LSTM biases
    return policy


def frames(seed: int, batch: int = 6, steps: int = 12, high: int = 256) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, steps, 1, 44, 44), generator=gen, dtype=torch.uint8)


def _plant_relu(layer: torch.nn.Module, dead: int, rep: int, copy: int, const: int | None) -> None:
    """Unit ``dead`` outputs 0; ``copy`` = 3 - ``rep`` exactly (s = -1, t = 3); ``const`` = 0.7.

    ``rep``'s pre-activation stays in (0.9, 1.1) on any input in [0, 10] per entry, so both
    ReLUs are in their linear part and the relation is exact.
    """
    w, b = layer.weight, layer.bias  # type: ignore[union-attr]
    w[dead] = 0.0
    b[dead] = -1.0
    w[rep] = w[rep] * (0.01 / w[rep].abs().sum())
    b[rep] = 1.0
    w[copy] = -w[rep]
    b[copy] = 2.0
    if const is not None:
        w[const] = 0.0
        b[const] = 0.7


def _gate_rows(unit: int) -> list[int]:
    return [g * H + unit for g in range(4)]


def plant_all(policy: Policy, *, lstm_const_recurrent: bool = False) -> None:
    """A dead unit, an affine copy with s = -1 (and a constant unit) in every layer kind."""
    net = policy.network
    lstm = policy.recurrent
    with torch.no_grad():
        _plant_relu(net[0], dead=0, rep=1, copy=2, const=None)  # conv1
        _plant_relu(net[2], dead=0, rep=1, copy=2, const=3)  # conv2
        _plant_relu(net[4], dead=0, rep=1, copy=2, const=None)  # conv3
        _plant_relu(net[7], dead=0, rep=1, copy=2, const=3)  # linear1
        # LSTM unit 0 dead: its output gate is shut, so h = 0 at every step.
        o0 = 3 * H + 0
        lstm.weight_ih_l0[o0] = 0.0
        lstm.weight_hh_l0[o0] = 0.0
        lstm.bias_ih_l0[o0], lstm.bias_hh_l0[o0] = -1e4, 0.0
        # LSTM unit 2 = -unit 1: same i, f, o rows, negated g rows (tanh is odd): c2 = -c1.
        for g, (src, dst) in enumerate(zip(_gate_rows(1), _gate_rows(2), strict=True)):
            sign = -1.0 if g == 2 else 1.0
            for t in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0):
                t[dst] = sign * t[src]
        # LSTM unit 3 constant from step 1 on: i = o = 1, f = 0, g = tanh(0.8) whatever the input.
        for g, bias in enumerate((30.0, -30.0, 0.8, 30.0)):
            row = g * H + 3
            lstm.weight_ih_l0[row] = 0.0
            lstm.weight_hh_l0[row] = 0.0
            lstm.bias_ih_l0[row], lstm.bias_hh_l0[row] = bias, 0.0
        if not lstm_const_recurrent:
            lstm.weight_hh_l0[:, 3] = 0.0  # read by the heads only (see the reset caveat)


def test_criteria_names_in_one_place() -> None:
    assert CRITERIA == ("weights", "data")
    assert LSTM_CRITERIA == ("units", "published")
    assert isinstance(make_criterion("weights", 0.3), WeightCriterion)
    with pytest.raises(ValueError, match="criterion must be one of"):
        make_criterion("magic", 0.3)
    with pytest.raises(ValueError, match="do not apply"):
        make_criterion("weights", 0.3, fit="lstsq")


def test_weight_criterion_is_todays_fibers() -> None:
    policy = small_policy()
    for tau in (0.0, 0.4):
        crit = WeightCriterion(tau)
        quotient = crit.fit_transform(policy)
        fib = crit.fibration_
        assert fib is not None
        ref = compute_fibers(policy, tau)
        assert fib.counts == ref.counts
        for a, b in zip(fib.layers, ref.layers, strict=True):
            assert np.array_equal(a.labels, b.labels)
        expected = collapse_policy(policy, ref).state_dict()
        for key, value in quotient.state_dict().items():
            assert torch.equal(value, expected[key])


@pytest.mark.parametrize(
    ("fit", "pivot"), [("lstsq", "consumer"), ("lstsq", "variance"), ("affine", "consumer")]
)
def test_planted_redundancies_collapse_exactly(fit: str, pivot: str) -> None:
    policy = small_policy()
    plant_all(policy)
    calibration, heldout = frames(1), frames(2)
    crit = DataCriterion(0.0, fit_method=fit, pivot=pivot)
    quotient = crit.fit_transform(policy, calibration, heldout=heldout)
    fib = crit.fibration_
    for label in ("conv1", "conv2", "conv3", "linear1", "lstm"):
        rec = fib.reconstructions[fib[label].node.name]
        kept = set(rec.kept.tolist())
        assert 0 not in kept, label  # the dead unit
        assert len({1, 2} & kept) == 1, label  # one of the affine pair
        assert rec.constant[0], label
        if label in ("conv2", "linear1", "lstm"):
            assert 3 not in kept and rec.constant[3], label
        figures = fib.calibration[label]
        assert figures["heldout_over_threshold"] == 0, label
    copy = fib.reconstructions[fib["lstm"].node.name]
    pair = next(k for k in (1, 2) if k in copy.kept)
    other = 3 - pair
    assert copy.coef[other, list(copy.kept).index(pair)] == pytest.approx(-1.0, abs=1e-6)
    div = output_divergence(policy, quotient, heldout)
    assert div.kl < 1e-7
    assert div.value_mae < 1e-5 * max(1.0, div.value_mean_abs)
    assert quotient.parameter_count() < policy.parameter_count()
    # The recorded reconstructions rebuild the same quotient.
    again = apply_reconstructions(policy, fib)
    for key, value in again.state_dict().items():
        assert torch.allclose(value, quotient.state_dict()[key])


def test_constant_lstm_unit_folds_through_w_hh() -> None:
    """A constant h = c != 0 read by W_hh is folded into b_hh. The collapsed policy started from
    zeros is exactly the original started with that unit already at c: the only difference is
    the original's h = 0 at a reset (documented; the held-out figures include it)."""
    policy = small_policy()
    plant_all(policy, lstm_const_recurrent=True)
    calibration, heldout = frames(1), frames(2)
    crit = DataCriterion(0.0)
    quotient = crit.fit_transform(policy, calibration)
    fib = crit.fibration_
    assert fib.reconstructions[fib["lstm"].node.name].constant[3]
    h0, c0 = policy.initial_state(heldout.shape[0])
    cell = float(np.tanh(0.8))
    h0[0, :, 3], c0[0, :, 3] = float(np.tanh(cell)), cell
    with torch.no_grad():
        logits_o, value_o, _ = policy(heldout, (h0, c0))
        logits_c, value_c, _ = quotient(heldout)
        _logits_z, value_z, _ = policy(heldout)
    assert torch.allclose(value_o, value_c, atol=1e-5)
    assert torch.allclose(logits_o, logits_c, atol=1e-4)
    assert not torch.allclose(value_z, value_c, atol=1e-4)  # from h = 0 they differ


def test_unit_constant_on_calibration_only_shows_in_heldout_figures() -> None:
    policy = small_policy()
    with torch.no_grad():
        conv1 = policy.network[0]
        conv1.weight[0] = 0.05  # mean brightness detector over its 8x8 patch
        conv1.bias[0] = -1.5  # dead below a mean pixel of 0.47 (120 of 255)
    calibration = frames(1, high=100)  # dim frames: the unit never fires
    heldout = frames(2)  # full range: it fires on about half the patches
    crit = DataCriterion(0.0)
    quotient = crit.fit_transform(policy, calibration, heldout=heldout)
    fib = crit.fibration_
    rec = fib.reconstructions[fib["conv1"].node.name]
    assert rec.constant[0] and 0 not in rec.kept
    figures = fib.calibration["conv1"]
    assert figures["constant"] >= 1
    assert figures["fit_error_max"] == 0.0  # perfectly constant on calibration
    assert figures["heldout_constant_over_threshold"] >= 1
    assert rec.heldout_error is not None and rec.heldout_error[0] > 0.01
    assert output_divergence(policy, quotient, heldout).value_mae > 1e-4


def _moments(samples: np.ndarray) -> Moments:
    return Moments(len(samples), samples.sum(0), samples.T @ samples)


def test_consumer_pivot_keeps_first_the_unit_its_consumers_need_most() -> None:
    """Unit 0 is alone; units 1-3 carry one shared signal (plus a little noise), which the
    consumers read three times. By variance unit 0 comes first; by consumer error a copy of
    the shared signal does. Both end within τ for every unit."""
    rng = np.random.default_rng(0)
    alone, shared = rng.normal(0, 1.0, 4000), rng.normal(0, 0.9, 4000)
    noise = rng.normal(0, 0.01, (4000, 3))
    moments = _moments(np.column_stack([alone, shared + noise[:, 0], shared + noise[:, 1],
                                        shared + noise[:, 2]]))  # fmt: skip
    gram, cov = np.eye(4), moments.cov
    tol = 0.1**2 * np.diag(cov).mean()
    for pivot in ("consumer", "variance"):
        kept, coef, _, constant = select_units(moments, gram, 0.1, pivot=pivot)
        assert len(kept) == 2 and 0 in kept and not constant.any()
        # residual covariance of a - coef @ a[kept]: every unit within τ
        residual = cov - coef @ cov[kept] - (coef @ cov[kept]).T
        residual += coef @ cov[np.ix_(kept, kept)] @ coef.T
        assert np.diag(residual).max() <= tol + 1e-12
    assert _consumer_greedy(cov, gram, tol)[0] in (1, 2, 3)
    assert _pivoted_cholesky(moments.cov, tol)[0] == 0


def test_consumer_pivot_never_explains_by_a_near_constant_unit() -> None:
    """Unit 1 is a scaled-down copy of unit 0, below the tolerance: it is folded as a constant,
    not kept to rebuild unit 0 with a huge coefficient."""
    rng = np.random.default_rng(1)
    big = rng.normal(0, 1.0, 4000)
    moments = _moments(np.column_stack([big, 1e-4 * big + 3.0, rng.normal(0, 1.0, 4000)]))
    gram = np.array([[1.0, 0.0, 0.0], [0.0, 1e4, 0.0], [0.0, 0.0, 1.0]])  # consumers amplify 1
    kept, coef, _, constant = select_units(moments, gram, 0.5)
    assert 1 not in kept and constant[1]
    assert np.abs(coef).max() <= 1.0 + 1e-9


def test_larger_threshold_keeps_fewer_units() -> None:
    policy = small_policy()
    calibration = frames(1)
    sizes = []
    for tau in (0.0, 0.1, 0.5):
        crit = DataCriterion(tau)
        quotient = crit.fit_transform(policy, calibration)
        fib = crit.fibration_
        sizes.append(quotient.parameter_count())
        for f in fib.layers:
            assert f.labels.min() >= 0 and f.n_fibers == len(fib.reconstructions[f.node.name].kept)
    assert sizes[0] >= sizes[1] >= sizes[2]
    assert sizes[2] < sizes[0]


def test_data_criterion_needs_observations() -> None:
    with pytest.raises(ValueError, match="needs calibration observations"):
        DataCriterion(0.1).fit_predict(small_policy())
    with pytest.raises(ValueError, match="not fitted yet"):
        DataCriterion(0.1).transform(small_policy())
    with pytest.raises(ValueError, match="fit must be one of"):
        DataCriterion(0.1, fit_method="cubic")
    with pytest.raises(ValueError, match="fit must be one of"):
        make_criterion("data", 0.1, fit="cubic")  # the config's option name
    with pytest.raises(ValueError, match="pivot must be one of"):
        DataCriterion(0.1, pivot="random")
