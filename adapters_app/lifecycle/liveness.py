"""Whether a worker is alive now: a short lease in Redis that each worker keeps renewing.

The `Worker` row's heartbeat (every MINT_WORKER_HEARTBEAT_SECONDS, stale after three missed)
is for the console and the sweeps; it takes half a minute to notice a worker killed
outright. A request waiting on a worker cannot wait that long: a stream whose worker died
would sit silent until MINT_INFERENCE_TIMEOUT_SECONDS, and requests routed to the dead
worker's own queue would wait as long for a `started` that never comes. So every worker's
main process renews `alive:<node name>` in the shared cache (Redis; time to live
MINT_WORKER_LEASE_SECONDS) three times a lease (`workers/heartbeat.py`); the router passes
over workers whose lease lapsed, and a stream's reader gives up on a quiet stream once its
writer's lease is gone.

A worker killed outright loses its lease within MINT_WORKER_LEASE_SECONDS. Redis losing
every key (a restart) loses the leases too, for a moment: the router then falls back to the
rows (a lease is only believed when some lease is there), and readers' streams are broken
by that restart anyway.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)


def alive_key(node: str) -> str:
    """The lease's key in the shared cache (routing reads it with its other figures)."""
    return f"alive:{node}"


def renew(node: str) -> None:
    """Hold (or renew) `node`'s lease for MINT_WORKER_LEASE_SECONDS."""
    cache.set(alive_key(node), 1, timeout=settings.MINT_WORKER_LEASE_SECONDS)


def release(node: str) -> None:
    try:
        cache.delete(alive_key(node))
    except Exception:  # unreachable: it lapses by itself
        log.warning("could not release worker %s's lease", node, exc_info=True)


def is_alive(node: str) -> bool:
    """False only when the cache answers and `node`'s lease has lapsed."""
    try:
        return cache.get(alive_key(node)) is not None
    except Exception:
        return True
