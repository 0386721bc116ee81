"""Console pages for base models: what each is, where it came from, and what holds it now.

A base's residency is read from what workers report (`ResidentAdapter`, `ResidencyStats`)
for its digest, healthy workers only, as the workers pages do: a stale worker's last report
may no longer be true.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adapters_app.console.views import requires
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import (
    base_models,
    bytes_on_disk,
    get_base_model,
    import_base_model,
    serving_of,
)
from adapters_app.lifecycle.errors import LifecycleError, NotFound
from adapters_app.models import Adapter, ResidencyStats, ResidentAdapter, Worker
from workers.engine.base_import import PACKAGED

# Adapters listed on a base's page; the adapters list, filtered on the base, has the rest.
ADAPTERS_SHOWN = 50
IN_MEMORY = Q(tier__in=ResidentAdapter.MEMORY_TIERS)


@login_required
def base_list(request: HttpRequest) -> HttpResponse:
    bases = list(base_models())
    healthy = Worker.objects.with_health(Worker.HEALTHY)
    held = {
        row["sha256"]: row
        for row in ResidentAdapter.objects.filter(
            IN_MEMORY, kind=ResidentAdapter.BASE, worker__in=healthy, sha256__in=[b.digest for b in bases]
        )
        .values("sha256")
        .annotate(processes=Count("id"), bytes=Sum("bytes"))
        .order_by()
    }
    adapters_held = dict(
        ResidentAdapter.objects.filter(
            IN_MEMORY, kind=ResidentAdapter.ADAPTER, worker__in=healthy, base__in=bases
        )
        .values("base")
        .annotate(n=Count("id"))
        .values_list("base", "n")
        .order_by()
    )
    for base in bases:
        base.parameters_label = parameters_label(base.parameters)
        base.serving_mode, base.serving_reason = serving_of(base)
        base.disk_bytes = bytes_on_disk(base)
        base.held = held.get(base.digest)
        base.adapters_held = adapters_held.get(base.pk, 0)
    return render(request, "console/base_models.html", {"bases": bases, "packaged": PACKAGED})


@login_required
@require_POST
@requires("base_model.register")
def base_import(request: HttpRequest) -> HttpResponse:
    """Import a base from a path on the server or a packaged one. It runs in the request (a
    minute for a real model), as the API's does; the import is idempotent, so a reload that
    posts again does no harm."""
    form = {
        key: request.POST.get(key, "").strip() for key in ("name", "package", "path", "sha256", "license")
    }
    source = form["package"] or form["path"]
    if not source:
        messages.error(request, "Nothing was imported: choose a packaged base or give a path on the server.")
        return redirect("console:bases")
    try:
        base = import_base_model(
            form["name"] or form["package"],
            source,
            actor=Actor.from_user(request.user, via="console"),
            license=form["license"] or None,
            expected_sha256=form["sha256"] or None,
        )
    except LifecycleError as exc:
        messages.error(request, exc.message)
        return redirect("console:bases")
    messages.success(request, f"{base.name} is registered (digest {base.digest[:12]}…).")
    return redirect(base)


@login_required
def base_detail(request: HttpRequest, name: str) -> HttpResponse:
    try:
        base = get_base_model(name)
    except NotFound as exc:
        raise Http404(exc.message) from None
    base.parameters_label = parameters_label(base.parameters)
    base.serving_mode, base.serving_reason = serving_of(base)
    healthy = Worker.objects.with_health(Worker.HEALTHY)
    resident = ResidentAdapter.objects.filter(worker__in=healthy)
    context = {
        "base": base,
        "disk_bytes": bytes_on_disk(base),
        "adapters": Adapter.objects.filter(base=base)
        .select_related("person", "live_revision")
        .order_by("-created_at", "-id")[:ADAPTERS_SHOWN],
        "adapters_shown": ADAPTERS_SHOWN,
        "held_by": resident.filter(kind=ResidentAdapter.BASE, sha256=base.digest)
        .select_related("worker")
        .order_by("worker__name", "pid", "holder", "tier"),
        "adapters_held": resident.filter(IN_MEMORY, kind=ResidentAdapter.ADAPTER, base=base).aggregate(
            n=Count("id"), revisions=Count("sha256", distinct=True), bytes=Sum("bytes", default=0)
        ),
        "managers": ResidencyStats.objects.filter(worker__in=healthy, base_digest=base.digest)
        .select_related("worker")
        .order_by("worker__name", "pid", "id"),
    }
    return render(request, "console/base_model.html", context)


def parameters_label(count: int) -> str:
    """134515008 -> "134.5 M": the size people name a model by."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return str(count)
