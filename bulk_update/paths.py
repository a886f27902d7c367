"""Paths the job reads and writes: a local file, or an object-store URL (``s3://`` ...)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["is_remote", "suffix"]


def is_remote(path: str | Path) -> bool:
    """An object-store URL (``s3://``, ``gs://``, ``az://`` ...), not a local path."""
    return "://" in str(path)


def suffix(path: str) -> str:
    """The extension of a local path or a URL's path, lower case (``""`` if none)."""
    return Path(urlsplit(path).path if is_remote(path) else path).suffix.lower()
