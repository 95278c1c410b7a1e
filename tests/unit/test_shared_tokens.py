"""Balancers sharing a BudgetStore share token budgets: what one learnt a deployment has left keeps the
others from sending it a request whose tokens cannot fit (DESIGN 10, issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
from _unit_support import CALLER_URL, A, B, MakeLb, post

from openai_priority_loadbalancer import Backend, BudgetReport, MemoryStateStore, Reservation, shared_key

# A's answer: 300 tokens left for the minute; no request budget to speak of.
TOKENS_LEFT = {"x-ratelimit-remaining-requests": "100", "x-ratelimit-remaining-tokens": "300"}
KEY_A = shared_key(Backend(A, 1)) + "#deployment=gpt-4o"
BIG = b'{"messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}], "max_tokens": 100}'


def test_a_token_budget_learnt_by_one_balancer_keeps_the_other_away(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    router.always(A, (200, TOKENS_LEFT))
    one, two = make_lb(backends, state=store), make_lb(backends, state=store)
    assert post(client_for(one), CALLER_URL, content=b"{}").json() == {"host": A}  # one learns: 300 left
    assert post(client_for(one), CALLER_URL, content=b"{}").json() == {"host": A}  # its report rides along
    router.requests.clear()
    # ~600 tokens (2,000 characters and 100 out): A cannot fit it, as the store knows from one's report.
    assert post(client_for(two), CALLER_URL, content=BIG).json() == {"host": B}
    assert router.hosts == [B]
    assert post(client_for(two), CALLER_URL, content=b"{}").json() == {"host": A}  # a small one fits


class FourArgumentStore(MemoryStateStore):
    """A budget store written before token budgets were shared: its reserve takes no cost."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reserved = 0

    def reserve(  # type: ignore[override]
        self, keys: Any, index: int, reports: Any, probe_ttl_s: float
    ) -> Reservation:
        self.reserved += 1
        return super().reserve(keys, index, reports, probe_ttl_s)


@pytest.mark.parametrize("cost_known", [False, True])
def test_a_store_whose_reserve_takes_no_cost_still_shares(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, cost_known: bool
) -> None:
    store = FourArgumentStore(clock=clock) if not cost_known else MemoryStateStore(clock=clock)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], state=store)
    for _ in range(3):
        assert post(client_for(lb), CALLER_URL, content=BIG).json() == {"host": A}
    if not cost_known:
        assert store.reserved == 3  # every attempt reserved, none failed for a missing argument


def test_reports_carry_the_tokens_believed_left(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    reports: list[BudgetReport] = []

    class Recording(MemoryStateStore):
        def report(self, batch: Any) -> None:
            reports.extend(batch)
            super().report(batch)

        def reserve(
            self, keys: Any, index: int, batch: Any, probe_ttl_s: float, cost: int = 0
        ) -> Reservation:
            reports.extend(batch)
            return super().reserve(keys, index, batch, probe_ttl_s, cost)

    lb = make_lb([Backend(A, 1)], state=Recording(clock=clock))
    router.always(A, (200, TOKENS_LEFT))
    post(client_for(lb), CALLER_URL, content=b"{}")  # the window's probe: reported at once
    assert [(r.key, r.remaining, r.remaining_tokens) for r in reports] == [(KEY_A, 100, 300)]


def _short_everywhere(store: MemoryStateStore, backends: list[Backend], tokens: int, reset_s: float) -> None:
    keys = [shared_key(b) + "#deployment=gpt-4o" for b in backends]
    store.report([BudgetReport(key, 50, reset_s, None, False, tokens) for key in keys])


def test_a_request_no_tokens_budget_can_fit_gets_a_429_naming_when_they_reset(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    _short_everywhere(store, backends, 100, 7.0)
    lb = make_lb(backends, state=store)
    refused = post(client_for(lb), CALLER_URL, content=BIG)
    assert refused.status_code == 429
    assert refused.headers["retry-after-ms"] == "7000"
    assert router.requests == []
    assert post(client_for(lb), CALLER_URL, content=b"{}").json() == {"host": A}  # a small one fits now


def test_a_request_waits_for_a_shared_token_budget_to_reset(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, fake_sleep: list[float]
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    _short_everywhere(store, backends, 100, 3.0)
    lb = make_lb(backends, state=store, max_wait_s=10)
    assert post(client_for(lb), CALLER_URL, content=BIG).json() == {"host": A}
    assert fake_sleep == [pytest.approx(3.0)]  # one wait, as long as the budget had left, not a poll


def test_the_429_names_a_cooldown_that_ends_before_the_token_budget_resets(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    store.report([BudgetReport(KEY_A, 50, 5.0, None, False, 100)])  # A: tokens back in 5 s
    router.always(B, (429, {"retry-after": "2"}))  # B: throttled for 2 s
    lb = make_lb(backends, state=store)
    post(client_for(lb), CALLER_URL, content=BIG)
    refused = post(client_for(lb), CALLER_URL, content=BIG)
    assert (refused.status_code, refused.headers["retry-after-ms"]) == (429, "2000")
