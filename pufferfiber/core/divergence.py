"""How faithful a collapsed network is: measured, not assumed (``docs/method.md`` §4).

:func:`output_divergence` compares two networks on a fixed batch of observation sequences
(the recurrent state carried along each sequence, from zeros, in both networks) and returns a
:class:`Divergence`:

* ``kl``: mean KL(original ‖ collapsed) between the action distributions, over every step;
* ``value_mae``: mean |value_original − value_collapsed| on the same steps (with
  ``value_mean_abs``, the mean |value| of the original, for scale).

The networks are our :class:`Policy` or a user's module through its adapter
(:func:`pufferfiber.core.adapt.adapt`). :func:`fidelity_report` assembles the figures of
``fidelity.json`` a core can compute (sizes, fibers, divergence; the episode returns are played
by :func:`pufferfiber.rl.evaluate.return_figures`); :func:`format_fidelity` prints it as a short
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pufferfiber.core.adapt import AdaptedNetwork
from pufferfiber.core.colouring import Fibration
from pufferfiber.core.policy import Policy

_CHUNK = 256  # sequences per forward pass (bounds memory on 105×80 frames)

Outputs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Divergence:
    """KL and value error of a collapsed network against its original (see the module doc)."""

    kl: float
    value_mae: float
    value_mean_abs: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the keys ``fidelity.json`` stores)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"KL {self.kl:.4g}, value MAE {self.value_mae:.4g} "
            f"(mean |value| {self.value_mean_abs:.3g}) on {self.steps} steps"
        )


def _runner(net: Policy | AdaptedNetwork | nn.Module, other: object) -> Outputs:
    """``frames [b, T, *obs] -> (logits, value)`` of ``net``, where its parameters live."""
    if isinstance(net, Policy):
        where = next(net.parameters()).device
        return lambda chunk: net(chunk.to(where))[:2]
    if isinstance(net, AdaptedNetwork):
        return net.unroll
    if isinstance(net, nn.Module) and isinstance(other, AdaptedNetwork):
        adapted = other.rebind(net)
        return adapted.unroll
    raise TypeError(
        f"output_divergence compares Policies or adapted modules (pufferfiber.adapt), "
        f"not {type(net).__name__} with {type(other).__name__}"
    )


@torch.no_grad()
def output_divergence(
    original: Policy | AdaptedNetwork | nn.Module,
    collapsed: Policy | AdaptedNetwork | nn.Module,
    frames: torch.Tensor,
) -> Divergence:
    """KL and value error of ``collapsed`` against ``original`` on ``frames`` ``[B, T, *obs]``.

    Each is a :class:`Policy` or an adapted module; a plain module is read with the other's
    adapter (e.g. ``output_divergence(net, small, frames)`` for ``small =
    criterion.fit_transform(net)``). Policies and user modules are not mixed (their
    observation scales differ).
    """
    if isinstance(original, Policy) != isinstance(collapsed, Policy):
        raise TypeError("output_divergence compares two Policies or two adapted modules")
    if frames.dim() < 3:
        raise ValueError(f"frames must be [B, T, *obs], got shape {tuple(frames.shape)}")
    run_o, run_c = _runner(original, collapsed), _runner(collapsed, original)
    kl, err, mag = [], [], []
    # Each network runs where it lives (e.g. the original on a GPU); the comparison is float64
    # on the CPU.
    for chunk in torch.split(frames, _CHUNK):
        logits_o, value_o = run_o(chunk)
        logits_c, value_c = run_c(chunk)
        logp_o = torch.log_softmax(logits_o.double().cpu(), -1)
        logp_c = torch.log_softmax(logits_c.double().cpu(), -1)
        kl.append((logp_o.exp() * (logp_o - logp_c)).sum(-1).flatten())
        err.append((value_o.double().cpu() - value_c.double().cpu()).abs().flatten())
        mag.append(value_o.double().cpu().abs().flatten())
    return Divergence(
        kl=float(torch.cat(kl).clamp(min=0).mean()),
        value_mae=float(torch.cat(err).mean()),
        value_mean_abs=float(torch.cat(mag).mean()),
        steps=int(frames.shape[0] * frames.shape[1]),
    )


def fidelity_report(
    original: Policy,
    collapsed: Policy,
    fibration: Fibration,
    *,
    env: str,
    observations: torch.Tensor,
) -> dict[str, Any]:
    """The ``fidelity.json`` dict but the returns: sizes, fibers per layer, KL, value error
    (callers add :func:`pufferfiber.rl.evaluate.return_figures`)."""
    report: dict[str, Any] = {
        "env": env,
        "threshold": float(fibration.threshold),
        "flatten_colours": fibration.flatten_colours,
        "collapsed_layers": [f.node.label for f in fibration.layers if f.collapsed],
        "fibers": {f.node.label: int(f.n_fibers) for f in fibration.layers},
        "sizes": {f.node.label: int(f.node.size) for f in fibration.layers},
        "lstm_rounds": int(fibration.lstm_rounds),
        "max_lstm_rounds": int(fibration.max_lstm_rounds),
        "params_before": int(original.parameter_count()),
        "params_after": int(collapsed.parameter_count()),
    }
    report["params_fraction"] = report["params_after"] / report["params_before"]
    budget = fibration.extra.get("budget")
    if budget:  # a size target (core.budget): ``threshold`` is then the τ it corresponds to
        report.update(
            target=float(budget["target"]),
            achieved=report["params_fraction"],
            tau=float(budget["tau"]),
            target_note=budget["note"],
        )
    report.update(output_divergence(original, collapsed, observations).to_dict())
    report["observation_batch"] = list(observations.shape[:2])
    return report


def format_fidelity(report: dict[str, Any]) -> str:
    """A short human-readable table of a fidelity report."""
    lines = [f"{'layer':<10}{'units':>8}{'fibers':>8}"]
    for label, count in report["fibers"].items():
        lines.append(f"{label:<10}{report['sizes'][label]:>8}{count:>8}")
    ret = report.get("return_mean")
    ret_text = (
        "not measured"
        if ret is None
        else (
            f"{ret:.1f} ± {report['return_std']:.1f} over {len(report.get('returns', []))} episodes"
        )
    )
    lines += [
        f"threshold {report['threshold']:g} ({report['flatten_colours']} colours at flatten, "
        f"LSTM rounds {report['lstm_rounds']})",
        f"parameters {report['params_before']:,} -> {report['params_after']:,} "
        f"({100 * report['params_fraction']:.1f} %)",
        f"KL(original||collapsed) {report['kl']:.4g}   value MAE {report['value_mae']:.4g} "
        f"(mean |value| {report['value_mean_abs']:.3g}) on {report['steps']} steps",
        f"return before retraining: {ret_text}",
    ]
    if report.get("target") is not None:
        lines.insert(
            -3,
            f"target {100 * report['target']:.1f} % of the parameters: kept "
            f"{100 * report['achieved']:.2f} %, τ {report['tau']:.4g}",
        )
        if report.get("target_note"):
            lines.insert(-3, str(report["target_note"]))
    return "\n".join(lines)
