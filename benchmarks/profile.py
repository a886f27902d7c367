"""Where a row's CPU goes: the job (or a peer) under py-spy against the emulator, as tables.

    .venv/bin/python -m benchmarks.profile                       # the job, 20,000 rows, SQLite
    .venv/bin/python -m benchmarks.profile --store postgres --latency-ms 50
    .venv/bin/python -m benchmarks.profile --peer sdk-aiohttp    # the job, then a peer
    .venv/bin/python -m benchmarks.profile --transport httpx2    # BULK_UPDATE_TRANSPORT
    .venv/bin/python -m benchmarks.profile --commit 1b9d2e9      # the job as of a commit

py-spy launches the program (``py-spy record --format raw -- python -m bulk_update run ...``:
no attaching, so no ptrace permission is needed beyond the child's). By default it keeps only
the samples of a thread holding the GIL: the Python work of the one interpreter, which is what
bounds a job whose requests all go through one event loop (C code that releases the GIL, as
SQLite's commits and polars do, is not in them). ``--all-threads`` keeps every sample of a
thread py-spy does not think idle instead; on a loaded machine that counts threads waiting for
a CPU (a thread pool's workers waiting for work) too. Each table gives a share of the samples:

- by own time: the function a sample was in (its first line), the top --top;
- by module: own time summed over the module the function is in (the top-level package for
  a library, ``asyncio`` and the like for the standard library, ``bulk_update.store`` for the
  stores, the module for the rest of bulk_update), and the share of samples with the module
  anywhere on the stack (inclusive: these add up to more than 100 %);
- by step of a row (``STEPS``): each sample counted once, in the innermost step on its stack
  (aiohttp's own request, the answer's parsing, the journal, the metrics...; a step's own
  code is what its callees that are steps of their own do not cover), and per 100 samples of
  aiohttp's request, which every program sending through aiohttp pays alike: a ratio that
  holds from one load to another where shares of a run's samples do not.

The tables are Markdown, to paste into BENCHMARKS.md. The program's start (imports, reading
the input) is in the samples too: a few hundred milliseconds of a run of seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.baselines import PEERS
from benchmarks.run import (
    DATA,
    ENV,
    archive,
    job,
    load_average,
    make_input,
    timed,
    updated,
)
from bulk_update.emulator.process import EmulatorProcess

PY_SPY = Path(sys.executable).parent / "py-spy"
# "function (file:line)"; the file may hold spaces and parentheses (<frozen importlib...>).
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(os.__file__).resolve().parent


# The steps of a row (and of the program around them) a sample is counted in: the innermost
# frame on its stack that matches one (``function (file)``, the file as ``short`` gives it).
STEPS: tuple[tuple[str, str], ...] = (
    ("start-up: imports", r"importlib|^<frozen"),
    ("aiohttp: the request (ClientSession._request)", r"^ClientSession\._request \("),
    ("aiohttp: reading answers off the sockets", r"^_SelectorSocketTransport\._read_ready \("),
    ("the body read (_read_plain)", r"^_read_plain \("),
    ("the answer's headers (answer_headers)", r"^answer_headers \("),
    ("the URL (yarl)", r"^URL\.__new__ \(yarl"),
    (
        "the whole-request timeout (asyncio.timeout)",
        r"^(timeout|Timeout\.__a?e\w+__|Timeout\.reschedule) \(asyncio",
    ),
    ("the answer's verdict (classify: its JSON parsed)", r"^classify \("),
    ("the outcome (Sender._outcome: the metadata's JSON)", r"^Sender\._outcome \("),
    ("the limiter and breaker told (Sender._observed)", r"^Sender\._observed \("),
    ("the limiter's slot (RateLimiter.acquire)", r"^RateLimiter\.acquire \("),
    ("the metrics (Telemetry)", r"^Telemetry\."),
    ("the progress (Tally)", r"^Tally\."),
    ("the journal: a row's record", r"^Journal\.record \("),
    ("the journal: a turn's commit", r"^SQLiteJournal\._commit_turn \("),
    ("the client (ApiClient.exchange, own)", r"^ApiClient\.exchange \("),
    ("the transport (AiohttpTransport.exchange, own)", r"^AiohttpTransport\.exchange \("),
    (
        "the sender (Sender.send, _call, _request, _exchange, own)",
        r"^Sender\.(send|_call|_request|_exchange)\b",
    ),
    ("the worker (Pipeline._work, own)", r"^Pipeline\._work \("),
    ("the producer (Pipeline.run: planning handed out)", r"^Pipeline\.run \("),
    ("threads (planning, the store's reads and writer)", r"^Thread\.run \("),
    ("the results written", r"^write_run_outputs \("),
    ("the event loop (the rest)", r"^BaseEventLoop\._run_once \("),
)
STEP_PATTERNS = tuple((name, re.compile(pattern)) for name, pattern in STEPS)
AIOHTTP_REQUEST = STEPS[1][0]


@dataclass
class Profile:
    """Samples counted by leaf function, by leaf module, by module anywhere on the stack, and
    by step (``STEPS``)."""

    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    own_module: Counter[str] = field(default_factory=Counter)
    inclusive_module: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)


def step_of(stack: list[str]) -> str:
    """The innermost step on a stack of ``function (file)``, outermost first."""
    for frame in reversed(stack):
        for name, pattern in STEP_PATTERNS:
            if pattern.search(frame):
                return name
    return "elsewhere"


def module_of(path: str) -> str:
    """The group a file's time is counted in (see the module docstring)."""
    if path.startswith("<frozen importlib"):
        return "importlib (imports)"
    if path.startswith("<"):
        return path
    if "site-packages/" in path:
        top = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return top.removesuffix(".py").split(".", 1)[0]
    if "/bulk_update/" in path:  # this checkout's, or --commit's
        path = "bulk_update/" + path.rsplit("/bulk_update/", 1)[1]
        parts = list(Path(path).with_suffix("").parts)
        if parts[:2] == ["bulk_update", "store"]:
            return "bulk_update.store"
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)
    resolved = Path(path)
    for root in (REPO, STDLIB):
        if resolved.is_relative_to(root):
            parts = list(resolved.relative_to(root).with_suffix("").parts)
            return parts[0] if root == STDLIB else ".".join(parts)
    return path


def short(path: str) -> str:
    """A file as a reader would name it: from its package, not from the machine's root."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/bulk_update/" in path:
        return "bulk_update/" + path.rsplit("/bulk_update/", 1)[1]
    resolved = Path(path)
    for root in (REPO, STDLIB):
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root))
    return path


def frames(stack: str) -> Iterator[tuple[str, str, str]]:
    """(function, file, line) of each frame of a raw stack, outermost first."""
    for frame in stack.split(";"):
        match = FRAME.match(frame)
        if match is None:
            yield frame, frame, ""
        else:
            yield match["function"], match["file"], match["line"] or ""


def read_raw(path: Path) -> Profile:
    """py-spy's raw format: one stack a line, frames joined by ';', then a space and a count."""
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        stack_frames = list(frames(stack))
        if not stack_frames:
            continue
        function, file, number = stack_frames[-1]
        profile.samples += count
        where = f"{short(file)}:{number}" if number else short(file)
        profile.own[f"`{function}` ({where})"] += count
        profile.own_module[module_of(file)] += count
        for module in {module_of(f) for _, f, _ in stack_frames}:
            profile.inclusive_module[module] += count
        profile.steps[step_of([f"{name} ({short(f)})" for name, f, _ in stack_frames])] += count
    return profile


def tables(profile: Profile, top: int) -> str:
    total = max(profile.samples, 1)
    lines = ["| own time | function |", "|---:|---|"]
    for name, count in profile.own.most_common(top):
        lines.append(f"| {count / total:6.1%} | {name} |")
    lines += ["", "| own time | on the stack | module |", "|---:|---:|---|"]
    for module, count in profile.own_module.most_common(top):
        inclusive = profile.inclusive_module[module]
        lines.append(f"| {count / total:6.1%} | {inclusive / total:6.1%} | {module} |")
    aiohttp = max(profile.steps[AIOHTTP_REQUEST], 1)
    lines += ["", "| samples | per 100 of aiohttp's request | step |", "|---:|---:|---|"]
    for step, count in profile.steps.most_common():
        lines.append(f"| {count / total:6.1%} | {100 * count / aiohttp:5.0f} | {step} |")
    return "\n".join(lines)


def record(
    command: list[str], env: dict[str, str], rate: int, gil: bool, out: Path, cwd: Path | None
) -> tuple[float, str]:
    """Run ``command`` under py-spy; its wall seconds and stderr (py-spy's and the program's)."""
    spy = [str(PY_SPY), "record", "--format", "raw", "--output", str(out), "--rate", str(rate),
           "--function", "--full-filenames", *(["--gil"] if gil else []), "--", *command]  # fmt: skip
    seconds, _, done = timed(spy, env=env, cwd=cwd)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--latency-ms", type=int, default=0, help="the emulator's, per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=20, help="rows of each table")
    parser.add_argument("--rate", type=int, default=100, help="samples a second")
    parser.add_argument(
        "--transport", choices=("aiohttp", "httpx2"), help="the job's (BULK_UPDATE_TRANSPORT)"
    )
    parser.add_argument("--peer", choices=sorted(PEERS), help="also profile this peer")
    parser.add_argument("--keep", metavar="DIR", help="keep py-spy's raw files in DIR")
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="run the job as of this commit (git archive of bulk_update/, on PYTHONPATH): "
        "a profile from before a change",
    )
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="every sample of a thread not idle (the default: only samples holding the GIL)",
    )
    args = parser.parse_args()
    if not PY_SPY.exists():
        sys.exit(f"py-spy not found at {PY_SPY}: pip install py-spy")

    source = make_input(args.rows, "efficiency")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(dir=DATA))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(ENV)
    tree: Path | None = None
    if args.commit:
        tree = archive(args.commit)
        env["PYTHONPATH"] = str(tree)
    if args.transport:
        env["BULK_UPDATE_TRANSPORT"] = args.transport
    emulator = ("--preload", str(args.rows), "--latency-ms", str(args.latency_ms))
    programs = ["job", *([args.peer] if args.peer else [])]
    job_name = "the job" + (f" at {args.commit}" if args.commit else "")
    if args.transport:
        job_name += f", BULK_UPDATE_TRANSPORT={args.transport}"
    print(f"{args.rows:,} rows, {args.concurrency} in flight, API latency {args.latency_ms} ms, "
          f"store {args.store}, {os.cpu_count()} CPUs, py-spy {args.rate} samples/s"
          f"{'' if args.all_threads else ' (holding the GIL)'}, job at {args.commit or 'the working tree'}; "
          f"load average before {load_average()}")  # fmt: skip
    try:
        with ExitStack() as stack:
            store: list[str] = ["--state-dir", str(work)]
            if args.store == "postgres":
                from tests.pg import PostgresServer

                pg = stack.enter_context(PostgresServer())
                store = ["--state-url", pg.create_database("profile")]
            for program in programs:
                with EmulatorProcess(*emulator) as emu:
                    if program == "job":
                        name = job_name
                        command = job("run", str(source), "--output", str(work / "out.parquet"),
                                      "--base-url", emu.base_url, "--concurrency",
                                      str(args.concurrency), "--rpm", "100000000", *store)  # fmt: skip
                    else:
                        name = program
                        command = [sys.executable, "-m", "benchmarks.baselines", program,
                                   str(source), emu.base_url, str(args.concurrency)]  # fmt: skip
                    raw = work / f"{program}.raw.txt"
                    seconds, _ = record(
                        command,
                        env,
                        args.rate,
                        not args.all_threads,
                        raw,
                        tree if program == "job" else None,
                    )
                    ok = updated(emu.stats())
                    if ok != args.rows:
                        sys.exit(f"{name}: {ok} of {args.rows} rows updated")
                profile = read_raw(raw)
                print(f"\n### {name}: {args.rows / seconds:,.0f} rows/s under py-spy, "
                      f"{profile.samples:,} samples ({profile.samples / args.rows:.2f} a row)\n")  # fmt: skip
                print(tables(profile, args.top))
        print(f"\nload average after {load_average()}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
