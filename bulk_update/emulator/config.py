"""The emulator's settings (no third-party imports: the CLI's help reads the defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator behaves. ``rpm=0`` means no limit; rates are fractions of requests."""

    api_key: str | None = None
    rpm: int = 0
    latency_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 5000.0
    random_seed: int | None = None
    # Every API request answered 429 insufficient_quota (a billing stop), for fatal-error tests.
    quota_exhausted: bool = False
    # An update replaces the stored map instead of merging into it (the API merges, as far as
    # public reports go): to rehearse what --backup does when a server does not.
    replace_metadata: bool = False

    def __repr__(self) -> str:
        # The key is a secret even in a test tool's logs.
        shown = "None" if self.api_key is None else "'***'"
        fields = ", ".join(
            f"{name}={value!r}" for name, value in asdict(self).items() if name != "api_key"
        )
        return f"EmulatorConfig(api_key={shown}, {fields})"
