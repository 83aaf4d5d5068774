"""The GRU policy (``--policy.rnn gru``): built, trained, collapsed exactly on planted duplicates,
broken without changing its function, and read by ReDo and the data criterion, all through the
same layer-kind registry as the LSTM."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pufferfiber.config.sections import load_config
from pufferfiber.core.collapse import collapse_policy
from pufferfiber.core.criteria import DataCriterion
from pufferfiber.core.divergence import output_divergence
from pufferfiber.core.fibers import compute_fibers
from pufferfiber.core.graph import Kind, build_graph, named_tensors, put_units, take_units
from pufferfiber.core.policy import Architecture, Policy, observation_batch
from pufferfiber.io.fibersfile import fibers_dict, load_fibers, save_fibers
from pufferfiber.rl.breaking import SymmetryBreaker
from pufferfiber.rl.redo import unit_activity

CNN = Architecture.atari(4, obs_shape=(1, 44, 44), channels=(6, 7, 6), hidden=12, lstm=9, rnn="gru")
MLP = Architecture.mlp(6, 3, hidden=(14, 10), lstm=8, rnn="gru")


def make(arch: Architecture, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    policy = Policy(arch)
    with torch.no_grad():  # non-zero biases, so the bias rule of each gate matters
        for name, p in policy.recurrent.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.5)
    return policy


def plant(policy: Policy, label: str, src: int, dst: int, factor: float = 1.0) -> None:
    """Unit ``dst`` copies ``factor`` × unit ``src``'s incoming rows (every gate) and biases."""
    g = build_graph(policy)
    tensors = named_tensors(policy)
    for axis in g.incoming_axes(g[label]):
        rows = take_units(axis, tensors[axis.key], [src]) * factor
        put_units(axis, tensors[axis.key], [dst], rows)


def planted(arch: Architecture, seed: int = 0) -> Policy:
    """Duplicates in every hidden layer, positive multiples in the ReLU layers."""
    policy = make(arch, seed)
    for node in build_graph(policy).hidden:
        plant(policy, node.label, 1, 3)
        plant(policy, node.label, 0, 4)
        if node.spec.homogeneous:
            plant(policy, node.label, 1, 5, factor=2.5)
    return policy


def sequences(arch: Architecture, batch: int = 4, steps: int = 7, seed: int = 1) -> torch.Tensor:
    return observation_batch(arch, batch * steps, seed=seed).reshape(batch, steps, *arch.obs_shape)


def outputs(policy: Policy, obs: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
    with torch.no_grad():
        logits, value, _ = policy(obs, state)
    return logits, value


def test_gru_graph_has_three_gate_rows_per_unit() -> None:
    policy = make(CNN)
    assert isinstance(policy.recurrent, torch.nn.GRU) and len(policy.initial_state(2)) == 1
    g = build_graph(policy)
    assert [n.label for n in g] == ["conv1", "conv2", "conv3", "linear1", "gru", "actor", "value"]
    gru = g["gru"]
    assert (gru.kind, gru.gates, gru.size) == (Kind.GRU, 3, 9)
    assert g.select_hidden(["gru"]) == [gru]
    with pytest.raises(ValueError, match="no lstm layer in this policy"):
        g.select_hidden(["lstm"])
    n = gru.size
    w_hh = named_tensors(policy)[gru.recurrent_key or ""]
    rows = take_units(g.incoming_axes(gru)[-1], w_hh, [2])
    assert torch.equal(rows[0, :, :, 0], w_hh[[2, n + 2, 2 * n + 2]])  # r, z, n rows of unit 2


@pytest.mark.slow
def test_gru_architecture_round_trip_and_parameter_count() -> None:
    assert Architecture.from_dict(CNN.to_dict()) == CNN
    old = {k: v for k, v in Architecture.atari(9).to_dict().items() if k != "rnn"}
    assert Architecture.from_dict(old).rnn == "lstm"  # checkpoints from before the option
    for arch in (CNN, MLP, Architecture.atari(9, rnn="gru")):
        assert arch.parameter_count() == Policy(arch).parameter_count()
    h, k = 512, 512  # the GRU has 3 gates where the LSTM has 4
    diff = (
        Architecture.atari(9).parameter_count() - Architecture.atari(9, rnn="gru").parameter_count()
    )
    assert diff == k * (h + k) + 2 * k
    with pytest.raises(ValueError, match="rnn must be one of lstm, gru"):
        Architecture.mlp(4, 2, rnn="rnn")


@pytest.mark.slow
def test_policy_rnn_option_reaches_the_network() -> None:
    from pufferfiber.envs.registry import architecture_for

    cfg = load_config("cartpole", {"policy.rnn": "gru"})
    assert cfg.policy.rnn == "gru" and cfg.to_dict()["policy"] == {"rnn": "gru"}
    assert load_config("cartpole").policy.rnn == "lstm"
    arch = architecture_for("cartpole", rnn=cfg.policy.rnn)
    assert isinstance(Policy(arch).recurrent, torch.nn.GRU)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [CNN, MLP], ids=["cnn", "mlp"])
def test_planted_gru_duplicates_collapse_exactly(arch: Architecture, tmp_path: Path) -> None:
    policy = planted(arch)
    fibration = compute_fibers(policy, 0.0)
    for layer in fibration.layers:
        removed = 3 if layer.node.spec.homogeneous else 2
        assert layer.n_fibers == layer.node.size - removed, layer.node.label
        assert layer.labels[3] == layer.labels[1] and layer.labels[4] == layer.labels[0]
    quotient = collapse_policy(policy, fibration)
    assert isinstance(quotient.recurrent, torch.nn.GRU)
    assert quotient.arch.lstm == arch.lstm - 2 and quotient.arch.rnn == "gru"
    obs = sequences(arch)
    la, va = outputs(policy, obs)
    lb, vb = outputs(quotient, obs)
    scale = max(la.abs().max().item(), va.abs().max().item(), 1.0)
    assert max((la - lb).abs().max().item(), (va - vb).abs().max().item()) / scale < 1e-5
    # The saved fibers file stores the kind as plain data.
    data = fibers_dict(fibration, epoch=1, env="x", params_before=1, params_after=1)
    path = save_fibers(tmp_path / "fibers.pkl", data)
    assert load_fibers(path)["layers"][-1]["kind"] == "gru"


def test_candidate_gate_biases_are_not_interchangeable() -> None:
    """For the GRU's candidate gate ``b_hn`` is multiplied by ``r``: two units whose ``b_in +
    b_hn`` agree but split differently compute different signals and are not one fiber (for
    the r and z gates only the sum matters)."""
    policy = make(MLP)
    plant(policy, "gru", 1, 3)
    n = MLP.lstm
    with torch.no_grad():
        policy.recurrent.bias_ih_l0[2 * n + 3] += 0.4
        policy.recurrent.bias_hh_l0[2 * n + 3] -= 0.4
    fib = compute_fibers(policy, 0.0)["gru"]
    assert fib.labels[3] != fib.labels[1]
    with torch.no_grad():  # the same shift on the update gate is only a change of split
        policy.recurrent.bias_ih_l0[2 * n + 3] -= 0.4
        policy.recurrent.bias_hh_l0[2 * n + 3] += 0.4
        policy.recurrent.bias_ih_l0[n + 3] += 0.4
        policy.recurrent.bias_hh_l0[n + 3] -= 0.4
    fib = compute_fibers(policy, 0.0)["gru"]
    assert fib.labels[3] == fib.labels[1]
    quotient = collapse_policy(policy, compute_fibers(policy, 0.0))
    obs = sequences(MLP)
    torch.testing.assert_close(outputs(quotient, obs), outputs(policy, obs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", [CNN, MLP], ids=["cnn", "mlp"])
def test_breaking_gru_duplicates_keeps_the_function(arch: Architecture) -> None:
    policy = planted(arch)
    warm, obs = sequences(arch, seed=3), sequences(arch, seed=4)
    with torch.no_grad():
        _, _, state = policy(warm)  # members of a fiber have equal h here
    before = copy.deepcopy(policy)
    optimizer = torch.optim.Adam(policy.parameters())
    policy(obs, state)[0].sum().backward()
    optimizer.step()
    with torch.no_grad():
        policy.load_state_dict(before.state_dict())
    breaker = SymmetryBreaker(1, 0.0, maturity=0, fraction=1.0, log_name=None, seed=2)
    report = breaker.step(policy, optimizer, epoch=1)
    assert report.broken["gru"] == 2 and report.broken["linear1"] == 3
    la, va = outputs(before, obs, state)
    lb, vb = outputs(policy, obs, state)
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vb, va, atol=1e-5, rtol=1e-5)
    assert not torch.equal(policy.recurrent.weight_hh_l0, before.recurrent.weight_hh_l0)
    # Adam's moments of the broken units' rows (every gate) are zeroed.
    n = arch.lstm
    moments = optimizer.state[policy.recurrent.weight_ih_l0]["exp_avg"]
    for unit in (3, 4):
        assert moments[[unit, n + unit, 2 * n + unit]].abs().sum() == 0
    assert moments[[1, n + 1, 2 * n + 1]].abs().sum() > 0


def test_data_criterion_folds_a_constant_input_into_the_right_gru_bias() -> None:
    """A constant Linear unit read by the GRU is folded into ``b_ih`` (outside ``r ⊙ ...``);
    folding it into ``b_hh`` would change the candidate gate. Exact at τ = 0."""
    policy = make(MLP)
    with torch.no_grad():
        linear2 = policy.network[3]
        linear2.weight[2] = 0.0
        linear2.bias[2] = 0.9  # ReLU(0.9): a constant unit
    calibration, heldout = sequences(MLP, 6, 9, seed=5), sequences(MLP, 6, 9, seed=6)
    crit = DataCriterion(0.0)
    quotient = crit.fit_transform(policy, calibration, heldout=heldout)
    fib = crit.fibration_
    assert fib["linear2"].node.size - len(fib.reconstructions[fib["linear2"].node.name].kept) >= 1
    assert isinstance(quotient.recurrent, torch.nn.GRU)
    div = output_divergence(policy, quotient, heldout)
    assert div.kl < 1e-9 and div.value_mae < 1e-5 * max(1.0, div.value_mean_abs)


def test_redo_reads_gru_activity() -> None:
    policy = make(MLP)
    obs = sequences(MLP)
    activity = unit_activity(policy, obs)
    assert set(activity) == {"linear1", "linear2", "gru"}
    with torch.no_grad():
        b, t = obs.shape[:2]
        hidden = policy.encode_observations(obs.reshape(b * t, -1)).reshape(b, t, -1)
        h = policy.recurrent(hidden.transpose(0, 1))[0]
    np.testing.assert_allclose(activity["gru"], h.abs().mean(dim=(0, 1)).double().numpy(), 1e-6)


def test_published_lstm_criterion_refuses_a_gru() -> None:
    with pytest.raises(ValueError, match="defined for the LSTM"):
        compute_fibers(make(MLP), 0.3, lstm_criterion="published")


@pytest.mark.slow
def test_gru_policy_learns_through_unroll_with_episode_ends() -> None:
    """A memory task trained through :meth:`Policy.unroll` (the PPO update's forward): act with
    the sign of the observation seen two steps earlier; episode ends reset the memory. The
    GRU's gradients flow through time and the accuracy rises from chance to near 1."""
    # Tiny matrices: a second thread only adds synchronisation (30x slower on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start, end = _train_memory_task()
    finally:
        torch.set_num_threads(threads)
    assert start < 0.65 and end > 0.95, (start, end)


def _train_memory_task() -> tuple[float, float]:
    torch.manual_seed(0)
    policy = Policy(Architecture.mlp(2, 2, hidden=(16,), lstm=16, rnn="gru"))
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(1)
    b, t = 32, 10

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = torch.randn(b, t, 2, generator=gen)
        dones = (torch.rand(b, t, generator=gen) < 0.05).float()
        target = torch.zeros(b, t, dtype=torch.long)
        target[:, 2:] = (obs[:, :-2, 0] > 0).long()
        # Steps whose memory of t - 2 survived: no episode end after step t - 2 or t - 1.
        valid = torch.zeros(b, t, dtype=torch.bool)
        valid[:, 2:] = (dones[:, :-2] == 0) & (dones[:, 1:-1] == 0)
        return obs, dones, target, valid

    def accuracy() -> float:
        obs, dones, target, valid = batch()
        with torch.no_grad():
            logits, _ = policy.unroll(obs, policy.initial_state(b), dones)
        return float((logits.argmax(-1) == target)[valid].float().mean())

    start = accuracy()
    for _ in range(80):
        obs, dones, target, valid = batch()
        logits, _ = policy.unroll(obs, policy.initial_state(b), dones)
        loss = torch.nn.functional.cross_entropy(logits[valid], target[valid])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return start, accuracy()


@pytest.mark.slow
def test_gru_through_the_guides_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--policy.rnn gru``: train, collapse and retrain, resume: every run stays a GRU (a
    resumed or collapsed run keeps its own recurrent layer, whatever the command line says)."""
    from pufferfiber.cli import main as cli
    from pufferfiber.io.checkpoints import list_checkpoints, load_checkpoint

    tiny = ["--env", "cartpole", "--train.data-dir", str(tmp_path), "--train.batch-size", "512"]
    tiny += ["--train.minibatch-size", "128", "--vec.num-envs", "4"]
    tiny += ["--train.checkpoint-interval", "2", "--train.total-timesteps", "1536"]
    assert cli.main([*tiny, "--policy.rnn", "gru", "--break-symmetry"]) == 0, capsys.readouterr()
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert load_checkpoint(run / "model_000003.pt").arch.rnn == "gru"

    collapse = ["--collapse", "0.3", "--collapse-epoch", "2", "--collapse-until", "4"]
    assert cli.main([*tiny, *collapse]) == 0, capsys.readouterr().err
    folder = run / "collapsed_model_thr_03_000002"
    collapsed = load_checkpoint(folder / "model_000002_collapsed.pt")
    (child,) = [p for p in folder.iterdir() if p.is_dir()]
    assert (
        collapsed.arch.rnn == "gru" and load_checkpoint(child / "model_000004.pt").arch.rnn == "gru"
    )

    more = ["--resume", "--train.total-timesteps", "2560"]
    capsys.readouterr()
    assert cli.main([*tiny[:4], *more, "--policy.rnn", "lstm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "model_000003.pt is a gru network; the recurrent layer is chosen when a run starts"
    )
    assert len(err.splitlines()) == 1
    assert cli.main([*tiny[:4], *more]) == 0, capsys.readouterr().err
    epoch, path = list_checkpoints(run)[-1]
    assert epoch == 5 and load_checkpoint(path).arch.rnn == "gru"
