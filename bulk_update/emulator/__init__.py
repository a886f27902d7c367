"""A local, in-memory stand-in for the OpenAI API's objects with metadata (``bulk-update
emulator``): conversations, stored chat completions, vector stores and vector store files.

For demos, rehearsals, tests and benchmarks. The job (``bulk_update``) never imports it. Its
server needs the ``emulator`` extra (``pip install 'bulk-update[emulator]'``); the app is in
``emulator.app``, the server in ``emulator.server``.
"""

from bulk_update.emulator.config import EmulatorConfig
from bulk_update.emulator.objects import preload_ids
from bulk_update.emulator.store import preload_id

EXTRA_HINT = "the emulator needs its extra: pip install 'bulk-update[emulator]'"


def missing_dependency() -> str | None:
    """The first of the emulator's dependencies that is not installed, or None."""
    import importlib.util

    for module in ("starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


__all__ = ["EXTRA_HINT", "EmulatorConfig", "missing_dependency", "preload_id", "preload_ids"]
