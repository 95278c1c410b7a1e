"""A deployment a backend lacks (404 DeploymentNotFound) fails over and is set aside on that backend;
other 4xx stay the caller's, counted as rejected (DESIGN 2.5, issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
from _unit_support import A, B, C, MakeLb, post, routing, stats_by_id

from openai_priority_loadbalancer import Backend, MemoryStateStore


class CooldownsOnly(MemoryStateStore):
    """A store sharing cooldowns but not budgets: read with ``load`` before every choice."""

    reserve = areserve = report = areport = None  # type: ignore[assignment]


CHAT = "https://caller.example/openai/deployments/{}/chat/completions?api-version=2024-06-01"
NOT_FOUND = (404, {"content-type": "application/json"})


def lacking(router: Any, host: str, deployment: str) -> None:
    """``host`` answers 404 for ``deployment`` (in the path or a v1 body's model), 200 otherwise."""

    def answer(request: Any) -> Any:
        names = request.url.path.split("/")
        has = deployment not in names and f'"model":"{deployment}"' not in request.content.decode()
        if has:
            return router.lib.Response(200, json={"host": host})
        return router.lib.Response(404, json={"host": host, "error": {"code": "DeploymentNotFound"}})

    router.always(host, answer)


def test_fails_over_and_sets_the_deployment_aside_on_that_backend(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    lacking(router, A, "gpt-4o")
    lb = make_lb([Backend(A, 1), Backend(B, 2)], missing_deployment_s=120)
    client = client_for(lb)
    first = post(client, CHAT.format("gpt-4o"))
    assert (first.status_code, first.json()) == (200, {"host": B})
    assert [(a.backend, a.status) for a in routing(first).attempts] == [(A, 404), (B, 200)]
    for _ in range(5):
        assert post(client, CHAT.format("gpt-4o")).json() == {"host": B}
    assert post(client, CHAT.format("embed")).json() == {"host": A}  # only that deployment is set aside
    assert len(router.for_host(A)) == 2
    clock.advance(120)
    assert post(client, CHAT.format("gpt-4o")).json() == {"host": B}  # A asked again: still lacking
    assert len(router.for_host(A)) == 3
    assert stats_by_id(lb)[A].rejected == 2
    assert stats_by_id(lb)[A].cooling_down_for_s == 0  # the deployment is passed over, not set aside
    assert stats_by_id(lb, "embed")[A].rejected == 0  # a row per deployment: embed was served


def test_a_deployment_that_exists_nowhere_gets_the_last_404_after_one_try_each(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    for host in (A, B, C):
        lacking(router, host, "nowhere")
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2), Backend(C, 3)]))
    response = post(client, CHAT.format("nowhere"))
    assert (response.status_code, response.json()["host"]) == (404, C)
    assert [a.backend for a in routing(response).attempts] == [A, B, C]
    again = post(client, CHAT.format("nowhere"))  # set aside everywhere: one try, its 404 is final
    assert again.status_code == 404
    assert len(routing(again).attempts) == 1
    assert post(client, CHAT.format("gpt-4o")).json() == {"host": A}


def test_v1_reads_the_deployment_from_the_model(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    lacking(router, A, "gpt-4o")
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    url = "https://caller.example/openai/v1/chat/completions"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post(url, json=body).json() == {"host": B}
    assert client.post(url, json=body).json() == {"host": B}
    assert client.post(url, json={**body, "model": "other"}).json() == {"host": A}
    assert len(router.for_host(A)) == 2


def test_another_404_on_a_deployment_goes_to_the_caller(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    router.script(A, (404, {"x-ms-error-code": "NotFound"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    response = post(client_for(lb), CHAT.format("gpt-4o"))
    assert (response.status_code, response.json()) == (404, {"host": A})
    assert router.hosts == [A]


def test_a_404_naming_no_deployment_goes_to_the_caller(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.always(A, NOT_FOUND)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    response = client.get("https://caller.example/openai/models?api-version=2024-06-01")
    assert response.status_code == 404
    assert router.hosts == [A]
    assert stats_by_id(lb)[A].rejected == 1


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
def test_other_4xx_stay_the_callers_and_are_counted(
    make_lb: MakeLb, router: Any, client_for: Any, status: int
) -> None:
    router.script(A, status)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert post(client).status_code == status
    assert router.hosts == [A]
    stats = lb.stats()
    a = stats_by_id(lb)[A]
    assert (a.requests, a.successes, a.rejected, a.throttled, a.failures) == (1, 0, 1, 0, 0)
    assert stats.total.rejected == 1
    table = str(stats).splitlines()
    assert "rejected" in table[0]
    column = table[0].split().index("rejected")
    assert table[2].split()[column] == "1"


def test_missing_deployment_s_is_validated(make_lb: MakeLb) -> None:
    with pytest.raises(ValueError, match="missing_deployment_s"):
        make_lb([Backend(A, 1)], missing_deployment_s=-1)
    with pytest.raises(TypeError, match="missing_deployment_s"):
        make_lb([Backend(A, 1)], missing_deployment_s="5")


@pytest.mark.parametrize("store_kind", ["memory", "cooldowns only"])
def test_a_missing_deployment_found_by_one_balancer_is_skipped_by_the_others(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, store_kind: str
) -> None:
    store = MemoryStateStore(clock=clock) if store_kind == "memory" else CooldownsOnly(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    lacking(router, A, "gpt-4o")
    one = make_lb(backends, state=store, missing_deployment_s=120)
    two = make_lb(backends, state=store, missing_deployment_s=120)
    assert post(client_for(one), CHAT.format("gpt-4o")).json() == {"host": B}
    router.requests.clear()
    for _ in range(3):
        assert post(client_for(two), CHAT.format("gpt-4o")).json() == {"host": B}
    assert post(client_for(two), CHAT.format("embed")).json() == {"host": A}  # that deployment only
    assert router.hosts == [B, B, B, A]
    clock.advance(120)  # the mark has expired: A is asked again
    assert post(client_for(two), CHAT.format("gpt-4o")).json() == {"host": B}
    assert router.hosts[-2:] == [A, B]


def test_a_deployment_missing_everywhere_still_gets_its_404_through_a_budget_store(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    for host in (A, B):
        lacking(router, host, "nowhere")
    backends = [Backend(A, 1), Backend(B, 2)]
    post(client_for(make_lb(backends, state=store)), CHAT.format("nowhere"))
    response = post(client_for(make_lb(backends, state=store)), CHAT.format("nowhere"))
    assert response.status_code == 404  # not the balancer's 429: the marks refuse no reservation
    assert len(routing(response).attempts) == 1
