"""Console actions on what workers keep resident: pin, unpin, prefetch a revision.

The rule (revision, healthy worker of this fleet, tier) is `lifecycle/residency.py`'s;
these views only read the form, report the outcome and go back where the operator was.
The action runs on the worker a moment later, so the messages say it was asked for.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from adapters_app.console.views import _actor, _adapter_or_404, _revision_or_404, requires
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.lifecycle.residency import (
    TIERS,
    UNPIN,
    ResidencyRequest,
    request_residency,
    revision_named,
)
from adapters_app.models import Worker


def _asked(request: HttpRequest, sent: ResidencyRequest) -> None:
    what = f"{sent.revision.adapter.handle}@{sent.revision.label}"
    where = "" if sent.action == UNPIN else f" in its {sent.tier} tier"
    chosen = " (the router's choice)" if sent.routed else ""
    messages.success(
        request,
        f"Asked {sent.worker.name}{chosen} to {sent.action} {what}{where}. "
        "Its page shows the new placement once the worker reports, within seconds.",
    )


@login_required
@require_POST
@requires("residency.manage")
def worker_residency(request: HttpRequest, name: str) -> HttpResponse:
    """Pin, unpin or prefetch on this worker; `revision` is a sha256 or person/adapter@rN."""
    try:
        sent = request_residency(
            request.POST.get("action", ""),
            revision_named(request.POST.get("revision", "")),
            worker_name=name,
            tier=request.POST.get("tier", "cpu"),
            actor=_actor(request),
        )
    except LifecycleError as exc:
        messages.error(request, exc.message)
    else:
        _asked(request, sent)
    return redirect(reverse("console:worker", args=[name]))


@login_required
@require_POST
@requires("residency.manage")
def revision_prefetch(request: HttpRequest, handle: str, adapter: str, rev: str) -> HttpResponse:
    """Prefetch this revision on the chosen worker, or on the one the router would pick."""
    found = _revision_or_404(_adapter_or_404(handle, adapter), rev)
    try:
        sent = request_residency(
            "prefetch",
            found,
            worker_name=request.POST.get("worker", "").strip(),
            tier=request.POST.get("tier", "cpu"),
            actor=_actor(request),
        )
    except LifecycleError as exc:
        messages.error(request, exc.message)
    else:
        _asked(request, sent)
    return redirect(found)


@login_required
def revision_prefetch_form(request: HttpRequest, handle: str, adapter: str, rev: str) -> HttpResponse:
    """The revision page's "prefetch on a worker" form, fetched by htmx: healthy workers only."""
    found = _revision_or_404(_adapter_or_404(handle, adapter), rev)
    context = {
        "revision": found,
        "adapter": found.adapter,
        "workers": Worker.objects.with_health(Worker.HEALTHY).only("name"),
        "tiers": TIERS,
    }
    return render(request, "console/_prefetch_form.html", context)
