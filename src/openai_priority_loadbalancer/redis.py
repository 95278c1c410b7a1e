"""Shared throttle state on Redis: balancers in many processes and machines see each other's cooldowns.

::

    from openai_priority_loadbalancer import LoadBalancer
    from openai_priority_loadbalancer.redis import RedisStateStore

    store = RedisStateStore.from_url("redis://127.0.0.1:6379/0")
    lb = LoadBalancer(backends, state=store)  # AsyncLoadBalancer(backends, state=store) alike

Needs redis-py: ``pip install "openai-priority-loadbalancer[redis]"``.

One key per backend, ``prefix + shared_key(backend)`` (``oplb:https://host:443/``: no credential),
holding ``"<deadline_us> <reason> <failures> <remaining_requests> <remaining_tokens>"`` where the
deadline is on the Redis server's clock (``TIME``), so the machines' clocks never matter. Its TTL is
the cooldown: a record disappears by itself when the backend may take requests again.

* ``load`` is one ``EVALSHA`` of a read-only script returning the server's time and every key's
  record: one round trip per decision, whatever the number of backends.
* ``set_aside`` is one ``EVALSHA`` of a script that keeps the later deadline, atomically: a shorter
  cooldown written at the same moment by another process never overwrites a longer one.
* ``clear_failure`` deletes the record only if its reason is ``failed`` (one script, atomic).

It is a :class:`~openai_priority_loadbalancer.BudgetStore` too: balancers sharing it send a backend no
more requests (or tokens) per window than the window holds. Next to each record key, ``<key>#budget``
holds the requests left in the backend's current window (or ``probe``, or ``unmetered``) and expires
with the window; ``<key>#limit`` holds the backend's limit and the longest window seen (kept for a
day after the last report of them); ``<key>#tokens`` holds the tokens left (the backend's
``x-ratelimit-remaining-tokens``, less the costs reserved since) and expires when the report that
started it said. A backend's key never holds ``#``, so these never name another backend.

* ``reserve`` is one ``EVALSHA``: it applies the budget reports riding along, reads every record (so a
  balancer sharing budgets makes no ``load``) and takes one request from the chosen backend's counter,
  and the request's estimated tokens (``cost``) from its token counter, all atomically: balancers
  racing for the last requests (or tokens) of a window never get more than it holds. A request whose
  cost the token counter cannot fit is refused until that counter expires, and takes nothing.
* ``report`` is one ``EVALSHA`` applying reports: a counter is set to what the backend said, a live
  one only ever lowered; the token counter alike.

Fail open: socket timeouts are short (50 ms by default), and redis-py retries only a connection error,
once (a pooled connection that outlived a Redis restart), never a timeout. On any
error the store logs one WARNING, answers "nothing shared" at once for a backoff (0.5 s, doubling up
to 30 s) while the balancer runs on its local state, then lets one call try again; when that works it
logs one INFO and sharing resumes. After the server refused a call (out of memory with noeviction,
a read-only replica), reads may work while writes do not: only a call that wrote counts then. A
request never fails because of the store, and waits at most one timeout for it (a reservation may
first wait its turn for a connection, about as long again at most).

While Redis is unavailable, ``reserve`` grants every request without counting it: the balancer runs on
its local state, as it does without a store.

It is an :class:`~openai_priority_loadbalancer.OwnerStore` too: ``<prefix>obj:<id>`` holds the key of
the backend that holds stored object ``<id>`` (a response, conversation, file, ...) and expires after
the balancer's ``affinity_ttl_s`` (30 days by default). ``owners`` is one ``MGET``, made only for
objects the balancer does not know; ``set_owners`` is one pipelined round of ``SET ... PX``. They
fail open like the rest: with Redis down, the balancer finds owners by asking the backends.

Redis Cluster: ``load``, ``reserve`` and ``owners`` name several keys in one call, so give a prefix
with a hash tag (``prefix="{oplb}:"``) to keep them in one slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

try:
    import redis.asyncio  # binds ``redis`` too
    from redis.asyncio.retry import Retry as _AsyncRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as _ConnectionError
    from redis.exceptions import NoScriptError, ResponseError
    from redis.retry import Retry as _Retry
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without redis
    raise ImportError(
        'RedisStateStore needs redis-py: pip install "openai-priority-loadbalancer[redis]"'
    ) from _exc

from ._store import PROBE_TTL_S, UNMETERED_S, BudgetReport, Reason, Reservation, SharedState

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._store import BudgetStore, OwnerStore

__all__ = ["RedisStateStore"]

logger = logging.getLogger("openai-priority-loadbalancer")

DEFAULT_PREFIX: Final = "oplb:"
DEFAULT_TIMEOUT_S: Final = 0.05
DEFAULT_BACKOFF_S: Final = 0.5
DEFAULT_BACKOFF_MAX_S: Final = 30.0
# redis-py retries once, at once, on a connection error: a connection pooled before Redis restarted
# fails on first use and is made again. Never on a timeout: a slow Redis costs one timeout, no more.
_RETRIED: Final = (_ConnectionError,)
# How long a thread waits for another thread's load when the client's timeouts are unknown.
_DEFAULT_WAIT_S: Final = 1.0
# Reservations are each a caller's own (never shared like loads): at most this many are under way at
# once per process (sync) and per event loop (async), so that a burst of requests uses a few pooled
# connections, one after the other, instead of opening one each (redis-py's pools stop at 100).
_MAX_CALLS: Final = 8
# How long a backend's limit and longest window are kept after the last report of them.
_LIMIT_TTL_MS: Final = 86_400_000
# The largest token count or cost passed to the scripts: exact in Lua's doubles, and far inside the
# 64-bit integers DECRBY takes (a larger count, from a malformed header, would make the script fail).
_MAX_COUNT: Final = 2**53

# KEYS: the backends' keys. Returns the server's TIME (seconds, microseconds), then each key's value
# (nil where none). MGET answers nil for a key of another type instead of failing the whole call.
_LOAD: Final = """
local t = redis.call('TIME')
local out = {t[1], t[2]}
if #KEYS > 0 then
  local values = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do out[i + 2] = values[i] end
end
return out
"""

# KEYS[1]: the backend's key. ARGV[1]: cooldown in microseconds (>= 1); ARGV[2]: " reason failures rr rt".
# Keeps whichever deadline is later; the key expires with its cooldown. Returns 1 if written.
_SET_ASIDE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local ttl = tonumber(ARGV[1])
local deadline = tonumber(t[1]) * 1000000 + tonumber(t[2]) + ttl
local kept = redis.call('GET', KEYS[1])
if kept then
  local d = tonumber(string.match(kept, '^%d+'))
  if d and d >= deadline then return 0 end
end
redis.call('SET', KEYS[1], string.format('%.0f', deadline) .. ARGV[2], 'PX', math.ceil(ttl / 1000))
return 1
"""

# KEYS[1]: the backend's key. Deletes it only if it records a failure. Returns 1 if deleted.
_CLEAR_FAILURE: Final = """
local kept = redis.call('GET', KEYS[1])
if kept and string.match(kept, '^%d+ failed ') then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Budgets. Per backend, next to its record: ``<record key>#budget`` holds the requests left in the
# current window (an integer), ``probe <µs>`` (one request is finding the budget out, holding
# the others back until then) or ``unmetered``, and
# expires with the window; ``<record key>#limit`` holds "<limit> <longest window seen, in µs>";
# ``<record key>#tokens`` holds the tokens left (an integer) and expires when the backend said. A
# backend's key never holds "#" (Backend refuses it in a path), so these never name another backend.
#
# _APPLY: applies ``count`` reports; report i has its budget, limit and token keys at KEYS[kb + 3i],
# KEYS[kb + 3i + 1] and KEYS[kb + 3i + 2], and remaining ('-': unmetered), reset (µs; negative: an
# estimate of -reset, the backend named none), limit ('-': not said) and remaining tokens ('-': not said)
# at ARGV[ab + 4i..]. A report sets the counter to what the backend said, lowering a live counter only
# and never ending its window sooner; reset 0 forgets it. An estimate never moves a counter's end, starts
# a counter only in place of the probe (or of 'unmetered') and says nothing of the window's length. The
# longest window is kept rounded up to a tenth of a second. The token counter follows the same rules,
# except that any report of tokens starts one (there is no token probe); a report of neither requests
# nor tokens forgets it, one of requests only leaves it alone.
_APPLY: Final = """
local function apply(kb, ab, count)
  for i = 0, count - 1 do
    local budget, limitkey, tokenkey = KEYS[kb + 3 * i], KEYS[kb + 3 * i + 1], KEYS[kb + 3 * i + 2]
    local a = ab + 4 * i
    local remaining, reset, limit, tokens = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
    local estimated = reset < 0
    if estimated then reset = -reset end
    if reset <= 0 or (remaining == '-' and tokens == '-') then
      redis.call('DEL', tokenkey)
    elseif tokens ~= '-' then
      local left, px = tonumber(tokens), math.ceil(reset / 1000)
      local kept = tonumber(redis.call('GET', tokenkey))
      if kept and estimated then
        if left < kept then redis.call('DECRBY', tokenkey, kept - left) end
      else
        if kept then
          if kept < left then left = kept end
          local ttl = redis.call('PTTL', tokenkey)
          if ttl > px then px = ttl end
        end
        redis.call('SET', tokenkey, string.format('%.0f', left), 'PX', px)
      end
    end
    if limit ~= '-' then
      local window = math.ceil(reset / 100000 - 0.000001) * 100000  -- window_of(): up to a tenth of a second
      if estimated then window = 0 end
      local kept = redis.call('GET', limitkey)
      if kept then
        local seen = tonumber(string.match(kept, ' (%d+)$'))
        if seen and seen > window then window = seen end
      end
      if window < 0 then window = 0 end
      redis.call('SET', limitkey, limit .. ' ' .. string.format('%.0f', window), 'PX', LIMIT_TTL_MS)
    end
    if remaining == '-' then
      redis.call('SET', budget, 'unmetered', 'PX', UNMETERED_MS)
    elseif reset <= 0 then
      redis.call('DEL', budget)
    else
      local left, px = tonumber(remaining), math.ceil(reset / 1000)
      local value = redis.call('GET', budget)
      local kept = tonumber(value)
      if kept and estimated then
        -- Lowered in place: its end stays exactly where it was.
        if left < kept then redis.call('DECRBY', budget, kept - left) end
      elseif kept then
        -- Only lower a live counter, and never end its window sooner (a late report of the last one).
        if kept < left then left = kept end
        local ttl = redis.call('PTTL', budget)
        if ttl > px then px = ttl end
        redis.call('SET', budget, string.format('%.0f', left), 'PX', px)
      elseif value or not estimated then
        redis.call('SET', budget, string.format('%.0f', left), 'PX', px)
      end
    end
  end
end
"""

# KEYS: the n backends' record keys, the chosen backend's budget, limit and token keys, then three keys
# per report. ARGV: n, the chosen index (1-based), the probe's hold (ms: how long it holds the others
# back), the request's cost in tokens, then four values per report.
# Applies the reports, reads every record and takes one request from the chosen backend's counter. With
# a cost and a live token counter: refused (until that counter expires) when it holds less than the
# cost, else lowered by it when the request is granted. A refusal takes nothing.
# Returns the server's TIME (seconds, microseconds), the verdict (0 refused, -1 refused for its tokens
# only, 1 granted, 2 granted as the window's probe), the wait when refused (µs), then each record (nil
# where none).
_RESERVE: Final = (
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    + _APPLY
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, index = tonumber(ARGV[1]), tonumber(ARGV[2])
apply(n + 4, 5, (#ARGV - 4) / 4)
local out = {t[1], t[2], 0, 0}
local values = redis.call('MGET', unpack(KEYS, 1, n))
for i = 1, n do out[i + 4] = values[i] end
local record = values[index]
if record then
  local deadline, reason = string.match(record, '^(%d+) (%l+) %d+ [^ ]* [^ ]*$')
  if deadline and (reason == 'throttled' or reason == 'failed' or reason == 'exhausted') then
    local wait = tonumber(deadline) - now
    if wait > 0 then
      out[4] = wait
      return out
    end
  end
end
local tokenkey, cost, have = KEYS[n + 3], tonumber(ARGV[4]), nil
if cost > 0 then
  have = tonumber(redis.call('GET', tokenkey))
  if have and have < cost then
    out[3] = -1  -- refused for its tokens only: a smaller request may fit
    out[4] = math.max(redis.call('PTTL', tokenkey), 1) * 1000  -- never 0: that means a probe is out
    return out
  end
end
local function grant(verdict)
  out[3] = verdict
  if have then redis.call('DECRBY', tokenkey, ARGV[4]) end
  return out
end
local budget = KEYS[n + 1]
local left = redis.call('GET', budget)
if left then
  -- 'probe <µs>': the window's probe, holding the others back until then, and admitted after that.
  local hold = string.match(left, '^probe (%d+)$')
  if hold then
    if now >= tonumber(hold) then return grant(1) end
    return out
  end
  if left == 'probe' then return out end
end
if left == 'unmetered' then return grant(1) end
local count = tonumber(left)
if count then
  if count <= 0 then
    out[4] = math.max(redis.call('PTTL', budget), 0) * 1000
    return out
  end
  redis.call('DECR', budget)
  return grant(1)
end
local known = redis.call('GET', KEYS[n + 2])
if known then
  local limit, window = string.match(known, '^(%-?%d+) (%d+)$')
  window = tonumber(window)
  if limit and window > 0 then
    redis.call('SET', budget, string.format('%.0f', tonumber(limit) - 1), 'PX', math.ceil(window / 1000))
    return grant(1)
  end
end
redis.call('SET', budget, 'probe ' .. string.format('%.0f', now + tonumber(ARGV[3]) * 1000), 'PX',
  math.max(tonumber(ARGV[3]), PROBE_TTL_MS))
return grant(2)
"""
)

# KEYS, ARGV: three keys and four values per report, as _APPLY takes them. Returns the number applied.
_REPORT: Final = (
    _APPLY
    + """
apply(1, 1, #ARGV / 4)
return #ARGV / 4
"""
)

_REASONS: Final[dict[bytes, Reason]] = {
    b"throttled": "throttled",
    b"failed": "failed",
    b"exhausted": "exhausted",
    b"missing": "missing",
}

Ticket = Literal[0, 1, 2]
_SKIP: Final = 0  # Redis is being left alone: answer "nothing shared" at once
_NORMAL: Final = 1
_PROBE: Final = 2  # the one call trying Redis again after a backoff


class _Script:
    """A Lua script called by its SHA; loaded with EVAL when the server does not know it (a restart)."""

    __slots__ = ("sha", "source", "writes")

    def __init__(self, source: str, *, writes: bool = True) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        #: Whether a call that returns a true value wrote (and so shows that Redis takes writes).
        self.writes = writes

    def call(self, client: Any, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def acall(self, client: Any, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def _with_constants(source: str) -> str:
    return (
        source.replace("LIMIT_TTL_MS", str(_LIMIT_TTL_MS))
        .replace("UNMETERED_MS", str(math.ceil(UNMETERED_S * 1000)))
        .replace("PROBE_TTL_MS", str(math.ceil(PROBE_TTL_S * 1000)))
    )


_LOAD_SCRIPT: Final = _Script(_LOAD, writes=False)
_SET_ASIDE_SCRIPT: Final = _Script(_SET_ASIDE)
_CLEAR_FAILURE_SCRIPT: Final = _Script(_CLEAR_FAILURE, writes=False)  # DEL: allowed out of memory
_RESERVE_SCRIPT: Final = _Script(_with_constants(_RESERVE))
_REPORT_SCRIPT: Final = _Script(_with_constants(_REPORT))


class _Health:
    """Whether to talk to Redis now. One WARNING when it starts failing, one INFO when it works again.

    While failing, every call is skipped until the backoff ends; then one call (the probe) tries, and
    the others keep skipping until it has answered. Calls already under way when Redis failed change
    nothing: only the first failure and the probes count.
    """

    def __init__(
        self, target: str, scrub: Callable[[str], str], backoff_s: float, backoff_max_s: float, clock: Any
    ) -> None:
        self._target = target
        self._scrub = scrub
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._clock: Callable[[], float] = clock
        self._lock = threading.Lock()
        self.failing = False
        # The server answered but refused (out of memory, a read-only replica): reads may still work,
        # so only a call that wrote shows that it is back.
        self._refused = False
        self._backoff = backoff_s
        self.retry_at = 0.0

    def gate(self) -> Ticket:
        if not self.failing:
            return _NORMAL
        now = self._clock()
        with self._lock:
            if not self.failing:
                return _NORMAL
            if now < self.retry_at:
                return _SKIP
            self.retry_at = now + self._backoff  # the others skip while this probe is out
            return _PROBE

    def ok(self, ticket: Ticket, wrote: bool = True) -> None:
        """A call worked; ``wrote``: it wrote (a read that works says nothing of a refused write)."""
        if ticket != _PROBE:
            return
        with self._lock:
            if not self.failing:
                return
            if self._refused and not wrote:
                self.retry_at = self._clock() + self._backoff  # still failing: the next probe then
                logger.debug("shared state store answers reads store=%s; waiting for a write", self._target)
                return
            self.failing = self._refused = False
            self._backoff = self._backoff_s
        logger.info("shared state store reachable again store=%s; sharing resumed", self._target)

    def failed(self, ticket: Ticket, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            if ticket == _PROBE or not self.failing:
                self._refused = isinstance(exc, ResponseError)
            if ticket == _PROBE and self.failing:
                self._backoff = min(self._backoff * 2.0, self._backoff_max_s)
                self.retry_at = now + self._backoff
                backoff = self._backoff
                first = False
            elif not self.failing:
                self.failing = True
                self._backoff = self._backoff_s
                self.retry_at = now + self._backoff
                backoff = self._backoff
                first = True
            else:
                return  # a call that started before the failure was noticed
        error = self._scrub(f"{type(exc).__name__}: {exc}")
        if first:
            logger.warning(
                "shared state store unavailable store=%s error=%s; using local state, retrying in %.1f s",
                self._target,
                error,
                backoff,
            )
        else:
            logger.debug(
                "shared state store still unavailable store=%s error=%s; retrying in %.1f s",
                self._target,
                error,
                backoff,
            )


class _Flight:
    """A load under way in one thread; the threads asking for the same keys meanwhile take its answer.

    ``done`` is made by the first thread that waits (under the store's lock): a load nobody waits for
    costs no Event.
    """

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done: threading.Event | None = None
        self.result: list[SharedState | None] | None = None


class _LoopState:
    """What the store keeps per event loop: its asyncio client (made by the store), the loads under way,
    and the slots of the budget calls under way."""

    __slots__ = ("client", "flights", "slots")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.flights: dict[tuple[str, ...], asyncio.Future[list[SharedState | None] | None]] = {}
        self.slots = asyncio.Semaphore(_MAX_CALLS)


class _WriteSlot:
    """A key being written: the latest deadline asked for meanwhile, which the writer writes next."""

    __slots__ = ("pending", "pending_until")

    def __init__(self) -> None:
        self.pending: SharedState | None = None
        self.pending_until = 0.0


class RedisStateStore:
    """A :class:`~openai_priority_loadbalancer.StateStore` on Redis, for ``LoadBalancer`` and
    ``AsyncLoadBalancer`` alike (see the module documentation for the key layout and semantics).

    Build it with :meth:`from_url` (the store makes its own clients, a sync one and one asyncio client
    per event loop, as they are needed), or hand it existing clients::

        RedisStateStore(redis.Redis(...), async_client=redis.asyncio.Redis(...))

    Clients given are used as they are: give them short timeouts (``socket_timeout=0.05``,
    ``socket_connect_timeout=0.05``) and no retries, or a request may wait on a slow Redis that long.

    A burst of requests never opens a burst of connections. Loads and writes are coalesced: threads
    (or tasks of one loop) asking for the same keys while a load is under way take its answer, and
    writes of one key while another is under way leave the latest deadline to that writer, which
    writes it next. At most one load and one write per key are in flight per process and loop.
    Reservations are each the caller's own (each takes a request), so they are not coalesced; at
    most 8 budget calls are under way at once per process and per loop, the others waiting their
    turn (for as long as a call may take; then the request goes on without the store).

    Args:
        client: a ``redis.Redis`` for the sync balancer, or None.
        async_client: a ``redis.asyncio.Redis`` for the async balancer, or None.
        prefix: prepended to every key.
        backoff_s: how long Redis is left alone after it fails; doubles at each failed retry...
        backoff_max_s: ...up to this.
        clock: monotonic time source for the backoff (seconds); injectable for tests.

    Raises:
        TypeError: no client is given, or a client of the wrong flavour.
        ValueError: a number is out of range.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        backoff_s: float = DEFAULT_BACKOFF_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is not None and isinstance(client, redis.asyncio.Redis):
            raise TypeError("client is a redis.asyncio.Redis: pass it as async_client=")
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise TypeError(f"async_client must be a redis.asyncio.Redis, got {type(async_client).__name__}")
        if client is None and async_client is None:
            raise TypeError(
                "RedisStateStore needs a client: RedisStateStore.from_url(url), or"
                " RedisStateStore(redis.Redis(...), async_client=redis.asyncio.Redis(...))"
            )
        self._url: str | None = None
        self._options: dict[str, Any] = {}
        self._owned = False  # clients given are the caller's
        self._client: Any = client
        self._given_async: Any = async_client
        wait_s = _timeouts_of(client) if client is not None else _DEFAULT_WAIT_S
        self._setup(prefix, backoff_s, backoff_max_s, clock, _describe_client(client or async_client), wait_s)

    def _setup(
        self,
        prefix: str,
        backoff_s: float,
        backoff_max_s: float,
        clock: Callable[[], float],
        target: str,
        wait_s: float,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        for name, value in (("backoff_s", backoff_s), ("backoff_max_s", backoff_max_s)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {type(clock).__name__}")
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._key_cache: dict[str, bytes] = {}
        self._budget_key_cache: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._slots = threading.BoundedSemaphore(_MAX_CALLS)  # budget calls under way (sync)
        self._lock = threading.Lock()  # guards the clients, the flights and the write slots
        self._flights: dict[tuple[str, ...], _Flight] = {}
        self._writes: dict[str, _WriteSlot] = {}
        # How long a thread waits for another's load before going on without shared state: the
        # longest that load can take (it fails by itself after its connect and read timeouts).
        self._wait_s = wait_s
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._health = _Health(target, self._scrub, float(backoff_s), float(backoff_max_s), clock)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = DEFAULT_TIMEOUT_S,
        socket_connect_timeout: float | None = None,
        backoff_s: float = DEFAULT_BACKOFF_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        **redis_options: Any,
    ) -> RedisStateStore:
        """A store on the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        Its clients are made on first need, with ``socket_timeout`` for reads and
        ``socket_connect_timeout`` (default: ``socket_timeout``) for connecting, and one immediate
        retry on a connection error only; other keyword arguments go to ``redis.Redis.from_url``
        (and its asyncio twin).

        Raises:
            ValueError: ``url`` is not a Redis URL, or a timeout is not a positive number.
        """
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must be a redis://, rediss:// or unix:// URL")
        connect_timeout = socket_timeout if socket_connect_timeout is None else socket_connect_timeout
        for name, value in (("socket_timeout", socket_timeout), ("socket_connect_timeout", connect_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        store = cls.__new__(cls)
        store._url = url
        store._options = {
            "socket_timeout": float(socket_timeout),
            "socket_connect_timeout": float(connect_timeout),
            **redis_options,
        }
        store._owned = True
        store._client = None
        store._given_async = None
        wait_s = 2 * (float(connect_timeout) + float(socket_timeout))  # connect, handshake, the call
        store._setup(prefix, backoff_s, backoff_max_s, clock, _redact_url(url), wait_s)
        return store

    def __repr__(self) -> str:
        if self._url is not None:
            where = repr(_redact_url(self._url))
        else:
            where = ", ".join(
                f"{name}={type(c).__module__}.{type(c).__qualname__}"
                for name, c in (("client", self._client), ("async_client", self._given_async))
                if c is not None
            )
        state = "local state, Redis unavailable" if self._health.failing else "sharing"
        return f"RedisStateStore({where}, prefix={self._prefix!r}; {state})"

    # ------------------------------------------------------------------ clients

    def bind(self, mode: str) -> None:
        """Check that this store can serve a ``"sync"`` or an ``"async"`` balancer (the balancer calls it).

        Raises:
            TypeError: the store has no client of that flavour.
        """
        if self._owned:
            return
        if mode == "sync" and self._client is None:
            raise TypeError(
                "RedisStateStore has no sync client for LoadBalancer: pass client=redis.Redis(...)"
                " or build it with RedisStateStore.from_url(url)"
            )
        if mode == "async" and self._given_async is None:
            raise TypeError(
                "RedisStateStore has no asyncio client for AsyncLoadBalancer: pass"
                " async_client=redis.asyncio.Redis(...) or build it with RedisStateStore.from_url(url)"
            )

    def _sync_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    if self._url is None:
                        raise TypeError("RedisStateStore has no sync client")
                    options = {"retry": _Retry(NoBackoff(), 1, _RETRIED), **self._options}
                    client = self._client = redis.Redis.from_url(self._url, **options)
        return client

    def _loop_state(self) -> _LoopState:
        # An asyncio client belongs to the loop it first ran on: the store makes one per loop.
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                client = self._given_async
                if client is None:
                    if self._url is None:
                        raise TypeError("RedisStateStore has no asyncio client")
                    options = {"retry": _AsyncRetry(NoBackoff(), 1, _RETRIED), **self._options}
                    client = redis.asyncio.Redis.from_url(self._url, **options)
                state = self._loops[loop] = _LoopState(client)
        return state

    def close(self) -> None:
        """Close the sync client this store made (clients given to it are the caller's to close)."""
        if self._owned:
            with self._lock:
                client, self._client = self._client, None
            if client is not None:
                client.close()

    async def aclose(self) -> None:
        """Close the clients this store made: the sync one, and the asyncio one of the running loop."""
        self.close()
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.pop(loop, None)
        if state is not None and self._owned:
            await state.client.aclose()

    # ------------------------------------------------------------------ the StateStore protocol

    def load(self, keys: Sequence[str]) -> list[SharedState | None]:
        """Every key's live record, None where there is none (everywhere while Redis is unavailable)."""
        token = tuple(keys)
        with self._lock:
            flight = self._flights.get(token)
            if flight is None:
                flight = self._flights[token] = _Flight()
                done = None
            else:
                done = flight.done
                if done is None:
                    done = flight.done = threading.Event()
        if done is None:  # this thread loads; others asking meanwhile wait for its answer
            try:
                flight.result = self._load_now(keys)
            finally:
                with self._lock:
                    del self._flights[token]
                    waiting = flight.done
                if waiting is not None:
                    waiting.set()
        else:
            done.wait(self._wait_s)
        result = flight.result
        return result if result is not None else [None] * len(keys)

    def _load_now(self, keys: Sequence[str]) -> list[SharedState | None] | None:
        ticket = self._health.gate()
        if ticket == _SKIP:
            return None
        try:
            reply = _LOAD_SCRIPT.call(self._sync_client(), self._keys(keys), ())
            result = _parse_load(reply, len(keys))
        except Exception as exc:
            self._health.failed(ticket, exc)
            return None
        self._health.ok(ticket, wrote=False)
        return result

    async def aload(self, keys: Sequence[str]) -> list[SharedState | None]:
        state = self._loop_state()
        token = tuple(keys)
        flight = state.flights.get(token)
        if flight is not None:
            result = await asyncio.shield(flight)
        else:
            flight = state.flights[token] = asyncio.get_running_loop().create_future()
            result = None
            try:
                result = await self._aload_now(state.client, keys)
            finally:
                del state.flights[token]
                flight.set_result(result)
        return result if result is not None else [None] * len(keys)

    async def _aload_now(self, client: Any, keys: Sequence[str]) -> list[SharedState | None] | None:
        ticket = self._health.gate()
        if ticket == _SKIP:
            return None
        try:
            reply = await _LOAD_SCRIPT.acall(client, self._keys(keys), ())
            result = _parse_load(reply, len(keys))
        except Exception as exc:
            self._health.failed(ticket, exc)
            return None
        self._health.ok(ticket, wrote=False)
        return result

    def set_aside(self, key: str, record: SharedState) -> None:
        """Record the backend as set aside for ``record.cooling_s``, unless a later deadline is kept."""
        next_record = self._claim_write(key, record)
        try:
            while next_record is not None:
                args = _set_aside_args(next_record)
                if args is not None:
                    self._call(_SET_ASIDE_SCRIPT, key, args)
                next_record = self._next_write(key)
        except BaseException:
            self._drop_write(key)
            raise

    async def aset_aside(self, key: str, record: SharedState) -> None:
        next_record = self._claim_write(key, record)
        if next_record is None:
            return
        client = self._loop_state().client
        try:
            while next_record is not None:
                args = _set_aside_args(next_record)
                if args is not None:
                    await self._acall(client, _SET_ASIDE_SCRIPT, key, args)
                next_record = self._next_write(key)
        except BaseException:
            self._drop_write(key)
            raise

    def clear_failure(self, key: str) -> None:
        """The backend's breaker closed: drop its record if that record is a failure (not a throttle)."""
        self._forget_pending_failure(key)
        self._call(_CLEAR_FAILURE_SCRIPT, key, ())

    async def aclear_failure(self, key: str) -> None:
        self._forget_pending_failure(key)
        await self._acall(self._loop_state().client, _CLEAR_FAILURE_SCRIPT, key, ())

    # ------------------------------------------------------------------ the BudgetStore protocol

    def reserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation:
        """Apply ``reports``, read every key's record and take one request, and ``cost`` tokens, from
        ``keys[index]``'s budget: one ``EVALSHA``, atomic on the server.

        While Redis is unavailable (or every slot stays busy for as long as a call may take), the
        answer is granted, counted nowhere and records nothing: the balancer goes on its local state.
        """
        call = _reserve_call(self, keys, index, reports, probe_ttl_s, cost)
        if not self._slots.acquire(timeout=self._wait_s):
            return _local(len(keys))
        try:
            ticket = self._health.gate()
            if ticket == _SKIP:
                return _local(len(keys))
            try:
                reply = _RESERVE_SCRIPT.call(self._sync_client(), *call)
                result = _parse_reservation(reply, len(keys))
            except Exception as exc:
                self._health.failed(ticket, exc)
                return _local(len(keys))
        finally:
            self._slots.release()
        # A reservation with reports (applied) or granted as a probe wrote; others may not have.
        self._health.ok(ticket, wrote=bool(reports) or result.probe)
        return result

    async def areserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation:
        call = _reserve_call(self, keys, index, reports, probe_ttl_s, cost)
        state = self._loop_state()
        if not await self._acquire(state.slots):
            return _local(len(keys))
        try:
            ticket = self._health.gate()
            if ticket == _SKIP:
                return _local(len(keys))
            try:
                reply = await _RESERVE_SCRIPT.acall(state.client, *call)
                result = _parse_reservation(reply, len(keys))
            except Exception as exc:
                self._health.failed(ticket, exc)
                return _local(len(keys))
        finally:
            state.slots.release()
        self._health.ok(ticket, wrote=bool(reports) or result.probe)
        return result

    def report(self, reports: Sequence[BudgetReport]) -> None:
        """Set each reported backend's counter to what it said (a live counter is only lowered): one
        ``EVALSHA``, none when there is nothing to report."""
        call = _report_call(self, reports)
        if call is None or not self._slots.acquire(timeout=self._wait_s):
            return
        try:
            self._run(_REPORT_SCRIPT, *call)
        finally:
            self._slots.release()

    async def areport(self, reports: Sequence[BudgetReport]) -> None:
        call = _report_call(self, reports)
        if call is None:
            return
        state = self._loop_state()
        if not await self._acquire(state.slots):
            return
        try:
            await self._arun(state.client, _REPORT_SCRIPT, *call)
        finally:
            state.slots.release()

    async def _acquire(self, slots: asyncio.Semaphore) -> bool:
        """Take a slot, waiting at most as long as a call may take; False if none came free."""
        if not slots.locked():
            await slots.acquire()  # free: taken without suspending
            return True
        try:
            await asyncio.wait_for(slots.acquire(), self._wait_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return False
        return True

    # ------------------------------------------------------------------ the OwnerStore protocol

    def owners(self, ids: Sequence[str]) -> list[str | None]:
        """The key of the backend holding each object (None where none is recorded): one ``MGET``."""
        ticket = self._health.gate()
        if ticket == _SKIP or not ids:
            return [None] * len(ids)
        try:
            values = self._sync_client().mget(self._owner_keys(ids))
        except Exception as exc:
            self._health.failed(ticket, exc)
            return [None] * len(ids)
        self._health.ok(ticket, wrote=False)
        return [_text(v) for v in values]

    async def aowners(self, ids: Sequence[str]) -> list[str | None]:
        ticket = self._health.gate()
        if ticket == _SKIP or not ids:
            return [None] * len(ids)
        try:
            values = await self._loop_state().client.mget(self._owner_keys(ids))
        except Exception as exc:
            self._health.failed(ticket, exc)
            return [None] * len(ids)
        self._health.ok(ticket, wrote=False)
        return [_text(v) for v in values]

    def set_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None:
        """Record ``owner`` as the backend of every object in ``ids``, each for ``ttl_s``: one round trip."""
        ticket = self._health.gate()
        if ticket == _SKIP or not ids:
            return
        try:
            pipe = self._sync_client().pipeline(transaction=False)
            for key in self._owner_keys(ids):
                pipe.set(key, owner, px=_ms(ttl_s))
            pipe.execute()
        except Exception as exc:
            self._health.failed(ticket, exc)
            return
        self._health.ok(ticket)

    async def aset_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None:
        ticket = self._health.gate()
        if ticket == _SKIP or not ids:
            return
        try:
            pipe = self._loop_state().client.pipeline(transaction=False)
            for key in self._owner_keys(ids):
                pipe.set(key, owner, px=_ms(ttl_s))
            await pipe.execute()
        except Exception as exc:
            self._health.failed(ticket, exc)
            return
        self._health.ok(ticket)

    def _owner_keys(self, ids: Sequence[str]) -> list[bytes]:
        head = self._prefix_bytes + b"obj:"
        return [head + object_id.encode("utf-8", "replace") for object_id in ids]

    # ------------------------------------------------------------------ helpers

    def _call(self, script: _Script, key: str, args: Sequence[bytes | int]) -> None:
        self._run(script, (self._key(key),), args)

    def _run(self, script: _Script, keys: Sequence[bytes], args: Sequence[bytes | int]) -> None:
        ticket = self._health.gate()
        if ticket == _SKIP:
            return
        try:
            result = script.call(self._sync_client(), keys, args)
        except Exception as exc:
            self._health.failed(ticket, exc)
            return
        self._health.ok(ticket, wrote=script.writes and bool(result))

    async def _acall(self, client: Any, script: _Script, key: str, args: Sequence[bytes | int]) -> None:
        await self._arun(client, script, (self._key(key),), args)

    async def _arun(
        self, client: Any, script: _Script, keys: Sequence[bytes], args: Sequence[bytes | int]
    ) -> None:
        ticket = self._health.gate()
        if ticket == _SKIP:
            return
        try:
            result = await script.acall(client, keys, args)
        except Exception as exc:
            self._health.failed(ticket, exc)
            return
        self._health.ok(ticket, wrote=script.writes and bool(result))

    def _claim_write(self, key: str, record: SharedState) -> SharedState | None:
        """``record`` if the caller is to write it now; None if a write of ``key`` is under way, which
        then writes ``record`` next unless a later deadline is already waiting."""
        with self._lock:
            slot = self._writes.get(key)
            if slot is None:
                self._writes[key] = _WriteSlot()
                return record
            until = time.monotonic() + record.cooling_s
            if slot.pending is None or until > slot.pending_until:
                slot.pending, slot.pending_until = record, until
            return None

    def _next_write(self, key: str) -> SharedState | None:
        """What the writer of ``key`` writes next (its cooldown counted from now), or None: it is done."""
        with self._lock:
            slot = self._writes[key]
            record, until = slot.pending, slot.pending_until
            slot.pending = None
            if record is None:
                del self._writes[key]
                return None
        cooling_s = until - time.monotonic()
        if cooling_s <= 0:
            return self._next_write(key)
        return SharedState(
            cooling_s, record.reason, record.failures, record.remaining_requests, record.remaining_tokens
        )

    def _drop_write(self, key: str) -> None:
        with self._lock:
            self._writes.pop(key, None)

    def _forget_pending_failure(self, key: str) -> None:
        with self._lock:
            slot = self._writes.get(key)
            if slot is not None and slot.pending is not None and slot.pending.reason == "failed":
                slot.pending = None

    def _key(self, key: str) -> bytes:
        full = self._key_cache.get(key)
        if full is None:
            full = self._prefix_bytes + key.encode()
            if len(self._key_cache) < 4096:
                self._key_cache[key] = full
        return full

    def _keys(self, keys: Sequence[str]) -> list[bytes]:
        return [self._key(k) for k in keys]

    def _budget_keys(self, key: str) -> tuple[bytes, bytes, bytes]:
        """The keys of ``key``'s budget counter, its limit and its token counter (next to its record,
        in its slot)."""
        names = self._budget_key_cache.get(key)
        if names is None:
            record = self._key(key)
            names = (record + b"#budget", record + b"#limit", record + b"#tokens")
            if len(self._budget_key_cache) < 4096:
                self._budget_key_cache[key] = names
        return names

    def _scrub(self, text: str) -> str:
        """``text`` without the URL's password (as given and percent-decoded)."""
        for secret in _secrets_of(self._url):
            text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------------- encoding


def _set_aside_args(record: SharedState) -> tuple[int, bytes] | None:
    """The script's arguments for ``record``: cooldown in microseconds, and the rest of the value."""
    cooling = record.cooling_s
    if not (isinstance(cooling, int | float) and math.isfinite(cooling) and cooling > 0):
        return None
    reason = record.reason
    if reason not in _REASONS.values():
        return None
    tail = f" {reason} {max(int(record.failures), 0)} {_opt(record.remaining_requests)} "
    tail += _opt(record.remaining_tokens)
    return max(math.ceil(cooling * 1_000_000), 1), tail.encode()


def _reserve_call(
    store: RedisStateStore,
    keys: Sequence[str],
    index: int,
    reports: Sequence[BudgetReport],
    probe_ttl_s: float,
    cost: int,
) -> tuple[list[bytes], list[bytes | int]]:
    """The reserve script's keys and arguments (see _RESERVE)."""
    index = range(len(keys))[index]  # as a list index: negative counts from the end; IndexError if out
    names = store._keys(keys)
    names += store._budget_keys(keys[index])
    args: list[bytes | int] = [len(keys), index + 1, max(math.ceil(probe_ttl_s * 1000), 1)]
    args.append(min(max(int(cost), 0), _MAX_COUNT))
    _add_reports(store, reports, names, args)
    return names, args


def _report_call(
    store: RedisStateStore, reports: Sequence[BudgetReport]
) -> tuple[list[bytes], list[bytes | int]] | None:
    """The report script's keys and arguments (see _REPORT), or None when there is nothing to apply."""
    names: list[bytes] = []
    args: list[bytes | int] = []
    _add_reports(store, reports, names, args)
    return (names, args) if names else None


def _add_reports(
    store: RedisStateStore, reports: Sequence[BudgetReport], names: list[bytes], args: list[bytes | int]
) -> None:
    for r in reports:
        reset = r.reset_s
        if not (isinstance(reset, int | float) and math.isfinite(reset)):
            continue
        names += store._budget_keys(r.key)
        args.append(b"-" if r.remaining is None else int(r.remaining))
        micros = math.ceil(reset * 1_000_000) if reset > 0 else 0
        args.append(-micros if r.estimated is True else micros)
        args.append(b"-" if r.limit is None else int(r.limit))
        tokens = r.remaining_tokens
        args.append(b"-" if tokens is None else max(min(int(tokens), _MAX_COUNT), -_MAX_COUNT))


def _parse_reservation(reply: Any, count: int) -> Reservation:
    verdict, wait_us = int(reply[2]), int(reply[3])
    records = _parse_load(reply, count, 2)
    return Reservation(verdict > 0, verdict == 2, wait_us / 1_000_000, records, verdict == -1)


def _local(count: int) -> Reservation:
    """The answer while Redis is not asked: granted and counted nowhere, no record (local state decides)."""
    return Reservation(True, False, 0.0, [None] * count)


def _text(value: Any) -> str | None:
    """A stored owner as text (the client may or may not decode replies)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _ms(seconds: float) -> int:
    return max(math.ceil(seconds * 1000), 1) if math.isfinite(seconds) else 2**62


def _opt(value: int | None) -> str:
    return "-" if value is None else str(int(value))


def _parse_load(reply: Any, count: int, skip: int = 0) -> list[SharedState | None]:
    """The records of a reply holding the server's TIME, ``skip`` other values, then the keys' values."""
    now_us = int(reply[0]) * 1_000_000 + int(reply[1])
    values = reply[2 + skip :]
    return [_parse_value(values[i] if i < len(values) else None, now_us) for i in range(count)]


def _parse_value(value: Any, now_us: int) -> SharedState | None:
    """A stored value as a record, None when it is absent, expired or not one of ours."""
    if not isinstance(value, bytes | str):
        return None
    raw = value.encode() if isinstance(value, str) else value
    parts = raw.split(b" ")
    if len(parts) != 5:
        return None
    deadline, reason_b, failures, requests, tokens = parts
    reason = _REASONS.get(reason_b)
    if reason is None or not deadline.isdigit() or not failures.isdigit():
        return None
    remaining_us = int(deadline) - now_us
    if remaining_us <= 0:
        return None
    return SharedState(
        remaining_us / 1_000_000, reason, int(failures), _int_or_none(requests), _int_or_none(tokens)
    )


def _int_or_none(value: bytes) -> int | None:
    return int(value) if value.isdigit() else None


# ---------------------------------------------------------------------- no secret in logs or repr


def _redact_url(url: str) -> str:
    """``url`` with its password (in the userinfo or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _ = userinfo.partition(":")
            # A lone userinfo may be a password written without its colon: hide it all.
            netloc = f"{user}:***@{host}" if sep and user else f"***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in ("password", "username") else v) for k, v in pairs], safe="*"
            )
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "<unparsable redis URL>"


def _secrets_of(url: str | None) -> list[str]:
    if url is None:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password, parts.username if parts.password is None else None]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return []
    secrets = {s for s in found if s}
    secrets |= {unquote(s) for s in secrets}
    return sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True)


def _timeouts_of(client: Any) -> float:
    """The longest a call of a given client can take, from its timeouts (default when unbounded)."""
    try:
        kwargs = client.connection_pool.connection_kwargs
        timeouts = [kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout")]
        if all(isinstance(t, int | float) and t > 0 for t in timeouts):
            return 2 * float(sum(timeouts))
    except Exception:
        pass
    return _DEFAULT_WAIT_S


def _describe_client(client: Any) -> str:
    """host:port/db of a client, for logs: from its pool's settings, never its password."""
    try:
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except Exception:
        return type(client).__name__


if TYPE_CHECKING:

    def _is_a_budget_store(store: RedisStateStore) -> BudgetStore:
        """Type-checked only: mypy fails here if RedisStateStore stops matching the BudgetStore protocol."""
        return store

    def _is_an_owner_store(store: RedisStateStore) -> OwnerStore:
        """Type-checked only: mypy fails here if RedisStateStore stops matching the OwnerStore protocol."""
        return store
