"""Reliability of an adapter footprint, and the smallest footprint that is reliable enough.

A study cell is one adapter footprint (base, rank, target modules, init) trained for
every (person, seed) of a cohort. Its reliability is defined over those runs
(docs/studies.md says the same in prose):

- pass rate: the share of runs whose scores pass the adapter gate, judged by `gates.judge`,
  the rule promotions use: a fleet adapter's own thresholds (pinned when the study was
  made), `gates.DEFAULT_GATE` for generated people;
- spread: per suite, the mean, the standard deviation and the worst run's score;
- collapse rate: the share of runs that collapsed, i.e. whose training loss stalled
  (the mean of the last tenth of the curve is above `STALL_RATIO` of the first tenth's)
  or whose personal suites score no better than the bare base's on the same items.

The recommendation, per base, is the cell with the fewest stored bytes whose pass rate
reaches the operator's target (ties: fewer parameters, then the lower rank). Cells with
too few runs to judge are never recommended.

Pure functions over plain values: no database access.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters_app.lifecycle.gates import DEFAULT_GATE, judge

# A run whose loss fell by less than a quarter from the start of training to its end
# learned nothing worth the name.
STALL_RATIO = 0.75
# The suites that measure what the person's adapter should have learned.
PERSONAL_SUITES = ("recall", "tool", "preference")
SUITES = ("recall", "tool", "preference", "leakage", "retention")


@dataclass(frozen=True, slots=True)
class RunVerdict:
    passed: bool
    gate_failures: list[str]
    collapsed: bool
    collapse_reasons: list[str]


def judge_run(
    scores: dict[str, float],
    bare_scores: dict[str, float],
    losses: Sequence[float],
    gate: dict[str, dict[str, float]] = DEFAULT_GATE,
) -> RunVerdict:
    """Gate verdict (against `gate`) and collapse for one trained adapter."""
    failures = [str(check) for check in judge(scores, bare_scores, gate) if not check.passed]
    reasons = []
    if losses:
        tenth = max(1, len(losses) // 10)
        start, end = statistics.fmean(losses[:tenth]), statistics.fmean(losses[-tenth:])
        if end > STALL_RATIO * start:
            reasons.append(f"loss stalled ({start:.3f} -> {end:.3f}, above {STALL_RATIO:g} of the start)")
    own = [scores[s] for s in PERSONAL_SUITES if s in scores and s in bare_scores]
    bare = [bare_scores[s] for s in PERSONAL_SUITES if s in scores and s in bare_scores]
    if own and statistics.fmean(own) <= statistics.fmean(bare):
        reasons.append(
            f"personal suites {statistics.fmean(own):.3f}, no better than the bare base's "
            f"{statistics.fmean(bare):.3f}"
        )
    return RunVerdict(not failures, failures, bool(reasons), reasons)


@dataclass(frozen=True, slots=True)
class SuiteSpread:
    mean: float
    std: float
    worst: float


@dataclass(slots=True)
class CellReliability:
    runs: int
    pass_rate: float | None
    collapse_rate: float | None
    suites: dict[str, SuiteSpread] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "runs": self.runs,
            "pass_rate": self.pass_rate,
            "collapse_rate": self.collapse_rate,
            "suites": {
                name: {"mean": s.mean, "std": s.std, "worst": s.worst} for name, s in self.suites.items()
            },
        }


def cell_reliability(runs: Iterable) -> CellReliability:
    """Reliability over a cell's runs (objects with .passed, .collapsed and .scores)."""
    runs = list(runs)
    if not runs:
        return CellReliability(0, None, None)
    spreads = {}
    for suite in SUITES:
        values = [run.scores[suite] for run in runs if suite in run.scores]
        if values:
            std = statistics.pstdev(values) if len(values) > 1 else 0.0
            spreads[suite] = SuiteSpread(statistics.fmean(values), std, min(values))
    return CellReliability(
        runs=len(runs),
        pass_rate=sum(run.passed for run in runs) / len(runs),
        collapse_rate=sum(run.collapsed for run in runs) / len(runs),
        suites=spreads,
    )


@dataclass(frozen=True, slots=True)
class Footprint:
    """What the recommendation compares: one cell's cost and its reliability."""

    key: object  # the cell (or anything identifying it)
    base: str
    rank: int
    targets: str
    init: str
    payload_bytes: int
    stored_parameters: int
    reliability: CellReliability
    complete: bool  # every planned run was recorded


@dataclass(frozen=True, slots=True)
class Recommendation:
    base: str
    target: float
    chosen: Footprint | None
    # Smaller footprints that fell short, cheapest first: the evidence that nothing smaller will do.
    smaller_failing: list[Footprint]
    reason: str


def recommend(footprints: Sequence[Footprint], target: float) -> list[Recommendation]:
    """Per base, the smallest complete footprint whose pass rate reaches `target`."""
    out = []
    for base in sorted({f.base for f in footprints}):
        mine = sorted(
            (f for f in footprints if f.base == base and f.payload_bytes is not None),
            key=lambda f: (f.payload_bytes, f.stored_parameters, f.rank),
        )
        judged = [f for f in mine if f.complete and f.reliability.pass_rate is not None]
        chosen = next((f for f in judged if f.reliability.pass_rate >= target), None)
        if chosen is None:
            out.append(Recommendation(base, target, None, judged, _why_none(judged, target)))
            continue
        smaller = [f for f in judged if f.payload_bytes < chosen.payload_bytes]
        reason = (
            f"{chosen.payload_bytes:,} bytes ({chosen.stored_parameters:,} parameters stored): "
            f"{chosen.reliability.pass_rate:.0%} of {chosen.reliability.runs} runs pass, "
            f"{chosen.reliability.collapse_rate:.0%} collapse; "
            f"{len(smaller)} smaller footprint(s) fall short"
        )
        out.append(Recommendation(base, target, chosen, smaller, reason))
    return out


def _why_none(judged: Sequence[Footprint], target: float) -> str:
    reason = f"no finished cell reaches {target:.0%} of runs passing"
    best = max(judged, key=lambda f: f.reliability.pass_rate, default=None)
    if best is None:
        return reason
    if best.reliability.pass_rate == 0:
        # Naming a "best" among cells that all scored 0% would point at an arbitrary one.
        runs = sum(f.reliability.runs for f in judged)
        return f"{reason}; not one of {runs} runs in {len(judged)} finished cell(s) passed"
    return (
        f"{reason}; the best is {best.base} r{best.rank} {best.targets} {best.init} at "
        f"{best.reliability.pass_rate:.0%}"
    )
