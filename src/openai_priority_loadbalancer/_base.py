"""BaseLoadBalancer: every decision of the balancer, and no I/O.

One request is driven by :meth:`BaseLoadBalancer._flow`, a generator that decides and yields *actions*
for the transport to carry out: send this attempt, sleep this long, close this discarded response,
fetch this backend's token. The sync and async transports are thin loops that perform those actions
with ``handle_request`` or ``await handle_async_request``; the logic exists once.

Data flows one way: transport -> flow (choose, build the attempt) -> inner transport -> flow (judge the
response, update the state) -> transport.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from . import _affinity
from ._backend import Backend
from ._budget import ADMISSION_DELAY_S, Budgets, int_header
from ._choice import Choice
from ._cooldown import (
    DEFAULT_MAX_COOLDOWN_S,
    LIMIT_REQUESTS,
    REMAINING_REQUESTS,
    REMAINING_TOKENS,
    RETRY_AFTER,
    RateLimitInfo,
    header,
    read_count,
    read_rate_limit,
)
from ._cost import estimate_cost
from ._deployment import deployment_of
from ._events import (
    AbandonedEvent,
    AttemptEvent,
    Event,
    EventCallback,
    ExhaustedEvent,
    FailedEvent,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
    WaitedEvent,
)
from ._state import PROBE_HOLD_MAX_S, BackendState
from ._stats import BackendStats, Stats, snapshot
from ._store import UNMETERED_S, BudgetStore, Reason, SharedState, StateStore, shared_key

if TYPE_CHECKING:
    from ._affinity import Pin, Pinned
    from ._http import HttpLib, Request, Response

__all__ = ["Attempt", "BackendStats", "BaseLoadBalancer", "Routing", "EXTENSION", "FIRST_BYTE_TIMEOUT"]

logger = logging.getLogger("openai-priority-loadbalancer")

#: Key of ``response.extensions`` under which every response carries its :class:`Routing`.
EXTENSION: Final = "openai_priority_loadbalancer"
#: Key of ``request.extensions`` that sets ``first_byte_timeout_s`` for one request (None: off for it).
FIRST_BYTE_TIMEOUT: Final = "first_byte_timeout_s"
#: ``Attempt.error`` and ``FailedEvent.cause`` of an attempt given up for not answering within its
#: first-byte deadline.
SLOW: Final = "FirstByteTimeout"

# Actions the flow yields to the transport loop.
# value: (the attempt's request, its backend's index); the loop sends back the response or throws the error
SEND: Final = 0
SLEEP: Final = 1  # value: seconds
CLOSE: Final = 2  # value: a response the flow discards
TOKEN: Final = 3  # value: a token provider; the loop sends back the token (awaiting it if needed)
SHARE: Final = 4  # value: a Share for the state store; the loop sends back its result (None if it failed)
READ: Final = 5  # value: a response whose body the flow needs (a short error): the loop reads it

Action = tuple[int, Any]
#: A call on the state store: method name ("load", "set_aside", "clear_failure") and its arguments.
#: The async loop calls the method's "a"-prefixed form.
Share = tuple[str, tuple[Any, ...]]

_RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})
# The soonest Retry-After the synthesized 429 names: a floor that keeps a caller from spinning when a
# backend is free again "now" but was already tried by this request.
_MIN_RETRY_AFTER_S: Final = 0.1
_URL_CACHE_SIZE: Final = 512
# While a probe is out (a half-open breaker, a spent budget), waiting requests look again this often.
_PROBE_POLL_S: Final = 0.02
# The shortest time a 429 sets its backend aside for, doubling with consecutive 429s (_throttle_backoff).
_MIN_THROTTLE_S: Final = 0.025
# The shortest wait: a backend tried by this request and free again "now" is not hammered in a loop.
_MIN_WAIT_S: Final = 0.01
# What Azure's 404 for a deployment a resource lacks says, in its JSON error body.
_DEPLOYMENT_NOT_FOUND: Final = b'"DeploymentNotFound"'
_TOKEN_CHARS: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The headers of an attempt that carry a credential, and the shortest value taken out of an error's text.
_CREDENTIAL_HEADERS: Final = ("api-key", "authorization")
_MIN_SECRET: Final = 4


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a request on one backend."""

    backend: str
    status: int | None
    """The backend's status code, or None when it raised."""
    error: str | None
    """The error's type name when the backend raised (``"ConnectError"``, ...), ``"FirstByteTimeout"``
    when the attempt was given up for not answering within its first-byte deadline, else None."""
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a request went: found in ``response.extensions["openai_priority_loadbalancer"]``."""

    backend: str | None
    """The backend whose response this is, or None for the balancer's own 429."""
    attempts: tuple[Attempt, ...]
    pinned: Pinned | None = None
    """Set when the request named a stored object, and so went to the backend holding it only."""


class BaseLoadBalancer:
    """Backend list, priority selection and throttle bookkeeping shared by both transports.

    Args:
        backends: the endpoints, in any order; priority 1 is best.
        clock: monotonic time source (seconds); injectable for tests.
        wall_clock: wall time source, used only to read ``Retry-After`` HTTP-dates.
        default_cooldown_s: how long a backend answering 429 with no usable header is set aside.
        max_cooldown_s: longest cooldown taken from a header; larger values are clamped.
        failure_backoff_s: how long a backend is set aside after its first consecutive failure
            (5xx, connection error); doubles with each further one...
        failure_backoff_max_s: ...up to this.
        max_wait_s: when every backend is set aside, a request waits up to this long (and never
            beyond its own read timeout) for one to free up, instead of returning a 429 at once.
            0 returns the 429 at once.
        on_event: called with every :data:`~openai_priority_loadbalancer.Event` (attempt,
            served, throttled, failed, ...); what it raises is logged and ignored.
        state: a :class:`~openai_priority_loadbalancer.StateStore` to share cooldowns and open
            breakers with other balancers (other processes, other machines); default: none. If it
            is a :class:`~openai_priority_loadbalancer.BudgetStore` (``MemoryStateStore`` and
            ``RedisStateStore`` are), the balancers also share each backend's request budget: every
            attempt first reserves one of its backend's requests, so that together they send no
            more than its window holds.
        backend_header: name of a response header to set to the id of the backend that served the
            response (off by default).
        affinity: send a request that names a stored object (a response, conversation, file, ...)
            to the backend holding it, learning owners from the answers that create them (default);
            False balances every request as if it named nothing.
        affinity_max_objects: how many objects' owners this balancer remembers (about 75 bytes each).
        affinity_ttl_s: how long a state store keeps an owner (default 30 days, as Azure keeps a
            stored response).
        first_byte_timeout_s: a deadline for a streamed request's attempts (``"stream": true`` in
            its JSON body): a backend that has not begun answering (sent the first byte of its
            response's status line) within it is given up, its breaker opens as for a connection
            error, and the request goes to the next backend. Off (None) by default; one request may
            set its own through ``request.extensions["first_byte_timeout_s"]`` (a number, or None
            for none). It never applies to a non-streamed request (its answer starts only when the
            whole completion is done), nor to one that names a stored object (only the backend
            holding it can answer), nor beyond the request's own read timeout, nor to the last
            backend the request can go to now; and once the headers have come, the body is read
            with the request's own read timeout, so nothing that reached the caller is cut or
            replayed. (Over HTTP/2, httpcore ends the whole connection on a read timeout, and with
            it the other streams in flight on it to that backend; the default transports speak
            HTTP/1.1.)
        missing_deployment_s: how long a deployment a backend answered 404 for (Azure's
            ``DeploymentNotFound``) is set aside on that backend: its requests go to the other
            backends meanwhile (default five minutes).

    Raises:
        TypeError: ``backends`` is not a list of :class:`Backend`.
        ValueError: ``backends`` is empty or names one endpoint twice, or a number is out of range.
    """

    backends: list[Backend]

    def __init__(
        self,
        backends: Iterable[Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        default_cooldown_s: float = 10.0,
        max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S,
        failure_backoff_s: float = 1.0,
        failure_backoff_max_s: float = 60.0,
        max_wait_s: float = 30.0,
        on_event: EventCallback | None = None,
        state: StateStore | None = None,
        backend_header: str | None = None,
        affinity: bool = True,
        affinity_max_objects: int = _affinity.DEFAULT_MAX_OBJECTS,
        affinity_ttl_s: float = _affinity.DEFAULT_OWNER_TTL_S,
        first_byte_timeout_s: float | None = None,
        missing_deployment_s: float = 300.0,
    ) -> None:
        self.backends = _validated(backends)
        for name, value in (
            ("default_cooldown_s", default_cooldown_s),
            ("max_cooldown_s", max_cooldown_s),
            ("failure_backoff_s", failure_backoff_s),
            ("failure_backoff_max_s", failure_backoff_max_s),
            ("max_wait_s", max_wait_s),
            ("missing_deployment_s", missing_deployment_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable, got {type(on_event).__name__}")
        if state is not None and not isinstance(state, StateStore):
            raise TypeError(f"state must be a StateStore, got {type(state).__name__}")
        if backend_header is not None and (
            not isinstance(backend_header, str) or not _TOKEN_CHARS.fullmatch(backend_header)
        ):
            raise ValueError(f"backend_header must be a header name, got {backend_header!r}")
        self._first_byte_s = _first_byte_seconds("first_byte_timeout_s", first_byte_timeout_s)
        self._on_event = on_event
        self._store = state
        # With a store that shares budgets, each attempt reserves one of its backend's requests.
        self._budgets = state if isinstance(state, BudgetStore) else None
        self._backend_header = backend_header
        self._clock = clock
        self._wall_clock = wall_clock
        self._default_cooldown_s = float(default_cooldown_s)
        self._max_cooldown_s = float(max_cooldown_s)
        self._backoff_s = float(failure_backoff_s)
        self._backoff_max_s = float(failure_backoff_max_s)
        self._max_wait_s = float(max_wait_s)
        self._missing_s = float(missing_deployment_s)
        # (backend index, deployment as the caller names it) -> monotonic time until which the
        # backend is believed to lack that deployment (it answered 404 for it).
        self._missing: dict[tuple[int, str], float] = {}
        self._states = [BackendState(backend, i) for i, backend in enumerate(self.backends)]
        # The backends' names in the shared store (only a balancer with a store needs them).
        self._shared_keys = [shared_key(b) for b in self.backends] if state is not None else []
        self._lock = threading.Lock()
        self._random = random.Random()
        self._choice = Choice(self._states)
        self._book = Budgets(
            self._shared_keys,
            sharing=self._budgets is not None,
            default_cooldown_s=self._default_cooldown_s,
            rate_limit=self._rate_limit,
            set_aside=self._set_aside,
            lock=self._lock,
        )
        self._url_cache: dict[tuple[Any, ...], tuple[Any, str]] = {}
        emits = self._emit if on_event is not None else None
        self._affinity = _affinity.Affinity.build(
            affinity,
            self._states,
            state,
            self._shared_keys,
            emits,
            wall_clock,
            affinity_max_objects,
            affinity_ttl_s,
        )

    # ------------------------------------------------------------------ public

    def stats(self) -> Stats:
        """A snapshot of every backend's counters, in configuration order; ``str()`` of it is a table."""
        now = self._clock()
        with self._lock:
            return Stats(snapshot(s, now) for s in self._states)

    def __repr__(self) -> str:
        names = ", ".join(f"{b.id} (priority {b.priority})" for b in self.backends)
        return f"{type(self).__name__}([{names}])"

    # ------------------------------------------------------------------ the flow of one request

    def _flow(self, request: Request, lib: HttpLib) -> Generator[Action, Any, Response]:
        """Drive one request to its final response; see the module docstring for the protocol."""
        attempts: list[Attempt] = []
        tried: set[int] = set()  # backends this request tried since it last waited
        deadline: float | None = None  # set when the request first finds no backend
        awaiting_probe = False  # a backend was refused while another balancer's probe of it is out
        shared_hold_until = -math.inf  # the latest such a probe holds this request back
        emit = self._on_event
        loads = self._store is not None and self._budgets is None
        # A request naming a stored object goes only where the object is (see _affinity).
        pin: Pin | None = self._affinity.examine(request) if self._affinity is not None else None
        if pin is not None and (lookup := pin.lookup()) is not None:
            pin.adopt((yield (SHARE, lookup)))
        # A streamed request's first-byte deadline: (seconds, the caller's timeouts, its read timeout).
        # None for a request naming a stored object: only the backend holding it can answer.
        first_byte_s = request.extensions.get(FIRST_BYTE_TIMEOUT, self._first_byte_s)
        first_byte = (
            None
            if first_byte_s is None or (pin is not None and pin.bound)
            else _first_byte_limit(request, first_byte_s)
        )
        deployment: str | None = None  # read only once a backend is known to lack some deployment
        deployment_read = False
        # What the request costs in tokens, as Azure estimates it (embeddings generate none).
        cost = estimate_cost(request.content, generates=b"/embeddings" not in request.url.raw_path)
        while True:
            if loads:
                self._merge_shared((yield (SHARE, ("load", (self._shared_keys,)))))
            now = self._clock()
            if pin is not None:
                tried |= pin.excluded(len(self._states))
            skip = tried
            if self._missing and pin is None:
                if not deployment_read:
                    deployment, deployment_read = deployment_of(request.url.raw_path, request.content), True
                if deployment is not None:
                    missing = self._missing_on(deployment, now)
                    # Lacking everywhere: tried anyway, and the first 404 goes to the caller.
                    if missing and len(missing) < len(self._states):
                        skip = tried | missing
            state, probe, seq = self._choose(now, skip, cost)
            if state is None:
                among = pin.among() if pin is not None else None
                if deadline is None:
                    deadline = now + self._wait_budget(request)
                delay = self._next_chance(now, awaiting_probe, among)
                if now + delay > deadline:
                    # Never a 429 only because a probe is out: it holds the others for a round trip at most.
                    held = max(self._probe_release(now, among), shared_hold_until)
                    if held <= now:
                        return self._synthesize_429(lib, request, now, attempts, among, pin)
                    delay = max(min(delay, held - now), _MIN_WAIT_S)
                logger.debug("waiting for a backend wait_s=%.3f", delay)
                yield (SLEEP, delay)
                if emit is not None:
                    self._emit(WaitedEvent(self._wall_clock(), self._clock() - now))
                tried.clear()
                awaiting_probe = False
                continue
            tried.add(state.index)
            backend = state.backend
            shared_probe = False
            if self._budgets is not None:
                try:
                    reservation = yield (SHARE, ("reserve", self._book.reserve_args(state, now)))
                except BaseException:
                    self._unchoose(state, probe, None, now)
                    raise
                if reservation is not None:  # None: the store failed, and local state decides
                    self._merge_shared(reservation.records)
                    if not reservation.granted:
                        self._unchoose(state, probe, reservation.wait_s, now)
                        if not reservation.wait_s:  # another balancer's probe is out
                            awaiting_probe = True
                            if shared_hold_until == -math.inf:
                                shared_hold_until = now + PROBE_HOLD_MAX_S
                        continue
                    shared_probe = reservation.probe
                    if not shared_probe and probe and state.probe_first:
                        # The store knows the budget, or another balancer's probe was let by: the
                        # others need not wait for ours.
                        with self._lock:
                            state.probe_sent_at = -math.inf
            if emit is not None:
                self._emit(AttemptEvent(self._wall_clock(), backend.id, backend.priority, probe))
            token: str | None = None
            if backend.azure_ad_token_provider is not None:
                try:
                    token = yield (TOKEN, backend.azure_ad_token_provider)
                except BaseException:
                    self._release(state, probe, now)
                    if shared_probe:
                        yield self._end_probe(state)
                    raise
            try:
                attempt = self._attempt_request(lib, request, backend, token)
            except BaseException:
                self._release(state, probe, now)
                if shared_probe:
                    yield self._end_probe(state)
                raise
            # The attempt's own timeouts, with the deadline as its read timeout until the headers come.
            limited = None if first_byte is None else self._limit_first_byte(attempt, first_byte, now, tried)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "attempt backend=%s priority=%d method=%s path=%s",
                    backend.id,
                    backend.priority,
                    request.method,
                    request.url.path,
                )
            try:
                response: Response = yield (SEND, (attempt, state.index))
            except lib.failover_errors as exc:
                record, share = self._on_error(state, probe, exc, now)
                attempts.append(record)
                yield from self._settle(state, shared_probe, [share] if share is not None else None)
                if pin is not None and pin.keep_error():
                    raise  # the owner of the object named failed: no other backend can answer
                continue
            except lib.silent_errors as exc:
                slow = limited is not None and isinstance(exc, lib.ReadTimeout)
                record, share = self._on_error(state, probe, exc, now, SLOW if slow else None)
                yield from self._settle(state, shared_probe, [share] if share is not None else None)
                if not slow:
                    raise
                attempts.append(record)  # no byte came: the request goes to the next backend
                continue
            except BaseException as exc:
                self._release(state, probe, now)
                if shared_probe:  # it ends unanswered: let the next request probe, not in 10 s
                    yield self._end_probe(state)
                _scrub_credentials(exc, attempt)
                raise
            if limited is not None:  # the headers came in time: the body is read with the caller's timeout
                limited[0]["read"] = limited[1]
            elapsed = self._clock() - now
            attempts.append(Attempt(backend.id, response.status_code, None, elapsed))
            keep, shares = self._on_response(state, probe, seq, response, now, cost)
            if shares or shared_probe:
                yield from self._settle(state, shared_probe, shares, response)
            if pin is not None:
                if pin.must_read(response):
                    try:
                        yield (READ, response)
                    except GeneratorExit:
                        raise
                    except BaseException:  # cancelled or cut: no one else will close it
                        yield (CLOSE, response)
                        raise
                keep = pin.judge(state, response, keep)
                if keep and (learned := pin.served(state, response, lib)) is not None:
                    yield from self._settle(state, False, [learned], response)
            elif keep and response.status_code == 404:
                if not deployment_read:
                    deployment, deployment_read = deployment_of(request.url.raw_path, request.content), True
                if deployment is not None:
                    # Only Azure's body tells a missing deployment from another 404: a short error
                    # body, read here (the caller still gets all of it) and only on a 404.
                    try:
                        yield (READ, response)
                    except lib.failover_errors:
                        yield (CLOSE, response)
                        continue
                    if _DEPLOYMENT_NOT_FOUND in response.content and self._lacks(
                        state, deployment, tried, now
                    ):
                        yield (CLOSE, response)  # another backend may have the deployment
                        continue
            if keep:
                response.extensions[EXTENSION] = Routing(
                    backend.id, tuple(attempts), pin.why if pin is not None else None
                )
                if self._backend_header is not None:
                    response.headers[self._backend_header] = backend.id
                return response
            yield (CLOSE, response)

    def _missing_on(self, deployment: str, now: float) -> set[int]:
        """The backends believed to lack ``deployment`` now (expired beliefs are forgotten)."""
        missing: set[int] = set()
        with self._lock:
            for key, until in list(self._missing.items()):
                if until <= now:
                    del self._missing[key]
                elif key[1] == deployment:
                    missing.add(key[0])
        return missing

    def _lacks(self, state: BackendState, deployment: str, tried: set[int], now: float) -> bool:
        """Note that ``state``'s backend lacks ``deployment`` (it answered 404); whether another
        backend, not tried by this request, may have it (else the 404 goes to the caller)."""
        with self._lock:
            self._missing[(state.index, deployment)] = now + self._missing_s
        logger.info(
            "deployment not found on backend backend=%s deployment=%s set_aside_s=%.0f",
            state.backend.id,
            deployment,
            self._missing_s,
        )
        missing = self._missing_on(deployment, now)
        return any(s.index not in tried and s.index not in missing for s in self._states)

    def _emit(self, event: Event) -> None:
        """Hand ``event`` to the ``on_event`` callback; whatever it raises is logged, never propagated."""
        callback = self._on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            logger.warning("on_event callback raised on a %s event; ignored", event.kind, exc_info=True)

    def _merge_shared(self, records: Sequence[SharedState | None] | None) -> None:
        """Adopt what other balancers shared: a later deadline, and an open breaker's failure count."""
        if not records:
            return
        now = self._clock()
        adopted: list[SetAsideEvent] = []
        with self._lock:
            for state, record in zip(self._states, records, strict=False):
                if record is None or record.cooling_s <= 0:
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
                        "backend set aside by another balancer backend=%s reason=%s for_s=%.3f",
                        state.backend.id,
                        record.reason,
                        record.cooling_s,
                    )
                    if self._on_event is not None:
                        adopted.append(
                            SetAsideEvent(
                                self._wall_clock(), state.backend.id, record.reason, record.cooling_s, True
                            )
                        )
        for event in adopted:
            self._emit(event)

    def _settle(
        self,
        state: BackendState,
        shared_probe: bool,
        shares: Sequence[Share] | None,
        response: Response | None = None,
    ) -> Generator[Action, Any, None]:
        """Tell the store what an attempt found, then end this balancer's shared probe of its backend
        (if it holds it). Interrupted there (a cancellation, ...), it still ends the probe, and closes
        ``response`` (no one else will: the caller gets the error), before the error goes on."""
        probe_open = shared_probe
        try:
            for share in shares or ():
                yield (SHARE, share)
            if probe_open:
                yield self._end_probe(state)
                probe_open = False
        except GeneratorExit:
            raise
        except BaseException:
            if probe_open:  # else every balancer is refused the backend until the probe's TTL
                try:
                    yield self._end_probe(state)
                except GeneratorExit:
                    raise
                except BaseException:  # the first error is the one that goes on
                    pass
            if response is not None:
                yield (CLOSE, response)
            raise

    def _end_probe(self, state: BackendState) -> Action:
        """The action that ends this balancer's shared probe of ``state``'s backend, however it ended."""
        return (SHARE, ("report", (self._book.probe_report(state, self._clock()),)))

    def _unchoose(self, state: BackendState, probe: bool, wait_s: float | None, now: float) -> None:
        """Undo a choice the shared budget refused (or that was cancelled before it was sent)."""
        wait_s = wait_s or 0.0
        with self._lock:
            state.end_attempt(probe)
            state.requests -= 1
            set_aside = wait_s > 0 and now + wait_s > state.cooling_until  # else a shared record did
            if set_aside:
                self._set_aside(state, now, wait_s, "exhausted", "shared budget")
        if set_aside and self._on_event is not None:
            self._emit(SetAsideEvent(self._wall_clock(), state.backend.id, "exhausted", wait_s, True))

    def _limit_first_byte(
        self, attempt: Request, first_byte: tuple[float, dict[str, Any], Any], now: float, tried: set[int]
    ) -> tuple[dict[str, Any], Any] | None:
        """Give ``attempt`` its own timeouts, the first-byte deadline as their read timeout; return them
        and the caller's read timeout, or None (the attempt keeps the caller's timeouts).

        Not when no other backend could take the request now: the last one left is waited for as
        long as the caller's own timeout allows. HTTP cores read the read timeout from the request's
        extensions when they read the response's headers, and again when the body's first read
        starts: the flow puts the caller's back into the returned dict once the headers have come.
        """
        if not any(
            s.index not in tried and now >= s.cooling_until and not (s.probing and s.failures)
            for s in self._states
        ):
            return None
        seconds, timeouts, read = first_byte
        limited = {**timeouts, "read": seconds}
        attempt.extensions["timeout"] = limited
        return limited, read

    # ------------------------------------------------------------------ choosing

    def _choose(self, now: float, tried: set[int], cost: int = 0) -> tuple[BackendState | None, bool, int]:
        """Pick the backend for the next attempt and count it in flight (see :meth:`Choice.choose`)."""
        with self._lock:
            return self._choice.choose(now, tried, self._random, cost)

    # ------------------------------------------------------------------ building an attempt

    def _attempt_request(
        self, lib: HttpLib, request: Request, backend: Backend, token: str | None
    ) -> Request:
        """A copy of ``request`` addressed to ``backend``, with its credentials; ``request`` is untouched."""
        url, host = self._backend_url(request.url, backend)
        stream = request.stream
        body = None
        if backend.deployments and request.url.raw_path.startswith(b"/openai/v1/"):
            body = _rewrite_model(request.content, backend.deployments)
            if body is not None:
                stream = lib.module.ByteStream(body)
        attempt: Request = lib.Request(
            request.method, url, headers=request.headers, stream=stream, extensions=request.extensions
        )
        headers = attempt.headers  # the attempt's own copy
        headers["Host"] = host
        if body is not None:
            # The new body has a length: a chunked upload's framing header would frame it twice.
            headers["Content-Length"] = str(len(body))
            if "transfer-encoding" in headers:
                del headers["transfer-encoding"]
        if backend.api_key is not None:
            headers["api-key"] = backend.api_key
            if "authorization" in headers:
                del headers["authorization"]
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
            if "api-key" in headers:
                del headers["api-key"]
        return attempt

    def _backend_url(self, url: Any, backend: Backend) -> tuple[Any, str]:
        """``url`` addressed to ``backend``, and its ``Host`` header; cached per backend and URL."""
        key = (type(url), id(backend), url.scheme, url.raw_host, url.port, url.raw_path)
        cached = self._url_cache.get(key)
        if cached is not None:
            return cached
        raw_path: bytes = url.raw_path
        if backend.deployments:
            raw_path = _rewrite_deployment(raw_path, backend.deployments)
        if backend.base_path:
            raw_path = backend.base_path.encode("ascii") + raw_path
        if backend.scheme is not None:
            new = url.copy_with(
                scheme=backend.scheme, host=backend.hostname, port=backend.port, raw_path=raw_path
            )
        else:
            port = backend.port if backend.port is not None else url.port
            new = url.copy_with(host=backend.hostname, port=port, raw_path=raw_path)
        if len(self._url_cache) >= _URL_CACHE_SIZE:
            self._url_cache.clear()
        entry = self._url_cache[key] = (new, new.netloc.decode("ascii"))
        return entry

    # ------------------------------------------------------------------ judging

    def _on_response(
        self, state: BackendState, probe: bool, seq: int, response: Response, started: float, cost: int = 0
    ) -> tuple[bool, list[Share] | None]:
        """Record ``response``. Returns whether it goes to the caller (else: discard it, try another
        backend), and what to tell the shared store (None without one)."""
        status = response.status_code
        headers = response.headers
        now = self._clock()
        recovered = 0
        spent_s: float | None = None  # how long the backend is set aside because its budget is spent
        shares: list[Share] | None = [] if self._store is not None else None
        with self._lock:
            state.end_attempt(probe)
            state.probe_first = False
            state.add_latency(now - started)
            if state.failures and status not in _RETRY_STATUSES:
                # It answered: whatever the answer says of the request, the backend is up again.
                logger.info("backend recovered backend=%s status=%d", state.backend.id, status)
                recovered, state.failures = state.failures, 0
                if shares is not None:
                    shares.append(("clear_failure", (self._shared_keys[state.index],)))
            if status == 429:
                state.throttled += 1
                info = self._rate_limit(headers)
                if info.cooldown_s is not None:
                    state.learn_window(info.cooldown_s)
                state.window_began = None  # the answer after the wait begins the next window
                cooldown = info.cooldown_s if info.cooldown_s is not None else self._default_cooldown_s
                cooldown = max(cooldown, self._throttle_backoff(state, started, now))
                self._set_aside(state, now, cooldown, "throttled", status)
                # While set aside: what it said of its budget; a 429 that says nothing has none left.
                left = 0 if info.remaining_requests is None else info.remaining_requests
                state.reported = (left, info.remaining_tokens)
                # When the cooldown ends, so has the window: expect its full budget where the backend
                # told its limit, else let one request find out before the others follow.
                state.limit_requests = int_header(headers, LIMIT_REQUESTS, state.limit_requests)
                state.refill(state.cooling_until + self._default_cooldown_s)
                if self._budgets is not None:
                    self._book.pending[state.index] = (0, now + cooldown, state.limit_requests, False)
                keep = False
                event: Event = ThrottledEvent(self._wall_clock(), state.backend.id, cooldown, now - started)
                if shares is not None:
                    shares.append(self._set_aside_record(state, "throttled", cooldown))
            elif status in _RETRY_STATUSES:
                # Only Retry-After counts on a 5xx: a reset header there speaks of the budget, not the outage.
                retry = {k: v for k in RETRY_AFTER if (v := headers.get(k)) is not None}
                info = self._rate_limit(retry)
                event = self._fail(state, now, info.cooldown_s or 0.0, str(status), started)
                keep = False
                if shares is not None:
                    shares.append(self._set_aside_record(state, "failed", event.cooldown_s))
            else:
                keep = True
                if status < 400:
                    state.successes += 1
                    state.throttle_streak = 0
                    state.add_success(now - started)
                elif status < 500:
                    state.rejected += 1
                requests_name, requests_left = header(headers, REMAINING_REQUESTS)
                tokens_name, tokens_left = header(headers, REMAINING_TOKENS)
                if requests_left is not None or tokens_left is not None:
                    # The backend admitted the attempt (and timed its reset) about one network hop
                    # after it was sent: half the answer's time, and no more than ADMISSION_DELAY_S.
                    admitted = started + min((now - started) / 2, ADMISSION_DELAY_S)
                    remaining = read_count(requests_name, requests_left)
                    # Sharing budgets needs every answer's reset; otherwise it is read only when needed.
                    whole = self._rate_limit(headers) if self._budgets is not None else None
                    spent = self._book.note(
                        state,
                        seq,
                        headers,
                        admitted,
                        remaining,
                        read_count(tokens_name, tokens_left),
                        whole,
                        cost,
                    )
                    if spent is not None:
                        spent_s = state.cooling_until - now
                        if shares is not None:
                            shares.append(self._set_aside_record(state, "exhausted", *spent))
                    if self._budgets is not None and remaining is not None:
                        self._book.pending[state.index] = self._book.report(
                            state, headers, whole, admitted, remaining
                        )
                elif status < 400:
                    # It took a request and says nothing of its budget: no belief that it is spent survives.
                    state.forget_budget()
                    if self._budgets is not None:
                        self._book.pending[state.index] = (None, now + UNMETERED_S, None, False)
                if self._on_event is not None:
                    event = ServedEvent(self._wall_clock(), state.backend.id, status, now - started)
        if self._on_event is not None:
            self._emit(event)
            if recovered:
                self._emit(RecoveredEvent(self._wall_clock(), state.backend.id, recovered))
            if spent_s is not None:
                self._emit(SetAsideEvent(self._wall_clock(), state.backend.id, "exhausted", spent_s, False))
        return keep, shares

    def _throttle_backoff(self, state: BackendState, started: float, now: float) -> float:
        """The least a 429 sets its backend aside for, whatever its headers say (caller holds the lock).

        A backend that throttles while saying "retry now" (``Retry-After: 0``, ``retry-after-ms: 1``, a
        past date, or ``max_cooldown_s=0``) would otherwise be tried again every few milliseconds:
        ``_MIN_THROTTLE_S``, doubling with each further 429 of an attempt sent after the last one
        arrived (the attempts of one burst are one 429), up to ``default_cooldown_s``. A success
        starts the count again.
        """
        if started > state.throttled_at or not state.throttle_streak:
            state.throttle_streak += 1
        state.throttled_at = now
        backoff = _MIN_THROTTLE_S * 2.0 ** min(state.throttle_streak - 1, 62)
        return min(backoff, max(self._default_cooldown_s, _MIN_THROTTLE_S))

    def _rate_limit(self, headers: Any) -> RateLimitInfo:
        """Every rate-limit header of an answer, read with this balancer's clock and bounds."""
        return read_rate_limit(headers, wall_now=self._wall_clock(), max_cooldown_s=self._max_cooldown_s)

    def _set_aside_record(
        self,
        state: BackendState,
        reason: Reason,
        cooldown_s: float,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
    ) -> Share:
        record = SharedState(cooldown_s, reason, state.failures, remaining_requests, remaining_tokens)
        return ("set_aside", (self._shared_keys[state.index], record))

    def _on_error(
        self, state: BackendState, probe: bool, exc: BaseException, started: float, cause: str | None = None
    ) -> tuple[Attempt, Share | None]:
        """Record an attempt that raised ``exc`` (``cause``: what it is called, if not its type name)."""
        now = self._clock()
        share: Share | None = None
        what = type(exc).__name__ if cause is None else cause
        with self._lock:
            state.end_attempt(probe)
            state.probe_first = False
            if cause == SLOW:
                state.slow += 1
            event = self._fail(state, now, 0.0, what, started)
            if self._store is not None:
                share = self._set_aside_record(state, "failed", event.cooldown_s)
        if self._on_event is not None:
            self._emit(event)
        return Attempt(state.backend.id, None, what, now - started), share

    def _release(self, state: BackendState, probe: bool, started: float) -> None:
        """Undo the in-flight count of an attempt that ended for a reason that is not the backend's."""
        with self._lock:
            state.end_attempt(probe)
        if self._on_event is not None:
            self._emit(AbandonedEvent(self._wall_clock(), state.backend.id, self._clock() - started))

    def _fail(
        self, state: BackendState, now: float, retry_after: float, what: str, started: float
    ) -> FailedEvent:
        """Open the breaker: set the backend aside with exponential backoff (caller holds the lock)."""
        state.failed += 1
        state.failures += 1
        state.reported = None
        backoff = min(self._backoff_s * 2.0 ** min(state.failures - 1, 62), self._backoff_max_s)
        cooldown = max(backoff, retry_after)
        self._set_aside(state, now, cooldown, "failed", what)
        return FailedEvent(
            self._wall_clock(), state.backend.id, what, state.failures, cooldown, now - started
        )

    def _set_aside(self, state: BackendState, now: float, seconds: float, reason: str, what: object) -> None:
        until = now + seconds
        if until > state.cooling_until:
            state.cooling_until = until
        state.cooling_reason = reason
        logger.info(
            "backend set aside backend=%s reason=%s cause=%s for_s=%.3f",
            state.backend.id,
            reason,
            what,
            state.cooling_until - now,
        )

    # ------------------------------------------------------------------ when nothing is left

    def _wait_budget(self, request: Request) -> float:
        """How long a request may wait for a backend: ``max_wait_s``, within the request's read timeout."""
        timeout = request.extensions.get("timeout")
        read = timeout.get("read") if isinstance(timeout, dict) else None
        if isinstance(read, int | float) and read < self._max_wait_s:
            return float(read)
        return self._max_wait_s

    def _next_chance(
        self, now: float, awaiting_probe: bool = False, among: Sequence[BackendState] | None = None
    ) -> float:
        """Seconds until some backend (of ``among``, default all) may take a request: its cooldown
        ends, or a probe may have returned (one of ours, or, with ``awaiting_probe``, another balancer's)."""
        states = among or self._states
        with self._lock:
            soonest = min(s.cooling_until for s in states)
            probing = awaiting_probe or any(s.probing for s in states)
        delay = soonest - now
        if probing:
            delay = min(delay, _PROBE_POLL_S) if delay > 0 else _PROBE_POLL_S
        return max(delay, _MIN_WAIT_S)

    def _probe_release(self, now: float, among: Sequence[BackendState] | None = None) -> float:
        """The soonest moment a backend (of ``among``, default all) held back only by the probe of its
        unknown budget lets the others through; -inf if there is none."""
        soonest = math.inf
        with self._lock:
            for s in among or self._states:
                if now >= s.cooling_until and not s.failures and s.held_by_probe(now):
                    soonest = min(soonest, s.probe_sent_at + s.probe_hold_s())
        return soonest if soonest < math.inf else -math.inf

    def _synthesize_429(
        self,
        lib: HttpLib,
        request: Request,
        now: float,
        attempts: list[Attempt],
        among: Sequence[BackendState] | None = None,
        pin: Pin | None = None,
    ) -> Response:
        """The 429 returned when no backend (of ``among``, default all) can take the request now,
        naming the soonest moment one can."""
        with self._lock:
            soonest = min(s.cooling_until for s in among or self._states)
        # Rounded to the microsecond first, so float noise (3.2000000001 s) is not rounded up a whole unit.
        wait_s = round(max(soonest - now, _MIN_RETRY_AFTER_S), 6)
        logger.warning("all backends unavailable backends=%d retry_after_s=%.3f", len(self._states), wait_s)
        if self._on_event is not None:
            self._emit(ExhaustedEvent(self._wall_clock(), wait_s, len(attempts)))
        body = {
            "error": {
                "code": "429",
                "message": (
                    f"{_affinity.unavailable(len(self._states), among)} "
                    f"Please retry after {math.ceil(wait_s)} second{'s' if math.ceil(wait_s) != 1 else ''}."
                ),
            }
        }
        response: Response = lib.Response(
            429,
            headers={
                "content-type": "application/json",
                "retry-after": str(math.ceil(wait_s)),
                "retry-after-ms": str(math.ceil(round(wait_s * 1000, 3))),
                "x-should-retry": "true",
            },
            content=json.dumps(body).encode(),
            request=request,
            extensions={EXTENSION: Routing(None, tuple(attempts), pin.why if pin is not None else None)},
        )
        return response


# ---------------------------------------------------------------------- helpers


def _validated(backends: Iterable[Backend]) -> list[Backend]:
    if isinstance(backends, (Backend, str | bytes)) or not isinstance(backends, Iterable):
        raise TypeError(f"backends must be a list of Backend, got {type(backends).__name__}")
    result = list(backends)
    if not result:
        raise ValueError("backends must not be empty")
    seen: dict[tuple[object, ...], int] = {}
    for i, backend in enumerate(result):
        if not isinstance(backend, Backend):
            raise TypeError(f"backends[{i}] must be a Backend, got {type(backend).__name__}")
        first = seen.setdefault(backend.origin, i)
        if first != i:
            raise ValueError(f"backends[{i}] and backends[{first}] are the same endpoint: {backend.id}")
    for priority in {b.priority for b in result}:
        # Choosing by weight adds a tier's weights: their sum must be a number.
        if not math.isfinite(sum(b.weight for b in result if b.priority == priority)):
            raise ValueError(
                f"backends: the weights of priority {priority} add up to more than a float holds"
            )
    return result


def _scrub_credentials(exc: BaseException, attempt: Request) -> None:
    """Take the attempt's credentials out of the message of ``exc`` (and drop the exceptions it chains,
    which quote them too): an HTTP library refusing a header value quotes it ("Illegal header value
    b'KEY '"), and the message ends up in logs and tracebacks."""
    text = str(exc)
    secrets: list[str] = []
    for name in _CREDENTIAL_HEADERS:
        value = attempt.headers.get(name)
        if value:
            secrets += [value, value.strip(), repr(value.encode())[2:-1], *value.split()[1:]]
    found = [secret for secret in secrets if len(secret) >= _MIN_SECRET and secret in text]
    if not found:
        return
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    exc.args = (text,)
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True


def _first_byte_seconds(name: str, value: object) -> float | None:
    """A first-byte deadline, checked: None, or a finite number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return float(value)


def _first_byte_limit(request: Request, seconds: object) -> tuple[float, dict[str, Any], Any] | None:
    """The first-byte deadline of ``request``: (seconds, its timeouts, its read timeout), or None when
    it has none: the request is not streamed, or its own read timeout comes first."""
    seconds = _first_byte_seconds(f"request.extensions[{FIRST_BYTE_TIMEOUT!r}]", seconds)
    content = request.content
    if seconds is None or (b'"stream":true' not in content and b'"stream": true' not in content):
        return None
    timeouts = request.extensions.get("timeout")
    if not isinstance(timeouts, dict):
        timeouts = {}
    read = timeouts.get("read")
    if isinstance(read, int | float) and read <= seconds:
        return None
    return seconds, timeouts, read


def _rewrite_deployment(raw_path: bytes, deployments: Mapping[str, str]) -> bytes:
    """``/openai/deployments/{name}/...`` with ``name`` mapped for this backend; other paths unchanged."""
    prefix = b"/openai/deployments/"
    if not raw_path.startswith(prefix):
        return raw_path
    rest = raw_path[len(prefix) :]
    end = len(rest)
    for sep in (b"/", b"?"):
        found = rest.find(sep)
        if found != -1:
            end = min(end, found)
    name = rest[:end].decode("ascii", "replace")
    target = deployments.get(name)
    if target is None:
        return raw_path
    return prefix + target.encode() + rest[end:]


def _rewrite_model(content: bytes, deployments: Mapping[str, str]) -> bytes | None:
    """The JSON body with its ``model`` mapped for this backend (the v1 API form), or None if unchanged."""
    if not content.startswith(b"{") or b'"model"' not in content:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    target = deployments.get(model) if isinstance(model, str) else None
    if target is None:
        return None
    body["model"] = target
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
