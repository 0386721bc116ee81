import re
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Max

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Invalid, NotFound
from adapters_app.lifecycle.gates import refresh_gate_status
from adapters_app.lifecycle.roles import authorize
from adapters_app.lifecycle.storage import delete_unreferenced_blob, get_store
from adapters_app.models import Adapter, BaseModel, Dataset, Job, Revision
from adapters_app.models.person import is_handle
from mintweb.version import code_version
from workers.engine.payload import peft_tar_gz, unpack

# Matched whole, in ASCII digits only; 18 digits are more revisions than an adapter can have
# (and a longer number would not even convert: Python refuses int() of 4,300 digits).
REVISION_REF_RE = re.compile(r"r?([0-9]{1,18})")
SHA_PREFIX_RE = re.compile(r"[0-9a-f]{6,64}")


def create_revision(
    adapter: Adapter,
    payload: bytes,
    *,
    dataset: Dataset,
    training_config: dict,
    parent: Revision | None,
    job: Job | None,
    actor: Actor,
    final_loss: float | None = None,
    on_created: Callable[[Revision], None] | None = None,
    updates: dict | None = None,
) -> Revision:
    """Store the payload and write the revision row as one step.

    The blob is written first (atomically); if the row cannot be written the
    blob is removed again, so there is never a row without its blob nor a new
    blob that nothing references. (A process killed between the two leaves a
    blob that the orphan sweep removes after its grace period.)

    `on_created` runs inside the same transaction (a worker marks its job
    succeeded there); if it raises, nothing is kept.
    """
    unpacked = unpack(payload)
    config = unpacked.config
    store = get_store()
    put = store.put(payload)
    try:
        with transaction.atomic():
            locked = Adapter.objects.select_for_update().get(pk=adapter.pk)
            number = (locked.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
            revision = Revision.objects.create(
                adapter=locked,
                number=number,
                sha256=put.sha256,
                size_bytes=put.size,
                rank=int(config.get("r", training_config.get("rank", 0))),
                parameters=unpacked.parameters,
                parent=parent,
                dataset=dataset,
                dataset_sha256=dataset.sha256,
                dataset_rows=dataset.rows,
                training_config=training_config,
                seed=int(training_config.get("seed", 0)),
                init_method=str(training_config.get("init", "default")),
                base_digest=locked.base_digest,
                code_version=code_version(),
                job=job,
                created_by=actor.name,
                final_loss=final_loss,
                updates=updates or {},
            )
            audit.record(
                actor,
                "revision.create",
                revision,
                person_handle=locked.person.handle,
                after={"sha256": revision.sha256, "number": number, "job": job.pk if job else None},
            )
            refresh_gate_status(locked)
            if on_created is not None:
                on_created(revision)
    except BaseException:
        # Unless another writer re-used the blob meanwhile (it may commit yet).
        if put.created:
            delete_unreferenced_blob(put.sha256, put_after_ns=put.stamp_ns)
        raise
    return revision


def get_revision(adapter: Adapter, ref: str) -> Revision:
    """`r3`, `3`, or a sha256 prefix of at least 6 hex digits. A sha256 prefix can be all
    decimal digits (`4260790094`): a bare number names the revision of that number when
    there is one, and is otherwise read as a sha256 prefix."""
    ref = (ref or "").strip().lower()
    queryset = Revision.objects.filter(adapter=adapter).select_related("adapter__person")
    number, sha_prefix = REVISION_REF_RE.fullmatch(ref), SHA_PREFIX_RE.fullmatch(ref)
    if not number and not sha_prefix:
        raise Invalid(f"{ref!r} is not a revision reference; use r<N> or a sha256 prefix")
    found = queryset.filter(number=int(number.group(1))).first() if number else None
    if found is None and sha_prefix:
        matches = list(queryset.filter(sha256__startswith=ref)[:2])
        if len(matches) > 1:
            raise Invalid(f"sha256 prefix {ref!r} is ambiguous for {adapter.handle}; give more digits")
        found = matches[0] if matches else None
    if found is None:
        raise NotFound(f"{adapter.handle} has no revision {ref!r}")
    return found


def load_payload(revision: Revision) -> bytes:
    """The revision's payload from the store, refused if its bytes do not match its sha256."""
    return get_store().get(revision.sha256)


def export_archive(revision: Revision) -> tuple[str, bytes]:
    """(file name, .tar.gz bytes) of the revision's PEFT folder, with a provenance README."""
    adapter = revision.adapter
    readme = (
        f"# {adapter.handle}@{revision.label}\n\n"
        f"PEFT LoRA adapter for base digest {revision.base_digest}.\n\n"
        f"- sha256 of adapter_model.safetensors: {revision.sha256}\n"
        f"- rank: {revision.rank}, trainable parameters: {revision.parameters}\n"
        f"- dataset sha256: {revision.dataset_sha256} ({revision.dataset_rows} rows)\n"
        f"- training config: {revision.training_config}\n"
        f"- seed: {revision.seed}, init: {revision.init_method}, code version: {revision.code_version}\n"
        f"- created by {revision.created_by} at {revision.created_at:%Y-%m-%d %H:%M:%S} UTC\n\n"
        "Load with `PeftModel.from_pretrained(base_model, <this folder>)`.\n"
    )
    filename = f"{adapter.person.handle}-{adapter.name}-{revision.label}.tar.gz"
    return filename, peft_tar_gz(load_payload(revision), readme=readme)


def download_revision(revision: Revision, *, actor: Actor) -> tuple[str, bytes]:
    """`export_archive` for someone taking the weights away: the role is checked and the
    download audited, whichever door it came through. The archive is built first, so a
    corrupted blob is refused without leaving a record of a download that never happened."""
    authorize(actor, "revision.download")
    filename, archive = export_archive(revision)
    audit.record(
        actor,
        "revision.download",
        revision,
        person_handle=revision.adapter.person.handle,
        after={"sha256": revision.sha256, "number": revision.number},
    )
    return filename, archive


@dataclass(frozen=True, slots=True)
class ModelName:
    """An OpenAI `model` string read, before any lookup: a base's name, or
    `person/adapter` with an optional `@pin`."""

    text: str
    base: str = ""
    person: str = ""
    adapter: str = ""
    pin: str = ""

    @classmethod
    def parse(cls, model: str) -> "ModelName":
        model = (model or "").strip()
        if not model:
            raise Invalid("model is required")
        if "/" not in model:
            return cls(model, base=model)
        handle, _, pin = model.partition("@")
        person, _, adapter = handle.partition("/")
        return cls(model, person=person, adapter=adapter, pin=pin)

    def not_found(self) -> NotFound:
        # The one answer for every model a caller may not know about, so that "missing"
        # and "not yours" cannot be told apart.
        return NotFound(f"The model `{self.text}` does not exist")


def resolve_model(model: str | ModelName) -> tuple[BaseModel, Revision | None]:
    """Resolve an OpenAI `model` string to a base and an optional revision.

    `person/adapter` is the live revision, `person/adapter@r2` or `@<sha prefix>`
    a pinned one, and a bare name is a registered base model.
    """
    from adapters_app.lifecycle.people import get_adapter

    name = model if isinstance(model, ModelName) else ModelName.parse(model)
    if name.base:
        base = BaseModel.objects.filter(name=name.base).first() if is_handle(name.base) else None
        if base is None:
            raise name.not_found()
        return base, None
    try:
        adapter = get_adapter(name.person, name.adapter)
    except NotFound:
        raise name.not_found() from None
    if name.pin:
        revision = get_revision(adapter, name.pin)
    elif adapter.live_revision_id is None:
        raise NotFound(f"The model `{name.text}` has no live revision yet; promote one first")
    else:
        revision = adapter.live_revision
        # Its adapter is the one just read (with its person): no query when a caller asks.
        revision.adapter = adapter
    return adapter.base, revision
