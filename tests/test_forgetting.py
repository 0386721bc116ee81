"""An erased person's revisions leave the workers' caches too: the batched server's bank
and tiers, the one-at-a-time runtime, and the rows that say who holds what. A real server
and runtime on the micro base, and a real worker process for the whole path.
(`ResidencyManager.forget` on its own: tests/test_residency.py.)"""

import pytest
from django.conf import settings as django_settings

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.inference import complete
from adapters_app.lifecycle.people import erase_person, erasure_mark, mark_erasure
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import ResidencyStats, ResidentAdapter
from tests.conftest import wait_until
from tests.test_serving import GREEDY, PROMPTS, generate_together, peft_answer, random_adapters
from tests.test_workers import SHORT, start_worker
from workers.engine.runtime import AdapterRuntime
from workers.engine.store import AdapterStore
from workers.forgetting import FULL_SWEEP_SECONDS, Forgetter, prune_local_caches, unnamed

# --- the batched server and the runtime on the micro base -------------------------------


@pytest.mark.django_db
def test_a_forgotten_adapter_leaves_the_bank_and_the_other_rows_answer_as_before(micro_base, server_with):
    server = server_with()
    erased, kept = random_adapters(micro_base, 2, seed=11)
    generate_together(server, [(PROMPTS[0], erased), (PROMPTS[1], kept)])
    slot = server.model.slots[erased]

    assert server.forget(erased)

    assert set(server.model.slots) == {kept}
    assert erased not in server.residency.held() and not server.residency.local.exists(erased)
    for bank in server.model.modules.values():  # the slot holds nothing of it any more
        assert not bank.lora_a[slot].any() and not bank.lora_b[slot].any()
    [answer] = server.generate(PROMPTS[1], kept, GREEDY)
    assert answer["text"] == peft_answer(micro_base, kept, PROMPTS[1])


@pytest.mark.django_db
def test_the_runtime_detaches_a_forgotten_revision_and_still_answers_with_the_rest(micro_base):
    erased, kept = random_adapters(micro_base, 2, seed=12)
    events = []
    runtime = AdapterRuntime(observer=events.append)

    def answer(sha):
        return runtime.answer(micro_base.path, micro_base.digest, sha, get_store().get, PROMPTS[2], 12)

    answer(erased), answer(kept)

    assert runtime.forget(erased)
    assert runtime.held() == {kept}
    assert answer(kept) == peft_answer(micro_base, kept, PROMPTS[2])
    assert not runtime.forget(erased)  # nothing left to drop

    # The last adapter on a base takes the PEFT wrapper with it; the base answers as itself.
    assert runtime.forget(kept)
    assert runtime.held() == set()
    assert answer(None) == peft_answer(micro_base, None, PROMPTS[2])
    assert [(e.action, e.sha256) for e in events if e.kind == "adapter" and e.action == "evicted"] == [
        ("evicted", erased),
        ("evicted", kept),
    ]


@pytest.mark.django_db
def test_unnamed_is_what_no_revision_row_names(make_revision):
    revision = make_revision()
    stranger = "0" * 64

    assert unnamed([revision.sha256, stranger]) == {stranger}


def test_a_process_sweeps_at_start_after_each_erasure_while_in_use_and_now_and_then(db):
    now, sweeps, in_use = [0.0], [], set()

    def sweep(worker_name):
        sweeps.append(now[0])
        return set(), set(in_use)

    forgetter = Forgetter("w@host", clock=lambda: now[0], sweep=sweep)
    forgetter.tick()  # at start: a restarted worker adopts its old disk cache
    forgetter.tick()
    assert sweeps == [0.0]

    mark_erasure()
    now[0], in_use = 2.0, {"a" * 64}
    forgetter.tick()
    now[0], in_use = 4.0, set()
    forgetter.tick()  # the adapter a request was using is asked about again
    forgetter.tick()
    assert sweeps == [0.0, 2.0, 4.0]

    now[0] = 4.0 + FULL_SWEEP_SECONDS  # a mark lost with the cache is caught up with
    forgetter.tick()
    assert sweeps == [0.0, 2.0, 4.0, now[0]]


@pytest.mark.django_db
def test_a_processs_reporting_thread_stops_when_told_and_a_later_use_starts_a_new_one(db):
    from workers.residency_report import ensure_reporting, stop_reporting

    first = ensure_reporting("stopping@test")
    stop_reporting()
    assert not first._thread.is_alive()

    second = ensure_reporting("stopping@test")
    assert second is not first and second._thread.is_alive()
    stop_reporting()


def test_a_starting_worker_deletes_local_cache_files_no_revision_names(make_revision, tmp_path):
    from adapters_app.lifecycle.storage import get_store

    kept = make_revision()
    root = tmp_path / "adapter-cache"
    caches = {digest: AdapterStore(root / digest) for digest in ("a" * 16, "b" * 16)}
    caches["a" * 16].put(get_store().get(kept.sha256))
    erased = [cache.put(f"erased from {digest}".encode()).sha256 for digest, cache in caches.items()]
    not_a_cache = AdapterStore(root / "notes")
    mine = not_a_cache.put(b"someone else's file").sha256

    assert prune_local_caches(root) == 2

    assert caches["a" * 16].exists(kept.sha256) and not_a_cache.exists(mine)
    assert not any(cache.exists(sha) for cache, sha in zip(caches.values(), erased, strict=True))


# --- a real worker ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_erased_persons_revisions_leave_the_worker_that_served_them(
    spawn_worker, settings, make_revision, micro_base
):
    # A file left by a revision erased while the worker was down, for a base it has not
    # served since: no process adopts that folder, so the worker's start clears it.
    stray = AdapterStore(django_settings.MINT_RESIDENCY_CACHE_DIR / ("f" * 16))
    left_behind = stray.put(b"an erased revision's bytes").sha256
    process, worker = start_worker(spawn_worker, settings, "forget")
    assert not stray.exists(left_behind)
    # A fleet's web and workers share one cache namespace (MINT_QUEUE); a test's worker has
    # a queue, so a namespace, of its own: share it, so the erasure mark reaches it.
    cache = settings.CACHES["default"]
    settings.CACHES = {"default": {**cache, "KEY_PREFIX": f"mint:{settings.CELERY_TASK_DEFAULT_QUEUE}"}}
    batched = make_revision()
    # A DoRA adapter the bank refuses: the worker answers it through its runtime instead.
    [dora] = random_adapters(micro_base, 1, seed=13, use_dora=True)
    one_at_a_time = make_revision(payload=get_store().get(dora), parent=batched)
    complete(f"alice/assistant@{batched.label}", "hi", SHORT)
    complete(f"alice/assistant@{one_at_a_time.label}", "hi", SHORT)

    def held() -> set[tuple[str, str]]:
        rows = ResidentAdapter.objects.filter(worker=worker, kind=ResidentAdapter.ADAPTER)
        return set(rows.values_list("sha256", "holder"))

    served = {(batched.sha256, ResidentAdapter.SERVING), (one_at_a_time.sha256, ResidentAdapter.RUNTIME)}
    wait_until(lambda: held() >= served, timeout=10)
    # The reporting thread writes these after its round's sweep: its first sweep is done, so
    # what follows is the erasure mark's doing, not a first look.
    wait_until(lambda: ResidencyStats.objects.filter(worker=worker).exists(), timeout=10)
    local_file = AdapterStore(django_settings.MINT_RESIDENCY_CACHE_DIR / micro_base.digest[:16]).path_for(
        batched.sha256
    )
    assert local_file.exists()
    mark = erasure_mark()

    erase_person(batched.adapter.person, actor=Actor.system("test"), reason="asked to be forgotten")

    assert erasure_mark() != mark
    wait_until(lambda: not held(), timeout=15)
    assert not local_file.exists()
    assert process.process.poll() is None  # the worker is still serving
