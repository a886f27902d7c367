"""A real PostgreSQL server for the tests and benchmarks: initdb in a temp dir, on a free
loopback port, as the unprivileged ``postgres`` user when we run as root (the server refuses
to run as root). About 2 s to start.

The binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin, else ``initdb`` on PATH.
Missing binaries are an error that says so (the PostgreSQL tests never skip silently).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

USER = "bulk"
# Characters a URL must escape: the tests check it is never shown, escaped or not.
PASSWORD = "pg-S3cret/p@ss"


def find_bindir() -> Path | None:
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """``with PostgresServer() as pg: pg.url("db")``; ``restart()``, ``stop()``, ``start()``."""

    def __init__(self, root: Path | None = None) -> None:
        """``root``: an empty directory to keep the cluster in (a small filesystem, to fill its
        disk); a temporary one by default."""
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql "
                "(Debian: apt-get install postgresql), or set PG_BINDIR"
            )
        self.bindir = bindir
        self.port = _free_port()
        if root is not None:
            root.mkdir(parents=True)
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="bulk-update-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if self._as:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(password_file, account.pw_uid, account.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--no-sync")  # fmt: skip
        password_file.unlink()

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True, text=True, timeout=120, cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log[-2000:]}")

    def start(self) -> PostgresServer:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options,
                 "start")  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str, *arguments: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            return conn.execute(sql, arguments).fetchall()

    def execute(self, database: str, sql: str) -> None:
        """A statement that returns no rows (CREATE ROLE, ALTER ROLE ...)."""
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
