"""What the balancer costs on top of a plain client: CPU per request, latency, selection and memory.

Every measurement runs its baseline in the same process, interleaved with it, and reports ratios::

    python benchmarks/run.py              # the full report (about two minutes)
    python benchmarks/run.py --quick      # a smoke run for CI: checks the script works, judges no timing
    python benchmarks/run.py --json       # one JSON object instead of the report
    python benchmarks/run.py --runs 9     # repeat each measurement 9 times (default 5), report the median
    python benchmarks/run.py --check      # exit 1 when a target is missed
    python benchmarks/run.py --profile core     # where the time goes: the sync path on a MockTransport,
    python benchmarks/run.py --profile e2e      # ... the sync path through the openai SDK and httpx2,
    python benchmarks/run.py --profile select   # ... one selection among 1000 backends

Measurements:

core_us_per_request
    CPU time the balancer adds to one request, sync and async: an httpx client on an in-memory
    ``MockTransport``, with and without a balancer of three backends in between; the mean time per
    request with the balancer minus the mean without.
e2e_ratio
    Time per request through the openai SDK against the simulator (no latency, unlimited capacity),
    balanced client / plain client, for sync and async clients on httpx and httpx2.
ttft_ratio
    Time to the first chunk of a streamed chat completion, balanced / plain; ``*_responses``: time to
    the first text delta of a streamed Responses API response, whose id the balancer learns from the
    stream's first event as it passes.
select_us_by_backends
    One selection among 1, 10, 100 and 1000 backends of one priority, all available and with one in
    ten cooling down.
bytes_per_backend
    Memory per configured backend (tracemalloc, (N=1000 - N=10) / 990), fresh and once every
    backend's latency window is full.
affinity_us
    What stored-object affinity costs: CPU per request to tell whether a request names a stored
    object, by kind of request (the chat completions, embeddings and a new response name none; a
    follow-up names its previous response), and the CPU a Responses create costs with its answer's
    ids learned as it is read, against a balancer with ``affinity=False``.

The in-memory loops (core, selection) are timed in this thread's CPU time (``time.thread_time``), so
other work on the machine does not count, with the garbage collector paused as ``timeit`` does. The
SDK measurements are wall time (``time.perf_counter``) with the collector on, and compare medians per
request: the simulator shares the process, and a request now and then waits for it. A second plain
client, measured like the others, gives their noise floor ("A/A").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

# Benchmark the working tree, installed or not.
_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

import httpx  # noqa: E402

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, __version__, _state  # noqa: E402
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from types import ModuleType

    from openai_priority_loadbalancer._base import BaseLoadBalancer

# ---------------------------------------------------------------------- targets

CORE_US_MAX = 30.0
E2E_RATIO_MAX = 1.05
TTFT_RATIO_MAX = 1.1
SELECT_SCALING_MAX = 5.0  # one selection among 1000 backends / among 10
BYTES_PER_BACKEND_MAX = 2048.0
AFFINITY_NOTHING_US_MAX = 2.0  # telling that a request names no stored object

# ---------------------------------------------------------------------- workload

API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o"
MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
CORE_URL = f"https://a.example.com/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
CORE_BODY = json.dumps({"messages": MESSAGES, "max_tokens": 16}).encode()
CORE_HEADERS = {"api-key": "caller-key", "content-type": "application/json"}
RESPONSE_BODY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": DEPLOYMENT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    }
).encode()
# What Azure OpenAI adds to every answer; the balancer reads them to track each backend's budget.
AZURE_HEADERS = {
    "x-ratelimit-limit-requests": "1000",
    "x-ratelimit-remaining-requests": "999",
    "x-ratelimit-limit-tokens": "100000",
    "x-ratelimit-remaining-tokens": "99000",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "1s",
}
SELECT_SIZES = (1, 10, 100, 1000)
MEMORY_SIZES = (10, 1000)
PACKAGE = "openai_priority_loadbalancer"


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    quick: bool
    runs: int
    core_requests: int  # per variant and run
    e2e_requests: int
    ttft_requests: int
    select_budget: int  # selections per run among 10 backends; fewer among more
    warmup: int  # requests per variant before measuring
    blocks: int  # each run alternates the variants in this many blocks

    @staticmethod
    def make(quick: bool, runs: int | None) -> Plan:
        if quick:
            return Plan(True, runs or 1, 2_000, 40, 20, 2_000, 10, 2)
        return Plan(False, runs or 5, 10_000, 300, 100, 20_000, 50, 10)


# A sampler does k items and returns what it measured: CPU seconds per item (the in-memory loops) or
# each item's duration in seconds (through the SDK).
R = TypeVar("R")
CPU_CLOCK = time.thread_time  # this thread's CPU time: other processes and threads do not count


# ---------------------------------------------------------------------- timing helpers


@contextmanager
def _gc_paused(paused: bool = True) -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _orders(variants: int, blocks: int) -> list[list[int]]:
    """The order of the variants in each block, reversed every other block (ABBA): drift cancels."""
    forward = list(range(variants))
    return [forward if block % 2 == 0 else forward[::-1] for block in range(blocks)]


def _interleaved(
    samplers: Sequence[Callable[[int], R]], n: int, blocks: int, *, pause_gc: bool
) -> list[list[R]]:
    """Per sampler, what each of its blocks measured; the samplers take turns, ``n / blocks`` items a turn."""
    blocks = max(1, min(blocks, n))
    measured: list[list[R]] = [[] for _ in samplers]
    with _gc_paused(pause_gc):
        for order in _orders(len(samplers), blocks):
            for i in order:
                measured[i].append(samplers[i](n // blocks))
    return measured


async def _interleaved_async(
    samplers: Sequence[Callable[[int], Awaitable[R]]], n: int, blocks: int, *, pause_gc: bool
) -> list[list[R]]:
    blocks = max(1, min(blocks, n))
    measured: list[list[R]] = [[] for _ in samplers]
    with _gc_paused(pause_gc):
        for order in _orders(len(samplers), blocks):
            for i in order:
                measured[i].append(await samplers[i](n // blocks))
    return measured


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------- core: the balancer alone


def _mock(headers: dict[str, str] | None = None) -> httpx.MockTransport:
    all_headers = {"content-type": "application/json", **(headers or {})}
    return httpx.MockTransport(
        lambda request: httpx.Response(200, headers=all_headers, content=RESPONSE_BODY)
    )


def _core_backends() -> list[Backend]:
    return [Backend("a.example.com", 1), Backend("b.example.com", 1), Backend("c.example.com", 2)]


def _post_sampler(client: httpx.Client) -> Callable[[int], float]:
    post = client.post

    def sample(k: int) -> float:
        start = CPU_CLOCK()
        for _ in range(k):
            post(CORE_URL, content=CORE_BODY, headers=CORE_HEADERS)
        return (CPU_CLOCK() - start) / k

    return sample


def _async_post_sampler(client: httpx.AsyncClient) -> Callable[[int], Awaitable[float]]:
    post = client.post

    async def sample(k: int) -> float:
        start = CPU_CLOCK()
        for _ in range(k):
            await post(CORE_URL, content=CORE_BODY, headers=CORE_HEADERS)
        return (CPU_CLOCK() - start) / k

    return sample


def _overhead(runs: list[list[list[float]]], plain: int, balanced: int) -> dict[str, float]:
    """CPU microseconds per request of both variants, and their difference: medians over the runs."""
    means = [[statistics.fmean(blocks) * 1e6 for blocks in run] for run in runs]
    return {
        "plain_us": _median([m[plain] for m in means]),
        "balanced_us": _median([m[balanced] for m in means]),
        "overhead_us": _median([m[balanced] - m[plain] for m in means]),
    }


def measure_core(plan: Plan) -> dict[str, dict[str, float]]:
    """Microseconds the balancer adds to one request: sync, async, and sync with Azure's budget headers."""
    mock, mock_azure = _mock(), _mock(AZURE_HEADERS)
    sync_clients = [
        httpx.Client(transport=mock),
        httpx.Client(transport=LoadBalancer(_core_backends(), transport=mock)),
        httpx.Client(transport=mock_azure),
        httpx.Client(transport=LoadBalancer(_core_backends(), transport=mock_azure)),
    ]
    samplers = [_post_sampler(client) for client in sync_clients]
    for sample in samplers:
        sample(plan.warmup * 10)
    sync_runs = [
        _interleaved(samplers, plan.core_requests, plan.blocks, pause_gc=True) for _ in range(plan.runs)
    ]
    for client in sync_clients:
        client.close()

    async def async_runs() -> list[list[list[float]]]:
        async with (
            httpx.AsyncClient(transport=mock) as plain,
            httpx.AsyncClient(transport=AsyncLoadBalancer(_core_backends(), transport=mock)) as balanced,
        ):
            pair = [_async_post_sampler(plain), _async_post_sampler(balanced)]
            for sample in pair:
                await sample(plan.warmup * 10)
            return [
                await _interleaved_async(pair, plan.core_requests, plan.blocks, pause_gc=True)
                for _ in range(plan.runs)
            ]

    return {
        "sync": _overhead(sync_runs, 0, 1),
        "async": _overhead(asyncio.run(async_runs()), 0, 1),
        "sync_azure_headers": _overhead(sync_runs, 2, 3),
    }


# ---------------------------------------------------------------------- stored-object affinity

RESPONSES_URL = "https://a.example.com/openai/v1/responses"
RESPONSES_BODY = json.dumps({"model": DEPLOYMENT, "input": "Hello", "max_output_tokens": 16}).encode()
FOLLOW_UP_BODY = json.dumps(
    {"model": DEPLOYMENT, "input": "And then?", "max_output_tokens": 16, "previous_response_id": "resp_1"}
).encode()
# A stored response as Azure answers it (about 1.4 kB): the balancer learns its id as it is read.
RESPONSE_OBJECT = json.dumps(
    {
        "id": "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",
        "object": "response",
        "created_at": 1756315696,
        "status": "completed",
        "model": DEPLOYMENT,
        "output": [
            {
                "id": "msg_68af40337e5c8193a4d3e2b7c3c3c1ce05438e46b5f69a3b",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "text": "Hi! " * 120}],
            }
        ],
        "usage": {"input_tokens": 8, "output_tokens": 16, "total_tokens": 24},
    }
).encode()
AFFINITY_REQUESTS = {  # name -> (url, body): what telling costs, by kind of request
    "chat_deployment": (CORE_URL, CORE_BODY),
    "chat_v1": ("https://a.example.com/openai/v1/chat/completions", CORE_BODY),
    "embeddings_v1": ("https://a.example.com/openai/v1/embeddings", b'{"input": "Hello", "model": "e"}'),
    "responses_create": (RESPONSES_URL, RESPONSES_BODY),
    "responses_follow_up": (RESPONSES_URL, FOLLOW_UP_BODY),
}


def _examine_sampler(lb: LoadBalancer, request: httpx.Request) -> Callable[[int], float]:
    examine = lb._affinity.examine  # type: ignore[union-attr]

    def sample(k: int) -> float:
        start = CPU_CLOCK()
        for _ in range(k):
            examine(request)
        return (CPU_CLOCK() - start) / k

    return sample


def _responses_sampler(client: httpx.Client) -> Callable[[int], float]:
    post = client.post

    def sample(k: int) -> float:
        start = CPU_CLOCK()
        for _ in range(k):
            post(RESPONSES_URL, content=RESPONSES_BODY, headers=CORE_HEADERS).read()
        return (CPU_CLOCK() - start) / k

    return sample


def measure_affinity(plan: Plan) -> dict[str, Any]:
    """What stored-object affinity costs per request: telling what a request names (by kind of
    request), and a Responses create whose answer's ids are learned, against affinity off."""
    lb = LoadBalancer(_core_backends(), transport=_mock())
    samplers = [
        _examine_sampler(lb, httpx.Request("POST", url, content=body, headers=CORE_HEADERS))
        for url, body in AFFINITY_REQUESTS.values()
    ]
    for sample in samplers:
        sample(plan.warmup * 10)
    runs = [_interleaved(samplers, plan.core_requests, plan.blocks, pause_gc=True) for _ in range(plan.runs)]
    examine = {
        name: _median([statistics.fmean(run[i]) * 1e6 for run in runs])
        for i, name in enumerate(AFFINITY_REQUESTS)
    }

    def answer(request: httpx.Request) -> httpx.Response:
        # A body that arrives as a stream, as from a real transport: the balancer wraps it to learn.
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=_OneChunk())

    mock = httpx.MockTransport(answer)
    clients = [
        httpx.Client(transport=LoadBalancer(_core_backends(), transport=mock, affinity=False)),
        httpx.Client(transport=LoadBalancer(_core_backends(), transport=mock)),
    ]
    pair = [_responses_sampler(client) for client in clients]
    for sample in pair:
        sample(plan.warmup * 10)
    learn_runs = [
        _interleaved(pair, plan.core_requests, plan.blocks, pause_gc=True) for _ in range(plan.runs)
    ]
    for client in clients:
        client.close()
    learn = _overhead(learn_runs, 0, 1)
    return {"examine_us": examine, "learn": learn, "owner_map": _owner_map_memory()}


def _owner_map_memory() -> dict[str, float]:
    """The memory of a full default-sized map of owners: bytes per object and megabytes in all."""
    from openai_priority_loadbalancer._affinity import DEFAULT_MAX_OBJECTS, OwnerMap

    ids = [f"resp_{i:048x}" for i in range(DEFAULT_MAX_OBJECTS)]  # ids as long as Azure's
    tracemalloc.start()
    owners = OwnerMap(DEFAULT_MAX_OBJECTS)
    for i, object_id in enumerate(ids):
        owners.put(object_id, i % 3)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"objects": len(owners), "bytes_per_object": size / len(owners), "mb": size / 1e6}


class _OneChunk(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield RESPONSE_OBJECT


# ---------------------------------------------------------------------- end to end, through the SDK


def _simulator_configs() -> list[InstanceConfig]:
    return [
        InstanceConfig(
            name, requests_per_window=10**12, window_s=60.0, stream_chunks=3, stream_chunk_delay_s=0.001
        )
        for name in ("a", "b", "c")
    ]


def _sdk_backends(sim: Simulator) -> list[Backend]:
    return [Backend(sim.url("a"), 1), Backend(sim.url("b"), 1), Backend(sim.url("c"), 2)]


def _sdk_client(lib: ModuleType, sim: Simulator, *, balanced: bool, asynchronous: bool) -> Any:
    """An AzureOpenAI (or AsyncAzureOpenAI) client on ``lib``, each with its default transport: the
    library's own, or a balancer with its default inner transports (a connection pool per backend)."""
    import openai

    if balanced:
        transport = (AsyncLoadBalancer if asynchronous else LoadBalancer)(_sdk_backends(sim))
    else:
        transport = lib.AsyncHTTPTransport() if asynchronous else lib.HTTPTransport()
    http_client = lib.AsyncClient(transport=transport) if asynchronous else lib.Client(transport=transport)
    sdk = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
    return sdk(
        azure_endpoint=sim.url("a"),
        api_key="caller-key",
        api_version=API_VERSION,
        http_client=http_client,
        max_retries=0,
    )


def _request_sampler(client: Any) -> Callable[[int], list[float]]:
    create, clock = client.chat.completions.create, time.perf_counter

    def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            create(model=DEPLOYMENT, messages=MESSAGES)
            durations.append(clock() - start)
        return durations

    return sample


def _ttft_sampler(client: Any) -> Callable[[int], list[float]]:
    create, clock = client.chat.completions.create, time.perf_counter

    def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            chunks = iter(create(model=DEPLOYMENT, messages=MESSAGES, stream=True))
            next(chunks)
            durations.append(clock() - start)
            for _chunk in chunks:  # read to the end, so the connection is reused
                pass
        return durations

    return sample


def _async_request_sampler(client: Any) -> Callable[[int], Awaitable[list[float]]]:
    create, clock = client.chat.completions.create, time.perf_counter

    async def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            await create(model=DEPLOYMENT, messages=MESSAGES)
            durations.append(clock() - start)
        return durations

    return sample


def _async_ttft_sampler(client: Any) -> Callable[[int], Awaitable[list[float]]]:
    create, clock = client.chat.completions.create, time.perf_counter

    async def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            chunks = (await create(model=DEPLOYMENT, messages=MESSAGES, stream=True)).__aiter__()
            await chunks.__anext__()
            durations.append(clock() - start)
            async for _chunk in chunks:
                pass
        return durations

    return sample


def _responses_ttft_sampler(client: Any) -> Callable[[int], list[float]]:
    """Time to a streamed response's first text delta (its id, learned by the balancer, comes first)."""
    create, clock = client.responses.create, time.perf_counter

    def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            events = iter(create(model=DEPLOYMENT, input="Hello", stream=True))
            for event in events:
                if event.type == "response.output_text.delta":
                    break
            durations.append(clock() - start)
            for _event in events:
                pass
        return durations

    return sample


def _async_responses_ttft_sampler(client: Any) -> Callable[[int], Awaitable[list[float]]]:
    create, clock = client.responses.create, time.perf_counter

    async def sample(k: int) -> list[float]:
        durations = []
        for _ in range(k):
            start = clock()
            events = (await create(model=DEPLOYMENT, input="Hello", stream=True)).__aiter__()
            async for event in events:
                if event.type == "response.output_text.delta":
                    break
            durations.append(clock() - start)
            async for _event in events:
                pass
        return durations

    return sample


_SAMPLERS: dict[tuple[str, bool], Callable[[Any], Any]] = {
    ("e2e", False): _request_sampler,
    ("e2e", True): _async_request_sampler,
    ("ttft", False): _ttft_sampler,
    ("ttft", True): _async_ttft_sampler,
    ("ttft_responses", False): _responses_ttft_sampler,
    ("ttft_responses", True): _async_responses_ttft_sampler,
}

# The SDK clients of one comparison: the baseline, the same again (the noise floor), the balanced one.
_SDK_VARIANTS = (False, False, True)


def _sdk_runs(
    sim: Simulator, lib: ModuleType, asynchronous: bool, ttft: bool, plan: Plan, kind: str | None = None
) -> list[list[list[float]]]:
    """Per run, the item durations of each of the _SDK_VARIANTS."""

    def flat(run: list[list[list[float]]]) -> list[list[float]]:
        return [[duration for block in blocks for duration in block] for blocks in run]

    n = plan.ttft_requests if ttft else plan.e2e_requests
    kind = kind or ("ttft" if ttft else "e2e")
    if not asynchronous:
        clients = [_sdk_client(lib, sim, balanced=b, asynchronous=False) for b in _SDK_VARIANTS]
        samplers = [_SAMPLERS[kind, False](client) for client in clients]
        for sample in samplers:
            sample(plan.warmup)
        runs = [flat(_interleaved(samplers, n, plan.blocks, pause_gc=False)) for _ in range(plan.runs)]
        for client in clients:
            client.close()
        return runs

    async def main() -> list[list[list[float]]]:
        clients = [_sdk_client(lib, sim, balanced=b, asynchronous=True) for b in _SDK_VARIANTS]
        samplers = [_SAMPLERS[kind, True](client) for client in clients]
        for sample in samplers:
            await sample(plan.warmup)
        runs = [
            flat(await _interleaved_async(samplers, n, plan.blocks, pause_gc=False)) for _ in range(plan.runs)
        ]
        for client in clients:
            await client.close()
        return runs

    return asyncio.run(main())


def _ratio(runs: list[list[list[float]]]) -> dict[str, float]:
    """Median per request of each variant; balanced / plain and plain again / plain: medians over the runs."""
    medians = [[_median(durations) * 1e3 for durations in run] for run in runs]
    plain, again, balanced = range(len(_SDK_VARIANTS))
    return {
        "plain_ms": _median([m[plain] for m in medians]),
        "balanced_ms": _median([m[balanced] for m in medians]),
        "ratio": _median([m[balanced] / m[plain] for m in medians]),
        "noise_ratio": _median([m[again] / m[plain] for m in medians]),
    }


def _http_libraries() -> list[ModuleType]:
    found = []
    for name in ("httpx", "httpx2"):
        with suppress(ImportError):
            found.append(importlib.import_module(name))
    return found


def measure_sdk(plan: Plan) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(e2e, ttft), for each of sync/async x httpx/httpx2: plain and balanced times, their ratio."""
    e2e: dict[str, dict[str, float]] = {}
    ttft: dict[str, dict[str, float]] = {}
    with Simulator(_simulator_configs()) as sim:
        for lib in _http_libraries():
            for asynchronous in (False, True):
                key = f"{'async' if asynchronous else 'sync'}_{lib.__name__}"
                e2e[key] = _ratio(_sdk_runs(sim, lib, asynchronous, False, plan))
                ttft[key] = _ratio(_sdk_runs(sim, lib, asynchronous, True, plan))
                # A Responses stream: the balancer learns its id from the first events as they pass.
                ttft[key + "_responses"] = _ratio(
                    _sdk_runs(sim, lib, asynchronous, True, plan, "ttft_responses")
                )
    return e2e, ttft


# ---------------------------------------------------------------------- selection


def _select_once(lb: BaseLoadBalancer, now: float) -> None:
    """One selection and its release: the only code here that knows how the balancer selects."""
    with lb._lock:
        state, probe, _seq = lb._lanes.default.choice.choose(now, set(), lb._random)
    if state is None:
        raise RuntimeError("no backend was available")
    lb._ledger.release(state, probe, now)


def _cool_down_one_in_ten(lb: BaseLoadBalancer, now: float) -> int:
    """Set every tenth backend aside for a minute, as a 429 would; returns how many."""
    cooling = lb._lanes.default.states[9::10]
    for state in cooling:
        state.cooling_until = now + 60.0
    return len(cooling)


def _selections(lb: BaseLoadBalancer, k: int) -> float:
    """CPU seconds per selection, over ``k`` of them."""
    now = lb._clock()
    start = CPU_CLOCK()
    for _ in range(k):
        _select_once(lb, now)
    return (CPU_CLOCK() - start) / k


def measure_select(plan: Plan) -> dict[str, Any]:
    """Microseconds per selection for each backend count, all available and with 10 % cooling down."""
    mock = _mock()
    cases = [(cooling, n) for cooling in (False, True) for n in SELECT_SIZES]
    balancers: dict[tuple[bool, int], LoadBalancer] = {}
    for cooling, n in cases:
        lb = balancers[cooling, n] = LoadBalancer(
            [Backend(f"b{i}.example.com", 1) for i in range(n)], transport=mock
        )
        if cooling:
            _cool_down_one_in_ten(lb, lb._clock())
        _selections(lb, max(5, plan.warmup * 100 // (n + 10)))
    # As many selections for every size would take 100 times longer among 1000 backends than among
    # 10: the budget, counted among 10 backends, shrinks as the backend count grows.
    per_run: dict[tuple[bool, int], list[float]] = {case: [] for case in cases}
    for _ in range(plan.runs):
        with _gc_paused():
            for (cooling, n), lb in balancers.items():
                per_run[cooling, n].append(_selections(lb, max(20, plan.select_budget * 20 // (n + 10))))

    def table(cooling: bool) -> dict[str, float]:
        return {str(n): _median(per_run[cooling, n]) * 1e6 for n in SELECT_SIZES}

    def scaling(cooling: bool) -> float:
        return _median([a / b for a, b in zip(per_run[cooling, 1000], per_run[cooling, 10], strict=True)])

    return {
        "available": table(False),
        "cooling_10pct": table(True),
        "ratio_1000_to_10": scaling(False),
        "ratio_1000_to_10_cooling": scaling(True),
    }


# ---------------------------------------------------------------------- memory


def _traffic(lb: LoadBalancer, requests: int) -> None:
    with httpx.Client(transport=lb) as client:
        for _ in range(requests):
            client.post(CORE_URL, content=CORE_BODY, headers=CORE_HEADERS)


def _fill_latency_windows(lb: BaseLoadBalancer) -> None:
    """Fill every backend's latency window, as enough traffic would (much faster than sending it): in
    each deployment the traffic named (the rows of the stats), not in the others' lanes."""
    window = _state.LATENCY_WINDOW
    for state in lb._lanes.rows():
        record = getattr(state, "add_latency", None) or state.latencies.append
        for i in range(window):
            record(0.05 + i * 1e-4 + state.index * 1e-9)


def _memory_of(n: int, after_traffic: bool) -> tuple[int, int]:
    """Bytes held by n backends, and by a balancer over them, as tracemalloc sees it."""
    mock = _mock(AZURE_HEADERS)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        backends = [Backend(f"b{i}.example.com", 1) for i in range(n)]
        gc.collect()
        configured = tracemalloc.get_traced_memory()[0]
        lb = LoadBalancer(backends, transport=mock)
        if after_traffic:
            _traffic(lb, 2 * n)  # most backends served requests and reported their budget
            _fill_latency_windows(lb)
        gc.collect()
        total = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del lb, backends
    return configured - base, total - configured


def measure_memory() -> dict[str, dict[str, float]]:
    _traffic(LoadBalancer(_core_backends(), transport=_mock(AZURE_HEADERS)), 10)  # fill module-level caches
    small, large = MEMORY_SIZES
    result: dict[str, dict[str, float]] = {}
    for name, after_traffic in (("fresh", False), ("after_traffic", True)):
        backends_small, balancer_small = _memory_of(small, after_traffic)
        backends_large, balancer_large = _memory_of(large, after_traffic)
        backend = (backends_large - backends_small) / (large - small)
        balancer = (balancer_large - balancer_small) / (large - small)
        result[name] = {"total": backend + balancer, "backend": backend, "balancer": balancer}
    return result


# ---------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    affinity = getattr(os, "sched_getaffinity", None)
    load = getattr(os, "getloadavg", None)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average_1m": round(load()[0], 2) if load is not None else None,
        "processor": platform.processor() or platform.machine(),
        "openai_priority_loadbalancer": __version__,
        "openai": version("openai"),
        "httpx": version("httpx"),
        "httpx2": version("httpx2"),
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target: its name, the value measured, the limit and whether it passes."""
    checks: list[tuple[str, float, float, str]] = [
        (f"core_us_per_request.{mode}", results["core_us_per_request"][mode], CORE_US_MAX, "us")
        for mode in ("sync", "async")
    ]
    checks += [(f"e2e_ratio.{k}", v, E2E_RATIO_MAX, "x") for k, v in results["e2e_ratio"].items()]
    checks += [(f"ttft_ratio.{k}", v, TTFT_RATIO_MAX, "x") for k, v in results["ttft_ratio"].items()]
    select = results["select_us_by_backends"]
    checks += [
        (f"select_us_by_backends.{key}", select[key], SELECT_SCALING_MAX, "x")
        for key in ("ratio_1000_to_10", "ratio_1000_to_10_cooling")
    ]
    checks += [
        (f"bytes_per_backend.{k}", v, BYTES_PER_BACKEND_MAX, "B")
        for k, v in results["bytes_per_backend"].items()
    ]
    checks += [
        (f"affinity_us.{k}", v, AFFINITY_NOTHING_US_MAX, "us")
        for k, v in results["affinity_us"].items()
        if k in ("chat_deployment", "chat_v1", "embeddings_v1")
    ]
    return [
        {"name": name, "value": value, "limit": limit, "unit": unit, "pass": value <= limit}
        for name, value, limit, unit in checks
    ]


def run_all(plan: Plan) -> dict[str, Any]:
    core = measure_core(plan)
    e2e, ttft = measure_sdk(plan)
    select = measure_select(plan)
    memory = measure_memory()
    affinity = measure_affinity(plan)
    results: dict[str, Any] = {
        "machine": machine(),
        "runs": plan.runs,
        "quick": plan.quick,
        "core_us_per_request": {key: row["overhead_us"] for key, row in core.items()},
        "e2e_ratio": {key: row["ratio"] for key, row in e2e.items()},
        "ttft_ratio": {key: row["ratio"] for key, row in ttft.items()},
        "select_us_by_backends": {
            **select["available"],
            "cooling_10pct": select["cooling_10pct"],
            "ratio_1000_to_10": select["ratio_1000_to_10"],
            "ratio_1000_to_10_cooling": select["ratio_1000_to_10_cooling"],
        },
        "bytes_per_backend": {key: row["total"] for key, row in memory.items()},
        "affinity_us": {
            **affinity["examine_us"],
            "responses_create_learned": affinity["learn"]["overhead_us"],
        },
        "details": {"core": core, "e2e": e2e, "ttft": ttft, "memory": memory, "affinity": affinity},
    }
    results["targets"] = targets(results)
    return results


def print_report(results: dict[str, Any], plan: Plan) -> None:
    m, details = results["machine"], results["details"]
    print(f"openai-priority-loadbalancer {m['openai_priority_loadbalancer']}: benchmarks")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['python']}, {m['platform']}")
    print(f"         load average {m['load_average_1m']} when the run ended (other work skews the timings)")
    print(f"         openai {m['openai']}, httpx {m['httpx']}, httpx2 {m['httpx2']}")
    print(f"each figure: the median of {plan.runs} run(s); in each run baseline and balancer take turns")

    print(
        f"\ncore: CPU the balancer adds per request (httpx, MockTransport, {plan.core_requests} requests/run)"
    )
    print(f"  {'':22}{'plain':>10}{'balanced':>11}{'overhead':>11}{'ratio':>8}")
    for key, label in (("sync", "sync"), ("async", "async"), ("sync_azure_headers", "sync, Azure headers")):
        row = details["core"][key]
        print(
            f"  {label:22}{row['plain_us']:8.1f}us{row['balanced_us']:9.1f}us{row['overhead_us']:9.1f}us"
            f"{row['balanced_us'] / row['plain_us']:7.2f}x"
        )

    for name, title, n in (
        ("e2e", "e2e: openai SDK -> simulator, median time per request", plan.e2e_requests),
        (
            "ttft",
            "ttft: openai SDK -> simulator, median time to the first streamed chunk",
            plan.ttft_requests,
        ),
    ):
        print(f"\n{title} ({n} requests/run)")
        print(f"  {'':22}{'plain':>10}{'balanced':>11}{'ratio':>8}{'A/A':>8}")
        for key, row in details[name].items():
            print(
                f"  {key:22}{row['plain_ms']:8.3f}ms{row['balanced_ms']:9.3f}ms{row['ratio']:7.3f}x"
                f"{row['noise_ratio']:7.3f}x"
            )
    print("  (A/A: a second plain client against the first, the noise floor)")

    select = results["select_us_by_backends"]
    print("\nselection: one choice among N backends of one priority (us)")
    print(f"  {'N':>6}{'available':>12}{'10% cooling':>14}")
    for n in SELECT_SIZES:
        print(f"  {n:>6}{select[str(n)]:12.2f}{select['cooling_10pct'][str(n)]:14.2f}")
    print(
        f"  1000/10: {select['ratio_1000_to_10']:.1f}x available, "
        f"{select['ratio_1000_to_10_cooling']:.1f}x with 10% cooling"
    )

    small, large = MEMORY_SIZES
    print(f"\nmemory per backend (tracemalloc, (N={large} - N={small}) / {large - small})")
    for key, row in details["memory"].items():
        print(
            f"  {key:14}{row['total']:8.0f} B  (Backend {row['backend']:.0f} B + balancer "
            f"{row['balancer']:.0f} B)"
        )

    affinity = details["affinity"]
    print("\naffinity: telling whether a request names a stored object, CPU per request (us)")
    for key, value in affinity["examine_us"].items():
        print(f"  {key:22}{value:8.2f}us")
    learn = affinity["learn"]
    owner_map = affinity["owner_map"]
    print(
        f"  a full map of owners: {owner_map['objects']:.0f} objects,"
        f" {owner_map['bytes_per_object']:.0f} B each, {owner_map['mb']:.1f} MB"
    )
    print(
        f"  a Responses create, its answer's ids learned as read: {learn['balanced_us']:.1f}us vs "
        f"{learn['plain_us']:.1f}us with affinity off ({learn['overhead_us']:+.1f}us)"
    )

    print("\ntargets" + (" (a --quick run: indicative only)" if results["quick"] else ""))
    for target in results["targets"]:
        unit = target["unit"]
        value = f"{target['value']:.3f}{unit}" if unit == "x" else f"{target['value']:.1f}{unit}"
        verdict = "PASS" if target["pass"] else "FAIL"
        print(f"  {verdict}  {target['name']:48}{value:>12} <= {target['limit']:g}{unit}")


# ---------------------------------------------------------------------- profiling


def _profile_core(plan: Plan, profiler: cProfile.Profile) -> int:
    with httpx.Client(transport=LoadBalancer(_core_backends(), transport=_mock(AZURE_HEADERS))) as client:
        sample = _post_sampler(client)
        sample(plan.warmup)
        profiler.runcall(sample, plan.core_requests)
    return plan.core_requests


def _profile_e2e(plan: Plan, profiler: cProfile.Profile) -> int:
    import httpx2

    with Simulator(_simulator_configs()) as sim:
        client = _sdk_client(httpx2, sim, balanced=True, asynchronous=False)
        sample = _request_sampler(client)
        sample(plan.warmup)
        profiler.runcall(sample, plan.e2e_requests * 5)
        client.close()
    return plan.e2e_requests * 5


def _profile_select(plan: Plan, profiler: cProfile.Profile) -> int:
    lb = LoadBalancer([Backend(f"b{i}.example.com", 1) for i in range(1000)], transport=_mock())
    k = max(20, plan.select_budget // 20)
    profiler.runcall(_selections, lb, k)
    return k


class _HotSpot(NamedTuple):
    where: str  # "file:line function"
    calls: float  # per item
    own_us: float  # per item
    cumulative_us: float  # per item


def _package_function(filename: str) -> str | None:
    """The path of ``filename`` inside the package, or None if it is not the balancer's code."""
    path = Path(filename).as_posix()
    if f"/{PACKAGE}/" not in path or "/simulator/" in path:
        return None
    return path.split(f"/{PACKAGE}/", 1)[1]


def _hot_spots(profiler: cProfile.Profile, items: int) -> tuple[list[_HotSpot], list[_HotSpot]]:
    """(the package's functions, the functions outside it that the package calls), per item.

    The second list counts only the calls made from the package: what the balancer spends in httpx,
    random, threading and the like, on top of its own code.
    """
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    inside: list[_HotSpot] = []
    called: list[_HotSpot] = []
    for (filename, line, function), (_, calls, own, cumulative, callers) in stats.items():
        module = _package_function(filename)
        if module is not None:
            where = f"{module}:{line} {function}"
            inside.append(_HotSpot(where, calls / items, own / items * 1e6, cumulative / items * 1e6))
            continue
        from_package = [data for caller, data in callers.items() if _package_function(caller[0])]
        if from_package:
            n = sum(data[1] for data in from_package)
            own_time = sum(data[2] for data in from_package)
            cumulative_time = sum(data[3] for data in from_package)
            where = f"{Path(filename).name}:{line} {function}" if line else function
            called.append(_HotSpot(where, n / items, own_time / items * 1e6, cumulative_time / items * 1e6))
    return inside, called


def profile(what: str, plan: Plan, top: int = 15) -> None:
    """Where a profiled loop spends its time in the package (and what it calls outside), per item."""
    profiler = cProfile.Profile()  # wall time: time.thread_time would cost a system call per event
    runner = {"core": _profile_core, "e2e": _profile_e2e, "select": _profile_select}[what]
    items = runner(plan, profiler)
    inside, called = _hot_spots(profiler, items)
    print(f"profile '{what}': {items} items; us per item under cProfile (inflated: compare, don't add)")
    tables = (
        ("package functions by own time", inside, "own_us"),
        ("package functions by cumulative time", inside, "cumulative_us"),
        ("called from the package, outside it, by cumulative time", called, "cumulative_us"),
    )
    for title, rows, key in tables:
        print(f"\n  {title}:")
        print(f"  {'calls':>7}{'own':>9}{'cum':>9}  function")
        for where, calls, own, cumulative in sorted(rows, key=attrgetter(key), reverse=True)[:top]:
            print(f"  {calls:7.2f}{own:9.2f}{cumulative:9.2f}  {where}")


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: few iterations, 1 run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=None, help="repeat each measurement N times (default 5)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target is missed (with --quick: only the memory target, timing is not judged)",
    )
    parser.add_argument(
        "--profile", choices=("core", "e2e", "select"), help="profile one path instead of measuring"
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    plan = Plan.make(args.quick, args.runs)
    if args.profile:
        profile(args.profile, plan)
        return 0
    results = run_all(plan)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results, plan)
    if args.check:
        judged = [
            t for t in results["targets"] if not args.quick or t["name"].startswith("bytes_per_backend")
        ]
        return 0 if all(t["pass"] for t in judged) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
