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

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._backend import Backend

__all__ = ["MemoryStateStore", "SharedState", "StateStore", "shared_key"]

Reason = Literal["throttled", "failed", "exhausted"]


@dataclass(frozen=True, slots=True)
class SharedState:
    """One backend's shared record, as a store returns it."""

    cooling_s: float
    """Seconds from now until the backend may take requests again (> 0 for a live record)."""
    reason: Reason
    """Why it was set aside: a 429, a failure (its breaker is open), or a budget reported spent."""
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
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._records)} records)"

    def load(self, keys: Sequence[str]) -> list[SharedState | None]:
        now = self._clock()
        result: list[SharedState | None] = []
        with self._lock:
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
