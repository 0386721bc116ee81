"""Bearer-key authentication and JSON plumbing shared by /api/ and /v1/."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.models import ApiKey
from workers.engine.store import StoreError

ErrorRenderer = Callable[[int, str, str, object], JsonResponse]


def management_error(status: int, code: str, message: str, details: object = None) -> JsonResponse:
    body = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


def bearer_user(request: HttpRequest):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return ApiKey.authenticate(token.strip())


def json_body(request: HttpRequest) -> dict:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LifecycleError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise LifecycleError("request body must be a JSON object")
    return body


def api_endpoint(*methods: str, render_error: ErrorRenderer = management_error):
    """Bearer auth, an allowed-methods check, and LifecycleError → JSON error.

    The view receives `request.actor` (an Actor with via="api").
    """

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                response = render_error(
                    405, "method_not_allowed", f"{request.method} is not allowed here", None
                )
                response["Allow"] = ", ".join(methods)
                return response
            user = bearer_user(request)
            if user is None:
                return render_error(401, "invalid_api_key", "a valid Bearer API key is required", None)
            request.user = user
            request.actor = Actor.from_user(user, via="api")
            try:
                return view(request, *args, **kwargs)
            except LifecycleError as exc:
                return render_error(exc.status, exc.code, exc.message, exc.details)
            except StoreError as exc:
                # A blob failed its sha256 check (or is missing): say so, never serve it.
                return render_error(500, "integrity_error", str(exc), None)

        return wrapper

    return decorate
