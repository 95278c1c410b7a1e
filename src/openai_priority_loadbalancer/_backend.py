"""Backend: the frozen, validated configuration of one endpoint.

Runtime state (cooldowns, counters, in-flight requests) lives elsewhere, in the balancer that uses the
backend, so one list of backends can be shared by several balancers, sync and async alike.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

__all__ = ["Backend", "TokenProvider"]

#: A callable returning a bearer token (for Entra ID), sync or async; called for every attempt on the backend,
#: so it should cache (``azure.identity.get_bearer_token_provider`` does).
TokenProvider = Callable[[], "str | Awaitable[str]"]

# RFC 1123 host names (letters, digits, hyphens, dots; underscores tolerated: private DNS zones use them)
# and IPv4 literals; IPv6 literals come in brackets and are checked separately.
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]+$")
# Deployment names go into the request's path and JSON body: printable ASCII, no path syntax.
_DEPLOYMENT = re.compile(r"^[!-~]+$")
_DEPLOYMENT_FORBIDDEN = frozenset("/?#%")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint the balancer may send requests to.

    The first four parameters are those of openai-priority-loadbalancer 1.1.1, in the same order.

    Args:
        host: ``"oai-eastus.openai.azure.com"`` (keeps the scheme and port of the client's request),
            ``"127.0.0.1:8081"`` (that port), or a URL such as ``"http://127.0.0.1:8081/prefix"`` (its
            scheme, port and path prefix).
        priority: 1 is best. Lower-priority backends get traffic only while every better one is
            unavailable.
        path: optional path prefix put before the request's path, e.g. ``"/ai"``.
        api_key: sent as the ``api-key`` header to this backend only, replacing the caller's credentials.
        weight: share of traffic among backends of the same priority (default 1).
        deployments: maps the deployment (model) name the caller uses to this backend's deployment name,
            e.g. ``{"gpt-4o": "gpt-4o-eastus"}``.
        azure_ad_token_provider: callable returning an Entra ID token (sync or async), sent as
            ``Authorization: Bearer`` to this backend only.

    Raises:
        TypeError: a parameter has the wrong type.
        ValueError: a parameter has an invalid value; the message names it.
    """

    host: str
    priority: int
    path: str | None = None
    api_key: str | None = field(default=None, repr=False)
    _: KW_ONLY
    weight: float = 1.0
    deployments: Mapping[str, str] | None = field(default=None, hash=False)
    azure_ad_token_provider: TokenProvider | None = field(default=None, repr=False, compare=False)

    # Derived from the above in __post_init__.
    scheme: str | None = field(init=False, repr=False, compare=False)
    """``"http"``/``"https"`` when ``host`` was a URL, else None (the request's own scheme is kept)."""
    hostname: str = field(init=False, repr=False, compare=False)
    """The host name or IP literal alone (IPv6 without brackets)."""
    port: int | None = field(init=False, repr=False, compare=False)
    """The port when ``host`` named one; None keeps the request's port (or the scheme's default for URLs)."""
    base_path: str = field(init=False, repr=False, compare=False)
    """The normalised path prefix (URL path + ``path``), ``""`` or ``"/a/b"`` without a trailing slash."""
    id: str = field(init=False, repr=False, compare=False)
    """A stable name for logs and stats: scheme, host, port and prefix as configured; never a secret."""

    def __post_init__(self) -> None:
        _check_type("host", self.host, str)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"Backend.priority must be an int, got {type(self.priority).__name__}")
        if self.priority < 1:
            raise ValueError(f"Backend.priority must be >= 1 (1 is best), got {self.priority}")
        if self.path is not None:
            _check_type("path", self.path, str)
        if self.api_key is not None:
            _check_type("api_key", self.api_key, str)
            # The messages never repeat the key.
            if not (self.api_key.isascii() and self.api_key.isprintable()):
                raise ValueError("Backend.api_key must be printable ASCII (it is sent as a header value)")
            if self.api_key != self.api_key.strip():
                # A header value cannot begin or end with a space: every request would fail, quoting it.
                raise ValueError("Backend.api_key must not begin or end with whitespace")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
            raise TypeError(f"Backend.weight must be a number, got {type(self.weight).__name__}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"Backend.weight must be a finite number > 0, got {self.weight!r}")

        scheme, hostname, port, url_path = _parse_host(self.host)
        extra_path = _normalise_path("path", self.path or "")
        base_path = _normalise_path("host", url_path) + extra_path

        deployments: Mapping[str, str] | None = None
        if self.deployments is not None:
            if not isinstance(self.deployments, Mapping):
                raise TypeError(
                    f"Backend.deployments must be a mapping, got {type(self.deployments).__name__}"
                )
            for key, value in self.deployments.items():
                if not (isinstance(key, str) and isinstance(value, str)):
                    raise TypeError("Backend.deployments must map str to str")
                if not all(
                    _DEPLOYMENT.match(n) and not _DEPLOYMENT_FORBIDDEN.intersection(n) for n in (key, value)
                ) or (key in (".", "..") or value in (".", "..")):
                    raise ValueError(
                        "Backend.deployments: names must be non-empty printable ASCII without '/', '?', '#', "
                        f"'%' or spaces, and not '.' or '..'; got {key!r} -> {value!r}"
                    )
            deployments = MappingProxyType(dict(self.deployments))

        if self.azure_ad_token_provider is not None and not callable(self.azure_ad_token_provider):
            raise TypeError("Backend.azure_ad_token_provider must be callable")
        if self.azure_ad_token_provider is not None and self.api_key:
            raise ValueError("Backend: set api_key or azure_ad_token_provider, not both")

        display_host = f"[{hostname}]" if ":" in hostname else hostname
        netloc = display_host if port is None else f"{display_host}:{port}"
        ident = (f"{scheme}://{netloc}" if scheme else netloc) + base_path

        setattr_ = object.__setattr__  # frozen: derived fields are set once, here
        setattr_(self, "path", self.path if self.path is not None else "")  # 1.1.1 reported "" for no path
        setattr_(self, "api_key", self.api_key or None)
        setattr_(self, "deployments", deployments)
        setattr_(self, "scheme", scheme)
        setattr_(self, "hostname", hostname)
        setattr_(self, "port", port)
        setattr_(self, "base_path", base_path)
        setattr_(self, "id", ident)

    @property
    def endpoint(self) -> str:
        """The base URL to give the SDK client (``azure_endpoint=``, or ``base_url=``) for this backend.

        Scheme, host and port, without the path prefix: the balancer puts the prefix before every
        request's path itself, so an endpoint that carried it would send it twice. A backend given as
        a bare host (or ``host:port``) keeps the scheme of the client's request, here ``https``::

            Backend("oai-eastus.openai.azure.com", 1).endpoint  # "https://oai-eastus.openai.azure.com"
            Backend("10.0.0.5:8443", 1).endpoint  # "https://10.0.0.5:8443"
            Backend("http://127.0.0.1:8081/prefix", 1).endpoint  # "http://127.0.0.1:8081"
        """
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        netloc = host if self.port is None else f"{host}:{self.port}"
        return f"{self.scheme or 'https'}://{netloc}"

    @property
    def origin(self) -> tuple[str | None, str, int | None, str]:
        """What identifies the endpoint: scheme, host name, port and path prefix (no credentials)."""
        return (self.scheme, self.hostname.lower(), self.port, self.base_path)


def _check_type(name: str, value: object, expected: type) -> None:
    if not isinstance(value, expected):
        raise TypeError(f"Backend.{name} must be a {expected.__name__}, got {type(value).__name__}")


def _normalise_path(name: str, path: str) -> str:
    if not path.isascii():
        raise ValueError(f"Backend.{name}: a path prefix must be ASCII (percent-encode it), got {path!r}")
    if any(c in path for c in "?#") or any(c.isspace() for c in path):
        # Not repeated: what follows a '?' may be a query with a secret in it.
        raise ValueError(f"Backend.{name}: a path prefix must not contain '?', '#' or spaces")
    path = path.strip("/")
    if any(segment in (".", "..") for segment in path.lower().replace("%2e", ".").split("/")):
        # A server resolves them: "/../admin" would reach "/admin", outside the prefix given.
        raise ValueError(f"Backend.{name}: a path prefix must not have '.' or '..' segments, got {path!r}")
    return f"/{path}" if path else ""


def _parse_host(host: str) -> tuple[str | None, str, int | None, str]:
    """Split ``host`` into (scheme or None, hostname, port or None, path)."""
    text = host.strip()
    if not text:
        raise ValueError("Backend.host must not be empty")
    has_scheme = "://" in text
    try:
        parts = urlsplit(text if has_scheme else f"//{text}")
        port = parts.port
    except ValueError as exc:  # bad port or bracketed literal; the message names neither secret nor value
        raise ValueError(f"Backend.host is not a valid host, host:port or URL: {exc}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("Backend.host must not contain credentials; use api_key or azure_ad_token_provider")
    if has_scheme and parts.scheme not in ("http", "https"):
        raise ValueError(f"Backend.host: scheme must be http or https, got {parts.scheme!r}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        # The host is not repeated: a query may hold a key ("?api-key=...").
        raise ValueError("Backend.host must not have a query or fragment ('?', '#'); give keys as api_key")
    if not has_scheme and parts.path:
        raise ValueError(f"Backend.host {host!r} has a path: give a URL (https://host/prefix) or use path=")
    hostname = parts.hostname or ""
    bracketed = "[" in parts.netloc
    if not (_IPV6.match(hostname) if bracketed else _HOSTNAME.match(hostname)) or ".." in hostname:
        raise ValueError(f"Backend.host has an invalid host name: {host!r}")
    if bracketed:
        try:  # one address, one spelling: [0:0::1] is [::1], the same endpoint
            hostname = ipaddress.IPv6Address(hostname).compressed
        except ValueError:
            raise ValueError(f"Backend.host has an invalid IPv6 address: {host!r}") from None
    if port is not None and port == 0:
        raise ValueError(f"Backend.host: port must be 1-65535, got {host!r}")
    if has_scheme and port == _DEFAULT_PORTS[parts.scheme]:
        port = None  # https://host:443 is https://host: one endpoint, one identity
    return (parts.scheme or None), hostname, port, parts.path
