"""Where a request went: the :class:`Routing` every response carries, and its :class:`Attempt` records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._affinity import Pinned

__all__ = ["EXTENSION", "Attempt", "Routing"]

#: Key of ``response.extensions`` under which every response carries its :class:`Routing`.
EXTENSION: Final = "openai_priority_loadbalancer"


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
