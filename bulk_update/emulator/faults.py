"""Injected faults, reproducible from a seed.

Every request that passes authentication and the rate limit draws exactly two numbers from one
seeded generator, in arrival order, so the same seed and the same request sequence give the same
faults. Which fault (if any) is decided by the first number; which variant of an error answer by
the second.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class FaultKind(enum.Enum):
    NONE = "none"
    RESET = "reset"  # the connection is dropped without an answer
    ERROR = "error"  # a 5xx answer, JSON or a proxy's HTML/text page
    SLOW = "slow"  # the answer is delayed by slow_ms


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    content_type: str
    body: bytes


_JSON = "application/json"
ERROR_ANSWERS: tuple[ErrorAnswer, ...] = (
    ErrorAnswer(
        500,
        _JSON,
        b'{"error": {"message": "The server had an error while processing your request. '
        b'Sorry about that!", "type": "server_error", "param": null, "code": null}}',
    ),
    ErrorAnswer(
        502,
        "text/html",
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n",
    ),
    ErrorAnswer(
        503,
        _JSON,
        b'{"error": {"message": "The engine is currently overloaded, please try again later.", '
        b'"type": "server_error", "param": null, "code": null}}',
    ),
    ErrorAnswer(503, "text/plain", b"upstream connect error or disconnect/reset before headers"),
)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    answer: ErrorAnswer | None = None


NO_FAULT = Fault(FaultKind.NONE)


class FaultPlan:
    """Draws the fault for each request from ``random.Random(seed)``."""

    def __init__(
        self,
        *,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        slow_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        for name, rate in (
            ("error_rate", error_rate),
            ("reset_rate", reset_rate),
            ("slow_rate", slow_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if error_rate + reset_rate + slow_rate > 1.0:
            raise ValueError("error_rate + reset_rate + slow_rate must not exceed 1")
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.slow_rate = slow_rate
        self._random = random.Random(seed)

    @property
    def active(self) -> bool:
        return self.error_rate + self.reset_rate + self.slow_rate > 0.0

    def draw(self) -> Fault:
        first = self._random.random()
        second = self._random.random()
        if first < self.reset_rate:
            return Fault(FaultKind.RESET)
        if first < self.reset_rate + self.error_rate:
            return Fault(FaultKind.ERROR, ERROR_ANSWERS[int(second * len(ERROR_ANSWERS))])
        if first < self.reset_rate + self.error_rate + self.slow_rate:
            return Fault(FaultKind.SLOW)
        return NO_FAULT
