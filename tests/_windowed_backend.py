"""A fake backend with a fixed request budget per window, shared by the unit and Redis budget tests."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable


class WindowedBackend:
    """An endpoint admitting ``limit`` requests per window of ``window_s`` on ``clock``, Azure-style.

    Windows start at the clock's reading when it is made. Only ``host`` is metered: another host is
    a spare backend that always answers 200. Safe to call from several threads.
    """

    def __init__(
        self, clock: Callable[[], float], limit: int, window_s: float = 1.0, host: str = "a.example"
    ) -> None:
        self.clock, self.limit, self.window_s, self.host = clock, limit, window_s, host
        self.start = clock()
        self.lock = threading.Lock()
        self.served: dict[int, int] = {}
        self.throttled = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != self.host:
            return httpx.Response(200, json={"ok": True})
        with self.lock:
            now = self.clock() - self.start
            window = int(now // self.window_s)
            wait_s = (window + 1) * self.window_s - now
            used = self.served.get(window, 0)
            if used >= self.limit:
                self.throttled += 1
                return self.throttle(wait_s)
            self.served[window] = used + 1
            return self.serve(self.limit - used - 1, wait_s)

    def throttle(self, wait_s: float) -> httpx.Response:
        """The 429 of a spent window, ``wait_s`` before its end."""
        return httpx.Response(429, headers={"retry-after-ms": str(_ms(wait_s))})

    def serve(self, remaining: int, wait_s: float) -> httpx.Response:
        """A success leaving ``remaining`` requests in a window that ends in ``wait_s``."""
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{_ms(wait_s)}ms",
        }
        return httpx.Response(200, headers=headers, json={"ok": True})


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (a real clock can read a hair before a window's end)."""
    return max(1, round(seconds * 1000))
