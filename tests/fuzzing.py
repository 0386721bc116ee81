"""What the fuzz tests share: their budget, and a count of the cases they ran.

The budget is fixed and derandomized, so `make test` (and CI) runs the same cases every
time; `make fuzz` sets FUZZ_EXAMPLES higher. The count is printed at the end of a run
(tests/conftest.py's pytest_terminal_summary), so the README's numbers come from a run.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

# Cases per API operation and role (schemathesis); each property (hypothesis) runs ten times
# as many, since its cases cost microseconds rather than a request.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
PROPERTY_EXAMPLES = 10 * EXAMPLES

CASES: Counter[str] = Counter()


def budget(examples: int = EXAMPLES) -> settings:
    """Hypothesis settings for a fuzz test: `examples` cases, the same ones every run."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        # The world a case runs against is built once per test, not per example.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )


def count(kind: str) -> None:
    """One more case of `kind` (an operation, or a property) ran."""
    CASES[kind] += 1


def summary() -> list[str]:
    """Lines for the end of the run: cases per kind, and the total."""
    if not CASES:
        return []
    width = max(map(len, CASES))
    lines = ["(each API operation's cases: as a viewer, an operator and an admin)"]
    lines += [f"{kind:<{width}}  {cases:>7}" for kind, cases in sorted(CASES.items())]
    lines.append(f"{'total':<{width}}  {sum(CASES.values()):>7} cases, {len(CASES)} kinds")
    return lines
