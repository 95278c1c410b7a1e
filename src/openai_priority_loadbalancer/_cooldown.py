"""Rate-limit headers -> cooldown.

Pure functions: no I/O, no clock of their own (the caller passes wall time for HTTP-dates) and no
exception on any server input. A malformed value is logged at WARNING (the rate-limit header's name
and its value cut to 64 characters; no other header is ever logged) and then ignored.

Numbers are ASCII digits with an optional fraction (``5``, ``0.532``): no sign, no exponent, no
underscores, no ``nan``/``inf``, no digits of other scripts. Surrounding spaces and tabs (HTTP's
optional whitespace) are ignored. A well-formed number too large to represent (``9`` repeated 400
times) is not malformed: :func:`read_rate_limit` clamps it to its ``max_cooldown_s``.

Header spellings: besides OpenAI's ``x-ratelimit-*`` and ``retry-after-ms``, Azure answers may carry
``x-ms-retry-after-ms`` and hyphenated ``x-rate-limit-*`` names; each is read where its usual
spelling is absent (the usual one wins when both are sent).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

__all__ = [
    "DEFAULT_MAX_COOLDOWN_S",
    "LIMIT_REQUESTS",
    "REMAINING_REQUESTS",
    "REMAINING_TOKENS",
    "RETRY_AFTER",
    "header",
    "HeaderLookup",
    "RateLimitInfo",
    "parse_duration",
    "parse_retry_after",
    "read_count",
    "read_rate_limit",
    "remaining",
    "cooldown_from_body",
]

_LOG = logging.getLogger("openai-priority-loadbalancer")

DEFAULT_MAX_COOLDOWN_S: float = 86_400.0
"""Longest cooldown a response can impose (one day); larger values are clamped to it."""

_OWS = " \t"

# Each rate-limit header under every spelling it is read by, the usual one first.
RETRY_AFTER_MS: tuple[str, ...] = ("retry-after-ms", "x-ms-retry-after-ms")
RETRY_AFTER_S: tuple[str, ...] = ("retry-after",)
#: The headers that say when to come back, whatever the status (a 5xx reads only these).
RETRY_AFTER: tuple[str, ...] = RETRY_AFTER_MS + RETRY_AFTER_S
RESET_REQUESTS: tuple[str, ...] = ("x-ratelimit-reset-requests", "x-rate-limit-reset-requests")
RESET_TOKENS: tuple[str, ...] = ("x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens")
REMAINING_REQUESTS: tuple[str, ...] = ("x-ratelimit-remaining-requests", "x-rate-limit-remaining-requests")
REMAINING_TOKENS: tuple[str, ...] = ("x-ratelimit-remaining-tokens", "x-rate-limit-remaining-tokens")
LIMIT_REQUESTS: tuple[str, ...] = ("x-ratelimit-limit-requests", "x-rate-limit-limit-requests")
_LOGGED_VALUE_CHARS = 64

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_NUMBER_RE = re.compile(_NUMBER)
# Go's time.Duration.String() form, as sent by OpenAI: "1s", "6m0s", "250ms", "1h2m3.5s", "1.5µs".
_DURATION_RE = re.compile(rf"(?:{_NUMBER}[a-zµμ]+)+")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})([a-zµμ]+)")
_DURATION_UNITS: dict[str, float] = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN, what Go writes
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ns": 1e-9,
}
_MAX_COUNT_DIGITS = 30

# RFC 9110 section 5.6.7: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") and the obsolete RFC 850
# ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994") forms. Names are
# matched case-insensitively; a numeric zone ("+0000") is accepted as well as GMT.
_IMF_OR_RFC850_RE = re.compile(
    r"(?P<wd>[a-z]+), *(?:"
    r"(?P<d1>[0-9]{1,2}) +(?P<mon1>[a-z]{3}) +(?P<y1>[0-9]{4})"
    r"|(?P<d2>[0-9]{1,2})-(?P<mon2>[a-z]{3})-(?P<y2>[0-9]{2}|[0-9]{4})"
    r") +(?P<hh>[0-9]{2}):(?P<mm>[0-9]{2}):(?P<ss>[0-9]{2}) +(?P<zone>gmt|utc|ut|[+-][0-9]{4})",
    re.IGNORECASE | re.ASCII,
)
_ASCTIME_RE = re.compile(
    r"(?P<wd>[a-z]{3}) +(?P<mon>[a-z]{3}) +(?P<d>[0-9]{1,2})"
    r" +(?P<hh>[0-9]{2}):(?P<mm>[0-9]{2}):(?P<ss>[0-9]{2}) +(?P<y>[0-9]{4})",
    re.IGNORECASE | re.ASCII,
)
_DAY_NAMES = frozenset(
    (
        *("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
        *("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    )
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}

# Azure OpenAI: "... Please retry after 37 seconds."; API Management: "Try again in 5 seconds."
_BODY_RE = re.compile(rf"(?:retry after|try again in) ({_NUMBER}) seconds?\b", re.IGNORECASE | re.ASCII)


class HeaderLookup(Protocol):
    """Read access to response headers by lowercase name.

    ``httpx.Headers``, ``httpx2.Headers``, a ``dict`` or any ``Mapping[str, str]`` with lowercase keys
    all fit. Only the one-argument form of ``get`` is used: a ``default`` parameter in the protocol
    would not match the overloads that ``httpx2.Headers`` and ``Mapping`` declare.
    """

    def get(self, key: str, /) -> str | None: ...


def header(headers: HeaderLookup, names: tuple[str, ...]) -> tuple[str, str | None]:
    """The first of ``names`` present in ``headers``: its name and value (the first name and None if
    none is). The usual spelling is looked up first, so a backend that uses it costs one lookup."""
    for name in names:
        value = headers.get(name)
        if value is not None:
            return name, value
    return names[0], None


# The remaining-* names by their bytes, as raw headers hold them: (which count, spelling's rank, name).
_REMAINING_BY_NAME: dict[bytes, tuple[int, int, str]] = {
    name.encode(): (which, rank, name)
    for which, names in enumerate((REMAINING_REQUESTS, REMAINING_TOKENS))
    for rank, name in enumerate(names)
}
_SHORTEST_REMAINING = min(map(len, _REMAINING_BY_NAME))


def remaining(headers: HeaderLookup) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """``header(headers, REMAINING_REQUESTS)`` and ``header(headers, REMAINING_TOKENS)``, in one pass
    over the raw headers when they have them (``httpx.Headers``): every answer is read so, and a
    lookup by name costs a scan of them (and an exception when absent). A name sent twice counts once,
    its first value."""
    raw = getattr(headers, "raw", None)
    if not isinstance(raw, list):
        return header(headers, REMAINING_REQUESTS), header(headers, REMAINING_TOKENS)
    found: list[tuple[int, str, bytes] | None] = [None, None]
    for key, value in raw:
        if len(key) >= _SHORTEST_REMAINING:
            hit = _REMAINING_BY_NAME.get(key.lower())
            if hit is not None:
                which, rank, name = hit
                kept = found[which]
                if kept is None or rank < kept[0]:
                    found[which] = (rank, name, value)
    requests, tokens = found
    return (
        (REMAINING_REQUESTS[0], None) if requests is None else (requests[1], requests[2].decode("latin-1")),
        (REMAINING_TOKENS[0], None) if tokens is None else (tokens[1], tokens[2].decode("latin-1")),
    )


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response's rate-limit headers say.

    ``cooldown_s`` is what the headers say about when the backend may be used again, whatever the
    status: on a success it only matters when a ``remaining_*`` is 0. ``None`` means that no header
    gave a usable value (the caller falls back to its default). The other fields are the parsed header
    values, or ``None`` when absent, ``-1`` ("unknown") or malformed. Every number is finite and at
    least 0; every duration is at most the ``max_cooldown_s`` given to :func:`read_rate_limit`.
    """

    cooldown_s: float | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None


_NO_INFO = RateLimitInfo(None, None, None, None, None)


def _log_malformed(name: str, value: str) -> None:
    _LOG.warning("ignoring malformed rate-limit header name=%s value=%r", name, value[:_LOGGED_VALUE_CHARS])


def _parse_number(text: str) -> float | None:
    """A stripped, non-negative decimal number in ASCII digits (``math.inf`` if too large), or None."""
    if _NUMBER_RE.fullmatch(text) is None:
        return None
    return float(text)  # digits only: never nan, and inf only when too large to represent


def _finite(seconds: float | None) -> float | None:
    return seconds if seconds is None or math.isfinite(seconds) else None


def _duration(value: str) -> float | None:
    """:func:`parse_duration`, with ``math.inf`` for a well-formed value too large to represent."""
    text = value.strip(_OWS)
    if _DURATION_RE.fullmatch(text) is None:
        return _parse_number(text)
    total = 0.0
    for number, unit in _DURATION_PART_RE.findall(text):
        scale = _DURATION_UNITS.get(unit)
        if scale is None:
            return None
        total += float(number) * scale
    return total


def parse_duration(value: str) -> float | None:
    """Seconds in a reset header: plain seconds ("1.5") or a Go duration ("1s", "6m0s", "250ms").

    Units: h, m, s, ms, us (also µs, μs), ns, in any order, fractions allowed in each part. Returns
    None for anything empty, malformed, negative or not finite.
    """
    return _finite(_duration(value))


def _parse_http_date(text: str) -> float | None:
    """Seconds since the epoch named by an HTTP-date, or None."""
    match = _IMF_OR_RFC850_RE.fullmatch(text)
    if match is not None:
        if match["d1"] is not None:
            day, month, year = match["d1"], match["mon1"], int(match["y1"])
        else:
            day, month, year = match["d2"], match["mon2"], int(match["y2"])
            if year < 100:  # RFC 850's two-digit year, read the way the POSIX strptime %y does
                year += 2000 if year < 69 else 1900
        zone = match["zone"]
        offset_s = 0
        if zone[0] in "+-":
            offset_s = (int(zone[1:3]) * 3600 + int(zone[3:]) * 60) * (-1 if zone[0] == "-" else 1)
    else:
        match = _ASCTIME_RE.fullmatch(text)
        if match is None:
            return None
        day, month, year, offset_s = match["d"], match["mon"], int(match["y"]), 0
    month_number = _MONTHS.get(month.lower())
    if month_number is None or match["wd"].lower() not in _DAY_NAMES:
        return None
    try:
        moment = datetime(
            year,
            month_number,
            int(day),
            int(match["hh"]),
            int(match["mm"]),
            int(match["ss"]),
            tzinfo=timezone.utc,
        )
    except ValueError:  # 30 February, hour 24, year 0, ...
        return None
    return moment.timestamp() - offset_s


def parse_retry_after(value: str, *, wall_now: float) -> float | None:
    """Seconds to wait per a ``Retry-After`` value: delta-seconds (int or float) or an HTTP-date.

    A date is read relative to ``wall_now`` (seconds since the epoch, as from ``time.time()``); one
    already past gives 0.0. Returns None for anything empty, malformed, negative or not finite.
    """
    return _finite(_retry_after(value, wall_now))


def _retry_after(value: str, wall_now: float) -> float | None:
    """:func:`parse_retry_after`, with ``math.inf`` for delta-seconds too large to represent."""
    text = value.strip(_OWS)
    seconds = _parse_number(text)
    if seconds is not None:
        return seconds
    moment = _parse_http_date(text)
    if moment is None:
        return None
    delay = moment - wall_now
    if not math.isfinite(delay):
        return None
    return max(delay, 0.0)


def read_count(name: str, value: str | None) -> int | None:
    """A count header's value: None when absent, ``-1`` ("unknown") or malformed (logged)."""
    if value is None:
        return None
    text = value.strip(_OWS)
    if text == "-1":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_COUNT_DIGITS):
        _log_malformed(name, value)
        return None
    return int(text)


def _clamp(name: str, seconds: float | None, max_cooldown_s: float) -> float | None:
    """``seconds`` at most ``max_cooldown_s``; a value too large to represent (inf) is clamped too."""
    if seconds is not None and seconds > max_cooldown_s:
        _LOG.warning(
            "clamping rate-limit value name=%s seconds=%s to max_cooldown_s=%s", name, seconds, max_cooldown_s
        )
        return max_cooldown_s
    if seconds is not None and not math.isfinite(seconds):  # max_cooldown_s is inf: nothing to clamp to
        return None
    return seconds


def _read_reset(name: str, value: str | None, max_cooldown_s: float) -> float | None:
    if value is None or value.strip(_OWS) == "-1":
        return None
    seconds = _duration(value)
    if seconds is None:
        _log_malformed(name, value)
    return _clamp(name, seconds, max_cooldown_s)


def _check_max(max_cooldown_s: float) -> None:
    if not max_cooldown_s >= 0.0:  # also rejects nan
        raise ValueError(f"max_cooldown_s must be >= 0, got {max_cooldown_s!r}")


def read_rate_limit(
    headers: HeaderLookup, *, wall_now: float, max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S
) -> RateLimitInfo:
    """Read one response's rate-limit headers (looked up by lowercase name).

    ``cooldown_s``, first that parses wins: ``retry-after-ms`` (or ``x-ms-retry-after-ms``),
    ``retry-after`` (seconds or HTTP-date, relative to ``wall_now``), then
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` (or their ``x-rate-limit-*``
    spellings). When both resets parse, the one whose budget is exhausted (remaining 0, the other's
    remaining known and above 0) governs; otherwise the longer. A value above ``max_cooldown_s``, in
    any of those headers, is clamped to it, also one too large to represent. ``-1`` in an
    ``x-ratelimit-*`` header means unknown.

    Raises ValueError only for a negative or nan ``max_cooldown_s``; never for anything in ``headers``.
    """
    _check_max(max_cooldown_s)
    ms_name, retry_after_ms = header(headers, RETRY_AFTER_MS)
    retry_after = headers.get("retry-after")
    reset_requests_name, reset_requests_raw = header(headers, RESET_REQUESTS)
    reset_tokens_name, reset_tokens_raw = header(headers, RESET_TOKENS)
    remaining_requests_name, remaining_requests_raw = header(headers, REMAINING_REQUESTS)
    remaining_tokens_name, remaining_tokens_raw = header(headers, REMAINING_TOKENS)
    if (
        retry_after_ms is None
        and retry_after is None
        and reset_requests_raw is None
        and reset_tokens_raw is None
        and remaining_requests_raw is None
        and remaining_tokens_raw is None
    ):
        return _NO_INFO

    remaining_requests = read_count(remaining_requests_name, remaining_requests_raw)
    remaining_tokens = read_count(remaining_tokens_name, remaining_tokens_raw)
    reset_requests = _read_reset(reset_requests_name, reset_requests_raw, max_cooldown_s)
    reset_tokens = _read_reset(reset_tokens_name, reset_tokens_raw, max_cooldown_s)

    cooldown: float | None = None
    if retry_after_ms is not None:
        milliseconds = _parse_number(retry_after_ms.strip(_OWS))
        if milliseconds is None:
            _log_malformed(ms_name, retry_after_ms)
        else:
            cooldown = _clamp(ms_name, milliseconds / 1000.0, max_cooldown_s)
    if cooldown is None and retry_after is not None:
        cooldown = _retry_after(retry_after, wall_now)
        if cooldown is None:
            _log_malformed("retry-after", retry_after)
        else:
            cooldown = _clamp("retry-after", cooldown, max_cooldown_s)
    if cooldown is None:
        if reset_requests is None or reset_tokens is None:
            cooldown = reset_tokens if reset_requests is None else reset_requests
        else:
            # Counts are >= 0, so bool() of one is "known and not exhausted".
            only_requests_out = remaining_requests == 0 and bool(remaining_tokens)
            only_tokens_out = remaining_tokens == 0 and bool(remaining_requests)
            if only_tokens_out or (not only_requests_out and reset_tokens > reset_requests):
                cooldown = reset_tokens
            else:
                cooldown = reset_requests
    return RateLimitInfo(cooldown, remaining_requests, remaining_tokens, reset_requests, reset_tokens)


def cooldown_from_body(text: str, *, max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S) -> float | None:
    """Seconds named by an error message, for use only when no header gave a cooldown.

    Reads Azure OpenAI's "Please retry after 37 seconds." (and "1 second") and API Management's
    "Try again in 5 seconds."; None otherwise. Clamped to ``max_cooldown_s``. The text is never logged.
    """
    _check_max(max_cooldown_s)
    match = _BODY_RE.search(text)
    if match is None:
        return None
    return _clamp("body", _finite(_parse_number(match[1])), max_cooldown_s)
