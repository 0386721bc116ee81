"""What the console shows of learning from use: a person's update timeline (feedback,
corrections, memories, and what the loop did with them: retrains, automatic promotions,
refusals and rollbacks with their evidence), an adapter's pending updates and retrain
policy, and the fleet's figures for the overview. The rules are `lifecycle/updates.py`'s;
the actions are in `update_views.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from adapters_app.lifecycle import updates
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.gates import verdict
from adapters_app.lifecycle.pointer import AUTO_PROMOTE_REASON
from adapters_app.models import Adapter, AuditEvent, Person, PersonalUpdate, PointerEvent, RetrainPolicy

TIMELINE_LENGTH = 100
WATCH_ACTOR = Actor.system("promotion-watch").name
# What the loop did, as the audit log has it, with a word for the timeline.
LOOP_EVENTS = {
    "adapter.retrain_from_updates": "retrain",
    "adapter.auto_promote_refused": "refused",
    "adapter.auto_rollback": "auto-rollback",
}
OVERVIEW_DAYS = 14


@dataclass(slots=True)
class Entry:
    """One line of a person's timeline."""

    at: datetime
    # memory, feedback, correction, retrain, auto-promote, promote, refused, rollback, auto-rollback
    kind: str
    adapter: Adapter | None
    title: str
    detail: str = ""
    state: str = ""
    evidence: list[tuple[str, str]] = field(default_factory=list)


def timeline(person: Person, *, limit: int = TIMELINE_LENGTH) -> list[Entry]:
    """The person's updates and their adapters' pointer moves and loop events, newest first."""
    adapters = {a.pk: a for a in person.adapters.select_related("person")}
    entries: list[Entry] = []
    for update in person.updates.select_related("revision").order_by("-created_at", "-id")[:limit]:
        entries.append(_update_entry(update, adapters.get(update.adapter_id)))
    moves = PointerEvent.objects.filter(adapter_id__in=adapters).select_related(
        "from_revision", "to_revision"
    )
    evidence = _rollback_evidence(list(adapters))
    promoted = _promotion_checks(list(adapters))
    for move in moves.order_by("-created_at", "-id")[:limit]:
        automatic = move.reason == AUTO_PROMOTE_REASON
        kind = "auto-promote" if automatic else move.action
        if move.actor == WATCH_ACTOR:
            kind = "auto-rollback"
        frm = move.from_revision.label if move.from_revision_id else "—"
        entries.append(
            Entry(
                at=move.created_at,
                kind=kind,
                adapter=adapters.get(move.adapter_id),
                title=f"{frm} → {move.to_revision.label}",
                detail=move.reason,
                evidence=_evidence(kind, move, evidence, promoted),
            )
        )
    loop = AuditEvent.objects.filter(
        action__in=["adapter.retrain_from_updates", "adapter.auto_promote_refused"],
        object_type="Adapter",
        object_id__in=[str(pk) for pk in adapters],
    ).order_by("-created_at", "-id")[:limit]
    for event in loop:
        after = event.after or {}
        adapter = adapters.get(int(event.object_id))
        if event.action == "adapter.retrain_from_updates":
            facts = ", ".join(f"{k.removeprefix('about:')}: {v}" for k, v in after.get("facts", {}).items())
            start = f"from {after['continued_from']}" if after.get("continued_from") else "from scratch"
            entries.append(
                Entry(
                    at=event.created_at,
                    kind="retrain",
                    adapter=adapter,
                    title=f"retrain {start} on {after.get('count', 0)} update(s), "
                    f"{after.get('objective', 'sft')}",
                    detail=(facts + (f"; {after['pairs']} preference pair(s)" if after.get("pairs") else "")),
                )
            )
        else:
            entries.append(
                Entry(
                    at=event.created_at,
                    kind="refused",
                    adapter=adapter,
                    title=f"{after.get('revision', '?')} not promoted",
                    detail=after.get("reason", ""),
                )
            )
    entries.sort(key=lambda e: e.at, reverse=True)
    return entries[:limit]


def _evidence(kind: str, move: PointerEvent, rollbacks: dict, promotions: dict) -> list[tuple[str, str]]:
    """What an automatic move rested on: the gate's checks, or the watch's figures."""
    if kind == "auto-rollback":
        figures = rollbacks.get((move.adapter_id, move.to_revision.label))
        if not figures:
            return []
        return [
            (f"{figures['revision']} rated down", _share(figures["negative"], figures["rated"])),
            (
                f"{figures['previous']} rated down",
                _share(figures["previous_negative"], figures["previous_rated"]),
            ),
            ("old value said", _share(figures.get("update_failed", 0), figures.get("update_checked", 0))),
            ("margin", f"{figures['margin']:.0%}"),
        ]
    if kind == "auto-promote":
        checks = _recorded_checks(promotions.get((move.adapter_id, move.to_revision.label), []), move)
        if checks is None:  # a promotion from before checks were recorded with it
            checks = verdict(move.to_revision).as_dict()["checks"]
        return [
            (
                c["name"],
                "—" if c["value"] is None else f"{c['value']:.2f} (needs {c['op']} {c['threshold']:g})",
            )
            for c in checks
        ]
    return []


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.0%})" if whole else f"{part} of {whole}"


def _update_entry(update: PersonalUpdate, adapter: Adapter | None) -> Entry:
    if update.kind == PersonalUpdate.MEMORY:
        kind, title = "memory", update.text
    elif update.correction:
        kind, title = "correction", f"“{update.answer}” → “{update.correction}”"
    else:
        kind = "feedback"
        title = f"{'rated up' if update.rating == 1 else 'rated down'}: “{update.answer}”"
    fact = f"{update.fact_key.removeprefix('about:')} = {update.fact_value}" if update.fact_key else ""
    answered_by = f"answer of {update.revision.label}" if update.revision_id else ""
    return Entry(
        at=update.created_at,
        kind=kind,
        adapter=adapter,
        title=title,
        detail=" · ".join(part for part in (fact, answered_by, update.note) if part),
        state=update.state,
    )


def _promotion_checks(adapter_ids: list[int]) -> dict[tuple[int, str], list[tuple[datetime, list]]]:
    """(adapter, revision label) -> (when, the gate checks) of each promotion's audit event:
    the checks it rested on, as they stood (a later gate set may judge differently)."""
    found: dict = {}
    events = AuditEvent.objects.filter(
        action="adapter.promote", object_type="Adapter", object_id__in=[str(pk) for pk in adapter_ids]
    )
    for event in events:
        after = event.after or {}
        if "gate" in after:
            found.setdefault((int(event.object_id), after.get("live")), []).append(
                (event.created_at, after["gate"])
            )
    return found


def _recorded_checks(recorded: list[tuple[datetime, list]], move: PointerEvent) -> list | None:
    """The checks of the audit event written with this move (in its transaction: the nearest in time)."""
    if not recorded:
        return None
    return min(recorded, key=lambda at_checks: abs((at_checks[0] - move.created_at).total_seconds()))[1]


def _rollback_evidence(adapter_ids: list[int]) -> dict[tuple[int, str], dict]:
    """(adapter, the revision rolled back to) -> the watch's figures, from the audit log."""
    found = {}
    for event in AuditEvent.objects.filter(
        action="adapter.auto_rollback", object_type="Adapter", object_id__in=[str(pk) for pk in adapter_ids]
    ):
        after = event.after or {}
        found.setdefault((int(event.object_id), after.get("previous", "")), after)
    return found


def adapter_learning(adapter: Adapter) -> dict:
    """The adapter page's card: policy, what waits, what a retrain would teach."""
    waiting = updates.pending(adapter)
    return {
        "policy": waiting.policy,
        "modes": RetrainPolicy.MODES,
        "waiting": waiting.waiting,
        "facts": [(fact.subject, fact.value) for fact in waiting.resolution.facts.values()],
        "conflicts": waiting.resolution.conflicts,
        "pairs": len(waiting.resolution.pairs),
        "retrain_job": waiting.retrain_job,
    }


def fleet_learning() -> dict:
    """The overview's figures: updates per day, and what the loop did in the same days."""
    since = timezone.now() - timedelta(days=OVERVIEW_DAYS)
    per_day = (
        PersonalUpdate.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "kind")
        .annotate(n=Count("id"))
        .order_by("day")
    )
    days: dict = {}
    for row in per_day:
        days.setdefault(row["day"], {"memory": 0, "feedback": 0})[row["kind"]] = row["n"]
    actions = dict(
        AuditEvent.objects.filter(created_at__gte=since, action__in=[*LOOP_EVENTS, "adapter.promote"])
        .values_list("action")
        .annotate(n=Count("id"))
    )
    auto_promotions = PointerEvent.objects.filter(created_at__gte=since, reason=AUTO_PROMOTE_REASON).count()
    return {
        "days": OVERVIEW_DAYS,
        "per_day": [{"day": day, **kinds} for day, kinds in days.items()],
        "updates": sum(sum(kinds.values()) for kinds in days.values()),
        "pending": PersonalUpdate.objects.filter(state=PersonalUpdate.PENDING).count(),
        "held": PersonalUpdate.objects.filter(state=PersonalUpdate.HELD).count(),
        "retrains": actions.get("adapter.retrain_from_updates", 0),
        "auto_promotions": auto_promotions,
        "refusals": actions.get("adapter.auto_promote_refused", 0),
        "rollbacks": actions.get("adapter.auto_rollback", 0),
    }
