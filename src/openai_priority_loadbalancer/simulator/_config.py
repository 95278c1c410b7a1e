"""Configuration of one simulated Azure OpenAI instance."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

__all__ = [
    "FAILURE_MODES",
    "HEADER_STYLES",
    "DeploymentLimits",
    "FailureMode",
    "HeaderStyle",
    "InstanceConfig",
]

FailureMode = Literal["500", "503", "refuse", "hang"]
"""How a failing instance misbehaves (see `InstanceConfig.failure`)."""

HeaderStyle = Literal[
    "retry-after",
    "retry-after-float",
    "http-date",
    "retry-after-ms",
    "reset-requests",
    "azure",
    "retry-after-0",
]
"""How a 429 says when to retry, and what answers say of the budget (see `InstanceConfig.header_style`)."""

FAILURE_MODES: tuple[str, ...] = get_args(FailureMode)
HEADER_STYLES: tuple[str, ...] = get_args(HeaderStyle)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class DeploymentLimits:
    """The quota of one deployment of an instance (see `InstanceConfig.deployments`).

    Args:
        requests_per_window: Requests admitted per window; ``None`` means unlimited.
        tokens_per_minute: Token budget, enforced per window pro rata as the instance's own;
            ``None`` means unlimited.
    """

    _: KW_ONLY
    requests_per_window: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        _check_int("requests_per_window", self.requests_per_window, minimum=0, optional=True)
        _check_int("tokens_per_minute", self.tokens_per_minute, minimum=1, optional=True)

    def tokens_per_window(self, window_s: float) -> int | None:
        """The token budget of one window of ``window_s`` seconds, or ``None`` without one."""
        if self.tokens_per_minute is None:
            return None
        return max(1, math.floor(self.tokens_per_minute * window_s / 60))


@dataclass(frozen=True)
class InstanceConfig:
    """What one simulated Azure OpenAI instance does.

    Rate limiting uses fixed windows of ``window_s`` seconds. The first window opens with the
    first request the instance receives (after the simulator starts or after
    `Simulator.reset_stats`), and the following windows follow back to back from that moment,
    whether or not requests arrive. A throttled request does not use up capacity.

    Args:
        name: Unique within a simulator; letters, digits, ``.``, ``_`` and ``-``.
        requests_per_window: Requests admitted per window; ``None`` means unlimited and ``0``
            throttles everything.
        window_s: Window length in seconds.
        tokens_per_minute: Optional token budget. It is enforced per window, pro rata:
            ``tokens_per_minute * window_s / 60`` tokens per window. A request costs its prompt
            estimate (about 4 characters per token) plus ``max_tokens`` (or
            ``max_completion_tokens``, or ``max_output_tokens`` for the Responses API; 16 when
            none is given), counted when it is admitted, as Azure does. ``usage`` reports what
            was used; for a response that continues another (``previous_response_id``) its
            input includes the whole chain so far, as on Azure. Other Responses API requests
            (retrieve, delete, ...), conversations and files cost no tokens but count against
            ``requests_per_window``.
        latency_s: Delay before answering (non-streamed) or before a streamed answer starts:
            nothing, not even the status line and headers, is sent before it (a backend slow to
            start). Only admitted requests wait; errors, 429s and not-found answers are answered
            at once. A background response completes ``latency_s`` plus ``stream_chunks - 1``
            chunk delays after it was created.
        first_chunk_delay_s: Delay between a streamed answer's headers, sent at once (after
            ``latency_s``), and its first chunk: a backend that starts its answer and is then slow
            to produce its first token.
        stream_chunks: Number of ``chat.completion.chunk`` events in a streamed answer.
        stream_chunk_delay_s: Delay between two chunks of a streamed answer.
        failure: ``None`` (healthy), ``"500"`` or ``"503"`` (every request gets that status),
            ``"refuse"`` (the port is bound but not listening: connections are refused) or
            ``"hang"`` (requests are read and never answered until the simulator stops).
        header_style: How a 429 says when to retry: ``"retry-after"`` (whole seconds, rounded
            up), ``"retry-after-float"`` (seconds with millisecond precision),
            ``"http-date"`` (an HTTP-date, rounded up to the next whole second),
            ``"retry-after-ms"`` (``retry-after-ms`` plus whole-second ``retry-after``),
            ``"reset-requests"`` (only ``x-ratelimit-reset-requests``, or
            ``x-ratelimit-reset-tokens`` when the token budget ran out, as a duration such as
            ``"1s"`` or ``"250ms"``), or ``"azure"`` (as Azure OpenAI answers: ``retry-after`` in
            whole seconds on a 429, and on every answer only the ``x-ratelimit-remaining-*``
            headers: no limit and no reset header, so a client cannot tell when a window ends),
            or ``"retry-after-0"`` (``retry-after: 0`` whatever the wait: a server that says
            "now" while it still throttles).
        api_key: If set, requests must carry it as ``api-key`` or ``Authorization: Bearer``;
            others get a 401.
        port: TCP port on the simulator's host; ``0`` picks a free one.
        ratelimit_headers: Whether answers report the budget: ``x-ratelimit-limit-*`` and
            ``x-ratelimit-remaining-*`` (and, on successes, ``x-ratelimit-reset-requests``).
            With ``False`` a 429 carries only what ``header_style`` asks for and successes
            carry nothing about the budget.
        deployments: ``None`` (default): the instance serves any deployment (or v1 ``model``)
            and meters all of them together by ``requests_per_window`` and
            ``tokens_per_minute``. A mapping: the deployments the instance has, each metered on
            its own by its `DeploymentLimits` (the instance-wide limits then do not apply), as
            Azure meters each deployment; a request for any other gets Azure's
            ``404 DeploymentNotFound``.

    Raises:
        ValueError: A value is out of range.
        TypeError: A value has the wrong type.
    """

    name: str
    _: KW_ONLY
    requests_per_window: int | None = None
    window_s: float = 1.0
    tokens_per_minute: int | None = None
    latency_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    stream_chunks: int = 10
    stream_chunk_delay_s: float = 0.0
    failure: FailureMode | None = None
    header_style: HeaderStyle = "retry-after"
    api_key: str | None = None
    port: int = 0
    ratelimit_headers: bool = True
    deployments: Mapping[str, DeploymentLimits] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, not {type(self.name).__name__}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '.', '_' and '-'")
        _check_int("requests_per_window", self.requests_per_window, minimum=0, optional=True)
        _check_int("tokens_per_minute", self.tokens_per_minute, minimum=1, optional=True)
        _check_int("stream_chunks", self.stream_chunks, minimum=1)
        _check_int("port", self.port, minimum=0)
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, not {self.port}")
        _check_float("window_s", self.window_s, positive=True)
        _check_float("latency_s", self.latency_s)
        _check_float("first_chunk_delay_s", self.first_chunk_delay_s)
        _check_float("stream_chunk_delay_s", self.stream_chunk_delay_s)
        if self.failure is not None and self.failure not in FAILURE_MODES:
            raise ValueError(f"failure must be None or one of {FAILURE_MODES}, not {self.failure!r}")
        if self.header_style not in HEADER_STYLES:
            raise ValueError(f"header_style must be one of {HEADER_STYLES}, not {self.header_style!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be None or a non-empty str")
        if not isinstance(self.ratelimit_headers, bool):
            raise TypeError("ratelimit_headers must be a bool")
        if self.deployments is not None:
            if not isinstance(self.deployments, Mapping):
                raise TypeError(
                    f"deployments must be None or a mapping, not {type(self.deployments).__name__}"
                )
            for key, limits in self.deployments.items():
                if not isinstance(key, str) or not key or "/" in key:
                    raise ValueError(f"deployments: a name must be a non-empty str without '/', not {key!r}")
                if not isinstance(limits, DeploymentLimits):
                    raise TypeError(f"deployments[{key!r}] must be a DeploymentLimits, not {limits!r}")
            object.__setattr__(self, "deployments", MappingProxyType(dict(self.deployments)))

    @property
    def tokens_per_window(self) -> int | None:
        """The token budget of one window, or ``None`` without a token budget."""
        if self.tokens_per_minute is None:
            return None
        return max(1, math.floor(self.tokens_per_minute * self.window_s / 60))


def _check_int(field: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field} must be an int{' or None' if optional else ''}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be at least {minimum}, not {value}")


def _check_float(field: str, value: object, *, positive: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{field} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{field} must be a finite number {'> 0' if positive else '>= 0'}, not {value}")
