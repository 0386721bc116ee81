"""Pin, unpin and prefetch an adapter revision on one worker: the console's residency actions.

The rule lives here: the revision exists, the worker is healthy and serves this fleet
(its row lists the fleet's shared or serving queue, and its own), the tier is one the residency
manager keeps. The action is then sent to the worker's own queue
(`routing.worker_queue`), run there by `workers/residency_control.py`, and audited. It
is not waited for: the worker's page shows the new placement once its process reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.revisions import resolve_model
from adapters_app.lifecycle.roles import authorize
from adapters_app.lifecycle.routing import route, serving_queue, worker_queue
from adapters_app.models import Revision, Worker
from mintweb.celery import app as celery_app

PIN, UNPIN, PREFETCH = "pin", "unpin", "prefetch"
ACTIONS = (PIN, UNPIN, PREFETCH)
# The residency manager's tiers, fastest first (workers/engine/residency.py:CACHED_TIERS).
TIERS = ("device", "cpu", "disk")
TASKS = {action: f"workers.tasks.residency_{action}" for action in ACTIONS}
# An action nobody's worker took in this long is dropped, not run by a later worker.
EXPIRES_SECONDS = 300
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ResidencyRequest:
    action: str
    revision: Revision
    worker: Worker
    tier: str
    task_id: str
    routed: bool  # the worker was the router's choice, not named


def revision_named(ref: str) -> Revision:
    """A revision by its full sha256, or as `person/adapter@r2` (`person/adapter`: the live one)."""
    ref = (ref or "").strip()
    if SHA256_RE.match(ref.lower()):
        revision = Revision.objects.filter(sha256=ref.lower()).select_related("adapter__person").first()
        if revision is None:
            raise NotFound(f"No revision has sha256 {ref[:12]}…")
        return revision
    _, revision = resolve_model(ref)
    if revision is None:
        raise Invalid("Name an adapter revision (person/adapter@rN): a base model has no residency actions.")
    return revision


def fleet_worker(name: str) -> Worker:
    """A healthy worker of this fleet, by name."""
    worker = Worker.objects.filter(name=name).first()
    if worker is None:
        raise NotFound(f"No worker named {name!r} has reported")
    if worker.health != Worker.HEALTHY:
        raise Conflict(f"{name} is {worker.health}: only a healthy worker can take residency actions")
    # The router's rule: the fleet's shared queue or its serving queue, and one of its own.
    fleet = {settings.CELERY_TASK_DEFAULT_QUEUE, serving_queue()}
    if not fleet & set(worker.queues) or worker_queue(name) not in worker.queues:
        raise Conflict(f"{name} does not serve this fleet (it does not consume its queues)")
    return worker


def request_residency(
    action: str, revision: Revision, *, worker_name: str = "", tier: str = "cpu", actor: Actor
) -> ResidencyRequest:
    """Send `action` for `revision` to the named worker, or (no name) to the one the
    router would send its next request to."""
    authorize(actor, "residency.manage")
    if action not in ACTIONS:
        raise Invalid(f"Unknown residency action {action!r}; use one of {', '.join(ACTIONS)}")
    if action != UNPIN and tier not in TIERS:
        raise Invalid(f"Unknown tier {tier!r}; use one of {', '.join(TIERS)}")
    routed = not worker_name
    if routed:
        worker_name = route(revision.sha256).worker or ""
        if not worker_name:
            raise Conflict("No healthy worker has reported, so there is none to send it to")
    worker = fleet_worker(worker_name)
    kwargs = {"sha256": revision.sha256, "base_digest": revision.base_digest}
    if action != UNPIN:
        kwargs["tier"] = tier
    result = celery_app.send_task(
        TASKS[action], kwargs=kwargs, queue=worker_queue(worker.name), expires=EXPIRES_SECONDS
    )
    adapter = revision.adapter
    audit.record(
        actor,
        f"residency.{action}",
        revision,
        person_handle=adapter.person.handle,
        after={
            "worker": worker.name,
            "revision": f"{adapter.handle}@{revision.label}",
            "sha256": revision.sha256,
            "tier": tier if action != UNPIN else None,
            "routed": routed,
            "task_id": result.id,
        },
    )
    return ResidencyRequest(action, revision, worker, tier, result.id, routed)
