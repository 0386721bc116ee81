import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from adapters_app.models import Dataset, Revision
from workers.engine.store import AdapterStore, BlobCorrupted, BlobNotFound


@functools.cache
def store_for(url: str) -> AdapterStore:
    # An object store is shared by every host: its puts and deletes lock in Redis, which
    # every host shares too. A file store locks with the machine's own file locks.
    return AdapterStore.from_url(url, locks=_redis_lock)


def _redis_lock(name: str):
    from adapters_app.lifecycle.inference import redis_client

    # Held for one blob's put or delete: a minute is generous; a holder that died frees it then.
    return redis_client().lock(name, timeout=60, blocking_timeout=120)


def get_store() -> AdapterStore:
    """The configured content-addressed store (MINT_STORE)."""
    return store_for(settings.MINT_STORE)


def is_referenced(sha256: str) -> bool:
    """Does a committed revision or dataset name this blob?"""
    return Revision.objects.filter(sha256=sha256).exists() or Dataset.objects.filter(sha256=sha256).exists()


def delete_unreferenced_blob(sha256: str, *, put_after_ns: int) -> bool:
    """Delete a blob no row references, unless it was put again after `put_after_ns`: an
    upload that re-used it may not have committed its row yet (AdapterStore.delete_unreferenced)."""
    return get_store().delete_unreferenced(sha256, referenced=is_referenced, put_after_ns=put_after_ns)


@dataclass
class Migration:
    """What `migrate_blobs` did: each blob copied, found already there (verified), or refused."""

    copied: int = 0
    already_there: int = 0
    bytes_copied: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # sha256 -> why

    @property
    def seen(self) -> int:
        return self.copied + self.already_there + len(self.refused)


def migrate_blobs(source, target, *, on_blob: Callable[[Migration, str], None] | None = None) -> Migration:
    """Copy every blob of `source` into `target`, each verified: read from the source by its
    sha256 (a corrupted one is refused and reported, never copied), written once under the
    same key. A blob already in the target is read back and checked instead, so a migration
    that stopped half way is resumed by running it again."""
    done = Migration()
    for sha256 in source.all_keys():
        try:
            if target.exists(sha256):
                target.get(sha256)
                done.already_there += 1
            else:
                data = source.get(sha256)
                target.put(data, expected_sha256=sha256)
                done.copied += 1
                done.bytes_copied += len(data)
        except (BlobCorrupted, BlobNotFound) as problem:
            done.refused[sha256] = str(problem)
        if on_blob is not None:
            on_blob(done, sha256)
    return done
