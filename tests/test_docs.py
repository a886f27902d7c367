"""The README's map agrees with the code: every path the README names exists, and every module
of the package has its place in the map's tree ("How it works")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bulk_update"
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Where a path the README names may live, as the README writes it: in the package
# (``store/core.py``), the tests, the benchmarks, or the repo's root (``jobs/demo.toml``).
ROOTS = (PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT)
# A path: directories and a file with an extension, or a directory (``store/``). Not inside a
# word, a URL or a longer path.
PATH = re.compile(
    r"(?<![\w./:-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|toml|yaml|sh|example|css|js)|(?:[\w.-]+/)+)"
    r"(?![\w/-])"
)
# An entry of the tree: a module or a folder at the start of a line, at most three levels deep
# (descriptions and their continuation lines start further right).
ENTRY = re.compile(r"^(?P<indent>(?:  ){0,3})(?P<name>[\w.]+(?:\.py|/))(?:\s|$)")


def tree(readme: str) -> str:
    """The map's tree: the fenced block of "How it works" that starts with ``bulk_update/``."""
    section = readme.split("\n## How it works", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```\n(bulk_update/\n.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the map's tree not found"
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
    named = tree_paths(tree(README))
    missing = [
        str(path.relative_to(ROOT)) + ("/" if path.is_dir() or not path.suffix else "")
        for path, places in named.items()
        if not any(place.exists() for place in places)
    ]
    assert not missing, f"the README's tree names what is not there: {missing}"


def test_every_module_has_its_place_in_the_tree() -> None:
    named = tree_paths(tree(README))
    places = {place for candidates in named.values() for place in candidates}
    modules = sorted(PACKAGE.rglob("*.py"))
    # A package's __init__.py is its folder's entry, unless it holds more (named then).
    absent = [
        str(module.relative_to(ROOT))
        for module in modules
        if module not in places and not (module.name == "__init__.py" and module.parent != PACKAGE)
    ]
    assert not absent, f"modules the README's tree does not show: {absent}"


def repo_paths(readme: str) -> list[str]:
    """The paths the README names (outside the tree) that refer to the repo: a Python file,
    or a path whose first folder is one of the repo's or the package's (``jobs/``,
    ``store/``); not an example's (``out/results.csv``) nor a placeholder's (``jobs/NAME``)."""
    ours = {p.name for p in (*ROOT.iterdir(), *PACKAGE.iterdir()) if p.is_dir()}
    found = []
    for token in PATH.findall(readme.replace(tree(readme), "")):
        first = token.split("/", 1)[0]
        if re.search(r"\b[A-Z]{2,}\b", token.removesuffix(".md")) and not token.endswith(".md"):
            continue  # a placeholder: jobs/NAME.toml, STATE_DIR/JOB.sqlite
        if token.endswith(".py") or token.endswith(".md") or ("/" in token and first in ours):
            found.append(token)
    return sorted(set(found))


def found_in_repo(token: str) -> bool:
    """A path the README names, resolved against the package, tests/, benchmarks/ and the
    root; a bare file name (``report.py``) anywhere in those."""
    if any((root / token).is_dir() if token.endswith("/") else (root / token).is_file()
           for root in ROOTS):  # fmt: skip
        return True
    if "/" in token:
        return False
    return any(next(root.rglob(token), None) is not None for root in (*ROOTS[:3], ROOT / "jobs"))


def test_every_path_the_readme_names_exists() -> None:
    paths = repo_paths(README)
    assert "store/core.py" in paths
    assert "jobs/demo.toml" in paths
    missing = [token for token in paths if not found_in_repo(token)]
    assert not missing, f"the README names paths that do not exist: {missing}"


@pytest.mark.parametrize(
    ("edit", "test"),
    [
        (("    breaker.py", "    breakers.py"), test_the_tree_names_only_what_exists),
        (("  write.py ", "  writer.py "), test_the_tree_names_only_what_exists),
        (("(lease.py:", "(leases.py:"), test_the_tree_names_only_what_exists),
        (("  dryrun.py ", "  dry_run.py "), test_every_module_has_its_place_in_the_tree),
        (("`store/core.py`", "`store/kernel.py`"), test_every_path_the_readme_names_exists),
        (("`jobs/demo.toml`", "`jobs/demos.toml`"), test_every_path_the_readme_names_exists),
    ],
)
def test_a_wrong_name_fails(
    edit: tuple[str, str], test: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check fails on a README that names a path wrong."""
    assert edit[0] in README
    monkeypatch.setitem(globals(), "README", README.replace(edit[0], edit[1], 1))
    assert callable(test)
    with pytest.raises(AssertionError, match="README"):
        test()
