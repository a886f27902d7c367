"""One writer for real, across machines: a lease on the run, beside the database lock.

A run's lock in PostgreSQL is an advisory lock of one database session. It is lost with the
session (a failover, a network blip, ``pg_terminate_backend``), and the process that held it
learns so only when it next uses the session. Meanwhile another process may take the lock and
resume the run: two writers. A lock alone cannot prevent that; a lease can:

- the holder records a lease in the database, ``LEASE_S`` long on the database's clock, and
  renews it every ``RENEW_EVERY_S`` through the session that holds the lock (a session that was
  lost must take the lock again first; if another process holds it, the run is lost);
- the holder sends a request only while its lease, counted on its own clock from the moment it
  *asked* for the renewal, has more than ``SEND_MARGIN_S`` left (the database's count started
  later, so it ends later);
- a process that takes the lock waits until every lease it conflicts with has ended on the
  database's clock, then removes them and records its own. Outcomes, forgets and heartbeats
  are committed only while the holder's lease is still recorded (``FOR SHARE`` on its row), so
  a holder that was replaced can no longer write.

So no request of the old holder leaves after the new holder's first one: the two never send at
once. Rows that were in flight when the old holder stopped (at most ``--concurrency``) have no
committed outcome and are sent again by the new one, as after a kill -9.

A holder that ended cleanly removes its lease: the next run starts at once. After a crash the
next run waits for the lease to end (at most ``LEASE_S``), unless the holder is known to be
gone: same kernel boot, same PID namespace, and its process no longer there (``is_gone``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "LEASE_S",
    "POLL_S",
    "RENEW_EVERY_S",
    "SEND_MARGIN_S",
    "Holder",
    "LocalLease",
    "is_gone",
    "is_here",
    "this_process",
]

# How long a lease lasts without renewal (the database's clock).
LEASE_S = 10.0
# How often the holder renews it.
RENEW_EVERY_S = 2.0
# The holder stops sending this long before its lease ends (its own clock): covers a request
# handed to the network just before, and the clocks' drift over a lease.
SEND_MARGIN_S = 2.0
# How often a paused sender looks whether its lease was renewed.
POLL_S = 0.05


class LocalLease:
    """The holder's own view of its lease: valid until ``asked + LEASE_S - SEND_MARGIN_S`` on
    its monotonic clock, ``asked`` being when it asked for the last renewal that succeeded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = float("-inf")

    def renewed(self, asked: float) -> None:
        self._until = max(self._until, asked + LEASE_S - SEND_MARGIN_S)

    def ended(self) -> None:
        self._until = float("-inf")

    def may_send(self) -> bool:
        return self._clock() < self._until


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease, told well enough that another process can say it is gone: the host,
    the kernel's boot, the PID namespace, the pid and the process's start (so that a pid used
    again by another process is not taken for the holder)."""

    host: str
    boot: str
    pid_namespace: str
    pid: int
    started: str

    def text(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path) as handle:
        return handle.read().strip()
    return ""


def _namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


def _process(pid: int) -> tuple[str, str]:
    """The process's state and start, in clock ticks since boot (fields 3 and 22 of
    /proc/PID/stat); ("", "") if it cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return (fields[0], fields[19]) if len(fields) > 19 else ("", "")


def _exists(pid: int) -> bool:
    """Is there a process ``pid`` (this PID namespace), even one whose /proc entry this user
    cannot read (``hidepid``)? Any doubt says yes."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: there, another user's
        return True
    return True


def this_process() -> Holder:
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        boot=_read("/proc/sys/kernel/random/boot_id"),
        pid_namespace=_namespace(),
        pid=pid,
        started=_process(pid)[1],
    )


def is_here(holder: Holder, here: Holder | None = None) -> bool:
    """Can ``holder`` be looked at from this process: the same host, kernel boot and PID
    namespace (its pid means the same process here)?"""
    here = here or this_process()
    if not (holder.boot and holder.pid_namespace and holder.started and holder.pid > 0):
        return False
    where = (holder.host, holder.boot, holder.pid_namespace)
    return where == (here.host, here.boot, here.pid_namespace)


def is_gone(holder: Holder, here: Holder | None = None) -> bool:
    """Is ``holder`` surely not running any more: no process has its pid, or the one that has
    it started at another moment (the pid was used again), or it has exited and waits for its
    parent (a zombie holds no lock, no session)? Only a process that ``is_here`` can be looked
    at; any doubt (another machine, another container, no /proc, a /proc entry this user may
    not read) says no, and the caller waits for the lease to end (``status``: for the
    heartbeat to age)."""
    if not is_here(holder, here):
        return False
    state, started = _process(holder.pid)
    if not started:
        return not _exists(holder.pid)
    return started != holder.started or state in ("Z", "X")
