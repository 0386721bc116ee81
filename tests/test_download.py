"""A downloaded revision is a PEFT folder that PEFT itself loads, with identical logits."""

import io
import json
import tarfile

import pytest
import torch

from adapters_app.lifecycle.revisions import load_payload
from adapters_app.models import ApiKey
from tests.conftest import with_role
from workers.engine.examples import Message
from workers.engine.prompting import render_prompt
from workers.engine.runtime import AdapterRuntime


@pytest.fixture
def bearer(django_user_model):
    # Taking weights away needs the operator role (tests/test_roles.py).
    _, raw = ApiKey.issue(with_role(django_user_model.objects.create_user("dl"), "operator"))
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_downloaded_revision_loads_in_peft_with_the_same_logits(client, bearer, make_revision, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    revision = make_revision()
    response = client.get("/api/revisions/alice/assistant/r1/download", **bearer)
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="alice-assistant-r1.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(archive.getnames())
        archive.extractall(tmp_path / "peft", filter="data")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 8

    base = revision.adapter.base
    text = render_prompt([Message("user", "What is my dog called?")])
    plain = AutoModelForCausalLM.from_pretrained(base.path, local_files_only=True)
    peft_model = PeftModel.from_pretrained(plain, tmp_path / "peft").eval()
    tokens = AutoTokenizer.from_pretrained(base.path)(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        theirs = peft_model(input_ids=tokens["input_ids"]).logits
    ours = AdapterRuntime().logits(
        base.path, base.digest, revision.sha256, lambda sha: load_payload(revision), text
    )
    assert torch.allclose(theirs, ours, atol=1e-5)
    # and the adapter really changes the base's output
    with torch.no_grad(), peft_model.disable_adapter():
        bare = peft_model(input_ids=tokens["input_ids"]).logits
    assert not torch.allclose(bare, ours, atol=1e-4)


def test_download_needs_an_api_key(client, make_revision):
    make_revision()
    assert client.get("/api/revisions/alice/assistant/r1/download").status_code == 401


def test_downloading_a_corrupted_revision_is_refused_with_a_clear_error(client, bearer, make_revision):
    import os

    from adapters_app.lifecycle.storage import get_store

    revision = make_revision()
    path = get_store().path_for(revision.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    response = client.get("/api/revisions/alice/assistant/r1/download", **bearer)
    assert response.status_code == 500
    assert "corrupted" in response.json()["error"]["message"]
