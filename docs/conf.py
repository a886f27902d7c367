"""The docs site: Sphinx with MyST (Markdown), built by ``make docs`` with warnings as errors.
The CLI reference is made from the parser at build time (``_ext/cli_reference.py``). The
built-in theme (alabaster) needs no network."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

from bulk_update._version import __version__  # noqa: E402

project = "bulk_update"
author = "the bulk_update authors"
copyright = "the bulk_update authors"
version = release = __version__

extensions = ["myst_parser", "cli_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
# GitHub's anchors (#many-machines-the-store-in-postgresql) for headings down to ####, so that
# a link to a section is checked at build time.
myst_heading_anchors = 4
# Code without a language is shown as it is, never guessed at.
highlight_language = "none"
html_theme = "alabaster"
html_title = f"bulk_update {release}"
html_theme_options = {"description": "bulk-update OpenAI conversations' metadata from a table"}
html_static_path: list[str] = []
smartquotes = False
