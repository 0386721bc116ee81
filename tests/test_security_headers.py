"""The headers that tell browsers what the console's pages may do, and the templates that
keep within them (no inline script, no on*= handler, no javascript: URL)."""

import json
import re
from pathlib import Path

import pytest

from mintweb.content_security_policy import header_value
from tests.conftest import with_role

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@pytest.mark.django_db
def test_the_console_answers_with_its_security_headers(client, django_user_model):
    """The same headers without a browser, on a console page, the login page and the API."""
    client.force_login(
        with_role(django_user_model.objects.create_user("viewer", password="pw-v-1"), "viewer")
    )
    for path in ("/", "/login/", "/v1/models"):
        response = client.get(path)
        policy = response["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in policy.split("; ")}
        assert directives["script-src"] == ["'self'"], path
        assert directives["default-src"] == ["'self'"], path
        assert directives["frame-ancestors"] == ["'none'"], path
        assert directives["object-src"] == ["'none'"], path
        assert directives["base-uri"] == ["'self'"], path
        assert directives["form-action"] == ["'self'"], path
        assert response["X-Frame-Options"] == "DENY", path
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["Referrer-Policy"] == "same-origin", path
    assert header_value({"a": ["x", "y"], "b": ["z"]}) == "a x y; b z"
    htmx_config = json.loads(
        client.get("/").content.decode().split('<meta name="htmx-config" content=\'')[1].split("'>")[0]
    )
    assert htmx_config == {"allowEval": False, "includeIndicatorStyles": False}


def test_no_template_has_script_the_policy_would_refuse():
    """json_script's blocks are written by the tag, never in a template."""
    refused = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|javascript:", re.IGNORECASE)
    found = [
        f"{path.relative_to(TEMPLATES)}:{n}: {line.strip()}"
        for path in sorted(TEMPLATES.rglob("*.html"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if refused.search(line)
    ]
    assert found == []
