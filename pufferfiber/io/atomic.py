"""Atomic writes: every file goes to a temporary file beside its target and is renamed into
place, so an interrupted or failed write (Ctrl-C, full disk) never leaves a half-written file.

A leaf of the package (imports nothing of pufferfiber): every module that writes a file uses
these, and their failures are one-line :class:`CheckpointError` messages.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class CheckpointError(Exception):
    """A user-facing problem with a checkpoint or run folder (one-line message)."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()


def describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {path}; earlier files are intact"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (read-only folder?)"
    return f"cannot write {path}: {exc.strerror or exc}"


def folder_writable(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing ancestor) may be written into.

    A folder without any write permission bit counts as read-only even for root, who would
    otherwise write anywhere (shared data folders are marked read-only this way).
    """
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    mode = existing.stat().st_mode
    return bool(mode & 0o222) and os.access(existing, os.W_OK | os.X_OK)


def check_writable(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless files can be created in ``folder``."""
    if not folder_writable(folder):
        raise CheckpointError(f"cannot write {folder}: permission denied (read-only folder?)")


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    tmp: str | None = None
    check_writable(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
        tmp = None
        return path
    except OSError as exc:
        raise CheckpointError(describe_os_error(path, exc)) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    return _atomic_write(path, lambda f: f.write(data))  # type: ignore[arg-type]


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` atomically.

    The object is serialised in memory first: torch's own file writer reports a full disk as
    a ``RuntimeError`` ("unexpected pos"), a plain write reports ``ENOSPC`` ("disk full").
    """
    import torch  # only here: the rest of this leaf module needs no torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer())


@contextlib.contextmanager
def atomic_dir(final_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_dir``; rename it into place on success.

    On any error (or Ctrl-C) the temporary folder is removed and ``final_dir`` is untouched.
    An existing ``final_dir`` is replaced only after the new one is complete.
    """
    final_dir = Path(final_dir)
    check_writable(final_dir.parent)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
        tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; give the usual folder mode
    except OSError as exc:
        raise CheckpointError(describe_os_error(final_dir, exc)) from exc
    try:
        yield tmp
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{secrets.token_hex(4)}")
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(describe_os_error(final_dir, exc)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
