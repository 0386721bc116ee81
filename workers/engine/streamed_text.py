"""One generation's text as its tokens arrive: decoded incrementally, cut at the first stop string.

The one implementation of detokenizing and stop strings for both serving paths (the
batched server, `batch_generate.py`, and the one-at-a-time runtime, `runtime.py`), so a
request's text is the same whichever path served it, streamed or not.

Decoding is incremental, as serving engines do it (vLLM's detokenizer keeps the same two
offsets): each new token decodes a short window, the tokens from `_prefix` on, and the
text it adds is what that window decodes to beyond the window's already-settled part
(`_prefix` to `_read`). The window's first tokens are context, so a tokenizer that drops
the leading space of a sequence's first token, or merges bytes across tokens, is decoded
as it would be in the whole text. Re-decoding the whole answer on every token, as this
replaced, costs time quadratic in the answer's length: a 1,024-token answer decoded
half a million tokens.

Text goes to `on_text` only once it can no longer change: never half a character (a
byte-level token can end inside one, which decodes as U+FFFD until the rest arrives: the
offsets do not move past it) and never a tail that could be the start of a stop string
(held in `_pending` until it either completes the stop or cannot). The pieces always add
up to `finish()`'s text. Decoding skips special tokens and does not "clean up" spaces
before punctuation: a model's text is given as it wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a byte sequence cut inside a character decodes to


class StreamedText:
    def __init__(self, tokenizer, stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.on_text = on_text
        self.stopped = False
        self.tokens: list[int] = []
        self._prefix = 0  # the decode window starts here: context, already settled
        self._read = 0  # tokens before this are settled text
        self._pending = ""  # decoded, not sent: it may yet begin a stop string
        self._sent: list[str] = []  # pieces sent (or kept, without on_text), in order

    def add(self, token: int) -> bool:
        """Take one more token; True once a stop string has appeared (the text ends before it)."""
        self.tokens.append(token)
        if self.stopped:
            return True
        window = self._decode(self._prefix, len(self.tokens))
        if window.endswith(REPLACEMENT):
            return False  # a character cut short: wait for its remaining bytes
        self._take(self._beyond_settled(window), final=False)
        return self.stopped

    def feed(self, tokens: Sequence[int]) -> bool:
        """Take the tokens generated so far (those not seen yet are added); True once stopped."""
        for token in tokens[len(self.tokens) :]:
            if self.add(token):
                break
        return self.stopped

    def finish(self, tokens: Sequence[int] | None = None) -> str:
        """The final text; sends what was held back (a character left unfinished included)."""
        if tokens is not None:
            self.feed(tokens)
        if not self.stopped:
            self._take(self._beyond_settled(self._decode(self._prefix, len(self.tokens))), final=True)
        return self.text

    @property
    def text(self) -> str:
        """The text sent so far (all of it once finished)."""
        return "".join(self._sent)

    def _beyond_settled(self, window: str) -> str:
        """What `window` (the tokens from `_prefix` on, decoded) adds to the settled text;
        the offsets then move: every token so far is settled."""
        settled = self._decode(self._prefix, self._read)
        self._prefix, self._read = self._read, len(self.tokens)
        return window[len(settled) :]

    def _take(self, new: str, *, final: bool) -> None:
        text = self._pending + new
        found = [text.index(s) for s in self.stop if s in text]
        if found:
            self.stopped = True
            self._pending = ""
            self._send(text[: min(found)])
            return
        held = 0 if final else self._could_start_a_stop(text)
        self._pending = text[len(text) - held :] if held else ""
        self._send(text[: len(text) - held])

    def _could_start_a_stop(self, text: str) -> int:
        """The longest tail of `text` that is the beginning of a stop string."""
        return max(
            (size for s in self.stop for size in range(1, len(s)) if text.endswith(s[:size])), default=0
        )

    def _send(self, piece: str) -> None:
        if piece:
            self._sent.append(piece)
            if self.on_text is not None:
                self.on_text(piece)

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        return self.tokenizer.decode(
            self.tokens[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
