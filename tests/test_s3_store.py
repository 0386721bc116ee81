"""The store on a real S3 server (SeaweedFS): the file store's contract, and a clear error,
with nothing half-written, when the server cannot be reached, refuses us, or hands back
damaged bytes."""

import hashlib
import threading
import time

import pytest

from workers.engine.s3_store import S3Store, StoreUnavailable
from workers.engine.store import AdapterStore, BlobCorrupted, BlobNotFound, StoreError

PAYLOAD = b"a personal adapter's bytes" * 100


@pytest.fixture
def store(seaweedfs) -> S3Store:
    return AdapterStore.from_url(seaweedfs.store_url(seaweedfs.new_bucket()))


def test_a_blob_round_trips_under_its_sha256_and_is_written_once(store):
    put = store.put(PAYLOAD)
    assert put.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and put.created
    assert store.get(put.sha256) == PAYLOAD
    again = store.put(PAYLOAD)
    assert not again.created and again.stamp_ns > put.stamp_ns  # renewed: a deleter must see it
    assert list(store.all_keys()) == [put.sha256]
    assert store.exists(put.sha256) and 0 <= store.age_seconds(put.sha256) < 60


def test_the_url_names_bucket_prefix_and_endpoint(seaweedfs):
    store = AdapterStore.from_url(seaweedfs.store_url("some-bucket", "fleet/eu"))
    assert (store.bucket, store.prefix) == ("some-bucket", "fleet/eu/")
    assert store.key_for("a" * 64) == f"fleet/eu/blobs/aa/aa/{'a' * 64}"
    with pytest.raises(StoreError, match="unknown MINT_STORE parameter"):
        AdapterStore.from_url("s3://bucket/x?endpont=http://typo")


def test_two_hosts_putting_the_same_bytes_at_once_store_one_object(seaweedfs):
    # Two stores, as two hosts would have, each with its own (process-local) lock: only the
    # server's conditional put keeps them from both writing.
    url = seaweedfs.store_url(seaweedfs.new_bucket())
    hosts = [AdapterStore.from_url(url), AdapterStore.from_url(url)]
    results = []
    start = threading.Barrier(len(hosts))

    def put(store):
        start.wait()
        results.append(store.put(PAYLOAD))

    threads = [threading.Thread(target=put, args=(store,)) for store in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.created for result in results) == [False, True]
    assert hosts[0].get(results[0].sha256) == PAYLOAD


def test_damaged_bytes_on_the_server_are_refused_never_served(store, seaweedfs):
    sha = store.put(PAYLOAD).sha256
    seaweedfs.client().put_object(Bucket=store.bucket, Key=store.key_for(sha), Body=b"bit rot")
    with pytest.raises(BlobCorrupted, match="refusing to load it"):
        store.get(sha)
    with pytest.raises(BlobCorrupted):
        store.put(PAYLOAD)  # same key, other bytes: corruption, not a reason to overwrite


def test_a_missing_blob_names_the_store(store):
    with pytest.raises(BlobNotFound, match=f"s3://{store.bucket}/blobs-test/ at http://127.0.0.1"):
        store.get("0" * 64)


def test_wrong_credentials_are_a_clear_error_naming_endpoint_and_bucket(seaweedfs):
    bucket = seaweedfs.new_bucket()
    url = seaweedfs.store_url(bucket).replace("mint-test-secret-key", "not-the-secret")
    store = AdapterStore.from_url(url)
    with pytest.raises(StoreUnavailable, match=rf"s3://{bucket}/.* refused our credentials"):
        store.put(PAYLOAD)
    assert "Contents" not in seaweedfs.client().list_objects_v2(Bucket=bucket)


def test_an_endpoint_that_is_down_is_a_clear_error_soon(seaweedfs):
    store = S3Store(
        "mint",
        endpoint="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
        attempts=2,
        connect_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailable, match=r"cannot reach the object store s3://mint/ at http://127\.0\.0\.1:9"
    ):
        store.get("0" * 64)
    assert time.monotonic() - started < 20


def test_a_large_payload_goes_up_in_parts_and_comes_back_verified(seaweedfs):
    store = S3Store.from_url(seaweedfs.store_url(seaweedfs.new_bucket()))
    store.multipart_threshold = 5 * 1024**2  # S3's smallest part
    big = bytes(range(256)) * (6 * 1024**2 // 256 + 1)
    put = store.put(big)
    assert put.created and store.get(put.sha256) == big


def test_an_unreferenced_blob_is_deleted_unless_it_was_put_again_meanwhile(store):
    first = store.put(PAYLOAD)
    renewed = store.put(PAYLOAD)  # someone re-used it after the deleter looked
    assert not store.delete_unreferenced(
        first.sha256, referenced=lambda sha: False, put_after_ns=first.stamp_ns
    )
    assert not store.delete_unreferenced(
        first.sha256, referenced=lambda sha: True, put_after_ns=renewed.stamp_ns
    )
    assert store.delete_unreferenced(
        first.sha256, referenced=lambda sha: False, put_after_ns=renewed.stamp_ns
    )
    assert not store.exists(first.sha256)


# --- the product on the object store -----------------------------------------------------


@pytest.fixture
def s3_settings(settings, seaweedfs):
    settings.MINT_STORE = seaweedfs.store_url(seaweedfs.new_bucket())
    return settings


def test_a_revision_is_stored_on_s3_and_an_erasure_removes_its_blob(s3_settings, make_revision, actor):
    from adapters_app.lifecycle.people import erase_person
    from adapters_app.lifecycle.storage import get_store

    revision = make_revision()
    store = get_store()
    assert isinstance(store, S3Store) and store.exists(revision.sha256)
    erase_person(revision.adapter.person, actor=actor, reason="asked to be forgotten")
    assert not store.exists(revision.sha256)


def test_a_store_that_refuses_us_leaves_no_revision_row(s3_settings, adapter, dataset, actor, tiny_payload):
    from adapters_app.lifecycle.revisions import create_revision
    from adapters_app.models import Revision

    s3_settings.MINT_STORE = s3_settings.MINT_STORE.replace("mint-test-secret-key", "wrong")
    with pytest.raises(StoreUnavailable, match="refused our credentials"):
        create_revision(
            adapter, tiny_payload, dataset=dataset, training_config={}, parent=None, job=None, actor=actor
        )
    assert not Revision.objects.exists()


def test_migrate_store_copies_every_blob_verified_and_resumes(seaweedfs, tmp_path):
    from django.core.management import CommandError, call_command

    source = AdapterStore(tmp_path / "old-store")
    blobs = [source.put(bytes([n]) * 1000).sha256 for n in range(5)]
    target_url = seaweedfs.store_url(seaweedfs.new_bucket())
    target = AdapterStore.from_url(target_url)
    target.put(bytes([0]) * 1000)  # a run that stopped after the first blob

    call_command("migrate_store", "--from", f"file://{source.root}", "--to", target_url)
    assert sorted(target.all_keys()) == sorted(blobs)
    assert all(target.get(sha) == source.get(sha) for sha in blobs)

    source.path_for(blobs[3]).chmod(0o644)
    source.path_for(blobs[3]).write_bytes(b"bit rot")
    with pytest.raises(CommandError, match="1 blob"):
        call_command(
            "migrate_store",
            "--from",
            f"file://{source.root}",
            "--to",
            seaweedfs.store_url(seaweedfs.new_bucket()),
        )
