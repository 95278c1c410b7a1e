"""Per-backend runtime state, kept apart from the frozen ``Backend`` configuration.

Everything here is plain bookkeeping: no I/O, no clock of its own (times are passed in, from the
balancer's injectable monotonic clock), no locking (the balancer holds its lock around every change).
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["BackendState", "BreakerState"]

BreakerState = Literal["closed", "open", "half-open"]

#: How many recent latencies the percentiles are taken over.
LATENCY_WINDOW = 64
#: While a backend's budget is unknown its first request goes alone, for about one round trip: a 429
#: comes back in milliseconds, so a request unanswered past that was admitted, and the others follow.
#: The round trip is PROBE_HOLD_FACTOR times the backend's fastest recent success, within
#: [PROBE_HOLD_MIN_S, PROBE_HOLD_MAX_S] (the longest while it has served nothing). Successes only: a
#: 429 comes back sooner than any success, and a hold that short lets the others go before the
#: probe's own answer (and the budget it reports) is back, into 429s of their own.
#: FASTEST_SUCCESS_DECAY lets the fastest success "forget": it may grow by that factor per success.
PROBE_HOLD_FACTOR = 4.0
PROBE_HOLD_MIN_S = 0.05
PROBE_HOLD_MAX_S = 0.5
FASTEST_SUCCESS_DECAY = 1.25


class BackendState:
    """What one balancer knows about one backend (for one deployment: see ``_lanes``) right now."""

    __slots__ = (
        "backend",
        "budget_estimated",
        "budget_expires",
        "cooling_reason",
        "cooling_until",
        "cost_sent",
        "deployment",
        "failed",
        "failures",
        "fastest_success_s",
        "in_flight",
        "index",
        "key",
        "latencies",
        "latency_count",
        "limit_requests",
        "missing_until",
        "pinned",
        "probe_first",
        "probe_sent_at",
        "probing",
        "rejected",
        "remaining_requests",
        "remaining_seq",
        "remaining_tokens",
        "report_seq",
        "reported",
        "requests",
        "sent",
        "slow",
        "successes",
        "throttle_streak",
        "throttled",
        "throttled_at",
        "tokens_mark",
        "window_began",
        "window_s",
    )

    def __init__(self, backend: Backend, index: int, deployment: str | None = None, key: str = "") -> None:
        self.backend = backend
        self.index = index
        #: The deployment this state is of (None: requests naming none); see ``_lanes``.
        self.deployment = deployment
        #: Its name in a shared state store ("" without one).
        self.key = key
        #: Monotonic time until which the backend is believed to lack the deployment (a 404 said so).
        self.missing_until = -math.inf
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
        #: The number of the attempt whose report is kept: reports of earlier attempts are ignored.
        self.report_seq = 0
        #: Monotonic time after which the remaining-* report is too old to believe (its window has reset).
        self.budget_expires = math.inf
        #: True when ``budget_expires`` is an estimate (the backend named no reset): when it passes, the
        #: next request goes alone, whatever the limit, in case the window has not reset after all.
        self.budget_estimated = False
        #: When the current window began, as far as this balancer knows: about when the first request
        #: answered in it was admitted (None: no answer since a 429 said when the last one ends).
        self.window_began: float | None = None
        #: The longest window the backend's answers have shown (a reset or a wait it named; None: none
        #: yet): how long a window is believed to last when the backend does not say when it resets.
        self.window_s: float | None = None
        #: True while the budget is unknown (before the first answer, and after a window ended with the
        #: limit unknown): one request at a time until one answers, rather than a burst into 429s.
        self.probe_first = True
        #: When the request now probing the backend was sent (monotonic).
        self.probe_sent_at = -math.inf
        #: Last x-ratelimit-limit-requests seen: the budget a fresh window brings (None: unknown).
        self.limit_requests: int | None = None
        self.requests = 0
        #: Answers to requests sent here because they name a stored object this backend holds.
        self.pinned = 0
        self.successes = 0
        self.throttled = 0
        #: Consecutive 429s (those of one burst of attempts count once), and when the last one arrived.
        self.throttle_streak = 0
        self.throttled_at = -math.inf
        self.failed = 0
        #: Attempts given up because the backend had not begun answering within the first-byte deadline.
        self.slow = 0
        #: 4xx answers other than 429: the caller's problem (or a deployment the backend lacks).
        self.rejected = 0
        #: The last LATENCY_WINDOW latencies (seconds), a ring: a flat array of doubles, no objects.
        self.latencies = array("d")
        self.latency_count = 0
        #: About the fastest recent success (seconds; None before the first): see PROBE_HOLD_FACTOR.
        self.fastest_success_s: float | None = None
        #: Tokens the attempts sent so far were estimated to cost, and that sum when the tokens
        #: report kept was taken: the believed remaining tokens are the report less the difference.
        self.cost_sent = 0
        self.tokens_mark = 0
        #: The remaining requests and tokens the answer that set the backend aside reported (a 429, a
        #: spent budget): what stats show while it is set aside, rather than the next window's budget.
        self.reported: tuple[int | None, int | None] | None = None

    def end_attempt(self, probe: bool) -> None:
        """One attempt is no longer in flight (and, if it was the probe, the probe is back)."""
        self.in_flight -= 1
        if probe:
            self.probing = False

    def tokens_short(self, now: float, cost: int) -> bool:
        """Whether the tokens believed left (last report less the costs sent since) cannot fit ``cost``."""
        tokens = self.remaining_tokens
        if tokens is None or now >= self.budget_expires:
            return False
        return tokens - (self.cost_sent - self.tokens_mark) < cost

    def probe_hold_s(self) -> float:
        """How long the first request to a backend whose budget is unknown goes alone (see PROBE_HOLD_*)."""
        fastest = self.fastest_success_s
        if fastest is None:
            return PROBE_HOLD_MAX_S
        return min(max(PROBE_HOLD_FACTOR * fastest, PROBE_HOLD_MIN_S), PROBE_HOLD_MAX_S)

    def add_success(self, seconds: float) -> None:
        """A success took ``seconds``: the fastest recent success, forgetting slowly (see above)."""
        fastest = self.fastest_success_s
        self.fastest_success_s = seconds if fastest is None else min(seconds, fastest * FASTEST_SUCCESS_DECAY)

    def held_by_probe(self, now: float) -> bool:
        """Whether the backend's budget is unknown and its probe has been out less than its hold."""
        return self.probe_first and self.probing and now < self.probe_sent_at + self.probe_hold_s()

    def add_latency(self, seconds: float) -> None:
        if len(self.latencies) < LATENCY_WINDOW:
            self.latencies.append(seconds)
        else:
            self.latencies[self.latency_count % LATENCY_WINDOW] = seconds
        self.latency_count += 1

    def refill(self, expires: float, probe: bool = False) -> None:
        """A rate-limit window ends (at the current cooldown's end): expect its full budget, if known.

        With the limit known (and no ``probe`` asked for), the budget is believed until ``expires``;
        without it, the first request after the cooldown goes alone and its answer tells how much there is.
        """
        self.remaining_tokens = None
        self.remaining_seq = self.report_seq = self.sent
        self.budget_estimated = False
        if self.limit_requests is not None and not probe:
            self.remaining_requests = self.limit_requests
            self.budget_expires = expires
            self.probe_first = False
        else:
            self.remaining_requests = None
            self.budget_expires = math.inf
            self.probe_first = True

    def forget_budget(self) -> None:
        self.remaining_requests = self.remaining_tokens = None
        self.budget_expires = math.inf
        self.budget_estimated = False

    def learn_window(self, seconds: float) -> None:
        """The backend named a reset or a wait this long: its windows last at least about as long."""
        seconds = math.ceil(round(seconds * 10, 6)) / 10  # to a tenth of a second, as the stores do
        if seconds > 0 and (self.window_s is None or seconds > self.window_s):
            self.window_s = seconds

    def believed_budget(self, now: float) -> tuple[int | None, int | None]:
        """The remaining requests (reported, less sent since) and tokens believed now; None: unknown."""
        if now >= self.budget_expires:
            fresh = self.remaining_requests is not None and not self.budget_estimated
            return (self.limit_requests if fresh else None), None
        tokens = self.remaining_tokens
        if tokens is not None:
            tokens = max(0, tokens - (self.cost_sent - self.tokens_mark))
        if self.remaining_requests is None:
            return None, tokens
        return max(0, self.remaining_requests - (self.sent - self.remaining_seq)), tokens

    def breaker(self, now: float) -> BreakerState:
        if self.failures == 0:
            return "closed"
        return "open" if now < self.cooling_until else "half-open"

    def budget_exhausted(self, now: float) -> bool:
        """Whether the backend's last report, less what was sent since, leaves no request or token.

        A report is believed until ``budget_expires`` (its reset, or one default window): after that
        its window has ended, and a new one starts (see :meth:`refill`).
        """
        if self.remaining_requests is None and self.remaining_tokens is None:
            return False
        if now >= self.budget_expires:
            self.refill(math.inf, self.budget_estimated)
        if self.remaining_tokens == 0:
            return True
        if self.remaining_requests is None:
            return False
        return self.remaining_requests - (self.sent - self.remaining_seq) <= 0
