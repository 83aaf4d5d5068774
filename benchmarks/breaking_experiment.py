"""Experiment (issue 5): no intervention vs symmetry breaking vs ReDo dormant-unit resets.

Every arm trains the same policy from the same seeds with the same budget through the
trainer's Python API; only the per-epoch hook differs:

* ``none``: plain PPO;
* ``break``: :class:`pufferfiber.rl.breaking.SymmetryBreaker` (function-preserving re-initialisation
  of mature redundant units);
* ``redo``: :class:`pufferfiber.rl.redo.DormantReset` (Sokar et al. 2023: τ-dormant units get fresh
  incoming weights and zero outgoing weights).

A monitor hook (identical in every arm, run *before* the intervention) records, every few
epochs, the fibers per layer at a fixed threshold and the fraction of dormant units on the
latest rollout's observations. Results (per-epoch returns, monitor records, intervention logs,
a summary with mean ± std of the final return over seeds) go to
``benchmarks/results/breaking_experiment.json`` (rewritten atomically after every run, so an
interrupted experiment resumes where it stopped) and the figure to
``benchmarks/results/breaking_experiment.png``.

Usage (2-core machine; ~25 min for the default plan)::

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/breaking_experiment.py
    .venv/bin/python benchmarks/breaking_experiment.py --plot-only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from pufferfiber.config.sections import load_config  # noqa: E402
from pufferfiber.core.fibers import compute_fibers  # noqa: E402
from pufferfiber.core.policy import Policy  # noqa: E402
from pufferfiber.envs.registry import architecture_for, make_vecenv  # noqa: E402
from pufferfiber.io.atomic import atomic_write_text  # noqa: E402
from pufferfiber.io.checkpoints import CheckpointError, load_checkpoint  # noqa: E402
from pufferfiber.rl.breaking import SymmetryBreaker  # noqa: E402
from pufferfiber.rl.evaluate import play_episodes  # noqa: E402
from pufferfiber.rl.redo import DormantReset, dormant_fraction  # noqa: E402
from pufferfiber.rl.start import RunStart  # noqa: E402
from pufferfiber.rl.trainer import Trainer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("none", "break", "redo")
DORMANT_TAU = 0.1  # ReDo's dormancy threshold, used both by the reset and the monitor


@dataclass(frozen=True)
class EnvPlan:
    """Budget and intervention settings for one environment (same for every arm)."""

    env: str
    overrides: dict[str, str]
    monitor_interval: int
    breaker: dict[str, Any]
    redo: dict[str, Any]
    obs_steps: int  # steps per env of the latest rollout used for dormancy
    eval_episodes: int  # episodes played by the final policy (the headline number)
    eval_max_steps: int  # cap on steps per evaluation env
    start_checkpoint: str | None = None  # resume this checkpoint (absolute epochs) if set
    epochs: int | None = None  # epochs to train (default: the config's schedule)


PLANS = {
    "cartpole": EnvPlan(
        env="cartpole",
        # pufferfiber/configs/classic_control/cartpole.ini: 40 epochs of 1,024 steps.
        overrides={
            "train.device": "cpu",
            "train.precision": "float32",
            "train.checkpoint_interval": "1000",
        },
        monitor_interval=2,
        breaker={"interval": 4, "fiber_threshold": 0.3, "maturity": 8, "fraction": 0.25},
        redo={"interval": 4, "tau": DORMANT_TAU},
        obs_steps=32,
        eval_episodes=16,
        eval_max_steps=1000,
    ),
    # Atari on a 2-core budget: a run from scratch learns nothing in ~40k steps and shows no
    # redundancy at all (tried: Breakout, 49k steps, τ = 0.5: 0 units broken, return at random
    # level), so every arm resumes the upstream BeamRider run at epoch 51 (return ≈ 626, many
    # approximate fibers) for 10 epochs of 4,096 steps with the guide's other hyperparameters.
    "beam_rider": EnvPlan(
        env="beam_rider",
        overrides={
            "train.device": "cpu",
            "train.torch_threads": "1",
            "train.precision": "float32",
            "train.batch_size": "4096",
            "train.checkpoint_interval": "1000",
            "vec.num_envs": "16",
        },
        monitor_interval=2,
        breaker={"interval": 2, "fiber_threshold": 0.5, "maturity": 0, "fraction": 0.1},
        redo={"interval": 2, "tau": DORMANT_TAU},
        obs_steps=8,
        eval_episodes=8,
        eval_max_steps=6000,
        # the upstream run kept beside the checkout (CI's layout), not part of the repository
        start_checkpoint=str(
            Path(__file__).resolve().parents[2] / "shared/data/beam_rider-5eed0001/model_000051.pt"
        ),
        epochs=10,
    ),
}


# --------------------------------------------------------------------------- one run


class Monitor:
    """Per-epoch hook recording fibers per layer (at the breaker's threshold, so every arm is
    measured on the scale symmetry breaking acts on) and dormant fractions every few epochs."""

    def __init__(
        self, interval: int, threshold: float, observations: Callable[[], torch.Tensor]
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.observations = observations
        self.records: list[dict[str, Any]] = []

    def __call__(self, ctx: Any) -> dict[str, float] | None:
        if self.records and ctx.epoch % self.interval:
            return None  # always record the first epoch, then every ``interval``
        policy = ctx.policy
        fibration = compute_fibers(policy, self.threshold)
        obs = self.observations()
        with torch.no_grad():
            dormant = dormant_fraction(policy, obs, DORMANT_TAU)
            dead = dormant_fraction(policy, obs, 0.0)
        sizes = {f.node.label: f.node.size for f in fibration.layers}
        self.records.append(
            {
                "epoch": ctx.epoch,
                "fiber_threshold": self.threshold,
                "fibers": fibration.counts,
                "sizes": sizes,
                "dormant": dormant,
                "dead": dead,
            }
        )
        return {"dormant_mean": float(np.mean(list(dormant.values())))}


def intervention(arm: str, plan: EnvPlan, seed: int, obs: Callable[[], torch.Tensor]) -> Any:
    if arm == "break":
        return SymmetryBreaker(seed=seed, **plan.breaker)
    if arm == "redo":
        return DormantReset(lambda ctx: obs(), seed=seed, **plan.redo)
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(plan: EnvPlan, arm: str, seed: int) -> dict[str, Any]:
    """Train one arm with one seed; returns its curves and logs."""
    overrides = {**plan.overrides, "train.seed": str(seed)}
    cfg = load_config(plan.env, overrides, backend="serial")
    vecenv = make_vecenv(plan.env, "serial", cfg.vec.num_envs)
    torch.manual_seed(seed)  # the initial weights depend on the seed only, not on the arm
    start_epoch, start_step = 0, 0
    if plan.start_checkpoint is None:
        policy = Policy(architecture_for(plan.env, vecenv))
    else:
        ckpt = load_checkpoint(Path(plan.start_checkpoint), allow_pickle=True, expect_env=plan.env)
        policy, start_epoch, start_step = ckpt.policy, ckpt.epoch, ckpt.global_step
    end_epoch = None if plan.epochs is None else start_epoch + plan.epochs
    holder: dict[str, Trainer] = {}

    def recent_obs() -> torch.Tensor:
        return holder["trainer"].buffer.obs[:, : plan.obs_steps]

    monitor = Monitor(plan.monitor_interval, plan.breaker["fiber_threshold"], recent_obs)
    hook = intervention(arm, plan, seed, recent_obs)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="breaking_experiment_") as tmp:
        run_dir = Path(tmp) / f"{plan.env}-{arm}-{seed}"
        trainer = Trainer(
            cfg,
            vecenv,
            policy,
            run_dir,
            start=RunStart(start_epoch, start_step, end_epoch),
            hooks=[monitor] + ([hook] if hook else []),
        )
        holder["trainer"] = trainer
        try:
            trainer.train()
        finally:
            trainer.close()
        evaluation = evaluate(trainer.policy, plan, seed)
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        log = read_jsonl(run_dir / "breaking.jsonl") + read_jsonl(run_dir / "redo.jsonl")
    returns = [m.get("episode_return") for m in metrics]
    return {
        "env": plan.env,
        "arm": arm,
        "seed": seed,
        "seconds": round(time.time() - start, 1),
        "epochs": [m["epoch"] for m in metrics],
        "global_step": [m["global_step"] for m in metrics],
        "episode_return": [None if r is None else float(r) for r in returns],
        "monitor": monitor.records,
        "interventions": log,
        "final_return": final_return(returns),
        "eval_returns": evaluation,
        "eval_return": float(np.mean(evaluation)) if evaluation else math.nan,
    }


def evaluate(policy: Policy, plan: EnvPlan, seed: int) -> list[float]:
    """Returns of the policy's episodes on evaluation seeds shared by every arm."""
    return play_episodes(
        policy, plan.env, plan.eval_episodes, seed=10_000 + seed, max_steps=plan.eval_max_steps
    )


def reference(plan: EnvPlan, seeds: Sequence[int]) -> dict[str, Any] | None:
    """Evaluation of the starting checkpoint (resumed plans) on the same seeds."""
    if plan.start_checkpoint is None:
        return None
    policy = load_checkpoint(Path(plan.start_checkpoint), allow_pickle=True).policy
    per_seed = [evaluate(policy, plan, seed) for seed in seeds]
    means = [float(np.mean(r)) for r in per_seed]
    return {
        "eval_returns": per_seed,
        "eval_return_mean": float(np.mean(means)),
        "eval_return_std": float(np.std(means)),
    }


def final_return(returns: Sequence[float | None], tail: float = 0.2) -> float:
    """Mean episode return over the last ``tail`` share of the epochs (epochs with no finished
    episode are skipped)."""
    k = max(1, math.ceil(tail * len(returns)))
    vals = [r for r in returns[-k:] if r is not None]
    return float(np.mean(vals)) if vals else math.nan


# --------------------------------------------------------------------------- summary + plot


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per env and arm: final return mean ± std over seeds, total units broken / reset, and
    the last monitor record's mean dormant fraction and fibers per layer (seed means)."""
    out: dict[str, Any] = {}
    for env in sorted({r["env"] for r in runs}):
        out[env] = {}
        for arm in ARMS:
            rs = [r for r in runs if r["env"] == env and r["arm"] == arm]
            if not rs:
                continue
            finals = [r["final_return"] for r in rs]
            evals = [r["eval_return"] for r in rs]
            last = [r["monitor"][-1] for r in rs if r["monitor"]]
            labels = list(last[0]["fibers"]) if last else []
            edited = [
                sum(sum(d.get("broken", d.get("reset", {})).values()) for d in r["interventions"])
                for r in rs
            ]
            out[env][arm] = {
                "seeds": [r["seed"] for r in rs],
                "final_return_mean": float(np.nanmean(finals)),
                "final_return_std": float(np.nanstd(finals)),
                "final_returns": finals,
                "eval_return_mean": float(np.nanmean(evals)),
                "eval_return_std": float(np.nanstd(evals)),
                "eval_returns": evals,
                "units_edited_mean": float(np.mean(edited)),
                "dormant_mean_at_end": float(
                    np.mean([np.mean(list(m["dormant"].values())) for m in last])
                )
                if last
                else None,
                "fibers_at_end": {
                    lab: float(np.mean([m["fibers"][lab] for m in last])) for lab in labels
                },
                "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
            }
    return out


def _smooth(y: np.ndarray, k: int = 3) -> np.ndarray:
    """Running mean over ``k`` epochs, ignoring epochs without a finished episode (NaN)."""
    out = np.full_like(y, np.nan)
    for i in range(len(y)):
        window = y[max(0, i - k + 1) : i + 1]
        if np.isfinite(window).any():
            out[i] = np.nanmean(window)
    return out


def plot(runs: list[dict[str, Any]], path: Path, references: dict[str, Any] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in runs})
    colours = {"none": "tab:gray", "break": "tab:blue", "redo": "tab:orange"}
    fig, axes = plt.subplots(len(envs), 4, figsize=(20, 4.2 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs, strict=True):
        for arm in ARMS:
            rs = [r for r in runs if r["env"] == env and r["arm"] == arm]
            if not rs:
                continue
            c = colours[arm]
            steps = np.asarray(rs[0]["global_step"], dtype=float)
            curves = np.array(
                [
                    _smooth(
                        np.array(
                            [np.nan if v is None else v for v in r["episode_return"]], dtype=float
                        )
                    )
                    for r in rs
                ]
            )
            mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
            row[0].plot(steps, mean, color=c, label=f"{arm} (n={len(rs)})")
            row[0].fill_between(steps, mean - std, mean + std, color=c, alpha=0.15)
            epochs = np.array([m["epoch"] for m in rs[0]["monitor"]])
            for label, style in (("linear1", "-"), ("lstm", "--")):
                frac = np.array(
                    [[m["fibers"][label] / m["sizes"][label] for m in r["monitor"]] for r in rs]
                )
                row[1].plot(epochs, frac.mean(0), style, color=c, label=f"{arm} {label}")
            dormant = np.array(
                [[np.mean(list(m["dormant"].values())) for m in r["monitor"]] for r in rs]
            )
            row[2].plot(epochs, dormant.mean(0), color=c, label=arm)
            row[2].fill_between(
                epochs,
                dormant.mean(0) - dormant.std(0),
                dormant.mean(0) + dormant.std(0),
                color=c,
                alpha=0.15,
            )
            x = ARMS.index(arm)
            evals = np.array([r["eval_return"] for r in rs], dtype=float)
            row[3].bar(x, np.nanmean(evals), yerr=np.nanstd(evals), color=c, alpha=0.6, capsize=4)
            row[3].plot(np.full(len(evals), x), evals, "k.", ms=6)
        row[0].set(
            title=f"{env}: episode return (mean ± std over seeds)",
            xlabel="agent steps",
            ylabel="episode return",
        )
        row[1].set(
            title=f"{env}: fibers / units at τ={PLANS[env].breaker['fiber_threshold']}",
            xlabel="epoch",
            ylabel="fibers per unit (1 = no redundancy)",
        )
        row[2].set(
            title=f"{env}: {DORMANT_TAU}-dormant units (mean over layers)",
            xlabel="epoch",
            ylabel="fraction dormant",
        )
        ref = (references or {}).get(env)
        if ref:
            row[3].axhline(ref["eval_return_mean"], color="k", ls=":", label="start checkpoint")
        row[3].set(
            title=f"{env}: final policy, evaluation return",
            xticks=range(len(ARMS)),
            xticklabels=ARMS,
            ylabel="mean episode return (dots: seeds)",
        )
        for ax in row:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- fold change

FOLD_SETTINGS = (  # (fiber threshold, layers, fraction)
    (0.0, None, 1.0),
    (0.3, None, 1.0),
    (0.5, ["linear1"], 1.0),
    (0.5, ["lstm"], 1.0),
    (0.5, ["lstm"], 0.1),
    (0.5, None, 0.1),
    (0.7, ["linear1"], 1.0),
    (0.7, ["conv"], 1.0),
)


def fold_change(checkpoint: Path, env: str, out: Path) -> dict[str, Any]:
    """How much one breaking step changes a trained policy at approximate thresholds.

    Real frames from playing the checkpoint: 8 sequences of 16 warm-up steps (giving the LSTM
    state) + 16 measured steps; max |Δlogit|, max |Δvalue| and mean KL per setting.
    """
    from pufferfiber.rl.breaking import function_change
    from pufferfiber.rl.evaluate import collect_observations

    policy = load_checkpoint(checkpoint, allow_pickle=True, expect_env=env).policy.eval()
    obs = collect_observations(policy, env, 8, 32, seed=0)
    with torch.no_grad():
        _, value, state = policy(obs[:, :16], None)
    rows = []
    for tau, layers, fraction in FOLD_SETTINGS:
        edited = copy.deepcopy(policy)
        breaker = SymmetryBreaker(
            interval=1,
            fiber_threshold=tau,
            maturity=0,
            fraction=fraction,
            layers=layers,
            log_name=None,
        )
        report = breaker.step(edited, None, epoch=1)
        rows.append(
            {
                "fiber_threshold": tau,
                "layers": layers or "all",
                "fraction": fraction,
                "broken": report.broken,
                "fibers": report.fibers,
                **function_change(policy, edited, obs[:, 16:], state),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    doc = {
        "checkpoint": str(checkpoint),
        "mean_abs_value": float(value.abs().mean()),
        "settings": rows,
    }
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    return doc


# --------------------------------------------------------------------------- main


def save(results_path: Path, runs: list[dict[str, Any]], references: dict[str, Any]) -> None:
    plans = {
        env: {
            "overrides": p.overrides,
            "breaker": p.breaker,
            "redo": p.redo,
            "monitor_tau": p.breaker["fiber_threshold"],
            "dormant_tau": DORMANT_TAU,
            "start_checkpoint": p.start_checkpoint,
            "epochs": p.epochs,
        }
        for env, p in PLANS.items()
        if any(r["env"] == env for r in runs)
    }
    doc = {"plans": plans, "summary": summarise(runs), "references": references, "runs": runs}
    atomic_write_text(results_path, json.dumps(doc, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--envs", nargs="+", default=list(PLANS), choices=list(PLANS), help="environments to run"
    )
    parser.add_argument(
        "--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds per arm (default: 1 2 3)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (resumable)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override every plan's number of epochs (smoke tests)",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw from the JSON")
    parser.add_argument(
        "--fold-change",
        action="store_true",
        help="only measure how much one breaking step at approximate "
        "thresholds changes the upstream BeamRider policy",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "breaking_experiment.json"
    if args.fold_change:
        start = PLANS["beam_rider"].start_checkpoint
        assert start is not None
        try:
            fold_change(Path(start), "beam_rider", args.out / "breaking_fold_change.json")
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    runs: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    if results_path.exists():
        previous = json.loads(results_path.read_text())
        runs, references = previous["runs"], previous.get("references", {})
    if not args.plot_only:
        for env in args.envs:
            if env not in references and PLANS[env].start_checkpoint is not None:
                try:
                    references[env] = reference(PLANS[env], args.seeds)
                except CheckpointError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
            for seed in args.seeds:
                for arm in args.arms:
                    if any(r["env"] == env and r["arm"] == arm and r["seed"] == seed for r in runs):
                        continue  # resumable: done already
                    plan = PLANS[env]
                    if args.epochs is not None:
                        plan = dataclasses.replace(plan, epochs=args.epochs)
                    try:
                        record = run_one(plan, arm, seed)
                    except CheckpointError as exc:
                        print(f"error: {exc}", file=sys.stderr)
                        return 1
                    runs.append(record)
                    save(results_path, runs, references)
                    print(
                        f"{env:9s} {arm:5s} seed {seed}: final return "
                        f"{record['final_return']:.1f} ({record['seconds']:.0f}s)",
                        flush=True,
                    )
    if not runs:
        print("no results to plot", file=sys.stderr)
        return 1
    save(results_path, runs, references)
    figure = plot(runs, args.out / "breaking_experiment.png", references)
    print(f"wrote {results_path} and {figure}")
    print(json.dumps(summarise(runs), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
