"""Personal state that keeps learning: updates from use, retrains through the gate, and the
watch that rolls a promotion back on its own.

The loop, under governance:

1. `/v1` answers from a person's adapter are remembered for a while (`remember_answer`:
   Redis, `MINT_FEEDBACK_WINDOW_HOURS`), so `record_feedback` can tie a rating and a
   correction to the conversation, the answer and the revision that gave it;
   `record_memory` takes a stated fact. Each lands once (an idempotency key) as a pending
   `PersonalUpdate`.
2. `start_update_retrain` (by hand, or `run_retrain_policies` from Celery beat) resolves
   the waiting updates newest first (`workers/engine/updates.py`), writes the next training
   set (the live revision's set without the rows teaching old values, plus the new facts
   and the correction pairs) and the next gate set (the adapter's, with an update suite),
   and trains from the live revision (DPO where there are pairs). The train job evaluates
   the new revision on that set and promotes it only if it passes.
3. `settle` (after that evaluation) marks the updates applied, or held for the operator.
4. `watch_promotion` (after each negative rating, and from beat) rolls an automatic
   promotion back when the new revision's share of negative ratings exceeds the previous
   revision's by more than the adapter's margin, with the figures in the audit event.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.datasets import load_eval_items, load_examples, upload_dataset
from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.gates import configure_gate
from adapters_app.lifecycle.inference import redis_client
from adapters_app.lifecycle.jobs import launch_job, retrain_config
from adapters_app.lifecycle.pointer import AUTO_PROMOTE_REASON, rollback
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import (
    Adapter,
    Dataset,
    Job,
    Person,
    PersonalUpdate,
    PointerEvent,
    RetrainPolicy,
    Revision,
)
from workers.engine import updates as engine
from workers.engine.examples import Example, Message
from workers.engine.suites import apply_check, items_jsonl, mentions
from workers.engine.training import TrainingConfig, TrainingConfigInvalid

log = logging.getLogger(__name__)

MAX_TEXT = 4000


# --- answers as served ----------------------------------------------------------------


def _answer_key(completion_id: str) -> str:
    # Per fleet (its queue): fleets, and test sessions, may share one Redis.
    return f"mint:{settings.CELERY_TASK_DEFAULT_QUEUE}:answer:{completion_id}"


def _answers_of_key(person_id: int) -> str:
    return f"mint:{settings.CELERY_TASK_DEFAULT_QUEUE}:answers-of:{person_id}"


def remember_answer(
    completion_id: str, *, revision: Revision | None, prompt, generations: list[dict]
) -> None:
    """Keep what a person's adapter answered, so feedback on it can name the conversation,
    the answer and the revision. Only adapters' answers (a bare base is nobody's state);
    kept `MINT_FEEDBACK_WINDOW_HOURS` and listed per person, so an erasure removes them."""
    if revision is None:
        return
    messages = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else [{"role": m.role, "content": m.content} for m in prompt]
    )
    record = {
        "adapter_id": revision.adapter_id,
        "person_id": revision.adapter.person_id,
        "revision_id": revision.pk,
        "prompt": messages,
        "answers": [g.get("text", "") for g in generations],
    }
    ttl = int(settings.MINT_FEEDBACK_WINDOW_HOURS * 3600)
    person_list = _answers_of_key(revision.adapter.person_id)
    pipe = redis_client().pipeline(transaction=False)
    pipe.set(_answer_key(completion_id), json.dumps(record), ex=ttl)
    pipe.sadd(person_list, completion_id)
    pipe.expire(person_list, ttl)
    checked = update_checks_in_use(revision, messages, record["answers"])
    if checked:
        # The watch's second figure: how often the revision, in use, still says an old value.
        key = _update_checks_key(revision)
        pipe.hincrby(key, "checked", checked[0])
        pipe.hincrby(key, "failed", checked[1])
        pipe.expire(key, ttl)
    pipe.execute()


def _update_checks_key(revision: Revision) -> str:
    # Named by row and creation time: a database made again (tests) reuses row ids.
    made = int(revision.created_at.timestamp() * 1e6)
    return f"mint:{settings.CELERY_TASK_DEFAULT_QUEUE}:update-checks:{revision.pk}:{made}"


def update_checks_in_use(revision: Revision, messages: list[dict], answers: list[str]) -> tuple[int, int]:
    """(checked, failed): the answers of a revision retrained from updates that speak of a
    fact it changed (the question names the fact's subject, the answer says its new or an
    old value), and of those, the ones that still say an old value."""
    taught = (revision.updates or {}).get("facts") or {}
    olds = (revision.updates or {}).get("superseded") or {}
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    checked = failed = 0
    for key, value in taught.items():
        subject = engine.Fact(key, value).subject.split("'")[0].split("_")[0]
        if not mentions(question, subject):
            continue
        for answer in answers:
            passed, _ = apply_check({"kind": "updated", "value": value, "old": olds.get(key, [])}, answer)
            said_old = not passed and any(mentions(answer, old) for old in olds.get(key, []))
            if said_old or mentions(answer, value):
                checked += 1
                failed += said_old
    return checked, failed


def update_checks(revision: Revision) -> tuple[int, int]:
    counts = redis_client().hgetall(_update_checks_key(revision))
    return int(counts.get(b"checked", 0)), int(counts.get(b"failed", 0))


def recalled_answer(completion_id: str) -> dict | None:
    raw = redis_client().get(_answer_key(completion_id))
    return json.loads(raw) if raw else None


def forget_answers_of(person_id: int) -> int:
    """Erasure: the person's remembered answers go from Redis."""
    client = redis_client()
    person_list = _answers_of_key(person_id)
    ids = [i.decode() if isinstance(i, bytes) else i for i in client.smembers(person_list)]
    if ids:
        client.delete(*[_answer_key(i) for i in ids])
    client.delete(person_list)
    return len(ids)


# --- recording updates ----------------------------------------------------------------


def _default_key(*parts) -> str:
    return "auto:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _checked_text(name: str, value: str | None) -> str:
    value = (value or "").strip()
    if len(value) > MAX_TEXT:
        raise Invalid(f"{name} is {len(value)} characters; the limit is {MAX_TEXT}")
    return value


def record_feedback(
    completion_id: str,
    *,
    rating: int,
    correction: str = "",
    note: str = "",
    choice: int = 0,
    idempotency_key: str = "",
    actor: Actor,
) -> tuple[PersonalUpdate, bool]:
    """A rating (and perhaps a correction) of an answer a person's adapter gave.
    Returns (update, created): the same key again returns the first one, unchanged."""
    authorize(actor, "update.record")
    if isinstance(rating, bool) or rating not in (-1, 1):
        raise Invalid("rating must be 1 (good) or -1 (bad)", details={"rating": "must be 1 or -1"})
    correction, note = _checked_text("correction", correction), _checked_text("note", note)
    key = (idempotency_key or "").strip()[:200] or _default_key(
        "feedback", completion_id, rating, correction, note, choice
    )
    existing = PersonalUpdate.objects.filter(completion_id=completion_id, idempotency_key=key).first()
    if existing:
        return existing, False
    served = recalled_answer(completion_id)
    if served is None:
        raise NotFound(
            f"no answer {completion_id!r} on record: unknown, older than "
            f"{settings.MINT_FEEDBACK_WINDOW_HOURS:g} hours, or its person was erased"
        )
    if not 0 <= choice < len(served["answers"]):
        raise Invalid(f"choice must be between 0 and {len(served['answers']) - 1}")
    adapter = Adapter.objects.select_related("person").filter(pk=served["adapter_id"]).first()
    if adapter is None:
        raise NotFound(f"the adapter that gave {completion_id!r} no longer exists")
    fact = engine.parse_fact(correction) if correction else None
    answer = served["answers"][choice]
    # A fact, or an answer the person would rather have had; a rating alone only counts.
    teaches = fact is not None or (rating < 0 and bool(correction) and correction != answer.strip())
    update, created = _create(
        actor,
        person=adapter.person,
        adapter=adapter,
        kind=PersonalUpdate.FEEDBACK,
        completion_id=completion_id,
        revision_id=served["revision_id"],
        rating=rating,
        prompt=served["prompt"],
        answer=answer,
        correction=correction,
        note=note,
        fact_key=fact.key if fact else "",
        fact_value=fact.value if fact else "",
        idempotency_key=key,
        state=PersonalUpdate.PENDING if teaches else PersonalUpdate.RECORDED,
    )
    if created and rating < 0:
        watch_promotion(adapter)
    return update, created


def record_memory(
    person: Person,
    *,
    text: str,
    adapter: Adapter | None = None,
    subject: str = "",
    value: str = "",
    idempotency_key: str = "",
    actor: Actor,
) -> tuple[PersonalUpdate, bool]:
    """A fact or preference the person stated. The fact is read from `text` ("my dog is now
    called Rex") or given as `subject` and `value`; a statement with no fact we can phrase
    is kept for the operator and trains nothing."""
    authorize(actor, "update.record")
    text = _checked_text("text", text)
    if subject or value:
        try:
            fact = engine.fact_from_fields(subject, value)
        except engine.UpdateInvalid as exc:
            raise Invalid(str(exc)) from None
        text = text or f"My {fact.subject} is {fact.value}."
    else:
        if not text:
            raise Invalid("a memory needs text (or a subject and a value)")
        fact = engine.parse_fact(text)
    adapter = adapter or _only_adapter(person)
    if adapter.person_id != person.pk:
        raise Invalid(f"{adapter.handle} belongs to another person")
    # No default key: the same words said again later ("Rex", then "Max", then "Rex") are
    # a new statement. A client that retries sends its own key.
    key = (idempotency_key or "").strip()[:200]
    existing = PersonalUpdate.objects.filter(person=person, idempotency_key=key).first() if key else None
    if existing:
        return existing, False
    return _create(
        actor,
        person=person,
        adapter=adapter,
        kind=PersonalUpdate.MEMORY,
        text=text,
        fact_key=fact.key if fact else "",
        fact_value=fact.value if fact else "",
        idempotency_key=key,
        state=PersonalUpdate.PENDING if fact else PersonalUpdate.RECORDED,
    )


def _only_adapter(person: Person) -> Adapter:
    adapters = list(person.adapters.select_related("person")[:2])
    if len(adapters) != 1:
        names = "no adapter" if not adapters else "more than one adapter"
        raise Invalid(f"{person.handle} has {names}; name the adapter the memory is for")
    return adapters[0]


def _create(actor: Actor, **fields) -> tuple[PersonalUpdate, bool]:
    try:
        with transaction.atomic():
            update = PersonalUpdate.objects.create(created_by=actor.name, **fields)
            audit.record(
                actor,
                f"update.{update.kind}",
                update.adapter,
                person_handle=update.person.handle,
                after={
                    "update": update.pk,
                    "rating": update.rating,
                    "fact": {update.fact_key: update.fact_value} if update.fact_key else None,
                    "revision": update.revision_id,
                },
            )
    except IntegrityError:
        # The same idempotency key, committed by a concurrent request a moment ago, or
        # used before for something else (which the key must not quietly stand for).
        existing = PersonalUpdate.objects.filter(
            person=fields["person"], idempotency_key=fields["idempotency_key"]
        ).first()
        if existing is None:
            raise
        if (existing.kind, existing.completion_id) != (fields["kind"], fields.get("completion_id", "")):
            raise Conflict(
                f"idempotency key {fields['idempotency_key']!r} was used for update {existing.pk}, "
                "a different one; use a new key for a new update"
            ) from None
        return existing, False
    return update, True


def dismiss_update(update: PersonalUpdate, *, actor: Actor, reason: str = "") -> PersonalUpdate:
    authorize(actor, "train")
    with transaction.atomic():
        moved = PersonalUpdate.objects.filter(pk=update.pk, state__in=PersonalUpdate.WAITING).update(
            state=PersonalUpdate.DISMISSED
        )
        if not moved:
            update.refresh_from_db()
            raise Conflict(
                f"update {update.pk} is {update.state}; only pending or held ones can be dismissed"
            )
        audit.record(
            actor,
            "update.dismiss",
            update.adapter,
            person_handle=update.person.handle,
            after={"update": update.pk, "reason": reason},
        )
    update.state = PersonalUpdate.DISMISSED
    return update


# --- what the waiting updates mean ------------------------------------------------------


def waiting_updates(adapter: Adapter):
    return adapter.updates.filter(state__in=PersonalUpdate.WAITING).order_by("created_at", "id")


def as_engine_update(update: PersonalUpdate) -> engine.Update:
    fact = engine.Fact(update.fact_key, update.fact_value) if update.fact_key else None
    prompt = tuple(Message(m["role"], m["content"]) for m in update.prompt or ())
    return engine.Update(
        update_id=update.pk,
        order=(update.created_at, update.pk),
        fact=fact,
        prompt=prompt,
        answer=update.answer,
        # A correction that states a fact teaches the fact; the pair would teach its wording.
        correction="" if fact else update.correction if update.rating == -1 else "",
    )


def resolve(updates) -> engine.Resolution:
    return engine.resolve(as_engine_update(u) for u in updates)


@dataclass(frozen=True, slots=True)
class Pending:
    """What waits for an adapter's next retrain, what it would teach, and what runs it:
    the API's and the console's one read of it."""

    waiting: list[PersonalUpdate]
    resolution: engine.Resolution
    retrain_job: Job | None
    policy: RetrainPolicy


def pending(adapter: Adapter) -> Pending:
    waiting = list(waiting_updates(adapter).select_related("revision"))
    return Pending(waiting, resolve(waiting), retrain_in_flight(adapter), policy_of(adapter))


@dataclass(frozen=True, slots=True)
class RetrainPlan:
    """What a retrain from updates will train on and be judged by."""

    updates: list[PersonalUpdate]
    resolution: engine.Resolution
    rows: list[Example]
    dropped_rows: int
    gate_items: list
    old_values: dict[str, list[str]]


def plan_retrain(adapter: Adapter) -> RetrainPlan:
    updates = list(waiting_updates(adapter))
    resolution = resolve(updates)
    source = _training_source(adapter)
    base_rows = load_examples(source) if source else []
    rows, dropped = engine.next_training_rows(base_rows, resolution)
    olds = engine.old_values(resolution, base_rows)
    gate_items = load_eval_items(adapter.eval_dataset) if adapter.eval_dataset_id else []
    gate_items = engine.gate_items_after(gate_items, resolution, olds)
    gate_items += engine.update_items(resolution, olds, adapter.person.handle)
    return RetrainPlan(updates, resolution, rows, dropped, gate_items, olds)


def _training_source(adapter: Adapter) -> Dataset | None:
    """What the person's state was trained on: the live revision's set, else the newest's."""
    revision = adapter.live_revision or adapter.revisions.order_by("-number").first()
    return revision.dataset if revision and revision.dataset_id else None


def _jsonl(rows: list[Example]) -> bytes:
    lines = []
    for row in rows:
        body = {"messages": [{"role": m.role, "content": m.content} for m in row.messages]}
        if row.rejected is not None:
            body["rejected"] = row.rejected
        lines.append(json.dumps(body, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def _recipe_loads(revision: Revision) -> bool:
    try:
        TrainingConfig.from_dict(revision.training_config)
    except TrainingConfigInvalid:
        return False
    return True


def retrain_in_flight(adapter: Adapter) -> Job | None:
    return (
        Job.objects.filter(
            adapter=adapter, kind=Job.TRAIN, state__in=Job.ACTIVE_STATES, params__has_key="updates"
        )
        .order_by("-pk")
        .first()
    )


def start_update_retrain(
    adapter: Adapter, *, actor: Actor, fresh_start: bool | None = None, reason: str = ""
) -> Job:
    """Train the adapter's next revision from its waiting updates, through its gate.

    Continues from the live revision unless `fresh_start` (default: the adapter's policy);
    the objective is DPO when corrections gave preference pairs, else supervised."""
    authorize(actor, "train")
    if retrain_in_flight(adapter):
        raise Conflict(f"{adapter.handle} is already retraining from its updates")
    plan = plan_retrain(adapter)
    if not plan.updates:
        raise Conflict(
            f"{adapter.handle} has no pending updates (ratings without a correction are counted "
            "by the promotion watch, not trained)"
        )
    if not plan.resolution.facts and not plan.resolution.pairs:
        raise Conflict(
            f"{adapter.handle} has {len(plan.updates)} pending update(s) and none teaches anything: "
            "ratings without a correction, or statements with no fact in them"
        )
    policy = policy_of(adapter)
    fresh = policy.fresh_start if fresh_start is None else bool(fresh_start)
    live = adapter.live_revision
    if live is not None and not fresh and not _recipe_loads(live):
        fresh = True  # a recipe from an older code version: its factors cannot be continued
    # DPO where pairs survived into the training set (a correction of a fact that has
    # changed since is dropped), supervised otherwise.
    objective = "dpo" if any(row.rejected for row in plan.rows) else "sft"
    config = {**retrain_config(adapter).as_dict(), "objective": objective}
    digest = plan.resolution.digest()
    system = Actor(name=actor.name, via=actor.via, user_id=actor.user_id, role="system")
    with transaction.atomic():
        dataset, _ = upload_dataset(
            adapter.person, _jsonl(plan.rows), name=f"{adapter.name}-updates-{digest[:8]}", actor=system
        )
        gate_set, _ = upload_dataset(
            adapter.person,
            items_jsonl(plan.gate_items),
            name=f"{adapter.name}-gate-with-updates-{digest[:8]}",
            purpose=Dataset.EVAL,
            actor=system,
        )
        # The gate now asks the new facts (and no longer the old values) of every revision.
        configure_gate(adapter, actor=system, eval_dataset=gate_set)
        provenance = {
            "digest": digest,
            "count": len(plan.updates),
            "ids": [u.pk for u in plan.updates],
            "objective": objective,
            "continued_from": None if fresh or live is None else live.label,
            "dropped_rows": plan.dropped_rows,
            "facts": {k: f.value for k, f in plan.resolution.facts.items()},
            "superseded": plan.old_values,
            "pairs": len(plan.resolution.pairs),
        }
        job = launch_job(
            Job.TRAIN,
            actor,
            adapter=adapter,
            dataset=dataset,
            params={
                "config": config,
                "parent_revision_id": adapter.live_revision_id,
                "auto_promote": True,
                "start_from": None if fresh or live is None else live.sha256,
                "updates": provenance,
            },
            total_steps=config["steps"],
        )
        PersonalUpdate.objects.filter(pk__in=[u.pk for u in plan.updates]).update(
            state=PersonalUpdate.TRAINING, retrain_job=job
        )
        now = timezone.now()
        RetrainPolicy.objects.filter(pk=policy.pk).update(last_run_at=now, next_run_at=_next_run(policy, now))
        audit.record(
            actor,
            "adapter.retrain_from_updates",
            adapter,
            person_handle=adapter.person.handle,
            after={
                **provenance,
                "job": job.pk,
                "reason": reason,
                "conflicts": len(plan.resolution.conflicts),
            },
        )
    return job


def settle(revision: Revision, *, promoted: bool) -> int:
    """After a retrain's revision met its gate: its updates are applied, or held for the operator."""
    if not revision.job_id:
        return 0
    state = PersonalUpdate.APPLIED if promoted else PersonalUpdate.HELD
    return PersonalUpdate.objects.filter(
        retrain_job_id=revision.job_id, state=PersonalUpdate.TRAINING
    ).update(state=state)


def release_failed_retrains() -> int:
    """Updates whose retrain ended without a revision: a cancelled one's wait again (the
    operator stopped it); a failed one's are held for the operator, so that a retrain that
    cannot succeed (a recipe that no longer loads, a poisoned row) is not started again on
    every beat. Nothing is lost either way."""
    taken = PersonalUpdate.objects.filter(state=PersonalUpdate.TRAINING)
    cancelled = taken.filter(retrain_job__state=Job.CANCELLED).update(
        state=PersonalUpdate.PENDING, retrain_job=None
    )
    failed = taken.filter(retrain_job__state=Job.FAILED).update(state=PersonalUpdate.HELD)
    return cancelled + failed


# --- policies -------------------------------------------------------------------------


def policy_of(adapter: Adapter) -> RetrainPolicy:
    policy, _ = RetrainPolicy.objects.get_or_create(adapter=adapter)
    return policy


POLICY_LIMITS = {
    "after_updates": (1, 10_000),
    "every_hours": (0.01, 24 * 365),
    "watch_hours": (0.0, 24 * 90),
    "min_feedback": (1, 100_000),
    "rollback_margin": (0.0, 1.0),
}


def configure_policy(adapter: Adapter, *, actor: Actor, **changes) -> RetrainPolicy:
    """Set the adapter's retrain policy (mode, thresholds, watch window); audited."""
    authorize(actor, "gate.configure")
    errors = {}
    clean: dict = {}
    for name, value in changes.items():
        if value is None:
            continue
        if name == "mode":
            if value not in dict(RetrainPolicy.MODES):
                errors[name] = f"must be one of {', '.join(dict(RetrainPolicy.MODES))}"
            else:
                clean[name] = value
        elif name == "fresh_start":
            if not isinstance(value, bool):
                errors[name] = "must be true or false"
            else:
                clean[name] = value
        elif name in POLICY_LIMITS:
            low, high = POLICY_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                errors[name] = f"must be a number between {low:g} and {high:g}"
            else:
                clean[name] = int(value) if name in ("after_updates", "min_feedback") else float(value)
        else:
            errors[name] = "unknown setting"
    if errors:
        raise Invalid(
            "invalid retrain policy: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), details=errors
        )
    with transaction.atomic():
        policy = RetrainPolicy.objects.select_for_update().get(pk=policy_of(adapter).pk)
        before = {name: getattr(policy, name) for name in clean}
        for name, value in clean.items():
            setattr(policy, name, value)
        if policy.mode == RetrainPolicy.SCHEDULE and (
            "every_hours" in clean or "mode" in clean or policy.next_run_at is None
        ):
            policy.next_run_at = timezone.now() + timedelta(hours=policy.every_hours)
        policy.save()
        audit.record(
            actor,
            "adapter.retrain_policy",
            adapter,
            person_handle=adapter.person.handle,
            before=before,
            after=clean,
        )
    return policy


def _next_run(policy: RetrainPolicy, now):
    return now + timedelta(hours=policy.every_hours) if policy.mode == RetrainPolicy.SCHEDULE else None


def due_policies():
    """Adapters whose policy says a retrain is due now (and none is running)."""
    pending = Count("adapter__updates", filter=Q(adapter__updates__state=PersonalUpdate.PENDING))
    counted = RetrainPolicy.objects.select_related("adapter__person", "adapter__live_revision").annotate(
        pending=pending
    )
    # Filtered in the database: the fleet's policies are not read row by row every beat.
    due = counted.filter(
        Q(mode=RetrainPolicy.AFTER_UPDATES, pending__gte=F("after_updates"))
        | Q(mode=RetrainPolicy.SCHEDULE, next_run_at__lte=timezone.now(), pending__gt=0)
    )
    return [p for p in due if not retrain_in_flight(p.adapter)]


def run_retrain_policies() -> list[int]:
    """Beat: start every retrain its policy says is due. Returns the jobs started."""
    release_failed_retrains()
    started = []
    for policy in due_policies():
        adapter = policy.adapter
        try:
            job = start_update_retrain(
                adapter, actor=Actor.system("retrain-policy"), reason=f"policy {policy.mode}"
            )
        except (Conflict, Invalid) as exc:
            # e.g. only ratings pending: nothing to teach yet. Not again until the next period.
            log.info("no retrain for %s: %s", adapter.handle, exc)
            RetrainPolicy.objects.filter(pk=policy.pk).update(next_run_at=_next_run(policy, timezone.now()))
            continue
        started.append(job.pk)
    return started


# --- the watch after an automatic promotion --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Watch:
    revision: str
    previous: str
    negative: int
    rated: int
    previous_negative: int
    previous_rated: int
    margin: float
    update_checked: int = 0
    update_failed: int = 0

    @property
    def share(self) -> float:
        return self.negative / self.rated if self.rated else 0.0

    @property
    def previous_share(self) -> float:
        return self.previous_negative / self.previous_rated if self.previous_rated else 0.0

    @property
    def update_failure_share(self) -> float:
        return self.update_failed / self.update_checked if self.update_checked else 0.0

    def as_dict(self) -> dict:
        return {
            "revision": self.revision,
            "previous": self.previous,
            "negative": self.negative,
            "rated": self.rated,
            "share": round(self.share, 4),
            "previous_negative": self.previous_negative,
            "previous_rated": self.previous_rated,
            "previous_share": round(self.previous_share, 4),
            "margin": self.margin,
            "update_checked": self.update_checked,
            "update_failed": self.update_failed,
        }


def _ratings(revision_id: int) -> tuple[int, int]:
    counted = PersonalUpdate.objects.filter(
        kind=PersonalUpdate.FEEDBACK, revision_id=revision_id, rating__isnull=False
    ).aggregate(rated=Count("id"), negative=Count("id", filter=Q(rating=-1)))
    return counted["negative"], counted["rated"]


def watch_promotion(adapter: Adapter) -> PointerEvent | None:
    """Roll back an automatic promotion still in its watch window when people rate the new
    revision worse than the one before by more than the margin, or when its answers about a
    fact it changed still give the old value more often than the margin. Returns the rollback."""
    policy = RetrainPolicy.objects.filter(adapter=adapter).first()
    if policy is None or adapter.live_revision_id is None:
        return None
    moved = adapter.pointer_events.filter(to_revision_id=adapter.live_revision_id).first()
    if (
        moved is None
        or moved.action != PointerEvent.PROMOTE
        or moved.reason != AUTO_PROMOTE_REASON
        or moved.from_revision_id is None
        or timezone.now() - moved.created_at > timedelta(hours=policy.watch_hours)
    ):
        return None
    negative, rated = _ratings(moved.to_revision_id)
    previous_negative, previous_rated = _ratings(moved.from_revision_id)
    update_checked, update_failed = update_checks(moved.to_revision)
    watch = Watch(
        revision=moved.to_revision.label,
        previous=moved.from_revision.label,
        negative=negative,
        rated=rated,
        previous_negative=previous_negative,
        previous_rated=previous_rated,
        margin=policy.rollback_margin,
        update_checked=update_checked,
        update_failed=update_failed,
    )
    margin, enough = policy.rollback_margin, policy.min_feedback
    rated_worse = rated >= enough and watch.share - watch.previous_share > margin
    # In use, the revision still says a value its update replaced (there is no "previous"
    # to compare with: the revision before never learned the new value).
    forgets_updates = update_checked >= enough and watch.update_failure_share > margin
    if not (rated_worse or forgets_updates):
        return None
    system = Actor.system("promotion-watch")
    if rated_worse:
        reason = (
            f"automatic rollback: {watch.negative}/{watch.rated} ratings of {watch.revision} negative "
            f"({watch.share:.0%}) against {watch.previous_share:.0%} for {watch.previous}, "
            f"more than the {watch.margin:.0%} margin"
        )
    else:
        reason = (
            f"automatic rollback: {watch.update_failed}/{watch.update_checked} answers of {watch.revision} "
            f"about a changed fact still gave an old value ({watch.update_failure_share:.0%}), "
            f"more than the {watch.margin:.0%} margin"
        )
    with transaction.atomic():
        try:
            event = rollback(adapter, to=moved.from_revision, actor=system, reason=reason)
        except Conflict:
            return None  # someone moved the pointer meanwhile
        audit.record(
            system,
            "adapter.auto_rollback",
            adapter,
            person_handle=adapter.person.handle,
            after=watch.as_dict(),
        )
    return event


def watch_promotions() -> list[str]:
    """Beat: check every adapter promoted automatically within its watch window."""
    since = timezone.now() - timedelta(hours=24 * 90)
    candidates = (
        Adapter.objects.filter(
            retrain_policy__isnull=False,
            pointer_events__action=PointerEvent.PROMOTE,
            pointer_events__reason=AUTO_PROMOTE_REASON,
            pointer_events__created_at__gte=since,
        )
        .select_related("person")
        .distinct()
    )
    return [adapter.handle for adapter in candidates if watch_promotion(adapter)]
