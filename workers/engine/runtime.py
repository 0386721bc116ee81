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
from workers.engine.prompting import IGNORE_INDEX, encode_for_training

PayloadLoader = Callable[[str], bytes]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


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
        prompt: str,
        params: SamplingParams,
        n: int = 1,
    ) -> list[Generation]:
        def run(base, model):
            return [_generate_one(base, model, prompt, params, i) for i in range(n)]

        return self._run(folder, digest, revision_sha, load, run)

    def answer(
        self,
        folder: str,
        digest: str,
        revision_sha: str | None,
        load: PayloadLoader,
        prompt: str,
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
    return {k: v for k, v in config.items() if k in allowed and k != "peft_type"}


def _generate_one(base, model, prompt: str, params: SamplingParams, index: int) -> Generation:
    import torch

    tokenizer = base.tokenizer
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    input_ids = encoded["input_ids"].to(base.device)
    sampling = params.temperature > 0
    if params.seed is not None:
        torch.manual_seed(params.seed + index)
    kwargs = dict(
        max_new_tokens=params.max_tokens,
        do_sample=sampling,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if sampling:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=encoded["attention_mask"].to(base.device), **kwargs
        )
    new_tokens = output[0, input_ids.shape[1] :].tolist()
    finish = "length"
    if tokenizer.eos_token_id in new_tokens:
        new_tokens = new_tokens[: new_tokens.index(tokenizer.eos_token_id)]
        finish = "stop"
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    for stop in params.stop:
        if stop and stop in text:
            text, finish = text[: text.index(stop)], "stop"
    return Generation(text, int(input_ids.shape[1]), len(new_tokens), finish)
