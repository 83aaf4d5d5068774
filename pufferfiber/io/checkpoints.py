"""Files on disk: run folders, checkpoints, trainer state, atomic writes, the upstream importer.

Our checkpoint is a plain dict saved with ``torch.save`` and loadable with
``torch.load(weights_only=True)`` (no code is unpickled)::

    {"format": "pufferfiber.checkpoint/1", "state_dict": {...}, "architecture": {...},
     "epoch": int, "global_step": int, "env": str, "config": {...}, "meta": {...}}

PufferLib 2.0 saves whole pickled modules (``torch.save(policy)``). Loading one runs arbitrary
code, so :func:`load_checkpoint` refuses unless the caller opts in (``allow_pickle=True``, the
command line's ``--allow-pickle``), says so on stderr, and converts it to our format.

PufferLib 3.0 saves plain state dicts (tensors only), read with ``weights_only=True`` like ours
and converted by :mod:`pufferfiber.io.pufferlib3`: chosen by ``checkpoint_format="pufferlib3"``
(``--checkpoint-format pufferlib3``) or, with ``"auto"`` (the default), told from the keys.

Every write goes to a temporary file beside the target and is renamed into place, so an
interrupted or failed write (Ctrl-C, full disk) never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pufferfiber.core.policy import Architecture, Policy
from pufferfiber.envs import registry
from pufferfiber.envs.registry import EnvError, check_env_name
from pufferfiber.io.atomic import (
    UMASK,
    CheckpointError,
    atomic_torch_save,
    check_writable,
    describe_os_error,
)
from pufferfiber.io.pufferlib3 import FILE_RE, looks_like_pufferlib3, policy_from_pufferlib3
from pufferfiber.io.runfiles import (
    CHECKPOINT_GLOB,
    CHECKPOINT_RE,
    LOCK,
    RUN_DIR_RE,
    STALE_TEMP_RE,
    TRAINER_STATE,
    run_dir_name,
)
from pufferfiber.io.runfiles import checkpoint_name as checkpoint_name  # re-exported
from pufferfiber.io.schemas import SchemaError, TrainerState

FORMAT = "pufferfiber.checkpoint/1"
LOCK_NAME = LOCK
# A checkpoint larger than this is refused unread (the guide's 3.9M network is 16 MB; a link
# to /dev/zero or a huge foreign file must not be read until memory runs out).
MAX_CHECKPOINT_BYTES = 4 * 1024**3
# ``checkpoint_format`` / ``--checkpoint-format``: ours (with PufferLib 2.0 pickles under
# --allow-pickle), PufferLib 3.0's plain state dicts, or either, told apart by content.
CHECKPOINT_FORMATS = ("auto", "pufferfiber", "pufferlib3")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the policy plus where it came from."""

    policy: Policy
    arch: Architecture
    epoch: int
    global_step: int
    env: str
    config: dict[str, Any]
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- atomic writes


# --------------------------------------------------------------------------- checkpoints


def _plain(value: Any) -> Any:
    """Reduce a config value to types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def save_checkpoint(
    path: Path,
    policy: Policy,
    *,
    epoch: int,
    global_step: int,
    env: str,
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save ``policy`` and its provenance to ``path`` atomically (weights-only loadable)."""
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
        "architecture": policy.arch.to_dict(),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "env": str(env),
        "config": _plain(config),
        "meta": _plain(meta or {}),
    }
    return atomic_torch_save(payload, Path(path))


def check_checkpoint_file(path: Path) -> None:
    """Refuse, unread, anything that is not a regular file of plausible size (a folder, a
    device such as ``/dev/zero`` behind a link, an empty or a huge file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket?)")
    if st.st_size == 0:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated or foreign): it is empty"
        )
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path} is {st.st_size / 1024**3:.1f} GiB, larger than any plausible checkpoint "
            f"({MAX_CHECKPOINT_BYTES // 1024**3} GiB); not reading it"
        )


def _why_unreadable(path: Path, exc: Exception) -> str:
    """A reason a person can act on, from the file's first bytes rather than torch's message."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = b""
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile):
            return "the file is truncated or damaged (an interrupted copy or download?)"
    elif head[:1] != b"\x80":  # neither a zip archive nor torch's legacy pickle format
        try:
            head.decode("utf-8")
            return "it is a text file, not a PyTorch checkpoint"
        except UnicodeDecodeError:
            return "it is not a PyTorch file (unrecognised binary data)"
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    if "Weights only load failed" in reason:
        return "it holds pickled objects, not only tensors"
    return reason.split(". ")[0][:120]


def _torch_load_safe(path: Path, map_location: str | torch.device) -> Any:
    check_checkpoint_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    except Exception as exc:  # corrupt, truncated or foreign files fail in many ways
        # A zip archive whose pickle names PufferLib classes is a whole-module checkpoint.
        if _pickled_module(path):
            raise CheckpointError(
                f"{path} is a pickled PufferLib module, not a pufferfiber checkpoint; loading it "
                "runs code from the file: pass --allow-pickle (allow_pickle=True) if you trust it"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated or foreign): "
            f"{_why_unreadable(path, exc)}"
        ) from None


def _pickled_module(path: Path) -> bool:
    try:
        check_checkpoint_file(path)
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return pkl is not None and b"RecurrentPolicy" in z.read(pkl)
    except (OSError, zipfile.BadZipFile, CheckpointError, EOFError):
        return False


def _policy_from_state(
    arch: Architecture, state_dict: dict[str, torch.Tensor], path: Path
) -> Policy:
    policy = Policy(arch)
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch in {wrong[:3]}"
        raise CheckpointError(f"{path}: weights do not match the recorded architecture ({detail})")
    policy.load_state_dict(state_dict)
    return policy


def load_checkpoint(
    path: Path,
    *,
    allow_pickle: bool = False,
    expect_env: str | None = None,
    map_location: str | torch.device = "cpu",
    checkpoint_format: str = "auto",
) -> Checkpoint:
    """Load one of our checkpoints, or (with ``allow_pickle``) import a PufferLib 2.0 one, or
    import a PufferLib 3.0 state dict (``checkpoint_format`` ``"pufferlib3"``, or ``"auto"``
    and its keys; see :mod:`pufferfiber.io.pufferlib3`).

    Raises :class:`CheckpointError` with a one-line reason for a missing, corrupt or foreign
    file, an architecture that does not match its weights, or a run of another env.
    """

    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise CheckpointError(
            f"checkpoint format must be one of {', '.join(CHECKPOINT_FORMATS)}, "
            f"not {checkpoint_format!r}"
        )
    path = Path(path)
    check_checkpoint_file(path)
    if checkpoint_format == "pufferlib3" and _pickled_module(path):
        # 3.0 writes state dicts; a whole pickled module is 2.0's, and is never unpickled here
        raise CheckpointError(
            f"{path} is a pickled PufferLib 2.0 module, not a PufferLib 3.0 state dict; "
            "read it with --checkpoint-format auto and --allow-pickle if you trust it"
        )
    if allow_pickle and checkpoint_format != "pufferlib3" and _pickled_module(path):
        ckpt = import_pufferlib(path, env=expect_env, map_location=map_location)
    else:
        data = _torch_load_safe(path, map_location)
        ours = isinstance(data, dict) and data.get("format") == FORMAT
        if checkpoint_format == "pufferlib3" or (
            checkpoint_format == "auto" and not ours and looks_like_pufferlib3(data)
        ):
            ckpt = import_pufferlib3(data, path, expect_env)
            if expect_env is not None and ckpt.env != expect_env:
                raise CheckpointError(
                    f"{path} is a checkpoint of env {ckpt.env!r}, not {expect_env!r}"
                )
            check_finite(ckpt.policy, path)
            return ckpt
        if not ours:
            also = "" if checkpoint_format == "pufferfiber" else " nor a PufferLib 3.0 state dict"
            raise CheckpointError(f"{path} is not a pufferfiber checkpoint{also} (unknown format)")
        record = _checked_record(data, path)
        try:
            arch = Architecture.from_dict(data["architecture"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid architecture record ({exc})") from None
        ckpt = Checkpoint(
            policy=_policy_from_state(arch, data["state_dict"], path),
            arch=arch,
            path=path,
            **record,
        )
    if expect_env is not None and ckpt.env != expect_env:
        raise CheckpointError(f"{path} is a checkpoint of env {ckpt.env!r}, not {expect_env!r}")
    check_finite(ckpt.policy, path)
    return ckpt


def _checked_record(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``epoch``, ``global_step``, ``env``, ``config`` and ``meta`` of a checkpoint dict, each
    checked for type and range (a file that loads is not necessarily one we wrote)."""

    def count(key: str) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            shown = "missing" if key not in data else repr(value)[:40]
            raise CheckpointError(
                f"{path}: invalid checkpoint record: {key} must be an integer >= 0, got {shown}"
            )
        return value

    env = data.get("env")
    try:
        if not isinstance(env, str):
            raise EnvError("not a string")
        check_env_name(env)
    except EnvError:
        raise CheckpointError(
            f"{path}: invalid checkpoint record: env {env!r} is not a known env"[:200]
        ) from None
    for key in ("config", "meta"):
        if not isinstance(data.get(key, {}), dict):
            raise CheckpointError(f"{path}: invalid checkpoint record: {key} is not a dict")
    if not isinstance(data.get("state_dict"), dict) or not all(
        isinstance(v, torch.Tensor) for v in data["state_dict"].values()
    ):
        raise CheckpointError(f"{path}: invalid checkpoint record: state_dict is not tensors")
    return {
        "epoch": count("epoch"),
        "global_step": count("global_step"),
        "env": env,
        "config": dict(data.get("config", {})),
        "meta": dict(data.get("meta", {})),
    }


def check_finite(policy: Policy, path: Path) -> None:
    """Refuse weights with NaN or inf (a diverged run), naming the first such tensor."""
    for name, tensor in policy.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weights are not finite ({bad} NaN/inf values in {name}, the first "
                "such tensor): the run diverged before this checkpoint"
            )


def check_fits_env(ckpt: Checkpoint, env_arch: Architecture, env_name: str) -> None:
    """Refuse a policy whose action count or observation size differ from ``env_name``'s."""
    have, want = ckpt.arch, env_arch
    if have.n_actions != want.n_actions:
        raise CheckpointError(
            f"{ckpt.path} is a checkpoint of env {ckpt.env!r} with {have.n_actions} actions; "
            f"env {env_name!r} has {want.n_actions}"
        )
    if have.kind != want.kind or have.obs_shape != want.obs_shape:
        raise CheckpointError(
            f"{ckpt.path} is a checkpoint of env {ckpt.env!r} with observations "
            f"{tuple(have.obs_shape)}; env {env_name!r} has {tuple(want.obs_shape)}"
        )


def _architecture_of_upstream(sd: dict[str, torch.Tensor], path: Path) -> Architecture:
    """Read the sizes of a PufferLib 2.0 recurrent policy from its state dict."""
    net = sorted(
        (int(m.group(1)), k)
        for k in sd
        if (m := re.match(r"policy\.policy\.network\.(\d+)\.weight$", k))
    )
    if not net or "policy.recurrent.weight_ih_l0" not in sd:
        raise CheckpointError(f"{path}: not a PufferLib recurrent policy (no network/LSTM)")
    convs = [sd[k] for _, k in net if sd[k].dim() == 4]
    linears = [sd[k] for _, k in net if sd[k].dim() == 2]
    n_actions = int(sd["policy.policy.actor.weight"].shape[0])
    lstm = int(sd["policy.recurrent.weight_hh_l0"].shape[1])
    hidden = tuple(int(w.shape[0]) for w in linears)
    if convs:
        # PufferLib's Atari policy: 1×105×80 frames through its fixed kernels.
        c_in = int(convs[0].shape[1])
        arch = Architecture.atari(
            n_actions, (c_in, 105, 80), tuple(int(w.shape[0]) for w in convs), hidden[0], lstm
        )
        return arch.replace(hidden=hidden)
    return Architecture.mlp(int(linears[0].shape[1]), n_actions, hidden, lstm)


def import_pufferlib(
    path: Path, env: str | None = None, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Convert a PufferLib 2.0 whole-module checkpoint (trusted by the caller) to ours."""
    print(
        f"warning: unpickling {path} (a whole pickled module runs code from the file; "
        "allowed by --allow-pickle)",
        file=sys.stderr,
    )
    try:
        import pufferlib.cleanrl  # noqa: F401  (the pickle references its classes)

        module = torch.load(path, map_location=map_location, weights_only=False)
        sd = module.state_dict()
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot import PufferLib checkpoint ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    arch = _architecture_of_upstream(sd, path)
    match = CHECKPOINT_RE.match(path.name)
    run = RUN_DIR_RE.match(path.parent.name)
    # The run folder's name records the env the file was trained on; it wins over the caller's
    # env so that a checkpoint of another game is named as such instead of failing later.
    env_name = _known_env(run.group("env")) if run else ""
    env_name = env_name or env or ""
    if not env_name:
        raise CheckpointError(f"{path}: cannot tell the env from the folder name; pass --env")
    return Checkpoint(
        policy=_policy_from_state(arch, sd, path),
        arch=arch,
        epoch=int(match["epoch"]) if match else 0,
        global_step=0,
        env=env_name,
        config={},
        path=path,
        meta={"imported_from": "pufferlib-2.0", "source": str(path)},
    )


def import_pufferlib3(data: Any, path: Path, env: str | None = None) -> Checkpoint:
    """A PufferLib 3.0 state dict (already read, weights only) as our checkpoint.

    The env comes from the file name (``model_<env>_<epoch:06d>.pt``) when it names a known
    env, else from ``env`` (``--env``); a ``Convolutional`` policy takes its frame shape from it.
    """

    match = FILE_RE.match(path.name)
    # as for 2.0 runs, the name the file records wins over the caller's env
    env_name = (_known_env(match["env"]) if match else "") or env or ""
    sd = data if isinstance(data, dict) else {}
    frames = None
    if env_name and any(str(k).endswith("network.0.weight") for k in sd):
        frames = registry.architecture_for(env_name).obs_shape  # not recorded in a state dict
    policy = policy_from_pufferlib3(data, frames, str(path))
    if not env_name:
        raise CheckpointError(
            f"{path}: a PufferLib 3.0 state dict does not name its env; pass --env"
        )
    return Checkpoint(
        policy=policy,
        arch=policy.arch,
        epoch=int(match["epoch"]) if match else 0,
        global_step=0,
        env=env_name,
        config={},
        path=path,
        meta={"imported_from": "pufferlib-3.0", "source": str(path)},
    )


def _known_env(name: str) -> str:

    try:
        check_env_name(name)
    except EnvError:
        return ""
    return name


def save_trainer_state(run_dir: Path, state: TrainerState | dict[str, Any]) -> Path:
    """Optimizer moments and counters beside the checkpoints, for ``--resume`` (written
    through :class:`~pufferfiber.io.schemas.TrainerState`, so it carries its format key)."""
    path = Path(run_dir) / TRAINER_STATE
    if not isinstance(state, TrainerState):
        state = _trainer_state(state, path)
    return atomic_torch_save(state.to_dict(), path)


def read_trainer_state(
    run_dir: Path, map_location: str | torch.device = "cpu"
) -> TrainerState | None:
    """The run's ``trainer_state.pt`` as a record (``None`` if there is none); a file that is
    not ours (e.g. PufferLib's, which has the same name) is a one-line :class:`CheckpointError`."""
    path = Path(run_dir) / TRAINER_STATE
    if not path.exists():
        return None
    return _trainer_state(_torch_load_safe(path, map_location), path)


def load_trainer_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict | None:
    """:func:`read_trainer_state` as a plain dict (hook states keyed by hook name)."""
    state = read_trainer_state(run_dir, map_location)
    return None if state is None else state.to_dict()


def _trainer_state(data: Any, path: Path) -> TrainerState:
    try:
        return TrainerState.from_dict(data, path)
    except SchemaError as exc:
        raise CheckpointError(str(exc)) from None


# --------------------------------------------------------------------------- run folders


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``model_%06d.pt`` directly in ``run_dir``, by epoch."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def closest_checkpoint(run_dir: Path, epoch: int) -> tuple[int, Path]:
    """The checkpoint whose epoch is nearest ``epoch`` (on a tie, the later one)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints ({CHECKPOINT_GLOB}) in {run_dir}")
    return min(found, key=lambda item: (abs(item[0] - epoch), -item[0]))


def new_run_dir(parent: Path, env: str) -> Path:
    """Create ``parent/<env>-<id8>`` (a fresh random id) and return it."""
    parent = Path(parent)
    check_writable(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run = parent / run_dir_name(env, secrets.token_hex(4))
            try:
                run.mkdir()
            except FileExistsError:
                continue
            probe = run / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
            return run
    except OSError as exc:
        raise CheckpointError(describe_os_error(parent, exc)) from None
    raise CheckpointError(f"could not create a new run folder in {parent}")


def _run_time(run: Path) -> float:
    ckpts = list_checkpoints(run)
    stamp = ckpts[-1][1] if ckpts else run
    return stamp.stat().st_mtime


def find_run(data_dir: Path, env: str, exp_id: str | None = None) -> Path:
    """The run folder of ``env`` to use: the one named by ``exp_id``, else the newest.

    ``exp_id`` may be the full folder name (``beam_rider-5eed0001``) or its 8-hex id. Runs of
    other envs are never chosen; a folder ``exp_id`` naming another env is an error.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CheckpointError(f"data dir {data_dir} does not exist")
    runs = [p for p in data_dir.iterdir() if p.is_dir() and (m := RUN_DIR_RE.match(p.name))]
    if exp_id is not None:
        for run in runs:
            m = RUN_DIR_RE.match(run.name)
            assert m is not None
            if exp_id in (run.name, m.group("id")):
                if m.group("env") != env:
                    raise CheckpointError(
                        f"experiment {run.name} is a run of {m.group('env')!r}, not {env!r}"
                    )
                return run
        raise CheckpointError(f"no experiment {exp_id!r} in {data_dir}")
    mine = [r for r in runs if r.name.rsplit("-", 1)[0] == env and list_checkpoints(r)]
    if not mine:
        raise CheckpointError(
            f"no {env} run with checkpoints in {data_dir}; train one first "
            f"(demo.py --mode train --env {env})"
        )
    return max(mine, key=_run_time)


# --------------------------------------------------------------------------- run locks


@contextlib.contextmanager
def locked_run(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock (``fcntl.flock`` on ``.pufferfiber.lock``) while training in it.

    A second process that wants the same run gets a :class:`CheckpointError` at once instead of
    both writing the same checkpoints. The kernel drops the lock when the process ends, even by
    SIGKILL, so a lock never goes stale. Leftover temporary files of writes killed before their
    rename are removed once the lock is held (no writer can own them then).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    check_writable(run_dir)  # a read-only run (e.g. shared data) gets no lock file, even by root
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    except OSError as exc:
        raise CheckpointError(describe_os_error(path, exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise CheckpointError(
                f"run {run_dir} is in use by another process{who}; wait for it to finish"
            ) from None
        with contextlib.suppress(OSError):  # the pid is only a hint for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(run_dir)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a training write leaves when killed (SIGKILL, power loss)
    before its rename; returns what was removed. Call it only while holding the run's lock."""
    removed = []
    for p in Path(folder).iterdir():
        if STALE_TEMP_RE.match(p.name) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
