"""What /api/ and /v1/ share: Bearer-key auth, JSON errors, and the NinjaAPI that declares them.

Both are django-ninja APIs. Ninja because its request and response shapes are Pydantic models
(as are the OpenAI types /v1 mirrors), because one declaration gives both the validation and
the OpenAPI document (a hand-written document drifts from the code; a generated one cannot),
and because its views are plain functions like the rest of this project.

Errors keep the shapes clients have always had: `{"error": {"code", "message", "details"?}}`
under /api/, OpenAI's error object under /v1/. A LifecycleError carries its own status
(400/403/404/409); a request that does not fit its declared schema is a 400 naming each field.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer

from adapters_app.lifecycle import keys, limits
from adapters_app.lifecycle.errors import Invalid, LifecycleError, TooLarge
from mintweb.version import RELEASE
from workers.engine.examples import find_not_text, not_text
from workers.engine.store import StoreError

ErrorRenderer = Callable[[int, str, str, object], JsonResponse]

METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


def management_error(status: int, code: str, message: str, details: object = None) -> JsonResponse:
    body = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


class ApiKeyBearer(HttpBearer):
    """`Authorization: Bearer <key>`: an operator key (`manage.py create_api_key`) acts with
    its account's role, decided by the lifecycle services, not here; a person key
    (lifecycle.keys) may call /v1 only (`person_keys=True`), within its scope. Every key's
    requests count against its requests per minute (lifecycle.limits)."""

    def __init__(self, *, person_keys: bool):
        super().__init__()
        self.person_keys = person_keys

    def authenticate(self, request: HttpRequest, token: str):
        key = keys.authenticate(token, path=request.path)
        if not self.person_keys:
            keys.refuse_management(key, path=request.path)
        limits.admit_request(key)
        request.api_key = key
        request.key_scope = keys.scope_of(key)
        request.actor = keys.actor_for(key)
        if key.user_id is not None:
            request.user = key.user
        return key


class JsonObjectParser(Parser):
    """Request bodies are JSON objects; anything else is refused by name. A body larger than
    the setting `max_bytes_setting` names is refused before it is read."""

    def __init__(self, max_bytes_setting: str):
        self.max_bytes_setting = max_bytes_setting

    def parse_body(self, request: HttpRequest) -> dict:
        limit = getattr(settings, self.max_bytes_setting)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Invalid("the Content-Length header is not a number") from None
        if limit and length > limit:
            raise TooLarge(f"the request body ({length} bytes) is larger than the limit of {limit} bytes")
        try:
            body = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Invalid(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise Invalid("request body must be a JSON object")
        # Text the database (or a worker's tokenizer) would fail on later is refused here, by name.
        if found := find_not_text(body):
            where, why = found
            raise Invalid(f"request body: {where or 'the body'} holds {why}, which is not text")
        return body


def declare_api(
    *,
    urls_namespace: str,
    render_error: ErrorRenderer,
    person_keys: bool = False,
    max_body_setting: str = "DATA_UPLOAD_MAX_MEMORY_SIZE",
    **options,
) -> NinjaAPI:
    """A NinjaAPI behind API keys whose every error is rendered by `render_error`.

    `person_keys`: whether person keys may call it at all (/v1 yes, the management API no);
    `max_body_setting`: the setting that caps its request bodies.
    Its own /openapi.json and docs are off: /api/openapi.json serves one document for both APIs.
    """
    api = NinjaAPI(
        urls_namespace=urls_namespace,
        auth=ApiKeyBearer(person_keys=person_keys),
        version=RELEASE,
        parser=JsonObjectParser(max_body_setting),
        openapi_url=None,
        docs_url=None,
        **options,
    )

    @api.exception_handler(LifecycleError)
    def refused(request, exc: LifecycleError):
        return with_headers(render_error(exc.status, exc.code, exc.message, exc.details), exc)

    @api.exception_handler(StoreError)
    def integrity(request, exc: StoreError):
        # A blob failed its sha256 check (or is missing): say so, never serve it.
        return render_error(500, "integrity_error", str(exc), None)

    def database_down(request, exc):
        # The database restarted or failed over under this request (or broke a deadlock):
        # a transaction that lost its connection is rolled back, so the client may retry.
        response = render_error(
            503, "database_unavailable", "the database did not complete it; try again", None
        )
        response["Retry-After"] = "1"
        return response

    api.exception_handler(OperationalError)(database_down)
    api.exception_handler(InterfaceError)(database_down)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request, exc: AuthenticationError):
        return render_error(401, "invalid_api_key", "a valid Bearer API key is required", None)

    @api.exception_handler(ValidationError)
    def invalid(request, exc: ValidationError):
        message, details = field_errors(exc.errors)
        return render_error(400, "invalid_request", message, details)

    @api.exception_handler(HttpError)
    def unparsable(request, exc: HttpError):
        # Ninja wraps what the parser refused ("Cannot parse request body"); the parser's own
        # words say what was wrong.
        cause = exc.__cause__
        if isinstance(cause, LifecycleError):
            return with_headers(render_error(cause.status, cause.code, cause.message, cause.details), cause)
        return render_error(exc.status_code, "invalid_request", str(exc), None)

    return api


def with_headers(response: JsonResponse, error: LifecycleError) -> JsonResponse:
    for name, value in error.headers.items():
        response[name] = value
    return response


def field_errors(errors: Iterable[dict]) -> tuple[str, dict[str, str]]:
    """Pydantic's errors as the lifecycle words its own: one message naming every field, and
    details keyed by the top-level field (`ranks`, `stream_options`, `limit`)."""
    details: dict[str, list[str]] = {}
    for error in errors:
        source, *path = error["loc"]
        if source == "body" and path:
            path = path[1:]  # the view's parameter name, not a field of the request
        field = str(path[0]) if path else source
        where = ".".join(str(part) for part in path) or source
        # Our own validators' words, without pydantic's prefix.
        details.setdefault(field, []).append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    joined = {field: "; ".join(problems) for field, problems in details.items()}
    return "invalid request: " + "; ".join(joined.values()), joined


def refuse_in_json(patterns: list, render_error: ErrorRenderer) -> list:
    """What a route of an API refuses before ninja sees the request, in the API's JSON: a path
    or query string holding a NUL character (ninja would hand it to a query, and PostgreSQL
    fail on it) is a 400. And ninja answers a method a route lacks with a plain-text 405 whose
    Allow header comes from a set; clients of ours get the JSON error and the methods in a
    stable order."""
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _refusing_in_json(pattern.callback, render_error)
    return patterns


def _refusing_in_json(view, render_error: ErrorRenderer):
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if why := _url_not_text(request):
            return render_error(400, "invalid_request", f"the URL holds {why}, which is not text", None)
        response = view(request, *args, **kwargs)
        if not isinstance(response, HttpResponseNotAllowed):
            return response
        allowed = {method.strip() for method in response["Allow"].split(",")}
        answer = render_error(405, "method_not_allowed", f"{request.method} is not allowed here", None)
        answer["Allow"] = ", ".join(sorted(allowed, key=_method_rank))
        return answer

    return wrapper


def _url_not_text(request: HttpRequest) -> str | None:
    parts = [request.path, *(key + "".join(values) for key, values in request.GET.lists())]
    return next(filter(None, map(not_text, parts)), None)


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)
