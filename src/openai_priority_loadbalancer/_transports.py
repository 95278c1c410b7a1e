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
import urllib.request
from typing import TYPE_CHECKING, Any, ClassVar, overload

from ._base import CLOSE, READ, SEND, SHARE, SLEEP, BaseLoadBalancer, Share
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
    """Owns the inner transports: the one given, or by default one per backend and HTTP library.

    A connection pool per backend keeps each request's pool bookkeeping to that backend's own
    connections: one pool for every backend would check every idle connection of every backend on
    each request. The default transports share one TLS context per library, are built on first use,
    and honour the environment as an ``httpx.Client`` does by default: ``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (read when the balancer is built), and
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.
    """

    _factory: ClassVar[str]  # the library's transport class to build: "HTTPTransport" / "AsyncHTTPTransport"

    def __init__(self, backends: Iterable[Backend], *, transport: Any = None, **options: Any) -> None:
        if not available_modules(imported_only=True):  # pragma: no cover - checked in a bare venv by hand
            raise ImportError("openai-priority-loadbalancer needs httpx or httpx2: pip install httpx")
        super().__init__(backends, **options)
        self._transport = transport
        # Library name -> each backend's transport (None until the backend is first used).
        self._pools: dict[str, list[Any]] = {}
        self._tls: dict[str, Any] = {}
        self._proxies: dict[str, str] = {}
        if transport is None:
            self._proxies = urllib.request.getproxies()
            for module in available_modules(imported_only=True):  # creating a TLS context takes tens of ms
                self._tls_context(lib_for_module(module))

    def _inner(self, lib: HttpLib, index: int, attempt: Request) -> Any:
        """The transport to send ``attempt``, an attempt on backend ``index``, through."""
        if self._transport is not None:
            return self._transport
        pool = self._pools.get(lib.name)
        inner = pool[index] if pool is not None else None
        return inner if inner is not None else self._build(lib, index, attempt.url)

    def _build(self, lib: HttpLib, index: int, url: Any) -> Any:
        context = self._tls_context(lib)  # before taking the lock: a new one takes tens of milliseconds
        proxy = _environment_proxy(self._proxies, url.scheme, url.host)
        with self._lock:
            pool = self._pools.setdefault(lib.name, [None] * len(self.backends))
            if pool[index] is None:
                factory = getattr(lib.module, self._factory)
                pool[index] = factory(verify=context, limits=_connection_limits(lib), proxy=proxy)
            return pool[index]

    def _tls_context(self, lib: HttpLib) -> Any:
        context = self._tls.get(lib.name)
        if context is None:
            context = self._tls.setdefault(lib.name, lib.module.create_ssl_context())
        return context

    def _inner_transports(self) -> list[Any]:
        if self._transport is not None:
            return [self._transport]
        return [inner for pool in self._pools.values() for inner in pool if inner is not None]


class LoadBalancer(_Wrapping, _SyncTransport):
    """A synchronous transport for ``httpx.Client`` / ``httpx2.Client`` spreading requests over backends.

    Args:
        backends: the endpoints; see :class:`Backend`.
        transport: the inner transport to send every attempt through. It must belong to the same
            library as the client, and is closed with the balancer. Default: an ``HTTPTransport`` of
            the request's library per backend (a connection pool each), with the openai SDK's
            connection limits.
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
        request.read()  # make the body replayable, once
        flow = self._flow(request, lib)
        try:
            action, value = next(flow)
            while True:
                try:
                    if action == SEND:
                        attempt, index = value
                        result = self._inner(lib, index, attempt).handle_request(attempt)
                    elif action == SLEEP:
                        self._sleep(value)
                        result = None
                    elif action == CLOSE:
                        value.close()
                        result = None
                    elif action == READ:
                        result = value.read()
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
        await request.aread()  # make the body replayable, once
        flow = self._flow(request, lib)
        try:
            action, value = next(flow)
            while True:
                try:
                    if action == SEND:
                        attempt, index = value
                        result = await self._inner(lib, index, attempt).handle_async_request(attempt)
                    elif action == SLEEP:
                        await self._sleep(value)
                        result = None
                    elif action == CLOSE:
                        await value.aclose()
                        result = None
                    elif action == READ:
                        result = await value.aread()
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
    # Never fall back to the caller's credentials; the messages name no token.
    if not isinstance(token, str) or not token:
        raise TypeError(f"azure_ad_token_provider must return a non-empty str, got {type(token).__name__}")
    if not (token.isascii() and token.isprintable()):
        raise ValueError("azure_ad_token_provider returned a token that is not printable ASCII")
    if token != token.strip():
        raise ValueError("azure_ad_token_provider returned a token that begins or ends with whitespace")


def _environment_proxy(proxies: dict[str, str], scheme: str, host: str) -> str | None:
    """The proxy URL the environment names for ``scheme://host``, or None, by httpx's rules.

    ``proxies`` is what ``urllib.request.getproxies()`` read: ``HTTP_PROXY`` / ``HTTPS_PROXY`` by
    scheme, ``ALL_PROXY`` as ``"all"``, ``NO_PROXY`` as ``"no"``. A ``NO_PROXY`` entry is ``*`` (no
    proxy for any host), a host name or address (that host), ``example.com`` (it and its
    subdomains) or ``.example.com`` (its subdomains), each optionally as ``scheme://entry``.
    """
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    host = host.lower()
    for entry in proxies.get("no", "").split(","):
        entry_scheme, _, name = entry.strip().lower().rpartition("://")
        if entry_scheme and entry_scheme not in (scheme, "all"):
            continue
        name = name.strip("[]")
        domain = name.lstrip(".")
        if name == "*" or (domain and (host == name or host.endswith("." + domain))):
            return None
    return proxy if "://" in proxy else f"http://{proxy}"


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
