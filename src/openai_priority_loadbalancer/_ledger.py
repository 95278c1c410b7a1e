"""The ledger: what each answer (or error) of a backend teaches, written into the backends' states.

A 429 sets the backend aside for its deployment (its lane); a 5xx, a connection error or a slow first
byte opens the backend's breaker in every lane; a success records the budget it reports (through
:class:`~._budget.Budgets`); an answer from a failing backend closes its breaker. Each judgement says
whether the answer goes to the caller and what to tell a shared store.

No I/O: the balancer's flow carries out the store calls it returns. It holds the balancer's lock
around every change of state, and emits events outside it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from ._budget import ADMISSION_DELAY_S, Budgets, int_header
from ._cooldown import (
    LIMIT_REQUESTS,
    RETRY_AFTER,
    RateLimitInfo,
    read_count,
    read_rate_limit,
)
from ._cooldown import remaining as remaining_headers
from ._events import (
    AbandonedEvent,
    Event,
    FailedEvent,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
)
from ._store import UNMETERED_S, Reason, SharedState

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence

    from ._http import Response
    from ._lanes import Lane, Lanes
    from ._state import BackendState

__all__ = ["Ledger", "Share", "SLOW"]

logger = logging.getLogger("openai-priority-loadbalancer")

#: A call on the state store: method name ("load", "set_aside", "clear_failure", ...) and its
#: arguments. The async loop calls the method's "a"-prefixed form.
Share = tuple[str, tuple[Any, ...]]

#: ``Attempt.error`` and ``FailedEvent.cause`` of an attempt given up for not answering within its
#: first-byte deadline.
SLOW: Final = "FirstByteTimeout"
_RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})
# The shortest time a 429 sets its backend aside for, doubling with consecutive 429s (throttle_backoff).
MIN_THROTTLE_S: Final = 0.025


class Ledger:
    """Records answers and errors in the states of one balancer.

    Args:
        lanes: the balancer's lanes (one per deployment).
        lock: the balancer's lock.
        clock, wall_clock: its monotonic clock, and the wall clock for events and HTTP-dates.
        emit: hands an event to the ``on_event`` callback; None when there is none.
        sharing: "" without a state store, "state" with one, "budgets" with a ``BudgetStore``.
        default_cooldown_s, max_cooldown_s, failure_backoff_s, failure_backoff_max_s,
        missing_deployment_s: the balancer's options of those names.
        store_takes_cost: whether the budget store's ``reserve`` takes a request's token cost.
    """

    def __init__(
        self,
        lanes: Lanes,
        lock: threading.Lock,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        emit: Callable[[Event], None] | None,
        sharing: str,
        default_cooldown_s: float,
        max_cooldown_s: float,
        failure_backoff_s: float,
        failure_backoff_max_s: float,
        missing_deployment_s: float,
        store_takes_cost: bool = True,
    ) -> None:
        self._lanes = lanes
        self._lock = lock
        self._clock = clock
        self._wall_clock = wall_clock
        self._emit = emit
        self._stores = bool(sharing)
        self._budgets = sharing == "budgets"
        self._default_cooldown_s = default_cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._backoff_s = failure_backoff_s
        self._backoff_max_s = failure_backoff_max_s
        self._missing_s = missing_deployment_s
        self.book = Budgets(
            sharing=self._budgets,
            default_cooldown_s=default_cooldown_s,
            rate_limit=self.rate_limit,
            set_aside=self.set_aside,
            lock=lock,
            takes_cost=store_takes_cost,
        )

    # ------------------------------------------------------------------ answers

    def on_response(
        self, state: BackendState, probe: bool, seq: int, response: Response, started: float, cost: int = 0
    ) -> tuple[bool, list[Share] | None]:
        """Record ``response``. Returns whether it goes to the caller (else: discard it, try another
        backend), and what to tell the shared store (None without one)."""
        status = response.status_code
        headers = response.headers
        now = self._clock()
        recovered = 0
        spent_s: float | None = None  # how long the backend is set aside because its budget is spent
        shares: list[Share] | None = [] if self._stores else None
        with self._lock:
            self._ended(state, probe)
            state.probe_first = False
            state.add_latency(now - started)
            if state.failures and status not in _RETRY_STATUSES:
                # It answered: whatever the answer says of the request, the backend is up again.
                logger.info("backend recovered backend=%s status=%d", state.backend.id, status)
                recovered = state.failures
                for s in self._lanes.siblings(state.index):
                    s.failures = 0
                    if s is not state and s.cooling_reason == "failed" and s.cooling_until > now:
                        s.cooling_until = now  # its other deployments need not wait out the breaker
                if shares is not None:
                    shares.append(("clear_failure", (self._lanes.backend_key(state.index),)))
            if status == 429:
                state.throttled += 1
                info = self.rate_limit(headers)
                if info.cooldown_s is not None:
                    state.learn_window(info.cooldown_s)
                state.window_began = None  # the answer after the wait begins the next window
                cooldown = info.cooldown_s if info.cooldown_s is not None else self._default_cooldown_s
                cooldown = max(cooldown, self.throttle_backoff(state, started, now))
                self.set_aside(state, now, cooldown, "throttled", status)
                # While set aside: what it said of its budget; a 429 that says nothing has none left.
                left = 0 if info.remaining_requests is None else info.remaining_requests
                state.reported = (left, info.remaining_tokens)
                # When the cooldown ends, so has the window: expect its full budget where the backend
                # told its limit, else let one request find out before the others follow.
                state.limit_requests = int_header(headers, LIMIT_REQUESTS, state.limit_requests)
                state.refill(state.cooling_until + self._default_cooldown_s)
                if self._budgets:
                    report = (0, now + cooldown, state.limit_requests, False, info.remaining_tokens)
                    self.book.pending[state.key] = report
                keep = False
                event: Event = ThrottledEvent(
                    self._wall_clock(), state.backend.id, cooldown, now - started, state.deployment
                )
                if shares is not None:
                    shares.append(self.record(state, "throttled", cooldown))
            elif status in _RETRY_STATUSES:
                # Only Retry-After counts on a 5xx: a reset header there speaks of the budget, not the outage.
                retry = {k: v for k in RETRY_AFTER if (v := headers.get(k)) is not None}
                info = self.rate_limit(retry)
                event = self.fail(state, now, info.cooldown_s or 0.0, str(status), started, shares)
                keep = False
            else:
                keep = True
                if status < 400:
                    state.successes += 1
                    state.throttle_streak = 0
                    state.add_success(now - started)
                elif status < 500:
                    state.rejected += 1
                (requests_name, requests_left), (tokens_name, tokens_left) = remaining_headers(headers)
                if requests_left is not None or tokens_left is not None:
                    # The backend admitted the attempt (and timed its reset) about one network hop
                    # after it was sent: half the answer's time, and no more than ADMISSION_DELAY_S.
                    admitted = started + min((now - started) / 2, ADMISSION_DELAY_S)
                    remaining = read_count(requests_name, requests_left)
                    tokens = read_count(tokens_name, tokens_left)
                    # Sharing budgets needs every answer's reset; otherwise it is read only when needed.
                    whole = self.rate_limit(headers) if self._budgets else None
                    spent = self.book.note(
                        state,
                        seq,
                        headers,
                        admitted,
                        remaining,
                        tokens,
                        whole,
                        cost,
                    )
                    if spent is not None:
                        spent_s = state.cooling_until - now
                        if shares is not None:
                            shares.append(self.record(state, "exhausted", *spent))
                    if self._budgets and (remaining is not None or tokens is not None):
                        self.book.pending[state.key] = self.book.report(
                            state, headers, whole, admitted, remaining
                        )
                elif status < 400:
                    # It took a request and says nothing of its budget: no belief that it is spent survives.
                    state.forget_budget()
                    if self._budgets:
                        self.book.pending[state.key] = (None, now + UNMETERED_S, None, False, None)
                if self._emit is not None:
                    event = ServedEvent(
                        self._wall_clock(), state.backend.id, status, now - started, state.deployment
                    )
        if self._emit is not None:
            self._emit(event)
            if recovered:
                self._emit(RecoveredEvent(self._wall_clock(), state.backend.id, recovered, state.deployment))
            if spent_s is not None:
                self._emit(
                    SetAsideEvent(
                        self._wall_clock(), state.backend.id, "exhausted", spent_s, False, state.deployment
                    )
                )
        return keep, shares

    def throttle_backoff(self, state: BackendState, started: float, now: float) -> float:
        """The least a 429 sets its backend aside for, whatever its headers say (caller holds the lock).

        A backend that throttles while saying "retry now" (``Retry-After: 0``, ``retry-after-ms: 1``, a
        past date, or ``max_cooldown_s=0``) would otherwise be tried again every few milliseconds:
        ``MIN_THROTTLE_S``, doubling with each further 429 of an attempt sent after the last one
        arrived (the attempts of one burst are one 429), up to ``default_cooldown_s``. A success
        starts the count again.
        """
        if started > state.throttled_at or not state.throttle_streak:
            state.throttle_streak += 1
        state.throttled_at = now
        backoff = MIN_THROTTLE_S * 2.0 ** min(state.throttle_streak - 1, 62)
        return min(backoff, max(self._default_cooldown_s, MIN_THROTTLE_S))

    def rate_limit(self, headers: Any) -> RateLimitInfo:
        """Every rate-limit header of an answer, read with this balancer's clock and bounds."""
        return read_rate_limit(headers, wall_now=self._wall_clock(), max_cooldown_s=self._max_cooldown_s)

    def record(
        self,
        state: BackendState,
        reason: Reason,
        cooldown_s: float,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
        key: str | None = None,
    ) -> Share:
        """The store call that shares ``state``'s set-aside (under ``key``, default its own)."""
        shared = SharedState(cooldown_s, reason, state.failures, remaining_requests, remaining_tokens)
        return ("set_aside", (state.key if key is None else key, shared))

    # ------------------------------------------------------------------ errors and failures

    def on_error(
        self, state: BackendState, probe: bool, exc: BaseException, started: float, cause: str | None = None
    ) -> tuple[float, str, list[Share] | None]:
        """Record an attempt that raised ``exc`` (``cause``: what it is called, if not its type name).
        Returns when it ended, what it is called, and what to tell the store."""
        now = self._clock()
        shares: list[Share] | None = [] if self._stores else None
        what = type(exc).__name__ if cause is None else cause
        with self._lock:
            self._ended(state, probe)
            state.probe_first = False
            if cause == SLOW:
                state.slow += 1
            event = self.fail(state, now, 0.0, what, started, shares)
        if self._emit is not None:
            self._emit(event)
        return now, what, shares

    def fail(
        self,
        state: BackendState,
        now: float,
        retry_after: float,
        what: str,
        started: float,
        shares: list[Share] | None,
    ) -> FailedEvent:
        """Open the backend's breaker, in every lane: set it aside with exponential backoff on
        consecutive failures (caller holds the lock); the store calls sharing it go to ``shares``."""
        state.failed += 1
        failures = state.failures + 1
        backoff = min(self._backoff_s * 2.0 ** min(failures - 1, 62), self._backoff_max_s)
        cooldown = max(backoff, retry_after)
        state.failures = failures
        state.reported = None
        self.set_aside(state, now, cooldown, "failed", what)
        for s in self._lanes.siblings(state.index):
            s.failures = max(s.failures, failures)
            if s is not state and now + cooldown > s.cooling_until:  # a longer 429 of its own stays
                s.cooling_until, s.cooling_reason, s.reported = now + cooldown, "failed", None
        if shares is not None:  # under the backend's own key: every deployment, in every process
            shares.append(self.record(state, "failed", cooldown, key=self._lanes.backend_key(state.index)))
        return FailedEvent(
            self._wall_clock(), state.backend.id, what, failures, cooldown, now - started, state.deployment
        )

    def release(self, state: BackendState, probe: bool, started: float) -> None:
        """Undo the in-flight count of an attempt that ended for a reason that is not the backend's."""
        with self._lock:
            self._ended(state, probe)
        if self._emit is not None:
            self._emit(
                AbandonedEvent(
                    self._wall_clock(), state.backend.id, self._clock() - started, state.deployment
                )
            )

    def unchoose(self, state: BackendState, probe: bool, wait_s: float | None, now: float) -> None:
        """Undo a choice the shared budget refused (or that was cancelled before it was sent)."""
        wait_s = wait_s or 0.0
        with self._lock:
            self._ended(state, probe)
            state.requests -= 1
            set_aside = wait_s > 0 and now + wait_s > state.cooling_until  # else a shared record did
            if set_aside:
                self.set_aside(state, now, wait_s, "exhausted", "shared budget")
        if set_aside and self._emit is not None:
            self._emit(
                SetAsideEvent(
                    self._wall_clock(), state.backend.id, "exhausted", wait_s, True, state.deployment
                )
            )

    def _ended(self, state: BackendState, probe: bool) -> None:
        """``state``'s attempt is no longer in flight; a breaker's probe is back for every deployment
        (caller holds the lock)."""
        state.end_attempt(probe)
        if probe and state.failures:
            for s in self._lanes.siblings(state.index):
                s.probing = False

    def set_aside(
        self, state: BackendState, now: float, seconds: float, reason: str, what: object, log: bool = True
    ) -> None:
        until = now + seconds
        if until > state.cooling_until:
            state.cooling_until = until
        state.cooling_reason = reason
        if log:
            logger.info(
                "backend set aside backend=%s deployment=%s reason=%s cause=%s for_s=%.3f",
                state.backend.id,
                state.deployment,
                reason,
                what,
                state.cooling_until - now,
            )

    # ------------------------------------------------------------------ a deployment a backend lacks

    def lacks(
        self, lane: Lane, state: BackendState, tried: set[int], now: float
    ) -> tuple[bool, Share | None]:
        """Note that ``state``'s backend lacks ``lane``'s deployment (it answered 404 for it). Returns
        whether another backend, not tried by this request, may have it (else the 404 goes to the
        caller), and the store call that tells the other balancers (None without a store)."""
        with self._lock:
            state.missing_until = now + self._missing_s
            lane.missing = True
        share = self.record(state, "missing", self._missing_s) if self._stores else None
        logger.info(
            "deployment not found on backend backend=%s deployment=%s set_aside_s=%.0f",
            state.backend.id,
            lane.deployment,
            self._missing_s,
        )
        missing = lane.lacking(now)
        return any(s.index not in tried and s.index not in missing for s in lane.states), share

    # ------------------------------------------------------------------ what other balancers shared

    def merge_shared(self, records: Sequence[SharedState | None] | None, lane: Lane) -> None:
        """Adopt what other balancers shared of ``lane``'s backends (``records`` of its
        ``shared_keys``): a later deadline, and an open breaker's failure count."""
        if not records:
            return
        now = self._clock()
        adopted: list[SetAsideEvent] = []
        n = len(lane.states)
        pairs = list(zip(lane.states, records[:n], strict=False))
        if len(records) > n:  # then the backends' own records: of those, their open breakers
            pairs += [
                (s, r) for s, r in zip(lane.states, records[n:], strict=False) if r and r.reason == "failed"
            ]
        with self._lock:
            for state, record in pairs:
                if record is None or record.cooling_s <= 0:
                    continue
                if record.reason == "missing":  # another balancer found it lacks the deployment
                    state.missing_until = max(state.missing_until, now + record.cooling_s)
                    lane.missing = True
                    continue
                if record.reason == "throttled":  # what is left of a wait another balancer was told
                    state.learn_window(record.cooling_s)
                    state.window_began = None
                until = now + record.cooling_s
                if until <= state.cooling_until:
                    continue
                was_available = now >= state.cooling_until
                state.cooling_until = until
                if record.failures > state.failures:
                    state.failures = record.failures
                if was_available:
                    state.cooling_reason = record.reason
                    if record.reason != "failed":
                        state.refill(until + self._default_cooldown_s)
                    logger.info(
                        "backend set aside by another balancer backend=%s deployment=%s reason=%s for_s=%.3f",
                        state.backend.id,
                        state.deployment,
                        record.reason,
                        record.cooling_s,
                    )
                    if self._emit is not None:
                        adopted.append(
                            SetAsideEvent(
                                self._wall_clock(),
                                state.backend.id,
                                record.reason,
                                record.cooling_s,
                                True,
                                state.deployment,
                            )
                        )
        if self._emit is not None:
            for event in adopted:
                self._emit(event)
