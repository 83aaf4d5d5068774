"""How faithful a collapsed policy is: measured, not assumed (``docs/method.md`` §4).

* ``kl``: mean KL(original ‖ collapsed) between the action distributions, over every step of a
  fixed batch of real observation sequences (the LSTM state carried along each sequence, from
  zeros, in both networks);
* ``value_mae``: mean |value_original − value_collapsed| on the same steps (with
  ``value_mean_abs``, the mean |value| of the original, for scale);
* ``return_mean`` / ``return_std`` over ``episodes`` episodes played by the collapsed policy
  before any retraining.

:func:`fidelity_report` assembles the dict saved as ``fidelity.json``; :func:`format_fidelity`
prints it as a short table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pufferfiber.core.fibers import Fibration
from pufferfiber.core.policy import Policy

_CHUNK = 256  # sequences per forward pass (bounds memory on 105×80 frames)


@torch.no_grad()
def output_divergence(original: Policy, collapsed: Policy, obs: torch.Tensor) -> dict[str, float]:
    """KL and value error of ``collapsed`` against ``original`` on ``obs`` ``[B, T, *obs]``."""
    kl, err, mag = [], [], []
    # Each policy runs where it lives (e.g. the original on a GPU); the comparison is float64
    # on the CPU.
    on_o, on_c = (next(p.parameters()).device for p in (original, collapsed))
    for chunk in torch.split(obs, _CHUNK):
        logits_o, value_o, _ = original.eval()(chunk.to(on_o))
        logits_c, value_c, _ = collapsed.eval()(chunk.to(on_c))
        logp_o = torch.log_softmax(logits_o.double().cpu(), -1)
        logp_c = torch.log_softmax(logits_c.double().cpu(), -1)
        kl.append((logp_o.exp() * (logp_o - logp_c)).sum(-1).flatten())
        err.append((value_o.double().cpu() - value_c.double().cpu()).abs().flatten())
        mag.append(value_o.double().cpu().abs().flatten())
    return {
        "kl": float(torch.cat(kl).clamp(min=0).mean()),
        "value_mae": float(torch.cat(err).mean()),
        "value_mean_abs": float(torch.cat(mag).mean()),
        "steps": int(obs.shape[0] * obs.shape[1]),
    }


def fidelity_report(
    original: Policy,
    collapsed: Policy,
    fibration: Fibration,
    *,
    env: str,
    observations: torch.Tensor,
    episodes: int = 3,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """The ``fidelity.json`` dict: sizes, fibers per layer, KL, value error, return.

    ``episodes = 0`` skips playing (``return_mean`` / ``return_std`` are then ``None``).
    """
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
    report.update(output_divergence(original, collapsed, observations))
    report["observation_batch"] = list(observations.shape[:2])
    report["episodes"] = int(episodes)
    report["return_mean"] = report["return_std"] = None
    if episodes > 0:
        from pufferfiber.rl.evaluate import play_episodes

        returns = play_episodes(collapsed, env, episodes, seed=seed, max_steps=max_steps)
        report["returns"] = returns
        if returns:
            report["return_mean"] = float(np.mean(returns))
            report["return_std"] = float(np.std(returns))
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
    return "\n".join(lines)
