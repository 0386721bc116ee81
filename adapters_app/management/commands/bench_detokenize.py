"""`manage.py bench_detokenize`: what turning a row's tokens into text costs the decode loop.

Before, the batched generator re-decoded a row's whole answer after every token (and then
searched the whole text for stop strings): the n-th token cost a decode of n tokens, so
an answer of N tokens cost about N²/2 token decodes, on the decode thread, for every row
of the batch. `StreamedText` (workers/engine/streamed_text.py) decodes a short window per
token. Both are timed here side by side on the tokenizers of the registered bases, on
real text cut to answers of several lengths, in rounds that alternate which goes first;
the table gives the median of the rounds, per answer and per token, and their ratio.
"""

from __future__ import annotations

import statistics
import time

from django.core.management.base import BaseCommand, CommandError

from adapters_app.models import BaseModel
from workers.engine.streamed_text import StreamedText

TEXT = (
    "Rex is a small brown dog who lives with Alice in a flat above the bakery on Mill Street. "
    "Every morning they walk along the river, past the old stone bridge, and Rex waits by the "
    "door of the café while Alice buys bread; on Sundays they take the train to the coast. "
)
STOPS = ("\n\nUser:", "</answer>")  # searched for, never found: the common case


def whole_redecode(tokenizer, tokens) -> str:
    """The old way: the whole answer decoded again after each token, stops searched in it all."""
    text = ""
    for n in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
        for stop in STOPS:
            if stop in text:
                return text[: text.index(stop)]
    return text


def incremental(tokenizer, tokens) -> str:
    streamed = StreamedText(tokenizer, STOPS)
    for token in tokens:
        if streamed.add(token):
            break
    return streamed.finish()


class Command(BaseCommand):
    help = "Time re-decoding each answer per token against incremental decoding, side by side."

    def add_arguments(self, parser):
        parser.add_argument(
            "--bases", nargs="*", help="registered base names (default: every registered base)"
        )
        parser.add_argument("--lengths", nargs="*", type=int, default=[64, 256, 1024])
        parser.add_argument("--rounds", type=int, default=5)

    def handle(self, *args, bases, lengths, rounds, **options):
        from transformers import AutoTokenizer

        rows = BaseModel.objects.order_by("name")
        if bases:
            rows = rows.filter(name__in=bases)
            missing = sorted(set(bases) - set(rows.values_list("name", flat=True)))
            if missing:
                raise CommandError(f"not registered: {', '.join(missing)}")
        if not rows:
            raise CommandError("no registered base: run make bases or make real-bases first")
        if rounds < 1 or not lengths or min(lengths) < 1:
            raise CommandError("--rounds and every --lengths must be at least 1")
        table = []
        for base in rows:
            tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
            stream = tokenizer.encode(TEXT * 60, add_special_tokens=False)
            for length in lengths:
                tokens = stream[:length]
                if len(tokens) < length:
                    raise CommandError(f"the sample text is only {len(tokens)} tokens on {base.name}")
                # Both ways give the same text: what is timed is the same work done two ways.
                if whole_redecode(tokenizer, tokens) != incremental(tokenizer, tokens):
                    raise CommandError(f"the two ways disagree on {base.name} at {length} tokens")
                old, new = [], []
                for round_ in range(rounds):
                    pair = [(old, whole_redecode), (new, incremental)]
                    for times, way in pair if round_ % 2 == 0 else reversed(pair):
                        started = time.perf_counter()
                        way(tokenizer, tokens)
                        times.append(time.perf_counter() - started)
                old_s, new_s = statistics.median(old), statistics.median(new)
                table.append((base.name, len(tokenizer), length, old_s, new_s))
        self.stdout.write(
            f"{'base':<16} {'vocab':>7} {'answer':>7} {'re-decode whole':>16} {'incremental':>12} "
            f"{'per token':>19} {'ratio':>7}\n"
        )
        for name, vocab, length, old_s, new_s in table:
            self.stdout.write(
                f"{name:<16} {vocab:>7} {length:>7} {old_s * 1000:>13.1f} ms {new_s * 1000:>9.1f} ms "
                f"{old_s / length * 1e6:>7.0f} / {new_s / length * 1e6:>4.0f} µs {old_s / new_s:>6.1f}x\n"
            )
        self.stdout.write(
            f"(median of {rounds} rounds, alternating which goes first; one row's answer, on the "
            "thread that decodes the whole batch: multiply by the rows of a batch)\n"
        )
