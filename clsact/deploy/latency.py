"""Latency of one inference call, measured so that the number can be trusted.

Warm-up calls (first-call graph optimisation, allocator growth, oneDNN primitive caches) are
excluded. Calls are then timed in rounds until the median of all timed calls moves by less
than ``tolerance`` between two rounds (at least ``min_runs`` calls), or the time budget is
spent; the result says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Per-call latency of one batch size: percentiles in milliseconds."""

    batch: int
    p50_ms: float
    p90_ms: float
    runs: int
    warmup: int
    stable: bool  # the median settled within the tolerance before the budget ran out

    @property
    def images_per_second(self) -> float:
        """Throughput at the median latency."""
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float | int | bool]:
        """JSON form, with images/s."""
        return {"batch": self.batch, "p50_ms": round(self.p50_ms, 4),
                "p90_ms": round(self.p90_ms, 4), "runs": self.runs, "warmup": self.warmup,
                "stable": self.stable, "images_per_second": round(self.images_per_second, 2)}


def measure(call: Callable[[], object], batch: int, *, warmup: int = 5, round_size: int = 10,
            min_runs: int = 20, max_runs: int = 1000, budget_s: float = 20.0,
            tolerance: float = 0.02, clock: Callable[[], float] = time.perf_counter) -> Latency:
    """Time ``call`` (one inference of a batch of ``batch`` images).

    Raises:
        ValueError: a count or the tolerance is not positive.
    """
    if min(warmup + 1, round_size, min_runs, max_runs) < 1 or tolerance <= 0:
        raise ValueError("warmup >= 0, round_size, min_runs, max_runs >= 1 and tolerance > 0")
    for _ in range(warmup):
        call()
    times: list[float] = []
    previous: float | None = None
    stable = False
    start = clock()
    while len(times) < max_runs:
        for _ in range(min(round_size, max_runs - len(times))):
            t0 = clock()
            call()
            times.append(clock() - t0)
        median = float(np.median(times))
        if len(times) >= min_runs and previous is not None and \
                abs(median - previous) <= tolerance * previous:
            stable = True
            break
        previous = median
        if clock() - start > budget_s:
            break
    ms = np.asarray(times) * 1000.0
    return Latency(batch, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                   len(times), warmup, stable)


def interleaved(calls: dict[str, Callable[[], object]], *, rounds: int = 9, per_round: int = 20,
                warmup: int = 5, clock: Callable[[], float] = time.perf_counter
                ) -> dict[str, list[float]]:
    """Per-round median latency (ms) of each call, the calls taking turns round by round
    (A B C, A B C, ...): load that comes and goes on a shared machine hits them alike, so
    ratios between them (:func:`paired_ratio`) hold where separate measurements drift.

    Raises:
        ValueError: no calls, or a count below 1.
    """
    if not calls or min(rounds, per_round) < 1 or warmup < 0:
        raise ValueError("at least one call; rounds, per_round >= 1; warmup >= 0")
    for call in calls.values():
        for _ in range(warmup):
            call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(per_round):
                t0 = clock()
                call()
                times.append(clock() - t0)
            out[name].append(float(np.median(times)) * 1000.0)
    return out


def paired_ratio(rounds: dict[str, list[float]], slow: str, fast: str) -> float:
    """The median over rounds of ``slow``'s latency / ``fast``'s (> 1: ``fast`` is faster)."""
    return float(np.median(np.asarray(rounds[slow]) / np.asarray(rounds[fast])))
