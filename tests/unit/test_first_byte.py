"""``first_byte_timeout_s``: a streamed request's attempt that has not begun answering in time goes elsewhere.

The inner transport is the library's ``MockTransport``. A slow backend is a handler that reads the
attempt's read timeout as an HTTP core does when it reads the response's headers: shorter than the
backend's delay, it raises the library's ``ReadTimeout``; otherwise it answers, with a body that
records the read timeout in force when its first read starts (as an HTTP core reads it again there).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from _unit_support import CALLER_URL, A, B, MakeLb, routing, stats_by_id

from openai_priority_loadbalancer import Attempt, Backend, FailedEvent

STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
PLAIN = {"messages": [{"role": "user", "content": "hi"}]}
CALLER_READ = 30.0  # the client's read timeout in these tests


class Slow:
    """A backend that begins answering ``delay`` seconds after a request arrives."""

    def __init__(self, lib: Any, delay: float) -> None:
        self.lib = lib
        self.delay = delay
        self.header_reads: list[Any] = []  # the read timeout each attempt had for its headers
        self.body_reads: list[Any] = []  # ...and when its body's first read started

    def __call__(self, request: Any) -> Any:
        read = request.extensions.get("timeout", {}).get("read")
        self.header_reads.append(read)
        if read is not None and read < self.delay:
            raise self.lib.ReadTimeout("timed out", request=request)
        return self.lib.Response(
            200, stream=self._body(request), headers={"content-type": "text/event-stream"}
        )

    def _body(self, request: Any) -> Any:
        reads = self.body_reads

        class Body(self.lib.SyncByteStream, self.lib.AsyncByteStream):  # type: ignore[misc,name-defined]
            def __iter__(self) -> Any:
                reads.append(request.extensions["timeout"]["read"])
                yield b'data: {"host": "%s"}\n\n' % request.url.host.encode()

            async def __aiter__(self) -> Any:
                reads.append(request.extensions["timeout"]["read"])
                yield b'data: {"host": "%s"}\n\n' % request.url.host.encode()

        return Body()


def two(**b: Any) -> list[Backend]:
    return [Backend(A, 1), Backend(B, 2, **b)]


@pytest.fixture
def client(lib: Any) -> Any:
    return lambda lb, **kw: lib.Client(transport=lb, timeout=kw.get("timeout", CALLER_READ))


def test_a_stream_that_does_not_start_in_time_goes_to_the_next_backend(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    events: list[Any] = []
    lb = make_lb(two(), first_byte_timeout_s=1, on_event=events.append)
    with client(lb) as http:
        response = http.post(CALLER_URL, json=STREAM)
        assert response.status_code == 200
        assert response.json() == {"host": B}
        attempts = routing(response).attempts
        assert [(a.backend, a.status, a.error) for a in attempts] == [
            (A, None, "FirstByteTimeout"),
            (B, 200, None),
        ]
        assert isinstance(attempts[0], Attempt)
    assert slow.header_reads == [1.0]  # A had the deadline as its read timeout
    # B was the last backend left: it had the caller's read timeout, not the deadline.
    assert router.for_host(B)[0].extensions["timeout"]["read"] == CALLER_READ
    assert [e.kind for e in events] == ["attempt", "failed", "attempt", "served"]
    failed = events[1]
    assert isinstance(failed, FailedEvent)
    assert (failed.backend, failed.cause, failed.consecutive_failures) == (A, "FirstByteTimeout", 1)
    stats = stats_by_id(lb)
    assert (stats[A].slow, stats[A].failures, stats[A].breaker) == (1, 1, "open")
    assert (stats[B].slow, stats[B].failures) == (0, 0)
    assert lb.stats().total.slow == 1
    assert "slow" in str(lb.stats()).splitlines()[0]


def test_once_the_headers_came_the_body_is_read_with_the_callers_timeout(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    fast = Slow(lib, delay=0.0)
    router.always(A, fast)
    lb = make_lb(two(), first_byte_timeout_s=1.5)
    with client(lb) as http, http.stream("POST", CALLER_URL, json=STREAM) as response:
        assert b"".join(response.iter_bytes()) == b'data: {"host": "a.example"}\n\n'
        assert fast.header_reads == [1.5]
        assert fast.body_reads == [CALLER_READ]
        # The caller's own request (and its timeouts) were never changed.
        assert response.request.extensions["timeout"]["read"] == CALLER_READ
    assert stats_by_id(lb)[A].slow == 0
    assert routing(response).attempts[0].error is None


def test_a_non_streamed_request_is_never_given_up(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    slow = Slow(lib, delay=20.0)  # a long completion: its headers come when it is done
    router.always(A, slow)
    lb = make_lb(two(), first_byte_timeout_s=1)
    with client(lb) as http:
        # "stream": true nested in a message's text is not a streamed request.
        body = {"messages": [{"role": "user", "content": '{"stream":true}'}], "stream": False}
        for json_body in (PLAIN, body):
            response = http.post(CALLER_URL, json=json_body)
            assert response.status_code == 200
            assert routing(response).backend == A
    assert slow.header_reads == [CALLER_READ, CALLER_READ]
    assert stats_by_id(lb)[A].slow == 0


def test_without_the_option_a_slow_stream_is_waited_for(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    lb = make_lb(two())
    with client(lb) as http:
        response = http.post(CALLER_URL, json=STREAM)
        assert routing(response).backend == A
    assert slow.header_reads == [CALLER_READ]


def test_the_callers_read_timeout_comes_first(make_lb: MakeLb, router: Any, lib: Any, client: Any) -> None:
    """A read timeout no longer than the deadline stays the caller's: it reaches the caller, as today."""
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    events: list[Any] = []
    lb = make_lb(two(), first_byte_timeout_s=5, on_event=events.append)
    with client(lb, timeout=2.0) as http, pytest.raises(lib.ReadTimeout):
        http.post(CALLER_URL, json=STREAM)
    assert slow.header_reads == [2.0]
    assert [e.cause for e in events if isinstance(e, FailedEvent)] == ["ReadTimeout"]
    assert router.for_host(B) == []
    assert stats_by_id(lb)[A].slow == 0


def test_the_last_backend_left_is_waited_for(make_lb: MakeLb, router: Any, lib: Any, client: Any) -> None:
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    lb = make_lb([Backend(A, 1)], first_byte_timeout_s=1)
    with client(lb) as http:
        assert routing(http.post(CALLER_URL, json=STREAM)).backend == A
    assert slow.header_reads == [CALLER_READ]


def test_a_request_sets_its_own_deadline_through_its_extensions(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    with client(make_lb(two())) as http:
        response = http.post(CALLER_URL, json=STREAM, extensions={"first_byte_timeout_s": 0.5})
        assert [a.error for a in routing(response).attempts] == ["FirstByteTimeout", None]
    with client(make_lb(two(), first_byte_timeout_s=1)) as http:
        response = http.post(CALLER_URL, json=STREAM, extensions={"first_byte_timeout_s": None})
        assert routing(response).backend == A  # None: no deadline for this request
    assert slow.header_reads == [0.5, CALLER_READ]


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError)])
def test_a_bad_deadline_in_a_requests_extensions_is_refused_before_sending(
    make_lb: MakeLb, router: Any, client: Any, value: Any, error: type[Exception]
) -> None:
    with client(make_lb(two())) as http, pytest.raises(error, match=r"extensions\['first_byte_timeout_s'\]"):
        http.post(CALLER_URL, json=STREAM, extensions={"first_byte_timeout_s": value})
    assert router.requests == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-0.5, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_a_bad_first_byte_timeout_is_refused_at_construction(
    make_lb: MakeLb, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="first_byte_timeout_s"):
        make_lb(two(), first_byte_timeout_s=value)


async def test_async_a_slow_stream_goes_elsewhere_and_its_body_uses_the_callers_timeout(
    make_async_lb: MakeLb, router: Any, lib: Any
) -> None:
    slow, fast = Slow(lib, delay=20.0), Slow(lib, delay=0.0)
    router.always(A, slow).always(B, fast)
    backends = [Backend(A, 1), Backend(B, 2), Backend("c.example", 3)]
    lb = make_async_lb(backends, first_byte_timeout_s=1)
    async with lib.AsyncClient(transport=lb, timeout=CALLER_READ) as http:
        async with http.stream("POST", CALLER_URL, json=STREAM) as response:
            assert (
                b"".join([chunk async for chunk in response.aiter_bytes()])
                == b'data: {"host": "b.example"}\n\n'
            )
        assert [(a.backend, a.error) for a in routing(response).attempts] == [
            (A, "FirstByteTimeout"),
            (B, None),
        ]
    assert slow.header_reads == [1.0]
    assert fast.header_reads == [1.0]  # c.example was still there to go to
    assert fast.body_reads == [CALLER_READ]
    assert stats_by_id(lb)[A].slow == 1


def test_a_stream_naming_a_stored_object_is_not_given_up(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    """Only the backend holding ``previous_response_id`` can answer: it is waited for."""
    slow = Slow(lib, delay=20.0)
    router.always(A, slow)
    lb = make_lb(two(), first_byte_timeout_s=1)
    body = {"model": "gpt-4o", "input": "more", "previous_response_id": "resp_abc", "stream": True}
    with client(lb) as http:
        response = http.post("https://caller.example/openai/v1/responses", json=body)
        assert routing(response).backend == A
    assert slow.header_reads == [CALLER_READ]
    assert stats_by_id(lb)[A].slow == 0


def test_a_stream_failing_mid_way_fails_as_without_a_deadline(
    make_lb: MakeLb, router: Any, lib: Any, client: Any
) -> None:
    """Once a byte reached the caller nothing is replayed: the body's error is the caller's."""

    class Broken(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Any:
            yield b'data: {"n": 1}\n\n'
            raise lib.ReadTimeout("timed out")

    router.always(A, lambda request: lib.Response(200, stream=Broken()))
    lb = make_lb(two(), first_byte_timeout_s=1)
    received: list[bytes] = []
    with (
        client(lb) as http,
        http.stream("POST", CALLER_URL, json=STREAM) as response,
        pytest.raises(lib.ReadTimeout),
    ):
        received.extend(response.iter_bytes())
    assert received == [b'data: {"n": 1}\n\n']
    assert router.hosts == [A]
    assert [(a.backend, a.error) for a in routing(response).attempts] == [(A, None)]
    assert stats_by_id(lb)[A].slow == 0
