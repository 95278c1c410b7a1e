"""Shared state: what one balancer tells the others about a backend, across processes and machines.

Each balancer keeps its own :class:`~._state.BackendState`; a :class:`StateStore` mirrors the part that
other processes need to make the same decision: that a backend is set aside, until when, why, and its
breaker's count of consecutive failures. In-flight counts stay per process.

A store is optional (``LoadBalancer(backends, state=store)``). The balancer reads every backend's
shared record before each choice (one call), and writes only when it sets a backend aside or a
breaker closes. Any error a store raises is treated as "nothing shared" and never fails a request;
stores for remote engines fail open themselves, with short timeouts (see :mod:`.redis`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._backend import Backend

__all__ = [
    "BudgetReport",
    "BudgetStore",
    "MemoryStateStore",
    "OwnerStore",
    "Reservation",
    "SharedState",
    "StateStore",
    "shared_key",
]

Reason = Literal["throttled", "failed", "exhausted", "missing"]


@dataclass(frozen=True, slots=True)
class SharedState:
    """One backend's shared record, as a store returns it."""

    cooling_s: float
    """Seconds from now until the backend may take requests again (> 0 for a live record)."""
    reason: Reason
    """Why it was set aside: a 429, a failure (its breaker is open), a budget reported spent, or
    (``"missing"``) the backend lacks the deployment the key names (it answered 404
    ``DeploymentNotFound``): its requests go to the other backends, but a reservation is not refused
    for it (a deployment lacking everywhere is still tried, for the caller's 404)."""
    failures: int
    """Consecutive failures behind an open breaker (0 when throttled)."""
    remaining_requests: int | None = None
    """The last ``x-ratelimit-remaining-requests`` seen with it, or None."""
    remaining_tokens: int | None = None


@runtime_checkable
class StateStore(Protocol):
    """Where balancers share backend state. Keys come from :func:`shared_key` (no secrets).

    Every method has a sync form (used by ``LoadBalancer``) and an async one (``AsyncLoadBalancer``).
    ``set_aside`` keeps whichever deadline is later, atomically: a shorter cooldown never overwrites
    a longer one. A record disappears by itself when its cooldown ends.

    A store may also define ``bind(mode)``: a balancer built with it calls ``bind("sync")`` or
    ``bind("async")`` first, and the store raises ``TypeError`` there if it cannot serve that mode
    (say, a store holding only an asyncio client given to a sync balancer).
    """

    def load(self, keys: Sequence[str]) -> Sequence[SharedState | None]:
        """The live record of each key (None where there is none), in the order of ``keys``."""
        ...

    async def aload(self, keys: Sequence[str]) -> Sequence[SharedState | None]: ...

    def set_aside(self, key: str, record: SharedState) -> None:
        """Record that the backend is set aside for ``record.cooling_s``, unless a later deadline is kept."""
        ...

    async def aset_aside(self, key: str, record: SharedState) -> None: ...

    def clear_failure(self, key: str) -> None:
        """The backend's breaker closed: drop its record if that record is a failure (not a throttle)."""
        ...

    async def aclear_failure(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """What a backend's answer said of its request and token budgets, for a :class:`BudgetStore`."""

    key: str
    remaining: int | None
    """``x-ratelimit-remaining-requests``; None: the backend reports no budget (it is not metered)."""
    reset_s: float
    """Seconds from now until its window resets (an estimate when the backend did not say)."""
    limit: int | None
    """``x-ratelimit-limit-requests``: what a fresh window holds, if said."""
    estimated: bool = False
    """True when the backend named no reset and ``reset_s`` is the balancer's estimate of it."""
    remaining_tokens: int | None = None
    """``x-ratelimit-remaining-tokens`` as the balancer believes it (net of what it had in flight), or
    None: the answer said nothing of tokens."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A :class:`BudgetStore`'s answer to a request for one of a backend's requests."""

    granted: bool
    probe: bool
    """Granted as the window's first request while the budget is unknown: report its answer at once."""
    wait_s: float
    """Refused: seconds until asking again is worth it (0: soon; another balancer's probe is out)."""
    records: Sequence[SharedState | None]
    """Every key's record, as :meth:`StateStore.load` returns them, read in the same step."""
    short_of_tokens: bool = False
    """Refused because the backend's token counter cannot fit this request's cost: a smaller request
    may still be granted, so the backend is not set aside for the others."""


@runtime_checkable
class BudgetStore(StateStore, Protocol):
    """A :class:`StateStore` that also shares each backend's request budget, so that many balancers
    together send a backend no more than its window holds.

    Per backend it keeps a counter of the requests left in the current window, with the window's end
    as its expiry. ``reserve`` takes one request from it (one round trip, which also returns every
    record, so a balancer sharing budgets needs no ``load``):

    - no counter and the limit known: a new window; the counter starts at the limit, less this one;
    - no counter and the limit unknown: this request is the window's probe; the others are refused
      (``wait_s`` 0) until its answer is reported or ``probe_ttl_s`` (the probe's hold, about one
      round trip: a 429 would be back by then) passes, and then granted, uncounted, until its answer
      is reported (or ``PROBE_TTL_S`` passes, and the next request probes again);
    - a counter at 0: refused until it expires (``wait_s``); above 0: granted, and counted;
    - the backend set aside (a live record): refused for as long as the record lasts.

    ``reports`` (applied first, and by ``report``) set the counter to what the backend said, or
    lower it to that if it holds more (never ending its window sooner); a report whose ``reset_s``
    is 0 forgets the counter; a report without a budget marks the backend unmetered for a minute
    (every reservation granted). Each report also records the limit, and the longest window seen
    (rounded up to a tenth of a second), which is how long a counter started from the limit lives.

    A report whose reset is ``estimated`` (the backend named none) never moves a counter's end and
    says nothing of the window's length: it lowers a live counter, starts one only in place of the
    window's probe (or of an unmetered mark), and is dropped when there is no counter (it may speak
    of a window that has ended). So the window ends when the answer of its probe said it would, and
    then the next request of the whole fleet probes again.

    Tokens: beside the request counter, each backend may have a counter of the tokens left, with its
    own expiry. A reservation's ``cost`` is the request's estimated tokens: with a live token counter
    holding fewer, it is refused (``wait_s``: until that counter expires, never 0) and takes nothing;
    granted (by the rules above), it lowers the token counter by ``cost``. A report's
    ``remaining_tokens`` lowers a live token counter to it (never ending it sooner, and an estimated
    report never moving its end), or starts one that lives ``reset_s`` (estimated or not: tokens have
    no probe). A report whose ``reset_s`` is 0 forgets it, as does one saying no budget at all (neither
    requests nor tokens); a report saying nothing of tokens leaves it as it is. No token counter, or
    ``cost`` 0: the request rules alone decide. The limit and window are of requests only: a token
    counter that expired is started again by the next report that speaks of tokens.
    """

    def reserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation: ...

    async def areserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation: ...

    def report(self, reports: Sequence[BudgetReport]) -> None: ...

    async def areport(self, reports: Sequence[BudgetReport]) -> None: ...


@runtime_checkable
class OwnerStore(Protocol):
    """A store that also keeps the owners of stored objects (responses, conversations, files, ...):
    which backend holds each, so that every balancer sharing the store sends a follow-up there.

    An optional capability: a balancer whose store lacks it keeps owners in its own process (and
    finds those it does not know by asking the backends). Both stores shipped have it.

    ``owners`` returns, for each id, the ``shared_key`` of the backend holding it (None where none is
    recorded): one round trip. ``set_owners`` records ``owner`` for every id, each for ``ttl_s``.
    Failures are the balancer's to ignore: it then goes on with what it knows locally.
    """

    def owners(self, ids: Sequence[str]) -> Sequence[str | None]: ...

    async def aowners(self, ids: Sequence[str]) -> Sequence[str | None]: ...

    def set_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None: ...

    async def aset_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None: ...


#: The most owners a MemoryStateStore keeps; beyond it, the oldest half is dropped.
MEMORY_MAX_OWNERS = 1_000_000


def window_of(reset_s: float) -> float:
    """A window's length from a reset seen in it: rounded up to a tenth of a second, because a reset
    reaches the store a little after it was measured, and a window that ends early in the store
    would let a new one begin while the backend's is still running."""
    return math.ceil(round(reset_s * 10, 6)) / 10


#: How long a backend that answered without budget headers counts as unmetered.
UNMETERED_S = 60.0
_PROBE = "probe"
#: How long a window's probe lasts in a store at most, answered or not (its hold is much shorter).
PROBE_TTL_S = 10.0
_UNMETERED = "unmetered"


def shared_key(backend: Backend) -> str:
    """The key naming ``backend`` in a shared store: ``scheme://host:port/path``, never a credential.

    A backend given as a bare host keeps the client's scheme and port, so those parts stay empty.
    """
    scheme, host, port, path = backend.origin
    return f"{scheme or ''}://{host}:{port if port is not None else ''}{path}"


class MemoryStateStore:
    """A :class:`StateStore` in this process's memory: shares state between balancers of one process.

    Useful when a sync and an async balancer (or several clients) serve the same backends, and as the
    reference implementation of the store semantics.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, tuple[float, SharedState]] = {}
        # Per key: (expires at, requests left | _PROBE | _UNMETERED), and (limit, longest window seen).
        self._budgets: dict[str, tuple[float, int | str]] = {}
        self._limits: dict[str, tuple[int, float]] = {}
        # Per key whose counter is _PROBE: until when the probe holds the others back.
        self._holds: dict[str, float] = {}
        # Per key: (expires at, tokens left).
        self._tokens: dict[str, tuple[float, int]] = {}
        # Stored object id -> (expires at, the backend's key), oldest first.
        self._owners: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._records)} records)"

    def load(self, keys: Sequence[str]) -> list[SharedState | None]:
        with self._lock:
            return self._load(keys, self._clock())

    def _load(self, keys: Sequence[str], now: float) -> list[SharedState | None]:
        result: list[SharedState | None] = []
        for key in keys:
            entry = self._records.get(key)
            if entry is None:
                result.append(None)
            elif entry[0] <= now:
                del self._records[key]
                result.append(None)
            else:
                until, record = entry
                result.append(
                    SharedState(
                        until - now,
                        record.reason,
                        record.failures,
                        record.remaining_requests,
                        record.remaining_tokens,
                    )
                )
        return result

    async def aload(self, keys: Sequence[str]) -> list[SharedState | None]:
        return self.load(keys)

    def set_aside(self, key: str, record: SharedState) -> None:
        until = self._clock() + record.cooling_s
        with self._lock:
            kept = self._records.get(key)
            if kept is None or kept[0] < until:
                self._records[key] = (until, record)

    async def aset_aside(self, key: str, record: SharedState) -> None:
        self.set_aside(key, record)

    def clear_failure(self, key: str) -> None:
        with self._lock:
            kept = self._records.get(key)
            if kept is not None and kept[1].reason == "failed":
                del self._records[key]

    async def aclear_failure(self, key: str) -> None:
        self.clear_failure(key)

    # ------------------------------------------------------------------ owners of stored objects

    def owners(self, ids: Sequence[str]) -> list[str | None]:
        now = self._clock()
        result: list[str | None] = []
        with self._lock:
            for object_id in ids:
                entry = self._owners.get(object_id)
                result.append(entry[1] if entry is not None and entry[0] > now else None)
        return result

    async def aowners(self, ids: Sequence[str]) -> list[str | None]:
        return self.owners(ids)

    def set_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None:
        expires = self._clock() + ttl_s
        with self._lock:
            owners = self._owners
            for object_id in ids:
                owners.pop(object_id, None)  # re-inserted as the newest
                owners[object_id] = (expires, owner)
            if len(owners) > MEMORY_MAX_OWNERS:
                for object_id in list(itertools.islice(owners, len(owners) - MEMORY_MAX_OWNERS // 2)):
                    del owners[object_id]

    async def aset_owners(self, ids: Sequence[str], owner: str, ttl_s: float) -> None:
        self.set_owners(ids, owner, ttl_s)

    # ------------------------------------------------------------------ budgets

    def reserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation:
        now = self._clock()
        with self._lock:
            self._apply(reports, now)
            records = self._load(keys, now)
            record = records[index]
            if record is not None and record.reason != "missing":
                return Reservation(False, False, record.cooling_s, records)
            key = keys[index]
            tokens = self._tokens.get(key) if cost > 0 else None
            if tokens is not None and tokens[0] <= now:
                tokens = None
            if tokens is not None and tokens[1] < cost:
                return Reservation(False, False, tokens[0] - now, records, True)
            result = self._take(key, now, probe_ttl_s, records)
            if result.granted and tokens is not None:
                self._tokens[key] = (tokens[0], tokens[1] - cost)
            return result

    def _take(
        self, key: str, now: float, probe_ttl_s: float, records: list[SharedState | None]
    ) -> Reservation:
        """One request from ``key``'s request counter, by the request rules alone."""
        entry = self._budgets.get(key)
        if entry is not None and entry[0] <= now:
            entry = None
        if entry is None:
            limit = self._limits.get(key)
            if limit is not None and limit[1] > 0:
                self._budgets[key] = (now + limit[1], limit[0] - 1)
                return Reservation(True, False, 0.0, records)
            self._budgets[key] = (now + max(probe_ttl_s, PROBE_TTL_S), _PROBE)
            self._holds[key] = now + probe_ttl_s
            return Reservation(True, True, 0.0, records)
        expires, left = entry
        if left == _PROBE:
            # Held back while the probe may still come back a 429; after that, it was admitted.
            granted = now >= self._holds.get(key, expires)
            return Reservation(granted, False, 0.0, records)
        if left == _UNMETERED:
            return Reservation(True, False, 0.0, records)
        assert isinstance(left, int)
        if left <= 0:
            return Reservation(False, False, expires - now, records)
        self._budgets[key] = (expires, left - 1)
        return Reservation(True, False, 0.0, records)

    async def areserve(
        self,
        keys: Sequence[str],
        index: int,
        reports: Sequence[BudgetReport],
        probe_ttl_s: float,
        cost: int = 0,
    ) -> Reservation:
        return self.reserve(keys, index, reports, probe_ttl_s, cost)

    def report(self, reports: Sequence[BudgetReport]) -> None:
        with self._lock:
            self._apply(reports, self._clock())

    async def areport(self, reports: Sequence[BudgetReport]) -> None:
        self.report(reports)

    def _apply(self, reports: Sequence[BudgetReport], now: float) -> None:
        for r in reports:
            self._apply_tokens(r, now)
            if r.limit is not None:
                seen = self._limits.get(r.key, (0, 0.0))[1]
                self._limits[r.key] = (r.limit, seen if r.estimated else max(window_of(r.reset_s), seen))
            if r.remaining is None:
                self._budgets[r.key] = (now + UNMETERED_S, _UNMETERED)
                continue
            if r.reset_s <= 0:
                self._budgets.pop(r.key, None)
                continue
            entry = self._budgets.get(r.key)
            if entry is not None and entry[0] <= now:
                entry = None
            left, expires = r.remaining, now + r.reset_s
            if entry is not None and isinstance(entry[1], int):
                # A report only lowers a live counter, and never ends its window sooner: a report of
                # the window before, arriving late, must not end the current one. An estimate never
                # moves its end at all.
                left, expires = min(left, entry[1]), (entry[0] if r.estimated else max(expires, entry[0]))
            elif entry is None and r.estimated:
                continue  # no window under way: this one may have ended; the next request probes
            self._budgets[r.key] = (expires, left)

    def _apply_tokens(self, r: BudgetReport, now: float) -> None:
        """``r``'s word on the token counter: the request counter's rules, but with no probe (a report
        starts a counter even when its reset is estimated) and no limit."""
        if r.reset_s <= 0 or (r.remaining is None and r.remaining_tokens is None):
            self._tokens.pop(r.key, None)
            return
        if r.remaining_tokens is None:
            return
        left, expires = r.remaining_tokens, now + r.reset_s
        entry = self._tokens.get(r.key)
        if entry is not None and entry[0] > now:
            left, expires = min(left, entry[1]), (entry[0] if r.estimated else max(expires, entry[0]))
        self._tokens[r.key] = (expires, left)
