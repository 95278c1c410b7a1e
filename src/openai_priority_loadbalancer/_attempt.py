"""Building one attempt: the caller's request, addressed to one backend with its credentials.

Also the first-byte deadline of a streamed request's attempts, and taking an attempt's credentials out
of an error's message. Pure functions (the URL cache is the caller's): no I/O, no balancer state.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._backend import Backend
    from ._http import HttpLib, Request
    from ._state import BackendState

__all__ = [
    "FIRST_BYTE_TIMEOUT",
    "attempt_request",
    "first_byte_limit",
    "first_byte_seconds",
    "limit_first_byte",
]

#: Key of ``request.extensions`` that sets ``first_byte_timeout_s`` for one request (None: off for it).
FIRST_BYTE_TIMEOUT: Final = "first_byte_timeout_s"
_URL_CACHE_SIZE: Final = 512
# The headers of an attempt that carry a credential, and the shortest value taken out of an error's text.
_CREDENTIAL_HEADERS: Final = ("api-key", "authorization")
_MIN_SECRET: Final = 4

#: A URL cache: (URL type, backend id, scheme, host, port, path) -> (the backend's URL, its Host header).
UrlCache = dict[tuple[Any, ...], tuple[Any, str]]
#: A streamed request's first-byte deadline: (seconds, the caller's timeouts, its read timeout).
FirstByte = tuple[float, dict[str, Any], Any]


def attempt_request(
    lib: HttpLib, request: Request, raw_path: bytes, backend: Backend, token: str | None, cache: UrlCache
) -> Request:
    """A copy of ``request`` (whose URL's raw path is ``raw_path``) addressed to ``backend``, with its
    credentials; ``request`` is untouched."""
    url, host = backend_url(request.url, raw_path, backend, cache)
    stream = request.stream
    body = None
    if backend.deployments and raw_path.startswith(b"/openai/v1/"):
        body = rewrite_model(request.content, backend.deployments)
        if body is not None:
            stream = lib.module.ByteStream(body)
    attempt: Request = lib.Request(
        request.method, url, headers=request.headers, stream=stream, extensions=request.extensions
    )
    headers = attempt.headers  # the attempt's own copy
    headers["Host"] = host
    if body is not None:
        # The new body has a length: a chunked upload's framing header would frame it twice.
        headers["Content-Length"] = str(len(body))
        if "transfer-encoding" in headers:
            del headers["transfer-encoding"]
    if backend.api_key is not None:
        headers["api-key"] = backend.api_key
        if "authorization" in headers:
            del headers["authorization"]
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
        if "api-key" in headers:
            del headers["api-key"]
    return attempt


def backend_url(url: Any, raw_path: bytes, backend: Backend, cache: UrlCache) -> tuple[Any, str]:
    """``url`` (whose raw path is ``raw_path``) addressed to ``backend``, and its ``Host`` header;
    cached per backend and URL."""
    key = (type(url), id(backend), url.scheme, url.raw_host, url.port, raw_path)
    cached = cache.get(key)
    if cached is not None:
        return cached
    if backend.deployments:
        raw_path = rewrite_deployment(raw_path, backend.deployments)
    if backend.base_path:
        raw_path = backend.base_path.encode("ascii") + raw_path
    if backend.scheme is not None:
        new = url.copy_with(
            scheme=backend.scheme, host=backend.hostname, port=backend.port, raw_path=raw_path
        )
    else:
        port = backend.port if backend.port is not None else url.port
        new = url.copy_with(host=backend.hostname, port=port, raw_path=raw_path)
    if len(cache) >= _URL_CACHE_SIZE:
        cache.clear()
    entry = cache[key] = (new, new.netloc.decode("ascii"))
    return entry


def limit_first_byte(
    attempt: Request, first_byte: FirstByte, now: float, tried: set[int], states: Sequence[BackendState]
) -> tuple[dict[str, Any], Any] | None:
    """Give ``attempt`` its own timeouts, the first-byte deadline as their read timeout; return them
    and the caller's read timeout, or None (the attempt keeps the caller's timeouts).

    Not when no other backend could take the request now: the last one left is waited for as
    long as the caller's own timeout allows. HTTP cores read the read timeout from the request's
    extensions when they read the response's headers, and again when the body's first read
    starts: the flow puts the caller's back into the returned dict once the headers have come.
    """
    if not any(
        s.index not in tried and now >= s.cooling_until and not (s.probing and s.failures) for s in states
    ):
        return None
    seconds, timeouts, read = first_byte
    limited = {**timeouts, "read": seconds}
    attempt.extensions["timeout"] = limited
    return limited, read


def scrub_credentials(exc: BaseException, attempt: Request) -> None:
    """Take the attempt's credentials out of the message of ``exc`` (and drop the exceptions it chains,
    which quote them too): an HTTP library refusing a header value quotes it ("Illegal header value
    b'KEY '"), and the message ends up in logs and tracebacks."""
    text = str(exc)
    secrets: list[str] = []
    for name in _CREDENTIAL_HEADERS:
        value = attempt.headers.get(name)
        if value:
            secrets += [value, value.strip(), repr(value.encode())[2:-1], *value.split()[1:]]
    found = [secret for secret in secrets if len(secret) >= _MIN_SECRET and secret in text]
    if not found:
        return
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    exc.args = (text,)
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True


def first_byte_seconds(name: str, value: object) -> float | None:
    """A first-byte deadline, checked: None, or a finite number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return float(value)


def first_byte_limit(request: Request, seconds: object) -> tuple[float, dict[str, Any], Any] | None:
    """The first-byte deadline of ``request``: (seconds, its timeouts, its read timeout), or None when
    it has none: the request is not streamed, or its own read timeout comes first."""
    seconds = first_byte_seconds(f"request.extensions[{FIRST_BYTE_TIMEOUT!r}]", seconds)
    content = request.content
    if seconds is None or (b'"stream":true' not in content and b'"stream": true' not in content):
        return None
    timeouts = request.extensions.get("timeout")
    if not isinstance(timeouts, dict):
        timeouts = {}
    read = timeouts.get("read")
    if isinstance(read, int | float) and read <= seconds:
        return None
    return seconds, timeouts, read


def rewrite_deployment(raw_path: bytes, deployments: Mapping[str, str]) -> bytes:
    """``/openai/deployments/{name}/...`` with ``name`` mapped for this backend; other paths unchanged."""
    prefix = b"/openai/deployments/"
    if not raw_path.startswith(prefix):
        return raw_path
    rest = raw_path[len(prefix) :]
    end = len(rest)
    for sep in (b"/", b"?"):
        found = rest.find(sep)
        if found != -1:
            end = min(end, found)
    name = rest[:end].decode("ascii", "replace")
    target = deployments.get(name)
    if target is None:
        return raw_path
    return prefix + target.encode() + rest[end:]


def rewrite_model(content: bytes, deployments: Mapping[str, str]) -> bytes | None:
    """The JSON body with its ``model`` mapped for this backend (the v1 API form), or None if unchanged."""
    if not content.startswith(b"{") or b'"model"' not in content:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    target = deployments.get(model) if isinstance(model, str) else None
    if target is None:
        return None
    body["model"] = target
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
