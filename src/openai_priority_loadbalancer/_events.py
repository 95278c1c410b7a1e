"""Typed events: what the balancer did, as it did it, for ``on_event`` callbacks.

Every attempt on a backend is one :class:`AttemptEvent` followed by exactly one outcome:
:class:`ServedEvent` (its response goes to the caller), :class:`ThrottledEvent` (429, failed over),
:class:`FailedEvent` (5xx or a transport error) or :class:`AbandonedEvent` (the request ended for a
reason that is not the backend's: cancelled, or its token provider failed). Around them:
:class:`RecoveredEvent` when a failing backend answers again, :class:`WaitedEvent` when a request
waited for a backend to free up, :class:`ExhaustedEvent` when it got the balancer's own 429, and
:class:`SetAsideEvent` when a backend is set aside with no 429 or failure of its own seen here (its
budget reported spent, or another balancer sharing the state store set it aside), and
:class:`OwnerDiscoveredEvent` when the backend holding a stored object was found by asking.

Events carry backend ids (scheme, host, port, path prefix), never credentials. ``time`` is wall-clock
seconds since the epoch (``time.time()``); durations are measured on the monotonic clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = [
    "AbandonedEvent",
    "AttemptEvent",
    "Event",
    "EventCallback",
    "ExhaustedEvent",
    "FailedEvent",
    "OwnerDiscoveredEvent",
    "RecoveredEvent",
    "ServedEvent",
    "SetAsideEvent",
    "ThrottledEvent",
    "WaitedEvent",
]


@dataclass(frozen=True, slots=True)
class AttemptEvent:
    """A request is about to be sent to ``backend``."""

    kind: ClassVar[Literal["attempt"]] = "attempt"
    time: float
    backend: str
    priority: int
    probe: bool
    """True when this is the one request allowed to test the backend (half-open breaker, spent budget)."""
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class ServedEvent:
    """``backend`` answered, and its response (any status but 429 and 5xx) goes to the caller."""

    kind: ClassVar[Literal["served"]] = "served"
    time: float
    backend: str
    status: int
    elapsed_s: float
    """From sending to the response's headers (a stream's body comes later)."""
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class ThrottledEvent:
    """``backend`` answered 429; it is set aside for ``cooldown_s`` and the request fails over."""

    kind: ClassVar[Literal["throttled"]] = "throttled"
    time: float
    backend: str
    cooldown_s: float
    elapsed_s: float
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """``backend`` failed (``cause``: the status, e.g. ``"503"``, or the error type, e.g. ``"ConnectError"``).

    Its breaker is open for ``cooldown_s``. The request fails over, except on a read or write timeout,
    which reaches the caller. ``cause`` ``"FirstByteTimeout"``: a streamed request's attempt was given
    up for not answering within its first-byte deadline (``first_byte_timeout_s``), and the request
    failed over.
    """

    kind: ClassVar[Literal["failed"]] = "failed"
    time: float
    backend: str
    cause: str
    consecutive_failures: int
    cooldown_s: float
    elapsed_s: float
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class AbandonedEvent:
    """The attempt on ``backend`` ended for a reason that is not the backend's (cancelled, token error)."""

    kind: ClassVar[Literal["abandoned"]] = "abandoned"
    time: float
    backend: str
    elapsed_s: float
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class RecoveredEvent:
    """``backend`` answered after ``after_failures`` consecutive failures: its breaker is closed."""

    kind: ClassVar[Literal["recovered"]] = "recovered"
    time: float
    backend: str
    after_failures: int
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class SetAsideEvent:
    """``backend`` is set aside for ``cooldown_s`` though no answer seen here was a 429 or a failure.

    Either its budget was reported spent (``reason="exhausted"``: an answer's
    ``x-ratelimit-remaining-*`` left nothing before the window resets, or, ``shared``, the budget
    shared with other balancers has nothing left), or another balancer sharing the state store set it
    aside (``shared``, with that balancer's reason). A 429 or a failure seen here is a
    :class:`ThrottledEvent` or a :class:`FailedEvent` instead.
    """

    kind: ClassVar[Literal["set_aside"]] = "set_aside"
    time: float
    backend: str
    reason: Literal["exhausted", "throttled", "failed"]
    cooldown_s: float
    shared: bool
    """True when it was learned from the state store, not from this balancer's own answers."""
    deployment: str | None = None
    """The deployment it is of (see ``BackendStats.deployment``); None: the request named none."""


@dataclass(frozen=True, slots=True)
class WaitedEvent:
    """A request found no backend available and waited ``waited_s`` for one to free up."""

    kind: ClassVar[Literal["waited"]] = "waited"
    time: float
    waited_s: float
    backend: None = None


@dataclass(frozen=True, slots=True)
class ExhaustedEvent:
    """No backend could take the request within its wait budget: the caller gets the balancer's 429."""

    kind: ClassVar[Literal["exhausted"]] = "exhausted"
    time: float
    retry_after_s: float
    attempts: int
    backend: None = None


@dataclass(frozen=True, slots=True)
class OwnerDiscoveredEvent:
    """The backend holding stored object ``object_id`` was not known, and was found by asking the
    backends in priority order: ``backend`` has it, and requests naming it go there from now on."""

    kind: ClassVar[Literal["owner_discovered"]] = "owner_discovered"
    time: float
    backend: str
    object_id: str


Event = (
    AttemptEvent
    | ServedEvent
    | ThrottledEvent
    | FailedEvent
    | AbandonedEvent
    | RecoveredEvent
    | SetAsideEvent
    | WaitedEvent
    | ExhaustedEvent
    | OwnerDiscoveredEvent
)

#: ``on_event`` receives every event, on the thread (or task) of the request, outside the balancer's
#: lock. Keep it quick; an exception it raises is logged and ignored.
EventCallback = Callable[[Event], None]
