"""What each web process counts as it serves: requests and their latency per endpoint, and
the tokens /v1 generated.

An endpoint is the URL pattern's name (`openai:chat-completions`, `api:people`,
`console:person`), never the path, so a million adapters make no million series. The
latency of a streamed response is the time to its first byte (the view returning), not the
stream's length: a stream's tokens are counted by `mint_tokens_total` as they finish.

Under a server with several worker processes (gunicorn), set PROMETHEUS_MULTIPROC_DIR to an
empty folder before start: prometheus-client then writes each process's values there and a
scrape adds them up (views.py).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "mint_http_requests",
    "HTTP requests answered, by endpoint, method and status",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "mint_http_request_duration_seconds",
    "Time to answer (to the first byte of a stream), by endpoint and method",
    ["endpoint", "method"],
    # From a cached page to a cold load behind a long generation.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TOKENS = Counter(
    "mint_tokens", "Tokens /v1 read (prompt) and produced (completion); rate() is tokens/s", ["kind"]
)


def endpoint_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None or not match.url_name:
        return "unmatched"  # a 404 for a path no pattern names: one series for all of them
    return match.view_name


class RequestMetricsMiddleware:
    """Counts every request by the endpoint that answered it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        endpoint, method = endpoint_of(request), _method(request.method)
        LATENCY.labels(endpoint, method).observe(time.perf_counter() - started)
        REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        return response


def count_tokens(prompt_tokens: int, completion_tokens: int) -> None:
    TOKENS.labels("prompt").inc(prompt_tokens)
    TOKENS.labels("completion").inc(completion_tokens)


def _method(method: str | None) -> str:
    # Any verb a client invents would be a new series: the standard ones by name, others as one.
    return method if method in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"} else "OTHER"
