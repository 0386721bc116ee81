"""The worker's /v1 path: one continuously batched server per base, adapters in tiers.

Per worker process and base digest there is one `Server`: the base loaded once and
wrapped in a `BatchedLoraModel`, a `BatchGenerator` stepping in a daemon thread, and a
`ResidencyManager` whose device tier *is* the bank (one entry per bank slot; moving an
adapter onto the device writes its factors into a slot, a device eviction clears the
slot and parks the parsed payload in the cpu tier), with a local disk cache and the
shared store below. Celery task threads call `Server.generate`; their requests join the
running batch between decode steps, whatever adapter each one uses.

An adapter is never evicted from the bank while a row uses it. The generator admits a
request only when its adapter is in memory (bank or cpu tier: moving it into a slot is
one copy, done on the generator's thread, protecting the adapters of the running and
joining rows; a move that finds every slot busy makes the request wait for the next
step rather than fail). An adapter still on disk or only in the store is staged by the
server's loader threads (`ResidencyManager.stage`: read, verified and parsed outside the
manager's lock) while the request waits in the queue and the batch keeps decoding; a
load that fails fails the requests waiting for it. Loads from other threads (the
console's pin and prefetch tasks through `residency_managers()`) stage first too, and
protect every adapter a submitted request still needs.

A request waits for its rows at most MINT_INFERENCE_TIMEOUT_SECONDS (nobody waits for
it after that); a request whose stream's reader went away, or that timed out, is
cancelled and its rows leave the batch at the next step.

What the bank cannot serve (DoRA, LoRA biases, a rank above MINT_SERVING_MAX_RANK, …)
raises `Unservable` before any slot is touched; `workers.runs.generate` then serves the
request through the one-at-a-time `AdapterRuntime`. So does a base whose architecture the
bank does not batch exactly (`architectures.py`: `batched=False`): `server_for` refuses it
before loading anything.

A request's prompt is raw text or a conversation; a conversation is rendered here, with
the base's own chat template, and generation stops at the base's EOS / end-of-turn ids.

The `ResidentAdapter` table hears of the bank through a `ResidencyReporter` of holder
`serving` (the runtime has one of its own, holder `runtime`; routing follows only the
bank's rows): the reporter writes only from a Celery task's thread, so the changes the
generator thread makes are queued and reported by the task threads that wait on it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings

from adapters_app.lifecycle.storage import get_store
from workers.engine.architectures import UnknownArchitecture, architecture_of
from workers.engine.base_models import load_base
from workers.engine.batch_generate import BatchGenerator
from workers.engine.batched_lora import BatchedLoraError, BatchedLoraModel
from workers.engine.payload import AdapterPayload, unpack
from workers.engine.prompting import Prompt
from workers.engine.residency import (
    CPU,
    DEFAULT_POLICY,
    DEVICE,
    DISK,
    EvictionPolicy,
    ResidencyError,
    ResidencyManager,
    TierChange,
    Transfers,
)
from workers.engine.runtime import ResidencyEvent, SamplingParams

log = logging.getLogger(__name__)

TextCallback = Callable[[int, str], None]  # (choice index, settled text piece)


class Unservable(BatchedLoraError):
    """The adapter's payload cannot go into the bank; serve it another way."""


class GenerationTimedOut(TimeoutError):
    """A request's rows did not finish in MINT_INFERENCE_TIMEOUT_SECONDS; they were cancelled."""


LOADER_THREADS = 2  # cold loads staged at once per base


@dataclass(frozen=True, slots=True)
class _HostAdapter:
    """The cpu tier's object: a parsed payload, already checked against the bank."""

    sha256: str
    payload: AdapterPayload
    nbytes: int


@dataclass(frozen=True, slots=True)
class _BankedAdapter:
    """The device tier's object: the adapter's slot (the host copy is kept for demotion)."""

    host: _HostAdapter
    slot: int


class _BusyAware:
    """An eviction policy that never picks an adapter the server still needs now."""

    def __init__(self, inner: EvictionPolicy, busy: Callable[[], Container]):
        self.inner, self.busy = inner, busy
        self.name = inner.name

    def record(self, key) -> None:
        self.inner.record(key)

    def insert(self, key) -> None:
        self.inner.insert(key)

    def remove(self, key) -> None:
        self.inner.remove(key)

    def victim(self, protected: Container = ()):
        busy = self.busy()
        return self.inner.victim(_Either(protected, busy))


@dataclass(frozen=True, slots=True)
class _Either:
    first: Container
    second: Container

    def __contains__(self, key: object) -> bool:
        return key in self.first or key in self.second


class _Generator(BatchGenerator):
    """The engine's generator, with adapters made resident through the server's tiers."""

    def __init__(self, server: Server, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server = server

    def make_resident(self, adapter: str | None, in_use: set) -> bool:
        if adapter is None or adapter in self.model.slots:
            return True
        return self.server.load_for_rows(adapter, in_use)


class Server:
    """One base, batched: see the module's docstring."""

    def __init__(self, base_path: str, base_digest: str, observer: Callable[[ResidencyEvent], None] | None):
        self.base_digest = base_digest
        self.base = load_base(base_path, base_digest)
        self.observer = observer
        self.model = BatchedLoraModel(
            self.base.model, max_slots=settings.MINT_SERVING_SLOTS, max_rank=settings.MINT_SERVING_MAX_RANK
        )
        self.slot_bytes = self.model.bank_bytes() // (self.model.max_slots + 1)
        self._busy: Counter[str] = Counter()  # sha256 -> rows submitted and not finished
        self._busy_lock = threading.Lock()
        self._rows_in_use = threading.local()  # on the generator thread, while it admits
        self._refused: dict[str, str] = {}  # sha256 -> why the bank cannot serve it
        self._changes: deque[TierChange] = deque()  # device-tier changes not reported yet
        self._staging: set[str] = set()  # adapters the loader threads are bringing in
        self._staged: set[str] = set()  # brought in, and not moved into the bank since
        self._staging_lock = threading.Lock()
        self._loader = ThreadPoolExecutor(
            LOADER_THREADS, thread_name_prefix=f"adapter-loader-{base_digest[:8]}"
        )
        self.residency = ResidencyManager(
            get_store(),
            settings.MINT_RESIDENCY_CACHE_DIR / base_digest[:16],
            {
                # The slot count is the device tier's real limit (the bank's memory is fixed);
                # the byte budget only has to admit a full bank, even of fp32 payloads.
                DEVICE: self.model.max_slots * max(self.slot_bytes, self._slot_fp32_bytes()),
                CPU: settings.MINT_RESIDENCY_CPU_BYTES,
                DISK: settings.MINT_RESIDENCY_DISK_BYTES,
            },
            base_digest=base_digest,
            device=str(self.model.device),
            transfers=Transfers(
                materialize=self._materialize,
                to_device=self._to_bank,
                to_host=self._from_bank,
                nbytes=self._nbytes,
            ),
            policy=lambda: _BusyAware(DEFAULT_POLICY(), self._protected),
            device_slots=self.model.max_slots,
            observer=self._heard,
        )
        self.generator = _Generator(
            self,
            self.model,
            self.base.tokenizer,
            max_batch=settings.MINT_SERVING_MAX_BATCH,
            max_wait=settings.MINT_SERVING_MAX_WAIT_MS / 1000,
            loader=self.residency.get,  # unused (see _Generator), but says adapters may be loaded
        )
        self.generator.serve_forever()
        self._report("loaded", "base", base_digest, _tensor_bytes(self.base.model.parameters()))

    # --- requests -----------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt,
        revision_sha: str | None,
        params: SamplingParams,
        n: int = 1,
        on_text: TextCallback | None = None,
        on_accepted: Callable[[], None] | None = None,
    ) -> list[dict]:
        """`n` completions (one row each) of `prompt`, as `workers.runs.generate` returns them.

        Raises `Unservable` when the bank cannot hold the adapter and PromptTooLong when the
        prompt does not fit, both before generating anything; `on_accepted` is called once
        neither was raised."""
        if revision_sha is not None and revision_sha in self._refused:
            raise Unservable(self._refused[revision_sha])
        self.generator.check_fits(prompt, params)
        if on_accepted is not None:
            on_accepted()
        # Each choice samples on its own: seed, seed + 1, … as the runtime does.
        rows = [params if params.seed is None else replace(params, seed=params.seed + i) for i in range(n)]
        futures = []
        deadline = time.monotonic() + settings.MINT_INFERENCE_TIMEOUT_SECONDS
        self._hold(revision_sha, n)
        try:
            for index, row in enumerate(rows):
                callback = (lambda piece, index=index: on_text(index, piece)) if on_text else None
                futures.append(self.generator.submit(prompt, revision_sha, row, on_text=callback))
            try:
                completions = [
                    future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures
                ]
            except Unservable as exc:
                self._refused[revision_sha] = str(exc)
                raise
            except FutureTimeout:
                raise GenerationTimedOut(
                    f"no answer in {settings.MINT_INFERENCE_TIMEOUT_SECONDS} s: the request was cancelled"
                ) from None
        finally:
            for future in futures:
                future.cancel()  # rows not finished (a sibling failed, time ran out) leave the batch
            self._hold(revision_sha, -n)
            self._report_changes()
        self._report("used", "base", self.base_digest)
        if revision_sha is not None:
            self._report("used", "adapter", revision_sha)
        return [
            {
                "text": c.text,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "finish_reason": c.finish_reason,
            }
            for c in completions
        ]

    def stop(self) -> None:
        self.generator.stop(timeout=10)
        self._loader.shutdown(wait=False, cancel_futures=True)

    def forget(self, sha256: str) -> bool:
        """Drop an erased revision from the bank, the cpu tier and the local cache; False
        (nothing touched) while a submitted request still uses it: ask again later."""
        if self.residency.forget(sha256, unless_in=self._protected) is None:
            return False
        self._refused.pop(sha256, None)
        return True

    # --- the bank as the device tier ------------------------------------------------------

    def _hold(self, sha256: str | None, rows: int) -> None:
        if sha256 is None:
            return
        with self._busy_lock:
            self._busy[sha256] += rows
            if self._busy[sha256] <= 0:
                del self._busy[sha256]

    def _protected(self) -> Container:
        """What an eviction may not pick now. On the generator thread while it admits: the
        running and joining rows' adapters (a queued request's adapter can be loaded
        again when its turn comes). Elsewhere: every adapter a submitted request needs."""
        in_use = getattr(self._rows_in_use, "adapters", None)
        if in_use is not None:
            return in_use
        with self._busy_lock:
            return set(self._busy)

    def load_for_rows(self, sha256: str, in_use: set) -> bool:
        """Called by the generator as it admits a request: bring the adapter into the bank
        if it is in memory. False when it is not (a loader thread is bringing it: the
        request waits, the batch goes on) or every slot holds an adapter the batch uses."""
        if sha256 in self._refused:
            raise Unservable(self._refused[sha256])
        if self.residency.tier_of(sha256) not in (DEVICE, CPU):
            with self._staging_lock:
                # Staged already, and still not in memory (pins fill the cpu tier, or it was
                # evicted again at once): load it here rather than stage it forever.
                staged = sha256 in self._staged
            if not staged:
                self._stage_in_background(sha256)
                return False
        self._rows_in_use.adapters = in_use
        try:
            self.residency.get(sha256)
        except ResidencyError:
            return False
        finally:
            self._rows_in_use.adapters = None
        with self._staging_lock:
            self._staged.discard(sha256)
        self.generator.slots_changed()
        return True

    def _stage_in_background(self, sha256: str) -> None:
        with self._staging_lock:
            if sha256 in self._staging:
                return
            self._staging.add(sha256)
        self._loader.submit(self._stage, sha256)

    def _stage(self, sha256: str) -> None:
        """On a loader thread: read, verify and parse the adapter into the cpu tier."""
        try:
            self.residency.stage(sha256)
            with self._staging_lock:
                self._staged.add(sha256)
        except Exception as exc:
            if isinstance(exc, Unservable):
                self._refused[sha256] = str(exc)
            else:
                log.warning("could not load adapter %s: %s", sha256[:12], exc)
            self.generator.fail_queued(sha256, exc)
        finally:
            with self._staging_lock:
                self._staging.discard(sha256)
            self.generator.wake()

    def _materialize(self, data: bytes) -> _HostAdapter:
        sha256 = hashlib.sha256(data).hexdigest()
        payload = unpack(data)
        try:
            self.model.check(payload)  # refuse before any tier or slot takes it
        except BatchedLoraError as exc:
            raise Unservable(str(exc)) from exc
        nbytes = sum(t.numel() * t.element_size() for t in payload.tensors.values())
        return _HostAdapter(sha256, payload, nbytes)

    def _to_bank(self, host: _HostAdapter) -> _BankedAdapter:
        return _BankedAdapter(host, self.model.load(host.sha256, host.payload))

    def _from_bank(self, banked: _BankedAdapter) -> _HostAdapter:
        self.model.unload(banked.host.sha256)
        return banked.host

    def _slot_fp32_bytes(self) -> int:
        return 4 * sum(b.lora_a[0].numel() + b.lora_b[0].numel() + 1 for b in self.model.modules.values())

    def _nbytes(self, value: Any) -> int:
        return self.slot_bytes if isinstance(value, _BankedAdapter) else value.nbytes

    # --- reporting ------------------------------------------------------------------------

    def _heard(self, change: TierChange) -> None:
        if change.tier == DEVICE:
            self._changes.append(change)

    def _report_changes(self) -> None:
        while True:
            try:
                change = self._changes.popleft()
            except IndexError:
                return
            action = "loaded" if change.action == "added" else "evicted"
            self._report(action, "adapter", change.sha256, change.bytes)

    def _report(self, action: str, kind: str, sha256: str, nbytes: int = 0) -> None:
        if self.observer is None:
            return
        device = "cuda" if str(self.model.device).startswith("cuda") else "cpu"
        try:
            self.observer(ResidencyEvent(action, kind, sha256, self.base_digest, device, nbytes))
        except Exception:
            log.exception("the residency observer failed on %s %s %s", action, kind, sha256[:12])


_servers: dict[str, Server] = {}
_servers_lock = threading.Lock()
_observer: Callable[[ResidencyEvent], None] | None = None


def observe(observer: Callable[[ResidencyEvent], None] | None) -> None:
    """Who hears of loads, uses and evictions (the worker's `ResidencyReporter`)."""
    global _observer
    _observer = observer
    for server in list(_servers.values()):
        server.observer = observer


def server_for(base_path: str, base_digest: str) -> Server:
    """This process's server for a base, started on first use. Raises `Unservable` for a
    base whose architecture the bank does not batch (its requests go to the runtime)."""
    _refuse_unbatched(base_path, base_digest)
    with _servers_lock:
        server = _servers.get(base_digest)
        if server is None:
            server = _servers[base_digest] = Server(base_path, base_digest, _observer)
        return server


_unbatched: dict[str, str] = {}  # base digest -> why the bank does not batch its architecture


def _refuse_unbatched(base_path: str, base_digest: str) -> None:
    if base_digest not in _unbatched:
        from transformers import AutoConfig

        try:
            arch = architecture_of(AutoConfig.from_pretrained(base_path, local_files_only=True))
        except UnknownArchitecture as exc:
            reason = str(exc)
        else:
            reason = "" if arch.batched else f"{arch.family} bases are served one adapter at a time: "
            reason += arch.unbatched_reason
        _unbatched[base_digest] = reason
    if _unbatched[base_digest]:
        raise Unservable(_unbatched[base_digest])


def residency_managers() -> list[ResidencyManager]:
    """Every server's residency manager in this process."""
    with _servers_lock:
        return [server.residency for server in _servers.values()]


def held_revisions() -> set[str]:
    """The sha256 of every revision some server of this process holds in a tier."""
    return {sha for manager in residency_managers() for sha in manager.held()}


def forget_revisions(sha256s: set[str]) -> set[str]:
    """Drop these (erased) revisions from every server here; those still in use stay."""
    with _servers_lock:
        servers = list(_servers.values())
    return {sha for sha in sha256s for server in servers if not server.forget(sha)}


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
