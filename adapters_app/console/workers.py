"""Console pages for workers and what they hold in memory, and the overview's summary of both.

Everything here aggregates the Worker and ResidentAdapter tables only (a few rows per
worker process), never the adapter or revision tables, so it costs the same with a
million adapters.
"""

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from adapters_app.models import Job, ResidentAdapter, Worker

TIERS = dict(ResidentAdapter.TIERS)


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
    adapter, base = Q(kind=ResidentAdapter.ADAPTER), Q(kind=ResidentAdapter.BASE)
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
        .annotate(adapters=Count("id", filter=adapter), bytes=Sum("bytes"))
        .order_by("tier")
    ]
    return {"health": health, "total": sum(health.values()), **totals, "tiers": tiers}


@login_required
def workers(request: HttpRequest) -> HttpResponse:
    health = request.GET.get("health", "")
    tier = request.GET.get("tier", "")
    queryset = Worker.objects.annotate(
        resident_adapters=Count("resident", filter=Q(resident__kind=ResidentAdapter.ADAPTER)),
        resident_bytes=Sum("resident__bytes", default=0),
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
    for worker in worker_list:
        worker.running_jobs = running.get(worker.name, 0)
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
            adapters=Count("id", filter=Q(kind=ResidentAdapter.ADAPTER)), bytes=Sum("bytes", default=0)
        ),
        "running_jobs": Job.objects.filter(state=Job.RUNNING, worker=subject.name).select_related(
            "adapter__person"
        ),
    }
    return render(request, "console/worker.html", context)


def adapter_residency(adapter) -> list[ResidentAdapter]:
    """Where the adapter's revisions sit in memory now: healthy workers' reports only,
    newest use first, each with its worker and revision (for the adapter page)."""
    return list(
        ResidentAdapter.objects.filter(
            revision__adapter=adapter,
            kind=ResidentAdapter.ADAPTER,
            worker__in=Worker.objects.with_health(Worker.HEALTHY),
        )
        .select_related("worker", "revision")
        .order_by("-last_used_at", "id")
    )
