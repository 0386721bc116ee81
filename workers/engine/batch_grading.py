"""Grade many adapters' evaluation items in one continuously batched generation.

A study cell or a training benchmark ends with a dozen or more fresh adapters, each to be
graded on its person's items and the general set. Answering them one adapter and one
item at a time would cost more than the training; here every (adapter, item) pair is a
request to one `BatchGenerator` over a bank holding all the adapters, so rows of
different adapters (and of the bare base) decode together, greedily.

No Django imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from workers.engine.persona_world import EvalItem
from workers.engine.suites import MAX_NEW_TOKENS, ItemResult, grade

ProgressCallback = Callable[[int, int], None]  # (items answered, items in all)


def grade_many(
    base_folder: str,
    digest: str,
    work: Sequence[tuple[str | None, Sequence[EvalItem]]],
    payloads: Mapping[str, bytes],
    *,
    max_batch: int = 64,
    on_progress: ProgressCallback | None = None,
) -> list[list[ItemResult]]:
    """For each (adapter sha256 or None for the bare base, items), the graded items, in order.
    `payloads` maps each adapter's sha256 to its payload bytes (checked on load)."""
    from workers.engine.base_models import load_base
    from workers.engine.batch_generate import BatchGenerator
    from workers.engine.batched_lora import BatchedLoraModel
    from workers.engine.payload import unpack
    from workers.engine.runtime import SamplingParams

    adapters = sorted({sha for sha, _ in work if sha is not None})
    missing = [sha for sha in adapters if sha not in payloads]
    if missing:
        raise KeyError(f"no payload for adapter {missing[0][:12]}…")
    rank = max((unpack(payloads[sha]).config["r"] for sha in adapters), default=1)
    base = load_base(base_folder, digest)
    model = BatchedLoraModel(base.model, max_slots=max(1, len(adapters)), max_rank=max(1, rank))
    for sha in adapters:
        model.load(sha, payloads[sha])
    generator = BatchGenerator(model, base.tokenizer, max_batch=max_batch)

    futures = [
        [
            generator.submit(
                # rendered by the generator with the base's own chat template
                item.messages,
                sha,
                SamplingParams(max_tokens=MAX_NEW_TOKENS[item.suite]),
            )
            for item in items
        ]
        for sha, items in work
    ]
    total = sum(len(items) for _, items in work)
    while not generator.idle():
        generator.step()
        if on_progress is not None:
            on_progress(sum(f.done() for row in futures for f in row), total)
    return [
        [grade(item, future.result().text) for item, future in zip(items, row, strict=True)]
        for (_, items), row in zip(work, futures, strict=True)
    ]
