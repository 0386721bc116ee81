"""Revisions are write-once, numbered per adapter, and their blobs are verified on load."""

import hashlib
import os

import pytest

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Invalid, NotFound
from adapters_app.lifecycle.revisions import get_revision, load_payload, resolve_model
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import AuditEvent, Revision
from adapters_app.models.append_only import ImmutableRowError
from workers.engine.store import BlobCorrupted


def test_revisions_are_numbered_per_adapter_with_provenance(make_revision, dataset, adapter):
    r1 = make_revision()
    r2 = make_revision(parent=r1)
    assert (r1.label, r2.label) == ("r1", "r2")
    assert r2.parent == r1
    assert r2.dataset_sha256 == dataset.sha256
    assert r2.dataset_rows == dataset.rows
    assert r2.base_digest == adapter.base_digest
    assert r2.training_config["rank"] == 8
    assert r2.code_version
    assert r2.created_by == "olivia"


def test_a_revision_cannot_be_saved_again(make_revision):
    revision = make_revision()
    revision.rank = 64
    with pytest.raises(ImmutableRowError, match="write-once"):
        revision.save()
    assert Revision.objects.get(pk=revision.pk).rank == 8


def test_a_revision_cannot_be_changed_by_a_queryset_update(make_revision):
    revision = make_revision()
    with pytest.raises(ImmutableRowError):
        Revision.objects.filter(pk=revision.pk).update(sha256="0" * 64)
    assert Revision.objects.get(pk=revision.pk).sha256 == revision.sha256


def test_a_corrupted_blob_is_refused_on_load(make_revision):
    revision = make_revision()
    path = get_store().path_for(revision.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupted, match=f"blob {revision.sha256} is corrupted"):
        load_payload(revision)


def test_a_failed_row_write_leaves_no_blob_behind(adapter, dataset, actor, tiny_payload):
    from adapters_app.lifecycle.revisions import create_revision

    def explode(revision):
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        create_revision(
            adapter,
            tiny_payload,
            dataset=dataset,
            training_config={},
            parent=None,
            job=None,
            actor=actor,
            on_created=explode,
        )
    assert not Revision.objects.exists()
    assert list(get_store().all_keys()) == [dataset.sha256]  # the payload blob was removed


def test_creating_a_revision_is_audited(make_revision):
    revision = make_revision()
    event = AuditEvent.objects.get(action="revision.create")
    assert event.actor_name == "olivia"
    assert event.after["sha256"] == revision.sha256


def test_revisions_resolve_by_label_number_or_sha_prefix(make_revision, adapter):
    revision = make_revision()
    assert get_revision(adapter, "r1") == revision
    assert get_revision(adapter, "1") == revision
    assert get_revision(adapter, revision.sha256[:10]) == revision
    with pytest.raises(NotFound):
        get_revision(adapter, "r9")
    with pytest.raises(Invalid):
        get_revision(adapter, "latest!")


def test_a_sha256_prefix_of_only_digits_still_finds_its_revision(make_revision, adapter, tiny_payload):
    from workers.engine.payload import pack, unpack

    stored = unpack(tiny_payload)
    for note in range(1000):  # about one sha256 in sixteen starts with six decimal digits
        payload = pack(stored.tensors, {**stored.config, "revision_note": note})
        if hashlib.sha256(payload).hexdigest()[:6].isdigit():
            break
    revision = make_revision(payload)
    digits = revision.sha256[:6]
    assert get_revision(adapter, digits) == revision  # no revision has that number
    assert get_revision(adapter, "1") == revision  # a small number is still a revision number


def test_model_names_resolve_to_live_pinned_or_base(make_revision, adapter, micro_base):
    from adapters_app.lifecycle.pointer import promote

    r1 = make_revision()
    with pytest.raises(NotFound, match="no live revision"):
        resolve_model("alice/assistant")
    promote(r1, actor=Actor.system())
    assert resolve_model("alice/assistant") == (micro_base, r1)
    assert resolve_model("alice/assistant@r1") == (micro_base, r1)
    assert resolve_model(f"alice/assistant@{r1.sha256[:8]}") == (micro_base, r1)
    assert resolve_model("mint-micro") == (micro_base, None)
    with pytest.raises(NotFound, match="does not exist"):
        resolve_model("bob/assistant")
