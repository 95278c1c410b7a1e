"""Budget bookkeeping: what each backend's answers say of its budget, believed until its window ends,
and the reports a shared budget store is waiting for.

No I/O and no lock of its own (the balancer holds its lock around every call but the store's
arguments, which take it); it sets a backend aside through the balancer's own ``set_aside``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._cooldown import LIMIT_REQUESTS, header
from ._store import BudgetReport

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from ._cooldown import RateLimitInfo
    from ._state import BackendState

__all__ = ["ADMISSION_DELAY_S", "Budgets", "Pending", "int_header"]

#: The longest a backend is assumed to take to admit an attempt after it is sent (one network hop).
ADMISSION_DELAY_S: Final = 0.05
# How long a window is believed to last while the backend has named no reset and no wait: the shortest
# window Azure OpenAI meters requests over. Too short costs a 429 (whose wait then teaches the window).
_FIRST_WINDOW_GUESS_S: Final = 1.0

#: A budget report waiting to reach the store: remaining requests, the window's reset (monotonic),
#: limit, whether the reset is an estimate (the backend named none), and the tokens believed left.
Pending = tuple[int | None, float, int | None, bool, int | None]


class Budgets:
    """The budget beliefs of one balancer, and its reports pending for a shared budget store.

    Args:
        sharing: whether a budget store shares the budgets (then every answer's reset is read).
        default_cooldown_s: how long a report naming no reset is believed, at most.
        rate_limit: reads an answer's rate-limit headers with the balancer's clock and bounds.
        set_aside: sets a backend aside: (state, now, seconds, reason, cause).
        lock: the balancer's lock, taken to swap the pending reports.
        takes_cost: whether the store's ``reserve`` takes a request's token cost (a store written
            before token budgets were shared does not: it is given the four arguments it knows).
    """

    def __init__(
        self,
        *,
        sharing: bool,
        default_cooldown_s: float,
        rate_limit: Callable[[Any], RateLimitInfo],
        set_aside: Callable[[BackendState, float, float, str, object], None],
        lock: threading.Lock,
        takes_cost: bool = True,
    ) -> None:
        self._takes_cost = takes_cost
        self._sharing = sharing
        self._default_cooldown_s = default_cooldown_s
        self._rate_limit = rate_limit
        self._set_aside = set_aside
        self._lock = lock
        #: Budget reports waiting to ride along with the next reservation, by the state's store key.
        self.pending: dict[str, Pending] = {}

    def window_s(self, state: BackendState) -> float:
        """How long a window of a backend that names no reset lasts: as long as the longest reset or
        wait it named, if that is longer than the first guess, and never more than
        ``default_cooldown_s``. (A wait seen is what was left of a window, often less than one: too
        short a window costs a 429, whose wait then shows more.)"""
        window = state.window_s
        if window is None or window < _FIRST_WINDOW_GUESS_S:
            window = _FIRST_WINDOW_GUESS_S
        return min(window, self._default_cooldown_s)

    def report(
        self,
        state: BackendState,
        headers: Any,
        info: RateLimitInfo | None,
        admitted: float,
        remaining: int | None,
    ) -> Pending:
        """A pending budget report (see ``Pending``) from a success's headers, after :meth:`note`
        recorded it: the tokens are those it left believed (net of the attempts in flight).

        When the backend names no reset, the window is estimated to end one window (as long as the
        backend's answers have shown, see :meth:`window_s`) after this attempt was admitted. The store
        starts a counter with that estimate only from the answer of the window's probe, and never
        moves a counter's end for an estimate: the window ends as the probe's answer says.
        """
        if info is None:
            info = self._rate_limit(headers)
        limit = int_header(headers, LIMIT_REQUESTS, None)
        if info.reset_requests_s is not None:
            return remaining, admitted + info.reset_requests_s, limit, False, state.remaining_tokens
        return remaining, admitted + self.window_s(state), limit, True, state.remaining_tokens

    def note(
        self,
        state: BackendState,
        seq: int,
        headers: Any,
        admitted: float,
        remaining_requests: int | None,
        remaining_tokens: int | None,
        info: RateLimitInfo | None = None,
        cost: int = 0,
    ) -> tuple[float, int | None, int | None] | None:
        """Remember the budget a success reported; set the backend aside until a known reset if it is spent.

        ``seq`` numbers the attempt among those sent to the backend; a report older than the one kept
        is ignored. The report counts what the backend admitted before this attempt, and a backend
        may admit concurrent attempts in any order: the attempts still in flight are taken off it,
        and those sent afterwards as they go.

        While the budget is far from spent, that is all (a few header lookups per answer), and the
        report is believed for ``default_cooldown_s``. Once it is nearly spent, the reset headers are
        read too: the report is believed until the reset, and a spent backend is set aside until
        then. The backend computed its reset when it admitted the attempt, so the reset counts from
        then (``admitted``), not from the (later) answer.

        A backend that names no reset (Azure OpenAI names none on a success) is believed spent only
        until its window would end: one window (:meth:`window_s`) after the window's first answer
        here was admitted. Without a budget store it is set aside until then, and the next request
        then goes alone; with one, the store's counter decides when the fleet may send again.

        Tokens likewise: the attempts in flight are taken off a tokens report at this attempt's
        ``cost`` each, and the costs sent afterwards as they go. A report that leaves less than
        ``cost`` (no room for another request like this one) counts as spent, until the tokens' reset.

        ``info`` is the answer's headers read whole, if the caller read them already.

        Returns, if the backend was set aside: for how long, and the remaining requests and tokens
        it reported.
        """
        if seq < state.report_seq:
            return None
        now = admitted
        began = state.window_began
        if began is None or now >= began + self.window_s(state):
            state.window_began = began = now  # the first answer of a window (as far as is known)
        state.report_seq = seq
        state.remaining_seq = state.sent
        believed = None if remaining_requests is None else max(0, remaining_requests - state.in_flight)
        state.remaining_requests = believed
        tokens = None if remaining_tokens is None else max(0, remaining_tokens - state.in_flight * cost)
        state.remaining_tokens = tokens
        state.tokens_mark = state.cost_sent
        short = tokens is not None and cost > 0 and tokens < cost
        state.budget_estimated = False
        if not ((believed is not None and believed <= 1) or remaining_tokens == 0 or short):
            state.budget_expires = now + self._default_cooldown_s
            return None
        state.limit_requests = int_header(headers, LIMIT_REQUESTS, state.limit_requests)
        if info is None:
            info = self._rate_limit(headers)
        reset = (
            info.reset_tokens_s if info.remaining_tokens == 0 or short else info.reset_requests_s
        ) or info.cooldown_s
        if reset:
            state.learn_window(reset)
            state.budget_expires = now + reset
            if state.budget_exhausted(now) or short:
                self._set_aside(state, now, reset, "exhausted", None)
                state.reported = (remaining_requests, remaining_tokens)
                state.refill(state.cooling_until + self._default_cooldown_s)
                return reset, remaining_requests, remaining_tokens
            return None
        # No reset named: believed until the window would end, and no longer.
        reset = began + self.window_s(state) - now
        state.budget_expires = now + reset
        state.budget_estimated = True
        if not self._sharing and reset > 0 and (state.budget_exhausted(now) or short):
            # When it ends, the belief does (see budget_exhausted), and one request finds out what the
            # window holds.
            self._set_aside(state, now, reset, "exhausted", "no reset named")
            return reset, remaining_requests, remaining_tokens
        return None

    def reserve_args(
        self, state: BackendState, keys: list[str], now: float, cost: int = 0
    ) -> tuple[Any, ...]:
        """Arguments of ``BudgetStore.reserve`` for ``state``'s backend (``keys``: its lane's), with the
        budget reports pending and the request's token ``cost``."""
        with self._lock:
            pending, self.pending = self.pending, {}
            # The window's probe (if this is it) holds the other balancers back as long as it does ours.
            hold = state.probe_hold_s()
        reports = [
            BudgetReport(key, remaining, reset_at - now, limit, estimated, tokens)
            for key, (remaining, reset_at, limit, estimated, tokens) in pending.items()
            if reset_at > now  # a report of a window that has ended since says nothing of this one
        ]
        if self._takes_cost:
            return (keys, state.index, reports, hold, cost)
        return (keys, state.index, reports, hold)

    def probe_report(self, state: BackendState, now: float) -> list[BudgetReport]:
        """What the window's shared probe found, for every balancer: the budget its answer reported,
        else that nothing is known (which ends the probe, so that the next request may try)."""
        with self._lock:
            pending = self.pending.pop(state.key, None)
        key = state.key
        if pending is None or pending[1] <= now:
            return [BudgetReport(key, 0, 0.0, None)]  # reset_s 0: forget the counter
        remaining, reset_at, limit, estimated, tokens = pending
        return [BudgetReport(key, remaining, reset_at - now, limit, estimated, tokens)]


def int_header(headers: Any, names: tuple[str, ...], default: int | None) -> int | None:
    _, value = header(headers, names)
    if value is None:
        return default
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 12 else default
