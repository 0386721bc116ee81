"""Personal updates from use, turned into the next training set and its update suite.

People change their assistant's state by talking to it: they state facts ("my dog is now
called Rex"), and they correct answers. This module, free of Django like the rest of the
engine, decides what such updates mean for training:

- `parse_fact` reads a stated fact out of plain text. The fact keys the persona world
  knows (dog, city, allergy, …) keep its TRAIN and HELDOUT phrasings, so the update
  suite asks with phrasings the training rows never contain; any other "my X is Y"
  becomes a fact about X with phrasings of its own.
- `resolve` orders updates newest first: the newest value per fact wins, older values of
  the same fact are superseded (returned as conflicts for the operator to see), and
  corrections that state no fact become preference pairs (chosen = the correction,
  rejected = the answer given).
- `next_training_rows` drops every row that teaches an old value (the fact's own
  questions, and any answer that mentions an old value), every row teaching an answer the
  person corrected, and corrections about a fact that changed since, and adds rows
  teaching the new value; `update_items` is the update suite (the new value said, no old value said, on
  held-out phrasings); `gate_items_after` takes out of a gate set the items that still
  expect an old value and stops forbidding the new one where it was another person's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from workers.engine.examples import Example, Message
from workers.engine.persona_world import FACT_KEYS, EvalItem, fact_answer
from workers.engine.suites import UPDATE_SUITE, mentions

# The value of a stated fact: up to the end of its clause, without a trailing "now".
_VALUE = r"(?P<value>[^.,!?;\n]+?)(?:\s+(?:now|these days|anymore))?\s*(?:[.,!?;]|$)"
_NOW = r"(?:now\s+|actually\s+|currently\s+)?"
# What a value must look like: anything after "called"; a proper name (a capital or a
# digit first, as written) where the verb says little ("I support you" names no team,
# "my dog is sick today" no dog); a date with a day number.
ANY, PROPER, DATE = "any", "proper", "date"

# Statements per persona-world fact key, tried in order; the first match wins.
_KNOWN_STATEMENTS: tuple[tuple[str, str, str], ...] = (
    ("dog", rf"\bmy dog is {_NOW}(?:called|named)\s+{_VALUE}", ANY),
    ("dog", rf"\bmy dog's name is {_NOW}{_VALUE}", ANY),
    ("dog", rf"\bmy dog {_NOW}goes by\s+{_VALUE}", ANY),
    ("dog", rf"\bmy dog is {_NOW}{_VALUE}", PROPER),
    ("sister", rf"\bmy sister is {_NOW}(?:called|named)\s+{_VALUE}", ANY),
    ("sister", rf"\bmy sister's name is {_NOW}{_VALUE}", ANY),
    ("sister", rf"\bmy sister is {_NOW}{_VALUE}", PROPER),
    ("city", rf"\bi {_NOW}live in\s+{_VALUE}", PROPER),
    ("city", rf"\bi(?:'ve| have) {_NOW}moved to\s+{_VALUE}", PROPER),
    ("allergy", rf"\bi(?:'m| am) {_NOW}allergic to\s+{_VALUE}", ANY),
    ("partner_birthday", rf"\bmy partner's birthday is {_NOW}(?:on\s+)?{_VALUE}", DATE),
    ("job", rf"\bi {_NOW}work as\s+(?:an?\s+)?{_VALUE}", ANY),
    ("car", rf"\bi {_NOW}drive\s+(?:an?\s+)?{_VALUE}", PROPER),
    ("team", rf"\bi {_NOW}support\s+{_VALUE}", PROPER),
)
_GENERIC_STATEMENT = (
    rf"\bmy (?P<subject>[a-z][a-z' -]{{1,40}}?) is {_NOW}(?P<named>called\s+|named\s+)?{_VALUE}"
)
# A free-text subject whose value may be any words ("my favourite colour is green");
# for any other, the value must be a proper name or start with a digit, so that "my day
# is going well" states no fact.
_OPEN_SUBJECTS = ("favourite ", "favorite ", "preferred ")
# Subjects people write for the persona world's keys, as fields.
SUBJECT_ALIASES = {
    "dog's name": "dog",
    "dog name": "dog",
    "sister's name": "sister",
    "sister name": "sister",
    "home": "city",
    "home city": "city",
    "partner's birthday": "partner_birthday",
    "partner birthday": "partner_birthday",
    "allergies": "allergy",
    "profession": "job",
    "occupation": "job",
    "football team": "team",
    "favourite team": "team",
}
# Names are capitalised in the persona world; allergies and jobs are lower case.
_NAMED_KEYS = ("dog", "sister", "city", "team", "car")

# Phrasings for a fact the persona world does not know: training asks with the first
# set, the update suite with the second, so passing means the fact was learned.
_GENERIC_TRAIN = (
    "What is my {subject}?",
    "What's my {subject}?",
    "Remind me of my {subject}.",
    "Tell me my {subject}.",
    "Do you remember my {subject}?",
)
_GENERIC_HELDOUT = (
    "My {subject}, what was it again?",
    "Can you remind me what my {subject} is?",
    "I forgot my {subject}. What is it?",
)


class UpdateInvalid(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Fact:
    """One stated fact: `key` is a persona-world fact key or `about:<subject>`."""

    key: str
    value: str

    @property
    def known(self) -> bool:
        return self.key in FACT_KEYS

    @property
    def subject(self) -> str:
        return self.key if self.known else self.key.removeprefix("about:")

    def answer(self) -> str:
        if self.known:
            return fact_answer(self.key, self.value)
        return f"Your {self.subject} is {self.value}."

    def questions(self, *, heldout: bool = False) -> tuple[str, ...]:
        if self.known:
            spec = FACT_KEYS[self.key]
            return spec.heldout if heldout else spec.train
        templates = _GENERIC_HELDOUT if heldout else _GENERIC_TRAIN
        return tuple(t.format(subject=self.subject) for t in templates)

    def asks_about(self, question: str) -> bool:
        """Whether a user question is one of this fact's own (any phrasing we know)."""
        asked = question.strip().casefold()
        return any(asked == q.casefold() for q in (*self.questions(), *self.questions(heldout=True)))

    def value_in(self, answer: str) -> str | None:
        """The value an answer to this fact's question states (None if it is not that shape)."""
        template = FACT_KEYS[self.key].answer if self.known else "Your " + self.subject + " is {value}."
        pattern = (
            re.escape(template).replace(r"\{value\}", "(?P<v>.+?)").replace(r"\{a_value\}", "an? (?P<v>.+?)")
        )
        found = re.fullmatch(pattern, answer.strip())
        return found.group("v") if found else None


def _looks(value: str, rule: str) -> bool:
    if rule == PROPER:
        return value[:1].isupper() or value[:1].isdigit()
    if rule == DATE:
        return any(ch.isdigit() for ch in value)
    return True


def _named(key: str, value: str) -> str:
    """A name as the persona world writes it: "rex" is Rex."""
    return value[:1].upper() + value[1:] if key in _NAMED_KEYS else value


def parse_fact(text: str) -> Fact | None:
    """The fact a plain-text statement makes, or None when it states none we can phrase.

    First-person statements ("my dog is now called Rex"), then the assistant's own words
    for a known fact ("Your dog is called Rex.", a correction of its answer), then "my X
    is Y" for other subjects."""
    sentence = " ".join(text.split())
    for key, pattern, rule in _KNOWN_STATEMENTS:
        found = re.search(pattern, sentence, flags=re.IGNORECASE)
        value = found.group("value").strip().strip("\"'").strip() if found else ""
        if value and _looks(value, rule):
            return Fact(key, _named(key, value))
    for key in FACT_KEYS:
        value = Fact(key, "").value_in(sentence)
        if value:
            return Fact(key, value)
    found = re.search(_GENERIC_STATEMENT, sentence, flags=re.IGNORECASE)
    if found:
        subject = found.group("subject").strip().casefold()
        value = found.group("value").strip()
        if found.group("named"):
            return Fact(f"about:{subject}'s name", value)
        if subject.startswith(_OPEN_SUBJECTS) or _looks(value, PROPER):
            return Fact(f"about:{subject}", value)
    return None


def fact_from_fields(subject: str, value: str) -> Fact:
    """A fact given as fields: `subject` a persona-world key (dog, city, …, or a way people
    write one: "dog's name", "home city") or free text."""
    subject, value = " ".join(str(subject).split()).casefold(), " ".join(str(value).split())
    if not subject or not value:
        raise UpdateInvalid("a fact needs a non-empty subject and value")
    if len(subject) > 60 or len(value) > 200:
        raise UpdateInvalid("a fact's subject is at most 60 characters and its value at most 200")
    key = SUBJECT_ALIASES.get(subject, subject.replace(" ", "_"))
    if key in FACT_KEYS:
        return Fact(key, _named(key, value))
    return Fact(f"about:{subject}", value)


@dataclass(frozen=True, slots=True)
class Update:
    """One pending update, as training sees it; `order` sorts oldest to newest."""

    update_id: int
    order: tuple
    fact: Fact | None = None
    # a correction that states no fact: the conversation, what was said, what should have been
    prompt: tuple[Message, ...] = ()
    answer: str = ""
    correction: str = ""


@dataclass(frozen=True, slots=True)
class Conflict:
    key: str
    kept: Fact
    kept_update: int
    superseded: Fact
    superseded_update: int


@dataclass(slots=True)
class Resolution:
    facts: dict[str, Fact] = field(default_factory=dict)  # key -> the newest value
    fact_updates: dict[str, int] = field(default_factory=dict)  # key -> the update that won
    superseded: dict[str, list[str]] = field(default_factory=dict)  # key -> older stated values
    conflicts: list[Conflict] = field(default_factory=list)
    pairs: list[Example] = field(default_factory=list)

    def digest(self) -> str:
        """A stable sha256 of what this resolution teaches (the revision's update digest)."""
        body = {
            "facts": {k: f.value for k, f in sorted(self.facts.items())},
            "superseded": {k: sorted(v) for k, v in sorted(self.superseded.items())},
            "pairs": [[[(m.role, m.content) for m in ex.messages], ex.rejected] for ex in self.pairs],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def resolve(updates: Iterable[Update]) -> Resolution:
    """Newest first: the newest value of each fact wins; older ones become conflicts."""
    resolution = Resolution()
    for update in sorted(updates, key=lambda u: u.order, reverse=True):
        if update.fact is not None:
            key = update.fact.key
            kept = resolution.facts.get(key)
            if kept is None:
                resolution.facts[key] = update.fact
                resolution.fact_updates[key] = update.update_id
            elif kept.value.casefold() != update.fact.value.casefold():
                older = resolution.superseded.setdefault(key, [])
                if update.fact.value.casefold() not in {v.casefold() for v in older}:
                    older.append(update.fact.value)
                resolution.conflicts.append(
                    Conflict(key, kept, resolution.fact_updates[key], update.fact, update.update_id)
                )
        elif update.correction.strip() and update.answer.strip() and update.prompt:
            if update.correction.strip() == update.answer.strip():
                continue
            resolution.pairs.append(
                Example(
                    (*update.prompt, Message("assistant", update.correction.strip())),
                    rejected=update.answer.strip(),
                )
            )
    resolution.pairs.reverse()  # back to oldest first: a stable training order
    return resolution


def old_values(resolution: Resolution, rows: Sequence[Example]) -> dict[str, list[str]]:
    """Per updated fact, every value it had before: stated earlier, or taught by `rows`."""
    found: dict[str, list[str]] = {}
    for key, fact in resolution.facts.items():
        values = list(resolution.superseded.get(key, []))
        for row in rows:
            asked = [m.content for m in row.prompt_messages if m.role == "user"]
            if asked and fact.asks_about(asked[-1]):
                value = fact.value_in(row.final_answer)
                if value:
                    values.append(value)
        found[key] = sorted({v for v in values if v.casefold() != fact.value.casefold()}, key=str.casefold)
    return found


def _last_question(row: Example) -> str:
    asked = [m.content for m in row.prompt_messages if m.role == "user"]
    return asked[-1].strip() if asked else ""


def next_training_rows(rows: Sequence[Example], resolution: Resolution) -> tuple[list[Example], int]:
    """The training set after the updates, and how many of `rows` were dropped.

    A row goes when it asks one of an updated fact's questions, when its answer says one
    of the fact's old values, or when it teaches an answer the person corrected (the same
    question, the rejected answer); each new value is taught on its TRAIN phrasings, and
    the preference pairs follow. Rows are unique (an upload refuses duplicates)."""
    olds = old_values(resolution, rows)
    corrected = {(_last_question(pair), (pair.rejected or "").strip()) for pair in resolution.pairs}
    kept, dropped = [], 0
    for row in rows:
        question = _last_question(row)
        stale = (
            any(fact.asks_about(question) for fact in resolution.facts.values())
            or any(mentions(row.final_answer, old) for values in olds.values() for old in values)
            or (question, row.final_answer.strip()) in corrected
        )
        if stale:
            dropped += 1
        else:
            kept.append(row)
    taught = [
        Example((Message("user", question), Message("assistant", fact.answer())))
        for fact in resolution.facts.values()
        for question in fact.questions()
    ]
    # A correction about a fact that has changed since would teach its old value again.
    pairs = [
        pair
        for pair in resolution.pairs
        if not any(fact.asks_about(_last_question(pair)) for fact in resolution.facts.values())
        and not any(mentions(pair.final_answer, old) for values in olds.values() for old in values)
    ]
    return list(dict.fromkeys([*kept, *taught, *pairs])), dropped


def update_items(resolution: Resolution, olds: dict[str, list[str]], handle: str) -> list[EvalItem]:
    """The update suite: each updated fact asked on HELD-OUT phrasings; an answer passes
    when it says the new value and none of the old ones."""
    items = []
    for key, fact in sorted(resolution.facts.items()):
        slug = re.sub(r"[^a-z0-9]+", "-", fact.subject.casefold()).strip("-")
        for n, question in enumerate(fact.questions(heldout=True), start=1):
            items.append(
                EvalItem(
                    UPDATE_SUITE,
                    f"{handle}.update.{slug}.h{n}",
                    (Message("user", question),),
                    fact.answer(),
                    {"kind": "updated", "value": fact.value, "old": olds.get(key, [])},
                )
            )
    return items


def gate_items_after(
    items: Sequence[EvalItem], resolution: Resolution, olds: dict[str, list[str]]
) -> list[EvalItem]:
    """A gate set after the updates: items that still expect an old value go (the update
    suite asks those questions now), and a new value is no longer forbidden as someone
    else's (another person's dog may share the new name). Earlier update items go too:
    the new update suite replaces them."""
    new_values = {fact.value.casefold() for fact in resolution.facts.values()}
    stale_values = {old.casefold() for values in olds.values() for old in values}
    kept = []
    for item in items:
        check = item.check
        if item.suite == UPDATE_SUITE and any(
            str(check.get("value", "")).casefold() == fact.value.casefold()
            or fact.asks_about(item.messages[-1].content)
            for fact in resolution.facts.values()
        ):
            continue
        if check.get("kind") == "contains" and str(check.get("value", "")).casefold() in stale_values:
            continue
        if check.get("kind") == "forbids":
            allowed = [v for v in check["values"] if v.casefold() not in new_values]
            if len(allowed) != len(check["values"]):
                item = EvalItem(
                    item.suite, item.item_id, item.messages, item.expected, {**check, "values": allowed}
                )
        kept.append(item)
    return kept
