"""RedisStateStore without a redis-server: construction, binding to a balancer, redaction, a missing extra.

fakeredis stands in where a client object is needed; nothing here needs the ``redis-server`` binary.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import fakeredis
import httpx
import pytest
from _redis_support import LOGGER, URL, Backends, records, text_of
from redis.backoff import NoBackoff
from redis.retry import Retry

import redis
from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, BudgetStore, LoadBalancer, StateStore
from openai_priority_loadbalancer.redis import RedisStateStore, _redact_url

BACKENDS = [Backend("a.example", 1), Backend("b.example", 2)]


def test_it_is_a_state_store_and_a_budget_store() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:6379/0")
    assert isinstance(store, StateStore)
    assert isinstance(store, BudgetStore)


def test_a_client_is_needed() -> None:
    with pytest.raises(TypeError, match="from_url"):
        RedisStateStore()


def test_clients_of_the_wrong_flavour_are_refused() -> None:
    with pytest.raises(TypeError, match="async_client="):
        RedisStateStore(fakeredis.FakeAsyncRedis())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"async_client must be a redis\.asyncio\.Redis"):
        RedisStateStore(async_client=fakeredis.FakeRedis())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": "http://127.0.0.1:6379"}, ValueError, "redis://"),
        ({"socket_timeout": 0}, ValueError, "socket_timeout"),
        ({"socket_connect_timeout": float("nan")}, ValueError, "socket_connect_timeout"),
        ({"socket_timeout": "fast"}, TypeError, "socket_timeout"),
        ({"backoff_s": -1}, ValueError, "backoff_s"),
        ({"backoff_max_s": True}, TypeError, "backoff_max_s"),
        ({"prefix": b"oplb:"}, TypeError, "prefix"),
        ({"clock": 3}, TypeError, "clock"),
    ],
)
def test_from_url_checks_its_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    kwargs = {"url": "redis://127.0.0.1:6379/0", **kwargs}
    with pytest.raises(error, match=match):
        RedisStateStore.from_url(**kwargs)  # type: ignore[arg-type]


def test_a_store_from_a_url_serves_both_balancers() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:6379/0")  # connects on first use only
    LoadBalancer(BACKENDS, state=store)
    AsyncLoadBalancer(BACKENDS, state=store)


def test_a_balancer_refuses_a_store_without_its_flavour_of_client() -> None:
    async_only = RedisStateStore(async_client=fakeredis.FakeAsyncRedis())
    sync_only = RedisStateStore(fakeredis.FakeRedis())
    with pytest.raises(TypeError, match="no sync client for LoadBalancer"):
        LoadBalancer(BACKENDS, state=async_only)
    with pytest.raises(TypeError, match="no asyncio client for AsyncLoadBalancer"):
        AsyncLoadBalancer(BACKENDS, state=sync_only)
    LoadBalancer(BACKENDS, state=sync_only)
    AsyncLoadBalancer(BACKENDS, state=async_only)


@pytest.mark.skipif(importlib.util.find_spec("lupa") is not None, reason="fakeredis runs Lua with lupa")
def test_a_server_without_scripting_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    """fakeredis without Lua answers every EVALSHA with an error: requests go on, one warning."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = RedisStateStore(fakeredis.FakeRedis(), backoff_s=60)
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(Backends()), state=store)
    with httpx.Client(transport=lb) as client:
        assert [client.post(URL, json={}).status_code for _ in range(20)] == [200] * 20
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "ResponseError" in warnings[0].getMessage()


def test_no_password_of_a_given_client_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = redis.Redis(port=1, password="Given-Secret-789", retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client)
    assert store.load(["k"]) == [None]
    text = repr(store) + text_of(caplog)
    assert "127.0.0.1:1/0" in text or "localhost:1/0" in text
    assert "Given-Secret-789" not in text
    client.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:secret@host:6379/1", "redis://user:***@host:6379/1"),
        ("rediss://:secret@host:6380/0", "rediss://***@host:6380/0"),
        ("redis://secret@host/0", "redis://***@host/0"),
        ("redis://host/0?password=secret&db=2", "redis://host/0?password=***&db=2"),
        ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_urls_are_shown_without_password(url: str, shown: str) -> None:
    assert _redact_url(url) == shown
    assert "secret" not in repr(RedisStateStore.from_url(url))


def test_without_redis_py_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import openai_priority_loadbalancer  # the package itself needs no redis\n"
        "import openai_priority_loadbalancer.redis\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (
        'ImportError: RedisStateStore needs redis-py: pip install "openai-priority-loadbalancer[redis]"'
        in (result.stderr)
    )
