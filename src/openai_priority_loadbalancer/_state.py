"""Per-backend runtime state, kept apart from the frozen ``Backend`` configuration.

Everything here is plain bookkeeping: no I/O, no clock of its own (times are passed in, from the
balancer's injectable monotonic clock), no locking (the balancer holds its lock around every change).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["BackendState", "BreakerState"]

BreakerState = Literal["closed", "open", "half-open"]

LATENCY_WINDOW = 128


class BackendState:
    """What one balancer knows about one backend right now."""

    __slots__ = (
        "backend",
        "cooling_reason",
        "cooling_until",
        "failed",
        "failures",
        "in_flight",
        "index",
        "latencies",
        "limit_requests",
        "probing",
        "remaining_requests",
        "remaining_seq",
        "remaining_tokens",
        "requests",
        "sent",
        "successes",
        "throttled",
    )

    def __init__(self, backend: Backend, index: int) -> None:
        self.backend = backend
        self.index = index
        #: Monotonic time before which the backend is not used (0: available).
        self.cooling_until = 0.0
        #: Why it is cooling ("throttled", "failed", "exhausted"), or None once announced back.
        self.cooling_reason: str | None = None
        #: Consecutive failures (5xx, connection errors); 0 means the breaker is closed.
        self.failures = 0
        #: True while the one request allowed to test the backend (half-open breaker, or budget
        #: believed exhausted) is in flight; other requests pass the backend over meanwhile.
        self.probing = False
        self.in_flight = 0
        #: Requests sent so far; numbers each attempt, to age what a response said about the budget.
        self.sent = 0
        #: Last x-ratelimit-remaining-* seen (None: unknown) and the number of the attempt it came from.
        self.remaining_requests: int | None = None
        self.remaining_tokens: int | None = None
        self.remaining_seq = 0
        #: Last x-ratelimit-limit-requests seen: the budget a fresh window brings (None: unknown).
        self.limit_requests: int | None = None
        self.requests = 0
        self.successes = 0
        self.throttled = 0
        self.failed = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def refill(self) -> None:
        """A rate-limit window has ended: assume its full budget, or let one request find out."""
        self.remaining_requests = self.limit_requests if self.limit_requests is not None else 0
        self.remaining_tokens = None
        self.remaining_seq = self.sent

    def breaker(self, now: float) -> BreakerState:
        if self.failures == 0:
            return "closed"
        return "open" if now < self.cooling_until else "half-open"

    def budget_exhausted(self) -> bool:
        """Whether the backend's last report, less what was sent since, leaves no request or token."""
        if self.remaining_tokens == 0:
            return True
        if self.remaining_requests is None:
            return False
        return self.remaining_requests - (self.sent - self.remaining_seq) <= 0

    def needs_probe(self, now: float) -> bool:
        """Whether only one request at a time may go to the backend (half-open, or budget spent)."""
        return (self.failures > 0 and now >= self.cooling_until) or self.budget_exhausted()
