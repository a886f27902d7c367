"""The emulator's server-side request limit.

OpenAI states limits per minute but enforces them over shorter windows ("quantized"). The
emulator models that with a token bucket: it holds at most ``max(1, rpm / 60)`` requests and
refills continuously at ``rpm / 60`` per second, so a client can never burst past one second's
share. Every authenticated request takes a token, whatever its outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    """The bucket's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # until one token is available (0 when allowed)

    def headers(self) -> dict[str, str]:
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_seconds),
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_seconds)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_seconds * 1000)))
        return headers


def format_duration(seconds: float) -> str:
    """Go-style duration as OpenAI writes it: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class TokenBucket:
    """``rpm`` requests a minute, at most one second's share at once. Time is passed in."""

    def __init__(self, rpm: int, now: float) -> None:
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.rpm = rpm
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate)
        self._tokens = self.capacity
        self._updated = now

    def admit(self, now: float) -> Admission:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        retry_after = 0.0 if allowed else (1.0 - self._tokens) / self.rate
        return Admission(
            allowed=allowed,
            limit=self.rpm,
            remaining=int(self._tokens),
            reset_seconds=(self.capacity - self._tokens) / self.rate,
            retry_after_seconds=retry_after,
        )
