"""The seam between httpx (openai 1.x/2.x) and httpx2 (openai 3.x).

The two libraries have the same API under different module names. A balancer serves both: it tells
which one a request belongs to from the request's type, sends it through an inner transport of that
same library and builds its own responses with that library's ``Response``. Neither library is
imported here unless it is installed; importing this package needs only one of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from types import ModuleType

    import httpx
    import httpx2

    Request: TypeAlias = httpx.Request | httpx2.Request
    Response: TypeAlias = httpx.Response | httpx2.Response
else:
    Request = Any
    Response = Any

__all__ = ["HttpLib", "Request", "Response", "available_modules", "lib_for_module", "lib_for_request"]

LIBRARY_NAMES = ("httpx2", "httpx")


@dataclass(frozen=True, slots=True, eq=False)
class HttpLib:
    """What the balancer needs of one HTTP library."""

    module: ModuleType
    Request: Any
    Response: Any
    URL: Any
    Headers: Any
    # Errors raised before the backend can have acted on the request, or that show it broken:
    # the backend is set aside and the request goes to the next backend.
    failover_errors: tuple[type[BaseException], ...]
    # The backend accepted the request and then went silent: it is set aside, and the error goes
    # back to the caller (who may retry), since the backend may have acted on the request.
    silent_errors: tuple[type[BaseException], ...]
    # The read timeout: no byte came within the request's ``timeout["read"]``.
    ReadTimeout: type[BaseException]

    @property
    def name(self) -> str:
        return self.module.__name__


def _make(module: ModuleType) -> HttpLib:
    m: Any = module
    return HttpLib(
        module=module,
        Request=m.Request,
        Response=m.Response,
        URL=m.URL,
        Headers=m.Headers,
        failover_errors=(m.ConnectError, m.ConnectTimeout, m.RemoteProtocolError, m.ReadError, m.WriteError),
        silent_errors=(m.ReadTimeout, m.WriteTimeout),
        ReadTimeout=m.ReadTimeout,
    )


_libs: dict[str, HttpLib] = {}
_libs_by_type: dict[type, HttpLib] = {}
_lock = threading.Lock()


def lib_for_module(module: ModuleType) -> HttpLib:
    """The record for an imported library module (``httpx`` or ``httpx2``)."""
    lib = _libs.get(module.__name__)
    if lib is None:
        with _lock:
            lib = _libs.setdefault(module.__name__, _make(module))
    return lib


def lib_for_request(request: object) -> HttpLib:
    """The library whose ``Request`` type ``request`` is.

    Raises:
        TypeError: ``request`` is not a request of httpx or httpx2.
    """
    kind = type(request)
    lib = _libs_by_type.get(kind)
    if lib is not None:
        return lib
    for name in LIBRARY_NAMES:
        module = sys.modules.get(name)
        if module is not None and isinstance(request, module.Request):
            lib = lib_for_module(module)
            _libs_by_type[kind] = lib
            return lib
    raise TypeError(f"expected an httpx or httpx2 Request, got {kind.__module__}.{kind.__qualname__}")


def available_modules(*, imported_only: bool) -> list[ModuleType]:
    """The installed HTTP libraries: those already imported, or also those that could be.

    ``httpx2.alias_httpx()`` makes ``httpx`` the same module as ``httpx2``; it is listed once.
    """
    found: list[ModuleType] = []
    for name in LIBRARY_NAMES:
        module = sys.modules.get(name)
        if module is None and not imported_only and importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
        if module is not None and all(module is not other for other in found):
            found.append(module)
    return found
