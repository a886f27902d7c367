"""A package's names loaded when first asked for (PEP 562), for ``bulk_update`` and
``bulk_update.store``: ``__getattr__ = lazy(__name__, {"Name": "submodule", ...})``. Importing
this costs nothing (no import at all until a name is asked for)."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: ``bulk_update`` is imported before SIGINT is taken over
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["lazy"]


def lazy(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: each name of ``homes`` from its submodule, imported
    then, and kept in the package (the next access does not come here)."""

    def __getattr__(name: str) -> Any:
        import importlib
        import sys

        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
