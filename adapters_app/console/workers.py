"""Console pages for workers and what they hold in memory, and the overview's summary of both.

Everything here aggregates the Worker, ResidentAdapter and ResidencyStats tables only (a
few rows per worker process), never the adapter or revision tables, so it costs the
same with a million adapters. A hit rate is the device tier's: the share of requests
served without a cold load.
"""

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from adapters_app.lifecycle.residency import TIERS as RESIDENCY_TIERS
from adapters_app.models import Job, ResidencyStats, ResidentAdapter, Worker

TIERS = dict(ResidentAdapter.TIERS)
STATS_ORDER = [tier for tier, _ in ResidencyStats.TIERS]
IN_MEMORY = Q(tier__in=ResidentAdapter.MEMORY_TIERS)


def hit_rate(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def residency_tiers(healthy) -> dict:
    """Per manager tier across healthy workers: budget, bytes used, hits, misses; and the
    fleet's hit rate (one small aggregate query)."""
    rows = {
        row["tier"]: row
        for row in ResidencyStats.objects.filter(worker__in=healthy)
        .values("tier")
        .annotate(
            budget=Sum("budget_bytes", default=0),
            used=Sum("used_bytes", default=0),
            entries=Sum("entries", default=0),
            hits=Sum("hits", default=0),
            misses=Sum("misses", default=0),
        )
        .order_by()
    }
    tiers = [{**rows[tier], "label": label} for tier, label in ResidencyStats.TIERS if tier in rows]
    device = rows.get(ResidencyStats.DEVICE)
    return {"tiers": tiers, "hit_rate": hit_rate(device["hits"], device["misses"]) if device else None}


def fleet_summary() -> dict:
    """The overview's Workers and Residency cards (two small aggregate queries).

    Residency counts what healthy workers hold; a stale worker's last report may no
    longer be true, so it is counted apart, and a stopped worker holds nothing.
    """
    now = timezone.now()
    health = Worker.objects.aggregate(
        **{h: Count("id", filter=Worker.health_filter(h, now)) for h in Worker.HEALTHS}
    )
    healthy = Q(worker__in=Worker.objects.with_health(Worker.HEALTHY, now))
    # Memory only: a local-disk copy (the residency manager's disk tier) is counted in its tier's row.
    adapter, base = Q(kind=ResidentAdapter.ADAPTER) & IN_MEMORY, Q(kind=ResidentAdapter.BASE) & IN_MEMORY
    held = ResidentAdapter.objects.filter(worker__stopped_at__isnull=True)
    totals = held.aggregate(
        adapters=Count("id", filter=healthy & adapter),
        revisions=Count("sha256", filter=healthy & adapter, distinct=True),
        adapter_bytes=Sum("bytes", filter=healthy & adapter, default=0),
        bases=Count("id", filter=healthy & base),
        base_bytes=Sum("bytes", filter=healthy & base, default=0),
        unconfirmed=Count("id", filter=~healthy & adapter),
    )
    tiers = [
        {**row, "label": TIERS.get(row["tier"], row["tier"])}
        for row in held.filter(healthy)
        .values("tier")
        .annotate(adapters=Count("id", filter=Q(kind=ResidentAdapter.ADAPTER)), bytes=Sum("bytes"))
        .order_by("tier")
    ]
    managed = residency_tiers(Worker.objects.with_health(Worker.HEALTHY, now))
    return {"health": health, "total": sum(health.values()), **totals, "tiers": tiers, "managed": managed}


@login_required
def workers(request: HttpRequest) -> HttpResponse:
    health = request.GET.get("health", "")
    tier = request.GET.get("tier", "")
    in_memory = Q(resident__tier__in=ResidentAdapter.MEMORY_TIERS)
    queryset = Worker.objects.annotate(
        resident_adapters=Count("resident", filter=Q(resident__kind=ResidentAdapter.ADAPTER) & in_memory),
        resident_bytes=Sum("resident__bytes", filter=in_memory, default=0),
    ).order_by("stopped_at", "name")  # running workers first
    if health in Worker.HEALTHS:
        queryset = queryset.with_health(health)
    if tier in TIERS:
        queryset = queryset.filter(pk__in=ResidentAdapter.objects.filter(tier=tier).values("worker"))
    worker_list = list(queryset)
    running = dict(
        Job.objects.filter(state=Job.RUNNING, worker__in=[w.name for w in worker_list])
        .order_by()
        .values_list("worker")
        .annotate(n=Count("id"))
    )
    device = {
        row["worker"]: hit_rate(row["hits"], row["misses"])
        for row in ResidencyStats.objects.filter(worker__in=worker_list, tier=ResidencyStats.DEVICE)
        .values("worker")
        .annotate(hits=Sum("hits"), misses=Sum("misses"))
        .order_by()
    }
    for worker in worker_list:
        worker.running_jobs = running.get(worker.name, 0)
        worker.hit_rate = device.get(worker.pk)
    context = {
        "workers": worker_list,
        "health": health,
        "tier": tier,
        "healths": Worker.HEALTHS,
        "tiers": ResidentAdapter.TIERS,
    }
    return render(request, "console/workers.html", context)


@login_required
def worker(request: HttpRequest, name: str) -> HttpResponse:
    subject = Worker.objects.filter(name=name).first()
    if subject is None:
        raise Http404(f"No worker named {name!r} has reported")
    # A stopped worker's processes are gone, and so is whatever they held.
    resident = subject.resident.none() if subject.stopped_at else subject.resident.all()
    context = {
        "worker": subject,
        "resident": resident.select_related("revision__adapter__person", "base").order_by(
            "kind", "pid", "-last_used_at", "id"
        ),
        "totals": resident.aggregate(
            adapters=Count("id", filter=Q(kind=ResidentAdapter.ADAPTER) & IN_MEMORY),
            bytes=Sum("bytes", filter=IN_MEMORY, default=0),
        ),
        "running_jobs": Job.objects.filter(state=Job.RUNNING, worker=subject.name).select_related(
            "adapter__person"
        ),
        "managers": residency_managers(subject),
        "residency_tiers": RESIDENCY_TIERS,
    }
    return render(request, "console/worker.html", context)


def residency_managers(worker: Worker) -> list[dict]:
    """The worker's residency managers as reported: per process and base, its tiers
    fastest first."""
    if worker.stopped_at:
        return []
    managers: dict[tuple, dict] = {}
    for row in worker.residency_stats.select_related("base"):
        manager = managers.setdefault(
            (row.pid, row.base_digest), {"pid": row.pid, "base": row.base, "tiers": []}
        )
        manager["tiers"].append(row)
    for manager in managers.values():
        manager["tiers"].sort(key=lambda row: STATS_ORDER.index(row.tier))
        manager["updated_at"] = max(row.updated_at for row in manager["tiers"])
    return list(managers.values())


def adapter_residency(adapter) -> list[ResidentAdapter]:
    """Where the adapter's revisions sit in memory now: healthy workers' reports only,
    newest use first, each with its worker and revision (for the adapter page)."""
    return list(
        ResidentAdapter.objects.filter(
            IN_MEMORY,
            revision__adapter=adapter,
            kind=ResidentAdapter.ADAPTER,
            worker__in=Worker.objects.with_health(Worker.HEALTHY),
        )
        .select_related("worker", "revision")
        .order_by("-last_used_at", "id")
    )
