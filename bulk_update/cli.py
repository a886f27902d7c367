"""The ``bulk-update`` command: parses flags and calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bulk_update import __version__


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "emulator",
        help="serve a local, in-memory stand-in for the Conversations API",
        description=(
            "Serve a local, in-memory stand-in for the OpenAI Conversations API, for demos, "
            "rehearsals, tests and benchmarks. Prints the base URL once it serves."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_non_negative_int, default=8787, help="port; 0 picks a free one"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="accept only this bearer key (default: any non-empty key)",
    )
    parser.add_argument(
        "--rpm",
        type=_non_negative_int,
        default=0,
        help="server-side limit in requests per minute, enforced per second (0: none)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API response")
    parser.add_argument(
        "--error-rate", type=_fraction, default=0.0, help="fraction answered 500/502/503"
    )
    parser.add_argument(
        "--reset-rate",
        type=_fraction,
        default=0.0,
        help="fraction whose connection is dropped without an answer",
    )
    parser.add_argument(
        "--slow-rate", type=_fraction, default=0.0, help="fraction delayed by --slow-ms"
    )
    parser.add_argument(
        "--slow-ms", type=float, default=5000.0, help="delay of a slow response (default 5000)"
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, help="same seed, same faults for same requests"
    )
    parser.add_argument(
        "--preload",
        metavar="FILE|N",
        default=None,
        help="create conversations for a CSV/Parquet file's conversation_id column, or N of them",
    )


def _run_emulator(args: argparse.Namespace) -> int:
    from bulk_update.emulator import EmulatorConfig, serve

    try:
        config = EmulatorConfig(
            api_key=args.api_key,
            rpm=args.rpm,
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            reset_rate=args.reset_rate,
            slow_rate=args.slow_rate,
            slow_ms=args.slow_ms,
            random_seed=args.random_seed,
        )
        serve(config, host=args.host, port=args.port, preload=args.preload)
    except (OSError, ValueError) as exc:
        print(f"bulk-update emulator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from bulk_update.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulk-update",
        description="Bulk-update the metadata of OpenAI conversations from a CSV or Parquet table.",
    )
    parser.add_argument("--version", action="version", version=f"bulk-update {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_emulator(commands)
    commands.add_parser(
        "demo",
        help="what `make demo` runs",
        description="Start the emulator on a free loopback port and run a short session on it.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        return _run_emulator(args)
    return _run_demo(args)
