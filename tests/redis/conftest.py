"""Fixtures of the Redis suite: a real ``redis-server`` on a free loopback port, started and stopped here.

The binary is Debian's ``redis-server`` (``apt-get install redis-server``). Without it the tests that
need it are skipped, unless ``OPLB_REQUIRE_REDIS=1`` (CI), where they fail instead. Every server is
the test's own: no persistence, bound to 127.0.0.1, and ``kill()``/``start()`` bring it down and back
on the same port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import TYPE_CHECKING

import pytest
from _redis_support import HERE, SRC, RedisServer

import redis
from openai_priority_loadbalancer.redis import RedisStateStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The end-to-end suite's SDK helpers (not a package: reached by path, as its own conftest does).
if str(HERE.parent / "e2e") not in sys.path:
    sys.path.insert(0, str(HERE.parent / "e2e"))


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("OPLB_REQUIRE_REDIS") == "1":
            pytest.fail(message + "; OPLB_REQUIRE_REDIS=1 requires it")
        pytest.skip(message)
    return binary


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` of this test's own, stopped after it (``kill()``/``start()`` allowed)."""
    server = RedisServer(redis_binary, tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Environment of a helper process: this checkout's ``src`` first on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStateStore]:
    """A store on this test's own server, closed after the test."""
    s = RedisStateStore.from_url(redis_server.url)
    yield s
    s.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on this test's own server, to look at what the store wrote."""
    with contextlib.closing(redis.Redis(port=redis_server.port)) as client:
        yield client
