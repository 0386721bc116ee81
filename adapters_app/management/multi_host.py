"""What three hosts sharing only PostgreSQL, Redis and S3 must show (`manage.py cluster --show`,
tests/test_cluster.py): each claim checked from answers, rows and the bucket's listing.

1. A revision trained on one host is served by another: the training host's serving
   worker is busy (requests in flight from other web processes, counted where routing
   counts them), so the router sends the first request to the least loaded host, which
   loads the blob from S3 and verifies its sha256 on the way.
2. Requests prefer the host where it is resident: with that host now the busiest, the
   next requests still go there, found in memory.
3. Erasing the person removes their blobs from S3 and from every host: no host's folder
   holds a file named by the revision any more, and no residency row is left.
4. A host killed mid-job: with a job running on each host, the host that also holds an
   adapter in memory is SIGKILLed. The sweep (beat, on no host) fails its job; requests
   for its adapter are answered by another host.
"""

from __future__ import annotations

import contextlib
import time

from adapters_app.chaos.scenarios import Outcome, Scenario
from adapters_app.management.cluster import SERVE, Cluster, host_of, node

QUESTION = "What is my dog called?"
SWEEP_PATIENCE = 60.0  # seconds for the sweep to fail a dead host's job (stale after 8 s, swept every 2 s)


@contextlib.contextmanager
def busy(worker_name: str, requests: int = 4):
    """`requests` in flight on the worker, as other web processes' requests would be: the
    router's shared load counter (Redis) counts them, and it picks the least loaded."""
    from adapters_app.lifecycle.routing import Dispatched, Route, worker_queue

    route = Route(worker_queue(worker_name), worker_name, "cold")
    held = [Dispatched(route).begin() for _ in range(requests)]
    try:
        yield
    finally:
        for dispatched in held:
            dispatched.end()


class MultiHost(Scenario):
    name = "multi-host"
    fault = "three hosts sharing only PostgreSQL, Redis and S3; one killed mid-job"
    in_flight = "a training job per host, requests for adapters resident on them"

    stack: Cluster

    def run(self, outcome: Outcome) -> None:
        served_on = self.cross_host_and_affinity(outcome)
        self.erasure_across_hosts(outcome, served_on)
        self.host_killed_mid_job(outcome)

    # --- 1 and 2 ----------------------------------------------------------------------------

    def cross_host_and_affinity(self, outcome: Outcome) -> str:
        from adapters_app.lifecycle import routing
        from adapters_app.models import Job

        dataset = self.person("ada")
        job_id = self.train("ada", dataset, steps=12)
        job = self.wait_final([job_id])[job_id]
        if not outcome.check("the training job succeeded", job.state == Job.SUCCEEDED, job.error[:300]):
            return ""
        trained_on = host_of(job.worker)
        model = f"ada/assistant@{job.result_revision.label}"
        with busy(node(SERVE, trained_on)):
            loads = routing.current_loads([node(SERVE, host) for host in self.stack.hosts])
            first = self.ask(model)
        outcome.notes.append(f"loads the router saw: {loads}")
        served_on, route = host_of(first.get("worker") or ""), first.get("route")
        outcome.notes.append(f"{model}: trained on {trained_on}, served by {served_on} ({route})")
        outcome.check(
            "a revision trained on one host is served by another, loaded from S3",
            served_on not in ("", trained_on) and route == "cold",
            f"trained on {trained_on}, served by {served_on or first.get('error')} ({route})",
        )
        self.until_reported(served_on, job.result_revision.sha256)
        with busy(node(SERVE, served_on), requests=8):
            again = [self.ask(model) for _ in range(3)]
        where = [(host_of(a.get("worker") or ""), a.get("route")) for a in again]
        outcome.check(
            "requests prefer the host where the revision is resident, even when it is the busiest",
            all(w == (served_on, "resident") for w in where),
            f"answered by {where}",
        )
        return served_on

    # --- 3 ----------------------------------------------------------------------------------

    def erasure_across_hosts(self, outcome: Outcome, served_on: str) -> None:
        from adapters_app.lifecycle.storage import get_store
        from adapters_app.models import ResidentAdapter, Revision

        shas = list(Revision.objects.filter(adapter__person__handle="ada").values_list("sha256", flat=True))
        if not shas:
            outcome.check("the person to erase has revisions", False, "none")
            return
        held = self.files_named(shas)
        outcome.notes.append(f"before erasure: blobs on hosts {sorted(held)}; in S3: {self.in_s3(shas)}")
        outcome.check("the serving host held a copy before erasure", served_on in held, f"on {sorted(held)}")
        self.must("post", "/api/people/ada/erase", {"reason": "the person asked"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (self.files_named(shas) or self.in_s3(shas)):
            time.sleep(0.5)
        left_on_hosts, left_in_s3 = self.files_named(shas), self.in_s3(shas)
        outcome.check("erasure removed the blobs from S3", not left_in_s3, f"{left_in_s3} left")
        outcome.check("erasure removed every host's copies", not left_on_hosts, f"left on {left_on_hosts}")
        rows = ResidentAdapter.objects.filter(sha256__in=shas).count()
        outcome.check("no residency row names an erased revision", not rows, f"{rows} rows")
        outcome.check("the store no longer has them", not any(get_store().exists(s) for s in shas))

    def files_named(self, shas: list[str]) -> dict[str, int]:
        """Per host, how many files under its MINT_VAR_DIR are named by one of `shas`."""
        found = {}
        for host in self.stack.hosts:
            files = (path for path in self.stack.host_var(host).rglob("*") if path.is_file())
            count = sum(1 for path in files if path.name[:64] in shas)
            if count:
                found[host] = count
        return found

    def in_s3(self, shas: list[str]) -> int:
        client = self.stack.s3.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.stack.bucket)
        keys = [item["Key"] for page in pages for item in page.get("Contents", ())]
        return sum(1 for key in keys if any(sha in key for sha in shas))

    # --- 4 ----------------------------------------------------------------------------------

    def host_killed_mid_job(self, outcome: Outcome) -> None:
        from adapters_app.lifecycle import liveness
        from adapters_app.models import Job

        [model] = self.live_adapters("kept", 1)
        first = self.ask(model)
        victim = host_of(first.get("worker") or "")
        dataset = self.person("bea")
        jobs = [self.train("bea", dataset, steps=3000) for _ in self.stack.hosts]
        if not outcome.check("a job runs on every host", self.all_running(jobs), "not all running in time"):
            return
        on_victim = Job.objects.get(pk__in=jobs, worker=f"train@{victim}").pk
        killed_at = time.monotonic()
        self.stack.kill_host(victim)
        outcome.notes.append(f"killed {victim}: it ran job {on_victim} and held {model} in memory")
        # The router passes over a host once its lease lapses (MINT_WORKER_LEASE_SECONDS);
        # a request sent before that waits on the dead host (the notes in README say so).
        gone = self.until(lambda: not liveness.is_alive(node(SERVE, victim)), killed_at, 30)
        outcome.notes.append(f"{victim}'s lease lapsed {gone}s after the kill")
        after = self.ask(model, timeout=60)
        answered_by = host_of(after.get("worker") or "")
        outcome.check(
            "the killed host's requests are served by another host",
            answered_by not in ("", victim),
            f"answered by {answered_by or after.get('error')}",
        )
        swept = lambda: Job.objects.get(pk=on_victim).state == Job.FAILED  # noqa: E731
        failed = self.until(swept, killed_at, SWEEP_PATIENCE)
        outcome.recovered_s = failed
        outcome.check("the sweep failed the killed host's job", failed is not None, "still not failed")
        if failed is not None:
            error = Job.objects.get(pk=on_victim).error.splitlines()[0][:160]
            outcome.notes.append(f"job {on_victim}: {error}")
        for job_id in jobs:  # the others need not run their 3000 steps
            if job_id != on_victim:
                self.client.call("post", f"/api/jobs/{job_id}/cancel", {})

    def all_running(self, job_ids: list[int], timeout: float = 120) -> bool:
        from adapters_app.models import Job

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = list(Job.objects.filter(pk__in=job_ids).values_list("state", "step"))
            if all(state == Job.RUNNING and step > 0 for state, step in states):
                return True
            time.sleep(0.25)
        return False

    # --- asking -----------------------------------------------------------------------------

    def ask(self, model: str, timeout: float = 60) -> dict:
        """The answer's `mint` block: which worker served it and why; on failure, `error`."""
        answer = self.client.chat(model, QUESTION, max_tokens=8, timeout=timeout)
        if not answer.ok:
            return {"error": f"{answer.status} {answer.detail[:200]}"}
        return (answer.body or {}).get("mint") or {}

    def until_reported(self, host: str, sha256: str, timeout: float = 30) -> None:
        """Until the host's serving worker has reported holding the revision (routing reads rows)."""
        from adapters_app.models import ResidentAdapter

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ResidentAdapter.objects.filter(
                worker__name=node(SERVE, host), sha256=sha256, tier__in=ResidentAdapter.MEMORY_TIERS
            ).exists():
                return
            time.sleep(0.2)
