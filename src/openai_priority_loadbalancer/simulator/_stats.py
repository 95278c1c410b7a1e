"""Counters of one simulated instance: the live, locked record and its frozen snapshot."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["MAX_RECORDS", "InstanceStats", "Outcome", "RequestRecord", "StatsRecorder"]

Outcome = Literal["served", "throttled", "failed", "unauthorized", "rejected", "not_found", "hung"]
"""What became of one request."""

MAX_RECORDS = 100_000
"""How many `RequestRecord` entries an instance keeps (the most recent ones)."""


class RequestRecord(NamedTuple):
    """One request as the instance saw it.

    Attributes:
        arrival: ``time.monotonic()`` when the request had been read.
        outcome: ``"served"`` (2xx), ``"throttled"`` (429), ``"failed"`` (5xx),
            ``"unauthorized"`` (401), ``"not_found"`` (it named a stored object this instance
            does not hold), ``"rejected"`` (another 4xx: 400, 404, 405, ...) or ``"hung"`` (a
            ``"hang"`` instance held it).
    """

    arrival: float
    outcome: Outcome


@dataclass(frozen=True)
class InstanceStats:
    """A snapshot of one instance's counters.

    Attributes:
        name: The instance.
        received: Every request read, whatever became of it.
        served: Requests admitted and answered with a 2xx (counted when admitted).
        throttled: Requests answered with a 429.
        failed: Requests answered with a 5xx.
        unauthorized: Requests answered with a 401.
        rejected: Requests answered with another 4xx (bad JSON, unknown path, ...).
        not_found: Requests that named a stored object this instance does not hold (a response,
            conversation, file or item, by path or in the body), answered with a 404 or a 400
            ``previous_response_not_found`` or ``invalid_encrypted_content``. They pass the rate
            limiter first, as on Azure: a throttled one is counted as throttled, an admitted one
            uses up one request of the window and its token cost, and is not counted as served.
        in_flight: Requests read but not answered yet (including hung ones).
        tokens: Tokens charged to the budget by admitted requests.
        window_s: The rate-limit window length.
        window_start: ``time.monotonic()`` when the first window opened (the first request
            since start or reset), ``None`` before that.
        served_per_window: Served requests in each window, from the first window to the one of
            the latest request, idle windows included as 0.
        records: The requests in arrival order (at most `MAX_RECORDS`, the latest).
    """

    name: str
    received: int
    served: int
    throttled: int
    failed: int
    unauthorized: int
    rejected: int
    not_found: int
    in_flight: int
    tokens: int
    window_s: float
    window_start: float | None
    served_per_window: tuple[int, ...]
    records: tuple[RequestRecord, ...]


class StatsRecorder:
    """The live counters and rate-limit window of one instance, safe to read from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.in_flight = 0
        self.clear()

    def clear(self) -> None:
        """Zero every counter and close the current window (call with the lock held)."""
        self.received = 0
        self.served = 0
        self.throttled = 0
        self.failed = 0
        self.unauthorized = 0
        self.rejected = 0
        self.not_found = 0
        self.tokens = 0
        self.window_start: float | None = None
        self.window_index = -1
        self.window_requests = 0
        self.window_tokens = 0
        #: Per deployment (with ``InstanceConfig.deployments``): [requests, tokens] of the window.
        self.deployment_windows: dict[str, list[int]] = {}
        self.served_per_window: list[int] = []
        self.records: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)

    def snapshot(self, window_s: float) -> InstanceStats:
        """Return a consistent frozen copy."""
        with self.lock:
            return InstanceStats(
                name=self.name,
                received=self.received,
                served=self.served,
                throttled=self.throttled,
                failed=self.failed,
                unauthorized=self.unauthorized,
                rejected=self.rejected,
                not_found=self.not_found,
                in_flight=self.in_flight,
                tokens=self.tokens,
                window_s=window_s,
                window_start=self.window_start,
                served_per_window=tuple(self.served_per_window),
                records=tuple(self.records),
            )
