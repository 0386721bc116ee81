"""Job runs: the worker-side glue between a Job row and the engine.

`JobRun` owns the state machine, the heartbeat and error capture; each
subclass writes only `run()`. Per-run state lives on the run object, never on
the Celery task (Celery reuses task instances).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction

from adapters_app.lifecycle import routing
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.datasets import load_eval_items, load_examples
from adapters_app.lifecycle.evaluations import record_suite_results
from adapters_app.lifecycle.jobs import start_evaluation
from adapters_app.lifecycle.pointer import auto_promote
from adapters_app.lifecycle.revisions import create_revision
from adapters_app.lifecycle.storage import get_store
from adapters_app.lifecycle.updates import settle
from adapters_app.models import Evaluation, Job, ResidentAdapter, Revision
from workers import serving
from workers.engine.examples import Message
from workers.engine.prompting import Prompt, messages_from_openai
from workers.engine.runtime import AdapterRuntime, PromptTooLong, SamplingParams
from workers.engine.suites import SUITE_FORMAT, run_items
from workers.residency import ResidencyReporter

log = logging.getLogger(__name__)
T = TypeVar("T")

# Two holders in one process, reported apart: routing follows the batched server's only.
_runtime = AdapterRuntime(observer=ResidencyReporter(ResidentAdapter.RUNTIME))
serving.observe(ResidencyReporter(ResidentAdapter.SERVING))


def runtime() -> AdapterRuntime:
    """This worker process's adapter runtime (bases and adapters stay loaded between tasks)."""
    return _runtime


class JobCancelled(Exception):
    pass


class JobLost(Exception):
    """The job left the running state under us (e.g. the sweeper failed it)."""


# What a lost database connection raises (a restart, a failover).
DATABASE_GONE = (OperationalError, InterfaceError)


def outlasting_outages(write: Callable[[], T]) -> T:
    """Run `write` (one statement, outside a transaction); when the database connection is
    lost, reconnect and try again for up to MINT_STALE_JOB_SECONDS, as long as the sweep
    itself would wait before presuming this worker dead. A database restart then costs a
    run a pause, not its work. A statement that failed in autocommit left nothing behind."""
    deadline = time.monotonic() + settings.MINT_STALE_JOB_SECONDS
    while True:
        try:
            return write()
        except DATABASE_GONE:
            if connection.in_atomic_block or time.monotonic() > deadline:
                raise
            connection.close()
            time.sleep(0.5)


class Heartbeat:
    """Beats on the job row from a side thread, so a long step cannot look like a dead worker."""

    def __init__(self, job: Job, interval: float):
        self.job, self.interval = job, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job.pk}", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.job.beat()
                except DATABASE_GONE:
                    # The database restarted: beat again on a new connection next time.
                    log.warning("job %s: heartbeat not written (database unreachable)", self.job.pk)
                    connection.close()
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(slots=True)
class ProgressReporter:
    """Called after each step; writes to the job at most every `every` seconds."""

    job: Job
    every: float = 1.0
    loss_points: list = field(default_factory=list)
    _last_write: float = 0.0
    _logged_tenth: int = 0

    def __call__(self, step: int, total: int, loss: float | None = None) -> None:
        if loss is not None:
            self.loss_points.append([step, round(loss, 5)])
        # A log line at each tenth of the way: enough to read the run's course afterwards.
        tenth = 10 * step // total if total else 0
        if tenth > self._logged_tenth:
            self._logged_tenth = tenth
            line = f"step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "")
            outlasting_outages(lambda: self.job.append_log(line))
        now = time.monotonic()
        if step < total and now - self._last_write < self.every:
            return
        self._last_write = now
        points = _thin(self.loss_points)
        if not outlasting_outages(lambda: self.job.report_progress(step, total, points)):
            raise JobCancelled()


def _thin(points: list, limit: int = 500) -> list:
    """Keep loss curves small on the job row: at most `limit` evenly spaced points."""
    if len(points) <= limit:
        return list(points)
    stride = len(points) / limit
    return [points[int(i * stride)] for i in range(limit)] + [points[-1]]


@dataclass(slots=True)
class JobRun:
    job_id: int
    worker: str

    def execute(self) -> None:
        close_old_connections()
        job = outlasting_outages(
            lambda: (
                Job.objects.select_related("adapter__person", "adapter__base", "dataset", "revision")
                .filter(pk=self.job_id)
                .first()
            )
        )
        if job is None:
            log.warning("job %s no longer exists; skipping", self.job_id)
            return
        if not outlasting_outages(lambda: job.claim(self.worker)):
            log.info("job %s is %s; not running it again", job.pk, job.state)
            return
        job.append_log(f"claimed by {self.worker}")
        with Heartbeat(job, settings.MINT_HEARTBEAT_SECONDS):
            try:
                self.run(job)
            # Each final state and its log line in one transaction: whoever sees the job
            # cancelled or failed also sees the line that says where and why.
            except JobCancelled:
                with transaction.atomic():
                    job.mark_cancelled()
                    job.append_log(f"cancelled at step {job.step} of {job.total_steps}")
                log.info("job %s cancelled", job.pk)
            except JobLost:
                log.warning("job %s was ended elsewhere while running", job.pk)
            except Exception as exc:
                with transaction.atomic():
                    job.fail(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
                    job.append_log(f"failed: {type(exc).__name__}: {exc}")
                log.exception("job %s failed", job.pk)

    def run(self, job: Job) -> None:
        raise NotImplementedError

    @staticmethod
    def succeed_or_lose(job: Job, **changes) -> None:
        if not job.succeed(**changes):
            raise JobLost()


class TrainRun(JobRun):
    def run(self, job: Job) -> None:
        from workers.engine.base_family import replay_examples
        from workers.engine.base_models import load_base
        from workers.engine.training import TrainingConfig, train_adapter

        adapter = job.adapter
        config = TrainingConfig.from_dict(job.params["config"])
        examples = load_examples(job.dataset)
        job.append_log(f"{len(examples)} examples from {job.dataset.name} ({job.dataset.sha256[:12]})")
        base = load_base(adapter.base.path, adapter.base_digest)
        job.append_log(f"base {adapter.base.name} ({adapter.base_digest[:12]}) loaded on {base.device}")
        report = ProgressReporter(job)
        replay = replay_examples(adapter.base.path) if config.replay else []
        job.append_log(
            f"training rank {config.rank} on {config.targets}, {config.steps} steps, "
            f"batch {config.batch_size}, learning rate {config.learning_rate:g}, "
            f"init {config.init}, seed {config.seed}"
            + (f", replaying {len(replay)} general rows at {config.replay:g}" if replay else "")
        )
        parent = Revision.objects.filter(pk=job.params.get("parent_revision_id")).first()
        # A retrain from a person's updates carries on from the live revision's factors.
        start_from = get_store().get(job.params["start_from"]) if job.params.get("start_from") else None
        if start_from is not None:
            job.append_log(f"continuing from {parent.label if parent else job.params['start_from'][:12]}")
        result = train_adapter(
            base.model, base.tokenizer, examples, config, on_step=report, replay=replay, start_from=start_from
        )
        summary = {"final_loss": result.losses[-1], "trainable_parameters": result.trainable_parameters}

        def finish(revision: Revision) -> None:
            # Logged in the transaction that marks the job done: whoever sees it succeed
            # sees where its revision went.
            job.append_log(
                f"stored {revision.label} ({revision.sha256[:12]}, {revision.size_bytes} bytes), "
                f"final loss {result.losses[-1]:.4f}"
            )
            self.succeed_or_lose(
                job,
                result_revision=revision,
                result={**summary, "revision": revision.label},
                step=config.steps,
                total_steps=config.steps,
                loss_points=_thin(report.loss_points),
            )

        with transaction.atomic():
            revision = create_revision(
                adapter,
                result.payload,
                dataset=job.dataset,
                training_config=config.as_dict(),
                parent=parent,
                job=job,
                actor=Actor(name=job.created_by, via="worker"),
                final_loss=result.losses[-1],
                on_created=finish,
                updates=job.params.get("updates"),
            )
        if job.params.get("auto_promote") and adapter.eval_dataset_id:
            job.append_log(f"queued its evaluation on {adapter.eval_dataset.name}; promoted if it passes")
            start_evaluation(
                adapter,
                adapter.eval_dataset,
                revision=revision,
                actor=Actor(name=job.created_by, via="worker"),
                then_promote=True,
            )


class EvaluateRun(JobRun):
    def run(self, job: Job) -> None:
        if job.dataset.format == SUITE_FORMAT:
            self.run_suites(job)
        else:
            self.run_heldout_loss(job)

    def run_heldout_loss(self, job: Job) -> None:
        adapter, revision = job.adapter, job.revision
        examples = load_examples(job.dataset)
        what = revision.label if revision else "the bare base"
        job.append_log(f"held-out loss of {what} on {len(examples)} examples from {job.dataset.name}")
        ProgressReporter(job)(0, len(examples))
        metrics = runtime().evaluate(
            adapter.base.path,
            adapter.base_digest,
            revision.sha256 if revision else None,
            get_store().get,
            examples,
        )
        with transaction.atomic():
            Evaluation.objects.create(
                base=adapter.base,
                revision=revision,
                dataset=job.dataset,
                dataset_sha256=job.dataset.sha256,
                metrics=metrics,
                job=job,
            )
            self.succeed_or_lose(job, result=metrics, step=len(examples), total_steps=len(examples))

    def run_suites(self, job: Job) -> None:
        """Answer and grade every item; the bare base too, once per evaluation set,
        since retention and the report compare against it."""
        adapter, revision, dataset = job.adapter, job.revision, job.dataset
        items = load_eval_items(dataset)
        targets = [revision]
        if (
            revision is not None
            and not Evaluation.objects.filter(
                base=adapter.base, revision=None, dataset_sha256=dataset.sha256
            ).exists()
        ):
            targets.insert(0, None)
        report = ProgressReporter(job)
        total = len(items) * len(targets)
        for target in targets:
            what = target.label if target else "the bare base"
            job.append_log(f"grading {what} on {len(items)} items of {dataset.name}")
        graded = grade_targets(adapter, targets, items, on_progress=lambda done, _: report(done, total))
        with transaction.atomic():
            for target, results in zip(targets, graded, strict=True):
                scores = record_suite_results(
                    base=adapter.base, revision=target, dataset=dataset, results=results, job=job
                )
                shown = ", ".join(f"{suite} {score:.3f}" for suite, score in scores.items())
                job.append_log(f"{target.label if target else 'bare base'}: {shown}")
            # Promoted (or refused) in the same transaction as the job's success: whoever
            # sees the job succeed sees the pointer where the gate left it.
            if job.params.get("then_promote") and revision is not None:
                promoted = auto_promote(revision, actor=Actor(name=job.created_by, via="worker"))
                settle(revision, promoted=promoted)  # a retrain's updates: applied, or held
                outcome = "promoted" if promoted else "not promoted (the audit log says why)"
                job.append_log(f"{revision.label} {outcome}")
            self.succeed_or_lose(
                job, result={"scores": scores, "items": len(items)}, step=total, total_steps=total
            )


def grade_targets(adapter, targets: list, items: list, on_progress) -> list[list]:
    """Each target's (a revision, or None for the bare base) answers to `items`, graded.

    All of them in one continuously batched, greedy generation over a bank holding the
    targets (`batch_grading.grade_many`): on a real base, answering one item at a time
    cost minutes per evaluation. A base or payload the bank cannot serve exactly (an
    architecture it does not batch, DoRA, a rank above the bank's) is answered one item
    at a time through the runtime instead, as before."""
    from workers.engine.batch_grading import grade_many
    from workers.engine.batched_lora import BatchedLoraError

    store = get_store()
    try:
        return grade_many(
            adapter.base.path,
            adapter.base_digest,
            [(target.sha256 if target else None, items) for target in targets],
            {target.sha256: store.get(target.sha256) for target in targets if target is not None},
            on_progress=on_progress,
        )
    except BatchedLoraError as exc:
        log.info("grading one item at a time: %s", exc)
    graded = []
    for index, target in enumerate(targets):
        offset = index * len(items)
        graded.append(
            run_items(
                items,
                lambda prompt, max_tokens, target=target: answer(adapter, target, prompt, max_tokens),
                on_item=lambda done, _, offset=offset: on_progress(offset + done, len(targets) * len(items)),
            )
        )
    return graded


class InferRun(JobRun):
    def run(self, job: Job) -> None:
        adapter, revision = job.adapter, job.revision
        # Rendered on the base's tokenizer, with its own chat template.
        text = answer(
            adapter, revision, [Message("user", job.params["prompt"])], int(job.params["max_tokens"])
        )
        self.succeed_or_lose(job, result={"text": text}, step=1, total_steps=1)


def answer(adapter, revision: Revision | None, prompt: Prompt, max_tokens: int) -> str:
    """A greedy answer from `revision` of `adapter` (the bare base when None)."""
    return runtime().answer(
        adapter.base.path,
        adapter.base_digest,
        revision.sha256 if revision else None,
        get_store().get,
        prompt,
        max_tokens,
    )


def _node_name() -> str | None:
    """The Celery node running this task (its lease is what a stream's reader watches)."""
    from celery import current_task

    return current_task.request.hostname if current_task else None


def generate(request: dict) -> list[dict]:
    """Serve one OpenAI-style request (no job row: inference is not a lifecycle action).

    It joins this process's continuously batched server for the base (`workers.serving`);
    an adapter the bank cannot hold (DoRA, a rank above MINT_SERVING_MAX_RANK, …) is served
    by the one-at-a-time runtime instead. With a `stream_key`, text is also pushed to that
    Redis list as it is generated: both paths settle pieces by `runtime.StreamedText`'s
    rules, so they add up to the non-streamed text.

    The request holds a raw `prompt` (completions) or `messages` (chat), which the serving
    path renders with the base's own chat template."""
    from adapters_app.lifecycle.inference import ReaderGone, StreamWriter

    params = request["params"]
    params["stop"] = tuple(params.get("stop") or ())
    sampling = SamplingParams(**params)
    prompt: Prompt = (
        messages_from_openai(request["messages"])
        if request.get("messages") is not None
        else request["prompt"]
    )
    stream = StreamWriter(request["stream_key"], worker=_node_name()) if request.get("stream_key") else None
    on_text = stream.text if stream else None
    try:
        try:
            server = serving.server_for(request["base_path"], request["base_digest"])
            # A stream starts once the request is accepted: a prompt too long for the base is
            # still an HTTP error for its client, not an event in a stream that began.
            result = server.generate(
                prompt,
                request["revision_sha256"],
                sampling,
                request["n"],
                on_text=on_text,
                on_accepted=stream.started if stream else None,
            )
        except serving.Unservable as exc:
            if stream:
                stream.started()  # if the bank refused it before taking it
            sha = request["revision_sha256"]
            log.info("serving %s one at a time: %s", sha[:12] if sha else "the bare base", exc)
            # A revision the bank refused (a base the bank does not batch refuses even the
            # bare base); noting it brings the next request for it back to the runtime.
            if sha is not None:
                routing.note_served_one_at_a_time(sha)
            generations = runtime().generate(
                request["base_path"],
                request["base_digest"],
                request["revision_sha256"],
                get_store().get,
                prompt,
                sampling,
                n=request["n"],
                on_text=on_text,
            )
            result = [
                {
                    "text": g.text,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "finish_reason": g.finish_reason,
                }
                for g in generations
            ]
    except ReaderGone:
        # The client went away mid-stream: its rows left the batch; nobody wants the rest.
        log.info("stream %s abandoned by its reader: generation stopped", request["stream_key"])
        return []
    except Exception as exc:
        if stream:
            code = exc.code if isinstance(exc, PromptTooLong) else None
            stream.error(f"{type(exc).__name__}: {exc}", code=code)
        raise
    if stream:
        stream.done(result)
    return result
