"""Helpers of the Redis suite: a hand-driven clock, scripted backends, log counting."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
LOGGER = "openai-priority-loadbalancer"
URL = "https://caller.example/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backends:
    """The handler of an ``httpx.MockTransport``: 200 from every host, or a 429 for hosts told to throttle.

    Counts the attempts each host received. ``throttle(host, seconds)`` makes that host answer the next
    request with a 429 carrying ``retry-after-ms``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.pending_429: dict[str, float] = {}

    def throttle(self, host: str, seconds: float) -> None:
        with self.lock:
            self.pending_429[host] = seconds

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        with self.lock:
            self.hits[host] += 1
            cooldown = self.pending_429.pop(host, None)
        if cooldown is not None:
            return httpx.Response(
                429, headers={"retry-after-ms": str(int(cooldown * 1000))}, json={"error": {"code": "429"}}
            )
        return httpx.Response(200, json={"host": host})


def records(caplog: pytest.LogCaptureFixture, level: int, contains: str = "") -> list[logging.LogRecord]:
    """The balancer logger's records at exactly ``level`` whose message contains ``contains``."""
    return [
        r for r in caplog.records if r.name == LOGGER and r.levelno == level and contains in r.getMessage()
    ]


def text_of(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, formatted, tracebacks included."""
    parts: list[str] = []
    for r in caplog.records:
        parts.append(r.getMessage())
        if r.exc_info:
            parts.append(logging.Formatter().formatException(r.exc_info))
    return "\n".join(parts)


def served(response: Any) -> str:
    return str(response.json()["host"])


# ---------------------------------------------------------------------- a real redis-server

_READY_TIMEOUT_S = 10.0


def script_reports(
    script: str,
    argvs: list[list[str]],
    env: dict[str, str],
    *,
    input: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Run this folder's ``script`` once per argument list, all at once: the JSON report each prints.

    Each must exit 0 within ``timeout`` (its stderr says why not); ``input`` goes to each one's stdin.
    """
    command = [sys.executable, str(HERE / script)]
    pipe = subprocess.PIPE
    processes = [
        subprocess.Popen([*command, *argv], env=env, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
        for argv in argvs
    ]
    try:
        outputs = [process.communicate(input, timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()  # those still running after a timeout
            process.wait()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _ in outputs]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; ``kill()`` and ``start()`` keep the port."""

    def __init__(self, binary: str, directory: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._inspector: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.process is None, "already running"
        log = self.directory / f"redis-{self.port}.log"
        command = [self.binary, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        command += ["--bind", "127.0.0.1", "--dir", str(self.directory), "--logfile", str(log)]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text[-2000:]}")
            time.sleep(0.01)
        return self

    def _drop_inspector(self) -> None:
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as a crashed or unplugged one does."""
        self._drop_inspector()
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)
            self.process = None

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (at once, where SIGTERM waits for the server's next tick), else SIGKILL."""
        self._drop_inspector()
        if self.process is not None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as s:
                auth = f"AUTH {self.password}\r\n" if self.password else ""
                s.sendall(f"{auth}SHUTDOWN NOSAVE\r\n".encode())
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def stats(self) -> dict[str, int]:
        """``INFO commandstats`` as {command: calls}, from one connection kept for it (made on first use).

        Redis counts the commands a script runs as well as the EVALSHA that ran it.
        """
        import redis

        if self._inspector is None:
            self._inspector = redis.Redis(port=self.port, password=self.password)
            self._inspector.ping()
        info = self._inspector.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two :meth:`RedisServer.stats` readings, the INFO between them excluded."""
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: n for name, n in delta.items() if n and name != "info"}


def granted_by_racing_threads(
    url: str, reserve: Callable[[Any], Any], *, threads: int = 8, each: int = 20
) -> int:
    """How many of ``threads`` x ``each`` reservations ``reserve(store)`` granted, the threads (each
    with a store of its own on Redis at ``url``, connected first) starting at once."""
    from openai_priority_loadbalancer.redis import RedisStateStore

    stores = [RedisStateStore.from_url(url, socket_timeout=1.0) for _ in range(threads)]
    barrier = threading.Barrier(threads)
    counts: list[int] = []

    def run(store: RedisStateStore) -> None:
        store.load(["warm-up"])  # connected before the start
        barrier.wait()
        counts.append(sum(bool(reserve(store).granted) for _ in range(each)))

    started = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in started:
        t.start()
    for t in started:
        t.join()
    for s in stores:
        s.close()
    return sum(counts)


def answer_as_memory_does(
    store: Any,
    rng: Any,
    keys: list[str],
    report: Callable[[], Any],
    record: Callable[[], Any],
    *,
    set_aside_p: float,
    costs: tuple[int, ...] = (0,),
    steps: int = 300,
) -> None:
    """``steps`` calls at random on ``store`` and on a fresh MemoryStateStore: reports (``report()``,
    one to three), set-asides (``record()``, with probability ``set_aside_p``) and reservations
    (reports riding along, a cost drawn from ``costs``); every reservation gets the same answer."""
    import pytest

    from openai_priority_loadbalancer import MemoryStateStore

    memory = MemoryStateStore()
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.15:
            reports = [report() for _ in range(rng.randrange(1, 4))]
            memory.report(reports)
            store.report(reports)
        elif roll < 0.15 + set_aside_p:
            shared, key = record(), rng.choice(keys)
            memory.set_aside(key, shared)
            store.set_aside(key, shared)
        else:
            index = rng.randrange(len(keys))
            reports = [report() for _ in range(rng.choice([0, 0, 1, 2]))]
            cost = rng.choice(costs)
            expected = memory.reserve(keys, index, reports, 10.0, cost=cost)
            answer = store.reserve(keys, index, reports, 10.0, cost=cost)
            assert (answer.granted, answer.probe) == (expected.granted, expected.probe)
            assert answer.wait_s == pytest.approx(expected.wait_s, abs=0.05)
            assert [r is None for r in answer.records] == [r is None for r in expected.records]
            for m, r in zip(expected.records, answer.records, strict=True):
                if m is not None and r is not None:
                    assert (r.reason, r.failures) == (m.reason, m.failures)
