"""Crash-safe writes: temp file or directory, fsync, rename.

A reader never sees a half-written file or index directory: new content is
written beside the target, flushed to disk, and renamed over it in one step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (inclusive)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _libc_renameat2() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(staging: Path, target: Path) -> None:
    """Move a complete ``staging`` directory to ``target``, replacing any previous one.

    With an existing target the two are exchanged in one atomic step where the OS
    allows it, so ``target`` always names a complete index; elsewhere the old one is
    first moved aside, leaving a window of one rename in which ``target`` is absent.
    """
    fsync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
    elif exchange_dirs(staging, target):
        shutil.rmtree(staging)  # now holds the previous version
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


def publish_new_dir(staging: Path, target: Path) -> None:
    """Move a complete ``staging`` directory to ``target`` by one plain rename: fails (``OSError``) where
    ``target`` exists and is not empty, so it never replaces what another process published meanwhile."""
    fsync_tree(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str], *, publish: Callable[[Path, Path], None] = replace_dir
) -> Iterator[Path]:
    """The directory twin of :func:`atomic_path`: a fresh staging directory beside ``target`` to write into.

    On success ``publish(staging, target)`` puts it in place: by default :func:`replace_dir` (fsynced, then
    swapped in for any previous ``target``); :func:`publish_new_dir` where ``target`` must not exist yet.
    The staging directory (made by :func:`staging_dir_for`, which also removes stale ones) is gone afterwards
    in every case; an exception in the block leaves ``target`` as it was.
    """
    target = Path(target)
    staging = staging_dir_for(target)
    try:
        yield staging
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a publish that moved it, nothing is left to remove


def staging_dir_for(target: Path) -> Path:
    """A fresh sibling of ``target`` on the same filesystem, named after this process."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))


def remove_stale_staging(target: Path) -> None:
    """Delete staging directories left by killed builds (their process is gone)."""
    for p in target.parent.glob(f".{target.name}.staging-*"):
        try:
            pid = int(p.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
