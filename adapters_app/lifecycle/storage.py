import functools

from django.conf import settings

from adapters_app.models import Dataset, Revision
from workers.engine.store import AdapterStore


@functools.cache
def _store_for(url: str) -> AdapterStore:
    return AdapterStore.from_url(url)


def get_store() -> AdapterStore:
    """The configured content-addressed store (MINT_STORE)."""
    return _store_for(settings.MINT_STORE)


def is_referenced(sha256: str) -> bool:
    """Does a committed revision or dataset name this blob?"""
    return Revision.objects.filter(sha256=sha256).exists() or Dataset.objects.filter(sha256=sha256).exists()


def delete_unreferenced_blob(sha256: str, *, put_after_ns: int) -> bool:
    """Delete a blob no row references, unless it was put again after `put_after_ns`: an
    upload that re-used it may not have committed its row yet (AdapterStore.delete_unreferenced)."""
    return get_store().delete_unreferenced(sha256, referenced=is_referenced, put_after_ns=put_after_ns)
