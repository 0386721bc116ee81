"""The admins' API keys page: issue a person key (its secret shown once), list every key,
set an expiry, revoke (lifecycle/keys.py decides)."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from adapters_app.console.views import NEWEST_FIRST, _actor, _listing, _page, _refused, requires
from adapters_app.lifecycle import keys, people
from adapters_app.lifecycle.errors import Invalid, LifecycleError
from adapters_app.models import Person

LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "concurrent_streams": "Concurrent streams",
}


@login_required
@requires("key.manage")
@_listing
def key_list(request: HttpRequest, *, issued=None, status: int = 200) -> HttpResponse:
    found = keys.keys_for(_actor(request))
    person = request.GET.get("person", "").strip()
    if person:
        found = found.filter(person__handle=person)
    context = {
        "page": _page(request, found, NEWEST_FIRST),
        "person": person,
        "people": Person.objects.order_by("handle").values_list("handle", flat=True)[:500],
        "limit_labels": LIMIT_LABELS,
        "issued": issued,
        "now": timezone.now(),
    }
    return render(request, "console/keys.html", context, status=status)


@login_required
@require_POST
@requires("key.manage")
def key_issue(request: HttpRequest) -> HttpResponse:
    form = request.POST
    try:
        person = people.get_person(form.get("person", "").strip())
        adapter_name = form.get("adapter", "").strip()
        key, secret = keys.issue_person_key(
            person,
            actor=_actor(request),
            adapter=people.get_adapter(person.handle, adapter_name) if adapter_name else None,
            allow_base="allow_base" in form,
            name=form.get("name", ""),
            expires_at=_expiry(form.get("expires_in_days", "")),
            limits={field: _whole(form, field) for field in keys.LIMIT_FIELDS},
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect("console:keys")
    # Rendered, not redirected: the secret exists only in this response, never in a session.
    return key_list(request, issued={"key": key, "secret": secret}, status=201)


@login_required
@require_POST
@requires("key.manage")
def key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    actor = _actor(request)
    try:
        key = keys.revoke_key(keys.get_key(prefix, actor=actor), actor=actor)
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Key mint_{key.prefix} ({key.owner}) revoked: it now gets 401.")
    return redirect("console:keys")


@login_required
@require_POST
@requires("key.manage")
def key_expiry(request: HttpRequest, prefix: str) -> HttpResponse:
    actor = _actor(request)
    try:
        expires_at = _expiry(request.POST.get("expires_in_days", ""))
        key = keys.change_key(keys.get_key(prefix, actor=actor), actor=actor, expires_at=expires_at)
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        when = f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "never expires"
        messages.success(request, f"Key mint_{key.prefix} now {when}.")
    return redirect("console:keys")


def _expiry(days: str):
    """Days from now (blank: never)."""
    days = days.strip()
    if not days:
        return None
    try:
        count = float(days)
    except ValueError:
        raise Invalid(f"expiry must be a number of days, not {days!r}") from None
    if not 0 < count <= 3650:
        raise Invalid("expiry must be from a moment to 3650 days from now")
    return timezone.now() + timedelta(days=count)


def _whole(form, field: str) -> int | None:
    value = form.get(field, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise Invalid(f"{LIMIT_LABELS[field]} must be a whole number (0: no limit), or blank for the default")
    return int(value)
