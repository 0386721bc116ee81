"""Django's own error pages (handler400, 403, 404 and 500) in JSON under /api/ and /v1/.

Ninja renders the errors of a route it serves; Django answers the rest: a path no route
matches, a request it refuses before any view (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a
host it does not serve), and an exception nothing caught. Its pages are HTML, which an API
client cannot read, so under either API's prefix they are that API's error object instead;
the console keeps Django's pages.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views import defaults

from adapters_app.api.auth import ErrorRenderer, management_error
from adapters_app.openai_api.views import openai_error


def _renderer(request: HttpRequest) -> ErrorRenderer | None:
    path = request.path_info
    if path == "/v1" or path.startswith("/v1/"):
        return openai_error
    if path == "/api" or path.startswith("/api/"):
        return management_error
    return None


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    render = _renderer(request)
    if render is None:
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return render(413, "request_too_large", "the request body is larger than this server accepts", None)
    return render(400, "invalid_request", "the request was refused before it reached the API", None)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    render = _renderer(request)
    if render is None:
        return defaults.permission_denied(request, exception)
    return render(403, "forbidden", str(exception) or "forbidden", None)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    render = _renderer(request)
    if render is None:
        return defaults.page_not_found(request, exception)
    # Not a missing model (OpenAI's 404 code): a path that is not part of the API.
    return render(404, "unknown_route", f"no route {request.method} {request.path}", None)


def server_error(request: HttpRequest) -> HttpResponse:
    render = _renderer(request)
    if render is None:
        return defaults.server_error(request)
    return render(500, "server_error", "the server failed to answer; the error is in its log", None)
