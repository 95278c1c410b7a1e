"""LoadBalancer and AsyncLoadBalancer: the two thin loops that carry out the flow's actions.

Each is a real transport of every installed HTTP library (``isinstance(lb, httpx.BaseTransport)`` and
``isinstance(lb, httpx2.BaseTransport)`` both hold), and wraps an inner transport of the library the
request belongs to. For type checkers both classes derive from both libraries' base transports, so
either ``httpx.Client(transport=lb)`` or ``httpx2.Client(transport=lb)`` type-checks.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, overload

from ._base import CLOSE, SEND, SHARE, SLEEP, BaseLoadBalancer, Share
from ._http import HttpLib, Request, Response, available_modules, lib_for_module, lib_for_request

__all__ = ["AsyncLoadBalancer", "LoadBalancer"]

logger = logging.getLogger("openai-priority-loadbalancer")

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    import httpx
    import httpx2

    from ._backend import Backend

    class _SyncTransport(httpx.BaseTransport, httpx2.BaseTransport):
        @overload
        def handle_request(self, request: httpx.Request) -> httpx.Response: ...
        @overload
        def handle_request(self, request: httpx2.Request) -> httpx2.Response: ...
        def handle_request(self, request: Request) -> Response: ...
        def close(self) -> None: ...

    class _AsyncTransport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
        @overload
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...
        @overload
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response: ...
        async def handle_async_request(self, request: Request) -> Response: ...
        async def aclose(self) -> None: ...

else:
    # Without either library the package still imports (the simulator needs neither); building a
    # balancer then says what is missing.
    _MODULES = available_modules(imported_only=False)
    _SyncTransport = type("_SyncTransport", tuple(m.BaseTransport for m in _MODULES) or (object,), {})
    _AsyncTransport = type("_AsyncTransport", tuple(m.AsyncBaseTransport for m in _MODULES) or (object,), {})


def _connection_limits(lib: HttpLib) -> Any:
    # The openai SDK's own client defaults; a balancer should not lower the client's capacity.
    return lib.module.Limits(max_connections=1000, max_keepalive_connections=100)


class _Wrapping(BaseLoadBalancer):
    """Owns the inner transports: the one given, or one per HTTP library, built on first need."""

    _factory: ClassVar[str]  # the library's transport class to build: "HTTPTransport" / "AsyncHTTPTransport"

    def __init__(self, backends: Iterable[Backend], *, transport: Any = None, **options: Any) -> None:
        if not available_modules(imported_only=True):  # pragma: no cover - checked in a bare venv by hand
            raise ImportError("openai-priority-loadbalancer needs httpx or httpx2: pip install httpx")
        super().__init__(backends, **options)
        self._transport = transport
        self._inners: dict[str, Any] = {}
        if transport is None:  # build now: creating an SSL context takes tens of milliseconds
            for module in available_modules(imported_only=True):
                self._inner(lib_for_module(module))

    def _inner(self, lib: HttpLib) -> Any:
        if self._transport is not None:
            return self._transport
        inner = self._inners.get(lib.name)
        if inner is None:
            with self._lock:
                inner = self._inners.get(lib.name)
                if inner is None:
                    factory = getattr(lib.module, self._factory)
                    inner = self._inners[lib.name] = factory(limits=_connection_limits(lib))
        return inner

    def _inner_transports(self) -> list[Any]:
        return [self._transport] if self._transport is not None else list(self._inners.values())


class LoadBalancer(_Wrapping, _SyncTransport):
    """A synchronous transport for ``httpx.Client`` / ``httpx2.Client`` spreading requests over backends.

    Args:
        backends: the endpoints; see :class:`Backend`.
        transport: the inner transport to send through (default: an ``HTTPTransport`` of the request's
            library, with the openai SDK's connection limits). It must belong to the same library as
            the client. It is closed with the balancer.
        sleep: how a request waits for a backend to free up (default ``time.sleep``); injectable for
            tests.
        **options: see :class:`BaseLoadBalancer`.
    """

    _factory = "HTTPTransport"

    def __init__(
        self,
        backends: Iterable[Backend],
        *,
        transport: Any = None,
        sleep: Callable[[float], object] | None = None,
        **options: Any,
    ) -> None:
        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be callable, got {type(sleep).__name__}")
        super().__init__(backends, transport=transport, **options)
        self._sleep = sleep if sleep is not None else _sleep
        _bind(self._store, "sync")

    def handle_request(self, request: Request) -> Response:  # type: ignore[override]
        """Send ``request`` to the best available backend; see the package documentation."""
        lib = lib_for_request(request)
        inner = self._inner(lib)
        request.read()  # make the body replayable, once
        flow = self._flow(request, lib)
        try:
            action, value = next(flow)
            while True:
                try:
                    if action == SEND:
                        result = inner.handle_request(value)
                    elif action == SLEEP:
                        self._sleep(value)
                        result = None
                    elif action == CLOSE:
                        value.close()
                        result = None
                    elif action == SHARE:
                        result = self._share(value)
                    else:  # TOKEN
                        result = value()
                        if inspect.isawaitable(result):
                            getattr(result, "close", lambda: None)()
                            raise TypeError("an async azure_ad_token_provider needs AsyncLoadBalancer")
                        _check_token(result)
                except BaseException as exc:
                    action, value = flow.throw(exc)
                else:
                    action, value = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _share(self, share: Share) -> Any:
        name, args = share
        try:
            return getattr(self._store, name)(*args)
        except Exception:  # a store fails open: never a request's failure
            logger.debug("state store %s failed; using local state", name, exc_info=True)
            return None

    def close(self) -> None:
        """Close the inner transport(s)."""
        for inner in self._inner_transports():
            inner.close()


class AsyncLoadBalancer(_Wrapping, _AsyncTransport):
    """An asynchronous transport for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``.

    The same as :class:`LoadBalancer`, for ``handle_async_request``. Waiting never blocks the event
    loop; the bookkeeping between awaits is short and lock-protected, so one balancer may also be
    shared with threads. ``sleep`` is an async callable (default: ``anyio.sleep``, which works under
    asyncio and trio).
    """

    _factory = "AsyncHTTPTransport"

    def __init__(
        self,
        backends: Iterable[Backend],
        *,
        transport: Any = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        **options: Any,
    ) -> None:
        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be callable, got {type(sleep).__name__}")
        super().__init__(backends, transport=transport, **options)
        self._sleep = sleep if sleep is not None else _async_sleep
        _bind(self._store, "async")

    async def handle_async_request(self, request: Request) -> Response:  # type: ignore[override]
        """Send ``request`` to the best available backend; see the package documentation."""
        lib = lib_for_request(request)
        inner = self._inner(lib)
        await request.aread()  # make the body replayable, once
        flow = self._flow(request, lib)
        try:
            action, value = next(flow)
            while True:
                try:
                    if action == SEND:
                        result = await inner.handle_async_request(value)
                    elif action == SLEEP:
                        await self._sleep(value)
                        result = None
                    elif action == CLOSE:
                        await value.aclose()
                        result = None
                    elif action == SHARE:
                        result = await self._share(value)
                    else:  # TOKEN
                        result = value()
                        if inspect.isawaitable(result):
                            result = await result
                        _check_token(result)
                except BaseException as exc:
                    action, value = flow.throw(exc)
                else:
                    action, value = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _share(self, share: Share) -> Any:
        name, args = share
        try:
            return await getattr(self._store, "a" + name)(*args)
        except Exception:  # a store fails open: never a request's failure
            logger.debug("state store %s failed; using local state", name, exc_info=True)
            return None

    async def aclose(self) -> None:
        """Close the inner transport(s)."""
        for inner in self._inner_transports():
            await inner.aclose()


def _check_token(token: object) -> None:
    if not isinstance(token, str) or not token:
        # Never fall back to the caller's credentials; the message names no token.
        raise TypeError(f"azure_ad_token_provider must return a non-empty str, got {type(token).__name__}")


def _bind(store: object, mode: str) -> None:
    """Tell a store which calls it will get ("sync" or "async"), if it cares: it may refuse with TypeError."""
    bind = getattr(store, "bind", None)
    if bind is not None:
        bind(mode)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    import anyio  # a dependency of both httpx and httpx2; works under asyncio and trio

    await anyio.sleep(seconds)
