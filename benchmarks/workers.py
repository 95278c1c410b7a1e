"""Many workers: 4 processes sharing backends, with each its own state or one state on Redis.

Production apps run several workers (gunicorn/uvicorn workers, Celery, pods). Without shared state each
one learns that a backend is throttled by hitting it, and each spends the budget it believes a backend
has left, so the backends answer more 429s than they would to one process doing the same work. This
runs the same work three ways against the simulator and counts what the backends answered:

* ``1 process``: one process, 192 requests, 12 at a time (the reference);
* ``4 processes, local``: 4 processes x 48 requests, 3 at a time each, each balancer on its own state;
* ``4 processes, Redis``: the same, the balancers sharing state through ``RedisStateStore``: cooldowns,
  and each backend's request budget (every attempt first reserves one of its backend's requests).

Every process sends chat completions through the real openai SDK (``AzureOpenAI``, default settings:
two retries, its own HTTP client) over a ``LoadBalancer``. The backends are three simulated instances of
4 requests per 1 s window each (50 ms latency), all of priority 1, and in a second topology of
priorities 1-2-2. The instances answer in two header styles: ``reset`` (the limit, remaining and
reset on every success, whole-second ``Retry-After`` on a 429) and ``azure`` (as Azure OpenAI:
only the remaining on a success, no limit and no reset, whole-second ``Retry-After`` on a 429, so a
client cannot tell when a spent window ends). A fresh simulator serves each run; a ``redis-server``
is started here on a free loopback port. Columns: ok and failed requests, wall time and its ratio to
one process's, the 429s the instances answered and their ratio, the share of successes served by
priority 1, and for Redis the round trips (EVALSHA calls) per request: one per reservation, granted
or refused (a request refused by every backend's budget waits for the soonest window and asks
again), and one more per window whose budget a request found out (its report). Below the table:
what one reservation and one load of three keys take on loopback.

    PYTHONPATH=src python benchmarks/workers.py            # the table (about four minutes)
    PYTHONPATH=src python benchmarks/workers.py --style azure --topology 1-1-1   # one part of it
    PYTHONPATH=src python benchmarks/workers.py --quick    # a smoke run: fewer requests, judges nothing
    PYTHONPATH=src python benchmarks/workers.py --json     # one JSON object
    PYTHONPATH=src python benchmarks/workers.py --check    # exit 1 when a target is missed

Targets, in each style and topology: with Redis, no failed request, a wall time at most 1.2x one
process's, and backend 429s at most 1.2x those of one process (or at most 6).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Benchmark the working tree, installed or not (spawned workers inherit sys.path).
_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

    from openai_priority_loadbalancer.simulator import HeaderStyle

RATIO_MAX = 1.2
FEW_429S = 6  # "at most 1.2x one process's 429s" is moot when one process sees almost none
TOPOLOGIES: dict[str, tuple[int, ...]] = {"1-1-1": (1, 1, 1), "1-2-2": (1, 2, 2)}
#: The simulator's header style of each style named here.
STYLES: dict[str, HeaderStyle] = {"reset": "retry-after", "azure": "azure"}
NAMES = ("eastus", "southcentralus", "westus")
API_VERSION = "2024-10-21"
MODEL = "gpt-4o"


@dataclass(frozen=True)
class Plan:
    workers: int
    requests: int  # per worker
    concurrency: int  # total, split over the workers
    rpw: int
    runs: int


@dataclass(frozen=True)
class Job:
    """What one worker process does."""

    urls: tuple[tuple[str, int], ...]  # (url, priority)
    requests: int
    concurrency: int
    redis_url: str | None
    prefix: str


# ---------------------------------------------------------------------- the worker process


def worker(job: Job, barrier: Barrier, results: Any) -> None:
    """Build the SDK client and its balancer, wait for the others, send ``job.requests`` requests."""
    import openai

    from openai_priority_loadbalancer import Backend, LoadBalancer

    store = None
    if job.redis_url is not None:
        from openai_priority_loadbalancer.redis import RedisStateStore

        store = RedisStateStore.from_url(job.redis_url, prefix=job.prefix)
    lb = LoadBalancer([Backend(url, priority) for url, priority in job.urls], state=store)
    client = openai.AzureOpenAI(
        azure_endpoint=job.urls[0][0],
        api_key="simulated-key",
        api_version=API_VERSION,
        http_client=openai.DefaultHttpxClient(transport=lb),
    )
    failed: Counter[str] = Counter()
    ok = 0

    def one(i: int) -> bool:
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Request {i}: say hello."}]
            )
        except Exception as exc:  # counted by type: the benchmark reports every failure
            failed[type(exc).__name__] += 1
            return False
        return True

    with ThreadPoolExecutor(job.concurrency) as pool:
        pool.submit(lambda: None).result()  # threads up before the start
        barrier.wait()
        ok = sum(pool.map(one, range(job.requests)))
    client.close()
    if store is not None:
        store.close()
    results.put({"ok": ok, "failed": dict(failed)})


# ---------------------------------------------------------------------- one run


def run(
    plan: Plan, style: str, topology: str, workers: int, redis: RedisServer | None, run_index: int
) -> dict[str, Any]:
    from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

    priorities = TOPOLOGIES[topology]
    configs = [
        InstanceConfig(
            n, requests_per_window=plan.rpw, window_s=1.0, latency_s=0.05, header_style=STYLES[style]
        )
        for n in NAMES
    ]
    ctx = multiprocessing.get_context("spawn")
    total = plan.workers * plan.requests
    per_worker = total // workers
    concurrency = max(1, plan.concurrency // workers)
    with Simulator(configs) as sim:
        urls = tuple((sim.url(n), p) for n, p in zip(NAMES, priorities, strict=True))
        prefix = f"oplb-bench-{os.getpid()}-{style}-{topology}-{workers}-{run_index}:"
        job = Job(urls, per_worker, concurrency, redis.url if redis else None, prefix)
        barrier = ctx.Barrier(workers + 1)
        results = ctx.Queue()
        processes = [ctx.Process(target=worker, args=(job, barrier, results)) for _ in range(workers)]
        for p in processes:
            p.start()
        commands_before = redis.evalsha_calls() if redis else 0
        barrier.wait(120)
        started = time.perf_counter()
        reports = [results.get(timeout=600) for _ in processes]
        wall = time.perf_counter() - started
        for p in processes:
            p.join(30)
        commands = (redis.evalsha_calls() - commands_before) if redis else None
        stats = {n: sim.stats(n) for n in NAMES}
    failed: Counter[str] = Counter()
    for r in reports:
        failed.update(r["failed"])
    served = sum(s.served for s in stats.values())
    p1 = sum(stats[n].served for n, p in zip(NAMES, priorities, strict=True) if p == 1)
    return {
        "ok": sum(r["ok"] for r in reports),
        "failed": dict(failed),
        "wall_s": round(wall, 2),
        "backend_429s": sum(s.throttled for s in stats.values()),
        "p1_share": round(p1 / served, 3) if served else None,
        "round_trips_per_request": round(commands / total, 2) if commands is not None else None,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median number of backend 429s (its other figures kept with it), and all 429 counts."""
    ordered = sorted(runs, key=lambda r: r["backend_429s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["backend_429s_runs"] = [r["backend_429s"] for r in runs]
    return chosen


# ---------------------------------------------------------------------- redis-server


class RedisServer:
    """A ``redis-server`` of the benchmark's own on a free loopback port, no persistence."""

    def __init__(self, binary: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = tempfile.mkdtemp(prefix="oplb-redis-")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        command += ["--dir", self.directory, "--logfile", os.path.join(self.directory, "redis.log")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def evalsha_calls(self) -> int:
        info = self.client.info("commandstats")
        return int(info.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
            info.get("cmdstat_eval", {}).get("calls", 0)
        )

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def measure_store_us(redis: RedisServer, n: int) -> dict[str, dict[str, float]]:
    """Microseconds one call of three keys takes on loopback, sync and async: ``reserve`` as a balancer
    makes it when nothing is throttled (granted, the previous answer's report riding along), and
    ``load`` (nothing stored)."""
    import asyncio

    from openai_priority_loadbalancer import BudgetReport
    from openai_priority_loadbalancer.redis import RedisStateStore

    keys = [f"https://{name}.example:443/" for name in NAMES]
    store = RedisStateStore.from_url(redis.url, prefix="oplb-bench-store:")
    # Budgets as in steady state: a counter no run here spends, renewed by each report.
    reports = [BudgetReport(keys[1], 1_000_000, 60.0, 1_000_000)]
    calls: dict[str, tuple[Any, Any]] = {
        "reserve": (
            lambda: store.reserve(keys, 1, reports, 10.0),
            lambda: store.areserve(keys, 1, reports, 10.0),
        ),
        "load": (lambda: store.load(keys), lambda: store.aload(keys)),
    }
    result: dict[str, dict[str, float]] = {}
    for name, (sync_call, async_call) in calls.items():
        sync_call()
        start = time.perf_counter()
        for _ in range(n):
            sync_call()
        sync_us = (time.perf_counter() - start) / n * 1e6

        async def measure(async_call: Any = async_call) -> float:
            await async_call()
            start = time.perf_counter()
            for _ in range(n):
                await async_call()
            elapsed = (time.perf_counter() - start) / n * 1e6
            await store.aclose()
            return elapsed

        result[name] = {"sync_us": round(sync_us, 1), "async_us": round(asyncio.run(measure()), 1)}
    store.close()
    return result


# ---------------------------------------------------------------------- report


SETUPS = (("1 process", 1, False), ("4 processes, local", 4, False), ("4 processes, Redis", 4, True))


def render(results: dict[str, Any], plan: Plan) -> str:
    total = plan.workers * plan.requests
    lines = [
        f"{total} chat completions per run through the openai SDK (default settings), "
        f"{plan.concurrency} in flight in all; 3 simulated instances of {plan.rpw} requests/s each"
        + (f"; median of {plan.runs} runs by 429s" if plan.runs > 1 else ""),
        "",
    ]
    header = (
        f"{'style':<6} {'topology':<9} {'setup':<20} {'ok':>5} {'failed':>7} {'wall s':>7} {'vs 1':>6}"
        f" {'429s':>5} {'vs 1':>7} {'p1 share':>8} {'RTT/req':>7}"
    )
    lines += [header, "-" * len(header)]
    for style, topologies in results["styles"].items():
        for topology, rows in topologies.items():
            reference = rows["1 process"]
            for setup, row in rows.items():
                failed = sum(row["failed"].values())
                wall = f"{row['wall_s'] / reference['wall_s']:.2f}x" if reference["wall_s"] else "-"
                base = reference["backend_429s"]
                ratio = f"{row['backend_429s'] / base:.2f}x" if base else "-"
                share = f"{row['p1_share']:.0%}" if row["p1_share"] is not None else "-"
                rtt = row["round_trips_per_request"]
                lines.append(
                    f"{style:<6} {topology:<9} {setup:<20} {row['ok']:>5} {failed:>7} {row['wall_s']:>7.2f} "
                    f"{wall:>6} {row['backend_429s']:>5} {ratio:>7} {share:>8} "
                    + (f"{rtt:>7.2f}" if rtt is not None else f"{'-':>7}")
                )
    lines.append("")
    for name, cost in results["store_us"].items():
        lines.append(
            f"RedisStateStore.{name} of 3 keys on loopback: {cost['sync_us']:.0f} µs sync, "
            f"{cost['async_us']:.0f} µs async"
        )
    lines.append("")
    for name, verdict in results["targets"].items():
        lines.append(
            f"target {name}: with Redis no failure, wall time and 429s <= {RATIO_MAX}x one process's "
            f"(429s: or <= {FEW_429S}): " + ("met" if verdict else "MISSED")
        )
    return "\n".join(lines)


def judge(results: dict[str, Any]) -> dict[str, bool]:
    verdicts = {}
    for style, topologies in results["styles"].items():
        for topology, rows in topologies.items():
            reference = rows["1 process"]
            shared = rows["4 processes, Redis"]
            verdicts[f"{style} {topology}"] = (
                not shared["failed"]
                and shared["wall_s"] <= RATIO_MAX * reference["wall_s"]
                and shared["backend_429s"] <= max(RATIO_MAX * reference["backend_429s"], FEW_429S)
            )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 x 8 requests, judges nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--runs", type=int, default=1, help="runs per setup; the median by 429s is shown")
    parser.add_argument("--requests", type=int, default=48, help="requests per worker (default 48)")
    parser.add_argument("--concurrency", type=int, default=12, help="requests in flight in all (default 12)")
    parser.add_argument(
        "--style", choices=STYLES, action="append", help="only this header style (repeatable)"
    )
    parser.add_argument(
        "--topology", choices=TOPOLOGIES, action="append", help="only this topology (repeatable)"
    )
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("workers.py: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    plan = Plan(4, 8 if args.quick else args.requests, args.concurrency, 4, 1 if args.quick else args.runs)
    redis = RedisServer(binary)
    try:
        results: dict[str, Any] = {"quick": args.quick, "plan": plan.__dict__, "styles": {}}
        for style in args.style or STYLES:
            topologies: dict[str, Any] = results["styles"].setdefault(style, {})
            for topology in args.topology or TOPOLOGIES:
                rows: dict[str, Any] = {}
                for setup, workers, shared in SETUPS:
                    runs = [
                        run(plan, style, topology, workers, redis if shared else None, i)
                        for i in range(plan.runs)
                    ]
                    rows[setup] = median_run(runs)
                    if not args.json:
                        row = rows[setup]
                        print(
                            f"  {style} {topology} {setup}: {row['wall_s']} s, {row['backend_429s']} 429s",
                            file=sys.stderr,
                        )
                topologies[topology] = rows
        results["store_us"] = measure_store_us(redis, 300 if args.quick else 3000)
    finally:
        redis.close()
    results["targets"] = judge(results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results, plan))
    if args.check and not args.quick and not all(results["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
