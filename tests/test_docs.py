"""The README and the docs (``docs/``) agree with the code: every path they name exists, every
option they name is offered (by the command it is named with, or at least by some command),
every module of the package has its place in the map's tree (docs/how-it-works.md), and the
README's recipe for trying a file against the emulator works as written."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulk_update.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bulk_update"
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Every page: the README and docs/ (the site's Markdown), by their path from the repo's root.
DOCS = {
    str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
}
MAP_PAGE = "docs/how-it-works.md"
# Where a path the docs name may live, as they write it: in the package (``store/core.py``),
# the tests, the benchmarks, the repo's root (``jobs/demo.toml``) or the docs (``cli.md``).
ROOTS = (PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT, ROOT / "docs")
# A path: directories and a file with an extension, or a directory (``store/``). Not inside a
# word, a URL or a longer path.
PATH = re.compile(
    r"(?<![\w./:-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|toml|yaml|sh|example|css|js)|(?:[\w.-]+/)+)"
    r"(?![\w/-])"
)
# An entry of the tree: a module or a folder at the start of a line, at most three levels deep
# (descriptions and their continuation lines start further right).
ENTRY = re.compile(r"^(?P<indent>(?:  ){0,3})(?P<name>[\w.]+(?:\.py|/))(?:\s|$)")


def tree(page: str) -> str:
    """The map's tree: the fenced block of the page that starts with ``bulk_update/``."""
    blocks = re.findall(r"^```\n(bulk_update/\n.*?)^```", page, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the map's tree not found in the docs"
    return str(blocks[0])


def tree_paths(block: str) -> dict[Path, list[Path]]:
    """Each path the tree names (relative to the repo's root), with the places it may be at:
    an entry under the folder above it; a name in an entry's description in the entry's
    folder (or, for a folder's, the folder above: ``store/`` names ``store/__init__.py``)."""
    named: dict[Path, list[Path]] = {}
    folders: list[Path] = []  # by depth: the folder of the last entry at each
    here = ROOT
    for line in block.splitlines():
        entry = ENTRY.match(line)
        description = line
        if entry is not None:
            depth = len(entry["indent"]) // 2
            del folders[depth:]
            parent = folders[-1] if folders else ROOT
            path = parent / entry["name"]
            named[path] = [path]
            if entry["name"].endswith("/"):
                folders.append(path)
                here = path
            else:
                here = parent
            description = line[entry.end() :]
        for name in PATH.findall(description):
            places = [here / name, here.parent / name]
            named.setdefault(places[0], places)
    return named


def test_the_tree_names_only_what_exists() -> None:
    named = tree_paths(tree(DOCS[MAP_PAGE]))
    missing = [
        str(path.relative_to(ROOT)) + ("/" if path.is_dir() or not path.suffix else "")
        for path, places in named.items()
        if not any(place.exists() for place in places)
    ]
    assert not missing, f"the docs' tree names what is not there: {missing}"


def test_every_module_has_its_place_in_the_tree() -> None:
    named = tree_paths(tree(DOCS[MAP_PAGE]))
    places = {place for candidates in named.values() for place in candidates}
    modules = sorted(PACKAGE.rglob("*.py"))
    # A package's __init__.py is its folder's entry, unless it holds more (named then).
    absent = [
        str(module.relative_to(ROOT))
        for module in modules
        if module not in places and not (module.name == "__init__.py" and module.parent != PACKAGE)
    ]
    assert not absent, f"modules the docs' tree does not show: {absent}"


@functools.cache
def tracked_folders() -> set[str]:
    """The repo's own top-level folders: what git tracks, not what a run left (``out/``,
    ``.venv/``), so that a page's example path never counts as the repo's."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return {name.split("/", 1)[0] for name in listed if "/" in name}


def repo_paths(page: str) -> list[str]:
    """The paths a page names (outside the map's tree) that refer to the repo: a Python file, a
    Markdown page, or a path whose first folder is one of the repo's or the package's
    (``jobs/``, ``store/``); not an example's (``out/results.csv``) nor a placeholder's
    (``jobs/NAME``)."""
    ours = {p.name for p in PACKAGE.iterdir() if p.is_dir()} | tracked_folders()
    if "\nbulk_update/\n" in page:
        page = page.replace(tree(page), "")
    found = []
    for token in PATH.findall(page):
        first = token.split("/", 1)[0]
        if re.search(r"\b[A-Z]{2,}\b", token.removesuffix(".md")) and not token.endswith(".md"):
            continue  # a placeholder: jobs/NAME.toml, STATE_DIR/JOB.sqlite
        if token.endswith(".py") or token.endswith(".md") or ("/" in token and first in ours):
            found.append(token)
    return sorted(set(found))


def found_in_repo(token: str) -> bool:
    """A path the docs name, resolved against the package, tests/, benchmarks/, the root and
    docs/; a bare file name (``report.py``) anywhere in those."""
    if any((root / token).is_dir() if token.endswith("/") else (root / token).is_file()
           for root in ROOTS):  # fmt: skip
        return True
    if "/" in token:
        return False
    places = (*ROOTS[:3], ROOT / "jobs", ROOT / "docs")
    return any(next(root.rglob(token), None) is not None for root in places)


def test_every_path_the_docs_name_exists() -> None:
    named = {page: repo_paths(text) for page, text in DOCS.items()}
    assert "store/core.py" in named[MAP_PAGE]
    assert "jobs/demo.toml" in named["README.md"]
    assert "docs/cli.md" in named["README.md"]
    missing = [f"{page}: {token}" for page, tokens in named.items() for token in tokens
               if not found_in_repo(token)]  # fmt: skip
    assert not missing, f"the docs name paths that do not exist: {missing}"


# Options of other programs that the docs name alone (in prose or a code span of their own),
# each with its program: not bulk-update's.
OTHERS = {"--dist": "pytest-xdist", "--durations": "pytest", "--no-cache-dir": "pip"}
# A program whose arguments are `bulk-update run`'s: the cron wrapper passes them on.
AS_COMMAND = ("cron-wrapper.sh",)
FLAG = re.compile(r"(?<![\w$-])(--?[A-Za-z][\w-]*)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


@functools.cache
def offered() -> dict[str, set[str]]:
    """Each command's flags (``""``: the top level's), from the parser itself."""
    parser = build_parser()
    flags = {"": {flag for action in parser._actions for flag in action.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {flag for a in sub._actions for flag in a.option_strings}
    return flags


def command_lines(text: str) -> Iterator[tuple[str | None, str]]:
    """What a piece of code runs, command by command: ``(command, its arguments)`` for
    bulk-update's (``run`` …), ``(None, text)`` for an option named alone; other programs'
    lines are left out."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        for part in re.split(r"\s(?:&&|\|\||;|\||&)\s|;\s*do\s|\s#\s", f" {line} "):
            words = part.split()
            # bulk-update (or a program that passes it its arguments) where it is run: first
            # in the line, or after a cron schedule, a path, variables …
            ours = [
                i for i, word in enumerate(words) if word.endswith(("bulk-update", *AS_COMMAND))
            ]
            if ours:
                program, arguments = words[ours[0]], words[ours[0] + 1 :]
                if program.endswith(tuple(AS_COMMAND)):
                    yield "run", " ".join(arguments)
                else:
                    command = arguments[0] if arguments and arguments[0] in offered() else ""
                    yield command, " ".join(arguments)
            elif words and words[0] in offered() and len(words) > 1:  # `run --backup`
                yield words[0], " ".join(words[1:])
            elif words and FLAG.fullmatch(words[0]):
                yield None, part


def named_options(page: str) -> Iterator[tuple[str | None, str]]:
    """Each option a page names, with the command it is named with (``None``: none; ``""``:
    bulk-update itself): in fenced code, in code spans, and in prose (long options only)."""
    prose = FENCE.sub("", page)
    for block in FENCE.findall(page):
        for command, arguments in command_lines(block):
            for flag in FLAG.findall(arguments):
                yield command, flag
    for span in SPAN.findall(prose):
        for command, arguments in command_lines(" ".join(span[1].split())):
            for flag in FLAG.findall(arguments):
                if command is not None or flag.startswith("--") or len(flag) == 2:
                    yield command, flag
    for flag in re.findall(r"(?<![\w$-])(--[a-z][\w-]*)", SPAN.sub("", prose)):
        yield None, flag


def unknown_options(docs: dict[str, str]) -> list[str]:
    flags = offered()
    anywhere = set().union(*flags.values())
    wrong = []
    for page, text in docs.items():
        for command, flag in named_options(text):
            if flag in OTHERS:
                continue
            known = anywhere if command is None else flags[command]
            if flag not in known:
                where = f"bulk-update {command}".rstrip() if command is not None else "any command"
                wrong.append(f"{page}: {flag} (not offered by {where})")
    return sorted(set(wrong))


def test_every_option_the_docs_name_is_offered() -> None:
    named = {(page, command, flag) for page, text in DOCS.items()
             for command, flag in named_options(text)}  # fmt: skip
    assert ("README.md", "validate", "--job-name") in named
    assert ("README.md", "emulator", "--preload") in named
    assert ("docs/commands.md", None, "--stop-after-failures") in named
    wrong = unknown_options(DOCS)
    assert not wrong, f"the docs name options that are not offered: {wrong}"


@pytest.mark.parametrize(
    ("page", "edit"),
    [
        (
            "README.md",
            ("validate my-export.csv --output", "validate my-export.csv --backup --output"),
        ),
        ("README.md", ("`--limit 50`", "`--limits 50`")),
        ("docs/commands.md", ("| `--rpm N` |", "| `--rpn N` |")),
        ("docs/cron.md", ("--output out/nightly", "--outputs out/nightly")),
        ("docs/safety.md", ("--backup", "--back-up")),
    ],
)
def test_an_option_named_wrong_is_found(page: str, edit: tuple[str, str]) -> None:
    """A flag no command offers, or one its command does not (`validate --backup`), is found."""
    assert edit[0] in DOCS[page]
    docs = dict(DOCS, **{page: DOCS[page].replace(edit[0], edit[1], 1)})
    assert unknown_options(docs), edit


@pytest.mark.parametrize(
    ("edit", "test"),
    [
        ((MAP_PAGE, "    breaker.py", "    breakers.py"), test_the_tree_names_only_what_exists),
        ((MAP_PAGE, "  write.py ", "  writer.py "), test_the_tree_names_only_what_exists),
        ((MAP_PAGE, "(lease.py:", "(leases.py:"), test_the_tree_names_only_what_exists),
        ((MAP_PAGE, "  dryrun.py ", "  dry_run.py "), test_every_module_has_its_place_in_the_tree),
        ((MAP_PAGE, "`store/core.py`", "`store/kernel.py`"), test_every_path_the_docs_name_exists),
        (
            ("README.md", "`jobs/demo.toml`", "`jobs/demos.toml`"),
            test_every_path_the_docs_name_exists,
        ),
        (("README.md", "(docs/safety.md)", "(docs/safe.md)"), test_every_path_the_docs_name_exists),
    ],
)
def test_a_wrong_name_fails(
    edit: tuple[str, str, str], test: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check fails on docs that name a path wrong."""
    page, old, new = edit
    assert old in DOCS[page]
    monkeypatch.setitem(DOCS, page, DOCS[page].replace(old, new, 1))
    assert callable(test)
    with pytest.raises(AssertionError, match="docs"):
        test()


def test_the_cli_reference_shows_every_option_of_every_command() -> None:
    """docs/cli.md is made from the parser at build time (docs/_ext/cli_reference.py): each
    command has its section, each of its options a row, with its help as --help words it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "docs" / "_ext" / "cli_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.MARKER in DOCS["docs/cli.md"]
    text = module.reference()
    parts = re.split(r"^## `bulk-update (\w+)`$", text, flags=re.M)[1:]
    sections = dict(zip(parts[::2], parts[1::2], strict=True))
    assert set(sections) == set(offered()) - {""}
    for command, flags in offered().items():
        for flag in flags:
            shown = f"`{flag}" if command else flag  # the top level's: in its --help
            assert shown in (sections.get(command) or text), (command, flag)
    assert re.search(r"^\| `--rpm N` \| requests per minute", sections["run"], re.M)


def section(text: str, heading: str) -> str:
    return text[text.index(f"\n## {heading}\n") :].split("\n## ", 2)[1]


def recipe() -> tuple[list[list[str]], dict[str, str], str]:
    """The README's "Try it on your own file": its commands (the emulator's first), the
    variables it exports, and the Python that looks at the results."""
    text = section(README, "Try it on your own file")
    blocks = FENCE.findall(text)
    lines = blocks[0].replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.removesuffix("&")) for line in lines if line.startswith("bulk-")]
    exported = dict(
        item.split("=", 1)
        for line in lines
        if line.startswith("export ")
        for item in shlex.split(line)[1:]
    )
    look = blocks[1].split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    return commands, exported, look


def test_the_readmes_recipe_for_your_own_file_works(tmp_path: Path) -> None:
    """Copied as written: the emulator preloaded with the file, validate, run, the same run
    again (nothing sent twice), and the Python that shows the results by status."""
    from bulk_update.emulator.process import EmulatorProcess
    from tests.helpers import cli, results, write_input

    commands, exported, look = recipe()
    assert [c[:2] for c in commands] == [["bulk-update", "emulator"], ["bulk-update", "validate"],
                                         ["bulk-update", "run"]]  # fmt: skip
    emulator, validate, run = (command[1:] for command in commands)
    assert exported["OPENAI_BASE_URL"] == "http://127.0.0.1:8787/v1"
    assert emulator[emulator.index("--port") + 1] == "8787"
    del emulator[emulator.index("--port") : emulator.index("--port") + 2]  # a free port instead
    source = tmp_path / validate[1]
    emulator[emulator.index("--preload") + 1] = str(source)  # the test's cwd is not tmp_path
    write_input(source, 40)
    source.write_text(source.read_text() + ",gold,40\n")  # a row without an ID: invalid
    with EmulatorProcess(*emulator[1:]) as emu:
        url = emu.base_url
        key = exported["OPENAI_API_KEY"]
        plan = cli(*validate, key=key, cwd=tmp_path, OPENAI_BASE_URL=url)
        assert plan.returncode == 1, plan.stderr  # the invalid row
        assert "would send 40" in plan.stderr
        done = cli(*run, key=key, cwd=tmp_path, OPENAI_BASE_URL=url)
        assert done.returncode == 1, done.stderr
        assert emu.stats()["by_operation"]["update"] == 40
        statuses = results(tmp_path / run[run.index("--output") + 1])["status"].to_list()
        assert statuses.count("updated") == 40
        assert statuses.count("invalid") == 1
        assert (tmp_path / run[run.index("--errors-output") + 1]).is_file()
        again = cli(*run, key=key, cwd=tmp_path, OPENAI_BASE_URL=url)
        assert again.returncode == 1, again.stderr
        assert emu.stats()["by_operation"]["update"] == 40  # nothing sent again
    shown = subprocess.run([sys.executable, "-c", look], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "updated" in shown.stdout
    assert "invalid" in shown.stdout


ADMIN_PAGE = "docs/commands.md"
METHOD = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE)\b")


def generic(path: str) -> str:
    """A route's path with ``{}`` for each parameter (the docs say ``{id}``)."""
    return re.sub(r"\{\w+\}", "{}", path)


def admin_routes(cell: str) -> set[str]:
    """``METHOD PATH`` for each method and the path a route cell names, and ``GET PATH?FLAG``
    for each query flag it shows (``[?per_id=true]``)."""
    (path,) = [generic(found) for found in re.findall(r"(/_emulator/[^\s`\[?]*)", cell)]
    routes = {f"{method} {path}" for method in METHOD.findall(cell)}
    return routes | {f"GET {path}?{flag}" for flag in re.findall(r"[?&](\w+)=true", cell)}


def admin_table_differs(page: str) -> set[str]:
    """The routes the emulator serves outside the API that the page's table of admin routes
    lacks, and those it names that are not served (each flag of the stats route counted)."""
    from starlette.routing import Route

    from bulk_update.emulator.app import ADMIN_PREFIX, STATS_FLAGS, create_app

    served = set()
    for route in create_app().routes:
        if isinstance(route, Route) and route.path.startswith(ADMIN_PREFIX):
            methods = (route.methods or set()) - {"HEAD"}
            served |= {f"{method} {generic(route.path)}" for method in methods}
    served |= {f"GET {ADMIN_PREFIX}stats?{flag}" for flag in STATS_FLAGS}
    documented = set()
    for line in page.splitlines():
        cell = line.split(" | ")[0]
        if line.startswith("| ") and ADMIN_PREFIX in cell:
            documented |= admin_routes(cell)
    return served ^ documented


def test_every_admin_route_of_the_emulator_is_in_the_table() -> None:
    """docs/commands.md's table of admin routes names each route the emulator serves outside
    the API, with each method and each flag of ``stats`` (``timeline`` was missing), and no
    other; a row taken out, or a flag, is found."""
    page = DOCS[ADMIN_PAGE]
    assert admin_table_differs(page) == set()
    assert admin_table_differs(page.replace("[&timeline=true]", "")) == {
        "GET /_emulator/stats?timeline"
    }
    assert admin_table_differs(page.replace("| `POST /_emulator/reset-counters` |", "| |")) == {
        "POST /_emulator/reset-counters"
    }
