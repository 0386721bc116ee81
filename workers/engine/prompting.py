"""How conversations become tokens, in one place for training, evaluation and serving.

The chat format is a property of the base's tokenizer: a prompt is its chat template
rendered with a generation prompt (`render_prompt`), training labels cover what the
assistant says plus the token that ends its turn (`encode_for_training`), and generation
stops at the tokenizer's and the generation config's EOS ids and at that end-of-turn
token (`stop_token_ids`). So ChatML (``<|im_start|>…<|im_end|>``, SmolLM2), Gemma's
``<start_of_turn>…<end_of_turn>`` and our own format are all handled by one code path,
with the turn boundaries derived from the template itself (see `_turn_spans`).

Our own format renders a turn as ``<|role|>\\n{content}<|end|>\\n``; generation starts
after ``<|assistant|>\\n`` and stops at ``<|end|>``. The micro and default bases ship it
as their tokenizer's chat template (`CHAT_TEMPLATE`), and `render_prompt` without a
tokenizer renders it too (for callers that know they talk to one of our bases).

A base whose tokenizer has no chat template (a plain pretrained model) is prompted with
`FALLBACK_CHAT_TEMPLATE`: ``User: …`` / ``Assistant: …`` turns separated by blank lines,
each assistant turn closed by the tokenizer's EOS token, so a trained adapter learns to
stop where generation stops.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

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

# For a base with no chat template of its own (documented in the module's docstring).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

IGNORE_INDEX = -100

# What a worker is asked to continue: a rendered/raw prompt, or a conversation it renders.
Prompt = str | Sequence[Message]


class ChatTemplateError(ValueError):
    """The base's chat template cannot render this conversation the way training needs."""


def render_turn(message: Message) -> str:
    return f"{ROLE_TOKENS[message.role]}\n{message.content}{END}\n"


def render_prompt(messages: Sequence[Message], tokenizer=None) -> str:
    """The text a model continues to answer the conversation so far: the base's chat
    template with its generation prompt; our own format when no tokenizer is given."""
    if tokenizer is None:
        return "".join(render_turn(m) for m in messages) + f"{ROLE_TOKENS['assistant']}\n"
    return _render(tokenizer, messages, add_generation_prompt=True)


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """A raw prompt as it is; a conversation rendered with this tokenizer's chat format."""
    return prompt if isinstance(prompt, str) else render_prompt(prompt, tokenizer)


def chat_template(tokenizer) -> str:
    """The tokenizer's own chat template, or FALLBACK_CHAT_TEMPLATE when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is for chat
        template = template.get("default")
    return template or FALLBACK_CHAT_TEMPLATE


def _render(tokenizer, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    try:
        return tokenizer.apply_chat_template(
            conversation,
            chat_template=chat_template(tokenizer),
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except Exception as exc:  # a template may raise on a conversation it does not allow
        raise ChatTemplateError(f"the base's chat template cannot render this conversation: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Span:
    """One assistant turn in the rendered conversation: [start, end) is what the model
    must produce (the content, and anything the template puts before it after the
    generation prompt); `end_of_turn` is the special token that follows, if any."""

    start: int
    end: int
    end_of_turn: str | None


def _turn_spans(tokenizer, messages: Sequence[Message]) -> tuple[str, list[_Span]]:
    """The whole conversation rendered, and where each assistant turn's answer lies in it.

    Derived from the template by rendering prefixes: the conversation up to an assistant
    turn with the generation prompt ends where the answer starts, and the conversation up
    to and including that turn holds the answer and what closes it. Templates whose turns
    are not prefixes of the whole (rare: some rewrite earlier turns) are refused."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[_Span] = []
    done = 0
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        head = _generation_prefix(tokenizer, messages[:i])
        turn = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(turn) and turn.startswith(head)) or len(head) < done:
            raise ChatTemplateError(
                "the base's chat template does not render a conversation turn by turn "
                "(an earlier turn renders differently once later ones follow); cannot mask training labels"
            )
        body = turn[len(head) :]
        content = message.content if message.content in body else message.content.strip()
        at = body.find(content)
        if at < 0:
            raise ChatTemplateError("the base's chat template changes the assistant's text; cannot find it")
        end = len(head) + at + len(content)
        end_of_turn = _leading_special(tokenizer, full[end : len(turn)])
        # An opening answer has no generation prompt to start from: its content only.
        spans.append(_Span(len(head) if i else len(head) + at, end, end_of_turn))
        done = end + len(end_of_turn or "")
    return full, spans


def _generation_prefix(tokenizer, messages: Sequence[Message]) -> str:
    """The text before an answer to `messages`; "" before an opening answer (templates
    cannot always render an empty conversation, and some add turns to a non-empty one)."""
    return _render(tokenizer, messages, add_generation_prompt=True) if messages else ""


def _leading_special(tokenizer, text: str) -> str | None:
    """The special token `text` starts with, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False) if text else []
    if not ids:
        return None
    token = tokenizer.convert_ids_to_tokens(ids[0])
    return token if token in _special_tokens(tokenizer) and text.startswith(token) else None


# Gemma's tokenizer has thousands of added tokens: collecting them costs milliseconds, so
# it is done once per tokenizer (a loaded base's tokens do not change).
_specials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_tokens(tokenizer) -> frozenset[str]:
    with contextlib.suppress(KeyError, TypeError):  # not seen yet, or not weakly referenceable
        return _specials[tokenizer]
    specials = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials.update(str(t) for t in decoder.values() if getattr(t, "special", False))
    found = frozenset(s for s in specials if s)
    with contextlib.suppress(TypeError):
        _specials[tokenizer] = found
    return found


def encode_for_training(tokenizer, example: Example, max_length: int) -> tuple[list, list]:
    """input_ids and labels for one example, rendered with the base's chat template;
    labels are IGNORE_INDEX outside assistant answers so the adapter learns what the person
    wants said, not to echo the prompt. Each answer is labelled with the token that ends
    its turn, so the adapter learns to stop; a template with no such token gets the EOS
    token after the answer instead.

    The text is tokenized in pieces cut where an answer starts and ends: the prompt part
    is tokenized exactly as `render_prompt` is at inference, so training sees the tokens
    generation will continue from."""
    full, spans = _turn_spans(tokenizer, example.messages)
    input_ids: list[int] = []
    labels: list[int] = []

    def add(text: str, learn: bool) -> None:
        ids = tokenizer.encode(text, add_special_tokens=False) if text else []
        input_ids.extend(ids)
        labels.extend(ids if learn else [IGNORE_INDEX] * len(ids))

    done = 0
    for span in spans:
        add(full[done : span.start], False)
        add(full[span.start : span.end] + (span.end_of_turn or ""), True)
        if span.end_of_turn is None and tokenizer.eos_token_id is not None:
            input_ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
        done = span.end + len(span.end_of_turn or "")
    add(full[done:], False)
    # Keep the end of long examples: the answer is at the end.
    return input_ids[-max_length:], labels[-max_length:]


_PROBE = (Message("user", "Hi"), Message("assistant", "Hello"))


def end_of_turn_id(tokenizer) -> int | None:
    """The token that closes an assistant turn in the base's chat template (ChatML's
    <|im_end|>, Gemma's <end_of_turn>, our <|end|>), found by rendering a probe turn."""
    try:
        _, spans = _turn_spans(tokenizer, _PROBE)
    except ChatTemplateError:
        return None
    token = spans[0].end_of_turn if spans else None
    if token is None:
        return None
    ids = tokenizer.convert_tokens_to_ids([token])
    return int(ids[0]) if ids and ids[0] is not None else None


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS, the model's generation
    config's EOS ids (Gemma 3 lists <eos> and <end_of_turn>) and the chat template's
    end-of-turn token."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(t) for t in configured)
    turn_end = end_of_turn_id(tokenizer)
    if turn_end is not None:
        ids.add(turn_end)
    return ids


def messages_from_openai(raw: list[dict]) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in raw]
