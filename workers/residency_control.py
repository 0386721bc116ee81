"""The console's residency actions, run in the worker process that takes the task.

`adapters_app/lifecycle/residency.py` sends them to one worker's own queue. They act on
that process's manager for the revision's base only (a process serving several bases has
one manager each, and another base's tiers have no use for the adapter); under a prefork
pool, that is the child that took the task. Fetching goes through the manager, which verifies the sha256.
The outcome is the task's result, and the reporting thread is woken so the console
shows the new placement within moments.
"""

from __future__ import annotations

from workers.engine.residency import ResidencyError, ResidencyManager
from workers.engine.store import BlobCorrupted, BlobNotFound
from workers.residency_report import ensure_reporting, managers_here

NO_SERVER = "no server for that base in this worker process yet: it starts with the first request"


def pin(sha256: str, base_digest: str, tier: str, *, worker: str) -> dict:
    return _act("pin", sha256, base_digest, worker, lambda manager: manager.pin(sha256, tier))


def unpin(sha256: str, base_digest: str, *, worker: str) -> dict:
    return _act("unpin", sha256, base_digest, worker, lambda manager: manager.unpin(sha256))


def prefetch(sha256: str, base_digest: str, tier: str, *, worker: str) -> dict:
    return _act("prefetch", sha256, base_digest, worker, lambda manager: manager.prefetch(sha256, tier))


def managers_for(base_digest: str) -> list[ResidencyManager]:
    """This process's managers of that base (one, or none before its first request)."""
    return [manager for manager in managers_here() if manager.base_digest == base_digest]


def _act(action: str, sha256: str, base_digest: str, worker: str, do) -> dict:
    managers = managers_for(base_digest)
    outcome = {"action": action, "sha256": sha256, "worker": worker, "managers": len(managers)}
    if not managers:
        return {**outcome, "done": False, "note": NO_SERVER}
    try:
        for manager in managers:
            do(manager)
    except (ResidencyError, BlobNotFound, BlobCorrupted, ValueError) as exc:
        outcome.update(done=False, error=str(exc))
    else:
        outcome.update(done=True, tier_now=[manager.tier_of(sha256) for manager in managers])
    ensure_reporting(worker).wake()
    return outcome
