"""Resilience benchmark: the load balancer against a plain SDK client, on simulated Azure OpenAI instances.

Every case sends chat completions (deployment gpt-4o) through AsyncAzureOpenAI to simulated instances
(50 ms latency, 1 s rate-limit windows), once through the balancer and once with the plain client: the
standard SDK client pointed at the first, priority-1 instance, with the same settings. Each run gets a
fresh simulator, so no window or counter carries over. Targets are judged on the balancer's figures
(medians with --runs N). Columns: "SDK tries" counts the HTTP requests the SDK sent (its retries
included), "LB 429" the balancer's own 429s, "429s"/"500s" what the instances answered, "on fail" the
attempts spent on the failing instance (or on the one lacking the deployment), "p1 share" the
priority-1 instance's share of the successes (in (f), of the embeddings).

Cases (e) to (g) meter as Azure does, per deployment and by tokens: (e) a token-bound burst of chat
completions of about 1,500 tokens each; (f) a chat deployment that saturates priority 1 next to an
embeddings deployment that never does, on the same instances; (g) priority 1 lacking the deployment
(404 DeploymentNotFound) that priority 2 has.

    PYTHONPATH=src python benchmarks/resilience.py [--runs 3] [--case a,b] [--json] [--quick] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import openai

from openai_priority_loadbalancer import EXTENSION, AsyncLoadBalancer, Backend
from openai_priority_loadbalancer.simulator import DeploymentLimits, FailureMode, InstanceConfig, Simulator

MODEL = "gpt-4o"
EMBEDDINGS = "embed"
# (e): about 1,500 tokens a request as Azure counts them: a 4,000-character prompt (1,000 tokens)
# plus max_tokens 500; 6,100 tokens a second fit four such requests in each instance's window.
TOKEN_PROMPT_CHARS = 4000
TOKEN_MAX_TOKENS = 500
TOKENS_PER_S = 6100
API_VERSION = "2024-06-01"
LATENCY_S = 0.05
WINDOW_S = 1.0
CLIENTS = ("plain", "balanced")
COLUMNS: tuple[tuple[str, int], ...] = (("client", 8), ("ok", 5), ("errors", 24), ("wall s", 6))
COLUMNS += (("ideal s", 7), ("SDK tries", 9), ("LB 429", 6), ("429s", 4), ("500s", 4), ("on fail", 7))
COLUMNS += (("p1 share", 8),)


@dataclass(frozen=True)
class Instance:
    name: str
    priority: int
    rpw: int | None = None  # requests per window; None: unlimited
    failure: FailureMode | None = None
    tpm: int | None = None  # tokens per minute (per deployment with ``deployments``)
    # The deployments the instance has, each (name, requests per window): None serves any, metered together.
    deployments: tuple[tuple[str, int | None], ...] | None = None

    def __str__(self) -> str:
        rate = f"{self.rpw}/s" if self.rpw else "unlimited"
        if self.tpm:
            rate = f"{self.tpm // 60:,} tokens/s"
        if self.deployments is not None:
            rate = ", ".join(f"{n} {f'{r}/s' if r else 'unlimited'}" for n, r in self.deployments) or "none"
            rate = f"[{rate}]"
        return f"{self.name} p{self.priority} {self.failure or rate}"

    def config(self) -> InstanceConfig:
        deployments = None
        if self.deployments is not None:
            deployments = {
                n: DeploymentLimits(requests_per_window=r, tokens_per_minute=self.tpm)
                for n, r in self.deployments
            }
        return InstanceConfig(
            self.name,
            requests_per_window=self.rpw,
            tokens_per_minute=self.tpm if deployments is None else None,
            window_s=WINDOW_S,
            latency_s=LATENCY_S,
            failure=self.failure,
            deployments=deployments,
        )


@dataclass(frozen=True)
class Case:
    key: str
    instances: tuple[Instance, ...]
    requests: int
    concurrency: int
    max_retries: int = openai.DEFAULT_MAX_RETRIES
    workload: str = "chat"  # "chat", "tokens" (about 1,500 tokens each), "mixed" (chat and embeddings)

    def __str__(self) -> str:
        default = " (SDK default)" if self.max_retries == openai.DEFAULT_MAX_RETRIES else ""
        retries = f"max_retries={self.max_retries}{default}"
        what = {
            "chat": "requests",
            "tokens": "chat completions of ~1,500 tokens",
            "mixed": "chat + embeddings",
        }
        load = f"{self.requests} {what[self.workload]}, {self.concurrency} at a time, {retries}"
        return f"({self.key}) {', '.join(map(str, self.instances))}; {load}"


CASES = (
    Case("a", (Instance("east", 1, 4), Instance("south", 1, 4), Instance("west", 1, 4)), 48, 12),
    Case("b", (Instance("east", 1, 6), Instance("south", 2, 6), Instance("west", 2, 6)), 36, 6),
    Case("c", (Instance("broken", 1, failure="500"), Instance("healthy", 2)), 20, 1, max_retries=0),
    Case("d", (Instance("dead", 1, failure="refuse"), Instance("live", 2)), 20, 1, max_retries=0),
    Case(
        "e",
        tuple(Instance(name, 1, tpm=TOKENS_PER_S * 60) for name in ("east", "south", "west")),
        48,
        12,
        workload="tokens",
    ),
    Case(
        "f",
        tuple(
            Instance(name, p, deployments=((MODEL, 4), (EMBEDDINGS, None)))
            for name, p in (("east", 1), ("west", 2))
        ),
        64,
        8,
        workload="mixed",
    ),
    Case(
        "g",
        (Instance("lacking", 1, deployments=((EMBEDDINGS, None),)), Instance("having", 2)),
        20,
        1,
        max_retries=0,
    ),
)


def ideal_wall_s(case: Case, instances: tuple[Instance, ...]) -> float | None:
    """The shortest possible wall time on ``instances``' healthy capacity (None: none is healthy).

    With C the healthy instances' requests per window summed, n requests and concurrency c: each
    window's budget is all available at the window's start, so the first ceil(n / C) - 1 windows are
    spent in full and the last one starts those windows in; its r = n - (ceil(n / C) - 1) * C requests
    then go in ceil(r / c) waves of one latency each. E.g. (a): 48 requests, C = 12, c = 12 ->
    3 windows + 1 wave = 3.05 s; (b): 36 requests, C = 18, c = 6 -> 1 window + 3 waves = 1.15 s.
    Without a rate limit, or when waves cannot keep up with the windows, ceil(n / c) waves bound it.
    """
    healthy = [i for i in instances if i.failure is None]
    if not healthy:
        return None
    waves = math.ceil(case.requests / case.concurrency) * LATENCY_S
    if case.workload == "tokens":  # the token budget bounds the requests per window
        per_window = [
            (i.tpm or 0) * WINDOW_S // 60 // (TOKEN_PROMPT_CHARS // 4 + 1 + TOKEN_MAX_TOKENS) for i in healthy
        ]
        healthy = [replace(i, rpw=int(r)) for i, r in zip(healthy, per_window, strict=True)]
    elif case.workload != "chat":
        return None
    if any(i.rpw is None for i in healthy):
        return waves
    capacity = sum(i.rpw or 0 for i in healthy)
    full_windows = math.ceil(case.requests / capacity) - 1
    last = case.requests - full_windows * capacity
    return max(waves, full_windows * WINDOW_S + math.ceil(last / case.concurrency) * LATENCY_S)


async def drive(case: Case, sim: Simulator, balanced: bool) -> tuple[Counter[str], Counter[str], float]:
    """Send the case's requests; return client-side counts, errors by type and the wall time."""
    counts: Counter[str] = Counter()

    async def on_request(_: Any) -> None:
        counts["sdk_attempts"] += 1

    async def on_response(response: Any) -> None:
        routing = response.extensions.get(EXTENSION)
        if routing is not None and routing.backend is None:
            counts["lb_429s"] += 1  # the balancer's own 429: no backend could take the request
        if response.status_code == 200 and response.url.path.endswith("/embeddings"):
            counts["embeddings_ok"] += 1
            if routing is None or routing.backend == backends[0].id:
                counts["embeddings_p1"] += 1

    backends = [Backend(sim.url(i.name), i.priority) for i in case.instances]
    lb = AsyncLoadBalancer(backends) if balanced else None
    hooks: dict[str, list[Any]] = {"request": [on_request], "response": [on_response]}
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url(case.instances[0].name),
        api_version=API_VERSION,
        api_key="sim-key",
        max_retries=case.max_retries,
        http_client=openai.DefaultAsyncHttpxClient(transport=lb, event_hooks=hooks),
    )
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(case.concurrency)

    async def one(i: int) -> None:
        async with gate:
            try:
                if case.workload == "mixed" and i % 2:
                    await client.embeddings.create(model=EMBEDDINGS, input=f"Request {i}")
                elif case.workload == "tokens":
                    text = f"Request {i}: " + "x" * TOKEN_PROMPT_CHARS
                    messages: Any = [{"role": "user", "content": text[:TOKEN_PROMPT_CHARS]}]
                    await client.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=TOKEN_MAX_TOKENS
                    )
                else:
                    messages = [{"role": "user", "content": f"Request {i}: say hello."}]
                    await client.chat.completions.create(model=MODEL, messages=messages)
                counts["ok"] += 1
            except openai.OpenAIError as exc:  # counted by type: that is the report
                errors[type(exc).__name__] += 1

    async with client:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(case.requests)))
        wall_s = time.perf_counter() - started
        # Attempts on a refusing instance: the simulator never sees them, the client side does.
        dead = {b.id for b, i in zip(backends, case.instances, strict=True) if i.failure == "refuse"}
        if lb is not None:
            counts["refused"] = sum(s.requests for s in lb.stats() if s.backend in dead)
        elif case.instances[0].failure == "refuse":
            counts["refused"] = counts["sdk_attempts"]
    return counts, errors, wall_s


def run_once(case: Case, balanced: bool) -> dict[str, Any]:
    configs = [i.config() for i in case.instances]
    with Simulator(configs) as sim:
        counts, errors, wall_s = asyncio.run(drive(case, sim, balanced))
        stats = {i.name: sim.stats(i.name) for i in case.instances}
    failing_500 = sum(stats[i.name].received for i in case.instances if i.failure in ("500", "503"))
    # Attempts on an instance lacking the deployment: its 404s.
    failing_500 += sum(
        stats[i.name].rejected
        for i in case.instances
        if i.deployments is not None and case.workload == "chat"
    )
    figures: dict[str, float] = {
        "ok": counts["ok"],
        "wall_s": wall_s,
        "sdk_attempts": counts["sdk_attempts"],
        "lb_429s": counts["lb_429s"],
        "backend_429s": sum(s.throttled for s in stats.values()),
        "backend_500s": sum(s.failed for s in stats.values()),
        "spent_on_failing": failing_500 + counts["refused"],
    }
    ideal = ideal_wall_s(case, case.instances if balanced else case.instances[:1])
    if ideal is not None:
        figures["ideal_s"] = ideal
    first = case.instances[0]
    if case.workload == "mixed":
        embeddings = counts["embeddings_ok"]
        figures["p1_share"] = counts["embeddings_p1"] / embeddings if embeddings else 0.0
        figures["chat_off_p1"] = sum(stats[i.name].served for i in case.instances[1:]) - (
            embeddings - counts["embeddings_p1"]
        )
    elif len({i.priority for i in case.instances}) > 1 and first.failure is None and first.rpw:
        p1 = stats[first.name]
        full = p1.served_per_window[:-1]  # the last window is cut short by the end of the run
        figures["p1_share"] = p1.served / counts["ok"] if counts["ok"] else 0.0
        figures["p1_underfull_windows"] = sum(served < first.rpw for served in full)
    per_window = {name: list(s.served_per_window) for name, s in stats.items()}
    return {"figures": figures, "errors": dict(errors), "served_per_window": per_window}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of every figure and every error type."""
    figures = {k: statistics.median(r["figures"][k] for r in runs) for k in runs[0]["figures"]}
    kinds = sorted({k for r in runs for k in r["errors"]})
    errors = {k: statistics.median(r["errors"].get(k, 0) for r in runs) for k in kinds}
    return {"figures": figures, "errors": errors, "runs": runs}


def targets(case: Case, f: dict[str, float]) -> list[tuple[str, bool]]:
    n = case.requests
    all_ok = (f"{n}/{n} ok (got {f['ok']:g})", f["ok"] == n)
    if case.key == "a":
        wall = f"wall {f['wall_s']:.2f} s <= 1.2 x ideal {f['ideal_s']:.2f} s"
        return [
            all_ok,
            (wall, f["wall_s"] <= 1.2 * f["ideal_s"]),
            (f"backend 429s {f['backend_429s']:g} <= 12", f["backend_429s"] <= 12),
        ]
    if case.key == "b":
        under = f["p1_underfull_windows"]
        return [(f"priority 1 at capacity in every window ({under:g} windows under)", under == 0)]
    if case.key == "c":
        return [
            all_ok,
            (f"{f['spent_on_failing']:g} requests on the 500 backend <= 2", f["spent_on_failing"] <= 2),
        ]
    if case.key == "e":
        wall = f"wall {f['wall_s']:.2f} s <= 1.2 x ideal {f['ideal_s']:.2f} s"
        return [
            all_ok,
            (wall, f["wall_s"] <= 1.2 * f["ideal_s"]),
            (f"backend 429s {f['backend_429s']:g} <= 6", f["backend_429s"] <= 6),
        ]
    if case.key == "f":
        share = f"embeddings on priority 1 {f['p1_share']:.0%} >= 95 %"
        chat = f"chat overflows to priority 2 ({f['chat_off_p1']:g} there)"
        return [all_ok, (share, f["p1_share"] >= 0.95), (chat, f["chat_off_p1"] > 0)]
    if case.key == "g":
        spent = f"{f['spent_on_failing']:g} requests on the backend lacking the deployment <= 3"
        return [all_ok, (spent, f["spent_on_failing"] <= 3)]
    return [all_ok]


def _row(cells: tuple[str, ...]) -> str:
    """Client and errors (columns 0 and 2) left-aligned, numbers right-aligned."""
    widths = [max(w, len(c)) for c, (_, w) in zip(cells, COLUMNS, strict=True)]
    return "  ".join(
        c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def render(case: Case, result: dict[str, Any], runs: int) -> str:
    lines = [str(case), _row(tuple(name for name, _ in COLUMNS))]
    failing = any(
        i.failure or (i.deployments is not None and case.workload == "chat") for i in case.instances
    )
    for name in CLIENTS:
        f, errs = result[name]["figures"], result[name]["errors"]
        cells = (
            name,
            f"{f['ok']:g}/{case.requests}",
            ", ".join(f"{k} {v:g}" for k, v in errs.items()) or "-",
            f"{f['wall_s']:.2f}",
            f"{f['ideal_s']:.2f}" if "ideal_s" in f else "-",
            f"{f['sdk_attempts']:g}",
            f"{f['lb_429s']:g}" if name == "balanced" else "-",
            f"{f['backend_429s']:g}",
            f"{f['backend_500s']:g}",
            f"{f['spent_on_failing']:g}" if failing else "-",
            f"{f['p1_share']:.0%}" if "p1_share" in f else "-",
        )
        lines.append(_row(cells).rstrip())
    if any(i.rpw or i.tpm or i.deployments for i in case.instances):
        windows = result["balanced"]["runs"][-1]["served_per_window"]
        lines.append(
            "  balanced, served per window (last run): " + "; ".join(f"{k} {v}" for k, v in windows.items())
        )
    for t in result.get("targets", []):
        note = f"  [medians; passed in {t['runs_passed']}/{runs} runs]" if runs > 1 else ""
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", default="a,b,c,d,e,f,g", help="cases to run, e.g. a,b (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="repeat every run N times, report medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: a quarter of the requests, no targets"
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    keys = args.case.split(",")
    chosen = [c for c in CASES if c.key in keys]
    if len(chosen) != len(set(keys)) or args.runs < 1:
        parser.error("--case takes some of a,b,c,d,e,f,g (comma-separated); --runs must be at least 1")
    report: dict[str, Any] = {"runs": args.runs, "quick": args.quick, "cases": {}}
    failed = False
    for case in chosen:
        if args.quick:
            case = replace(case, requests=max(2, case.requests // 4))
        result: dict[str, Any] = {"case": str(case)}
        for name in CLIENTS:
            result[name] = summarize([run_once(case, name == "balanced") for _ in range(args.runs)])
        if not args.quick:
            verdicts = targets(case, result["balanced"]["figures"])
            per_run = [targets(case, r["figures"]) for r in result["balanced"]["runs"]]
            result["targets"] = [
                {"target": label, "pass": passed, "runs_passed": sum(run[k][1] for run in per_run)}
                for k, (label, passed) in enumerate(verdicts)
            ]
            failed = failed or not all(passed for _, passed in verdicts)
        report["cases"][case.key] = result
        if not args.json:
            print(render(case, result, args.runs), end="\n\n", flush=True)
    report["all_targets_pass"] = None if args.quick else not failed
    if args.json:
        print(json.dumps(report))
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
