"""The per-process adapter runtime: one base instance, many adapters attached by sha256.

Adapters are attached to a shared PEFT wrapper under a name derived from the
revision's sha256 (never its human name), so a re-trained revision can never
be served from a stale slot. Generation here is one request at a time; the
serving issue replaces it with heterogeneous batching and tiered residency.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workers.engine.base_models import LoadedBase, load_base
from workers.engine.examples import Example
from workers.engine.payload import unpack
from workers.engine.prompting import IGNORE_INDEX, Prompt, encode_for_training, prompt_text, stop_token_ids
from workers.engine.streamed_text import StreamedText

PayloadLoader = Callable[[str], bytes]
# Called with (choice index, text piece) as a generation's text becomes final; under the runtime's lock.
TextCallback = Callable[[int, str], None]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class PromptTooLong(ValueError):
    """A prompt and its max_tokens do not fit the base's positions: the caller's error (a 400
    naming the limit), not the worker's."""

    # One message argument: Celery rebuilds a worker's exception from its args in the web
    # process, where inference.complete tells this one by its name.
    code = "context_length_exceeded"


def check_fits(prompt_tokens: int, max_tokens: int, positions: int | None) -> None:
    if positions and prompt_tokens + max_tokens > positions:
        raise PromptTooLong(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceed the model's "
            f"context length of {positions} tokens"
        )


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True, slots=True)
class ResidencyEvent:
    """What the runtime tells its observer: a model was loaded, used or evicted."""

    action: str  # "loaded", "used" or "evicted"
    kind: str  # "base" or "adapter"
    sha256: str  # the revision's sha256, or the base's weight digest
    base_digest: str
    device: str  # "cpu" or "cuda"
    bytes: int = 0  # memory its tensors take (on "loaded")


# A plain callable (the worker's reports to the database live outside the engine). It is
# called under the runtime's lock, so it must be quick; what it raises is logged, never
# passed on to the request.
ResidencyObserver = Callable[[ResidencyEvent], None]


class AdapterRuntime:
    def __init__(self, max_adapters: int = 64, observer: ResidencyObserver | None = None):
        self.max_adapters = max_adapters
        self.observer = observer
        self._bases: dict[str, LoadedBase] = {}  # base digest -> this runtime's own instance
        self._wrappers: dict[str, object] = {}  # base digest -> PeftModel around it
        self._attached: dict[str, OrderedDict[str, str]] = {}  # base digest -> slot -> revision sha256
        self._lock = threading.RLock()

    def _model_for(self, folder: str, digest: str, revision_sha: str | None, load: PayloadLoader):
        """The model to run, with the revision's adapter active (or all adapters off)."""
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict

        base = self._bases.get(digest)
        if base is None:
            base = self._bases[digest] = load_base(folder, digest)
            self._notify("loaded", "base", digest, base, _tensor_bytes(base.model.parameters()))
        self._notify("used", "base", digest, base)
        wrapper = self._wrappers.get(digest)
        if revision_sha is None:
            return base, wrapper
        name = adapter_slot(revision_sha)
        attached = self._attached.setdefault(digest, OrderedDict())
        if name not in attached:
            payload = unpack(load(revision_sha))
            config = LoraConfig(**_lora_fields(payload.config))
            if wrapper is None:
                wrapper = PeftModel(base.model, config, adapter_name=name)
                self._wrappers[digest] = wrapper
            else:
                wrapper.add_adapter(name, config)
            set_peft_model_state_dict(wrapper, payload.tensors, adapter_name=name)
            wrapper.eval()
            attached[name] = revision_sha
            self._notify("loaded", "adapter", revision_sha, base, _adapter_bytes(wrapper, name))
            while len(attached) > self.max_adapters:
                evicted, evicted_sha = attached.popitem(last=False)
                wrapper.delete_adapter(evicted)
                self._notify("evicted", "adapter", evicted_sha, base)
        attached.move_to_end(name)
        wrapper.set_adapter(name)
        self._notify("used", "adapter", revision_sha, base)
        return base, wrapper

    def held(self) -> set[str]:
        """The sha256 of every revision attached to a base here."""
        with self._lock:
            return {sha for attached in self._attached.values() for sha in attached.values()}

    def forget(self, revision_sha: str) -> bool:
        """Detach an erased revision from every base here; False when none held it.

        Waits for a generation in progress (the runtime's lock). When the last adapter
        on a base goes, the PEFT wrapper is unloaded too, leaving the base's own modules:
        PEFT cannot run a wrapper that has no adapter left."""
        name, forgotten = adapter_slot(revision_sha), False
        with self._lock:
            for digest, attached in self._attached.items():
                if attached.pop(name, None) is None:
                    continue
                forgotten = True
                wrapper = self._wrappers[digest]
                if attached:
                    wrapper.delete_adapter(name)
                else:
                    wrapper.unload()
                    del self._wrappers[digest]
                self._notify("evicted", "adapter", revision_sha, self._bases[digest])
        return forgotten

    def _notify(self, action: str, kind: str, sha256: str, base: LoadedBase, nbytes: int = 0) -> None:
        if self.observer is None:
            return
        try:
            self.observer(ResidencyEvent(action, kind, sha256, base.digest, base.device, nbytes))
        except Exception:
            log.exception("the residency observer failed on %s %s %s", action, kind, sha256[:12])

    def _run(self, folder, digest, revision_sha, load, fn):
        with self._lock:
            base, wrapper = self._model_for(folder, digest, revision_sha, load)
            if revision_sha is None and wrapper is not None:
                with wrapper.disable_adapter():
                    return fn(base, base.model)
            return fn(base, wrapper if revision_sha else base.model)

    def generate(
        self,
        folder: str,
        digest: str,
        revision_sha: str | None,
        load: PayloadLoader,
        prompt: Prompt,
        params: SamplingParams,
        n: int = 1,
        on_text: TextCallback | None = None,
    ) -> list[Generation]:
        """`n` completions of `prompt`: a raw prompt, or a conversation rendered with the
        base's chat template (prompting.prompt_text)."""

        def run(base, model):
            return [_generate_one(base, model, prompt, params, i, on_text) for i in range(n)]

        return self._run(folder, digest, revision_sha, load, run)

    def answer(
        self,
        folder: str,
        digest: str,
        revision_sha: str | None,
        load: PayloadLoader,
        prompt: Prompt,
        max_tokens: int,
    ) -> str:
        """One greedy completion's text: what evaluations and tracked jobs need."""
        [generation] = self.generate(
            folder, digest, revision_sha, load, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)
        )
        return generation.text

    def logits(self, folder, digest, revision_sha, load, text: str):
        import torch

        def run(base, model):
            ids = base.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                return model(input_ids=ids["input_ids"].to(base.device)).logits.cpu()

        return self._run(folder, digest, revision_sha, load, run)

    def evaluate(self, folder, digest, revision_sha, load, examples: Sequence[Example]) -> dict:
        """Held-out loss and next-token accuracy on the answer tokens."""
        import torch

        def run(base, model):
            total_loss, correct, counted = 0.0, 0, 0
            for example in examples:
                ids, labels = encode_for_training(base.tokenizer, example, 1024)
                input_ids = torch.tensor([ids], device=base.device)
                target = torch.tensor([labels], device=base.device)
                with torch.no_grad():
                    logits = model(input_ids=input_ids).logits[:, :-1]
                shifted = target[:, 1:]
                mask = shifted != IGNORE_INDEX
                if not mask.any():
                    continue
                loss = torch.nn.functional.cross_entropy(logits[mask], shifted[mask], reduction="sum")
                total_loss += float(loss)
                correct += int((logits.argmax(-1)[mask] == shifted[mask]).sum())
                counted += int(mask.sum())
            if counted == 0:
                raise ValueError("the evaluation set has no answer tokens to score")
            return {
                "loss": total_loss / counted,
                "token_accuracy": correct / counted,
                "tokens": counted,
                "examples": len(examples),
            }

        return self._run(folder, digest, revision_sha, load, run)


def adapter_slot(revision_sha: str) -> str:
    return f"rev_{revision_sha[:20]}"


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _adapter_bytes(wrapper, name: str) -> int:
    """What the adapter's LoRA weights take where the wrapper put them (PEFT names them `….<name>.…`)."""
    return _tensor_bytes(p for key, p in wrapper.named_parameters() if f".{name}." in key)


def _lora_fields(config: dict) -> dict:
    from peft import LoraConfig

    allowed = set(LoraConfig.__dataclass_fields__)
    fields = {k: v for k, v in config.items() if k in allowed and k != "peft_type"}
    # The payload holds the factors; an init such as PiSSA would first rewrite the shared
    # base's weights (see workers/engine/lora_init.py), so loading never runs one.
    fields["init_lora_weights"] = True
    return fields


def _generate_one(
    base, model, prompt: Prompt, params: SamplingParams, index: int, on_text: TextCallback | None = None
) -> Generation:
    import torch
    from transformers import StoppingCriteriaList

    tokenizer = base.tokenizer
    stop_ids = stop_token_ids(tokenizer, base.model)
    encoded = tokenizer(prompt_text(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    input_ids = encoded["input_ids"].to(base.device)
    prompt_length = input_ids.shape[1]
    check_fits(prompt_length, params.max_tokens, getattr(base.model.config, "max_position_embeddings", None))
    streamed = StreamedText(
        tokenizer, params.stop, (lambda piece: on_text(index, piece)) if on_text is not None else None
    )

    def stop_string_seen(ids, scores, **_) -> torch.Tensor:
        # Called after every new token: streams what is settled and ends generation at a stop
        # string. Only the new token is looked at (an EOS ends generation on its own).
        token = int(ids[0, -1])
        stopped = token not in stop_ids and ids.shape[1] > prompt_length and streamed.add(token)
        return torch.tensor([stopped], device=ids.device)

    sampling = params.temperature > 0
    if params.seed is not None:
        torch.manual_seed(params.seed + index)
    kwargs = dict(
        max_new_tokens=params.max_tokens,
        do_sample=sampling,
        eos_token_id=sorted(stop_ids) or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        stopping_criteria=StoppingCriteriaList([stop_string_seen]),
    )
    if sampling:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=encoded["attention_mask"].to(base.device), **kwargs
        )
    generated = output[0, prompt_length:].tolist()
    new_tokens = _before_eos(generated, stop_ids)
    text = streamed.finish(new_tokens)
    finish = "stop" if streamed.stopped or len(new_tokens) < len(generated) else "length"
    return Generation(text, int(prompt_length), len(new_tokens), finish)


def _before_eos(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The tokens before the first EOS / end-of-turn token."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i]
    return tokens
