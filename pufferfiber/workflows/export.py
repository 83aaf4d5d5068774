"""Export a checkpoint for deployment and prove the copy computes what the checkpoint does.

:func:`export_checkpoint` loads one of our checkpoints (collapsed or not), writes an export
folder in one of :data:`FORMATS`, then replays held-out observation sequences (real ones
played by the policy in its Ocean game, random ones for other envs; the recurrent state
carried from zero) through the exported copy and through the PyTorch policy. The folder is
put in place only when every logit and value agree to ``tolerance`` (1e-4) and the greedy
actions are equal (a step whose two best logits are closer than ``tolerance`` in the
reference may differ: a tie, counted and reported, not an error).

* ``puffernet``: ``weights.bin``, ``policy.c`` (see :mod:`pufferfiber.io.puffernet`) and
  ``README.txt`` with the one-line build command. The C parity check compiles ``policy.c``
  with the system C compiler (``$CC``, else ``cc``) against the installed wheel's
  ``puffernet.h``.
  For Ocean pong and breakout also ``game.c`` and ``raylib.h``, which play the policy in the
  game's own C code (:func:`play_in_c`).
* ``torchscript``: ``policy.pt`` (``torch.jit.load`` it; :mod:`pufferfiber.io.torchscript`)
  and ``README.txt``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pufferfiber.config.sections import load_config
from pufferfiber.core.policy import Policy, observation_batch
from pufferfiber.envs.registry import is_ocean
from pufferfiber.io import puffernet, torchscript
from pufferfiber.io.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, check_writable
from pufferfiber.io.checkpoints import Checkpoint, load_checkpoint
from pufferfiber.rl.evaluate import collect_observations

FORMATS = ("puffernet", "torchscript")
TOLERANCE = 1e-4
README = "README.txt"
MARKER = "Exported by pufferfiber"  # first words of README.txt: an export folder we may replace


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that failed its check (one line)."""


def puffernet_include() -> Path:
    """The folder holding ``puffernet.h``: the installed pufferlib package, found without
    importing it (importing pufferlib pulls in its whole training stack)."""
    spec = importlib.util.find_spec("pufferlib")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = next((Path(f) for f in folders if (Path(f) / "puffernet.h").is_file()), None)
    if found is None:
        raise ExportError("pufferlib's puffernet.h was not found (install pufferlib 2.0.2)")
    return found


def find_compiler() -> str | None:
    """The C compiler: ``$CC`` if set, else the first of ``cc``, ``gcc``, ``clang`` found."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def compile_c(source: Path, binary: Path, includes: list[Path], cc: str | None = None) -> None:
    """``cc -O2 -I ... source -lm -o binary``; :class:`ExportError` with the first error line."""
    cc = cc or find_compiler()
    if cc is None:
        raise ExportError("no C compiler found (set CC or install cc) to build the export")
    cmd = [cc, "-O2", *(f"-I{p}" for p in includes), str(source), "-lm", "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip())
        raise ExportError(f"compiling {source.name} failed: {first[:300]}")


@dataclass
class Parity:
    """How the exported copy compares with the PyTorch policy on held-out sequences.

    ``action_mismatches`` counts steps whose greedy actions differ although the reference's
    two best logits are at least ``tolerance`` apart (an error); ``tie_mismatches`` those
    where they are closer (a tie that rounding may break either way: reported, allowed)."""

    sequences: int
    steps: int
    max_abs_diff: float
    action_mismatches: int
    tie_mismatches: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE and self.action_mismatches == 0

    def line(self) -> str:
        tie = f" (and at {self.tie_mismatches} near-tie steps)" if self.tie_mismatches else ""
        return (
            f"{self.sequences} held-out sequences x {self.steps} steps: max |diff| "
            f"{self.max_abs_diff:.2e} (tolerance {TOLERANCE:g}), greedy actions differ at "
            f"{self.action_mismatches} steps{tie}"
        )


@dataclass
class ExportResult:
    out: Path
    format: str
    parameters: int
    parity: Parity
    files: list[str]
    build_command: str | None = None
    game_command: str | None = None


def held_out_sequences(ckpt: Checkpoint, sequences: int, steps: int, seed: int) -> torch.Tensor:
    """``[sequences, steps, *obs_shape]``: observations the policy sees playing its Ocean game
    (a seed the training never used), or random ones of the right range for other envs."""
    if is_ocean(ckpt.env):
        return collect_observations(ckpt.policy, ckpt.env, sequences, steps, seed=seed).float()
    obs = observation_batch(ckpt.arch, sequences * steps, seed=seed).float()
    return obs.reshape(sequences, steps, *ckpt.arch.obs_shape)


@torch.inference_mode()
def reference_outputs(policy: Policy, obs: torch.Tensor) -> np.ndarray:
    """``[S, T, n_actions + 1]``: logits then value of the PyTorch policy, state from zero."""
    policy = policy.cpu().eval()
    logits, value, _ = policy(obs)
    return torch.cat([logits, value[..., None]], -1).numpy()


def compare(reference: np.ndarray, exported: np.ndarray, n_actions: int) -> Parity:
    """:class:`Parity` of outputs ``[S, T, n_actions + 1]``."""
    if exported.shape != reference.shape:
        raise ExportError(f"exported outputs have shape {exported.shape}, not {reference.shape}")
    diff = float(np.abs(exported - reference).max())
    ref_logits, exp_logits = reference[..., :n_actions], exported[..., :n_actions]
    differ = ref_logits.argmax(-1) != exp_logits.argmax(-1)
    top2 = np.sort(ref_logits, -1)[..., -2:] if n_actions > 1 else np.zeros((*differ.shape, 2))
    tie = (top2[..., 1] - top2[..., 0]) < TOLERANCE
    s, t = reference.shape[:2]
    return Parity(s, t, diff, int((differ & ~tie).sum()), int((differ & tie).sum()))


def run_c_policy(binary: Path, weights: Path, obs: torch.Tensor, n_out: int) -> np.ndarray:
    """``[T, n_out]`` outputs of the compiled ``policy`` filter on one sequence ``[T, *obs]``."""
    data = obs.reshape(obs.shape[0], -1).numpy().astype("<f4").tobytes()
    done = subprocess.run([str(binary), str(weights)], input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise ExportError(f"./policy failed: {done.stderr.decode(errors='replace').strip()[:300]}")
    return np.frombuffer(done.stdout, dtype="<f4").reshape(-1, n_out).astype(np.float32)


@torch.inference_mode()
def run_torchscript(data: bytes, obs: torch.Tensor) -> np.ndarray:
    """``[S, T, n_out]`` outputs of a saved TorchScript policy stepped through ``obs``."""
    module = torch.jit.load(io.BytesIO(data))
    state: list[torch.Tensor] = []
    rows = []
    for t in range(obs.shape[1]):
        logits, value, state = module(obs[:, t], state)
        rows.append(torch.cat([logits, value[:, None]], -1))
    return torch.stack(rows, 1).numpy()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / README
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)):
            raise ExportError(f"--out {out} exists and is not an export folder; choose a new one")
    check_writable(out.parent if not out.exists() else out)


def _game(ckpt: Checkpoint) -> tuple[str, dict[str, float | int], int] | None:
    """``(folder, constructor settings, step cap)`` of the checkpoint's Ocean game with a C
    game loop, as Python evaluation plays it (the packaged ini's ``[env]``), else None."""
    if not is_ocean(ckpt.env):
        return None
    from pufferfiber.envs.ocean import OCEAN_GAMES, game_settings

    game = OCEAN_GAMES[ckpt.env]
    if game.folder not in puffernet.GAME_STRUCTS:
        return None
    settings = game_settings(ckpt.env, dict(load_config(ckpt.env).env))
    return game.folder, settings, game.eval_max_steps


def game_build_command(out: Path, folder: str) -> str:
    inc = puffernet_include()
    return f"cc -O2 -I {inc} -I {inc / 'ocean' / folder} -I {out} {out / 'game.c'} -lm -o game"


def export_checkpoint(
    checkpoint: Path,
    fmt: str,
    out: Path,
    *,
    sequences: int = 4,
    steps: int = 256,
    seed: int = 777,
    allow_pickle: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` as ``fmt`` into folder ``out`` after the parity check (module
    docstring). Raises :class:`ExportError` (or ``CheckpointError``) with a one-line reason."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    if sequences < 1 or steps < 1:
        raise ExportError("--sequences and --steps must be at least 1")
    out = Path(out).absolute()
    _check_out(out)
    ckpt = load_checkpoint(Path(checkpoint), allow_pickle=allow_pickle)
    policy = ckpt.policy.cpu().eval()
    arch = ckpt.arch
    if fmt == "puffernet":
        try:
            puffernet.check_exportable(arch)
        except puffernet.ExportUnsupported as exc:
            raise ExportError(str(exc)) from None
        cc = find_compiler()
        if cc is None:
            raise ExportError("no C compiler found (set CC or install cc): cannot check the export")
    obs = held_out_sequences(ckpt, sequences, steps, seed)
    reference = reference_outputs(policy, obs)
    n_out = arch.n_actions + 1
    header = (
        f"{MARKER} from {ckpt.path} (env {ckpt.env}, epoch {ckpt.epoch}, "
        f"{policy.parameter_count()} parameters; {arch.kind}, hidden {list(arch.hidden)}, "
        f"{arch.rnn} {arch.lstm}, {arch.n_actions} actions).\n"
    )
    result = ExportResult(out, fmt, policy.parameter_count(), Parity(0, 0, 0.0, 0, 0), [])
    with atomic_dir(out) as tmp:
        if fmt == "torchscript":
            data = torchscript.scripted_bytes(policy)
            atomic_write_bytes(tmp / "policy.pt", data)
            result.parity = compare(reference, run_torchscript(data, obs), arch.n_actions)
            atomic_write_text(tmp / README, header + _torchscript_readme(out, arch.obs_shape))
        else:
            _write_puffernet(tmp, out, ckpt, result, header)
            with tempfile.TemporaryDirectory(prefix="pufferfiber-export-") as build:
                binary = Path(build) / "policy"
                compile_c(tmp / "policy.c", binary, [puffernet_include()], cc)
                outputs = [run_c_policy(binary, tmp / "weights.bin", seq, n_out) for seq in obs]
            result.parity = compare(reference, np.stack(outputs), arch.n_actions)
        if not result.parity.ok:
            raise ExportError(f"the exported {fmt} policy does not match: {result.parity.line()}")
        result.files = sorted(p.name for p in tmp.iterdir())
    return result


def _write_puffernet(
    tmp: Path, out: Path, ckpt: Checkpoint, result: ExportResult, header: str
) -> None:
    arch = ckpt.arch
    atomic_write_bytes(tmp / "weights.bin", puffernet.weights_bytes(ckpt.policy))
    atomic_write_text(tmp / "policy.c", puffernet.policy_source(arch))
    result.build_command = f"cc -O2 -I {puffernet_include()} {out / 'policy.c'} -lm -o policy"
    obs_size = int(np.prod(arch.obs_shape))
    scale = (
        " (raw pixel values 0-255; the program scales them by 1/255)" if arch.kind == "cnn" else ""
    )
    lines = [
        header,
        "Build (one line):",
        f"  {result.build_command}",
        "Run:",
        f"  ./policy {out / 'weights.bin'} < obs.f32 > out.f32",
        f"obs.f32: rows of {obs_size} float32 (one agent's observations in order){scale};",
        f"out.f32: one row per observation of {arch.n_actions} logits then the value (float32);",
        "the recurrent state starts at zero and is carried from row to row.",
        f"Timing: ./policy {out / 'weights.bin'} --bench BATCH STEPS",
        f"weights.bin: {puffernet.weight_count(ckpt.policy)} float32 in the order policy.c reads "
        "them: " + ", ".join(n for n, _ in puffernet.weight_tensors(ckpt.policy)) + ".",
    ]
    game = _game(ckpt)
    if game is not None:
        folder, settings, max_steps = game
        source = puffernet.game_source(arch, folder, settings, max_steps)
        atomic_write_text(tmp / "game.c", source)
        atomic_write_text(tmp / "raylib.h", puffernet.raylib_stub())
        result.game_command = game_build_command(out, folder)
        lines += [
            f"Play it in PufferLib's own {folder} C code (game.c; raylib.h stands in for the "
            "render library the header includes):",
            f"  {result.game_command}",
            f"  ./game {out / 'weights.bin'} EPISODES SEED greedy|sample [NUM_ENVS]",
        ]
    atomic_write_text(tmp / README, "\n".join(lines) + "\n")


def _torchscript_readme(out: Path, obs_shape: tuple[int, ...]) -> str:
    return (
        "Load with plain torch (pufferfiber not needed):\n"
        "  import torch\n"
        f"  m = torch.jit.load('{out / 'policy.pt'}')\n"
        "  state = m.initial_state(B)  # or [] for zeros\n"
        f"  logits, value, state = m(obs, state)  # obs [B, {', '.join(map(str, obs_shape))}]\n"
        "state: list of [1, B, hidden] tensors (LSTM [h, c], GRU [h]).\n"
    )


def play_in_c(
    out: Path,
    episodes: int,
    seed: int = 0,
    *,
    greedy: bool = False,
    num_envs: int = 8,
    cc: str | None = None,
) -> list[float]:
    """Returns of ``episodes`` games played by the exported policy in the game's own C code
    (``out/game.c`` built in a temporary folder)."""
    out = Path(out)
    if not (out / "game.c").is_file():
        raise ExportError(f"{out} has no game.c (only Ocean pong and breakout exports do)")
    text = (out / "game.c").read_text()
    folder = next(f for f in puffernet.GAME_STRUCTS if f'#include "{f}.h"' in text)
    inc = puffernet_include()
    with tempfile.TemporaryDirectory(prefix="pufferfiber-game-") as build:
        binary = Path(build) / "game"
        compile_c(out / "game.c", binary, [inc, inc / "ocean" / folder, out], cc)
        mode = "greedy" if greedy else "sample"
        args = [str(binary), str(out / "weights.bin"), str(episodes), str(seed), mode]
        done = subprocess.run([*args, str(num_envs)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ExportError(f"./game failed: {done.stderr.strip()[:300]}")
    return [float(x) for x in done.stdout.split("\n")[1:] if x.strip()]
