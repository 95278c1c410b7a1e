"""OpenTelemetry metrics for the balancer: an ``on_event`` callback that records every event.

Needs the ``otel`` extra (``pip install "openai-priority-loadbalancer[otel]"``), which brings
``opentelemetry-api`` only: the application chooses the SDK and the exporter. Without a configured
``MeterProvider`` the API records nothing, at almost no cost::

    from openai_priority_loadbalancer import LoadBalancer
    from openai_priority_loadbalancer.otel import OpenTelemetryMetrics

    balancer = LoadBalancer(backends, on_event=OpenTelemetryMetrics())

The global meter provider is used unless one is passed (``OpenTelemetryMetrics(meter_provider)``); the
global one may be set after the callback is built. One instance may serve several balancers: their
backends are told apart by id only, so two balancers over the same endpoint add up in the same series.

Instruments (meter ``openai-priority-loadbalancer``, versioned as the package), all named
``openai_priority_loadbalancer.*``:

- ``attempts`` (Counter, ``{attempt}``; ``backend``, ``outcome``, ``http.response.status_code``): every
  attempt on a backend, counted when it ends, by ``outcome``: ``served`` (its response went to the
  caller: any status but 429, 500, 502, 503 and 504), ``throttled`` (429, failed over), ``failed`` (500,
  502, 503, 504 or a transport error) or ``abandoned`` (cancelled, or the backend's token provider failed).
  ``http.response.status_code`` is the backend's status, absent when it gave none (a transport error,
  an abandoned attempt). A request that failed over counts once on each backend it tried.
- ``attempt.duration`` (Histogram, ``s``; the same attributes): from sending the attempt to the
  response's headers (a stream's body comes later) or to its error. Recorded with ``attempts``, so its
  count equals that counter.
- ``attempt.active`` (UpDownCounter, ``{attempt}``; ``backend``): attempts sent and not yet answered;
  back to 0 when every attempt has ended.
- ``throttles`` (Counter, ``{throttle}``; ``backend``): 429 answers.
- ``failures`` (Counter, ``{failure}``; ``backend``, ``cause``): 500, 502, 503 and 504 answers and
  transport errors; ``cause`` is the status (``"503"``) or the error's type name (``"ConnectError"``),
  or ``"FirstByteTimeout"`` for an attempt given up under ``first_byte_timeout_s``.
- ``recoveries`` (Counter, ``{recovery}``; ``backend``): a failing backend answered again (its breaker
  closed).
- ``cooldown.duration`` (Histogram, ``s``; ``backend``, ``reason``): how long a backend was set aside,
  recorded when it was, by what this balancer saw; ``reason`` is ``throttled`` (a 429), ``failed`` (its
  breaker opened) or ``exhausted`` (an answer reported its budget spent until the window resets).
- ``set_asides`` (Counter, ``{set_aside}``; ``backend``, ``reason``, ``shared``): a backend set aside
  with no 429 or failure seen by this balancer: its budget reported spent (``shared`` false), or
  learned from the state store (``shared`` true: another balancer's 429, failure or spent budget).
- ``waits`` (Counter, ``{wait}``) and ``wait.duration`` (Histogram, ``s``), no attributes: a request
  found no backend available and waited for one to free up.
- ``exhausted_requests`` (Counter, ``{request}``, no attributes): requests answered with the balancer's
  own 429, no backend having been able to take them within their wait budget.
- ``owners_discovered`` (Counter, ``{object}``; ``backend``): a stored object (a response, conversation,
  file, ...) whose backend nobody had recorded was found on ``backend`` by asking the backends in turn.

Every set with ``backend`` also has ``deployment`` when the request named one (the path's, or a v1
body's ``model``, as the caller wrote it): Azure meters each deployment on its own, and its 429s and
cooldowns are that deployment's. Attribute values are backend ids (scheme, host, port, path prefix),
deployment names, outcomes, status codes and error type names: never credentials, request paths or
error messages.

To use it together with a callback of your own, call both from one function. The metrics never raise;
what your callback raises is logged and ignored by the balancer::

    metrics = OpenTelemetryMetrics()


    def on_event(event: Event) -> None:
        metrics(event)
        my_callback(event)


    balancer = LoadBalancer(backends, on_event=on_event)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._events import (
    AbandonedEvent,
    AttemptEvent,
    ExhaustedEvent,
    FailedEvent,
    OwnerDiscoveredEvent,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
    WaitedEvent,
)
from ._version import __version__

try:
    from opentelemetry.metrics import get_meter
except ImportError as exc:
    raise ImportError(
        "openai_priority_loadbalancer.otel needs OpenTelemetry: "
        'pip install "openai-priority-loadbalancer[otel]"'
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.util.types import AttributeValue

    from ._events import Event

__all__ = ["METER_NAME", "OpenTelemetryMetrics"]

#: The default name of the meter the instruments belong to.
METER_NAME: Final = "openai-priority-loadbalancer"

_PREFIX: Final = "openai_priority_loadbalancer."

# Bucket boundaries (seconds). Attempts: from a fast error to a long completion's first byte (those of
# the GenAI semantic conventions). Cooldowns: from a retry-after-ms to a daily quota. Waits: up to a
# generous max_wait_s.
_ATTEMPT_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_COOLDOWN_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0)
_WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_Attributes = dict[str, "AttributeValue"]

_BACKEND: Final = "backend"
_OUTCOME: Final = "outcome"
_STATUS: Final = "http.response.status_code"
_CAUSE: Final = "cause"
_REASON: Final = "reason"
_SHARED: Final = "shared"
_DEPLOYMENT: Final = "deployment"


class _BackendAttributes:
    """The attribute sets of one backend, built once (statuses and causes on first sight) and never changed.

    The dictionaries are handed to the instruments as they are; nothing mutates them afterwards.
    """

    __slots__ = (
        "abandoned",
        "backend",
        "causes",
        "cooldown_exhausted",
        "cooldown_failed",
        "cooldown_throttled",
        "served",
        "set_asides",
        "throttled",
    )

    def __init__(self, backend: str, deployment: str | None = None) -> None:
        #: What every set of this backend (and deployment, if the requests named one) holds.
        base: _Attributes = {_BACKEND: backend}
        if deployment is not None:
            base[_DEPLOYMENT] = deployment
        self.backend = base
        self.throttled: _Attributes = {**base, _OUTCOME: "throttled", _STATUS: 429}
        self.abandoned: _Attributes = {**base, _OUTCOME: "abandoned"}
        self.cooldown_throttled: _Attributes = {**base, _REASON: "throttled"}
        self.cooldown_failed: _Attributes = {**base, _REASON: "failed"}
        self.cooldown_exhausted: _Attributes = {**base, _REASON: "exhausted"}
        # (reason, shared) -> attributes
        self.set_asides: dict[tuple[str, bool], _Attributes] = {}
        self.served: dict[int, _Attributes] = {}
        # cause -> (the attempt's attributes, the failure's)
        self.causes: dict[str, tuple[_Attributes, _Attributes]] = {}

    def for_served(self, status: int) -> _Attributes:
        attributes = self.served.get(status)
        if attributes is None:
            attributes = {**self.backend, _OUTCOME: "served", _STATUS: status}
            attributes = self.served.setdefault(status, attributes)
        return attributes

    def for_set_aside(self, reason: str, shared: bool) -> _Attributes:
        attributes = self.set_asides.get((reason, shared))
        if attributes is None:
            attributes = {**self.backend, _REASON: reason, _SHARED: shared}
            attributes = self.set_asides.setdefault((reason, shared), attributes)
        return attributes

    def for_failed(self, cause: str) -> tuple[_Attributes, _Attributes]:
        pair = self.causes.get(cause)
        if pair is None:
            attempt: _Attributes = {**self.backend, _OUTCOME: "failed"}
            if cause.isascii() and cause.isdigit() and len(cause) == 3:
                attempt[_STATUS] = int(cause)
            pair = self.causes.setdefault(cause, (attempt, {**self.backend, _CAUSE: cause}))
        return pair


class OpenTelemetryMetrics:
    """An ``on_event`` callback recording the balancer's events as OpenTelemetry metrics.

    Args:
        meter_provider: where the instruments come from (default: the global meter provider).
        meter_name: the name of the meter (the instrumentation scope).

    See the module documentation for the instruments. Calling it never raises for an event; an object
    that is not one of the balancer's events is ignored.
    """

    __slots__ = (
        "_active",
        "_attempts",
        "_backends",
        "_cooldown",
        "_duration",
        "_exhausted",
        "_failures",
        "_meter_name",
        "_owners_discovered",
        "_recoveries",
        "_set_asides",
        "_throttles",
        "_wait_duration",
        "_waits",
    )

    def __init__(self, meter_provider: MeterProvider | None = None, *, meter_name: str = METER_NAME) -> None:
        meter = get_meter(meter_name, __version__, meter_provider=meter_provider)
        self._meter_name = meter_name
        self._attempts = meter.create_counter(
            _PREFIX + "attempts",
            unit="{attempt}",
            description="Attempts on a backend, counted when they end, by outcome.",
        )
        self._duration = _histogram(
            meter,
            _PREFIX + "attempt.duration",
            "Time from sending an attempt to the response's headers or the error.",
            _ATTEMPT_BUCKETS,
        )
        self._active = meter.create_up_down_counter(
            _PREFIX + "attempt.active",
            unit="{attempt}",
            description="Attempts sent to a backend and not yet answered.",
        )
        self._throttles = meter.create_counter(
            _PREFIX + "throttles", unit="{throttle}", description="429 answers of a backend."
        )
        self._failures = meter.create_counter(
            _PREFIX + "failures",
            unit="{failure}",
            description="500, 502, 503, 504 answers and transport errors of a backend, by cause.",
        )
        self._recoveries = meter.create_counter(
            _PREFIX + "recoveries",
            unit="{recovery}",
            description="A failing backend answered again: its breaker closed.",
        )
        self._cooldown = _histogram(
            meter,
            _PREFIX + "cooldown.duration",
            "How long a backend was set aside: throttled, failed, or its budget spent.",
            _COOLDOWN_BUCKETS,
        )
        self._set_asides = meter.create_counter(
            _PREFIX + "set_asides",
            unit="{set_aside}",
            description="A backend set aside with no 429 or failure seen here: budget spent, or shared.",
        )
        self._waits = meter.create_counter(
            _PREFIX + "waits",
            unit="{wait}",
            description="A request found no backend available and waited for one.",
        )
        self._wait_duration = _histogram(
            meter,
            _PREFIX + "wait.duration",
            "How long a request waited for a backend to free up.",
            _WAIT_BUCKETS,
        )
        self._exhausted = meter.create_counter(
            _PREFIX + "exhausted_requests",
            unit="{request}",
            description="Requests answered with the balancer's own 429: no backend could take them.",
        )
        self._owners_discovered = meter.create_counter(
            _PREFIX + "owners_discovered",
            unit="{object}",
            description="A stored object whose backend was not recorded, found by asking the backends.",
        )
        self._backends: dict[tuple[str, str | None], _BackendAttributes] = {}

    def __call__(self, event: Event) -> None:
        """Record ``event``."""
        if isinstance(event, AttemptEvent):
            self._active.add(1, self._for(event.backend, event.deployment).backend)
        elif isinstance(event, ServedEvent):
            cached = self._for(event.backend, event.deployment)
            self._ended(cached, cached.for_served(event.status), event.elapsed_s)
        elif isinstance(event, ThrottledEvent):
            cached = self._for(event.backend, event.deployment)
            self._ended(cached, cached.throttled, event.elapsed_s)
            self._throttles.add(1, cached.backend)
            self._cooldown.record(event.cooldown_s, cached.cooldown_throttled)
        elif isinstance(event, FailedEvent):
            cached = self._for(event.backend, event.deployment)
            attempt, failure = cached.for_failed(event.cause)
            self._ended(cached, attempt, event.elapsed_s)
            self._failures.add(1, failure)
            self._cooldown.record(event.cooldown_s, cached.cooldown_failed)
        elif isinstance(event, AbandonedEvent):
            cached = self._for(event.backend, event.deployment)
            self._ended(cached, cached.abandoned, event.elapsed_s)
        elif isinstance(event, RecoveredEvent):
            self._recoveries.add(1, self._for(event.backend, event.deployment).backend)
        elif isinstance(event, SetAsideEvent):
            cached = self._for(event.backend, event.deployment)
            self._set_asides.add(1, cached.for_set_aside(event.reason, event.shared))
            if not event.shared:  # a shared one is recorded by the balancer that saw it
                self._cooldown.record(event.cooldown_s, cached.cooldown_exhausted)
        elif isinstance(event, WaitedEvent):
            self._waits.add(1)
            self._wait_duration.record(event.waited_s)
        elif isinstance(event, ExhaustedEvent):
            self._exhausted.add(1)
        elif isinstance(event, OwnerDiscoveredEvent):
            self._owners_discovered.add(1, self._for(event.backend).backend)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(meter_name={self._meter_name!r})"

    def _for(self, backend: str, deployment: str | None = None) -> _BackendAttributes:
        key = (backend, deployment)
        cached = self._backends.get(key)
        if cached is None:
            cached = self._backends.setdefault(key, _BackendAttributes(backend, deployment))
        return cached

    def _ended(self, cached: _BackendAttributes, attributes: _Attributes, elapsed_s: float) -> None:
        self._active.add(-1, cached.backend)
        self._attempts.add(1, attributes)
        self._duration.record(elapsed_s, attributes)


def _histogram(meter: Meter, name: str, description: str, buckets: Sequence[float]) -> Histogram:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # pragma: no cover - opentelemetry-api before 1.23 takes no bucket advice
        return meter.create_histogram(name, unit="s", description=description)
