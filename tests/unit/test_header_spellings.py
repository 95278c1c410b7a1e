"""Each spelling of the rate-limit headers Azure sends is honoured by the balancer (DESIGN 3, 10)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import pytest
from _unit_support import A, B, MakeLb, post

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer._cooldown import REMAINING_REQUESTS, REMAINING_TOKENS, header, remaining

HUGE = "1" + "0" * 400  # well-formed, beyond a double's range


def _is_set_aside_for(client: Any, clock: Any, seconds: float) -> None:
    """A is passed over until exactly ``seconds`` after the start, then used again."""
    clock.set(clock.start + seconds - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + seconds)
    assert post(client).json() == {"host": A}


@pytest.mark.parametrize(
    ("headers", "cooldown"),
    [
        ({"x-ms-retry-after-ms": "1500", "retry-after": "10"}, 1.5),
        ({"retry-after-ms": "2500", "x-ms-retry-after-ms": "1500"}, 2.5),
        ({"x-rate-limit-reset-requests": "2s"}, 2),
        ({"x-rate-limit-reset-tokens": "1.5"}, 1.5),
        (
            {
                "x-rate-limit-reset-requests": "2s",
                "x-rate-limit-reset-tokens": "20s",
                "x-rate-limit-remaining-requests": "5",
                "x-rate-limit-remaining-tokens": "0",
            },
            20,
        ),
        ({"x-ratelimit-reset-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"}, 12),  # unknown: default
        ({"retry-after": HUGE}, 60),  # clamped to max_cooldown_s, not ignored
        ({"x-ms-retry-after-ms": HUGE}, 60),
        ({"x-rate-limit-reset-tokens": HUGE + "h"}, 60),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else str(v),
)
def test_429_spellings(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, headers: dict[str, str], cooldown: float
) -> None:
    router.script(A, (429, headers))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=12, max_cooldown_s=60))
    assert post(client).json() == {"host": B}
    _is_set_aside_for(client, clock, cooldown)


def test_5xx_honours_x_ms_retry_after_ms(make_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    router.script(A, (503, {"x-ms-retry-after-ms": "5000"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1))
    assert post(client).json() == {"host": B}
    _is_set_aside_for(client, clock, 5)


def test_success_with_hyphenated_remaining_zero_sets_aside_until_its_reset(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    spent = {"x-rate-limit-remaining-requests": "0", "x-rate-limit-reset-requests": "3s"}
    router.script(A, (200, spent))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    assert post(client).json() == {"host": A}
    _is_set_aside_for(client, clock, 3)


def test_success_with_hyphenated_remaining_shows_in_stats(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    router.script(
        A, (200, {"x-rate-limit-remaining-requests": "41", "x-rate-limit-remaining-tokens": "9000"})
    )
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert post(client).json() == {"host": A}
    (a, _) = lb.stats()
    assert (a.remaining_requests, a.remaining_tokens) == (41, 9000)


@pytest.mark.parametrize("kind", ["httpx", "httpx2", "dict"])
def test_the_remaining_counts_are_read_in_one_pass_as_by_name(kind: str) -> None:
    """``remaining`` reads what ``header`` would for both counts: the usual spelling first, any case,
    the first of a name sent twice; a mapping without raw headers is looked up by name."""
    pairs = [
        ("X-Rate-Limit-Remaining-Requests", "7"),
        ("X-RateLimit-Remaining-Requests", "5"),
        ("x-rate-limit-remaining-tokens", "900"),
        ("x-rate-limit-remaining-tokens", "800"),
        ("content-type", "application/json"),
    ]
    if kind == "dict":
        headers: Any = {k.lower(): v for k, v in reversed(pairs)}
        assert remaining(headers) == (header(headers, REMAINING_REQUESTS), header(headers, REMAINING_TOKENS))
        return
    module = httpx if kind == "httpx" else httpx2
    headers = module.Headers(pairs)
    assert remaining(headers) == (
        ("x-ratelimit-remaining-requests", "5"),
        ("x-rate-limit-remaining-tokens", "900"),
    )
    assert remaining(module.Headers({"content-type": "text/plain"})) == (
        ("x-ratelimit-remaining-requests", None),
        ("x-ratelimit-remaining-tokens", None),
    )
