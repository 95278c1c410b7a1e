"""When no backend can take a request now: how long it may wait, when to look again, and the 429 it
gets when waiting would take too long.

Pure functions of the backends' states (read under the balancer's lock): no I/O.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any, Final

from . import _affinity
from ._routing import EXTENSION, Attempt, Routing

if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence

    from ._affinity import Pin
    from ._http import HttpLib, Request, Response
    from ._state import BackendState

__all__ = ["PROBE_POLL_S", "next_chance", "probe_release", "soonest_free", "synthesize_429", "wait_budget"]

logger = logging.getLogger("openai-priority-loadbalancer")

# While a probe is out (a half-open breaker, a spent budget), waiting requests look again this often.
PROBE_POLL_S: Final = 0.02
# The shortest wait: a backend tried by this request and free again "now" is not hammered in a loop.
MIN_WAIT_S: Final = 0.01
# The soonest Retry-After the synthesized 429 names: a floor that keeps a caller from spinning when a
# backend is free again "now" but was already tried by this request.
_MIN_RETRY_AFTER_S: Final = 0.1


def wait_budget(request: Request, max_wait_s: float) -> float:
    """How long a request may wait for a backend: ``max_wait_s``, within the request's read timeout."""
    timeout = request.extensions.get("timeout")
    read = timeout.get("read") if isinstance(timeout, dict) else None
    if isinstance(read, int | float) and read < max_wait_s:
        return float(read)
    return max_wait_s


def next_chance(
    states: Sequence[BackendState], lock: threading.Lock, now: float, awaiting_probe: bool = False
) -> float:
    """Seconds until one of ``states`` may take a request: its cooldown ends, or a probe may have
    returned (one of ours, or, with ``awaiting_probe``, another balancer's)."""
    with lock:
        soonest = min(s.cooling_until for s in states)
        probing = awaiting_probe or any(s.probing for s in states)
    delay = soonest - now
    if probing:
        delay = min(delay, PROBE_POLL_S) if delay > 0 else PROBE_POLL_S
    return max(delay, MIN_WAIT_S)


def probe_release(states: Sequence[BackendState], lock: threading.Lock, now: float) -> float:
    """The soonest moment one of ``states`` held back only by the probe of its unknown budget lets the
    others through; -inf if there is none."""
    soonest = math.inf
    with lock:
        for s in states:
            if now >= s.cooling_until and not s.failures and s.held_by_probe(now):
                soonest = min(soonest, s.probe_sent_at + s.probe_hold_s())
    return soonest if soonest < math.inf else -math.inf


def soonest_free(states: Sequence[BackendState], lock: threading.Lock, now: float, other: float) -> float:
    """The soonest of ``other`` and the end of a cooldown of ``states`` still running."""
    with lock:
        return min([s.cooling_until for s in states if s.cooling_until > now] + [other])


def synthesize_429(
    lib: HttpLib,
    request: Request,
    now: float,
    attempts: list[Attempt],
    states: Sequence[BackendState],
    lock: threading.Lock,
    backends: int,
    pin: Pin | None = None,
    tokens_free_at: float = math.inf,
) -> tuple[Response, float]:
    """The 429 returned when none of ``states`` (of ``backends`` in all) can take the request now,
    naming the soonest moment one can (``tokens_free_at``: when a shared token budget too short for it
    ends, if that is all that stands in the way); and that wait, in seconds."""
    if tokens_free_at < math.inf:
        soonest = soonest_free(states, lock, now, tokens_free_at)
    else:
        with lock:
            soonest = min(s.cooling_until for s in states)
    # Rounded to the microsecond first, so float noise (3.2000000001 s) is not rounded up a whole unit.
    wait_s = round(max(soonest - now, _MIN_RETRY_AFTER_S), 6)
    logger.warning("all backends unavailable backends=%d retry_after_s=%.3f", backends, wait_s)
    among = states if pin is not None and pin.bound else None
    seconds = math.ceil(wait_s)
    body: dict[str, Any] = {
        "error": {
            "code": "429",
            "message": (
                f"{_affinity.unavailable(backends, among)} "
                f"Please retry after {seconds} second{'s' if seconds != 1 else ''}."
            ),
        }
    }
    response: Response = lib.Response(
        429,
        headers={
            "content-type": "application/json",
            "retry-after": str(seconds),
            "retry-after-ms": str(math.ceil(round(wait_s * 1000, 3))),
            "x-should-retry": "true",
        },
        content=json.dumps(body).encode(),
        request=request,
        extensions={EXTENSION: Routing(None, tuple(attempts), pin.why if pin is not None else None)},
    )
    return response, wait_s
