"""Fault scenarios against a private stack (`stack.Stack`), each counting what it sent,
what came back, what was lost and what was duplicated, from rows and answers, not from
assumptions.

A scenario puts work in flight, injects one fault, waits for the stack to settle, then
counts. Counting rules, per kind of work:

- a training job (or a study cell) is *lost* unless it ended succeeded, or failed with a
  clear error and its one retry succeeded; a job still queued or running when the
  scenario's patience ends is lost. It is *duplicated* for every revision (or study run)
  beyond the one it should have made.
- a `/v1` stream is *lost* when it hung (no end within the client's bound) or ended in a
  clear error whose one retry failed too; it is *duplicated* when its text is not the
  text the same request gives afterwards, unstreamed (a piece sent twice, or skipped).
- a promote or rollback answered 200 is *lost* when no pointer event or audit event
  records it, *duplicated* for each extra event; the pointer's history must chain
  (each move starts where the previous ended) and end where the adapter points.

*Recovered* is the seconds from the fault until the stack next did the same kind of work:
the first successful probe (a `/v1` answer, an API write, a retried job) after it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from adapters_app.chaos.client import COMPLETE, HANG, Client, Streamed
from adapters_app.management.private_stack import Stack

FACTS = b"".join(
    b'{"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "%s"}]}\n' % pair
    for pair in [
        (b"What is my dog called?", b"Your dog is called Rex."),
        (b"Where do I live?", b"You live in Lisbon."),
        (b"What do I drink?", b"You drink green tea."),
    ]
)
QUESTION = "Tell me everything about my dog."
STREAM_TOKENS = 600  # long enough that a fault lands mid-answer
STREAM_BOUND = 90.0  # seconds a client waits for a whole streamed answer before calling it a hang
JOB_PATIENCE = 150.0  # seconds the scenario waits for its jobs to end


@dataclass(slots=True)
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Outcome:
    name: str
    fault: str
    in_flight: str
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    recovered_s: float | None = None
    seconds: float = 0.0
    skipped: str = ""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), "" if ok else detail))
        return bool(ok)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        return asdict(self)


class Scenario:
    """One fault; `run` fills an Outcome. Subclasses name the fault and what was in flight."""

    name = ""
    fault = ""
    in_flight = ""
    slow = False

    def __init__(self, stack: Stack, client: Client):
        self.stack, self.client = stack, client
        self.retried_from: dict[int, int] = {}  # a retry's job id -> the job it retried

    def __call__(self) -> Outcome:
        outcome = Outcome(self.name, self.fault, self.in_flight)
        started = time.monotonic()
        try:
            self.run(outcome)
        finally:
            outcome.seconds = round(time.monotonic() - started, 1)
        return outcome

    def run(self, outcome: Outcome) -> None:
        raise NotImplementedError

    # --- set-up through the API (the person's name is unique per scenario) ---------------

    def person(self, handle: str) -> int:
        """A person with an adapter `assistant` and a training set; the dataset's id."""
        self.must("post", "/api/people", {"handle": handle}, expect=201)
        self.must("post", f"/api/people/{handle}/adapters", {"name": "assistant"}, expect=201)
        dataset = self.must("post", f"/api/adapters/{handle}/assistant/datasets", raw=FACTS, expect=201)
        return dataset["id"]

    def must(self, method: str, path: str, body=None, *, raw=None, expect: int = 200):
        answer = self.client.call(method, path, body, raw=raw, timeout=60)
        if answer.status != expect:
            raise AssertionError(f"{method.upper()} {path}: {answer.status} {answer.detail}")
        return answer.body

    def live_adapters(self, prefix: str, count: int, revisions: int = 1) -> list[str]:
        """`count` people with an adapter holding `revisions` random-init revisions (made
        here, not trained: serving does not care what the factors learned), r1 live."""
        from adapters_app.lifecycle.actors import Actor
        from adapters_app.lifecycle.datasets import upload_dataset
        from adapters_app.lifecycle.people import create_adapter, create_person
        from adapters_app.lifecycle.pointer import promote
        from adapters_app.lifecycle.revisions import create_revision
        from adapters_app.management.commands.bench_serving import lora_target_shapes, random_payloads
        from workers.engine.base_models import load_base

        actor = Actor.system("chaos")
        base = self.stack.base
        shapes = lora_target_shapes(load_base(base.path, base.digest).model)
        models = []
        for index in range(count):
            person = create_person(f"{prefix}-{index}", actor=actor)
            adapter = create_adapter(person, "assistant", base=base, actor=actor)
            dataset = upload_dataset(person, FACTS, name="facts", actor=actor)[0]
            payloads = random_payloads(shapes, revisions, 8, seed=hash((prefix, index)) % 2**31)
            made = [
                create_revision(
                    adapter,
                    payload,
                    dataset=dataset,
                    parent=None,
                    job=None,
                    actor=actor,
                    training_config={"rank": 8, "alpha": 16, "init": "random", "steps": 0},
                )
                for payload in payloads.values()
            ]
            promote(made[0], actor=actor, override_reason="chaos: random-init adapter")
            models.append(f"{person.handle}/assistant")
        return models

    # --- probes: the stack doing work again --------------------------------------------

    def until(self, probe: Callable[[], bool], since: float, timeout: float = 120) -> float | None:
        """Seconds from `since` until `probe()` first succeeds (None: not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return round(time.monotonic() - since, 1)
            time.sleep(0.25)
        return None

    def answers(self, model: str) -> Callable[[], bool]:
        return lambda: self.client.chat(model, "Hello?", max_tokens=4, timeout=20).ok

    def writes(self) -> Callable[[], bool]:
        """An API call that writes a row (a new person)."""
        return lambda: self.client.call("post", "/api/people", {"handle": f"probe-{time.monotonic_ns()}"}).ok

    # --- jobs ----------------------------------------------------------------------------

    def train(self, handle: str, dataset: int, steps: int) -> int:
        body = {"dataset": dataset, "config": {"steps": steps, "seed": 1}}
        return self.must("post", f"/api/adapters/{handle}/assistant/train", body, expect=202)["id"]

    def settle_jobs(self, outcome: Outcome, job_ids: list[int], *, revisions: bool = True) -> dict[int, int]:
        """Wait for the jobs to end; retry each failed one once; count lost and duplicated.
        Returns, per original job, the job that finally succeeded for it (itself or its retry)."""
        from adapters_app.models import Job

        ended = self.wait_final(job_ids)
        finals: dict[int, int] = {}
        for job_id in job_ids:
            job = ended[job_id]
            if job.state == Job.SUCCEEDED:
                finals[job_id] = job_id
            elif job.state == Job.FAILED:
                outcome.notes.append(f"job {job_id} failed: {job.error.splitlines()[0][:160]}; retried")
                retry = self.retry(job)
                if self.wait_final([retry])[retry].state == Job.SUCCEEDED:
                    finals[job_id] = retry
        outcome.sent += len(job_ids)
        resent = [j for j in job_ids if "sent again" in ended[j].log]
        if resent:
            outcome.notes.append(f"{len(resent)} job(s) whose task the broker lost were re-sent by the sweep")
        stuck = [j for j in job_ids if ended[j].state not in Job.FINAL_STATES]
        outcome.check("every job ended", not stuck, f"still queued or running: {stuck}")
        outcome.lost += len(job_ids) - len(finals)
        if revisions:
            outcome.duplicated += self.extra_revisions(outcome, job_ids, succeeded=set(finals))
        return finals

    def retry(self, job) -> int:
        from adapters_app.lifecycle.actors import Actor
        from adapters_app.lifecycle.jobs import retry_job

        retried = retry_job(job, actor=Actor.system("chaos")).pk
        self.retried_from[retried] = job.pk
        return retried

    def wait_final(self, job_ids: list[int], timeout: float = JOB_PATIENCE) -> dict:
        from django.db import connection

        from adapters_app.models import Job

        deadline = time.monotonic() + timeout
        while True:
            connection.close()  # the database may have restarted under us
            try:
                jobs = {job.pk: job for job in Job.objects.filter(pk__in=job_ids)}
            except Exception:
                jobs = {}
            if len(jobs) == len(job_ids) and all(j.state in Job.FINAL_STATES for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline and len(jobs) == len(job_ids):
                return jobs
            time.sleep(0.5)

    def extra_revisions(self, outcome: Outcome, job_ids: list[int], *, succeeded: set[int]) -> int:
        """Revisions beyond one per job that succeeded (itself or by its retry), and any for
        one that did not; each revision must also have its blob stored."""
        from adapters_app.lifecycle.storage import get_store
        from adapters_app.models import Revision

        original = {job_id: job_id for job_id in job_ids}
        original |= {retry: first for retry, first in self.retried_from.items() if first in original}
        made = list(Revision.objects.filter(job_id__in=original))
        per_job = Counter(original[revision.job_id] for revision in made)
        wrong = {j: per_job[j] for j in job_ids if per_job[j] != (1 if j in succeeded else 0)}
        outcome.check(
            "one revision per job that succeeded, none otherwise", not wrong, f"job: revisions {wrong}"
        )
        blobless = [r.label for r in made if not get_store().exists(r.sha256)]
        outcome.check("every revision's blob is stored", not blobless, f"no blob: {blobless}")
        return sum(max(0, per_job[j] - (1 if j in succeeded else 0)) for j in job_ids)

    def running(self, job_id: int, timeout: float = 60) -> bool:
        from adapters_app.models import Job

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = Job.objects.get(pk=job_id)
            if job.state == Job.RUNNING and job.step > 0:
                return True
            if job.state in Job.FINAL_STATES:
                return False
            time.sleep(0.1)
        return False

    # --- streams -------------------------------------------------------------------------

    def warm(self, models: list[str]) -> dict[str, str]:
        """Load each model on a worker, all at once so routing spreads them over the serving
        workers (least loaded); later requests follow them there. Model -> worker."""

        def ask(model: str) -> str:
            body = self.client.chat_body(model, "Hi", 2, stream=False)
            return self.must("post", "/v1/chat/completions", body)["mint"]["worker"] or ""

        with ThreadPoolExecutor(len(models)) as pool:
            return dict(zip(models, pool.map(ask, models), strict=True))

    def stream_batch(
        self, models: list[str], fault: Callable[[], None], *, when: int = 2
    ) -> tuple[list[Streamed], float]:
        """Stream one answer per model at once; call `fault` once `when` of them have
        begun their text. Returns each stream's end and the time of the fault."""
        begun, lock, fired = [0], threading.Lock(), threading.Event()
        at = [0.0]

        def on_text():
            with lock:
                begun[0] += 1
                go = begun[0] == when
            if go:
                at[0] = time.monotonic()
                fault()
                fired.set()

        with ThreadPoolExecutor(len(models)) as pool:
            futures = [
                pool.submit(
                    self.client.stream, m, QUESTION, STREAM_TOKENS, timeout=STREAM_BOUND, on_text=on_text
                )
                for m in models
            ]
            ends = [f.result() for f in futures]
        if not fired.is_set():  # every stream ended before `when` began: fault now anyway
            at[0] = time.monotonic()
            fault()
        return ends, at[0]

    def count_streams(self, outcome: Outcome, models: list[str], ends: list[Streamed]) -> None:
        """Retry each stream that ended in a clear error once; a hang, or an error whose
        retry failed, is lost; a text that differs from the unstreamed answer is duplicated
        (or damaged) output."""
        outcome.sent += len(ends)
        kinds = Counter(end.outcome for end in ends)
        outcome.notes.append("streams: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        for model, end in zip(models, ends, strict=True):
            if end.outcome == HANG:
                outcome.lost += 1
                outcome.notes.append(f"{model}: hung ({end.detail}) after {end.seconds:.0f}s")
                continue
            text = end.text
            if end.outcome != COMPLETE:
                again = self.client.stream(model, QUESTION, STREAM_TOKENS, timeout=STREAM_BOUND)
                if again.outcome != COMPLETE:
                    outcome.lost += 1
                    outcome.notes.append(f"{model}: {end.detail}; retry: {again.outcome} {again.detail}")
                    continue
                text = again.text
            reference = self.client.chat(model, QUESTION, max_tokens=STREAM_TOKENS, timeout=60)
            if not reference.ok:
                outcome.check(f"{model} answers unstreamed", False, reference.detail)
                continue
            if text != reference.body["choices"][0]["message"]["content"]:
                outcome.duplicated += 1
                outcome.notes.append(f"{model}: streamed text differs from the unstreamed answer")
        waited = max((e.seconds for e in ends if e.outcome != COMPLETE), default=0)
        outcome.check("no stream hung", not kinds[HANG], f"{kinds[HANG]} hung")
        if waited:
            outcome.notes.append(f"slowest error reached its client after {waited:.1f}s")


# --- the scenarios --------------------------------------------------------------------------


class PointerMoves(Scenario):
    """Promote and rollback calls on one adapter, each with a reason of its own, so every
    answer can be matched with the pointer event and the audit event it made."""

    def moves(self, model: str, count: int):
        path = f"/api/adapters/{model}"

        def move(i: int):
            reason = f"chaos move {i}"
            if i % 3 == 2:
                return reason, self.client.call("post", f"{path}/rollback", {"reason": reason}, timeout=60)
            body = {"revision": f"r{1 + i % 4}", "reason": reason}
            return reason, self.client.call("post", f"{path}/promote", body, timeout=60)

        return [lambda i=i: move(i) for i in range(count)]

    def count_moves(self, outcome: Outcome, model: str, answers: list) -> None:
        from django.db import connection

        from adapters_app.models import Adapter, AuditEvent, PointerEvent

        connection.close()  # the database may have restarted under us
        handle = model.split("/")[0]
        adapter = Adapter.objects.get(person__handle=handle, name="assistant")
        outcome.sent = len(answers)
        statuses = Counter(answer.status for _, answer in answers)
        outcome.notes.append("answers: " + ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items())))
        events = list(PointerEvent.objects.filter(adapter=adapter).order_by("pk"))
        audits = list(
            AuditEvent.objects.filter(
                action__in=("adapter.promote", "adapter.rollback"), object_id=str(adapter.pk)
            ).order_by("pk")
        )
        by_reason = Counter(e.reason for e in events)
        audited = Counter((a.after or {}).get("reason", "") for a in audits)
        for reason, answer in answers:
            made, logged = by_reason[reason], audited[reason]
            if answer.status == 200:  # it moved: exactly one event and one audit row
                outcome.lost += (made == 0) + (logged == 0)
                outcome.duplicated += max(0, made - 1) + max(0, logged - 1)
            elif answer.status == 409:  # refused: nothing may have moved
                outcome.duplicated += made + logged
            else:  # a 503 from the fault: the commit's fate is unknown; at most one move either way
                outcome.duplicated += max(0, made - 1) + max(0, logged - 1)
                outcome.check(
                    f"{reason} moved as often as it was audited", made == logged, f"{made} vs {logged}"
                )
        outcome.check(
            "every call answered 200, a clear 409, or a 503 to retry",
            set(statuses) <= {200, 409, 503},
            f"{dict(statuses)}: {[a.detail for _, a in answers if a.status not in (200, 409)][:2]}",
        )
        chained = all(a.to_revision_id == b.from_revision_id for a, b in pairwise(events))
        outcome.check("each move starts where the previous ended", chained)
        outcome.check(
            "the pointer is where the last event left it",
            adapter.live_revision_id == events[-1].to_revision_id,
        )
        outcome.check(
            "one audit event per pointer event", len(audits) == len(events), f"{len(audits)} vs {len(events)}"
        )


class ConcurrentPointerMoves(PointerMoves):
    name = "promote-rollback-race"
    fault = "50 concurrent promote/rollback calls on one adapter"
    in_flight = "50 pointer moves"

    def run(self, outcome: Outcome) -> None:
        [model] = self.live_adapters("race", 1, revisions=4)
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda move: move(), self.moves(model, 50)))
        self.count_moves(outcome, model, answers)
        # No outage here: the next move simply works (a promote or, if that one is live, a 409).
        at = time.monotonic()
        outcome.recovered_s = self.until(
            lambda: (
                self.client.call("post", f"/api/adapters/{model}/promote", {"revision": "r1"}).status
                in (200, 409)
            ),
            at,
        )


class DiskFullDuringRevision(Scenario):
    name = "disk-full"
    fault = "store's disk full while writing a revision"
    in_flight = "1 training job"

    def run(self, outcome: Outcome) -> None:
        from adapters_app.models import Job, Revision

        if not self.stack.disk.mounted:
            outcome.skipped = "could not mount a small filesystem for the store (needs root)"
            return
        dataset = self.person("diskfull")
        self.stack.disk.fill()
        try:
            job_id = self.train("diskfull", dataset, steps=20)
            failed = self.wait_final([job_id])[job_id]
        finally:
            self.stack.disk.free()
        since = time.monotonic()
        outcome.sent = 1
        outcome.check("the job failed", failed.state == Job.FAILED, f"it is {failed.state}")
        outcome.check(
            "its error says the disk is full",
            "No space left on device" in failed.error,
            failed.error.splitlines()[0] if failed.error else "(no error)",
        )
        outcome.check("no revision row for it", not Revision.objects.filter(job_id=job_id).exists())
        leftovers = [p.name for p in self.stack.store_root.rglob(".incoming-*")]
        outcome.check("no half-written blob in the store", not leftovers, str(leftovers))
        unreferenced = self.unreferenced_blobs()
        outcome.check("no blob that no row names", not unreferenced, str(unreferenced))
        retry = self.retry(failed)
        done = self.wait_final([retry])[retry]
        outcome.recovered_s = round(time.monotonic() - since, 1) if done.state == Job.SUCCEEDED else None
        outcome.lost = 0 if done.state == Job.SUCCEEDED else 1
        outcome.duplicated = self.extra_revisions(
            outcome, [job_id], succeeded={job_id} if done.state == Job.SUCCEEDED else set()
        )
        outcome.notes.append("recovered: from the space being freed to the retried job's revision")

    def unreferenced_blobs(self) -> list[str]:
        from adapters_app.lifecycle.storage import get_store, is_referenced

        return [sha[:12] for sha in get_store().all_keys() if not is_referenced(sha)]


class WorkerKilledDuringStreams(Scenario):
    name = "worker-kill-stream"
    fault = "serving worker SIGKILLed during streaming /v1"
    in_flight = "8 streams on 2 workers"

    def run(self, outcome: Outcome) -> None:
        models = self.live_adapters("kill", 8)
        where = self.warm(models)
        doomed = [m for m in models if where[m].startswith("serve-a@")]
        spared = [m for m in models if m not in doomed]
        outcome.check("streams on both workers", doomed and spared, f"routed: {where}")
        ends, at = self.stream_batch(models, lambda: self.stack.kill_worker("serve-a"))
        outcome.recovered_s = self.until(self.answers(models[0]), at)
        broken = [m for m, end in zip(models, ends, strict=True) if m in spared and end.outcome != COMPLETE]
        outcome.check("the other worker's streams are unaffected", not broken, f"{broken}")
        self.count_streams(outcome, models, ends)
        outcome.notes.append(f"{len(doomed)} streams on the killed worker, {len(spared)} on the other")
        self.stack.start_worker("serve-a", pool="threads", queues=f"{self.stack.queue}.serve", concurrency=8)
        self.stack.wait_worker("serve-a")


class RedisRestartDuringTraining(Scenario):
    name = "redis-training"
    fault = "Redis restarted during training"
    in_flight = "3 training jobs (1 running, 2 queued)"

    def run(self, outcome: Outcome) -> None:
        [probe] = self.live_adapters("redis-train-probe", 1)
        dataset = self.person("redis-train")
        jobs = [self.train("redis-train", dataset, steps=60) for _ in range(3)]
        outcome.check("the first job was running at the fault", self.running(jobs[0]))
        at = time.monotonic()
        self.stack.restart_redis()
        outcome.recovered_s = self.until(self.answers(probe), at)
        self.settle_jobs(outcome, jobs)


class RedisRestartDuringStudy(Scenario):
    name = "redis-study"
    fault = "Redis restarted during a study"
    in_flight = "a study: 2 cells (1 running, 1 queued)"

    def run(self, outcome: Outcome) -> None:
        from adapters_app.models import StudyCell, StudyRun

        [probe] = self.live_adapters("redis-study-probe", 1)
        study = self.must(
            "post",
            "/api/studies",
            {
                "name": "chaos",
                "bases": [self.stack.base.name],
                "ranks": [1, 4],
                "targets": ["attention"],
                "inits": ["default"],
                "seeds": 1,
                "people": 2,
                "training": {"steps": 30, "batch_size": 4, "replay": 0.0, "learning_rate": 0.01},
            },
            expect=201,
        )
        study_id = study["study"]["id"]
        cells = list(StudyCell.objects.filter(study_id=study_id).order_by("pk"))
        jobs = [cell.job_id for cell in cells]
        outcome.check("a cell was running at the fault", self.running(jobs[0]))
        at = time.monotonic()
        self.stack.restart_redis()
        outcome.recovered_s = self.until(self.answers(probe), at)
        finals = self.settle_jobs(outcome, jobs, revisions=False)
        expected = sum(cell.runs_total for cell in cells)
        runs = Counter(
            StudyRun.objects.filter(cell__study_id=study_id).values_list("cell_id", "person", "seed")
        )
        outcome.duplicated += sum(n - 1 for n in runs.values())
        outcome.check(
            "every run recorded once", sum(runs.values()) == expected, f"{sum(runs.values())} of {expected}"
        )
        outcome.notes.append(f"{len(finals)} of {len(jobs)} cells succeeded; {len(runs)} of {expected} runs")


class RedisRestartDuringStreams(Scenario):
    name = "redis-stream"
    fault = "Redis restarted during streaming /v1"
    in_flight = "8 streams"

    def run(self, outcome: Outcome) -> None:
        models = self.live_adapters("redis-stream", 8)
        self.warm(models)
        ends, at = self.stream_batch(models, self.stack.restart_redis)
        outcome.recovered_s = self.until(self.answers(models[0]), at)
        self.count_streams(outcome, models, ends)


class PostgresRestartDuringTraining(Scenario):
    name = "postgres-training"
    fault = "PostgreSQL restarted during training"
    in_flight = "2 training jobs (1 running, 1 queued)"

    def run(self, outcome: Outcome) -> None:
        dataset = self.person("pg-train")
        jobs = [self.train("pg-train", dataset, steps=60) for _ in range(2)]
        outcome.check("the first job was running at the fault", self.running(jobs[0]))
        at = time.monotonic()
        self.stack.restart_postgres()
        outcome.recovered_s = self.until(self.writes(), at)
        self.settle_jobs(outcome, jobs)


class PostgresRestartDuringPromotion(PointerMoves):
    name = "postgres-promotion"
    fault = "PostgreSQL restarted during promotions"
    in_flight = "24 promote/rollback calls"

    def run(self, outcome: Outcome) -> None:
        [model] = self.live_adapters("pg-promote", 1, revisions=4)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(move) for move in self.moves(model, 24)]
            time.sleep(0.3)
            at = time.monotonic()
            self.stack.restart_postgres()
            answers = [future.result() for future in futures]
        outcome.recovered_s = self.until(self.writes(), at)
        self.count_moves(outcome, model, answers)


SCENARIOS: list[type[Scenario]] = [
    ConcurrentPointerMoves,
    DiskFullDuringRevision,
    WorkerKilledDuringStreams,
    RedisRestartDuringTraining,
    RedisRestartDuringStudy,
    RedisRestartDuringStreams,
    PostgresRestartDuringTraining,
    PostgresRestartDuringPromotion,
]
BY_NAME = {s.name: s for s in SCENARIOS}
