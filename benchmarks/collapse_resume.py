"""Collapse, resume, compare: does a collapsed network keep its return at equal total steps?

For each seed: train ``cartpole`` for its whole schedule (40 epochs), collapse the checkpoint of
``--collapse-epoch`` at each threshold, resume the collapsed network to the same last epoch, and
evaluate the final original and collapsed policies on the same episodes. Everything goes through
the guide's own command line (``demo.py``), so this measures what users run.

Usage::

    .venv/bin/python benchmarks/collapse_resume.py [--seeds 1,2,3] [--thresholds 0.3,0.5]

Prints a table and writes ``benchmarks/results/collapse_resume.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pufferfiber.cli import main as cli
from pufferfiber.io.checkpoints import find_run, list_checkpoints, load_checkpoint
from pufferfiber.rl.evaluate import play_episodes
from pufferfiber.workflows.collapse import collapse_folder_name

RESULTS = Path(__file__).resolve().parent / "results" / "collapse_resume.json"


def demo(*argv: str) -> None:
    """Run ``demo.py`` in-process with its dashboard silenced; fail loudly on a non-zero exit."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(argv))
    if code != 0:
        raise SystemExit(f"demo.py {' '.join(argv)} exited with {code}")


def final_return(run: Path, episodes: int, seed: int) -> float:
    _, path = list_checkpoints(run)[-1]
    returns = play_episodes(load_checkpoint(path).policy, "cartpole", episodes, seed=seed)
    return statistics.fmean(returns)


def one_seed(seed: int, thresholds: list[float], epoch: int, episodes: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"collapse-resume-{seed}-"))
    common = ["--env", "cartpole", "--train.data-dir", str(data), "--train.seed", str(seed)]
    demo("--mode", "train", *common)
    run = find_run(data, "cartpole")
    row: dict[str, Any] = {"seed": seed, "original": final_return(run, episodes, 10_000 + seed)}
    for tau in thresholds:
        demo("--mode", "train", *common, "--collapse", str(tau), "--collapse-epoch", str(epoch))
        folder = run / collapse_folder_name(tau, epoch)
        fidelity = json.loads((folder / "fidelity.json").read_text())
        (resumed,) = [p for p in folder.iterdir() if p.is_dir()]
        row[str(tau)] = {
            "params_fraction": fidelity["params_fraction"],
            "fibers": fidelity["fibers"],
            "kl": fidelity["kl"],
            "return_at_collapse": fidelity["return_mean"],
            "final_return": final_return(resumed, episodes, 10_000 + seed),
        }
    return row


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds")
    p.add_argument("--thresholds", default="0.3,0.5", help="comma-separated collapse thresholds")
    p.add_argument("--collapse-epoch", type=int, default=20, help="epoch to collapse (of 40)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per policy")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rows = [one_seed(s, thresholds, args.collapse_epoch, args.episodes) for s in seeds]
    print(f"cartpole, {len(seeds)} seeds, collapse at epoch {args.collapse_epoch}, resumed to 40")
    print(
        f"{'model':>12} | {'% params':>9} | {'KL':>8} | {'return at collapse':>18} | final return"
    )
    print(f"{'original':>12} | {100.0:9.1f} | {'':>8} | {'':>18} | "
          f"{_mean_std([r['original'] for r in rows])}")  # fmt: skip
    for tau in thresholds:
        cells = [r[str(tau)] for r in rows]
        params = 100 * statistics.fmean(c["params_fraction"] for c in cells)
        print(
            f"{'τ = ' + str(tau):>12} | {params:9.1f}"
            f" | {statistics.fmean(c['kl'] for c in cells):8.4f}"
            f" | {_mean_std([c['return_at_collapse'] for c in cells]):>18}"
            f" | {_mean_std([c['final_return'] for c in cells])}"
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "rows": rows}))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
