"""The simulated day's requests: Zipf popularity over a permutation of the adapters that
drifts, and retrains that give adapters new revisions.

Popularity is by rank: the adapter at rank k (0 first) is asked for with probability
∝ 1/(k+1)^zipf. Which adapter holds which rank is a permutation of all of them, and the
day is cut into epochs (five simulated minutes each by default); at every epoch's start
some ranks of the popular set (the top `popular` ranks) trade places with ranks drawn
from all of them, so that over the day about `drift` of the popular set is replaced by
adapters from anywhere: people who were busy go quiet, others start. Within an epoch
requests are independent draws (the inverse CDF, one bisection a draw, in C through
`random.choices`), arriving as a Poisson process at `requests / seconds` a second.

Retrains: `retrain_fraction` of the adapters are retrained over the day, spread evenly over the
epochs, each at most once. A retrained adapter is drawn from the same popularity as
requests (the people using their adapter are the ones giving feedback it is retrained
on), so the popular set is where most retrains fall, and its next request needs the new
revision: a new sha256 no worker holds yet. The old revision is
not forgotten anywhere (a promotion erases nothing), it just stops being asked for.

A revision's sha256 here is the adapter's number and its revision counter in hex, 64
characters, so the residency manager takes it as it takes a real one.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate


def revision_sha(adapter: int, revision: int) -> str:
    return f"{adapter:056x}{revision:08x}"


@dataclass(slots=True)
class TraceCounts:
    requests: int = 0
    retrains: int = 0
    swaps: int = 0


class DriftingZipf:
    """Yields the day's requests in time order (`requests()`), drifting and retraining as
    it goes. Two traces with one seed and one shape are the same, request for request."""

    def __init__(
        self,
        *,
        adapters: int,
        requests: int,
        seconds: float,
        zipf: float,
        popular: int,
        drift: float,
        retrain_fraction: float,
        epoch_seconds: float = 300.0,
        seed: int = 0,
    ):
        if adapters < 1 or requests < 1 or seconds <= 0:
            raise ValueError("a trace needs adapters, requests and a positive length")
        self.adapters, self.total, self.seconds = adapters, requests, seconds
        self.popular = min(popular, adapters)
        self.drift, self.retrain_fraction = drift, retrain_fraction
        self.epochs = max(1, round(seconds / epoch_seconds))
        self.rng = random.Random(seed)
        self.cum_weights = zipf_cum_weights(adapters, zipf)
        self.ranks = range(adapters)
        self.order = list(first_order(adapters, seed))  # rank -> adapter, drifting
        self.revisions: dict[int, int] = {}  # adapter -> its live revision (absent: 0)
        self.retrained: set[int] = set()  # today
        self.counts = TraceCounts()

    def requests(self) -> Iterator[tuple[float, str]]:
        """(simulated seconds since the day began, the revision's sha256), in time order."""
        rng, order, revisions, counts = self.rng, self.order, self.revisions, self.counts
        rate = self.total / self.seconds
        span = self.seconds / self.epochs
        at = 0.0
        for epoch in range(self.epochs):
            self._drift(epoch)
            self._retrain(epoch)
            wanted = _share(self.total, self.epochs, epoch)
            end = (epoch + 1) * span
            for rank in rng.choices(self.ranks, cum_weights=self.cum_weights, k=wanted):
                at = min(at + rng.expovariate(rate), end)
                adapter = order[rank]
                counts.requests += 1
                yield at, revision_sha(adapter, revisions.get(adapter, 0))
            at = end

    def _drift(self, epoch: int) -> None:
        swaps = _share(round(self.drift * self.popular), self.epochs, epoch)
        order, rng, n = self.order, self.rng, self.adapters
        for _ in range(swaps):
            top, anywhere = rng.randrange(self.popular), rng.randrange(n)
            order[top], order[anywhere] = order[anywhere], order[top]
        self.counts.swaps += swaps

    def _retrain(self, epoch: int) -> None:
        wanted = _share(round(self.retrain_fraction * self.adapters), self.epochs, epoch)
        # At most once a day each: a draw that finds one retrained already is drawn again,
        # a bounded number of times (the tail is hard to hit by popularity).
        for _ in range(100):
            if not wanted:
                break
            for rank in self.rng.choices(self.ranks, cum_weights=self.cum_weights, k=max(wanted, 64)):
                adapter = self.order[rank]
                if adapter not in self.retrained and wanted:
                    self.retrained.add(adapter)
                    self.revisions[adapter] = self.revisions.get(adapter, 0) + 1
                    self.counts.retrains += 1
                    wanted -= 1


@functools.cache
def zipf_cum_weights(adapters: int, zipf: float) -> tuple[float, ...]:
    """Cumulative weights of ranks 1..adapters; kept, since every policy's run needs them."""
    return tuple(accumulate(rank**-zipf for rank in range(1, adapters + 1)))


@functools.cache
def first_order(adapters: int, seed: int) -> tuple[int, ...]:
    """The day's first rank -> adapter permutation (a shuffle of a million takes a second)."""
    order = list(range(adapters))
    random.Random(seed).shuffle(order)
    return tuple(order)


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` cut into `parts` near-equal whole parts."""
    return total * (index + 1) // parts - total * index // parts
