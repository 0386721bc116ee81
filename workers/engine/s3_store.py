"""The content-addressed store on an S3-compatible object store (AWS S3, MinIO, SeaweedFS,
Ceph, R2), with the file store's contract (store.py):

- keys are the sha256 of the bytes (`<prefix>blobs/ab/cd/<sha256>`);
- a blob is written once: a conditional put (`If-None-Match: *`) where the server supports it,
  else check-then-put under the store's lock; bytes already stored are read back and verified,
  never overwritten;
- every read is verified: bytes that do not hash to their key are refused (BlobCorrupted);
- a put stamp (the object's `mint-put-ns` metadata) is renewed by every put of existing bytes,
  so `delete_unreferenced` can spare a blob someone re-used after the deleter last knew of it;
  the check and the delete happen under the same lock a put takes.

Locks must hold across hosts (several web and worker hosts share one bucket): the caller
passes `locks`, a function from a lock name to a context manager (the lifecycle gives a
Redis lock); without one, a process-local lock, which is only right for one process.

The client is boto3: it is the reference SDK, installs offline, and speaks to every
S3-compatible server; it signs (SigV4), retries transient errors with backoff (botocore's
"standard" mode), reads endpoint and credentials from the standard AWS variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) and uploads large
payloads in parts. obstore is faster on bulk transfer, but a revision is megabytes and the
cost that matters here is correctness of each call.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import parse_qs, urlparse

from workers.engine.store import SHA256_RE, BlobNotFound, PutResult, StoreError, verified

STAMP = "mint-put-ns"
# Payloads above this go up in parts (S3's smallest part is 5 MiB).
MULTIPART_THRESHOLD = 64 * 1024**2
LockFactory = Callable[[str], AbstractContextManager]


class StoreUnavailable(StoreError):
    """The object store cannot be reached, or refuses our credentials."""


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        locks: LockFactory | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        attempts: int = 5,
        connect_timeout: float = 5,
    ):
        import boto3
        from botocore.config import Config

        if not bucket:
            raise StoreError("an s3:// store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.multipart_threshold = multipart_threshold
        self._locks = locks or _local_locks()
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=60,
                # Path-style addressing: MinIO, SeaweedFS and Ceph serve buckets that way.
                s3={"addressing_style": "path"},
            ),
        )
        self.endpoint = self.client.meta.endpoint_url

    @classmethod
    def from_url(cls, url: str, *, locks: LockFactory | None = None) -> S3Store:
        """`s3://bucket/prefix[?endpoint=…&region=…&access_key_id=…&secret_access_key=…]`;
        what the query leaves out comes from the standard AWS variables."""
        parsed = urlparse(url)
        query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint", "region", "access_key_id", "secret_access_key"}
        if unknown:
            raise StoreError(f"unknown MINT_STORE parameter(s) {', '.join(sorted(unknown))}")
        return cls(parsed.netloc, parsed.path, locks=locks, **query)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix} at {self.endpoint})"

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def key_for(self, sha256: str) -> str:
        if not SHA256_RE.match(sha256):
            raise StoreError(f"not a sha256 key: {sha256!r}")
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    # --- the store's contract -------------------------------------------------------------

    def put(self, data: bytes, *, expected_sha256: str | None = None) -> PutResult:
        sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and expected_sha256 != sha256:
            raise StoreError(f"refusing to store bytes with sha256 {sha256} under key {expected_sha256}")
        key = self.key_for(sha256)
        with self._locked(sha256), self._errors():
            stamp = self._stamp(key)
            if stamp is not None:
                # Same key must mean same bytes: read back and verified, never overwritten.
                self.get(sha256)
                return PutResult(sha256, len(data), created=False, stamp_ns=self._renew(key, stamp))
            stamp = time.time_ns()
            if not self._put_new(key, data, stamp):
                # Another deployment's put won the race between our check and our write.
                self.get(sha256)
                return PutResult(sha256, len(data), created=False, stamp_ns=self._renew(key, stamp))
            return PutResult(sha256, len(data), created=True, stamp_ns=stamp)

    def get(self, sha256: str) -> bytes:
        key = self.key_for(sha256)
        with self._errors():
            try:
                data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise BlobNotFound(f"blob {sha256} is not in the store {self.where}") from None
        return verified(sha256, data)

    def exists(self, sha256: str) -> bool:
        with self._errors():
            return self._stamp(self.key_for(sha256)) is not None

    def delete(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        with self._errors():
            if self._stamp(key) is None:
                return False
            self.client.delete_object(Bucket=self.bucket, Key=key)
            return True

    def delete_unreferenced(
        self, sha256: str, *, referenced: Callable[[str], bool], put_after_ns: int
    ) -> bool:
        """Delete the blob unless `referenced(sha256)` or it was put after `put_after_ns`;
        decided under the lock every put takes (see the file store's)."""
        key = self.key_for(sha256)
        with self._locked(sha256), self._errors():
            stamp = self._stamp(key)
            if stamp is None or stamp > put_after_ns or referenced(sha256):
                return False
            self.client.delete_object(Bucket=self.bucket, Key=key)
            return True

    def all_keys(self) -> Iterator[str]:
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if SHA256_RE.match(name):
                        yield name

    def age_seconds(self, sha256: str) -> float:
        with self._errors():
            stamp = self._stamp(self.key_for(sha256))
        if stamp is None:
            raise BlobNotFound(f"blob {sha256} is not in the store {self.where}")
        return time.time() - stamp / 1e9

    # --- the pieces -------------------------------------------------------------------------

    def _stamp(self, key: str) -> int | None:
        """The blob's put stamp (ns), or None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        stamp = head.get("Metadata", {}).get(STAMP)
        # An object put by another tool has no stamp: its last-modified time stands in.
        return int(stamp) if stamp and stamp.isdigit() else int(head["LastModified"].timestamp() * 1e9)

    def _put_new(self, key: str, data: bytes, stamp: int) -> bool:
        """Write a new object; False when the server says one appeared meanwhile."""
        from botocore.exceptions import ClientError

        metadata = {STAMP: str(stamp)}
        if len(data) > self.multipart_threshold:
            from boto3.s3.transfer import TransferConfig

            # Parts carry no condition; the lock made this check-then-put. Verified after.
            self.client.upload_fileobj(
                io.BytesIO(data),
                self.bucket,
                key,
                ExtraArgs={"Metadata": metadata},
                Config=TransferConfig(multipart_threshold=self.multipart_threshold),
            )
            size = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
            if size != len(data):
                raise StoreError(f"the object store kept {size} of {len(data)} bytes of {key}")
            return True
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        try:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, Metadata=metadata, IfNoneMatch="*"
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in {"PreconditionFailed", "412"}:
                return False
            if code != "NotImplemented":
                raise
            # A server without conditional writes: the lock made this check-then-put.
            answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata)
        # A single-part object's ETag is its MD5: what arrived is what we sent.
        if answer.get("ETag", "").strip('"') not in {md5, ""}:
            self.client.delete_object(Bucket=self.bucket, Key=key)
            raise StoreError(f"the object store received damaged bytes for {key}; nothing was kept")
        return True

    def _renew(self, key: str, known: int) -> int:
        """Stamp the blob as put now, and always later than it was."""
        stamp = max(time.time_ns(), known + 1)
        self.client.copy_object(
            Bucket=self.bucket,
            Key=key,
            CopySource={"Bucket": self.bucket, "Key": key},
            Metadata={STAMP: str(stamp)},
            MetadataDirective="REPLACE",
        )
        return stamp

    @contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        # One lock per leading byte, as the file store's: 256 names, not one per blob.
        with self._locks(f"mint:store:{self.bucket}:{self.prefix}{sha256[:2]}"):
            yield

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The object store's failures, named: where, which bucket, what to check."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            yield
        except StoreError:
            raise
        except EndpointConnectionError as error:
            raise StoreUnavailable(f"cannot reach the object store {self.where}: {error}") from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if (
                code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
                or status == 403
            ):
                raise StoreUnavailable(
                    f"the object store {self.where} refused our credentials ({code}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"
                ) from None
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"bucket {self.bucket} does not exist at {self.endpoint}") from None
            raise StoreError(f"the object store {self.where} failed: {code or status}: {error}") from None
        except BotoCoreError as error:
            raise StoreUnavailable(f"the object store {self.where} failed: {error}") from None


def _local_locks() -> LockFactory:
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def lock(name: str) -> threading.Lock:
        with guard:
            return locks.setdefault(name, threading.Lock())

    return lock
