"""The revision diff page: one revision against its parent or any other revision of
the same adapter. The comparison itself is `adapters_app.lifecycle.compare`."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from adapters_app.console import charts
from adapters_app.console.views import _adapter_or_404, _revision_or_404
from adapters_app.lifecycle.compare import RevisionComparison, compare_revisions, counterpart
from adapters_app.lifecycle.errors import LifecycleError


@login_required
def compare(request: HttpRequest, handle: str, adapter: str, rev: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    found = _revision_or_404(subject, rev)
    chosen = request.GET.get("with", "").strip()
    comparison: RevisionComparison | None = None
    error = ""
    try:
        other = counterpart(found, chosen or None)
        if other is not None:
            comparison = compare_revisions(other, found)
    except LifecycleError as exc:
        # A bad `with` spoils only the comparison, not the page: the picker stays usable.
        error = exc.message
    context = {
        "adapter": subject,
        "person": subject.person,
        "revision": found,
        "others": subject.revisions.exclude(pk=found.pk),
        "chosen": chosen,
        "error": error,
        "comparison": comparison,
        "weight_chart": charts.weight_delta_figure(comparison.weights, comparison.a.label, comparison.b.label)
        if comparison and comparison.weights
        else None,
    }
    return render(request, "console/compare.html", context)
