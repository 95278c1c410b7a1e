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
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._backend import Backend
from ._cooldown import DEFAULT_MAX_COOLDOWN_S, read_rate_limit
from ._state import BackendState, BreakerState

if TYPE_CHECKING:
    from ._http import HttpLib, Request, Response

__all__ = ["Attempt", "BackendStats", "BaseLoadBalancer", "Routing", "EXTENSION"]

logger = logging.getLogger("openai-priority-loadbalancer")

#: Key of ``response.extensions`` under which every response carries its :class:`Routing`.
EXTENSION: Final = "openai_priority_loadbalancer"

# Actions the flow yields to the transport loop.
SEND: Final = 0  # value: the attempt's request; the loop sends back the response or throws the error
SLEEP: Final = 1  # value: seconds
CLOSE: Final = 2  # value: a response the flow discards
TOKEN: Final = 3  # value: a token provider; the loop sends back the token (awaiting it if needed)

Action = tuple[int, Any]

_RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})
# The soonest Retry-After the synthesized 429 names: a floor that keeps a caller from spinning when a
# backend is free again "now" but was already tried by this request.
_MIN_RETRY_AFTER_S: Final = 0.1
_URL_CACHE_SIZE: Final = 512
# While a probe is out (a half-open breaker, a spent budget), waiting requests look again this often.
_PROBE_POLL_S: Final = 0.02
# The shortest wait: a backend tried by this request and free again "now" is not hammered in a loop.
_MIN_WAIT_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a request on one backend."""

    backend: str
    status: int | None
    """The backend's status code, or None when it raised."""
    error: str | None
    """The error's type name when the backend raised (``"ConnectError"``, ...), else None."""
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a request went: found in ``response.extensions["openai_priority_loadbalancer"]``."""

    backend: str | None
    """The backend whose response this is, or None for the balancer's own 429."""
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot of one backend's counters, as returned by :meth:`BaseLoadBalancer.stats`."""

    backend: str
    priority: int
    requests: int
    successes: int
    throttled: int
    failures: int
    in_flight: int
    cooling_down_for_s: float
    breaker: BreakerState
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    remaining_requests: int | None
    remaining_tokens: int | None


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
    ) -> None:
        self.backends = _validated(backends)
        for name, value in (
            ("default_cooldown_s", default_cooldown_s),
            ("max_cooldown_s", max_cooldown_s),
            ("failure_backoff_s", failure_backoff_s),
            ("failure_backoff_max_s", failure_backoff_max_s),
            ("max_wait_s", max_wait_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self._clock = clock
        self._wall_clock = wall_clock
        self._default_cooldown_s = float(default_cooldown_s)
        self._max_cooldown_s = float(max_cooldown_s)
        self._backoff_s = float(failure_backoff_s)
        self._backoff_max_s = float(failure_backoff_max_s)
        self._max_wait_s = float(max_wait_s)
        self._states = [BackendState(backend, i) for i, backend in enumerate(self.backends)]
        priorities = sorted({b.priority for b in self.backends})
        self._tiers = [[s for s in self._states if s.backend.priority == p] for p in priorities]
        self._lock = threading.Lock()
        self._random = random.Random()
        self._url_cache: dict[tuple[Any, ...], Any] = {}

    # ------------------------------------------------------------------ public

    def stats(self) -> tuple[BackendStats, ...]:
        """A snapshot of every backend's counters, in configuration order."""
        now = self._clock()
        with self._lock:
            return tuple(_snapshot(s, now) for s in self._states)

    def __repr__(self) -> str:
        names = ", ".join(f"{b.id} (priority {b.priority})" for b in self.backends)
        return f"{type(self).__name__}([{names}])"

    # ------------------------------------------------------------------ the flow of one request

    def _flow(self, request: Request, lib: HttpLib) -> Generator[Action, Any, Response]:
        """Drive one request to its final response; see the module docstring for the protocol."""
        attempts: list[Attempt] = []
        tried: set[int] = set()  # backends this request tried since it last waited
        deadline: float | None = None  # set when the request first finds no backend
        while True:
            now = self._clock()
            state, probe, seq = self._choose(now, tried)
            if state is None:
                if deadline is None:
                    deadline = now + self._wait_budget(request)
                delay = self._next_chance(now)
                if now + delay > deadline:
                    return self._synthesize_429(lib, request, now, attempts)
                logger.debug("waiting for a backend wait_s=%.3f", delay)
                yield (SLEEP, delay)
                tried.clear()
                continue
            tried.add(state.index)
            backend = state.backend
            token: str | None = None
            if backend.azure_ad_token_provider is not None:
                try:
                    token = yield (TOKEN, backend.azure_ad_token_provider)
                except BaseException:
                    self._release(state, probe)
                    raise
            try:
                attempt = self._attempt_request(lib, request, backend, token)
            except BaseException:
                self._release(state, probe)
                raise
            logger.debug(
                "attempt backend=%s priority=%d method=%s path=%s",
                backend.id,
                backend.priority,
                request.method,
                request.url.path,
            )
            try:
                response: Response = yield (SEND, attempt)
            except lib.failover_errors as exc:
                attempts.append(self._on_error(state, probe, exc, now))
                continue
            except lib.silent_errors as exc:
                self._on_error(state, probe, exc, now)
                raise
            except BaseException:
                self._release(state, probe)
                raise
            status = response.status_code
            attempts.append(Attempt(backend.id, status, None, self._clock() - now))
            if self._on_response(state, probe, seq, response, now):
                response.extensions[EXTENSION] = Routing(backend.id, tuple(attempts))
                return response
            yield (CLOSE, response)

    # ------------------------------------------------------------------ choosing

    def _choose(self, now: float, tried: set[int]) -> tuple[BackendState | None, bool, int]:
        """Pick the backend for the next attempt and count it in flight; state None if none is left.

        Returns the backend's state, whether the attempt is its one allowed probe, and the attempt's
        number among those sent to the backend.

        The best priority with a usable backend wins. Within it: backends whose budget is not known
        to be spent first, then the fewest requests in flight for their weight, then at random by
        weight. A backend that may take only one request at a time (a half-open breaker, a budget
        believed spent) is passed over while that request is out.
        """
        with self._lock:
            for tier in self._tiers:
                best: list[BackendState] = []
                best_key: tuple[bool, float] | None = None
                for s in tier:
                    if s.index in tried or now < s.cooling_until:
                        continue
                    exhausted = s.budget_exhausted()
                    if exhausted and s.in_flight:
                        continue  # spent: what is in flight will tell more (or is the one probe)
                    if s.probing and s.failures:
                        continue  # half-open: its one probe is out
                    key = (exhausted, s.in_flight / s.backend.weight)
                    if best_key is None or key < best_key:
                        best, best_key = [s], key
                    elif key == best_key:
                        best.append(s)
                if not best:
                    continue
                if len(best) == 1:
                    chosen = best[0]
                else:
                    weights = [s.backend.weight for s in best]
                    chosen = self._random.choices(best, weights)[0]
                if chosen.cooling_reason is not None:
                    logger.info("backend available again backend=%s", chosen.backend.id)
                    chosen.cooling_reason = None
                probe = chosen.needs_probe(now)
                chosen.probing = chosen.probing or probe
                chosen.in_flight += 1
                chosen.sent += 1
                chosen.requests += 1
                return chosen, probe, chosen.sent
            return None, False, 0

    # ------------------------------------------------------------------ building an attempt

    def _attempt_request(
        self, lib: HttpLib, request: Request, backend: Backend, token: str | None
    ) -> Request:
        """A copy of ``request`` addressed to ``backend``, with its credentials; ``request`` is untouched."""
        url = self._backend_url(request.url, backend)
        headers = request.headers.copy()
        headers["Host"] = url.netloc.decode("ascii")
        if backend.api_key is not None:
            headers["api-key"] = backend.api_key
            headers.pop("authorization", None)
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
            headers.pop("api-key", None)
        stream = request.stream
        if backend.deployments and request.url.raw_path.startswith(b"/openai/v1/"):
            body = _rewrite_model(request.content, backend.deployments)
            if body is not None:
                stream = lib.module.ByteStream(body)
                headers["Content-Length"] = str(len(body))
        return lib.Request(  # type: ignore[no-any-return]
            request.method, url, headers=headers, stream=stream, extensions=request.extensions
        )

    def _backend_url(self, url: Any, backend: Backend) -> Any:
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
        self._url_cache[key] = new
        return new

    # ------------------------------------------------------------------ judging

    def _on_response(
        self, state: BackendState, probe: bool, seq: int, response: Response, started: float
    ) -> bool:
        """Record ``response``; True: return it to the caller, False: discard it and try another backend."""
        status = response.status_code
        headers = response.headers
        now = self._clock()
        with self._lock:
            state.in_flight -= 1
            if probe:
                state.probing = False
            state.latencies.append(now - started)
            if status == 429:
                state.throttled += 1
                state.failures = 0
                info = read_rate_limit(
                    headers, wall_now=self._wall_clock(), max_cooldown_s=self._max_cooldown_s
                )
                cooldown = info.cooldown_s if info.cooldown_s is not None else self._default_cooldown_s
                self._set_aside(state, now, cooldown, "throttled", status)
                # When the cooldown ends, so has the window: expect its full budget where the backend
                # told its limit, else let one request find out before the others follow.
                state.limit_requests = _int_header(
                    headers, "x-ratelimit-limit-requests", state.limit_requests
                )
                state.refill()
                return False
            if status in _RETRY_STATUSES:
                # Only Retry-After counts on a 5xx: a reset header there speaks of the budget, not the outage.
                retry = {k: v for k in ("retry-after-ms", "retry-after") if (v := headers.get(k)) is not None}
                info = read_rate_limit(
                    retry, wall_now=self._wall_clock(), max_cooldown_s=self._max_cooldown_s
                )
                self._fail(state, now, info.cooldown_s or 0.0, str(status))
                return False
            if status < 400:
                state.successes += 1
            if state.failures:
                logger.info("backend recovered backend=%s status=%d", state.backend.id, status)
                state.failures = 0
            if "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers:
                self._note_budget(state, seq, headers, now)
            elif status < 400:
                # It took a request and says nothing of its budget: no belief that it is spent survives.
                state.remaining_requests = state.remaining_tokens = None
            return True

    def _note_budget(self, state: BackendState, seq: int, headers: Any, now: float) -> None:
        """Remember the budget a success reported; set the backend aside until a known reset if it is spent.

        ``seq`` numbers the attempt among those sent to the backend: what it reports ages by the
        attempts sent after it, and a report older than the one kept is ignored.
        """
        info = read_rate_limit(headers, wall_now=self._wall_clock(), max_cooldown_s=self._max_cooldown_s)
        if seq < state.remaining_seq:
            return
        state.remaining_seq = seq
        state.remaining_requests = info.remaining_requests
        state.remaining_tokens = info.remaining_tokens
        if state.budget_exhausted():
            reset = (
                info.reset_tokens_s if info.remaining_tokens == 0 else info.reset_requests_s
            ) or info.cooldown_s
            if reset:
                self._set_aside(state, now, reset, "exhausted", None)
                state.limit_requests = _int_header(
                    headers, "x-ratelimit-limit-requests", state.limit_requests
                )
                state.refill()

    def _on_error(self, state: BackendState, probe: bool, exc: BaseException, started: float) -> Attempt:
        now = self._clock()
        with self._lock:
            state.in_flight -= 1
            if probe:
                state.probing = False
            self._fail(state, now, 0.0, type(exc).__name__)
        return Attempt(state.backend.id, None, type(exc).__name__, now - started)

    def _release(self, state: BackendState, probe: bool) -> None:
        """Undo the in-flight count of an attempt that ended for a reason that is not the backend's."""
        with self._lock:
            state.in_flight -= 1
            if probe:
                state.probing = False

    def _fail(self, state: BackendState, now: float, retry_after: float, what: str) -> None:
        """Open the breaker: set the backend aside with exponential backoff (caller holds the lock)."""
        state.failed += 1
        state.failures += 1
        backoff = min(self._backoff_s * 2.0 ** min(state.failures - 1, 62), self._backoff_max_s)
        self._set_aside(state, now, max(backoff, retry_after), "failed", what)

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

    def _next_chance(self, now: float) -> float:
        """Seconds until some backend may take a request: its cooldown ends, or a probe may have returned."""
        with self._lock:
            soonest = min(s.cooling_until for s in self._states)
            probing = any(s.probing for s in self._states)
        delay = soonest - now
        if probing:
            delay = min(delay, _PROBE_POLL_S)
        return max(delay, _MIN_WAIT_S)

    def _synthesize_429(
        self, lib: HttpLib, request: Request, now: float, attempts: list[Attempt]
    ) -> Response:
        """The 429 returned when no backend can take the request now, naming the soonest moment one can."""
        with self._lock:
            soonest = min(s.cooling_until for s in self._states)
        # Rounded to the microsecond first, so float noise (3.2000000001 s) is not rounded up a whole unit.
        wait_s = round(max(soonest - now, _MIN_RETRY_AFTER_S), 6)
        logger.warning("all backends unavailable backends=%d retry_after_s=%.3f", len(self._states), wait_s)
        body = {
            "error": {
                "code": "429",
                "message": (
                    f"All {len(self._states)} backends are rate limited or unavailable. "
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
            extensions={EXTENSION: Routing(None, tuple(attempts))},
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
    return result


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


def _int_header(headers: Any, name: str, default: int | None) -> int | None:
    value = headers.get(name)
    if value is None:
        return default
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 12 else default


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


def _percentile(sorted_values: list[float], q: float) -> float:
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index] * 1000.0


def _snapshot(s: BackendState, now: float) -> BackendStats:
    latencies = sorted(s.latencies)
    return BackendStats(
        backend=s.backend.id,
        priority=s.backend.priority,
        requests=s.requests,
        successes=s.successes,
        throttled=s.throttled,
        failures=s.failed,
        in_flight=s.in_flight,
        cooling_down_for_s=max(0.0, s.cooling_until - now),
        breaker=s.breaker(now),
        latency_p50_ms=_percentile(latencies, 0.5) if latencies else None,
        latency_p95_ms=_percentile(latencies, 0.95) if latencies else None,
        remaining_requests=s.remaining_requests,
        remaining_tokens=s.remaining_tokens,
    )
