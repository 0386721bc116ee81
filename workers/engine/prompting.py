"""How conversations become tokens, in one place for training, evaluation and serving.

A turn is rendered as ``<|role|>\\n{content}<|end|>\\n``; generation starts after
``<|assistant|>\\n`` and stops at ``<|end|>``. The micro and default bases ship
this as their tokenizer's chat template, so PEFT/transformers users outside
MinT render prompts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.engine.examples import Example, Message

END = "<|end|>"
PAD = "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, END, *ROLE_TOKENS.values()]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

IGNORE_INDEX = -100


def render_turn(message: Message) -> str:
    return f"{ROLE_TOKENS[message.role]}\n{message.content}{END}\n"


def render_prompt(messages: Sequence[Message]) -> str:
    """The text a model continues to answer the conversation so far."""
    return "".join(render_turn(m) for m in messages) + f"{ROLE_TOKENS['assistant']}\n"


def encode_for_training(tokenizer, example: Example, max_length: int) -> tuple[list, list]:
    """input_ids and labels for one example; labels are IGNORE_INDEX outside
    assistant answers so the adapter learns what the person wants said, not to
    echo the prompt."""
    input_ids: list[int] = []
    labels: list[int] = []
    for message in example.messages:
        if message.role == "assistant":
            head = tokenizer.encode(f"{ROLE_TOKENS['assistant']}\n", add_special_tokens=False)
            body = tokenizer.encode(f"{message.content}{END}", add_special_tokens=False)
            tail = tokenizer.encode("\n", add_special_tokens=False)
            input_ids += head + body + tail
            labels += [IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(tail)
        else:
            ids = tokenizer.encode(render_turn(message), add_special_tokens=False)
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
    # Keep the end of long examples: the answer is at the end.
    return input_ids[-max_length:], labels[-max_length:]


def messages_from_openai(raw: list[dict]) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in raw]
