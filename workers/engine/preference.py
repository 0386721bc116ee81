"""Preference training: learning which of two answers a person prefers, with DPO.

Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization:
Your Language Model is Secretly a Reward Model", arXiv:2305.18290) trains the policy π
on pairs (prompt x, chosen y_c, rejected y_r) against a frozen reference π_ref:

    L = -log sigmoid(β · [(log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))])

Each log π(y|x) is summed over the answer's tokens only: the tokens supervised training
labels (`prompting.encode_for_training`: the answer and the token that ends its turn).
The rejected sequence is the same conversation with the final assistant answer swapped.

The reference is the model as it stands before the first step: the bare base for a fresh
default init (LoRA's B starts at zero), the parent revision when a run continues one.
Its log-probabilities of every pair are computed once, before training and without
gradients (`with_reference`), so training holds one model, not two.

Rows without a rejected answer (chat and completion rows in the same set, replay rows)
keep the SFT loss; `batch_loss` combines the two.

No Django imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from workers.engine.examples import Example, Message
from workers.engine.prompting import IGNORE_INDEX, encode_for_training
from workers.engine.training import collate, pad_token_id

Encoded = tuple[list[int], list[int]]  # input_ids, labels (IGNORE_INDEX off the answer)


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One preference row, encoded: the chosen and the rejected sequence, and the
    reference model's summed answer log-probabilities of each (filled in by `with_reference`)."""

    chosen: Encoded
    rejected: Encoded
    reference_chosen: float = 0.0
    reference_rejected: float = 0.0


def rejected_example(example: Example) -> Example:
    """The same conversation with the rejected answer as the final assistant turn."""
    if example.rejected is None:
        raise ValueError("this row has no rejected answer")
    return Example((*example.prompt_messages, Message("assistant", example.rejected)))


def encode_pair(tokenizer, example: Example, max_length: int) -> PreferencePair:
    return PreferencePair(
        chosen=encode_for_training(tokenizer, example, max_length),
        rejected=encode_for_training(tokenizer, rejected_example(example), max_length),
    )


def encode_rows(tokenizer, examples: Sequence[Example], max_length: int) -> list[PreferencePair | Encoded]:
    """Preference rows as pairs, the others as (input_ids, labels), in the given order."""
    return [
        encode_pair(tokenizer, ex, max_length)
        if ex.rejected is not None
        else encode_for_training(tokenizer, ex, max_length)
        for ex in examples
    ]


def answer_log_probs(model, input_ids, labels, attention):
    """Per row: the sum of log π(token) over the labelled (answer) tokens, with gradients."""
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = labels[:, 1:]
    # cross_entropy is -log π(target); ignored positions (prompt, padding) come out 0.
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return -per_token.sum(dim=-1)


def pair_log_probs(model, pairs: Sequence[PreferencePair], pad_id: int, device):
    """(log π(chosen), log π(rejected)) for each pair, chosen and rejected in one forward."""
    n = len(pairs)
    input_ids, labels, attention = collate(
        [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device
    )
    log_probs = answer_log_probs(model, input_ids, labels, attention)
    return log_probs[:n], log_probs[n:]


@torch.no_grad()
def with_reference(model, rows: Sequence, pad_id: int, device, batch_size: int) -> list:
    """`rows` with every pair's reference log-probs filled in by `model` as it stands now
    (in eval mode: no dropout), `batch_size` pairs a forward."""
    was_training = model.training
    model.eval()
    indices = [i for i, row in enumerate(rows) if isinstance(row, PreferencePair)]
    out = list(rows)
    for at in range(0, len(indices), batch_size):
        chunk = indices[at : at + batch_size]
        chosen, rejected = pair_log_probs(model, [rows[i] for i in chunk], pad_id, device)
        for i, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            out[i] = replace(rows[i], reference_chosen=c, reference_rejected=r)
    model.train(was_training)
    return out


def dpo_loss(model, pairs: Sequence[PreferencePair], pad_id: int, device, beta: float):
    """The mean DPO loss of the pairs under `model` (see the module docstring)."""
    chosen, rejected = pair_log_probs(model, pairs, pad_id, device)
    reference_chosen = torch.tensor([p.reference_chosen for p in pairs], device=chosen.device)
    reference_rejected = torch.tensor([p.reference_rejected for p in pairs], device=chosen.device)
    logits = beta * ((chosen - reference_chosen) - (rejected - reference_rejected))
    return -F.logsigmoid(logits).mean()


def batch_loss(model, batch: Sequence, pad_id: int, device, beta: float):
    """One step's loss: SFT (mean cross-entropy over answer tokens, as HF computes it) on
    plain rows, DPO on pairs. With both in a batch the step's loss is the mean of the two
    parts, each already a mean over its own rows: the preference signal and the plain rows
    (often replay, there to keep the base's competence) then pull equally whatever the mix,
    and a step stays on the scale of a pure-SFT or pure-DPO step."""
    pairs = [row for row in batch if isinstance(row, PreferencePair)]
    plain = [row for row in batch if not isinstance(row, PreferencePair)]
    parts = []
    if plain:
        input_ids, labels, attention = collate(plain, pad_id, device)
        parts.append(model(input_ids=input_ids, attention_mask=attention, labels=labels).loss)
    if pairs:
        parts.append(dpo_loss(model, pairs, pad_id, device, beta))
    return parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2


@torch.no_grad()
def answer_scores(
    model, tokenizer, examples: Sequence[Example], *, max_length: int = 256, batch_size: int = 16
) -> list[tuple[float, float]]:
    """(log π(chosen), log π(rejected)) per preference row under `model` (eval mode), summed
    over the answer tokens as DPO sums them. Rows without a rejected answer are skipped."""
    model.eval()
    pairs = [encode_pair(tokenizer, ex, max_length) for ex in examples if ex.rejected is not None]
    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    for at in range(0, len(pairs), batch_size):
        chosen, rejected = pair_log_probs(model, pairs[at : at + batch_size], pad_token_id(tokenizer), device)
        out += zip(chosen.tolist(), rejected.tolist(), strict=True)
    return out


def margins(model, tokenizer, examples: Sequence[Example], **kwargs) -> list[float]:
    """log π(chosen) - log π(rejected) per preference row: what DPO widens."""
    return [chosen - rejected for chosen, rejected in answer_scores(model, tokenizer, examples, **kwargs)]
