"""Rate-limit headers -> cooldown: the fixture cases, the parsers' tables, logging, and properties."""

from __future__ import annotations

import calendar
import json
import logging
import math
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _unit_support import LOGGER, FakeClock
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from openai_priority_loadbalancer import Backend, LoadBalancer
from openai_priority_loadbalancer._cooldown import (
    DEFAULT_MAX_COOLDOWN_S,
    RateLimitInfo,
    cooldown_from_body,
    parse_duration,
    parse_retry_after,
    read_rate_limit,
)
from openai_priority_loadbalancer._ledger import MIN_THROTTLE_S as _MIN_THROTTLE_S

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# These properties are about values, not speed: on a loaded 2-core CI machine drawing the header
# dictionaries can be slow, which must not fail the run (the default deadline and too_slow check).
settings.register_profile("values", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("values")


def short_id(value: object) -> str:
    text = ascii(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} chars)"


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "rate-limit-cases.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]

# Fri, 27 Nov 2026 14:30:00 GMT, a whole second so that HTTP-dates (whole seconds) give exact deltas.
WALL_NOW = float(calendar.timegm((2026, 11, 27, 14, 30, 0)))

RATE_LIMIT_HEADERS = (
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-rate-limit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-rate-limit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-rate-limit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-rate-limit-remaining-tokens",
)


def _raw(values: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Header bytes as from the wire (httpx takes a str value only if it is ASCII), UTF-8 here."""
    return [(name.encode(), value.encode()) for name, value in values.items()]


def _httpx_headers(values: dict[str, str]) -> Mapping[str, str]:
    return httpx.Headers(_raw(values))


def _httpx2_headers(values: dict[str, str]) -> Mapping[str, str]:
    httpx2 = pytest.importorskip("httpx2")
    headers: Mapping[str, str] = httpx2.Headers(_raw(values))
    return headers


HEADER_TYPES: dict[str, Callable[[dict[str, str]], Mapping[str, str]]] = {
    "dict": dict,
    "httpx": _httpx_headers,
    "httpx2": _httpx2_headers,
}


def case_headers(case: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = dict(case["headers"])
    if case["name"] == "http date":
        headers["retry-after"] = formatdate(WALL_NOW + 3, usegmt=True)
    return headers


def expected_cooldown(case: dict[str, Any], max_cooldown_s: float) -> float | None:
    expected = case["cooldown_s"]
    if expected == "clamped to the configured maximum":
        return max_cooldown_s
    return None if expected is None else float(expected)


def reading(case: dict[str, Any], info: RateLimitInfo, max_cooldown_s: float) -> float | None:
    """The fixture's reading of a response, as the balancer takes it from ``read_rate_limit``.

    ``read_rate_limit`` does not see the status. On a success, "no usable value" means no cooldown
    at all (the fixture's 0); the body is read only when no header gave a value.
    """
    cooldown = info.cooldown_s
    if cooldown is None and "body" in case:
        cooldown = cooldown_from_body(json.dumps(case["body"]), max_cooldown_s=max_cooldown_s)
    if cooldown is None and case["status"] < 400:
        cooldown = 0.0
    return cooldown


# ---------------------------------------------------------------------------------------- fixture


@pytest.mark.parametrize("header_type", list(HEADER_TYPES))
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_fixture_case(case: dict[str, Any], header_type: str) -> None:
    headers = HEADER_TYPES[header_type](case_headers(case))
    info = read_rate_limit(headers, wall_now=WALL_NOW)
    expected = expected_cooldown(case, DEFAULT_MAX_COOLDOWN_S)
    assert reading(case, info, DEFAULT_MAX_COOLDOWN_S) == pytest.approx(expected)


@pytest.mark.parametrize("max_cooldown_s", [60.0, 3600.0, DEFAULT_MAX_COOLDOWN_S])
@pytest.mark.parametrize("name", ["absurd", "too large to represent", "too large to represent, ms"])
def test_fixture_absurd_is_clamped_to_the_configured_maximum(max_cooldown_s: float, name: str) -> None:
    (case,) = [case for case in CASES if case["name"] == name]
    info = read_rate_limit(case_headers(case), wall_now=WALL_NOW, max_cooldown_s=max_cooldown_s)
    assert info.cooldown_s == max_cooldown_s


def test_fixture_retry_after_ms_wins_over_retry_after() -> None:
    (case,) = [case for case in CASES if case["name"] == "azure 429, ms and seconds"]
    info = read_rate_limit(case["headers"], wall_now=WALL_NOW)
    assert info == RateLimitInfo(4.312, 0, None, None, None)


def test_fixture_body_is_only_a_fallback() -> None:
    (case,) = [case for case in CASES if "body" in case]
    assert read_rate_limit(case["headers"], wall_now=WALL_NOW).cooldown_s is None
    assert cooldown_from_body(json.dumps(case["body"])) == 37.0


def test_fixture_sentinels_on_a_success_leave_the_backend_usable() -> None:
    (case,) = [case for case in CASES if case["name"] == "unknown sentinels on a success"]
    assert read_rate_limit(case["headers"], wall_now=WALL_NOW) == RateLimitInfo(0.0, None, None, None, 0.0)


def test_fixture_remaining_zero_on_a_success_says_no_reset() -> None:
    (case,) = [case for case in CASES if case["name"] == "remaining zero on a success"]
    assert read_rate_limit(case["headers"], wall_now=WALL_NOW) == RateLimitInfo(None, 0, None, None, None)


# ---------------------------------------------------------------------------------- parse_duration

DURATIONS = {
    "1s": 1.0,
    "6m0s": 360.0,
    "250ms": 0.25,
    "1h2m3.5s": 3723.5,
    "2m59.56s": 179.56,
    "1h": 3600.0,
    "1.5m": 90.0,
    "0s": 0.0,
    ".5s": 0.5,
    "1.s": 1.0,
    "500us": 5e-4,
    "500\u00b5s": 5e-4,
    "500\u03bcs": 5e-4,
    "100ns": 1e-7,
    "1s1s": 2.0,
    "1.5": 1.5,
    "2": 2.0,
    "0": 0.0,
    "0.532": 0.532,
    "007": 7.0,
    "  7 ": 7.0,
    "\t1s\t": 1.0,
    "99999999999": 99999999999.0,
}
MALFORMED_DURATIONS = [
    "",
    " ",
    "1x",
    "1d",
    "s",
    "ms",
    "1.2.3s",
    "1..2s",
    ".",
    ".s",
    "--1",
    "-5",
    "-1",
    "-1s",
    "+5",
    "+5s",
    "1h-2m",
    "1e3",
    "1e400",
    "nan",
    "inf",
    "Infinity",
    "0x10",
    "\u0663",
    "\u0663s",
    "1_0",
    "1_0s",
    "1 s",
    "1s 2m",
    "1S",
    "1H",
    "\u00a05",
    "5\n",
    "9" * 400,
    "9" * 400 + "s",
    "1" + "0" * 305 + "h1" + "0" * 305 + "h",
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS.items(), ids=list(DURATIONS))
def test_parse_duration(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", MALFORMED_DURATIONS, ids=short_id)
def test_parse_duration_malformed(value: str) -> None:
    assert parse_duration(value) is None


# ------------------------------------------------------------------------------- parse_retry_after

RETRY_AFTERS = {
    "5": 5.0,
    "0": 0.0,
    "37": 37.0,
    "0.532": 0.532,
    ".5": 0.5,
    "  7 ": 7.0,
    "\t7": 7.0,
    "99999999999": 99999999999.0,
    # HTTP-dates, WALL_NOW being Fri, 27 Nov 2026 14:30:00 GMT
    "Fri, 27 Nov 2026 14:30:03 GMT": 3.0,
    "fri, 27 nov 2026 14:30:03 gmt": 3.0,
    "Fri, 27 Nov 2026 14:30:03 UTC": 3.0,
    "Fri, 27 Nov 2026 14:30:03 UT": 3.0,
    "Fri, 27 Nov 2026 14:30:03 +0000": 3.0,
    "Fri, 27 Nov 2026 14:30:03 -0000": 3.0,
    "Fri, 27 Nov 2026 15:30:03 +0100": 3.0,
    "Fri, 27 Nov 2026 12:00:03 -0230": 3.0,
    "Fri,27 Nov 2026 14:30:03 GMT": 3.0,
    "Fri, 7 Nov 2026 14:30:03 GMT": 0.0,
    "Fri, 27 Nov 2026 15:30:00 GMT": 3600.0,
    "Mon, 27 Nov 2026 14:30:03 GMT": 3.0,  # a day name that does not match the date is tolerated
    "Friday, 27-Nov-26 14:30:03 GMT": 3.0,  # RFC 850
    "Friday, 27-Nov-2026 14:30:03 GMT": 3.0,
    "Fri Nov 27 14:30:03 2026": 3.0,  # asctime
    "Fri, 27 Nov 2026 14:30:00 GMT": 0.0,  # now
    "Fri, 27 Nov 2026 14:29:00 GMT": 0.0,  # past
    "Sun, 06 Nov 1994 08:49:37 GMT": 0.0,
    "Sunday, 06-Nov-94 08:49:37 GMT": 0.0,
    "Sun Nov  6 08:49:37 1994": 0.0,
    "Wednesday, 27-Nov-69 14:30:03 GMT": 0.0,  # two-digit years: 69 -> 1969, 68 -> 2068
    "Tuesday, 27-Nov-68 14:30:00 GMT": calendar.timegm((2068, 11, 27, 14, 30, 0)) - WALL_NOW,
    "Fri, 31 Dec 9999 23:59:59 GMT": calendar.timegm((9999, 12, 31, 23, 59, 59)) - WALL_NOW,
}
MALFORMED_RETRY_AFTERS = [
    "",
    " ",
    "soon",
    "-5",
    "-0.5",
    "+5",
    "--1",
    "5s",
    "1.2.3",
    "1e3",
    "1e400",
    "9" * 400,
    "nan",
    "NaN",
    "inf",
    "-inf",
    "\u0663",
    "\u0663\u0667",
    "1_0",
    "5 6",
    "0x10",
    "Xyz, 27 Nov 2026 14:30:03 GMT",  # bad day name
    "Fr, 27 Nov 2026 14:30:03 GMT",
    "27 Nov 2026 14:30:03 GMT",  # no day name
    "Fri, 27 Foo 2026 14:30:03 GMT",
    "Fri, 31 Feb 2026 14:30:03 GMT",
    "Fri, 32 Nov 2026 14:30:03 GMT",
    "Fri, 27 Nov 2026 24:00:00 GMT",
    "Fri, 27 Nov 2026 14:60:00 GMT",
    "Fri, 27 Nov 0000 14:30:03 GMT",
    "Fri, 27 Nov 26 14:30:03 GMT",
    "Fri, 27 Nov 2026 14:30:03 EST",
    "Fri, 27 Nov 2026 14:30:03",
    "Fri, 27 Nov 2026 14:30:03 +01",
    "Fri, 27 Nov 2026 4:30:03 GMT",
    "Fri, \u0662\u0667 Nov 2026 14:30:03 GMT",
    "Fri, 27 Nov 2026 14:30:03 GMT garbage",
    "Friday, 27-Foo-26 14:30:03 GMT",
    "Fri Foo 27 14:30:03 2026",
    "Xyz Nov 27 14:30:03 2026",
    "Fri Nov 27 14:30:03 26",
]


@pytest.mark.parametrize(("value", "seconds"), RETRY_AFTERS.items(), ids=list(RETRY_AFTERS))
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, wall_now=WALL_NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", MALFORMED_RETRY_AFTERS, ids=short_id)
def test_parse_retry_after_malformed(value: str) -> None:
    assert parse_retry_after(value, wall_now=WALL_NOW) is None


def test_parse_retry_after_date_is_relative_to_wall_now() -> None:
    date = formatdate(WALL_NOW + 3, usegmt=True)
    assert parse_retry_after(date, wall_now=WALL_NOW) == 3.0
    assert parse_retry_after(date, wall_now=WALL_NOW + 1) == 2.0
    assert parse_retry_after(date, wall_now=WALL_NOW + 10) == 0.0


@pytest.mark.parametrize("wall_now", [math.nan, math.inf, -math.inf])
def test_parse_retry_after_date_with_a_wall_now_that_is_not_finite(wall_now: float) -> None:
    assert parse_retry_after("Fri, 27 Nov 2026 14:30:03 GMT", wall_now=wall_now) is None
    assert parse_retry_after("5", wall_now=wall_now) == 5.0


# ------------------------------------------------------------------------------ read_rate_limit

PRECEDENCE = {
    "ms wins over seconds": ({"retry-after-ms": "1500", "retry-after": "5"}, 1.5),
    "ms zero": ({"retry-after-ms": "0", "retry-after": "5"}, 0.0),
    "ms float": ({"retry-after-ms": "12.5"}, 0.0125),
    "malformed ms falls back to seconds": ({"retry-after-ms": "soon", "retry-after": "5"}, 5.0),
    "negative ms falls back to seconds": ({"retry-after-ms": "-1", "retry-after": "5"}, 5.0),
    "seconds win over resets": ({"retry-after": "5", "x-ratelimit-reset-requests": "20s"}, 5.0),
    "date wins over resets": (
        {"retry-after": "Fri, 27 Nov 2026 14:30:03 GMT", "x-ratelimit-reset-requests": "20s"},
        3.0,
    ),
    "malformed seconds fall back to resets": (
        {"retry-after": "soon", "x-ratelimit-reset-requests": "20s"},
        20.0,
    ),
    "all malformed": (
        {"retry-after-ms": "x", "retry-after": "y", "x-ratelimit-reset-requests": "z"},
        None,
    ),
    "plain-second reset": ({"x-ratelimit-reset-tokens": "2.5"}, 2.5),
    "reset zero": ({"x-ratelimit-reset-requests": "0s"}, 0.0),
    "remaining only": ({"x-ratelimit-remaining-tokens": "0"}, None),
    "unrelated headers only": ({"content-type": "application/json", "x-ratelimit-limit-tokens": "-1"}, None),
}


@pytest.mark.parametrize(("headers", "cooldown_s"), PRECEDENCE.values(), ids=list(PRECEDENCE))
def test_precedence(headers: dict[str, str], cooldown_s: float | None) -> None:
    assert read_rate_limit(headers, wall_now=WALL_NOW).cooldown_s == pytest.approx(cooldown_s)


# (reset-requests, reset-tokens, remaining-requests, remaining-tokens) -> cooldown_s
BOTH_RESETS: dict[str, tuple[str | None, str | None, str | None, str | None, float | None]] = {
    "tokens exhausted": ("2s", "20s", "5", "0", 20.0),
    "tokens exhausted, shorter reset": ("20s", "2s", "5", "0", 2.0),
    "requests exhausted": ("2s", "20s", "0", "5000", 2.0),
    "requests exhausted, longer reset": ("20s", "2s", "0", "5000", 20.0),
    "both exhausted: the longer": ("2s", "20s", "0", "0", 20.0),
    "both exhausted: the longer, requests": ("20s", "2s", "0", "0", 20.0),
    "neither exhausted: the longer": ("2s", "20s", "3", "5000", 20.0),
    "neither exhausted: the longer, requests": ("20s", "2s", "3", "5000", 20.0),
    "remaining absent: the longer": ("2s", "20s", None, None, 20.0),
    "requests exhausted, tokens absent: the longer": ("2s", "20s", "0", None, 20.0),
    "requests exhausted, tokens unknown: the longer": ("2s", "20s", "0", "-1", 20.0),
    "tokens exhausted, requests unknown: the longer": ("20s", "2s", "-1", "0", 20.0),
    "tokens exhausted, requests malformed: the longer": ("20s", "2s", "many", "0", 20.0),
    "equal resets": ("5s", "5s", "0", "0", 5.0),
    "reset-tokens unknown: reset-requests": ("2s", "-1", "5", "0", 2.0),
    "reset-requests unknown: reset-tokens": ("-1", "20s", "0", "5", 20.0),
    "reset-tokens malformed: reset-requests": ("2s", "soon", "5", "0", 2.0),
    "both resets unknown": ("-1", "-1", "0", "0", None),
    "only reset-tokens, requests exhausted": (None, "20s", "0", "5", 20.0),
}


@pytest.mark.parametrize(
    ("reset_requests", "reset_tokens", "remaining_requests", "remaining_tokens", "cooldown_s"),
    BOTH_RESETS.values(),
    ids=list(BOTH_RESETS),
)
def test_both_resets(
    reset_requests: str | None,
    reset_tokens: str | None,
    remaining_requests: str | None,
    remaining_tokens: str | None,
    cooldown_s: float | None,
) -> None:
    values = {
        "x-ratelimit-reset-requests": reset_requests,
        "x-ratelimit-reset-tokens": reset_tokens,
        "x-ratelimit-remaining-requests": remaining_requests,
        "x-ratelimit-remaining-tokens": remaining_tokens,
    }
    headers = {name: value for name, value in values.items() if value is not None}
    assert read_rate_limit(headers, wall_now=WALL_NOW).cooldown_s == cooldown_s


REMAINING = {
    "0": 0,
    "5": 5,
    "149984": 149984,
    " 7 ": 7,
    "0005": 5,
    "9" * 30: int("9" * 30),
    "-1": None,
    " -1 ": None,
    "": None,
    "-2": None,
    "+5": None,
    "5.0": None,
    "1e3": None,
    "1_000": None,
    "\u0663": None,
    "\u00b2": None,
    "9" * 31: None,
    "9" * 5000: None,
    "many": None,
}


@pytest.mark.parametrize(("value", "count"), REMAINING.items(), ids=short_id)
def test_remaining(value: str, count: int | None) -> None:
    headers = {"x-ratelimit-remaining-requests": value, "x-ratelimit-remaining-tokens": value}
    info = read_rate_limit(headers, wall_now=WALL_NOW)
    assert info.remaining_requests == count
    assert info.remaining_tokens == count


def test_reset_fields_are_parsed_and_minus_one_is_unknown() -> None:
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": " -1 "}
    assert read_rate_limit(headers, wall_now=WALL_NOW) == RateLimitInfo(1.0, None, None, 1.0, None)


def test_openai_success_headers() -> None:
    headers = httpx.Headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert read_rate_limit(headers, wall_now=WALL_NOW) == RateLimitInfo(360.0, 59, 149984, 1.0, 360.0)


def test_header_names_are_case_insensitive_with_httpx_headers() -> None:
    headers = httpx.Headers({"Retry-After": "5", "X-RateLimit-Remaining-Requests": "0"})
    assert read_rate_limit(headers, wall_now=WALL_NOW) == RateLimitInfo(5.0, 0, None, None, None)


class RecordingHeaders:
    """A HeaderLookup that remembers which names were asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def get(self, key: str, /) -> str | None:
        self.asked.append(key)
        return self.values.get(key)


def test_no_rate_limit_header_costs_only_the_lookups(caplog: pytest.LogCaptureFixture) -> None:
    headers = RecordingHeaders({"content-type": "application/json", "authorization": "Bearer sk-secret"})
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        info = read_rate_limit(headers, wall_now=WALL_NOW)
    assert info == RateLimitInfo(None, None, None, None, None)
    assert sorted(headers.asked) == sorted(RATE_LIMIT_HEADERS)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retry-after-ms", "99999999999"),
        ("retry-after", "99999999999"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("x-ratelimit-reset-requests", "48h"),
        ("x-ratelimit-reset-tokens", "99999999999"),
    ],
)
def test_clamped_to_max_cooldown(name: str, value: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        info = read_rate_limit({name: value}, wall_now=WALL_NOW, max_cooldown_s=60.0)
    assert info.cooldown_s == 60.0
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert f"name={name}" in caplog.records[0].getMessage()


def test_clamped_reset_fields() -> None:
    headers = {"x-ratelimit-reset-requests": "48h", "x-ratelimit-reset-tokens": "30s"}
    info = read_rate_limit(headers, wall_now=WALL_NOW, max_cooldown_s=60.0)
    assert info == RateLimitInfo(60.0, None, None, 60.0, 30.0)


def test_max_cooldown_bounds() -> None:
    headers = {"retry-after": "99999999999"}
    assert read_rate_limit(headers, wall_now=WALL_NOW, max_cooldown_s=0.0).cooldown_s == 0.0
    assert read_rate_limit(headers, wall_now=WALL_NOW, max_cooldown_s=math.inf).cooldown_s == 99999999999.0
    assert read_rate_limit(headers, wall_now=WALL_NOW).cooldown_s == DEFAULT_MAX_COOLDOWN_S == 86_400.0


@pytest.mark.parametrize("max_cooldown_s", [-1.0, math.nan, -math.inf])
def test_invalid_max_cooldown_is_a_caller_error(max_cooldown_s: float) -> None:
    with pytest.raises(ValueError, match="max_cooldown_s"):
        read_rate_limit({}, wall_now=WALL_NOW, max_cooldown_s=max_cooldown_s)
    with pytest.raises(ValueError, match="max_cooldown_s"):
        cooldown_from_body("Please retry after 37 seconds.", max_cooldown_s=max_cooldown_s)


def test_rate_limit_info_is_frozen() -> None:
    info = read_rate_limit({"retry-after": "5"}, wall_now=WALL_NOW)
    with pytest.raises(AttributeError):
        info.cooldown_s = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------ cooldown_from_body

AZURE_MESSAGE = (
    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-01-preview "
    "have exceeded token rate limit of your current AIServices S0 pricing tier. Please retry after {}."
)
BODIES = {
    "azure": (AZURE_MESSAGE.format("37 seconds"), 37.0),
    "azure, one second": (AZURE_MESSAGE.format("1 second"), 1.0),
    "azure, zero": (AZURE_MESSAGE.format("0 seconds"), 0.0),
    "azure, json": (
        json.dumps({"error": {"code": "429", "message": AZURE_MESSAGE.format("86 seconds")}}),
        86.0,
    ),
    "api management": (
        '{"statusCode": 429, "message": "Rate limit is exceeded. Try again in 5 seconds."}',
        5.0,
    ),
    "upper case": ("PLEASE RETRY AFTER 12 SECONDS", 12.0),
    "fraction": ("Please retry after 1.5 seconds.", 1.5),
    "absurd: clamped": ("Please retry after 99999999999 seconds.", DEFAULT_MAX_COOLDOWN_S),
    "not finite": ("Please retry after " + "9" * 400 + " seconds.", None),
    "no message": ('{"error": {"code": "429", "message": "Too Many Requests"}}', None),
    "empty": ("", None),
    "minutes": ("Please retry after 2 minutes.", None),
    "negative": ("Please retry after -5 seconds.", None),
    "non-ascii digits": ("Please retry after \u0663\u0667 seconds.", None),
    "no unit": ("Please retry after 37.", None),
    "unit glued to a word": ("Please retry after 37 secondsago", None),
}


@pytest.mark.parametrize(("text", "seconds"), BODIES.values(), ids=list(BODIES))
def test_cooldown_from_body(text: str, seconds: float | None) -> None:
    assert cooldown_from_body(text) == seconds


def test_cooldown_from_body_clamps_to_the_given_maximum() -> None:
    assert cooldown_from_body(AZURE_MESSAGE.format("37 seconds"), max_cooldown_s=10.0) == 10.0


# --------------------------------------------------------------------------------------- logging


@pytest.mark.parametrize("name", RATE_LIMIT_HEADERS)
def test_malformed_value_logs_one_warning_naming_the_header(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {name: "soon", "authorization": "Bearer sk-secret", "api-key": "secret-key"}
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        read_rate_limit(headers, wall_now=WALL_NOW)
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert (record.name, record.levelno) == (LOGGER, logging.WARNING)
    assert record.getMessage() == f"ignoring malformed rate-limit header name={name} value='soon'"


def test_logged_value_is_cut_to_64_characters(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read_rate_limit({"retry-after": "x" * 1000}, wall_now=WALL_NOW)
    (record,) = caplog.records
    assert repr("x" * 64) in record.getMessage()
    assert "x" * 65 not in record.getMessage()


def test_other_headers_are_never_read_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    values = dict.fromkeys(RATE_LIMIT_HEADERS, "garbage")
    values |= {"authorization": "Bearer sk-secret", "api-key": "secret-key", "cookie": "secret=1"}
    headers = RecordingHeaders(values)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        read_rate_limit(headers, wall_now=WALL_NOW)
    assert set(headers.asked) <= set(RATE_LIMIT_HEADERS)
    # One warning per header read: where both spellings are sent, only the usual one is read.
    assert len(caplog.records) == len(headers.asked) == 6
    assert not any("secret" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "-1"},
        {"x-ratelimit-remaining-tokens": " -1", "x-ratelimit-reset-tokens": "-1 "},
        {"retry-after-ms": "10", "retry-after": "soon"},  # not consulted: retry-after-ms already parsed
        {"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"},  # a past date is valid
        {"x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0"},
    ],
)
def test_valid_values_and_sentinels_log_nothing(
    headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        read_rate_limit(headers, wall_now=WALL_NOW)
    assert caplog.records == []


def test_body_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert cooldown_from_body("secret: Please retry after 99999 seconds.", max_cooldown_s=1.0) == 1.0
    (record,) = caplog.records
    assert "secret" not in record.getMessage()


# ------------------------------------------------------------------------------------ properties

# Values that fed defects: "retry now" in every spelling (0, a past date), a number too large for a
# float (1e400, 400 nines), -1 ("unknown") and NUL, alone and around a number.
EDGE_VALUES = (
    "0",
    "0.0",
    "00",
    " 0 ",
    "0s",
    "0ms",
    "1",
    "-1",
    " -1",
    "-1.0",
    "1e400",
    "9" * 400,
    "\x00",
    "0\x00",
    "\x001",
    formatdate(WALL_NOW - 1, usegmt=True),
    formatdate(WALL_NOW - 86_400 * 365, usegmt=True),
    formatdate(0, usegmt=True),
    "Sun, 06 Nov 1994 08:49:37 GMT",
)
values = st.one_of(
    st.sampled_from(EDGE_VALUES),
    st.text(),
    st.from_regex(r"\A[ \t]?-?[0-9.]{0,12}(h|m|s|ms|us|\u00b5s|ns)?([0-9.]{1,4}[hms]){0,3}[ \t]?\Z"),
    st.floats().map(repr),
    st.integers().map(str),
    st.floats(min_value=-6e10, max_value=2e11).map(lambda t: formatdate(WALL_NOW + t, usegmt=True)),
)
rate_limit_headers = st.dictionaries(st.sampled_from(RATE_LIMIT_HEADERS), values)
max_cooldowns = st.one_of(st.just(DEFAULT_MAX_COOLDOWN_S), st.floats(min_value=0.0, max_value=1e12))


def _assert_seconds(seconds: float | None, max_cooldown_s: float) -> None:
    assert seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= max_cooldown_s)


@given(headers=rate_limit_headers, wall_now=st.floats(), max_cooldown_s=max_cooldowns)
@example(headers={"retry-after": "\u0663"}, wall_now=WALL_NOW, max_cooldown_s=DEFAULT_MAX_COOLDOWN_S)
def test_read_rate_limit_never_raises(
    headers: dict[str, str], wall_now: float, max_cooldown_s: float
) -> None:
    info = read_rate_limit(headers, wall_now=wall_now, max_cooldown_s=max_cooldown_s)
    _assert_seconds(info.cooldown_s, max_cooldown_s)
    _assert_seconds(info.reset_requests_s, max_cooldown_s)
    _assert_seconds(info.reset_tokens_s, max_cooldown_s)
    for count in (info.remaining_requests, info.remaining_tokens):
        assert count is None or count >= 0


@given(value=values)
def test_parse_duration_never_raises(value: str) -> None:
    _assert_seconds(parse_duration(value), math.inf)


@given(value=values, wall_now=st.floats())
def test_parse_retry_after_never_raises(value: str, wall_now: float) -> None:
    _assert_seconds(parse_retry_after(value, wall_now=wall_now), math.inf)


@given(text=st.text(), max_cooldown_s=max_cooldowns)
def test_cooldown_from_body_never_raises(text: str, max_cooldown_s: float) -> None:
    _assert_seconds(cooldown_from_body(text, max_cooldown_s=max_cooldown_s), max_cooldown_s)


@given(
    hours=st.integers(0, 10_000),
    minutes=st.integers(0, 59),
    milliseconds=st.integers(0, 59_999),
)
def test_parse_duration_reads_go_durations(hours: int, minutes: int, milliseconds: int) -> None:
    seconds = f"{milliseconds // 1000}.{milliseconds % 1000:03d}".rstrip("0").rstrip(".")
    value = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{seconds}s"
    expected = hours * 3600 + minutes * 60 + milliseconds / 1000
    assert parse_duration(value) == pytest.approx(expected)


@given(moment=st.integers(0, 253402300799), wall_now=st.integers(0, 253402300799))
def test_parse_retry_after_reads_formatdate(moment: int, wall_now: int) -> None:
    date = formatdate(moment, usegmt=True)
    assert parse_retry_after(date, wall_now=float(wall_now)) == max(moment - wall_now, 0)


@given(headers=rate_limit_headers, status=st.sampled_from([200, 429, 503]), max_cooldown_s=max_cooldowns)
@example(headers={"retry-after": "0"}, status=429, max_cooldown_s=DEFAULT_MAX_COOLDOWN_S)
@example(headers={"retry-after": "5"}, status=429, max_cooldown_s=0.0)
@example(headers={"x-ratelimit-remaining-requests": "-1"}, status=200, max_cooldown_s=DEFAULT_MAX_COOLDOWN_S)
def test_a_balancer_takes_any_rate_limit_headers(
    headers: dict[str, str], status: int, max_cooldown_s: float
) -> None:
    """Whatever the headers, an answer never raises; a 429 never sets its backend aside for less than
    the floor that keeps the balancer from trying it again every few milliseconds."""
    clock = FakeClock(1000.0)
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=_raw(headers)))
    lb = LoadBalancer(
        [Backend("a.example", 1)],
        transport=transport,
        clock=clock,
        wall_clock=lambda: WALL_NOW,
        max_wait_s=0,
        max_cooldown_s=max_cooldown_s,
    )
    response = lb.handle_request(httpx.Request("POST", "https://caller.example/x", content=b"{}"))
    cooling = lb.stats()[0].cooling_down_for_s
    assert math.isfinite(cooling)
    if status == 429:
        assert response.status_code == 429
        assert cooling >= _MIN_THROTTLE_S - 1e-9  # float noise: the clock reads 1000.025
