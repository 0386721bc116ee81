import functools

from django.conf import settings

from workers.engine.store import AdapterStore


@functools.cache
def _store_for(url: str) -> AdapterStore:
    return AdapterStore.from_url(url)


def get_store() -> AdapterStore:
    """The configured content-addressed store (MINT_STORE)."""
    return _store_for(settings.MINT_STORE)
