"""Advisory file locks (``flock``) beside a SQLite store: one run per job, or per shard.

The kernel releases a lock when its holder dies, even after ``kill -9``, so a crash never
leaves a stale lock behind. An exclusive holder writes who it is into the lock file, so that
the run it refuses can say whom it waits for.

A lock is only as good as its path: a lock file removed (or replaced) while its holder runs
leaves the holder locking a file nobody else can open, and the next run takes a new one beside
it; a store file removed leaves the run writing to a file no later run will read. ``Opened``
remembers which file (device and inode) a run opened at a path, and says what became of it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from bulk_update.exceptions import RunHeld

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, documented
    fcntl = None  # type: ignore[assignment]

__all__ = ["Opened", "release_locks", "take_lock"]


def take_lock(lock_path: Path, *, shared: bool = False, what: str = "") -> IO[str] | None:
    """Take the lock at once or raise JournalError ("already running ... held by ...")."""
    if fcntl is None:  # pragma: no cover
        return None
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 (held for the run, closed by release_locks)
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunHeld(
            f"already running{what}: {lock_path} is held by {holder}; wait for it to finish"
        ) from None
    # Shared holders (shards) overwrite each other's line: any of them names the run.
    handle.seek(0)
    handle.truncate()
    handle.write(
        ("a sharded run, " if shared else "")
        + f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%FT%T%z')}"
    )
    handle.flush()
    return handle


def release_locks(locks: list[IO[str] | None]) -> None:
    """Release ``locks``, the last taken first."""
    for lock in reversed(locks):
        if lock is not None and fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


@dataclass(frozen=True, slots=True)
class Opened:
    """The file a run opened at ``path``, as the kernel knows it (its device and inode)."""

    path: Path
    device: int
    inode: int

    @classmethod
    def at(cls, path: Path, handle: IO[str] | None = None) -> Opened:
        """The file at ``path`` now; or, given its open ``handle``, the file the handle holds."""
        found = os.stat(path) if handle is None else os.fstat(handle.fileno())
        return cls(path, found.st_dev, found.st_ino)

    def became(self) -> Literal["removed", "replaced"] | None:
        """What became of the file at ``path`` since it was opened: None while it is still the
        same file (or the path cannot be looked at now: nothing is known)."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return "removed"
        except OSError:
            return None
        return None if (found.st_dev, found.st_ino) == (self.device, self.inode) else "replaced"
