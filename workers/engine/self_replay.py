"""Replay rows for an imported base: its own answers to general requests.

A LoRA trained only on one person's rows drifts the whole model toward them: measured
on SmolLM2-135M-Instruct (attention-only, rank 8, 40 steps at 0.002), the adapter
answered general questions in the person's templates and kept 0.18 of the questions the
bare model got right. Our own bases ship `replay.jsonl` (a sample of their pretraining
corpus) so training can mix it in (`TrainingConfig.replay`); an imported base has no
corpus to sample. What it does have is its own behaviour, so its replay rows are the
bare base's greedy answers to general requests ("Write one sentence about a river."):
training on them teaches "answer other things as you did before" (self-distillation).
With a quarter of each batch from them (0.005, 60 steps) retention rose to 0.55 while
recall reached 0.88; the README's table has the chosen recipe.

The requests are built from nouns and templates that share no question with the
retention set (`general_knowledge.py`), so replay cannot teach the answers it grades.
The rows are made once per base, on first need, and cached as the folder's
`replay.jsonl` (written atomically). The weights digest covers the `.safetensors` files
only, so the base's identity does not change; greedy decoding makes the rows the same
on every host with the same thread count.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPLAY_FILE = "replay.jsonl"
MAX_NEW_TOKENS = 48

_NOUNS = [
    "apple",
    "river",
    "mountain",
    "bicycle",
    "library",
    "ocean",
    "garden",
    "winter",
    "coffee",
    "piano",
    "forest",
    "train",
    "museum",
    "volcano",
    "desert",
    "island",
    "bridge",
    "candle",
    "kitten",
    "rainbow",
    "castle",
    "robot",
    "camera",
    "teacher",
    "doctor",
    "farmer",
    "market",
    "school",
    "hospital",
    "airport",
    "kitchen",
]
_TEMPLATES = (
    "Write one sentence about a {noun}.",
    "Give me a synonym for {noun}.",
    "Describe a {noun} in a few words.",
    "Why do people like a {noun}?",
    "Tell me a short fact about a {noun}.",
)


def replay_requests() -> list[str]:
    """The general requests a base answers for its replay rows (155, fixed)."""
    return [template.format(noun=noun) for noun in _NOUNS for template in _TEMPLATES]


def self_replay_rows(folder: str | os.PathLike, digest: str, *, max_batch: int = 32) -> list[dict]:
    """The bare base's greedy answers to `replay_requests()`, as chat rows."""
    from workers.engine.base_models import load_base
    from workers.engine.batch_generate import BatchGenerator
    from workers.engine.batched_lora import BatchedLoraModel
    from workers.engine.examples import Message
    from workers.engine.runtime import SamplingParams

    base = load_base(folder, digest)
    generator = BatchGenerator(
        BatchedLoraModel(base.model, max_slots=1, max_rank=1), base.tokenizer, max_batch=max_batch
    )
    requests = replay_requests()
    futures = [
        generator.submit((Message("user", request),), None, SamplingParams(max_tokens=MAX_NEW_TOKENS))
        for request in requests
    ]
    generator.run_until_idle()
    rows = []
    for request, future in zip(requests, futures, strict=True):
        answer = future.result().text.strip()
        if answer:  # an empty answer would teach the base to say nothing
            rows.append(
                {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]}
            )
    return rows


def ensure_self_replay(folder: str | os.PathLike, digest: str | None = None) -> Path:
    """The folder's replay.jsonl, made from the base's own answers when it has none yet."""
    from workers.engine.base_models import weights_digest

    folder = Path(folder)
    path = folder / REPLAY_FILE
    if path.exists():
        return path
    rows = self_replay_rows(folder, digest or weights_digest(folder))
    fd, tmp = tempfile.mkstemp(prefix=".replay-", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        # Two processes may build it at once: both write the same rows, the last rename wins.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
