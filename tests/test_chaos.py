"""Fault injection (`make chaos`) as integration tests: every scenario of
`adapters_app/chaos/scenarios.py` runs against a private stack (its own PostgreSQL cluster,
Redis, web server and workers: the machine's services are never touched) in one
`manage.py chaos` process, and each scenario's row must show nothing lost, nothing
duplicated, every check passed and the stack working again afterwards.

Only the scenarios selected in this session run (`-k redis` starts one stack for those).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters_app.chaos.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.chaos]
# Past this the whole run (a stack start and every scenario, a few minutes) has hung.
RUN_TIMEOUT = 1500


@pytest.fixture(scope="session")
def chaos_outcomes(request, tmp_path_factory, cpu_lora_kernel) -> dict[str, dict]:
    """Run the session's selected scenarios in one `manage.py chaos`; their rows by name."""
    chosen = sorted(
        {
            item.callspec.params["scenario"]
            for item in request.session.items
            if item.nodeid.startswith("tests/test_chaos.py") and hasattr(item, "callspec")
        }
    )
    out = tmp_path_factory.mktemp("chaos") / "outcomes.json"
    command = [sys.executable, "manage.py", "chaos", "--json", str(out)]
    command += [arg for name in chosen for arg in ("--only", name)]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mintweb.settings"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = done.stdout + done.stderr
    if "private stack unavailable" in output:
        pytest.skip(output.strip().splitlines()[-1])
    assert out.exists(), f"manage.py chaos wrote no outcomes:\n{output[-4000:]}"
    print(output)  # the table, in the test's captured output
    return {row["name"]: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s.name, marks=[pytest.mark.slow] if s.slow else []) for s in SCENARIOS],
)
def test_the_fault_loses_and_duplicates_nothing_and_the_stack_recovers(scenario, chaos_outcomes):
    row = chaos_outcomes[scenario]
    if row["skipped"]:
        pytest.skip(row["skipped"])
    failed = [f"{c['what']}: {c['detail']}" for c in row["checks"] if not c["ok"]]
    assert not failed, "\n".join(failed + row["notes"])
    assert row["sent"] > 0
    assert (row["lost"], row["duplicated"]) == (0, 0), "\n".join(row["notes"])
    assert row["recovered_s"] is not None, "the stack never did work again"
