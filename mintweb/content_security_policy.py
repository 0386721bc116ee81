"""The Content-Security-Policy header on every response.

Django 5.2 has no CSP of its own (6.0 will); the policy is one setting,
`CONTENT_SECURITY_POLICY` (directive -> sources), written once per process.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def header_value(policy: dict[str, list[str]]) -> str:
    """`{"script-src": ["'self'"], ...}` as the header spells it: `script-src 'self'; ...`."""
    return "; ".join(" ".join([directive, *sources]) for directive, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.value = header_value(settings.CONTENT_SECURITY_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # A response that set its own policy keeps it.
        response.headers.setdefault("Content-Security-Policy", self.value)
        return response
