"""Token budgets: a backend whose believed remaining tokens cannot fit a request ranks like a spent one
(DESIGN 10): the choice alone, then through the balancer."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from _unit_support import A, B, MakeLb, post

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer._choice import Choice, rank
from openai_priority_loadbalancer._cost import estimate_cost
from openai_priority_loadbalancer._state import BackendState

NOW = 1000.0


def _states(n: int = 2) -> list[BackendState]:
    return [BackendState(Backend(f"h{i}.example", 1), i) for i in range(n)]


def test_a_backend_that_cannot_fit_the_cost_ranks_after_one_that_can() -> None:
    short, roomy = _states()
    short.remaining_tokens, short.budget_expires = 1000, NOW + 5
    roomy.remaining_tokens, roomy.budget_expires = 5000, NOW + 5
    roomy.in_flight = 3  # busier, yet first: the other cannot fit the request
    best, exhausted = rank([short, roomy], NOW, set(), cost=1500)
    assert (best, exhausted) == ([roomy], False)
    assert rank([short, roomy], NOW, set(), cost=900) == ([short], False)  # it fits: fewest in flight


def test_costs_sent_since_the_report_are_taken_off() -> None:
    (state,) = _states(1)
    state.remaining_tokens, state.budget_expires = 4000, NOW + 5
    state.probe_first = False  # its budget is known
    choice = Choice([state])
    rng = random.Random(0)
    for _ in range(2):
        chosen, probe, _ = choice.choose(NOW, set(), rng, 1500)
        assert (chosen, probe) == (state, False)
    assert state.tokens_short(NOW, 1500)  # 4000 - 3000 left
    chosen, probe, _ = choice.choose(NOW, set(), rng, 1500)
    assert chosen is None  # spent, and a request of it is in flight: one at a time
    assert state.believed_budget(NOW) == (None, 1000)


def test_a_report_is_not_believed_past_its_window() -> None:
    (state,) = _states(1)
    state.remaining_tokens, state.budget_expires = 10, NOW + 5
    assert state.tokens_short(NOW, 11)
    assert not state.tokens_short(NOW + 5, 11)
    assert not state.tokens_short(NOW, 10)


def _chat(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


def test_a_success_leaving_too_few_tokens_for_another_sets_the_backend_aside_until_the_reset(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "4s"}))
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)])) as client:
        assert post(client, json=_chat(1000)).json() == {"host": A}  # costs more than 900
        assert post(client, json=_chat(1000)).json() == {"host": B}
        assert post(client, json=_chat(10)).json() == {"host": B}  # set aside until the reset
        clock.advance(4)
        assert post(client, json=_chat(1000)).json() == {"host": A}


def test_a_success_with_room_for_another_keeps_the_backend(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "4s"}))
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)])) as client:
        assert post(client, json=_chat(1000)).json() == {"host": A}
        assert post(client, json=_chat(1000)).json() == {"host": A}


def test_embeddings_cost_no_output_tokens() -> None:
    body = json.dumps({"input": "x" * 40}).encode()
    assert estimate_cost(body, generates=False) == math.ceil(len(body) / 4)


@pytest.mark.parametrize("remaining", ["-1", "soon"])
def test_unknown_tokens_leave_the_backend_usable(
    make_lb: MakeLb, router: Any, lib: Any, remaining: str
) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-tokens": remaining, "x-ratelimit-reset-tokens": "4s"}))
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)])) as client:
        assert post(client, json=_chat(100_000)).json() == {"host": A}
        assert post(client, json=_chat(100_000)).json() == {"host": A}


def test_stats_show_what_a_set_aside_backend_last_reported(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    throttled = {
        "retry-after": "2",
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "120",
    }
    router.script(A, (429, throttled))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": B}
        a = lb.stats()[0]
        assert (a.cooling_down_for_s, a.remaining_requests, a.remaining_tokens) == (2, 0, 120)
        clock.advance(2)
        assert lb.stats()[0].remaining_requests == 5  # its window over: the next one's budget


def test_stats_show_the_spent_report_while_set_aside_until_its_reset(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    spent = {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "0"}
    router.script(A, (200, {**spent, "x-ratelimit-reset-requests": "3s"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": A}
        a = lb.stats()[0]
        assert (a.cooling_down_for_s, a.remaining_requests) == (3, 0)
