"""Continuous batching over a `BatchedLoraModel`: requests join and leave between decode steps.

`submit()` queues a request (a prompt, the revision sha256 of its adapter or None for the
bare base, sampling settings) and returns a `Future` of its `Completion`. Each `step()`

1. decodes one token for every running row in one forward pass, rows of different
   adapters together (the bank picks each row's adapter);
2. finishes rows on EOS, a stop string or max_tokens, and drops them from the batch;
3. admits queued requests up to `max_batch`: their prompts are prefilled together in
   one forward (left-padded), which also gives their first token, and their KV cache is
   merged into the running one.

When nothing is running, a step waits at most `max_wait` seconds (from the oldest
request's arrival) for the batch to fill before it starts.

KV cache: transformers 5.24's `DynamicCache` keeps, per layer, plain key and value
tensors [batch, kv_heads, seq, head_dim] that grow by concatenation (`DynamicLayer`). So
merging is practical: the joiners' fresh cache and the running one are left-padded
to the same length with zeros and concatenated along the batch; the 2-D attention mask
(0 on padding) hides the pads, and each row carries its own position ids, so RoPE sees
the same positions as if the row ran alone. A finishing row is dropped with
`batch_select_indices`, and columns that are padding in every remaining row are cut
from the left, so the cache does not grow with the batch's history.

Sliding-window layers (Gemma 3's local layers, built by `DynamicCache(config=...)` as
`DynamicSlidingWindowLayer`) keep only the last window - 1 columns and count the columns
seen in `cumulative_length`, from which the attention mask's offsets are computed. Every
row's real tokens are contiguous and end at the batch's last column (pads are only ever
added on the left), so a window over cache columns is the same window over each row's own
positions; a merge therefore left-pads such a layer to min(columns, window - 1) and sets
its `cumulative_length` to the merged width, and a cut lowers it by the columns cut.

Rows sample independently: greedy when temperature is 0, otherwise temperature and
top-p with a per-row `torch.Generator` seeded from the request's seed. Everything runs
on the model's device.

The decode thread does no I/O. Each row's text is detokenized incrementally
(`streamed_text.StreamedText`, the one stop-string implementation, shared with the
one-at-a-time runtime); the pieces a streaming request's callback gets, and the outcome
of such a request, go through a `_Publisher`: its own thread calls the callbacks (a
Redis push each, in the worker) with what piled up since the last round, joined, every
`publish_every` seconds at most, and resolves the future after the request's last piece.
A request is dropped from the batch at the next step once its future is done: cancelled
by its caller (a client gone, a deadline passed) or failed by its callback. A request
whose adapter is not in the bank waits in the queue while `make_resident` brings it (the
worker's server reads it on a loader thread and calls `wake()`), so the running rows
never wait for a store.

No Django imports.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from workers.engine.batched_lora import BankFull, BatchedLoraModel
from workers.engine.examples import Message
from workers.engine.prompting import render_prompt, stop_token_ids
from workers.engine.runtime import SamplingParams, check_fits
from workers.engine.streamed_text import StreamedText

log = logging.getLogger(__name__)

TextCallback = Callable[[str], None]  # called with each new piece of a row's text
PayloadLoader = Callable[[str], bytes]  # revision sha256 -> payload bytes


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]  # the completion's tokens, EOS excluded
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    adapter: str | None  # the revision sha256 it ran with, None for the bare base


@dataclass(slots=True, eq=False)
class _Request:
    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    on_text: TextCallback | None
    arrived: float
    future: Future = field(default_factory=Future)


@dataclass(slots=True, eq=False)
class _Row:
    request: _Request
    generator: torch.Generator | None
    text: StreamedText  # its tokens, and their text as far as it is settled


class _Publisher:
    """Streaming requests' text and outcomes, delivered off the decode thread (see the
    module's docstring). Per request, pieces and the outcome keep their order."""

    def __init__(self, every: float):
        self.every = every
        self._items: deque[tuple[_Request, str | None, Completion | None, BaseException | None]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def text(self, request: _Request, piece: str) -> None:
        self._put((request, piece, None, None))

    def resolve(
        self, request: _Request, result: Completion | None = None, error: BaseException | None = None
    ) -> None:
        self._put((request, None, result, error))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over has been delivered."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def stop(self, timeout: float | None = None) -> None:
        _stop_thread(self, timeout)

    def _put(self, item) -> None:
        with self._cond:
            self._items.append(item)
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="batch-publish", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._stopping)
                if not self._items:
                    return  # stopping, everything delivered
                items, self._busy = list(self._items), True
                self._items.clear()
            try:
                self._deliver(items)
            except Exception:
                log.exception("delivering streamed text failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self.every > 0 and not self._stopping:
                time.sleep(self.every)  # lets the next round's pieces pile up into one call each

    def _deliver(self, items) -> None:
        pieces: dict[_Request, list[str]] = {}
        for request, piece, result, error in items:
            if piece is not None:
                pieces.setdefault(request, []).append(piece)
                continue
            self._send(request, pieces.pop(request, ()))
            _resolve(request.future, result, error)
        for request, texts in pieces.items():
            self._send(request, texts)

    @staticmethod
    def _send(request: _Request, texts) -> None:
        if not texts or request.future.done():
            return  # nobody reads it any more
        try:
            request.on_text("".join(texts))
        except Exception as exc:
            _resolve(request.future, error=exc)  # the decode thread drops the row next step


class BatchGenerator:
    """Serves many requests, each with its own adapter, in one continuously refilled batch.

    `step()` must be called from one thread at a time (`serve_forever` does so in its own
    thread); `submit()` may be called from any thread."""

    def __init__(
        self,
        model: BatchedLoraModel,
        tokenizer,
        *,
        max_batch: int = 64,
        max_wait: float = 0.0,
        loader: PayloadLoader | None = None,
        publish_every: float = 0.02,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.loader = loader
        self.device = model.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = stop_token_ids(tokenizer, model.model)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()  # adapters by last admission (LRU first)
        # The running batch: one entry per row, in batch order.
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [batch, cache length + 0], 1 = a real token
        self._last: torch.Tensor | None = None  # [batch] the token each row feeds next
        self._positions: torch.Tensor | None = None  # [batch] that token's position id
        self._slot_ids: torch.Tensor | None = None  # [batch]
        self._rows_set = False  # whether the model's per-row slots are this batch's
        self._publisher = _Publisher(publish_every)

    # --- requests -----------------------------------------------------------------------

    def prompt_ids(self, prompt: str | Sequence[int] | Sequence[Message]) -> list[int]:
        """The token ids the model reads for `prompt` (a conversation through the base's chat
        template)."""
        if prompt and not isinstance(prompt, str) and isinstance(prompt[0], Message):
            prompt = render_prompt(prompt, self.tokenizer)
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return [int(t) for t in prompt]

    def check_fits(self, prompt: str | Sequence[int] | Sequence[Message], params: SamplingParams) -> None:
        """PromptTooLong unless `prompt` and `params.max_tokens` fit the model's positions."""
        check_fits(len(self.prompt_ids(prompt)), params.max_tokens, self.max_positions)

    def submit(
        self,
        prompt: str | Sequence[int] | Sequence[Message],
        adapter: str | None = None,
        params: SamplingParams | None = None,
        on_text: TextCallback | None = None,
    ) -> Future:
        """Queue a request; the future's result is its `Completion`. The prompt is raw text,
        token ids, or a conversation rendered with the base's chat template."""
        params = params or SamplingParams()
        ids = self.prompt_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        check_fits(len(ids), params.max_tokens, self.max_positions)
        if adapter is not None and self.loader is None and adapter not in self.model.slots:
            raise KeyError(f"adapter {adapter[:12]}… is not loaded and this generator has no loader")
        request = _Request(ids, adapter, params, on_text, time.monotonic())
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
        return request.future

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def idle(self) -> bool:
        return not self._rows and not self.queued

    # --- stepping -----------------------------------------------------------------------

    def step(self) -> int:
        """One decode step for the running rows, then admit (and prefill) queued ones.
        Returns how many tokens were produced."""
        produced, joining = 0, []
        try:
            with torch.no_grad():
                if self._rows:
                    produced += self._decode()
                joining = self._admit()
                if joining:
                    produced += self._prefill(joining)
        except BaseException as exc:
            for row in joining:  # admitted but perhaps not yet in the batch
                _resolve(row.request.future, error=exc)
            self._fail_all(exc)
            raise
        return produced

    def run_until_idle(self) -> None:
        while not self.idle():
            if not self.step() and not self._rows:
                self._wait_for_work()
        self._publisher.flush()

    def wake(self) -> None:
        """Something a queued request waits for changed (an adapter came into memory)."""
        with self._cond:
            self._cond.notify_all()

    def fail_queued(self, adapter: str, error: BaseException) -> int:
        """Fail the queued requests for `adapter` (it could not be loaded); how many."""
        with self._cond:
            failed = [r for r in self._queue if r.adapter == adapter]
            for request in failed:
                self._queue.remove(request)
        for request in failed:
            _resolve(request.future, error=error)
        return len(failed)

    def serve_forever(self) -> threading.Thread:
        """Step in a daemon thread until `stop()`; returns the thread."""
        if self._thread is not None:
            raise RuntimeError("already serving")
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="batch-generate", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        _stop_thread(self, timeout)
        self._publisher.stop(timeout)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not self._rows:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                if not self.step() and not self._rows:
                    self._wait_for_work()
            except Exception:
                log.exception("a batch step failed; its requests were failed")

    def _wait_for_work(self, longest: float = 0.05) -> None:
        """Nothing runs and every queued request waits for its adapter: sleep until a load
        lands (`wake`) or a request comes, not in a busy loop."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(longest)

    # --- admission ------------------------------------------------------------------------

    def _admit(self) -> list[_Row]:
        capacity = self.max_batch - len(self._rows)
        if capacity <= 0:
            return []
        with self._cond:
            if not self._rows and self._queue and self.max_wait > 0:
                # Idle: give the batch up to max_wait (from the oldest arrival) to fill.
                deadline = self._queue[0].arrived + self.max_wait
                while len(self._queue) < capacity and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            taken = [self._queue.popleft() for _ in range(min(capacity, len(self._queue)))]
        in_use = {row.request.adapter for row in self._rows}
        joining, waiting = [], []
        for request in taken:
            if request.future.done():
                continue  # cancelled by its caller while it waited
            try:
                resident = self.make_resident(request.adapter, in_use)
            except Exception as exc:
                _resolve(request.future, error=exc)
                continue
            if not resident:
                waiting.append(request)  # every slot is busy with running rows: try next step
                continue
            in_use.add(request.adapter)
            if request.adapter is not None:
                self._recent[request.adapter] = None
                self._recent.move_to_end(request.adapter)
            joining.append(self._row(request))
        if waiting:
            with self._cond:
                self._queue.extendleft(reversed(waiting))
        return joining

    def make_resident(self, adapter: str | None, in_use: set) -> bool:
        """Put `adapter` (a sha256, None for the bare base) in the bank before its request
        joins; False when every slot holds an adapter of `in_use` (the request waits a
        step). Runs on the generator's thread. This one loads through `loader` and evicts
        the least recently admitted idle adapter; a subclass may bring adapters in its own
        way (the worker's tiered residency, workers/serving.py) and must then call
        `slots_changed()` when it loads or unloads anything."""
        if adapter is None or adapter in self.model.slots:
            return True
        if self.loader is None:
            raise KeyError(f"adapter {adapter[:12]}… is not loaded")
        payload = self.loader(adapter)
        while True:
            try:
                self.model.load(adapter, payload)
                return True
            except BankFull:
                idle = [sha for sha in self._recent if sha not in in_use and sha in self.model.slots]
                idle += [sha for sha in self.model.slots if sha not in in_use and sha not in self._recent]
                if not idle:
                    return False
                self.model.unload(idle[0])
                self._recent.pop(idle[0], None)
                self.slots_changed()

    def _row(self, request: _Request) -> _Row:
        on_text = partial(self._publisher.text, request) if request.on_text is not None else None
        return _Row(
            request,
            _row_generator(request.params, self.device),
            StreamedText(self.tokenizer, request.params.stop, on_text=on_text),
        )

    def slots_changed(self) -> None:
        """The bank's slots changed: set the running rows' slot ids again before decoding."""
        self._rows_set = False

    # --- forward passes ---------------------------------------------------------------------

    def _prefill(self, joining: list[_Row]) -> int:
        from transformers import DynamicCache

        width = max(len(row.request.prompt_ids) for row in joining)
        ids = torch.full((len(joining), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, row in enumerate(joining):
            prompt = row.request.prompt_ids
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        slot_ids = self.model.slot_ids([row.request.adapter for row in joining])
        cache = DynamicCache(config=self.model.config)
        self.model.set_rows(slot_ids)
        self._rows_set = False
        out = self.model.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = self._sample(out.logits[:, -1, :], joining)
        lengths = mask.sum(1)
        self._join(joining, cache, mask, tokens, lengths, slot_ids)
        self._finish_rows(tokens.tolist(), first=len(self._rows) - len(joining))
        return len(joining)

    def _decode(self) -> int:
        if not self._rows_set:
            self.model.set_rows(self._slot_ids)
            self._rows_set = True
        batch = len(self._rows)
        mask = torch.cat([self._mask, self._mask.new_ones(batch, 1)], dim=1)
        out = self.model.model(
            input_ids=self._last.unsqueeze(1),
            attention_mask=mask,
            position_ids=self._positions.unsqueeze(1),
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._mask = mask
        self._positions = self._positions + 1
        self._last = self._sample(out.logits[:, -1, :], self._rows)
        self._finish_rows(self._last.tolist(), first=0)
        return batch

    def _join(self, joining, cache, mask, tokens, lengths, slot_ids) -> None:
        if not self._rows:
            self._cache, self._mask, self._last = cache, mask, tokens
            self._positions, self._slot_ids = lengths, slot_ids
        else:
            old_len, new_len = self._mask.shape[1], mask.shape[1]
            width = max(old_len, new_len)
            for old, new in zip(self._cache.layers, cache.layers, strict=True):
                # Each layer holds the last `kept` of the batch's columns (all of them, or a
                # sliding window's worth); left padding keeps every row's columns at the right.
                kept = _kept_columns(old, width)
                old.keys = torch.cat([_left_pad(old.keys, kept), _left_pad(new.keys, kept)])
                old.values = torch.cat([_left_pad(old.values, kept), _left_pad(new.values, kept)])
                if old.is_sliding:
                    old.cumulative_length = width  # the columns seen, as the layer's mask sizes count them
            self._mask = torch.cat(
                [F.pad(self._mask, (width - old_len, 0)), F.pad(mask, (width - new_len, 0))]
            )
            self._last = torch.cat([self._last, tokens])
            self._positions = torch.cat([self._positions, lengths])
            self._slot_ids = torch.cat([self._slot_ids, slot_ids])
        self._rows.extend(joining)
        self._rows_set = False

    def _sample(self, logits: torch.Tensor, rows: Sequence[_Row]) -> torch.Tensor:
        tokens = logits.argmax(dim=-1)
        for i, row in enumerate(rows):  # only rows that sample; greedy rows took the argmax
            params = row.request.params
            if params.temperature > 0:
                tokens[i] = _sample_one(logits[i].float(), params, row.generator)
        return tokens

    # --- finishing ----------------------------------------------------------------------------

    def _finish_rows(self, tokens: list[int], first: int) -> None:
        """Give rows first.. their new tokens, complete the finished ones and drop them."""
        done = []
        for offset, token in enumerate(tokens):
            index = first + offset
            row = self._rows[index]
            # A done future: cancelled by its caller, or failed by its stream's callback.
            if row.request.future.done() or self._advance(row, token):
                done.append(index)
        if done:
            self._drop(done)

    def _advance(self, row: _Row, token: int) -> bool:
        """Add a token to a row; True when the row is finished (its outcome handed over)."""
        request, text = row.request, row.text
        finish = None
        if token in self.eos_ids or text.add(token):
            finish = "stop"
        elif len(text.tokens) >= request.params.max_tokens:
            finish = "length"
        if finish is None:
            return False
        completion = Completion(
            text=text.finish(),
            token_ids=tuple(text.tokens),  # an EOS is never added
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(text.tokens),
            finish_reason=finish,
            adapter=request.adapter,
        )
        if request.on_text is not None:
            self._publisher.resolve(request, completion)  # after its last piece
        else:
            _resolve(request.future, completion)
        return True

    def _drop(self, indices: list[int]) -> None:
        gone = set(indices)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep]
        self._rows_set = False
        if not keep:
            self._cache = self._mask = self._last = self._positions = self._slot_ids = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask.index_select(0, index)
        self._last = self._last.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._slot_ids = self._slot_ids.index_select(0, index)
        # Columns that are padding in every remaining row are dead weight: cut them.
        used = self._mask.any(dim=0)
        cut = int(used.long().argmax()) if bool(used.any()) else 0
        if cut:
            self._mask = self._mask[:, cut:]
            for layer in self._cache.layers:
                kept = _kept_columns(layer, self._mask.shape[1])
                layer.keys = layer.keys[:, :, layer.keys.shape[-2] - kept :, :]
                layer.values = layer.values[:, :, layer.values.shape[-2] - kept :, :]
                if layer.is_sliding:
                    layer.cumulative_length -= cut

    def _fail_all(self, exc: BaseException) -> None:
        for row in self._rows:
            _resolve(row.request.future, error=exc)
        self._rows = []
        self._cache = self._mask = self._last = self._positions = self._slot_ids = None
        self._rows_set = False


def _stop_thread(owner, timeout: float | None) -> None:
    """Tell a part's thread to stop (its `_cond`, `_stopping` and `_thread`) and wait for it."""
    with owner._cond:
        owner._stopping = True
        owner._cond.notify_all()
    if owner._thread is not None:
        owner._thread.join(timeout)
        owner._thread = None


def _resolve(future: Future, result: Completion | None = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless its caller cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled by the caller: nobody waits for it


def _row_generator(params: SamplingParams, device) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return generator


def _sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]


def _kept_columns(layer, columns: int) -> int:
    """How many of the batch's last `columns` cache columns a layer holds: all of them, or for
    a sliding-window layer (`DynamicSlidingWindowLayer`) at most window - 1, the ones the next
    token can still attend to."""
    if layer.is_sliding:
        return min(columns, layer.sliding_window - 1)
    return columns


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, heads, seq, dim] padded with zeros on the left of seq up to `width`."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))
