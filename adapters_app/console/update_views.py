"""The console's actions on learning from use: retrain from updates now, set the retrain
policy, dismiss an update (the pages' read side is `learning.py`)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from adapters_app.console.views import _actor, _adapter_or_404, _person_or_404, _refused, requires
from adapters_app.lifecycle import updates
from adapters_app.lifecycle.errors import LifecycleError


@login_required
@require_POST
@requires("train")
def retrain(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    try:
        job = updates.start_update_retrain(
            subject, actor=_actor(request), fresh_start="fresh_start" in request.POST, reason="console"
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(f"{subject.get_absolute_url()}#learning")
    messages.success(request, f"Retrain job {job.pk} queued from {subject.handle}'s pending updates.")
    return redirect(job)


@login_required
@require_POST
@requires("gate.configure")
def policy(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    changes: dict = {"mode": request.POST.get("mode", ""), "fresh_start": "fresh_start" in request.POST}
    try:
        for name in ("after_updates", "min_feedback"):
            if value := request.POST.get(name, "").strip():
                changes[name] = int(value)
        for name in ("every_hours", "watch_hours", "rollback_margin"):
            if value := request.POST.get(name, "").strip():
                changes[name] = float(value)
    except ValueError:
        messages.error(request, "The policy's thresholds must be numbers.")
        return redirect(f"{subject.get_absolute_url()}#learning")
    try:
        updates.configure_policy(subject, actor=_actor(request), **changes)
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Retrain policy of {subject.handle} saved.")
    return redirect(f"{subject.get_absolute_url()}#learning")


@login_required
@require_POST
@requires("train")
def dismiss(request: HttpRequest, handle: str, update_id: int) -> HttpResponse:
    person = _person_or_404(handle)
    update = person.updates.select_related("person", "adapter__person").filter(pk=update_id).first()
    if update is None:
        messages.error(request, f"{handle} has no update {update_id}.")
    else:
        try:
            updates.dismiss_update(update, actor=_actor(request), reason="console")
        except LifecycleError as exc:
            _refused(request, exc)
        else:
            messages.success(request, f"Update {update_id} dismissed: no retrain will take it.")
    return redirect(f"{person.get_absolute_url()}#updates")
