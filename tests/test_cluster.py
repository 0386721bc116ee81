"""Three hosts sharing only PostgreSQL, Redis and S3 (`make cluster`): every claim of
`adapters_app/management/multi_host.py` checked against a cluster of its own (a private
PostgreSQL cluster and Redis, SeaweedFS, three hosts of a training and a serving worker
each, beat and the web server), started once by one `manage.py cluster --show`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUN_TIMEOUT = 900  # a cluster start and the four claims take a few minutes


@pytest.fixture(scope="module")
def checks(tmp_path_factory, cpu_lora_kernel) -> dict[str, dict]:
    """The cluster's checks by what they claim (each with `ok` and, when not, `detail`)."""
    out = tmp_path_factory.mktemp("cluster") / "checks.json"
    command = [sys.executable, "manage.py", "cluster", "--show", "--json", str(out)]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mintweb.settings"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = done.stdout + done.stderr
    if "the cluster could not start" in output:
        pytest.skip(output.strip().splitlines()[-1])
    assert out.exists(), f"manage.py cluster --show wrote no checks:\n{output[-4000:]}"
    print(output)  # what it showed, in the test's captured output
    outcome = json.loads(out.read_text())
    return {check["what"]: {**check, "notes": outcome["notes"]} for check in outcome["checks"]}


def holds(checks: dict, claim: str) -> None:
    check = checks.get(claim)
    assert check is not None, f"not checked: {claim!r} (checked: {list(checks)})"
    assert check["ok"], "\n".join([f"{claim}: {check['detail']}", *check["notes"]])


def test_a_revision_trained_on_one_host_is_served_by_another_from_the_store(checks):
    holds(checks, "the training job succeeded")
    holds(checks, "a revision trained on one host is served by another, loaded from S3")


def test_requests_prefer_the_host_where_the_revision_is_resident(checks):
    holds(checks, "requests prefer the host where the revision is resident, even when it is the busiest")


def test_erasing_a_person_removes_their_blobs_from_s3_and_from_every_host(checks):
    holds(checks, "the serving host held a copy before erasure")
    holds(checks, "erasure removed the blobs from S3")
    holds(checks, "erasure removed every host's copies")
    holds(checks, "no residency row names an erased revision")
    holds(checks, "the store no longer has them")


def test_a_host_killed_mid_job_has_its_job_failed_and_its_requests_served_elsewhere(checks):
    holds(checks, "a job runs on every host")
    holds(checks, "the sweep failed the killed host's job")
    holds(checks, "the killed host's requests are served by another host")
