import hashlib
import os
import threading
import time

import pytest

from workers.engine.store import AdapterStore, BlobCorrupted, BlobNotFound, StoreError


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


def test_it_keys_blobs_by_their_sha256(store):
    put = store.put(b"weights")
    assert put.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert put.created
    assert store.get(put.sha256) == b"weights"


def test_storing_the_same_bytes_twice_is_a_no_op(store):
    first = store.put(b"same")
    second = store.put(b"same")
    assert second.sha256 == first.sha256
    assert not second.created


def test_it_refuses_bytes_that_do_not_match_the_expected_key(store):
    with pytest.raises(StoreError, match="refusing to store"):
        store.put(b"payload", expected_sha256="0" * 64)
    assert list(store.all_keys()) == []


def test_it_refuses_to_load_a_corrupted_blob(store):
    sha = store.put(b"original bytes").sha256
    path = store.path_for(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered bytes")
    with pytest.raises(BlobCorrupted, match=f"blob {sha} is corrupted"):
        store.get(sha)


def test_it_refuses_to_overwrite_a_key_holding_different_bytes(store):
    sha = store.put(b"original").sha256
    path = store.path_for(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"corrupt")
    with pytest.raises(BlobCorrupted):
        store.put(b"original")


def test_a_missing_blob_is_reported_by_key(store):
    with pytest.raises(BlobNotFound, match="a" * 64):
        store.get("a" * 64)


def test_it_leaves_no_temp_files_behind(store):
    store.put(b"x" * 10_000)
    leftovers = [p for p in store.root.rglob(".incoming-*")]
    assert leftovers == []


def test_it_rejects_keys_that_are_not_sha256(store):
    with pytest.raises(StoreError, match="not a sha256 key"):
        store.get("../../etc/passwd")


def test_storing_the_same_bytes_again_renews_the_blobs_age(store):
    # An upload that re-uses a blob is about to reference it: the orphan sweep, which
    # spares blobs younger than its grace period, must see it as new.
    sha = store.put(b"same").sha256
    an_hour_ago = time.time() - 3600
    os.utime(store.path_for(sha), (an_hour_ago, an_hour_ago))
    again = store.put(b"same")
    assert store.age_seconds(sha) < 60
    assert again.stamp_ns == store.path_for(sha).stat().st_mtime_ns


def unreferenced(sha: str) -> bool:
    return False


def referenced(sha: str) -> bool:
    return True


def test_a_delete_spares_a_blob_put_again_since_or_still_referenced(store):
    first = store.put(b"payload")
    second = store.put(b"payload")  # someone re-used it after us, and may not have committed yet
    sha = first.sha256
    assert second.stamp_ns > first.stamp_ns
    assert not store.delete_unreferenced(sha, referenced=unreferenced, put_after_ns=first.stamp_ns)
    assert not store.delete_unreferenced(sha, referenced=referenced, put_after_ns=second.stamp_ns)
    assert store.exists(sha)
    assert store.delete_unreferenced(sha, referenced=unreferenced, put_after_ns=second.stamp_ns)
    assert not store.exists(sha)
    assert not store.delete_unreferenced(sha, referenced=unreferenced, put_after_ns=second.stamp_ns)


def test_a_put_waits_for_a_delete_deciding_on_the_same_blob(store):
    # The reference check and the delete happen under the blob's lock, so a re-use
    # cannot slip in between them.
    sha = store.put(b"payload").sha256
    deciding, put_done = threading.Event(), threading.Event()

    put_while_deciding = []

    def check_references(_sha: str) -> bool:
        deciding.set()
        put_while_deciding.append(put_done.wait(0.5))
        return False

    deleter = threading.Thread(
        target=store.delete_unreferenced,
        args=(sha,),
        kwargs={"referenced": check_references, "put_after_ns": 2**62},
    )
    deleter.start()
    assert deciding.wait(5)
    again = store.put(b"payload")
    put_done.set()
    deleter.join()
    assert put_while_deciding == [False]
    assert again.created and store.get(sha) == b"payload"
