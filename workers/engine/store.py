"""A content-addressed blob store for adapter payloads and datasets.

Keys are the sha256 of the bytes. Writes go to a temp file in the same folder,
are fsynced and renamed into place, so a reader never sees half a blob. Every
read verifies the hash: a blob corrupted on disk is refused, never served.

A blob's mtime is when it was last put: storing bytes that are already there
renews it, because the caller is about to reference the blob in a row it has not
committed yet. Deletes that depend on a blob being unreferenced go through
`delete_unreferenced`, which decides under the blob's lock (a put takes the same
lock) and spares a blob put again since the deleter last knew of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class StoreError(RuntimeError):
    pass


class BlobNotFound(StoreError):
    pass


class BlobCorrupted(StoreError):
    pass


def verified(sha256: str, data: bytes) -> bytes:
    """`data`, if it hashes to its key `sha256`; BlobCorrupted otherwise (never served)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BlobCorrupted(f"blob {sha256} is corrupted: its bytes hash to {actual}; refusing to load it")
    return data


@dataclass(frozen=True, slots=True)
class PutResult:
    sha256: str
    size: int
    created: bool  # False when identical bytes were already stored
    stamp_ns: int = 0  # the blob's mtime as this put left it (see delete_unreferenced)


class AdapterStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, *, locks=None):
        """`file:///abs/path` or a plain path: this store; `s3://bucket/prefix`: the same
        contract on an object store (s3_store.py), locked across hosts by `locks`."""
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            return cls(parsed.path if parsed.scheme else url)
        if parsed.scheme == "s3":
            from workers.engine.s3_store import S3Store

            return S3Store.from_url(url, locks=locks)
        raise StoreError(
            f"unsupported MINT_STORE scheme {parsed.scheme!r}; use file:///path or s3://bucket/prefix"
        )

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise StoreError(f"not a sha256 key: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, *, expected_sha256: str | None = None) -> PutResult:
        sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and expected_sha256 != sha256:
            raise StoreError(f"refusing to store bytes with sha256 {sha256} under key {expected_sha256}")
        path = self.path_for(sha256)
        with self._locked(sha256):
            if path.exists():
                # Same key must mean same bytes; a mismatch is corruption, not a
                # reason to overwrite silently.
                self.get(sha256)
                return PutResult(sha256, len(data), created=False, stamp_ns=self._renew(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return PutResult(sha256, len(data), created=True, stamp_ns=self._renew(path))

    @staticmethod
    def _renew(path: Path) -> int:
        """Set the blob's mtime to now, and always later than it was (clocks are coarse):
        a deleter compares it with the stamp it knows, and must see any later put."""
        stamp = max(time.time_ns(), path.stat().st_mtime_ns + 1)
        os.utime(path, ns=(stamp, stamp))
        return stamp

    @contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        """Exclusive, across processes and threads, for the blobs sharing `sha256`'s first
        two hex digits (256 lock files, not one per blob). Held only for file work and
        reads, never while waiting on a database lock, so it cannot deadlock with one."""
        lock = self.root / sha256[:2] / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} is not in the store at {self.root}") from None
        return verified(sha256, data)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def delete(self, sha256: str) -> bool:
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_unreferenced(
        self, sha256: str, *, referenced: Callable[[str], bool], put_after_ns: int
    ) -> bool:
        """Delete the blob unless `referenced(sha256)` or it was put after `put_after_ns`
        (someone re-used it and may be about to commit a row naming it; the orphan sweep
        decides later). Decided under the blob's lock, so no put slips in between the
        check and the unlink. True when deleted."""
        path = self.path_for(sha256)
        with self._locked(sha256):
            try:
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                return False
            if stamp > put_after_ns or referenced(sha256):
                return False
            path.unlink()
            return True

    def all_keys(self) -> Iterator[str]:
        for path in self.root.glob("??/??/*"):
            if SHA256_RE.match(path.name):
                yield path.name

    def age_seconds(self, sha256: str) -> float:
        return time.time() - self.path_for(sha256).stat().st_mtime
