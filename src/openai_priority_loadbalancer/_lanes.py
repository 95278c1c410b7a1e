"""Lanes: what the balancer knows of each backend, kept per deployment.

Azure meters each deployment of a resource on its own (DESIGN 10): a chat deployment may be throttled
while an embeddings deployment on the same endpoint has room. A *lane* is one deployment's view of
every backend: a :class:`~._state.BackendState` per backend, and the :class:`~._choice.Choice` among
them. Requests naming no deployment (files, a stored response's retrieval, ...) have a lane of their
own, deployment None.

What belongs to the deployment stays in its lane: 429s and their cooldowns, request and token
budgets, the probe of an unknown budget, a deployment the backend lacks, and the counters. What
belongs to the backend, its breaker (5xx, connection errors, a slow first byte), is applied to the
backend in every lane (:meth:`Lanes.siblings`), and a lane made later starts with it.

No I/O and no lock of its own: the balancer holds its lock around every change.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from ._choice import Choice
from ._state import BackendState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._backend import Backend

__all__ = ["MAX_LANES", "Lane", "Lanes", "deployment_key"]

logger = logging.getLogger("openai-priority-loadbalancer")

#: The most lanes a balancer keeps (the one of requests naming no deployment included); requests for
#: more deployments share that one, which is not a name for each (the names are the callers').
MAX_LANES: Final = 64


def deployment_key(key: str, deployment: str) -> str:
    """The store key of ``deployment`` on the backend whose key is ``key``. ``%`` and ``#`` in the name
    are escaped: a store's own keys add ``#`` suffixes (``#budget``), and must never meet a deployment's."""
    return f"{key}#deployment={deployment.replace('%', '%25').replace('#', '%23')}"


class Lane:
    """One deployment's view of every backend, in configuration order."""

    __slots__ = ("choice", "deployment", "keys", "missing", "shared_keys", "states")

    def __init__(self, deployment: str | None, backends: Sequence[Backend], keys: Sequence[str]) -> None:
        self.deployment = deployment
        #: The backends' names in a shared store for this deployment (empty without a store): the
        #: backend's key, and for a deployment ``#deployment=`` and the name the backend knows it by.
        self.keys = [
            key
            if deployment is None
            else deployment_key(key, (b.deployments or {}).get(deployment, deployment))
            for b, key in zip(backends, keys, strict=False)
        ]
        self.states = [
            BackendState(b, i, deployment, self.keys[i] if self.keys else "") for i, b in enumerate(backends)
        ]
        #: What the lane reads from a store: its own keys, then (for a deployment) the backends' own,
        #: under which their breakers are shared.
        self.shared_keys = self.keys if deployment is None else [*self.keys, *keys]
        self.choice = Choice(self.states)
        #: True once some backend answered that it lacks the deployment (see BackendState.missing_until).
        self.missing = False

    def lacking(self, now: float) -> set[int]:
        """The backends believed to lack the deployment now."""
        return {s.index for s in self.states if s.missing_until > now}

    def passed_over(self, now: float) -> set[int]:
        """The backends a request for the deployment passes over now: those believed to lack it,
        unless all are (then each is tried anyway, and the last 404 goes to the caller)."""
        lacking = self.lacking(now)
        return lacking if len(lacking) < len(self.states) else set()


class Lanes:
    """The lanes of one balancer: the one of requests naming no deployment, and one per deployment seen."""

    __slots__ = ("_backends", "_default", "_full", "_keys", "by_deployment")

    def __init__(self, backends: Sequence[Backend], keys: Sequence[str]) -> None:
        self._backends = backends
        self._keys = keys
        self._full = False  # warned that there are more deployments than are kept apart
        self._default: Lane | None = None
        self.by_deployment: dict[str | None, Lane] = {}

    @property
    def default(self) -> Lane:
        """The lane of requests naming no deployment, made on first use (the caller holds the
        balancer's lock): a balancer whose requests all name one deployment never needs it."""
        lane = self._default
        if lane is None:
            lane = self._default = self._made(None)
        return lane

    def get(self, deployment: str | None) -> Lane:
        """The lane of ``deployment``, made on first sight (the caller holds the balancer's lock)."""
        lane = self.by_deployment.get(deployment)
        if lane is not None:
            return lane
        if deployment is None:
            return self.default
        if len(self.by_deployment) - (self._default is not None) >= MAX_LANES - 1:  # one for the default
            if not self._full:  # the names are the callers': not one entry or one log line each
                self._full = True
                logger.warning(
                    "more deployments than kept apart; the others share the lane of requests naming "
                    "none deployment=%s max=%d",
                    deployment,
                    MAX_LANES,
                )
            return self.default
        return self._made(deployment)

    def _made(self, deployment: str | None) -> Lane:
        lane = Lane(deployment, self._backends, self._keys)
        for state in lane.states:  # a breaker open for the backend is open for its new deployment too
            siblings = self.siblings(state.index)
            worst = max(siblings, key=lambda s: s.failures, default=None)
            if worst is not None and worst.failures:
                state.failures = worst.failures
                state.cooling_until = worst.cooling_until
                state.cooling_reason = "failed"
                state.probing = any(s.probing for s in siblings)  # its probe is out
        self.by_deployment[deployment] = lane
        return lane

    def backend_key(self, index: int) -> str:
        """The store key of backend ``index`` itself: its breaker is shared under it."""
        return self._keys[index]

    def hold_probe(self, state: BackendState) -> None:
        """``state``'s attempt is its backend's breaker probe: the backend's other deployments wait
        for it too (one probe per backend, not one per deployment)."""
        for s in self.siblings(state.index):
            s.probing = True

    def siblings(self, index: int) -> list[BackendState]:
        """The states of backend ``index`` in every lane."""
        return [lane.states[index] for lane in self.by_deployment.values()]

    def rows(self) -> list[BackendState]:
        """The states stats show, backend by backend in configuration order: one per deployment seen,
        and one for requests naming none if there were some (or no deployment was seen)."""
        lanes = [lane for lane in self.by_deployment.values() if lane is not self._default]
        default = self._default
        if not lanes or (default is not None and any(s.requests or s.in_flight for s in default.states)):
            lanes.insert(0, self.default)
        return [lane.states[i] for i in range(len(self._backends)) for lane in lanes]
