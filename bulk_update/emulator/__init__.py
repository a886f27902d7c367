"""A local, in-memory stand-in for the OpenAI Conversations API (``bulk-update emulator``).

For demos, rehearsals, tests and benchmarks. The job (``bulk_update``) never imports it.
"""

from bulk_update.emulator.app import Emulator, EmulatorConfig, create_app
from bulk_update.emulator.server import serve
from bulk_update.emulator.store import preload_id

__all__ = ["Emulator", "EmulatorConfig", "create_app", "preload_id", "serve"]
