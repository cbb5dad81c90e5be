"""Who may write an index directory, and which generations open readers still hold.

Both are ``flock`` locks, which the kernel drops when their process dies (``kill -9``
included), so a crash never leaves a stale lock behind:

- ``write.lock``: one writer at a time holds it exclusively; the holder's pid is written inside
  so a second writer can name it.
- ``readers/<pid>-<token>.lease``: each open reader holds a shared lock on its own lease file,
  whose content is the generation it reads. A writer that can take the lease exclusively knows
  its reader is gone. Files of a generation are deleted only when no held lease names it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from simtool.errors import IndexDirError

log = logging.getLogger(__name__)

WRITE_LOCK = "write.lock"
READERS_DIR = "readers"
PENDING = -1  # a lease taken before its reader has read the manifest


class WriterLock:
    """Exclusive writer lock on ``directory/write.lock``; waits up to ``timeout`` seconds."""

    def __init__(self, directory: Path, timeout: float = 30.0) -> None:
        self.path = directory / WRITE_LOCK
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_text(fd).strip() or "unknown"
                    os.close(fd)
                    raise IndexDirError(
                        f"{self.path.parent}: another writer (pid {holder}) holds {WRITE_LOCK}; "
                        f"gave up after {self.timeout:g}s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_text(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode("ascii", "replace")
    except OSError:
        return ""


class ReaderLease:
    """A shared lock that tells writers which generation this reader holds."""

    def __init__(self, directory: Path) -> None:
        leases = directory / READERS_DIR
        leases.mkdir(exist_ok=True)
        while True:
            self.path = leases / f"{os.getpid()}-{secrets.token_hex(6)}.lease"
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.pwrite(fd, f"{PENDING:>20d}\n".encode(), 0)
            fcntl.flock(fd, fcntl.LOCK_SH)
            # A writer may have taken the fresh file for a dead reader's and unlinked it before our
            # flock: then nobody can see this lease, so start again with another name.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd: int | None = fd

    def hold(self, generation: int) -> None:
        """Record the generation this reader reads; written in place, so a writer sees old or new."""
        assert self._fd is not None
        data = f"{generation:>20d}\n".encode()  # fixed width: a concurrent reader never sees a mix
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Leases:
    """What the held leases say: the generations they read, and whether one has not said yet."""

    generations: frozenset[int]
    pending: bool


def held_generations(directory: Path) -> Leases:
    """Generations named by live readers' leases; leases of dead readers are removed on the way."""
    held: set[int] = set()
    pending = False
    leases = directory / READERS_DIR
    if not leases.is_dir():
        return Leases(frozenset(), False)
    for path in leases.glob("*.lease"):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live reader holds it
                text = _read_text(fd).strip()
                try:
                    generation = int(text)
                except ValueError:
                    generation = PENDING
                if generation == PENDING:
                    pending = True
                else:
                    held.add(generation)
                continue
            log.debug("removing the lease of a reader that is gone: %s", path)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return Leases(frozenset(held), pending)
