"""Training throughput of pufferfiber next to PufferLib 2.0.6's and 3.0's own trainers, in one run.

    .venv/bin/python benchmarks/upstream_sps.py [--game puffer_pong] [--rounds 3] [--seconds 60]
        [--torch-threads 2] [--cache ~/.cache/pufferfiber/upstream] [--build-only]

**Build (once).** The first run builds both upstream trainers into the cache folder (outside the
repository), each in its own virtualenv (``<cache>/pufferlib-2.0.6/venv``,
``<cache>/pufferlib-3.0/venv``, made with ``python3.11 -m venv``), so the project's ``.venv``
(PufferLib 2.0.2) is never touched:

* PufferLib 2.0.6's sdist: its ``demo.py`` and ``clean_pufferl.py`` (copied into a run folder
  without the sdist's ``pufferlib/`` source, so the installed, compiled package is the one
  imported), its compiled Ocean games and ``c_gae``;
* PufferLib 3.0.0's sdist: ``pufferlib.pufferl.PuffeRL``, what ``puffer train`` runs, with its C
  advantage kernel.

Only pip downloads, from the package registry: the two sdists (``pip download --no-binary``) and
their Python dependencies, with a constraints file holding torch at this interpreter's release
(2.13.0) and numpy at 1.23.3, so no other torch is ever pulled. The sdists' ``setup.py`` files
download raylib/box2d archives from GitHub; empty folders of those names stand in (the games
measured do not render), 3.0's ``impulse_wars`` (the one game that links box2d) is left out,
and 3.0 is built with ``nvcc`` kept off ``PATH`` (it builds a CUDA kernel whenever it finds one).
``READY`` in each build's folder marks a finished build; later runs download nothing. A build
that cannot be done is one line naming the step and its log, and exit code 2.

**Measurement.** For each game, ``--rounds`` rounds each run pufferfiber, then 2.0.6, then 3.0,
each in a fresh process (``benchmarks/upstream_driver.py``), all at the same settings:
``benchmarks/ocean_sps.py``'s ``reference`` settings (PufferLib's published ones, issue 8):
1,024 games in one env object, batch 65,536, minibatch 16,384, bptt 16, one update epoch,
MLP 128 -> LSTM 128, float32 on the CPU, our config's [env] keys (those the upstream constructor
takes) and PPO coefficients (keys ours has no value for: for 2.0.6, whose sdist carries no
config, ``norm_adv`` and ``clip_vloss`` on, ``vf_clip_coef`` 0.1, set in the driver; for 3.0,
its pong config's Adam betas, V-trace and prioritized-sampling coefficients), and
``--torch-threads`` torch threads: all of 2.0.6's and 3.0's torch work, and our update (our
rollout runs on one thread whatever it says, by design; on a loaded machine that alone is worth
several times, see docs/results/benchmarks.md, so compare at ``--torch-threads 1`` too).

What is measured is the same for all three: agent steps per second of training wall time,
excluding start-up. The driver builds the trainer, runs one untimed warm-up epoch (collect +
update), then whole epochs until ``--seconds`` have passed; SPS = the agent steps the trainer
itself counted in those epochs (``global_step``: ours adds the batch per epoch, 2.0.6's
``clean_pufferl.evaluate`` and 3.0's ``PuffeRL.evaluate`` add the live agents per env step) /
their ``time.perf_counter`` seconds. Neither upstream dashboard's SPS is used (2.0.6's and 3.0's
are instantaneous rates over their own intervals); both print around the driver's ``RESULT``
line, which is parsed.

Interleaving makes the ratio fair on a shared machine: a load spike hits one round of all three
rather than all rounds of one. The machine (CPU model, cores) and the 1/5/15-minute load
averages before and after every run are printed. Per round it prints the SPS of each and the ratios;
then the medians over rounds and, last per game, ``ratio pufferfiber/pufferlib-2.0.6 GAME:
X.XX`` and ``ratio pufferfiber/pufferlib-3.0 GAME: X.XX`` (the median of the per-round ratios),
so scripts can read them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "upstream_driver.py"
OURS = "pufferfiber"
UPSTREAM = ("pufferlib-2.0.6", "pufferlib-3.0")
TRAINERS = (OURS, *UPSTREAM)
GAMES = ("puffer_pong", "puffer_breakout")
PIP_VERSION = {"pufferlib-2.0.6": "2.0.6", "pufferlib-3.0": "3.0.0"}
# torch at the project's tested release (requirements.txt); numpy at the one 2.0.x builds with.
CONSTRAINTS = "torch==2.13.0\nnumpy==1.23.3\n"
# Folders the sdists' setup.py would otherwise download from GitHub (no measured game needs them).
PLACEHOLDERS = {
    "pufferlib-2.0.6": ("raylib-5.0_webassembly",),
    "pufferlib-3.0": ("raylib-5.5_webassembly", "box2d-web", "box2d-linux-amd64"),
}
RESULT = re.compile(
    r"^RESULT sps=([0-9.]+) steps=(\d+) seconds=([0-9.]+) epochs=(\d+)\s*$", re.MULTILINE
)
HIDDEN = 128


class BuildError(Exception):
    """A build step that failed: the message names the step and its log."""


@dataclass(frozen=True)
class Result:
    """One measurement: agent steps over timed wall seconds, in whole epochs."""

    steps: int
    seconds: float
    epochs: int

    @property
    def sps(self) -> float:
        return self.steps / self.seconds


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/pufferfiber/upstream`` (``~/.cache`` without it): outside any checkout."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pufferfiber/upstream"


def fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2 (bad arguments, a failed build or measurement)."""
    print(f"upstream_sps: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; bad values are one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Nothing downloads at run time except pip from the package registry during the "
        "one-time build of the upstream trainers into --cache.",
    )
    parser.add_argument(
        "--game", default="puffer_pong",
        help=f"Ocean games, comma-separated, of {', '.join(GAMES)} (default: puffer_pong)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument(
        "--seconds", type=float, default=60.0,
        help="timed wall seconds per measurement, after one warm-up epoch; whole epochs, so a "
        "run ends at the first epoch boundary past it (default: 60)",
    )  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--cache", type=Path, default=default_cache(),
        help="folder of the upstream builds (default: ~/.cache/pufferfiber/upstream)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=900.0,
        help="seconds one measurement process may take before the run stops (default: 900)",
    )  # fmt: skip
    parser.add_argument("--build-only", action="store_true", help="build (if needed) and stop")
    args = parser.parse_args(argv)
    games = [g.strip() for g in args.game.split(",") if g.strip()]
    for game in games:
        if game not in GAMES:
            fail(f"--game: unknown game {game!r} (choose from {', '.join(GAMES)})")
    if not games:
        fail("--game: no game given")
    args.games = games
    for name in ("rounds", "torch_threads"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("seconds", "timeout"):
        if getattr(args, name) <= 0:
            fail(f"--{name} must be positive, got {getattr(args, name)}")
    args.cache = args.cache.expanduser().resolve()
    if args.cache == REPO or REPO in args.cache.parents:
        fail(f"--cache {args.cache} is inside the repository; choose a folder outside it")
    return args


def parse_result(output: str) -> Result:
    """The measurement in a driver's output: its last ``RESULT`` line (dashboards print around
    it). ValueError if there is none or it counts no steps or no time."""
    found = RESULT.findall(output)
    if not found:
        raise ValueError("no RESULT line in the trainer's output")
    _, steps, seconds, epochs = found[-1]
    result = Result(int(steps), float(seconds), int(epochs))
    if result.seconds <= 0 or result.steps <= 0 or result.epochs <= 0:
        raise ValueError(f"RESULT line with no steps or time: {result}")
    return result


def ratio_line(upstream: str, game: str, ratio: float) -> str:
    """The line scripts read: ``ratio pufferfiber/<upstream> <game>: X.XX``."""
    return f"ratio {OURS}/{upstream} {game}: {ratio:.2f}"


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ours/theirs within a round (each round's pair ran back to back,
    so its ratio is the load-robust quantity; the median of ratios, not the ratio of medians)."""
    if not ours or len(ours) != len(theirs):
        raise ValueError(f"need one SPS per round of each, got {len(ours)} and {len(theirs)}")
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def machine() -> str:
    """CPU model and logical cores, from /proc/cpuinfo where there is one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def load() -> str:
    """The 1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class Build:
    """Where one upstream trainer lives in the cache."""

    name: str
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def run_dir(self) -> Path:
        """The folder measurements run from: the sdist's scripts, not its ``pufferlib/``."""
        return self.root / "run"

    @property
    def ready(self) -> Path:
        return self.root / "READY"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def no_cuda_path(path: str) -> str:
    """``path`` without folders holding nvcc (3.0 builds its CUDA kernel whenever nvcc is found,
    which takes minutes and fails without a GPU toolchain matching torch)."""
    keep = [d for d in path.split(os.pathsep) if d]
    return os.pathsep.join(d for d in keep if not os.access(os.path.join(d, "nvcc"), os.X_OK))


def _step(build: Build, n: int, total: int, label: str, cmd: list[str], **kw: Any) -> None:
    """Run one build step, its output to a log; print progress; BuildError on failure."""
    build.logs.mkdir(parents=True, exist_ok=True)
    log = build.logs / f"step{n}.log"
    print(f"[{build.name}] step {n}/{total}: {label} ...", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)
    if proc.returncode != 0:
        raise BuildError(f"build of {build.name} failed at step {n} ({label}); log: {log}")
    print(f"[{build.name}]   done in {time.perf_counter() - start:.0f} s", flush=True)


def _fetch_sdist(build: Build, n: int, total: int) -> None:
    """The unpacked sdist into build.src, by pip from the registry.

    ``pip download`` of these sdists unpacks them and then fails while preparing their metadata
    (their setup.py downloads raylib from GitHub when imported); ``--no-clean`` keeps the
    unpacked tree, which is all the build needs. ``--no-build-isolation``: without it pip first
    installs 3.0's build requirements (torch among them, unconstrained: a 3.8 GB CUDA build) into
    a throwaway env just to read the metadata. The tree is accepted only if its PKG-INFO names
    the wanted version."""
    version = PIP_VERSION[build.name]
    tmp = build.root / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    label = f"pip download pufferlib=={version} (sdist)"
    build.logs.mkdir(parents=True, exist_ok=True)
    log = build.logs / f"step{n}.log"
    print(f"[{build.name}] step {n}/{total}: {label} ...", flush=True)
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps",
             "--no-build-isolation", "--no-binary", "pufferlib", f"pufferlib=={version}",
             "-d", str(tmp / "dl")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)},
            check=False,
        )  # fmt: skip
    for info in tmp.glob("pip-download-*/pufferlib*/PKG-INFO"):
        if re.search(rf"^Version: {re.escape(version)}$", info.read_text(), re.MULTILINE):
            shutil.rmtree(build.src, ignore_errors=True)
            shutil.move(str(info.parent), str(build.src))
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"[{build.name}]   unpacked into {build.src}", flush=True)
            return
    raise BuildError(f"build of {build.name} failed at step {n} ({label}): no sdist; log: {log}")


def _venv_python() -> str:
    """The interpreter the build venvs are made from: python3.11 (the project's), else this one."""
    return shutil.which("python3.11") or sys.executable


def build_upstream(build: Build) -> float:
    """Build one upstream trainer into the cache, once (READY marks a finished build).

    Returns the build's wall seconds (0 when it was already built)."""
    if build.ready.exists():
        print(f"[{build.name}] already built in {build.root}", flush=True)
        return 0.0
    start = time.perf_counter()
    total = 6
    build.root.mkdir(parents=True, exist_ok=True)
    _fetch_sdist(build, 1, total)
    print(
        f"[{build.name}] step 2/{total}: placeholder folders for setup.py's downloads", flush=True
    )
    for name in PLACEHOLDERS[build.name]:
        (build.src / name).mkdir(exist_ok=True)
    if build.name == "pufferlib-3.0":  # the one game that links box2d
        (build.src / "pufferlib/ocean/impulse_wars/binding.c").unlink(missing_ok=True)
    constraints = build.root / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    shutil.rmtree(build.venv, ignore_errors=True)
    _step(build, 3, total, "virtualenv", [_venv_python(), "-m", "venv", str(build.venv)])
    pip = [str(build.python), "-m", "pip", "install", "-c", str(constraints)]
    _step(
        build, 4, total, "pip install torch==2.13.0 numpy==1.23.3 and build tools",
        [*pip, "torch==2.13.0", "numpy==1.23.3", "setuptools", "wheel", "Cython"],
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _step(
        build, 5, total, "pip install of the sdist (compiles the games; minutes)",
        [*pip, "--no-build-isolation", "."], cwd=build.src,
        env={**env, "PATH": no_cuda_path(env.get("PATH", "")), "CUDA_HOME": "", "MAX_JOBS": "2"},
    )  # fmt: skip
    build.run_dir.mkdir(exist_ok=True)
    if build.name == "pufferlib-2.0.6":
        for name in ("demo.py", "clean_pufferl.py"):
            shutil.copy2(build.src / name, build.run_dir / name)
        check = "import demo, clean_pufferl, pufferlib.ocean; print(pufferlib.__file__)"
    else:
        check = "import pufferlib.pufferl, pufferlib.ocean; print(pufferlib.__file__)"
    _step(
        build, 6, total, "import check", [str(build.python), "-c", check], cwd=build.run_dir,
        env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    build.ready.write_text(
        f"{build.name} built {time.strftime('%Y-%m-%d %H:%M:%S')} in {seconds:.0f} s\n"
    )
    print(f"[{build.name}] built in {seconds:.0f} s", flush=True)
    return seconds


# --------------------------------------------------------------------------- measure


def settings_for(game: str, seconds: float, threads: int) -> dict[str, Any]:
    """The shared settings: ocean_sps.py's reference settings and our config's coefficients."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    from ocean_sps import REFERENCE

    from pufferfiber.config.sections import load_config

    cfg = load_config(game, REFERENCE)
    t = cfg.train
    return {
        "seconds": seconds, "torch_threads": threads, "num_envs": cfg.vec.num_envs,
        "env": dict(cfg.env), "hidden_size": HIDDEN, "seed": t.seed,
        "batch_size": t.batch_size, "minibatch_size": t.minibatch_size,
        "bptt_horizon": t.bptt_horizon, "update_epochs": t.update_epochs,
        "learning_rate": t.learning_rate, "gamma": t.gamma, "gae_lambda": t.gae_lambda,
        "clip_coef": t.clip_coef, "vf_coef": t.vf_coef, "ent_coef": t.ent_coef,
        "max_grad_norm": t.max_grad_norm,
    }  # fmt: skip


def measure(
    trainer: str, game: str, settings: dict[str, Any], builds: dict[str, Build], timeout: float
) -> Result:
    """One measurement in a fresh process; exit 2 with one line if it fails."""
    if trainer == OURS:
        python, cwd = sys.executable, REPO
        env = {**os.environ, "PYTHONPATH": str(REPO)}
    else:
        python, cwd = str(builds[trainer].python), builds[trainer].run_dir
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # all three on the CPU, even on a machine with a GPU
    cmd = [str(python), str(DRIVER), trainer, game, json.dumps(settings)]
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        fail(f"{trainer} on {game} took over {timeout:.0f} s (--timeout)")
    try:
        return parse_result(proc.stdout)
    except ValueError as exc:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        fail(f"{trainer} on {game} failed (exit {proc.returncode}): {exc}; last line: {tail[0]}")


def run_game(
    game: str, args: argparse.Namespace, builds: dict[str, Build]
) -> dict[str, list[float]]:
    """``--rounds`` interleaved rounds on one game; prints each run, the medians and ratios."""
    settings = settings_for(game, args.seconds, args.torch_threads)
    print(
        f"\n{game}: {settings['num_envs']} envs, batch {settings['batch_size']}, minibatch "
        f"{settings['minibatch_size']}, bptt {settings['bptt_horizon']}, update epochs "
        f"{settings['update_epochs']}, float32, torch threads {args.torch_threads}, "
        f"{args.seconds:g} s timed per run after one warm-up epoch",
        flush=True,
    )
    sps: dict[str, list[float]] = {t: [] for t in TRAINERS}
    for r in range(1, args.rounds + 1):
        for trainer in TRAINERS:
            before = load()
            result = measure(trainer, game, settings, builds, args.timeout)
            sps[trainer].append(result.sps)
            print(
                f"  round {r} {trainer:<16} {result.sps:9,.0f} SPS  ({result.steps:,} steps in "
                f"{result.seconds:.1f} s, {result.epochs} epochs; load {before} -> {load()})",
                flush=True,
            )
        ours = sps[OURS][-1]
        ratios = ", ".join(f"/{t} {ours / sps[t][-1]:.2f}" for t in UPSTREAM)
        print(f"  round {r} ratios {OURS}{ratios}", flush=True)
    med = {t: statistics.median(v) for t, v in sps.items()}
    print("  median over rounds: " + ", ".join(f"{t} {med[t]:,.0f}" for t in TRAINERS) + " SPS")
    for upstream in UPSTREAM:
        print(ratio_line(upstream, game, median_ratio(sps[OURS], sps[upstream])), flush=True)
    return sps


def main(argv: list[str] | None = None) -> None:
    """Build once, then measure each game."""
    args = parse_args(argv)
    builds = {name: Build(name, args.cache / name) for name in UPSTREAM}
    try:
        for build in builds.values():
            build_upstream(build)
    except (BuildError, OSError) as exc:
        fail(str(exc))
    if args.build_only:
        print(f"upstream trainers built in {args.cache}")
        return
    print(f"machine: {machine()}; load average (1/5/15 min) {load()}", flush=True)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}", flush=True)
    for game in args.games:
        run_game(game, args, builds)
    print(f"\nload average (1/5/15 min) {load()} at the end")


if __name__ == "__main__":
    main()
