"""`make load-test`: many people's adapters through the OpenAI endpoint at once.

Creates (once; later runs reuse them) `--adapters` people, `load-0000`, `load-0001`, …,
each with one adapter on the base whose live revision holds random-init LoRA factors
(rank 8, a fixed seed per person: not trained, since throughput does not depend on what
the factors learned). Then starts Redis (embedded unless REDIS_URL), a Celery worker
(`--pool threads`, one thread per client, on a queue of its own) and the web server as
child processes on this settings' database and store, runs a bounded loop — `--clients`
threads sending `--requests` chat completions in all, each to a random one of the
adapters, `max_tokens` 16, temperature 0 — prints throughput and latency, and stops
what it started. Exits non-zero if any request failed.

With `--url` it starts nothing and loads a server already running there (`make cluster`
prints how): this process's settings must then name that server's database, Redis and
store, where the fleet is created. Non-streamed answers say which worker served them and
why (`mint.worker`, `mint.route`), so the table also counts requests per host and how
many found their adapter resident.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from adapters_app.lifecycle.actors import Actor
from adapters_app.management import processes
from adapters_app.management.bases import base_for_command
from adapters_app.models import Adapter, ApiKey
from mintweb import embedded_redis

FACTS = b'{"prompt": "What is my dog called?", "completion": "Your dog is called Rex."}\n'
QUESTIONS = ["What is my dog called?", "Where do I live?", "What do I like to eat?", "Who is my best friend?"]
ADAPTER_NAME = "assistant"
RANK = 8


@dataclass(slots=True)
class Tally:
    latencies: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)  # streamed: seconds to the first text
    completion_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    hosts: Counter = field(default_factory=Counter)  # the host (worker node's host part) that answered
    routes: Counter = field(default_factory=Counter)  # why routing chose it: resident, disk, cold, shared
    lock: threading.Lock = field(default_factory=threading.Lock)


class Command(BaseCommand):
    help = "Send concurrent chat completions to many adapters through a local server; print the table."

    def add_arguments(self, parser):
        parser.add_argument("--adapters", type=int, default=200)
        parser.add_argument("--clients", type=int, default=32)
        parser.add_argument("--requests", type=int, default=640, help="requests in all (the bounded loop)")
        parser.add_argument("--max-tokens", type=int, default=16)
        parser.add_argument("--stream", action="store_true", help="stream the answers (server-sent events)")
        parser.add_argument("--base", choices=["micro", "mint-s"], default="micro")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--url", default="", help="load a server already running here (its database is this settings')"
        )

    def handle(self, *args, adapters, clients, requests, max_tokens, base, seed, stream, url, **options):
        if min(adapters, clients, requests) < 1:
            raise CommandError("--adapters, --clients and --requests must be at least 1")
        base_row = base_for_command(base, stdout=self.stdout)
        models = self._fleet(base_row, adapters)
        key = self._api_key()
        if url:
            url = url.rstrip("/")
            self.stdout.write(f"loading the server at {url}; warming up…")
            _ask(url, key, models[0], max_tokens, Tally(), stream=stream)
            tally, seconds = _run(url, key, models, clients, requests, max_tokens, seed, stream)
            self._report(base_row, models, clients, requests, max_tokens, stream, tally, seconds)
            return
        children: list[subprocess.Popen] = []
        processes.stop_on_sigterm()
        try:
            redis_process = embedded_redis.ensure_from_settings()
            if redis_process:
                children.append(redis_process)
            queue = f"load-test-{os.getpid()}"
            env = {
                "MINT_VAR_DIR": str(settings.VAR_DIR),
                "DATABASE_URL": processes.database_url(),
                "REDIS_URL": settings.REDIS_URL,
                "MINT_STORE": settings.MINT_STORE,
                "MINT_QUEUE": queue,
            }
            self.stdout.write(processes.prepare_cpu_kernel())
            worker_log = settings.VAR_DIR / "load-test-worker.log"
            children.append(processes.spawn(_worker_command(queue, clients), worker_log, env, append=False))
            port = processes.free_port()
            url = f"http://127.0.0.1:{port}"
            children.append(
                processes.spawn(
                    [sys.executable, "manage.py", "serve_web", f"127.0.0.1:{port}", "--noreload"],
                    settings.VAR_DIR / "load-test-web.log",
                    env,
                    append=False,
                )
            )
            _wait_for_log(worker_log, " ready.", children)
            _wait_for_url(url, children)
            self.stdout.write(f"worker and web server up ({url}); warming up…")
            _ask(url, key, models[0], max_tokens, Tally(), stream=stream)  # loads the base: not timed
            tally, seconds = _run(url, key, models, clients, requests, max_tokens, seed, stream)
        finally:
            for child in reversed(children):
                processes.stop(child)
        self._report(base_row, models, clients, requests, max_tokens, stream, tally, seconds)

    def _report(self, base_row, models, clients, requests, max_tokens, stream, tally, seconds) -> None:
        self.stdout.write(
            _table(base_row.name, len(models), clients, requests, max_tokens, stream, tally, seconds)
        )
        if tally.hosts:
            self.stdout.write(_hosts_table(tally))
        if tally.failures:
            for failure in tally.failures[:5]:
                self.stderr.write(f"failed: {failure}")
            raise CommandError(f"{len(tally.failures)} of {requests} requests failed")

    def _fleet(self, base, count: int) -> list[str]:
        """`count` people with a live random-init adapter each (created once); their models."""
        from adapters_app.lifecycle.datasets import upload_dataset
        from adapters_app.lifecycle.people import create_adapter, create_person
        from adapters_app.lifecycle.pointer import promote
        from adapters_app.lifecycle.revisions import create_revision
        from adapters_app.management.commands.bench_serving import lora_target_shapes, random_payloads
        from adapters_app.models import Person
        from workers.engine.base_models import load_base

        actor = Actor.system("load-test")
        handles = [f"load-{i:04d}" for i in range(count)]
        live = set(
            Adapter.objects.filter(
                person__handle__in=handles, name=ADAPTER_NAME, base=base, live_revision__isnull=False
            ).values_list("person__handle", flat=True)
        )
        missing = [h for h in handles if h not in live]
        if missing:
            self.stdout.write(f"creating {len(missing)} people with a random-init adapter each…")
            shapes = lora_target_shapes(load_base(base.path, base.digest).model)
        for handle in missing:
            person = Person.objects.filter(handle=handle).first() or create_person(handle, actor=actor)
            adapter = Adapter.objects.filter(person=person, name=ADAPTER_NAME).first()
            if adapter is None:
                adapter = create_adapter(person, ADAPTER_NAME, base=base, actor=actor)
            dataset = upload_dataset(person, FACTS, name="facts", actor=actor)[0]
            [payload] = random_payloads(shapes, 1, RANK, seed=int(handle.split("-")[1])).values()
            config = {"rank": RANK, "alpha": 2 * RANK, "init": "random", "steps": 0}
            revision = create_revision(
                adapter, payload, dataset=dataset, training_config=config, parent=None, job=None, actor=actor
            )
            promote(revision, actor=actor, override_reason="load test: random-init adapter")
        return [f"{handle}/{ADAPTER_NAME}" for handle in handles]

    def _api_key(self) -> str:
        user, _ = get_user_model().objects.get_or_create(username="load-test")
        Group.objects.get_or_create(name="operator")[0].user_set.add(user)
        # Keys are stored hashed, so a run cannot reuse the last one: revoke it instead of
        # leaving one live key behind per run.
        ApiKey.objects.filter(user=user, name="load test", revoked_at=None).update(revoked_at=timezone.now())
        # The load test measures the server, not the key's limits (lifecycle.limits): none.
        unlimited = dict.fromkeys(("requests_per_minute", "tokens_per_minute", "concurrent_streams"), 0)
        return ApiKey.issue(user, name="load test", **unlimited)[1]


def _run(url, key, models, clients, requests, max_tokens, seed, stream) -> tuple[Tally, float]:
    tally, left, pick = Tally(), [requests], random.Random(seed)
    plan = [(pick.choice(models), pick.choice(QUESTIONS)) for _ in range(requests)]

    def client() -> None:
        while True:
            with tally.lock:
                if not left[0]:
                    return
                left[0] -= 1
                model, question = plan[left[0]]
            _ask(url, key, model, max_tokens, tally, question, stream=stream)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - started


def _ask(url, key, model, max_tokens, tally: Tally, question: str = QUESTIONS[0], *, stream=False) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    started, timeout = time.perf_counter(), settings.MINT_INFERENCE_TIMEOUT_SECONDS + 30
    first_text = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            served = {}
            if stream:
                tokens, first_text = _read_events(response, started)
            else:
                answer = json.loads(response.read())
                tokens, served = int(answer["usage"]["completion_tokens"]), answer.get("mint") or {}
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        detail = exc.read()[:300].decode(errors="replace") if isinstance(exc, urllib.error.HTTPError) else ""
        with tally.lock:
            tally.failures.append(f"{model}: {exc} {detail}".strip())
        return
    with tally.lock:
        tally.latencies.append(time.perf_counter() - started)
        tally.completion_tokens += tokens
        if first_text is not None:
            tally.first_text.append(first_text)
        if served.get("worker"):
            tally.hosts[served["worker"].partition("@")[2] or served["worker"]] += 1
            tally.routes[served.get("route") or "?"] += 1


def _read_events(response, started: float) -> tuple[int, float | None]:
    """A streamed answer's completion tokens (from its usage chunk) and seconds to its first text."""
    tokens, first_text = None, None
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[len(b"data: ") :])
        if "error" in chunk:
            raise ValueError(f"error event: {chunk['error'].get('message')}")
        if first_text is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
            first_text = time.perf_counter() - started
        if chunk.get("usage"):
            tokens = int(chunk["usage"]["completion_tokens"])
    if tokens is None:
        raise ValueError("the stream ended without its usage chunk")
    return tokens, first_text


def _table(base, adapters, clients, requests, max_tokens, stream, tally: Tally, seconds: float) -> str:
    ordered, first = sorted(tally.latencies), sorted(tally.first_text)

    def ms(q: float, values: list[float] = ordered) -> str:
        if not values:
            return "-"
        return f"{values[min(len(values) - 1, max(0, round(q * len(values)) - 1))] * 1000:.0f} ms"

    rows = [
        ("base", base),
        ("adapters", f"{adapters} (random-init, rank {RANK})"),
        ("clients", str(clients)),
        (
            "requests",
            f"{requests} (chat{', streamed' if stream else ''}, max_tokens {max_tokens}, temperature 0)",
        ),
        ("failures", str(len(tally.failures))),
        ("wall time", f"{seconds:.1f} s"),
        ("throughput", f"{len(ordered) / seconds:.1f} req/s"),
        ("", f"{tally.completion_tokens / seconds:.1f} completion tokens/s"),
        ("latency p50", ms(0.50)),
        ("latency p95", ms(0.95)),
        ("latency max", ms(1.0)),
    ]
    if stream:
        rows += [("first text p50", ms(0.50, first)), ("first text p95", ms(0.95, first))]
    if ordered:
        rows.insert(7, ("", f"{tally.completion_tokens / len(ordered):.0f} completion tokens per answer"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def _hosts_table(tally: Tally) -> str:
    """Requests per host, and why routing sent them there: `resident` found the adapter in
    the host's memory (an affinity hit), `disk` on its local disk, `cold` loaded it from the
    store. Streamed answers do not say where they were served and are not counted."""
    answered = sum(tally.routes.values())
    rows = [(f"served by {host}", f"{n} ({n / answered:.0%})") for host, n in sorted(tally.hosts.items())]
    rows += [(f"route {reason}", str(n)) for reason, n in sorted(tally.routes.items())]
    rows.append(("affinity hit rate", f"{tally.routes['resident'] / answered:.1%} of {answered} answers"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def _worker_command(queue: str, clients: int) -> list[str]:
    return processes.celery_worker(
        "--pool",
        "threads",
        "--concurrency",
        str(clients),
        "--queues",
        queue,
        "--hostname",
        "load-test@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    )


def _check_alive(children: list[subprocess.Popen]) -> None:
    if any(child.poll() is not None for child in children):
        raise CommandError("a child process exited early; see var/load-test-*.log")


def _wait_for_log(path: Path, text: str, children, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in path.read_bytes():
        _check_alive(children)
        if time.monotonic() > deadline:
            raise CommandError(f"the worker was not ready in {timeout:.0f}s; see {path}")
        time.sleep(0.2)


def _wait_for_url(url: str, children, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(children)
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without a key)
        except OSError:
            if time.monotonic() > deadline:
                raise CommandError(f"the web server did not answer in {timeout:.0f}s") from None
            time.sleep(0.2)
