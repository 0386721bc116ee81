import hashlib
import os

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
