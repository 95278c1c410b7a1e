"""The choice among backends: the best priority with a usable backend, then the best of that tier.

Pure bookkeeping on the backends' states, no I/O and no lock of its own: the balancer holds its lock
around :meth:`Choice.choose`. Read alone, it says everything about where the next attempt goes.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from ._state import BackendState

__all__ = ["Choice", "rank"]

logger = logging.getLogger("openai-priority-loadbalancer")

# Tiers up to this size are scanned whole when choosing; larger ones are sampled (see Choice.choose).
_SCAN_LIMIT: Final = 32
_SAMPLE: Final = 16


class Choice:
    """The backends in tiers of one priority each, best first, and the choice among them."""

    __slots__ = ("_equal_weights", "_tier_cum_weights", "_tiers")

    def __init__(self, states: Sequence[BackendState]) -> None:
        priorities = sorted({s.backend.priority for s in states})
        self._tiers = [[s for s in states if s.backend.priority == p] for p in priorities]
        self._equal_weights = len({s.backend.weight for s in states}) == 1
        self._tier_cum_weights = [
            list(itertools.accumulate(s.backend.weight for s in tier)) if len(tier) > _SCAN_LIMIT else None
            for tier in self._tiers
        ]

    def choose(
        self, now: float, tried: set[int], rng: random.Random, cost: int = 0
    ) -> tuple[BackendState | None, bool, int]:
        """Pick the backend for the next attempt and count it in flight; state None if none is left.

        Returns the backend's state, whether the attempt is its one allowed probe, and the attempt's
        number among those sent to the backend.

        The best priority with a usable backend wins. Within it: backends whose budget is not known
        to be spent first, then the fewest requests in flight for their weight, then at random by
        weight. A backend that may take only one request at a time (a half-open breaker, a budget
        believed spent or not known after a 429) is passed over while that request is out.

        A tier of more than ``_SCAN_LIMIT`` backends is not scanned whole: the choice is the best of
        ``_SAMPLE`` of its backends drawn at random by weight, so choosing costs the same at any size
        (the whole tier is scanned only when none of the sample is usable).

        ``cost`` is the request's estimated tokens: a backend whose believed remaining tokens cannot
        fit it ranks like a spent one.
        """
        for tier, cum_weights in zip(self._tiers, self._tier_cum_weights, strict=True):
            if cum_weights is None:
                best, exhausted = rank(tier, now, tried, cost)
            else:
                sample = rng.choices(tier, cum_weights=cum_weights, k=_SAMPLE)
                # The sample is drawn by weight already: its first best member is the weighted pick.
                best, exhausted = rank(sample, now, tried, cost)
                if best:
                    best = best[:1]
                else:
                    best, exhausted = rank(tier, now, tried, cost)
            if not best:
                continue
            if len(best) == 1:
                chosen = best[0]
            elif self._equal_weights:
                chosen = best[int(rng.random() * len(best))]  # random.choice, in one call
            else:
                weights = [s.backend.weight for s in best]
                chosen = rng.choices(best, weights)[0]
            if chosen.cooling_reason is not None:
                logger.info("backend available again backend=%s", chosen.backend.id)
                chosen.cooling_reason = None
            # One request at a time while the budget is spent or unknown, or the breaker half-open
            # (the backend is usable now, so a failure count means the breaker is half-open).
            # An unknown budget is probed once: those let through after the probe's hold are not probes.
            probe = exhausted or chosen.failures > 0 or (chosen.probe_first and not chosen.probing)
            if probe and not chosen.probing:
                chosen.probing = True
                chosen.probe_sent_at = now
            chosen.in_flight += 1
            chosen.sent += 1
            chosen.cost_sent += cost
            chosen.requests += 1
            return chosen, probe, chosen.sent
        return None, False, 0


def rank(
    candidates: list[BackendState], now: float, tried: set[int], cost: int = 0
) -> tuple[list[BackendState], bool]:
    """The usable candidates that rank first (see :meth:`Choice.choose`), in the order given, and whether
    their budget is believed spent (the same for all of them: it is part of the rank)."""
    best: list[BackendState] = []
    best_key: tuple[bool, float] = (True, math.inf)
    for s in candidates:
        if now < s.cooling_until or s.index in tried:
            continue
        exhausted = s.budget_exhausted(now) or (cost > 0 and s.tokens_short(now, cost))
        if exhausted:
            if s.in_flight:
                continue  # one at a time: what is in flight will tell more
        elif s.probe_first and s.held_by_probe(now):
            continue  # the budget is unknown: its probe goes alone, for about a round trip
        if s.probing and s.failures:
            continue  # half-open: its one probe is out
        key = (exhausted, s.in_flight / s.backend.weight)
        if not best or key < best_key:
            best, best_key = [s], key
        elif key == best_key:
            best.append(s)
    return best, best_key[0]
