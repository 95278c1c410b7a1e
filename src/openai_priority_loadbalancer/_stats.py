"""Snapshots of the balancer's counters: :meth:`BaseLoadBalancer.stats` returns a :class:`Stats`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._state import BackendState, BreakerState

__all__ = ["BackendStats", "Stats", "Totals"]


@dataclass(frozen=True, slots=True)
class BackendStats:
    """One backend's counters at the moment of the snapshot. ``backend`` is its id: no credentials."""

    backend: str
    priority: int
    requests: int
    """Attempts sent to the backend (a request that failed over counts once on each backend it tried)."""
    successes: int
    """Responses below 400."""
    throttled: int
    """429 answers."""
    failures: int
    """5xx answers and transport errors."""
    in_flight: int
    cooling_down_for_s: float
    """Seconds until it takes requests again; 0 when available."""
    breaker: BreakerState
    latency_p50_ms: float | None
    """Over its last 64 answers (to the response headers), or None before the first."""
    latency_p95_ms: float | None
    remaining_requests: int | None
    """The last ``x-ratelimit-remaining-requests`` reported, less the requests sent since; or None.
    0 while the backend is set aside for its budget (a 429, or a window reported spent)."""
    remaining_tokens: int | None
    pinned: int = 0
    """Answers to requests sent here only, because they name a stored object it holds (Responses
    API chains, conversations, files, ...)."""
    slow: int = 0
    """Attempts given up for not answering within the first-byte deadline (counted in ``failures`` too)."""
    rejected: int = 0
    """4xx answers other than 429 (the caller's problem, or a deployment the backend lacks)."""
    deployment: str | None = None
    """The deployment these counters are of, as requests name it (the path's, or a v1 body's
    ``model``); None for requests naming none. Azure meters each deployment on its own: a backend has
    a row per deployment it served, and its 429s, cooldowns and budgets are that deployment's. A
    breaker (5xx, connection errors) is the backend's, in every row."""


@dataclass(frozen=True, slots=True)
class Totals:
    """The sums over every backend."""

    requests: int
    successes: int
    throttled: int
    failures: int
    in_flight: int
    available: int
    """Backends with a row not cooling down."""
    backends: int
    pinned: int = 0
    """Answers to requests that named a stored object (sent to its backend only)."""
    slow: int = 0
    rejected: int = 0


class Stats(tuple[BackendStats, ...]):
    """A tuple of :class:`BackendStats` in configuration order, with :attr:`total` and a table as ``str``."""

    __slots__ = ()

    @property
    def total(self) -> Totals:
        return Totals(
            requests=sum(s.requests for s in self),
            successes=sum(s.successes for s in self),
            throttled=sum(s.throttled for s in self),
            failures=sum(s.failures for s in self),
            in_flight=sum(s.in_flight for s in self),
            available=len({s.backend for s in self if s.cooling_down_for_s == 0}),
            backends=len({s.backend for s in self}),
            pinned=sum(s.pinned for s in self),
            slow=sum(s.slow for s in self),
            rejected=sum(s.rejected for s in self),
        )

    def __str__(self) -> str:
        # A deployment column once rows of more than one deployment are shown.
        deployments = len({s.deployment for s in self}) > 1
        header = [
            "backend",
            *(["deployment"] if deployments else []),
            "prio",
            "requests",
            "ok",
            "429",
            "failed",
            "rejected",
            "in flight",
            "cooling s",
        ]
        header += ["breaker"]
        header += ["p50 ms", "p95 ms", "remaining req", "remaining tok"]
        pinned = any(s.pinned for s in self)  # a column only for balancers that pinned requests
        if pinned:
            header.append("pinned")
        slow = any(s.slow for s in self)  # a column only once an attempt was given up for slowness
        if slow:
            header.append("slow")
        rows: list[list[str]] = [header]
        for s in self:
            rows.append(
                [
                    s.backend,
                    *([s.deployment or "-"] if deployments else []),
                    str(s.priority),
                    str(s.requests),
                    str(s.successes),
                    str(s.throttled),
                    str(s.failures),
                    str(s.rejected),
                    str(s.in_flight),
                    f"{s.cooling_down_for_s:.1f}" if s.cooling_down_for_s else "-",
                    s.breaker,
                    _optional(s.latency_p50_ms, "{:.1f}"),
                    _optional(s.latency_p95_ms, "{:.1f}"),
                    _optional(s.remaining_requests, "{}"),
                    _optional(s.remaining_tokens, "{}"),
                    *([str(s.pinned)] if pinned else []),
                    *([str(s.slow)] if slow else []),
                ]
            )
        t = self.total
        total = [f"total ({t.available}/{t.backends} available)", *([""] if deployments else []), ""]
        total += [str(t.requests), str(t.successes)]
        total += [str(t.throttled), str(t.failures), str(t.rejected), str(t.in_flight)]
        rows.append(total + [""] * (len(header) - len(total)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        ]
        rule = "-" * max(map(len, lines))
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])

    def __repr__(self) -> str:
        return f"Stats({tuple.__repr__(self)})"


def _optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def snapshot(s: BackendState, now: float) -> BackendStats:
    latencies = sorted(s.latencies)
    remaining_requests, remaining_tokens = s.believed_budget(now)
    if s.reported is not None and now < s.cooling_until:  # set aside: what it last said, not what comes next
        remaining_requests, remaining_tokens = s.reported
    cooling = s.cooling_until > now
    if cooling and s.cooling_reason != "failed" and remaining_requests is not None:
        # Set aside for its budget (a 429, or a window reported spent): what the balancer holds is
        # the budget of the window that starts when the cooldown ends; until then there is none.
        remaining_requests = 0
    return BackendStats(
        backend=s.backend.id,
        priority=s.backend.priority,
        requests=s.requests,
        successes=s.successes,
        throttled=s.throttled,
        failures=s.failed,
        in_flight=s.in_flight,
        cooling_down_for_s=s.cooling_until - now if cooling else 0.0,
        breaker=s.breaker(now),
        latency_p50_ms=_percentile(latencies, 0.5) if latencies else None,
        latency_p95_ms=_percentile(latencies, 0.95) if latencies else None,
        remaining_requests=remaining_requests,
        remaining_tokens=remaining_tokens,
        pinned=s.pinned,
        slow=s.slow,
        rejected=s.rejected,
        deployment=s.deployment,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile, in milliseconds."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index] * 1000.0
