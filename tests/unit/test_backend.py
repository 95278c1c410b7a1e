"""Backend: the validated, frozen configuration of one endpoint; and the balancer's list validation."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import httpx
import pytest

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, BaseLoadBalancer, LoadBalancer

# ---------------------------------------------------------------------- construction and attributes


def test_positional_order_is_that_of_1_1_1() -> None:
    backend = Backend("oai-westus.openai.azure.com", 2, "/ai", "key-123")
    assert backend.host == "oai-westus.openai.azure.com"
    assert backend.priority == 2
    assert backend.path == "/ai"
    assert backend.api_key == "key-123"


def test_defaults() -> None:
    backend = Backend("oai-eastus.openai.azure.com", 1)
    assert backend.path == ""  # 1.1.1 reported "" for no path, never None
    assert backend.api_key is None
    assert backend.weight == 1
    assert backend.deployments is None
    assert backend.azure_ad_token_provider is None


def test_keyword_arguments() -> None:
    backend = Backend(host="a.example", priority=3, path="/p", api_key="k", weight=2.5)
    assert (backend.host, backend.priority, backend.path, backend.api_key, backend.weight) == (
        "a.example",
        3,
        "/p",
        "k",
        2.5,
    )


def test_extensions_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Backend("a.example", 1, None, None, 2.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "scheme", "hostname", "port", "base_path", "ident"),
    [
        (
            "oai-eastus.openai.azure.com",
            None,
            "oai-eastus.openai.azure.com",
            None,
            "",
            "oai-eastus.openai.azure.com",
        ),
        ("127.0.0.1:8081", None, "127.0.0.1", 8081, "", "127.0.0.1:8081"),
        ("my_private.zone", None, "my_private.zone", None, "", "my_private.zone"),
        ("https://a.example", "https", "a.example", None, "", "https://a.example"),
        ("https://a.example/", "https", "a.example", None, "", "https://a.example"),
        (
            "http://127.0.0.1:8081/prefix",
            "http",
            "127.0.0.1",
            8081,
            "/prefix",
            "http://127.0.0.1:8081/prefix",
        ),
        ("http://127.0.0.1:8081/a/b/", "http", "127.0.0.1", 8081, "/a/b", "http://127.0.0.1:8081/a/b"),
        ("HTTPS://a.example", "https", "a.example", None, "", "https://a.example"),
        ("[::1]:8080", None, "::1", 8080, "", "[::1]:8080"),
        ("[::1]", None, "::1", None, "", "[::1]"),
        ("http://[::1]:8080/x", "http", "::1", 8080, "/x", "http://[::1]:8080/x"),
    ],
)
def test_host_forms(
    host: str, scheme: str | None, hostname: str, port: int | None, base_path: str, ident: str
) -> None:
    backend = Backend(host, 1)
    assert backend.host == host  # kept as given
    assert backend.scheme == scheme
    assert backend.hostname == hostname
    assert backend.port == port
    assert backend.base_path == base_path
    assert backend.id == ident


@pytest.mark.parametrize(
    ("host", "path", "endpoint"),
    [
        ("oai-eastus.openai.azure.com", None, "https://oai-eastus.openai.azure.com"),
        ("oai-eastus.openai.azure.com", "/ai", "https://oai-eastus.openai.azure.com"),
        ("10.0.0.5:8443", None, "https://10.0.0.5:8443"),
        ("https://a.example", None, "https://a.example"),
        ("https://a.example:443/", None, "https://a.example"),
        ("http://127.0.0.1:8081/prefix", None, "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/a/b/", "/c", "http://127.0.0.1:8081"),
        ("[::1]:8080", None, "https://[::1]:8080"),
        ("http://[::1]:8080/x", None, "http://[::1]:8080"),
    ],
)
def test_endpoint_is_scheme_host_and_port_without_the_prefix(
    host: str, path: str | None, endpoint: str
) -> None:
    assert Backend(host, 1, path).endpoint == endpoint


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("oai-eastus.openai.azure.com", "/ai", "https://oai-eastus.openai.azure.com/ai/openai/models"),
        ("10.0.0.5:8443", None, "https://10.0.0.5:8443/openai/models"),
        ("http://127.0.0.1:8081/prefix", None, "http://127.0.0.1:8081/prefix/openai/models"),
        ("https://a.example/a", "/b", "https://a.example/a/b/openai/models"),
    ],
)
def test_the_sdk_on_the_endpoint_reaches_the_backend_with_its_prefix_once(
    host: str, path: str | None, expected: str
) -> None:
    openai = pytest.importorskip("openai")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.copy_with(query=None)))
        return httpx.Response(200, json={"object": "list", "data": []})

    backend = Backend(host, 1, path)
    lb = LoadBalancer([backend], transport=httpx.MockTransport(handler))
    with openai.AzureOpenAI(
        azure_endpoint=backend.endpoint,
        api_key="caller-key",
        api_version="2024-10-21",
        http_client=httpx.Client(transport=lb),
        max_retries=0,
    ) as client:
        client.models.list()
    assert seen == [expected]


@pytest.mark.parametrize(
    ("host", "path", "base_path"),
    [
        ("a.example", "/ai", "/ai"),
        ("a.example", "ai", "/ai"),
        ("a.example", "/ai/", "/ai"),
        ("a.example", "/", ""),
        ("https://a.example/base", "/ai", "/base/ai"),
    ],
)
def test_path_prefix_is_normalised(host: str, path: str, base_path: str) -> None:
    backend = Backend(host, 1, path)
    assert backend.path == path  # the attribute keeps what the user gave
    assert backend.base_path == base_path


def test_weight_accepts_int_and_float() -> None:
    assert Backend("a.example", 1, weight=3).weight == 3
    assert Backend("a.example", 1, weight=0.25).weight == 0.25


def test_deployments_are_copied_and_read_only() -> None:
    mapping = {"gpt-4o": "gpt-4o-eastus"}
    backend = Backend("a.example", 1, deployments=mapping)
    mapping["gpt-4o"] = "changed"
    mapping["other"] = "x"
    assert dict(backend.deployments or {}) == {"gpt-4o": "gpt-4o-eastus"}
    with pytest.raises(TypeError):
        backend.deployments["gpt-4o"] = "x"  # type: ignore[index]


def test_token_provider_is_accepted() -> None:
    def provider() -> str:
        return "token"

    backend = Backend("a.example", 1, azure_ad_token_provider=provider)
    assert backend.azure_ad_token_provider is provider
    assert backend.api_key is None


# ---------------------------------------------------------------------- invalid configuration


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        # host
        ({"host": ""}, ValueError, "host"),
        ({"host": "   "}, ValueError, "host"),
        ({"host": "\t\n"}, ValueError, "host"),
        ({"host": "a b.example"}, ValueError, "host"),
        ({"host": "a.example/openai"}, ValueError, "host"),
        ({"host": "a.example:8080/openai"}, ValueError, "host"),
        ({"host": "ftp://a.example"}, ValueError, "host"),
        ({"host": "ws://a.example"}, ValueError, "host"),
        ({"host": "https://a.example?x=1"}, ValueError, "host"),
        ({"host": "https://a.example/p#frag"}, ValueError, "host"),
        ({"host": "a.example?"}, ValueError, "host"),
        ({"host": "a.example:99999"}, ValueError, "host"),
        ({"host": "a.example:0"}, ValueError, "host"),
        ({"host": "a.example:port"}, ValueError, "host"),
        ({"host": "a.example:-1"}, ValueError, "host"),
        ({"host": "https://"}, ValueError, "host"),
        ({"host": "a..example"}, ValueError, "host"),
        ({"host": "-a.example"}, ValueError, "host"),
        ({"host": "[not-ipv6]:80"}, ValueError, "host"),
        ({"host": None}, TypeError, "host"),
        ({"host": 123}, TypeError, "host"),
        ({"host": b"a.example"}, TypeError, "host"),
        # priority
        ({"priority": 0}, ValueError, "priority"),
        ({"priority": -1}, ValueError, "priority"),
        ({"priority": 1.5}, TypeError, "priority"),
        ({"priority": 1.0}, TypeError, "priority"),
        ({"priority": True}, TypeError, "priority"),
        ({"priority": "1"}, TypeError, "priority"),
        ({"priority": None}, TypeError, "priority"),
        # path
        ({"path": "/ai?x=1"}, ValueError, "path"),
        ({"path": "/ai#x"}, ValueError, "path"),
        ({"path": "/a i"}, ValueError, "path"),
        ({"path": 5}, TypeError, "path"),
        # api_key
        ({"api_key": 123}, TypeError, "api_key"),
        ({"api_key": b"key"}, TypeError, "api_key"),
        # weight
        ({"weight": 0}, ValueError, "weight"),
        ({"weight": -1}, ValueError, "weight"),
        ({"weight": math.nan}, ValueError, "weight"),
        ({"weight": math.inf}, ValueError, "weight"),
        ({"weight": True}, TypeError, "weight"),
        ({"weight": "1"}, TypeError, "weight"),
        ({"weight": None}, TypeError, "weight"),
        # deployments
        ({"deployments": ["gpt-4o"]}, TypeError, "deployments"),
        ({"deployments": "gpt-4o"}, TypeError, "deployments"),
        ({"deployments": {"gpt-4o": 1}}, TypeError, "deployments"),
        ({"deployments": {1: "gpt-4o"}}, TypeError, "deployments"),
        ({"deployments": {"": "x"}}, ValueError, "deployments"),
        ({"deployments": {"a": ""}}, ValueError, "deployments"),
        ({"deployments": {"a/b": "x"}}, ValueError, "deployments"),
        ({"deployments": {"a": "x?y"}}, ValueError, "deployments"),
        ({"deployments": {"a": "x y"}}, ValueError, "deployments"),
        # a name that is not ASCII made every request fail (UnicodeDecodeError), '..' climbs the path
        ({"deployments": {"gpt-4o": "gpt-4o-\u00e9"}}, ValueError, "deployments"),
        ({"deployments": {"gpt-4\u00f6": "gpt-4o"}}, ValueError, "deployments"),
        ({"deployments": {"gpt-4o": "gpt\x00"}}, ValueError, "deployments"),
        ({"deployments": {"gpt-4o": ".."}}, ValueError, "deployments"),
        ({"deployments": {"gpt-4o": "a%2Fb"}}, ValueError, "deployments"),
        # dot segments: a server resolves "/../admin" to "/admin", outside the prefix
        ({"host": "https://a.example/../admin"}, ValueError, "host"),
        ({"host": "https://a.example/ai/./x"}, ValueError, "host"),
        ({"host": "https://a.example/%2e%2E/admin"}, ValueError, "host"),
        ({"path": "/../admin"}, ValueError, "path"),
        ({"path": "ai/.."}, ValueError, "path"),
        ({"path": "/%2E"}, ValueError, "path"),
        ({"host": "[1::2::3]:80"}, ValueError, "host"),
        ({"host": "[:::]"}, ValueError, "host"),
        # token provider
        ({"azure_ad_token_provider": "token"}, TypeError, "azure_ad_token_provider"),
        ({"azure_ad_token_provider": 42}, TypeError, "azure_ad_token_provider"),
        ({"azure_ad_token_provider": lambda: "t", "api_key": "k"}, ValueError, "api_key"),
    ],
)
def test_invalid_configuration_names_the_field(kwargs: dict[str, Any], error: type, field: str) -> None:
    arguments: dict[str, Any] = {"host": "a.example", "priority": 1, **kwargs}
    with pytest.raises(error) as info:
        Backend(**arguments)
    assert field in str(info.value)


@pytest.mark.parametrize("api_key", ["k\u00e9y", "key\r\nx-injected: 1", "key\x00"])
def test_api_key_must_be_a_valid_header_value(api_key: str) -> None:
    with pytest.raises(ValueError, match="api_key") as info:
        Backend("a.example", 1, api_key=api_key)
    assert api_key not in str(info.value)


@pytest.mark.parametrize(
    ("host", "path"), [("a.example", "/caf\u00e9"), ("https://a.example/caf\u00e9", None)]
)
def test_non_ascii_path_is_refused_or_encoded(host: str, path: str | None) -> None:
    try:
        backend = Backend(host, 1, path)
    except ValueError as exc:  # refusing it at construction is fine, naming the field
        message = str(exc)
        backend = None
    if backend is None:
        assert "path" in message or "host" in message
        return
    seen: list[httpx.Request] = []
    lb = LoadBalancer(
        [backend], transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200))
    )
    with httpx.Client(transport=lb) as client:
        client.get("https://caller.example/x")
    assert seen[0].url.raw_path == b"/caf%C3%A9/x"


@pytest.mark.parametrize(
    "host",
    [
        "https://user:hunter2-SECRET@a.example",
        "https://:hunter2-SECRET@a.example/p",
        "user:hunter2-SECRET@a.example",
        "user:hunter2-SECRET@a.example:8080",
        "http://user:hunter2-SECRET@a.example:99999",
        "ftp://user:hunter2-SECRET@a.example",
        "https://user:hunter2-SECRET@a.example?x=1",
        "https://user:hunter2-SECRET@bad..host",
    ],
)
def test_credentials_in_the_url_are_refused_without_echoing_them(host: str) -> None:
    with pytest.raises(ValueError, match="host") as info:
        Backend(host, 1)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)


@pytest.mark.parametrize("api_key", ["sk-SECRET-123 ", " sk-SECRET-123", "sk-SECRET-123\u00a0"])
def test_api_key_with_surrounding_whitespace_is_refused_without_echoing_it(api_key: str) -> None:
    """Accepted, such a key made every request fail with an error that quoted it."""
    with pytest.raises(ValueError, match="api_key") as info:
        Backend("a.example", 1, api_key=api_key)
    assert "SECRET" not in str(info.value)
    assert "SECRET" not in repr(info.value)


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("https://a.example/?api-key=sk-SECRET-123", None),
        ("https://a.example/openai?api-key=sk-SECRET-123#x", None),
        ("a.example:8080?key=sk-SECRET-123", None),
        ("https://a.example#sk-SECRET-123", None),
        ("a.example", "/ai?api-key=sk-SECRET-123"),
        ("a.example", "/ai#sk-SECRET-123"),
    ],
)
def test_a_query_in_the_host_or_path_is_refused_without_echoing_it(host: str, path: str | None) -> None:
    with pytest.raises(ValueError, match="host" if path is None else "path") as info:
        Backend(host, 1, path)
    assert "SECRET" not in str(info.value)
    assert "SECRET" not in repr(info.value)


def test_both_api_key_and_token_provider_message_names_both() -> None:
    with pytest.raises(ValueError, match="api_key") as info:
        Backend("a.example", 1, api_key="k", azure_ad_token_provider=lambda: "t")
    assert "azure_ad_token_provider" in str(info.value)


# ---------------------------------------------------------------------- secrets, immutability, equality


def test_repr_never_shows_the_api_key() -> None:
    backend = Backend("a.example", 1, "/ai", "sk-SECRET-123")
    assert "sk-SECRET-123" not in repr(backend)
    assert "sk-SECRET-123" not in str(backend)
    assert "sk-SECRET-123" not in backend.id
    assert "a.example" in repr(backend)


def test_repr_does_not_show_the_token_provider() -> None:
    def secret_provider() -> str:
        return "tok"

    assert "secret_provider" not in repr(Backend("a.example", 1, azure_ad_token_provider=secret_provider))


@pytest.mark.parametrize(
    ("name", "value"),
    [("host", "b.example"), ("priority", 2), ("path", "/x"), ("api_key", "k2"), ("weight", 3.0), ("id", "x")],
)
def test_frozen(name: str, value: Any) -> None:
    backend = Backend("a.example", 1, "/ai", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(backend, name, value)
    assert getattr(backend, name) != value


def test_no_new_attributes() -> None:
    backend = Backend("a.example", 1)
    with pytest.raises((AttributeError, TypeError)):
        backend.is_throttling = True  # type: ignore[attr-defined]


def test_equality_and_hash() -> None:
    one = Backend("a.example", 1, "/ai", "k")
    same = Backend("a.example", 1, "/ai", "k")
    assert one == same
    assert hash(one) == hash(same)
    assert len({one, same}) == 1
    assert one != Backend("a.example", 2, "/ai", "k")
    assert one != Backend("b.example", 1, "/ai", "k")
    assert one != Backend("a.example", 1, "/x", "k")
    assert one != Backend("a.example", 1, "/ai", "other")
    assert one != Backend("a.example", 1, "/ai", "k", weight=2)


def test_backends_with_deployments_or_token_provider_are_hashable() -> None:
    with_deployments = Backend("a.example", 1, deployments={"a": "b"})
    assert hash(with_deployments) == hash(Backend("a.example", 1, deployments={"a": "b"}))
    assert with_deployments == Backend("a.example", 1, deployments={"a": "b"})
    assert with_deployments != Backend("a.example", 1, deployments={"a": "c"})
    assert isinstance(hash(Backend("a.example", 1, azure_ad_token_provider=lambda: "t")), int)


# ---------------------------------------------------------------------- the balancer's list of backends


def _lb(backends: Any, cls: type = LoadBalancer, **options: Any) -> Any:
    return cls(backends, transport=httpx.MockTransport(lambda r: httpx.Response(200)), **options)


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
def test_balancers_derive_from_base(cls: type) -> None:
    lb = _lb([Backend("a.example", 1)], cls)
    assert isinstance(lb, BaseLoadBalancer)


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
def test_empty_list(cls: type) -> None:
    with pytest.raises(ValueError, match="backends"):
        _lb([], cls)


@pytest.mark.parametrize("value", [Backend("a.example", 1), "a.example", None, 42])
@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
def test_not_a_list(cls: type, value: Any) -> None:
    with pytest.raises(TypeError, match="backends"):
        _lb(value, cls)


@pytest.mark.parametrize("element", ["b.example", None, ("b.example", 1), {"host": "b.example"}])
def test_element_not_a_backend_is_named_by_index(element: Any) -> None:
    with pytest.raises(TypeError, match=re.escape("backends[1]")):
        _lb([Backend("a.example", 1), element, Backend("c.example", 1)])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Backend("a.example", 1), Backend("a.example", 1)),
        (Backend("a.example", 1), Backend("a.example", 2)),  # same endpoint, another priority
        (Backend("a.example", 1), Backend("A.Example", 1)),
        (Backend("https://a.example", 1), Backend("HTTPS://A.EXAMPLE/", 1)),
        (Backend("a.example", 1, "/ai"), Backend("a.example", 1, "ai/")),
        (Backend("https://a.example/ai", 1), Backend("https://A.example/ai/", 1)),
        (Backend("a.example", 1, api_key="k1"), Backend("a.example", 1, api_key="k2")),
        (Backend("[::1]:8080", 1), Backend("[::1]:8080", 2)),
        (Backend("[::1]:8080", 1), Backend("[0:0::1]:8080", 1)),  # one address written two ways
        (Backend("http://[2001:DB8::1]/ai", 1), Backend("http://[2001:db8:0:0:0:0:0:1]/ai", 1)),
    ],
)
def test_duplicates_name_both_indexes(first: Backend, second: Backend) -> None:
    with pytest.raises(ValueError, match="backends") as info:
        _lb([first, Backend("other.example", 1), second])
    message = str(info.value)
    assert "[0]" in message
    assert "[2]" in message
    assert "k1" not in message
    assert "k2" not in message


@pytest.mark.parametrize(
    ("first", "second"),
    [("https://a.example", "https://a.example:443"), ("http://a.example:80/ai", "http://a.example/ai/")],
)
def test_duplicate_with_explicit_default_port(first: str, second: str) -> None:
    with pytest.raises(ValueError, match="backends"):
        _lb([Backend(first, 1), Backend(second, 1)])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Backend("a.example", 1), Backend("b.example", 1)),
        (Backend("a.example", 1, "/one"), Backend("a.example", 1, "/two")),
        (Backend("a.example:8081", 1), Backend("a.example:8082", 1)),
        (Backend("http://a.example", 1), Backend("https://a.example", 1)),
        (Backend("a.example", 1, "/AI"), Backend("a.example", 1, "/ai")),  # paths are case-sensitive
    ],
)
def test_distinct_endpoints_are_accepted(first: Backend, second: Backend) -> None:
    assert _lb([first, second]).backends == [first, second]


def test_an_ipv6_address_has_one_spelling() -> None:
    backend = Backend("http://[0:0::1]:8080/ai", 1)
    assert backend.hostname == "::1"
    assert backend.id == "http://[::1]:8080/ai"


@pytest.mark.parametrize("weights", [(1e308, 1e308), (1.7e308, 1e307, 1.0)])
def test_weights_whose_sum_overflows_are_refused(weights: tuple[float, ...]) -> None:
    """Accepted, they failed every request: choosing by weight adds them up."""
    backends = [Backend(f"b{i}.example", 1, weight=w) for i, w in enumerate(weights)]
    with pytest.raises(ValueError, match="weight"):
        _lb([*backends, Backend("other.example", 2)])
    _lb([Backend("a.example", 1, weight=1e308), Backend("b.example", 2, weight=1e308)])  # other tiers


def test_any_iterable_of_backends_is_accepted() -> None:
    backends = [Backend("a.example", 1), Backend("b.example", 2)]
    assert _lb(tuple(backends)).backends == backends
    assert _lb(iter(backends)).backends == backends


@pytest.mark.parametrize(
    "name", ["default_cooldown_s", "max_cooldown_s", "failure_backoff_s", "failure_backoff_max_s"]
)
@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError)]
)
def test_numeric_options_are_validated(name: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=name):
        _lb([Backend("a.example", 1)], **{name: value})
