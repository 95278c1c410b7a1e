"""BaseLoadBalancer: every decision of the balancer, and no I/O.

One request is driven by :meth:`BaseLoadBalancer._flow`, a generator that decides and yields *actions*
for the transport to carry out: send this attempt, sleep this long, close this discarded response,
fetch this backend's token. The sync and async transports are thin loops that perform those actions
with ``handle_request`` or ``await handle_async_request``; the logic exists once.

Data flows one way: transport -> flow (choose, build the attempt) -> inner transport -> flow (judge the
response, update the state) -> transport. The decisions live in modules of their own, each readable
alone: the deployment's lane (``_lanes``), the choice (``_choice``), the attempt (``_attempt``), what an
answer teaches (``_ledger``, ``_budget``), waiting and the balancer's own 429 (``_waiting``), and stored
objects (``_affinity``).
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import _affinity
from ._attempt import (
    FIRST_BYTE_TIMEOUT,
    UrlCache,
    attempt_request,
    first_byte_limit,
    first_byte_seconds,
    limit_first_byte,
    scrub_credentials,
)
from ._backend import Backend
from ._cooldown import DEFAULT_MAX_COOLDOWN_S
from ._cost import estimate_cost
from ._deployment import deployment_of
from ._events import AttemptEvent, Event, EventCallback, ExhaustedEvent, WaitedEvent
from ._lanes import Lane, Lanes
from ._ledger import SLOW, Ledger, Share
from ._routing import EXTENSION, Attempt, Routing
from ._state import PROBE_HOLD_MAX_S, BackendState
from ._stats import BackendStats, Stats, snapshot
from ._store import BudgetStore, StateStore, shared_key
from ._waiting import MIN_WAIT_S, next_chance, probe_release, soonest_free, synthesize_429, wait_budget

if TYPE_CHECKING:
    from ._affinity import Pin
    from ._http import HttpLib, Request, Response

__all__ = [
    "EXTENSION",
    "FIRST_BYTE_TIMEOUT",
    "Attempt",
    "BackendStats",
    "BaseLoadBalancer",
    "Routing",
    "Share",
]

logger = logging.getLogger("openai-priority-loadbalancer")

# Actions the flow yields to the transport loop.
# value: (the attempt's request, its backend's index); the loop sends back the response or throws the error
SEND: Final = 0
SLEEP: Final = 1  # value: seconds
CLOSE: Final = 2  # value: a response the flow discards
TOKEN: Final = 3  # value: a token provider; the loop sends back the token (awaiting it if needed)
SHARE: Final = 4  # value: a Share for the state store; the loop sends back its result (None if it failed)
READ: Final = 5  # value: a response whose body the flow needs (a short error): the loop reads it

Action = tuple[int, Any]

# What Azure's 404 for a deployment a resource lacks says, in its JSON error body.
_DEPLOYMENT_NOT_FOUND: Final = b'"DeploymentNotFound"'
_TOKEN_CHARS: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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
        state: a :class:`~openai_priority_loadbalancer.StateStore` to share cooldowns, open
            breakers and missing deployments with other balancers (other processes, other
            machines); default: none. If it is a :class:`~openai_priority_loadbalancer.BudgetStore`
            (``MemoryStateStore`` and ``RedisStateStore`` are), the balancers also share each
            deployment's request and token budgets: every attempt first reserves one request and
            its estimated tokens from its backend's budget for that deployment, so that together
            they send no more than its window holds.
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
        self._first_byte_s = first_byte_seconds("first_byte_timeout_s", first_byte_timeout_s)
        self._on_event = on_event
        self._store = state
        # With a store that shares budgets, each attempt reserves one of its backend's requests.
        self._budgets = state if isinstance(state, BudgetStore) else None
        self._backend_header = backend_header
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_wait_s = float(max_wait_s)
        # The backends' names in the shared store (only a balancer with a store needs them).
        shared_keys = [shared_key(b) for b in self.backends] if state is not None else []
        self._lanes = Lanes(self.backends, shared_keys)
        self._lock = threading.Lock()
        self._random = random.Random()
        self._ledger = Ledger(
            self._lanes,
            self._lock,
            clock=clock,
            wall_clock=wall_clock,
            emit=self._emit if on_event is not None else None,
            sharing="" if state is None else "budgets" if self._budgets is not None else "state",
            default_cooldown_s=float(default_cooldown_s),
            max_cooldown_s=float(max_cooldown_s),
            failure_backoff_s=float(failure_backoff_s),
            failure_backoff_max_s=float(failure_backoff_max_s),
            missing_deployment_s=float(missing_deployment_s),
            store_takes_cost=self._budgets is None or _takes_cost(self._budgets),
        )
        self._url_cache: UrlCache = {}
        self._affinity = _affinity.Affinity.build(
            affinity,
            self.backends,
            state,
            shared_keys,
            self._emit if on_event is not None else None,
            wall_clock,
            affinity_max_objects,
            affinity_ttl_s,
        )

    # ------------------------------------------------------------------ public

    def stats(self) -> Stats:
        """A snapshot of every backend's counters, in configuration order, a row per deployment it
        served (see ``BackendStats.deployment``); ``str()`` of it is a table."""
        now = self._clock()
        with self._lock:
            return Stats(snapshot(s, now) for s in self._lanes.rows())

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
        tokens_free_at = math.inf  # the soonest a shared token budget too short for this request ends
        emit = self._on_event
        ledger = self._ledger
        loads = self._store is not None and self._budgets is None
        content = request.content
        raw_path = request.url.raw_path
        # The deployment's view of the backends: its 429s, budgets and missing marks are its own.
        lane = self._lane(deployment_of(raw_path, content))
        states = lane.states
        # A request naming a stored object goes only where the object is (see _affinity).
        pin: Pin | None = self._affinity.examine(request) if self._affinity is not None else None
        bound = pin is not None and pin.bound  # it names an object: only its backend may answer
        if pin is not None and (lookup := pin.lookup()) is not None:
            pin.adopt((yield (SHARE, lookup)))
        # A streamed request's first-byte deadline: None for a request naming a stored object (only the
        # backend holding it can answer).
        first_byte_s = request.extensions.get(FIRST_BYTE_TIMEOUT, self._first_byte_s)
        first_byte = None if first_byte_s is None or bound else first_byte_limit(request, first_byte_s)
        # What the request costs in tokens, as Azure estimates it (embeddings generate none).
        cost = estimate_cost(content, generates=b"/embeddings" not in raw_path)
        while True:
            if loads:
                ledger.merge_shared((yield (SHARE, ("load", (lane.shared_keys,)))), lane)
            now = self._clock()
            if pin is not None:
                tried |= pin.excluded(len(states))
            skip, candidates = tried, states
            if lane.missing and not bound and (missing := lane.passed_over(now)):
                skip = tried | missing
                candidates = [s for s in states if s.index not in missing]
            with self._lock:
                state, probe, seq = lane.choice.choose(now, skip, self._random, cost)
                if probe and state is not None and state.failures:
                    self._lanes.hold_probe(state)  # one breaker probe for all of the backend's deployments
            if state is None:
                # What it may wait for: the object's backend, else those not lacking the deployment.
                waiting_for = (pin.among(states) if pin is not None else None) or candidates
                if deadline is None:
                    deadline = now + wait_budget(request, self._max_wait_s)
                delay = next_chance(waiting_for, self._lock, now, awaiting_probe)
                if tokens_free_at < math.inf:  # passed over for tokens, not set aside: wait for them too
                    delay = max(delay, soonest_free(waiting_for, self._lock, now, tokens_free_at) - now)
                if now + delay > deadline:
                    # Never a 429 only because a probe is out: it holds the others for a round trip at most.
                    held = max(probe_release(waiting_for, self._lock, now), shared_hold_until)
                    if held <= now:
                        refusal, wait_s = synthesize_429(
                            lib,
                            request,
                            now,
                            attempts,
                            waiting_for,
                            self._lock,
                            len(states),
                            pin,
                            tokens_free_at,
                        )
                        if emit is not None:
                            self._emit(ExhaustedEvent(self._wall_clock(), wait_s, len(attempts)))
                        return refusal
                    delay = max(min(delay, held - now), MIN_WAIT_S)
                logger.debug("waiting for a backend wait_s=%.3f", delay)
                yield (SLEEP, delay)
                if emit is not None:
                    self._emit(WaitedEvent(self._wall_clock(), self._clock() - now))
                tried.clear()
                awaiting_probe = False
                tokens_free_at = math.inf
                continue
            tried.add(state.index)
            backend = state.backend
            shared_probe = False
            if self._budgets is not None:
                try:
                    reservation = yield (
                        SHARE,
                        ("reserve", ledger.book.reserve_args(state, lane.shared_keys, now, cost)),
                    )
                except BaseException:
                    ledger.unchoose(state, probe, None, now)
                    raise
                if reservation is not None:  # None: the store failed, and local state decides
                    ledger.merge_shared(reservation.records, lane)
                    if reservation.granted and (
                        now < state.cooling_until
                        or (not bound and now < state.missing_until and state.index in lane.passed_over(now))
                    ):
                        # Granted, but its records say another process saw the backend down, or lacking
                        # the deployment (and another backend may have it).
                        ledger.unchoose(state, probe, None, now)
                        if reservation.probe:
                            yield self._end_probe(state)
                        continue
                    if not reservation.granted:
                        # Short of tokens for this request only: the backend is not set aside for others.
                        refused_for = None if reservation.short_of_tokens else reservation.wait_s
                        ledger.unchoose(state, probe, refused_for, now)
                        if reservation.short_of_tokens:
                            tokens_free_at = min(tokens_free_at, now + reservation.wait_s)
                            continue
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
                self._emit(
                    AttemptEvent(self._wall_clock(), backend.id, backend.priority, probe, lane.deployment)
                )
            token: str | None = None
            try:
                if backend.azure_ad_token_provider is not None:
                    token = yield (TOKEN, backend.azure_ad_token_provider)
                attempt = attempt_request(lib, request, raw_path, backend, token, self._url_cache)
            except BaseException:
                ledger.release(state, probe, now)
                if shared_probe:
                    yield self._end_probe(state)
                raise
            # The attempt's own timeouts, with the deadline as its read timeout until the headers come.
            limited = (
                None if first_byte is None else limit_first_byte(attempt, first_byte, now, tried, states)
            )
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
                ended, what, shares = ledger.on_error(state, probe, exc, now)
                attempts.append(Attempt(backend.id, None, what, ended - now))
                yield from self._settle(state, shared_probe, shares)
                if pin is not None and pin.keep_error():
                    raise  # the owner of the object named failed: no other backend can answer
                continue
            except lib.silent_errors as exc:
                slow = limited is not None and isinstance(exc, lib.ReadTimeout)
                ended, what, shares = ledger.on_error(state, probe, exc, now, SLOW if slow else None)
                yield from self._settle(state, shared_probe, shares)
                if not slow:
                    raise
                attempts.append(Attempt(backend.id, None, what, ended - now))  # no byte came: next backend
                continue
            except BaseException as exc:
                ledger.release(state, probe, now)
                if shared_probe:  # it ends unanswered: let the next request probe, not in 10 s
                    yield self._end_probe(state)
                scrub_credentials(exc, attempt)
                raise
            if limited is not None:  # the headers came in time: the body is read with the caller's timeout
                limited[0]["read"] = limited[1]
            attempts.append(Attempt(backend.id, response.status_code, None, self._clock() - now))
            keep, shares = ledger.on_response(state, probe, seq, response, now, cost)
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
            if keep and response.status_code == 404 and lane.deployment is not None and not bound:
                # Only Azure's body tells a missing deployment from another 404: a short error body,
                # read here (the caller still gets all of it) and only on a 404.
                try:
                    yield (READ, response)
                except lib.failover_errors:
                    yield (CLOSE, response)
                    continue
                if _DEPLOYMENT_NOT_FOUND in response.content:
                    elsewhere, share = ledger.lacks(lane, state, tried, now)
                    if share is not None:
                        yield from self._settle(state, False, [share], response)
                    if elsewhere:
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

    def _lane(self, deployment: str | None) -> Lane:
        lane = self._lanes.by_deployment.get(deployment)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(deployment)
        return lane

    def _emit(self, event: Event) -> None:
        """Hand ``event`` to the ``on_event`` callback; whatever it raises is logged, never propagated."""
        callback = self._on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            logger.warning("on_event callback raised on a %s event; ignored", event.kind, exc_info=True)

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
        return (SHARE, ("report", (self._ledger.book.probe_report(state, self._clock()),)))


# ---------------------------------------------------------------------- helpers


def _takes_cost(store: BudgetStore) -> bool:
    """Whether ``store.reserve`` takes a fifth argument, the request's token cost (a store written
    before token budgets were shared takes four)."""
    try:
        parameters = inspect.signature(store.reserve).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the protocol as it is
        return True
    return len(parameters) >= 5 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


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
