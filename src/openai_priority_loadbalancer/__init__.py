"""Priority load balancing for the OpenAI SDK: an httpx / httpx2 transport over several endpoints.

Every request goes to an available backend of the best priority; a backend that answers 429 (or fails)
is set aside until its rate limit resets and the request is retried on another one, invisibly to the
SDK. When every backend is throttled the caller gets one 429 whose ``Retry-After`` names the soonest
moment any backend frees up.

Errors: configuration mistakes raise ``TypeError`` / ``ValueError`` when backends and balancers are
built. At request time the balancer raises nothing of its own. Connection errors fail over to the next
backend, and when none is left the caller gets the balancer's 429; a read or write timeout (the backend
may have acted on the request) reaches the caller unchanged, as does any other error of the inner
transport.
"""

from __future__ import annotations

import logging

from ._affinity import Pinned
from ._backend import Backend, TokenProvider
from ._base import EXTENSION, Attempt, BackendStats, BaseLoadBalancer, Routing
from ._events import (
    AbandonedEvent,
    AttemptEvent,
    Event,
    EventCallback,
    ExhaustedEvent,
    FailedEvent,
    OwnerDiscoveredEvent,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
    WaitedEvent,
)
from ._stats import Stats, Totals
from ._store import (
    BudgetReport,
    BudgetStore,
    MemoryStateStore,
    OwnerStore,
    Reservation,
    SharedState,
    StateStore,
    shared_key,
)
from ._transports import AsyncLoadBalancer, LoadBalancer
from ._version import __version__

__all__ = [
    "Backend",
    "LoadBalancer",
    "AsyncLoadBalancer",
    "BaseLoadBalancer",
    "BackendStats",
    "Stats",
    "Totals",
    "Routing",
    "Attempt",
    "Pinned",
    "EXTENSION",
    "TokenProvider",
    "Event",
    "EventCallback",
    "AttemptEvent",
    "ServedEvent",
    "ThrottledEvent",
    "FailedEvent",
    "AbandonedEvent",
    "RecoveredEvent",
    "SetAsideEvent",
    "WaitedEvent",
    "ExhaustedEvent",
    "OwnerDiscoveredEvent",
    "StateStore",
    "SharedState",
    "BudgetStore",
    "BudgetReport",
    "Reservation",
    "MemoryStateStore",
    "OwnerStore",
    "shared_key",
    "__version__",
]

logging.getLogger("openai-priority-loadbalancer").addHandler(logging.NullHandler())
