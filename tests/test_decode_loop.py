"""The serving loop's hot path: no I/O on the decode thread, linear detokenizing, and rows
that leave the batch as soon as nobody wants them (a client gone, a deadline passed)."""

from __future__ import annotations

import threading
import time

import pytest

from adapters_app.lifecycle.inference import ReaderGone
from tests.test_serving import PROMPTS, random_adapters
from workers.engine.base_models import load_base
from workers.engine.batch_generate import BatchGenerator
from workers.engine.batched_lora import BatchedLoraModel
from workers.engine.micro_base import build_byte_tokenizer
from workers.engine.residency import CPU, DEVICE, ResidencyManager
from workers.engine.runtime import SamplingParams
from workers.engine.store import AdapterStore
from workers.engine.streamed_text import StreamedText
from workers.serving import GenerationTimedOut

LONG = SamplingParams(max_tokens=400, temperature=0.0)  # the bare micro base talks on and on
SHORT = SamplingParams(max_tokens=3, temperature=0.0)


@pytest.fixture
def generator(micro_base):
    base = load_base(micro_base.path, micro_base.digest)
    made = []

    def make(**options) -> BatchGenerator:
        made.append(
            BatchGenerator(BatchedLoraModel(base.model, max_slots=4, max_rank=8), base.tokenizer, **options)
        )
        return made[-1]

    yield make
    for one in made:
        one.stop(timeout=10)


class Gate:
    """A store in front of the real one whose reads wait until `open()`: a slow object store."""

    def __init__(self, store):
        self.store, self.opened, self.reads = store, threading.Event(), 0

    def get(self, sha256: str) -> bytes:
        self.reads += 1
        assert self.opened.wait(60), "the test never opened the gate"
        return self.store.get(sha256)

    def open(self) -> None:
        self.opened.set()


# --- detokenizing ---------------------------------------------------------------------------


class CountingTokenizer:
    """The byte tokenizer, counting the tokens it is asked to decode."""

    def __init__(self):
        self.inner, self.decoded = build_byte_tokenizer(), 0

    def decode(self, tokens, **options) -> str:
        self.decoded += len(tokens)
        return self.inner.decode(tokens, **options)


def test_a_long_answer_is_detokenized_in_time_linear_in_its_length():
    tokenizer = CountingTokenizer()
    text = "Rex is a good dog, café 🐕. " * 40  # 1,000+ byte tokens, multi-byte characters among them
    tokens = tokenizer.inner.encode(text, add_special_tokens=False)
    assert len(tokens) >= 1024
    streamed = StreamedText(tokenizer, stop=["never said"])

    for token in tokens:
        streamed.add(token)

    assert streamed.finish() == text
    # Each token is decoded a few times in short windows, not the whole answer again per
    # token (that was 1,024 * 1,025 / 2, about 525,000, tokens decoded).
    assert tokenizer.decoded < 10 * len(tokens)


def test_the_text_is_cut_at_a_stop_string_that_arrives_across_many_tokens():
    tokenizer = build_byte_tokenizer()
    pieces: list[str] = []
    streamed = StreamedText(tokenizer, stop=["called Rex"], on_text=pieces.append)
    for token in tokenizer.encode("Your dog is called Rex, and more", add_special_tokens=False):
        if streamed.add(token):
            break
    assert streamed.stopped and streamed.finish() == "Your dog is " == "".join(pieces)


# --- rows that nobody wants any more --------------------------------------------------------


@pytest.mark.django_db
def test_a_cancelled_request_leaves_the_batch_at_the_next_step_and_frees_its_slot(generator):
    batch = generator(max_batch=1)
    first = batch.submit(PROMPTS[2], None, LONG)
    second = batch.submit(PROMPTS[1], None, SHORT)
    batch.step()
    assert batch.running == 1 and batch.queued == 1  # the only slot is the first request's

    first.cancel()  # its client went away
    steps = 0
    while not batch.idle():
        batch.step()
        steps += 1

    assert second.result().completion_tokens == 3
    assert steps <= SHORT.max_tokens + 1  # not the 400 the first one asked for


@pytest.mark.django_db
def test_a_stream_whose_reader_went_away_stops_its_own_row_and_no_other(generator):
    batch = generator(max_batch=4)
    sent: list[str] = []

    def reader_leaves(piece: str) -> None:
        sent.append(piece)
        raise ReaderGone("the client closed the connection")

    abandoned = batch.submit(PROMPTS[2], None, LONG, on_text=reader_leaves)
    kept = batch.submit(PROMPTS[2], None, SamplingParams(max_tokens=40, temperature=0.0))
    batch.run_until_idle()

    with pytest.raises(ReaderGone):
        abandoned.result()
    assert len(sent) == 1, "nothing more is sent to a reader that has gone"
    assert kept.result().completion_tokens == 40


@pytest.mark.django_db
def test_streamed_text_is_handed_over_off_the_decode_thread_and_before_the_result(generator):
    batch = generator(max_batch=4, publish_every=0.01)
    batch.serve_forever()
    threads, pieces = set(), []

    def on_text(piece: str) -> None:
        threads.add(threading.current_thread().name)
        pieces.append(piece)

    result = batch.submit(PROMPTS[0], None, SamplingParams(max_tokens=60), on_text=on_text).result(timeout=60)

    assert "".join(pieces) == result.text  # every piece was delivered before the result
    assert threads and "batch-generate" not in threads  # never on the decode thread
    assert len(pieces) < result.completion_tokens  # pieces that piled up went out as one


# --- cold loads off the decode thread -------------------------------------------------------


@pytest.mark.django_db
def test_the_batch_keeps_decoding_while_a_new_adapter_is_read_from_a_slow_store(micro_base, server_with):
    server = server_with()
    warm, cold = random_adapters(micro_base, 2, seed=11)
    server.generate(PROMPTS[0], warm, SHORT)  # in the bank
    server.residency.forget(cold)  # not even on the local disk (an earlier test may have left it)
    gate = Gate(server.residency.store)
    server.residency.store = gate
    outcome: dict = {}

    def ask_cold() -> None:
        outcome["cold"] = server.generate(PROMPTS[1], cold, SHORT)

    waiting = threading.Thread(target=ask_cold)
    waiting.start()
    assert _eventually(lambda: gate.reads == 1), "the cold adapter's read has begun"

    # Its read hangs, and a request for the adapter in the bank is answered meanwhile.
    [warm_answer] = server.generate(PROMPTS[2], warm, SamplingParams(max_tokens=30, temperature=0.0))
    assert warm_answer["completion_tokens"] == 30
    assert "cold" not in outcome

    gate.open()
    waiting.join(timeout=60)
    assert outcome["cold"][0]["completion_tokens"] == 3
    assert server.residency.tier_of(cold) == DEVICE


@pytest.mark.django_db
def test_an_adapter_the_cpu_tier_cannot_hold_is_still_served(micro_base, server_with, settings):
    settings.MINT_RESIDENCY_CPU_BYTES = 0  # staging cannot park it in memory
    server = server_with()
    [adapter] = random_adapters(micro_base, 1, seed=13)
    server.residency.forget(adapter)  # not on the local disk either

    [answer] = server.generate(PROMPTS[0], adapter, SHORT)

    assert answer["completion_tokens"] == 3  # loaded straight into the bank after one staging
    assert server.residency.tier_of(adapter) == DEVICE


@pytest.mark.django_db
def test_a_request_waits_at_most_the_inference_timeout_then_is_cancelled(micro_base, server_with, settings):
    server = server_with()
    [cold] = random_adapters(micro_base, 1, seed=12)
    server.residency.forget(cold)  # not even on the local disk (an earlier test may have left it)
    gate = Gate(server.residency.store)
    server.residency.store = gate
    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 1

    started = time.monotonic()
    with pytest.raises(GenerationTimedOut, match="no answer in 1 s"):
        server.generate(PROMPTS[0], cold, SHORT)
    assert time.monotonic() - started < 10
    gate.open()
    assert _eventually(lambda: server.generator.queued == 0 and server.generator.running == 0)


def test_a_cold_load_being_staged_does_not_hold_up_an_adapter_already_in_memory(tmp_path):
    store = AdapterStore(tmp_path / "store")
    warm, cold = (store.put(f"payload {name}".encode()).sha256 for name in ("warm", "cold"))
    gate = Gate(store)
    manager = ResidencyManager(
        gate, tmp_path / "cache", {DEVICE: 10_000, CPU: 10_000, "disk": 10_000}, base_digest="b" * 64
    )
    gate.open()
    manager.get(warm)
    gate.opened.clear()

    staging = threading.Thread(target=manager.stage, args=(cold,))
    staging.start()
    assert _eventually(lambda: gate.reads == 2)
    finished = threading.Event()
    threading.Thread(target=lambda: (manager.get(warm), manager.snapshot(), finished.set())).start()

    assert finished.wait(5), "a hit waited behind another adapter's cold load"
    gate.open()
    staging.join(timeout=10)
    assert manager.tier_of(cold) == CPU


def test_an_adapter_erased_while_it_was_being_read_is_not_kept(tmp_path):
    store = AdapterStore(tmp_path / "store")
    sha = store.put(b"a payload about to be erased").sha256
    gate = Gate(store)
    manager = ResidencyManager(
        gate, tmp_path / "cache", {DEVICE: 10_000, CPU: 10_000, "disk": 10_000}, base_digest="b" * 64
    )
    staging = threading.Thread(target=manager.stage, args=(sha,))
    staging.start()
    assert _eventually(lambda: gate.reads == 1)

    manager.forget(sha)
    gate.open()
    staging.join(timeout=10)

    assert manager.held() == set()
    assert not manager.local.path_for(sha).exists()


def _eventually(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.django_db
def test_the_detokenize_benchmark_times_both_ways_on_each_base(micro_base):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("bench_detokenize", bases=[micro_base.name], lengths=[16, 64], rounds=1, stdout=out)

    header, *rows, note = out.getvalue().splitlines()
    assert header.split()[:3] == ["base", "vocab", "answer"]
    assert [row.split()[2] for row in rows] == ["16", "64"]
    assert all(row.startswith("mint-micro") and row.endswith("x") for row in rows)
    assert "alternating" in note
