"""Each deployment of a backend is metered on its own: its 429s, cooldowns and budgets are its own,
while a backend's breaker (5xx, connection errors) is the backend's, in every deployment (issue 15)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from _unit_support import LOGGER, A, B, MakeLb, post, stats_by_id
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openai_priority_loadbalancer import Backend, MemoryStateStore, SharedState, shared_key
from openai_priority_loadbalancer._lanes import MAX_LANES, deployment_key
from openai_priority_loadbalancer.otel import OpenTelemetryMetrics

URL = "https://caller.example/openai/deployments/{}/chat/completions?api-version=2024-06-01"
V1 = "https://caller.example/openai/v1/embeddings"
THROTTLED = (429, {"retry-after": "30"})


def by_deployment(router: Any, host: str, answers: dict[str, Any]) -> None:
    """``host`` answers each deployment (path or v1 body model) with its entry; others 200."""

    def answer(request: Any) -> Any:
        names = request.url.path.split("/")
        body = request.content.decode()
        for deployment, entry in answers.items():
            if deployment in names or f'"model":"{deployment}"' in body.replace(" ", ""):
                return router.answer(entry, request)
        return router.answer(200, request)

    router.always(host, answer)


def test_a_429_for_one_deployment_leaves_the_others_on_the_backend(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    by_deployment(router, A, {"gpt": THROTTLED})
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert post(client, URL.format("gpt")).json() == {"host": B}  # A throttles chat: it goes to B
    for _ in range(5):
        assert post(client, URL.format("gpt")).json() == {"host": B}
        assert post(client, URL.format("embed")).json() == {"host": A}  # embed still has A
    assert len(router.for_host(A)) == 6  # the 429, then embeddings only
    rows = {(s.backend, s.deployment): s for s in lb.stats()}
    assert rows[(A, "gpt")].cooling_down_for_s == pytest.approx(30)
    assert rows[(A, "embed")].cooling_down_for_s == 0
    assert (rows[(A, "gpt")].throttled, rows[(A, "embed")].successes) == (1, 5)


def test_the_v1_body_model_names_the_deployment(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    by_deployment(router, A, {"gpt": THROTTLED})
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    chat = b'{"model": "gpt", "messages": []}'
    embed = b'{"model": "embed", "input": "hi"}'
    assert post(client, "https://caller.example/openai/v1/chat/completions", content=chat).json() == {
        "host": B
    }
    assert post(client, V1, content=embed).json() == {"host": A}


def test_a_failure_opens_the_breaker_for_every_deployment_and_a_success_closes_it(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=2)
    client = client_for(lb)
    assert post(client, URL.format("embed")).json() == {"host": A}  # embed's lane exists, A healthy
    router.script(A, 503)
    assert post(client, URL.format("gpt")).json() == {"host": B}  # A fails for chat...
    assert post(client, URL.format("embed")).json() == {"host": B}  # ...and is set aside for embed
    assert post(client, URL.format("later")).json() == {"host": B}  # and for a deployment seen after
    rows = {(s.backend, s.deployment): s for s in lb.stats()}
    assert {rows[(A, d)].breaker for d in ("gpt", "embed", "later")} == {"open"}
    assert rows[(A, "gpt")].failures == 1
    assert rows[(A, "embed")].failures == 0
    clock.advance(2)
    assert post(client, URL.format("gpt")).json() == {"host": A}  # chat's probe: A answers again
    assert post(client, URL.format("embed")).json() == {"host": A}  # closed for embed too, no probe
    assert {s.breaker for s in lb.stats() if s.backend == A} == {"closed"}


def test_a_spent_token_budget_is_the_deployments_own(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    spent = (200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20s"})
    router.script(A, spent)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert post(client, URL.format("gpt")).json() == {"host": A}  # served; its tokens are spent
    assert post(client, URL.format("gpt")).json() == {"host": B}
    assert post(client, URL.format("embed")).json() == {"host": A}
    assert stats_by_id(lb, "gpt")[A].remaining_tokens == 0
    assert stats_by_id(lb, "embed")[A].remaining_tokens is None


def test_stats_have_a_row_per_backend_and_deployment(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert [(s.backend, s.deployment) for s in lb.stats()] == [(A, None), (B, None)]
    post(client, URL.format("gpt"))
    assert [(s.backend, s.deployment) for s in lb.stats()] == [(A, "gpt"), (B, "gpt")]
    assert "deployment" not in str(lb.stats()).splitlines()[0]  # one deployment: no column
    post(client, URL.format("embed"))
    post(client, "https://caller.example/openai/v1/files", content=b"")
    rows = [(s.backend, s.deployment) for s in lb.stats()]
    assert rows == [(A, None), (A, "gpt"), (A, "embed"), (B, None), (B, "gpt"), (B, "embed")]
    table = str(lb.stats())
    assert table.splitlines()[0].split()[:2] == ["backend", "deployment"]
    assert any(line.split()[:2] == [A, "embed"] for line in table.splitlines())
    total = lb.stats().total
    assert (total.backends, total.available, total.requests) == (2, 2, 3)


def test_a_deployment_is_shared_under_the_backends_key_and_its_own_name(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1, deployments={"gpt": "gpt-4o-eastus"}), Backend(B, 2)]
    by_deployment(router, A, {"gpt-4o-eastus": THROTTLED})
    one = make_lb(backends, state=store)
    two = make_lb(backends, state=store)
    assert post(client_for(one), URL.format("gpt")).json() == {"host": B}
    record = store.load([shared_key(backends[0]) + "#deployment=gpt-4o-eastus"])[0]
    assert record is not None
    assert record.reason == "throttled"
    assert store.load([shared_key(backends[0])]) == [None]  # the backend itself is not set aside
    router.requests.clear()
    assert post(client_for(two), URL.format("gpt")).json() == {"host": B}  # seen by the other balancer
    assert post(client_for(two), URL.format("embed")).json() == {"host": A}
    assert router.hosts == [B, A]


def test_a_deployment_key_never_meets_a_stores_own_suffixes() -> None:
    assert deployment_key("https://a:443", "x#budget") == "https://a:443#deployment=x%23budget"
    assert deployment_key("https://a:443", "50%") == "https://a:443#deployment=50%25"


def test_events_and_metrics_name_the_deployment(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    reader = InMemoryMetricReader()
    metrics = OpenTelemetryMetrics(MeterProvider(metric_readers=[reader]))
    events: list[Any] = []

    def on_event(event: Any) -> None:
        events.append(event)
        metrics(event)

    by_deployment(router, A, {"gpt": THROTTLED})
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], on_event=on_event))
    post(client, URL.format("gpt"))
    post(client, URL.format("emb"))
    post(client, "https://caller.example/openai/v1/files", content=b"")
    assert [(e.kind, e.backend, e.deployment) for e in events] == [
        ("attempt", A, "gpt"),
        ("throttled", A, "gpt"),
        ("attempt", B, "gpt"),
        ("served", B, "gpt"),
        ("attempt", A, "emb"),
        ("served", A, "emb"),
        ("attempt", A, None),
        ("served", A, None),
    ]
    data = reader.get_metrics_data()
    assert data is not None
    throttles = [
        dict(point.attributes or {})
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name.endswith(".throttles")
        for point in metric.data.data_points
    ]
    assert throttles == [{"backend": A, "deployment": "gpt"}]


# ---------------------------------------------------------------------- the breaker is the backend's


def test_a_breaker_closing_leaves_a_longer_429_of_another_deployment(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    by_deployment(router, A, {"gpt": (429, {"retry-after": "60"})})
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    assert post(client, URL.format("gpt")).json() == {"host": B}  # gpt set aside on A for 60 s
    router.script(A, 500)
    assert post(client, URL.format("emb")).json() == {"host": B}  # A's breaker opens for 1 s
    clock.advance(2)
    assert post(client, URL.format("emb")).json() == {"host": A}  # its probe: the breaker closes
    router.requests.clear()
    assert post(client, URL.format("gpt")).json() == {"host": B}  # gpt's 429 has 58 s to go
    assert router.hosts == [B]
    assert stats_by_id(lb, "gpt")[A].cooling_down_for_s == pytest.approx(58)


def test_a_half_open_breaker_takes_one_probe_for_all_deployments(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    post(client, URL.format("emb"))
    router.script(A, 503)
    post(client, URL.format("gpt"))  # A's breaker opens, in both deployments
    clock.advance(1)
    with lb._lock:  # gpt's probe is chosen and out (as if its answer had not come yet)
        state, probe, _ = lb._lane("gpt").choice.choose(clock(), set(), lb._random)
        lb._lanes.hold_probe(state)
    assert (state.backend.id, probe) == (A, True)
    router.requests.clear()
    assert post(client, URL.format("emb")).json() == {"host": B}  # no second probe for emb
    assert post(client, URL.format("later")).json() == {"host": B}  # nor for a deployment seen now
    assert router.hosts == [B, B]


def test_a_breaker_opened_in_one_process_is_seen_for_every_deployment_in_another(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    one, two = make_lb(backends, state=store), make_lb(backends, state=store)
    router.script(A, 503)
    assert post(client_for(one), URL.format("gpt")).json() == {"host": B}
    record = store.load([shared_key(backends[0])])[0]
    assert record is not None
    assert record.reason == "failed"  # under the backend's own key
    router.requests.clear()
    assert post(client_for(two), URL.format("emb")).json() == {"host": B}  # another deployment
    assert router.hosts == [B]


def test_a_breaker_shared_under_a_budget_store_turns_a_granted_attempt_away(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    """With a BudgetStore the reservation grants the deployment's request; the backend's own record,
    read in the same round trip, says it is down: the attempt goes elsewhere."""
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    store.set_aside(shared_key(backends[0]), SharedState(30.0, "failed", 3))
    lb = make_lb(backends, state=store)
    assert post(client_for(lb), URL.format("gpt")).json() == {"host": B}
    assert router.hosts == [B]
    assert stats_by_id(lb, "gpt")[A].breaker == "open"


# ---------------------------------------------------------------------- a deployment a backend lacks


def lacking(router: Any, host: str) -> None:
    router.always(
        host, lambda request: router.lib.Response(404, json={"error": {"code": "DeploymentNotFound"}})
    )


def test_a_responses_create_fails_over_from_a_backend_lacking_the_deployment(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    lacking(router, A)
    router.always(B, lambda request: router.lib.Response(200, json={"id": "resp_1", "object": "response"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    body = b'{"model": "gpt", "input": "hi"}'
    codes = [
        post(client, "https://caller.example/openai/v1/responses", content=body).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 200]
    assert len(router.for_host(A)) == 1  # asked once, then set aside for that deployment


def test_a_wait_counts_only_the_backends_having_the_deployment(
    make_lb: MakeLb, router: Any, client_for: Any, fake_sleep: list[float]
) -> None:
    lacking(router, A)
    router.always(B, (429, {"retry-after": "10"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    post(client, URL.format("gpt"))  # A: 404, set aside for gpt; B: 429 for 10 s
    refused = post(client, URL.format("gpt"))
    assert (refused.status_code, refused.headers["retry-after-ms"]) == (429, "10000")
    waiting = make_lb([Backend(A, 1), Backend(B, 2)], max_wait_s=5)
    post(client_for(waiting), URL.format("gpt"))
    fake_sleep.clear()
    post(client_for(waiting), URL.format("gpt"))
    assert len(fake_sleep) <= 2  # one wait, not a 10 ms poll of the backend lacking it


def test_deployment_names_past_the_limit_are_not_kept(
    make_lb: MakeLb, router: Any, client_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lb = make_lb([Backend(A, 1)])
    client = client_for(lb)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(MAX_LANES + 500):
            post(client, URL.format(f"d{i}"))
    assert len(lb._lanes.by_deployment) == MAX_LANES
    assert sum("more deployments than kept apart" in r.getMessage() for r in caplog.records) == 1
