"""An admin issues a person key on the Keys page in Chromium, copies its secret, and the
key works on /v1 for that person only."""

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import with_role
from tests.test_browser import SCREENSHOTS, needs_chromium, open_console  # noqa: F401 (fixture)

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def models_seen_with(live_server, secret: str) -> list[str]:
    request = urllib.request.Request(
        f"{live_server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [model["id"] for model in json.load(answer)["data"]]


def test_an_admin_issues_a_person_key_in_the_browser_and_it_sees_only_that_persons_adapters(
    open_console,  # noqa: F811 (the imported fixture)
    live_server,
    django_user_model,
    make_revision,
    actor,
):
    from adapters_app.lifecycle.pointer import promote

    promote(make_revision(), actor=actor)  # alice/assistant is live
    with_role(django_user_model.objects.create_user("ada", password="pw-ada-123456"), "admin")

    with open_console("ada", "pw-ada-123456") as page:
        page.click("nav >> text=Keys")
        page.fill("#key-person", "alice")
        page.fill("#key-name", "alice's diary app")
        page.fill("#key-expiry", "90")
        page.fill("#key-requests_per_minute", "60")
        page.click("button:text('Issue key')")
        secret = page.text_content("[data-testid=new-key]").strip()
        page.screenshot(path=str(SCREENSHOTS / "keys.png"), full_page=True)
        assert page.problems == []

    assert secret.startswith("mint_")
    assert models_seen_with(live_server, secret) == ["alice/assistant"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{live_server.url}/api/people", headers={"Authorization": f"Bearer {secret}"}
            ),
            timeout=30,
        )
    assert refused.value.code == 403
