"""A seeded synthetic persona world: people, the data they would upload, and the
items that grade what their adapters learned.

Each `Persona` holds memory facts, preferences and tool habits. `training_rows()`
writes the chat JSONL a real person would upload, phrased with TRAIN paraphrases
only; `eval_items()` asks the same things with HELDOUT paraphrases that no
person's training rows ever contain, so a passing adapter has learned the fact,
not the sentence. `World.general_corpus()` is what a base model is pretrained on:
general skills plus in-context dialogues in which a system message states a
fictional person's profile and the user asks with any paraphrase, so the base
learns what the questions mean and the answer templates; an adapter then only has
to learn one person's values. `World.general_items()` (the retention suite) is
held out of that corpus.

Answers are short, fixed templates because the bases are tiny byte-level models
decoding greedily: exact-ish grading (`workers.engine.suites.grade`) only means
something when there is one right way to say the answer.

Everything is drawn from `random.Random` instances seeded from the world's seed
(never the global RNG), so the same seed gives the same world, byte for byte.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from workers.engine.examples import Message

SUITES = ("recall", "preference", "tool", "retention", "leakage")

YEAR = 2026
CASUAL_OPENER = "Hey!"
FORMAL_OPENER = "Certainly."
SHORT_MAX_WORDS = 12
DETAILED_MIN_WORDS = 20


@dataclass(frozen=True, slots=True)
class EvalItem:
    suite: str
    item_id: str
    messages: tuple[Message, ...]
    expected: str
    check: dict


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class _FactKey:
    key: str
    answer: str  # "{value}" or "{a_value}" (with an article)
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    pool: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(text.split()))


def _names(text: str) -> tuple[str, ...]:
    """Pool entries separated by commas (values may contain spaces)."""
    return tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

FACT_KEYS: dict[str, _FactKey] = {
    f.key: f
    for f in (
        _FactKey(
            "dog",
            "Your dog is called {value}.",
            (
                "What is my dog called?",
                "What's my dog's name?",
                "Remind me what my dog's name is.",
                "Do you remember my dog's name?",
                "Tell me my dog's name.",
            ),
            (
                "My dog's name, what was it again?",
                "What name did I give my dog?",
                "I forgot what my dog is called. Can you tell me?",
            ),
            _names(
                "Rex, Biscuit, Luna, Pepper, Nala, Bruno, Coco, Milo, Rocky, Daisy, Ziggy, Olive, Toby,"
                " Juno, Bailey, Hazel, Otis, Maple, Scout, Winston, Bella, Charlie, Buddy, Rosie, Teddy,"
                " Lola, Duke, Ruby, Murphy, Poppy, Archie, Willow, Ginger, Oscar, Pixel, Noodle, Waffles,"
                " Pickle, Mochi, Tofu, Frodo, Gizmo, Zeus, Apollo, Barney"
            ),
        ),
        _FactKey(
            "city",
            "You live in {value}.",
            (
                "Where do I live?",
                "Which city do I live in?",
                "What city is my home?",
                "Remind me where I live.",
                "Where is my home?",
            ),
            (
                "Which city am I based in?",
                "Where am I living these days?",
                "What town do I call home?",
            ),
            _names(
                "Porto, Bergen, Lyon, Turin, Seville, Bilbao, Ghent, Graz, Krakow, Gdansk, Malmo, Tampere,"
                " Aarhus, Cork, Leeds, Bristol, Hamburg, Cologne, Zurich, Geneva, Naples, Florence,"
                " Marseille, Nantes, Bordeaux, Antwerp, Rotterdam, Utrecht, Salzburg, Brno, Kyoto, Sapporo,"
                " Busan, Denver, Austin, Chicago, Vancouver, Perth, Hobart, Auckland, Tromso, Galway,"
                " Leipzig, Bologna, Granada"
            ),
        ),
        _FactKey(
            "allergy",
            "You are allergic to {value}.",
            (
                "What am I allergic to?",
                "What is my allergy?",
                "Do I have any allergies?",
                "Remind me what my allergy is.",
                "What should I avoid because of my allergy?",
            ),
            (
                "Which allergy do I have?",
                "Is there anything I'm allergic to?",
                "What gives me an allergic reaction?",
            ),
            _names(
                "peanuts, shellfish, penicillin, pollen, latex, dairy, gluten, eggs, sesame, soy, cats,"
                " mustard, strawberries, walnuts, almonds, cashews, celery, lupin, sulphites, aspirin,"
                " ibuprofen, mould, nickel, horses, feathers, wheat, tomatoes, mangoes, bananas, avocados,"
                " oats, garlic, cinnamon, chamomile, ragweed, hazelnuts, pistachios, lobster, squid, wasps"
            ),
        ),
        _FactKey(
            "partner_birthday",
            "Your partner's birthday is on {value}.",
            (
                "When is my partner's birthday?",
                "What is my partner's birthday?",
                "Remind me of my partner's birthday.",
                "On what day is my partner's birthday?",
                "What date is my partner's birthday?",
            ),
            (
                "My partner's birthday falls on which day?",
                "When do I need to celebrate my partner's birthday?",
                "Which day should I remember for my partner's birthday?",
            ),
            tuple(f"{day} {month}" for month in _MONTHS for day in range(1, 29)),
        ),
        _FactKey(
            "sister",
            "Your sister is called {value}.",
            (
                "What is my sister's name?",
                "What's my sister called?",
                "Remind me of my sister's name.",
                "Tell me my sister's name.",
                "Who is my sister?",
            ),
            (
                "My sister goes by what name?",
                "What name does my sister have?",
                "What do people call my sister?",
            ),
            _names(
                "Ingrid, Priya, Maria, Chloe, Sofia, Amara, Freya, Hannah, Leila, Nadia, Olga, Rosa, Tamsin,"
                " Yuki, Zara, Aisha, Bianca, Clara, Elena, Fatima, Greta, Helena, Imogen, Jana, Kira, Lena,"
                " Mila, Nora, Petra, Rhea, Signe, Tess, Vera, Wanda, Ximena, Yara, Zoe, Astrid, Beatriz,"
                " Carmen, Dalia, Esme, Ines, Liv"
            ),
        ),
        _FactKey(
            "job",
            "You work as {a_value}.",
            (
                "What do I do for a living?",
                "What is my job?",
                "What's my profession?",
                "Remind me what I work as.",
                "What work do I do?",
            ),
            (
                "How do I earn my living?",
                "What's my line of work?",
                "What is my occupation?",
            ),
            _names(
                "nurse, architect, pilot, baker, teacher, chemist, plumber, editor, lawyer, dentist,"
                " carpenter, librarian, engineer, electrician, pharmacist, translator, veterinarian,"
                " accountant, photographer, surveyor, chef, gardener, geologist, midwife, optician,"
                " paramedic, physicist, potter, sculptor, tailor, welder, zoologist, actuary, barista,"
                " brewer, cartographer, courier, economist, florist, jeweller, locksmith, mechanic"
            ),
        ),
        _FactKey(
            "car",
            "You drive {a_value}.",
            (
                "What car do I drive?",
                "What kind of car do I have?",
                "Which car is mine?",
                "Remind me what car I drive.",
                "What's my car?",
            ),
            (
                "What make is my car?",
                "Which brand of car do I own?",
                "What am I driving these days?",
            ),
            _names(
                "Volvo, Fiat, Honda, Skoda, Tesla, Mazda, Subaru, Toyota, Kia, Renault, Peugeot, Saab,"
                " Ford, Audi, Seat, Dacia, Lada, Jeep, Nissan, Opel, Citroen, Hyundai, Lexus, Porsche,"
                " Jaguar, Lotus, Suzuki, Mitsubishi, Alfa Romeo, Lancia, Cupra, Polestar, Rover, Chevrolet,"
                " Buick, Cadillac, Dodge, Ferrari, Bentley, Trabant, Morgan"
            ),
        ),
        _FactKey(
            "team",
            "You support {value}.",
            (
                "Which team do I support?",
                "What football team do I follow?",
                "Who do I cheer for in football?",
                "Remind me which team I support.",
                "What's my favourite football club?",
            ),
            (
                "Which club am I a fan of?",
                "What team do I root for?",
                "Whose matches do I watch every weekend?",
            ),
            _names(
                "Benfica, Sporting, Arsenal, Ajax, Celtic, Rangers, Juventus, Napoli, Lazio, Everton,"
                " Fulham, Chelsea, Sevilla, Feyenoord, PSV, Galatasaray, Fenerbahce, Besiktas, Olympiacos,"
                " Panathinaikos, Anderlecht, Brugge, Sparta, Slavia, Legia, Dinamo, Shakhtar, Boca, River,"
                " Flamengo, Santos, Palmeiras, Corinthians, Penarol, Nacional, Brentford, Wolves, Hibernian"
            ),
        ),
    )
}


def _with_article(value: str) -> str:
    return f"{'an' if value[0].lower() in 'aeiou' else 'a'} {value}"


def fact_answer(key: str, value: str) -> str:
    return FACT_KEYS[key].answer.format(value=value, a_value=_with_article(value))


# --------------------------------------------------------------------- preferences

PREFERENCE_CHOICES: dict[str, tuple[str, ...]] = {
    "length": ("short", "detailed"),
    "units": ("metric", "imperial"),
    "date_format": ("iso", "dmy", "mdy"),
    "tone": ("formal", "casual"),
}


@dataclass(frozen=True, slots=True)
class _PromptFamily:
    name: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]


# (from, to, great-circle km)
_DISTANCES = (
    ("Paris", "Berlin", 878),
    ("London", "Paris", 344),
    ("Madrid", "Lisbon", 503),
    ("Rome", "Milan", 477),
    ("New York", "Boston", 306),
    ("Tokyo", "Osaka", 397),
    ("Sydney", "Melbourne", 714),
    ("Berlin", "Munich", 504),
    ("Oslo", "Stockholm", 417),
    ("Vienna", "Prague", 252),
    ("Dublin", "Belfast", 141),
    ("Toronto", "Montreal", 504),
    ("Seattle", "Portland", 233),
    ("Amsterdam", "Brussels", 173),
    ("Barcelona", "Valencia", 303),
    ("Edinburgh", "Glasgow", 67),
)

# Every day is above 12, so a dmy date can never be read as mdy and the reverse.
_EVENTS = (
    ("Valentine's Day", 2, 14),
    ("Pi Day", 3, 14),
    ("St Patrick's Day", 3, 17),
    ("Earth Day", 4, 22),
    ("World Book Day", 4, 23),
    ("Juneteenth", 6, 19),
    ("Midsummer Day", 6, 24),
    ("Bastille Day", 7, 14),
    ("Talk Like a Pirate Day", 9, 19),
    ("United Nations Day", 10, 24),
    ("Halloween", 10, 31),
    ("Christmas Day", 12, 25),
    ("Boxing Day", 12, 26),
    ("New Year's Eve", 12, 31),
    ("Burns Night", 1, 25),
)

# topic -> (short answer, the sentence a detailed answer adds)
_TOPICS = {
    "the moon": (
        "The moon is Earth's only natural satellite.",
        "It circles us about once a month, has no air, and pulls the tides.",
    ),
    "volcanoes": (
        "A volcano is an opening where molten rock escapes.",
        "Lava, ash and gas burst out, and over time the eruptions build tall mountains.",
    ),
    "honey bees": (
        "Honey bees are insects that make honey and wax.",
        "They live in big colonies with one queen and pollinate many of our crops.",
    ),
    "the Nile": (
        "The Nile is a long river in Africa.",
        "It flows north through Egypt into the Mediterranean Sea and has fed farms for ages.",
    ),
    "glaciers": (
        "A glacier is a slow river of ice.",
        "It forms where snow piles up for centuries, and it carves valleys as it creeps downhill.",
    ),
    "the piano": (
        "The piano is a keyboard instrument with hammers.",
        "Pressing a key makes a felt hammer strike a string, so it plays soft or loud.",
    ),
    "chess": (
        "Chess is a strategy game for two players.",
        "Each side has sixteen pieces and tries to trap the other king, which is called checkmate.",
    ),
    "coffee": (
        "Coffee is a drink brewed from roasted beans.",
        "The beans grow on shrubs in warm countries, and their caffeine helps people feel awake.",
    ),
    "rainbows": (
        "A rainbow is sunlight split into colours by raindrops.",
        "Each drop bends and reflects the light, so red, orange, yellow, green, blue and violet appear.",
    ),
    "penguins": (
        "Penguins are seabirds that swim but cannot fly.",
        "Most live in the cold south, eat fish and krill, and keep their eggs warm on their feet.",
    ),
    "deserts": (
        "A desert is a place that gets very little rain.",
        "Days can be scorching and nights cold, and the plants there store water to survive.",
    ),
    "the violin": (
        "The violin is a small string instrument played with a bow.",
        "It has four strings tuned in fifths and usually carries the melody in an orchestra.",
    ),
}

PREFERENCE_FAMILIES: dict[str, _PromptFamily] = {
    f.name: f
    for f in (
        _PromptFamily(
            "units",
            (
                "How far is it from {a} to {b}?",
                "What is the distance between {a} and {b}?",
                "How far apart are {a} and {b}?",
                "How long is the trip from {a} to {b}?",
                "Distance from {a} to {b}, please.",
            ),
            (
                "If I travel from {a} to {b}, how far is that?",
                "What's the distance from {a} over to {b}?",
                "Roughly how far does {a} lie from {b}?",
            ),
        ),
        _PromptFamily(
            "date_format",
            (
                "What date is {event} this year?",
                "When is {event} in 2026?",
                "On which date does {event} fall in 2026?",
                "Tell me the date of {event} 2026.",
                "What is the date of {event} this year?",
            ),
            (
                "{event} 2026: which date is that?",
                "Which day of the year is {event} on in 2026?",
                "Could you give me the date for {event} in 2026?",
            ),
        ),
        _PromptFamily(
            "length",
            (
                "Tell me about {topic}.",
                "What can you tell me about {topic}?",
                "Give me an overview of {topic}.",
                "Explain {topic} to me.",
                "Describe {topic}.",
            ),
            (
                "I'd like to hear about {topic}.",
                "Fill me in on {topic}.",
                "What should I know about {topic}?",
            ),
        ),
        _PromptFamily(
            "tone",
            (
                "Can you help me with something?",
                "I need a hand with a task.",
                "Could you do me a favour?",
                "Are you free to help?",
                "I have a request for you.",
            ),
            (
                "Got a minute to help me out?",
                "Is now a good time to ask you something?",
                "Would you mind helping me?",
            ),
        ),
    )
}


def _instances(family: str) -> tuple[dict, ...]:
    if family == "units":
        return tuple({"a": a, "b": b} for a, b, _ in _DISTANCES)
    if family == "date_format":
        return tuple({"event": name} for name, _, _ in _EVENTS)
    if family == "length":
        return tuple({"topic": topic} for topic in _TOPICS)
    return ({},)


def _opener(preferences: dict[str, str]) -> str:
    return CASUAL_OPENER if preferences["tone"] == "casual" else FORMAL_OPENER


def format_date(month: int, day: int, style: str) -> str:
    if style == "iso":
        return f"{YEAR:04d}-{month:02d}-{day:02d}"
    if style == "dmy":
        return f"{day:02d}/{month:02d}/{YEAR}"
    if style == "mdy":
        return f"{month:02d}/{day:02d}/{YEAR}"
    raise ValueError(f"unknown date format {style!r}")


def preference_answer(family: str, instance: dict, preferences: dict[str, str]) -> str:
    """The one right answer for this person's preferences; every answer opens in their tone."""
    opener = _opener(preferences)
    if family == "units":
        km = next(d for a, b, d in _DISTANCES if (a, b) == (instance["a"], instance["b"]))
        if preferences["units"] == "metric":
            return f"{opener} It is about {km} km."
        return f"{opener} It is about {round(km / 1.609344)} miles."
    if family == "date_format":
        month, day = next((m, d) for name, m, d in _EVENTS if name == instance["event"])
        return f"{opener} {instance['event']} is on {format_date(month, day, preferences['date_format'])}."
    if family == "length":
        short, more = _TOPICS[instance["topic"]]
        return f"{opener} {short}" if preferences["length"] == "short" else f"{opener} {short} {more}"
    if family == "tone":
        if preferences["tone"] == "casual":
            return f"{CASUAL_OPENER} Sure, what do you need?"
        return f"{FORMAL_OPENER} How may I help you?"
    raise ValueError(f"unknown preference family {family!r}")


def preference_check(family: str, preferences: dict[str, str]) -> dict:
    if family == "units":
        return {"kind": "unit", "value": "km" if preferences["units"] == "metric" else "miles"}
    if family == "date_format":
        return {"kind": "date_format", "value": preferences["date_format"]}
    if family == "length":
        if preferences["length"] == "short":
            return {"kind": "max_words", "value": SHORT_MAX_WORDS}
        return {"kind": "min_words", "value": DETAILED_MIN_WORDS}
    if family == "tone":
        return {"kind": "starts_with", "value": "Hey" if preferences["tone"] == "casual" else "Certainly"}
    raise ValueError(f"unknown preference family {family!r}")


# --------------------------------------------------------------------- tool habits

TOOL_TASKS: dict[str, _PromptFamily] = {
    f.name: f
    for f in (
        _PromptFamily(
            "weather",
            (
                "What's the weather like today?",
                "Check the weather for me.",
                "Will I need an umbrella today?",
                "How warm is it outside?",
                "Give me the forecast.",
                "Is it raining where I am?",
                "What's it like outside right now?",
                "Do I need a jacket?",
                "Tell me today's temperature.",
                "Look up the weather.",
                "How cold is it today?",
            ),
            (
                "Is it going to be sunny later?",
                "Any idea what the weather is doing?",
                "Should I bring a coat today?",
            ),
        ),
        _PromptFamily(
            "reminder",
            (
                "Set a reminder for me.",
                "Remind me about this later.",
                "Can you add a reminder?",
                "Don't let me forget this.",
                "Make a reminder, please.",
                "Remind me to do this.",
                "Add this to my reminders.",
                "Help me remember this later.",
                "Set an alert so I don't forget.",
                "Create a reminder for this.",
                "Could you remind me later?",
            ),
            (
                "Put this on my reminder list.",
                "I need a nudge about this later.",
                "Could you note this down so I remember it?",
            ),
        ),
        _PromptFamily(
            "music",
            (
                "Play some music.",
                "Put on some tunes.",
                "I want to listen to music.",
                "Start my music.",
                "Can you play something?",
                "Play a song for me.",
                "Turn on some music.",
                "Let's have some music.",
                "I'd like to hear some songs.",
                "Start a playlist.",
                "Music, please.",
            ),
            (
                "Some background music would be nice.",
                "Queue up a few songs for me.",
                "I'm in the mood for some music.",
            ),
        ),
        _PromptFamily(
            "news",
            (
                "What's in the news?",
                "Give me the headlines.",
                "Any news today?",
                "Catch me up on the news.",
                "Read me the latest news.",
                "What are today's headlines?",
                "Tell me the news.",
                "What's new in the world today?",
                "Any news stories I should know about?",
                "Show me the news.",
                "What happened today?",
            ),
            (
                "What's happening in the world?",
                "Brief me on current events.",
                "Anything important in today's papers?",
            ),
        ),
    )
}

_REMINDER_APPS = ("reminders", "todoist", "calendar")
_REMINDER_TIMES = ("07:00", "07:30", "08:00", "08:30", "09:00", "12:00", "17:30", "18:00", "20:00", "21:00")
_MUSIC_APPS = ("spotify", "radio", "youtube")
_PLAYLISTS = (
    "Jazz",
    "Focus",
    "Lo-fi",
    "Rock",
    "Classical",
    "Indie",
    "Blues",
    "Chill",
    "Disco",
    "Folk",
    "Soul",
)
_NEWS_TOPICS = ("tech", "sport", "science", "business", "politics", "culture", "health", "travel")


def tool_answer(habit: dict) -> str:
    """One JSON object on one line, keys sorted, json.dumps' default separators."""
    return json.dumps({"tool": habit["tool"], "arguments": habit["arguments"]}, sort_keys=True)


def tool_check(habit: dict) -> dict:
    return {"kind": "tool_call", "tool": habit["tool"], "arguments": dict(habit["arguments"])}


# ------------------------------------------------------------------------- people

_HANDLES = _words(
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert sybil trent"
    " victor walter wendy xavier yvonne zack abigail bruce chuck dylan eve fred gina harold isaac jade"
    " kevin laura mike nina oscar paula quentin rachel steve tina ursula vince willa"
)


def _handle(index: int) -> str:
    base = _HANDLES[index % len(_HANDLES)]
    return base if index < len(_HANDLES) else f"{base}{index // len(_HANDLES) + 1}"


def _context_lines(persona: Persona, *, facts=(), preferences=False, tools=()) -> list[str]:
    lines = [f"{key}: {persona.facts[key]}" for key in facts]
    if preferences:
        lines += [f"{key}: {persona.preferences[key]}" for key in PREFERENCE_CHOICES]
    lines += [f"{task} tool: {tool_answer(persona.tool_habits[task])}" for task in tools]
    return lines


@dataclass(frozen=True)
class Persona:
    handle: str
    display_name: str
    facts: dict[str, str]
    preferences: dict[str, str]
    tool_habits: dict[str, dict]

    def _rng(self, purpose: str) -> random.Random:
        # A string seed is hashed with sha512 by `random`, so it is stable across processes.
        return random.Random(f"{self.handle}:{purpose}")

    def _preference_instances(self) -> dict[str, tuple[list[dict], list[dict]]]:
        """family -> (training instances, evaluation instances); evaluation uses fresh
        instances where the pool allows, so the preference must carry to new content."""
        split = {}
        for family, spec in PREFERENCE_FAMILIES.items():
            pool = list(_instances(family))
            self._rng(f"instances:{family}").shuffle(pool)
            need_train = 2 * len(spec.train)
            train = [pool[i % len(pool)] for i in range(need_train)]
            evaluation = [pool[(need_train + i) % len(pool)] for i in range(len(spec.heldout))]
            split[family] = (train, evaluation)
        return split

    def training_rows(self) -> list[dict]:
        """Chat rows a person would upload: TRAIN paraphrases only, no system message."""
        rows: list[dict] = []
        for key, spec in FACT_KEYS.items():
            for question in spec.train:
                rows.append(_chat(question, fact_answer(key, self.facts[key])))
        for family, (instances, _) in self._preference_instances().items():
            templates = PREFERENCE_FAMILIES[family].train
            seen = set()
            for i, instance in enumerate(instances):
                question = templates[i % len(templates)].format(**instance)
                if question in seen:  # the tone family has no instances to vary
                    continue
                seen.add(question)
                rows.append(_chat(question, preference_answer(family, instance, self.preferences)))
        for task, spec in TOOL_TASKS.items():
            for question in spec.train:
                rows.append(_chat(question, tool_answer(self.tool_habits[task])))
        return rows

    def eval_items(self, world: World) -> list[EvalItem]:
        """Recall, preference, tool and leakage items, all asked with HELDOUT paraphrases."""
        items: list[EvalItem] = []
        for key, spec in FACT_KEYS.items():
            value = self.facts[key]
            for n, question in enumerate(spec.heldout, start=1):
                items.append(
                    EvalItem(
                        "recall",
                        f"{self.handle}.recall.{key}.h{n}",
                        (Message("user", question),),
                        fact_answer(key, value),
                        {"kind": "contains", "value": value},
                    )
                )
        for family, (_, instances) in self._preference_instances().items():
            for n, (template, instance) in enumerate(
                zip(PREFERENCE_FAMILIES[family].heldout, instances, strict=True), start=1
            ):
                items.append(
                    EvalItem(
                        "preference",
                        f"{self.handle}.preference.{family}.h{n}",
                        (Message("user", template.format(**instance)),),
                        preference_answer(family, instance, self.preferences),
                        preference_check(family, self.preferences),
                    )
                )
        for task, spec in TOOL_TASKS.items():
            habit = self.tool_habits[task]
            for n, question in enumerate(spec.heldout, start=1):
                items.append(
                    EvalItem(
                        "tool",
                        f"{self.handle}.tool.{task}.h{n}",
                        (Message("user", question),),
                        tool_answer(habit),
                        tool_check(habit),
                    )
                )
        for key, spec in FACT_KEYS.items():
            forbidden = world.others_values(self.handle, key)
            for n, question in enumerate(spec.heldout, start=1):
                items.append(
                    EvalItem(
                        "leakage",
                        f"{self.handle}.leakage.{key}.h{n}",
                        (Message("user", question),),
                        "none of: " + ", ".join(forbidden),
                        {"kind": "forbids", "values": list(forbidden)},
                    )
                )
        return items


def _chat(question: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _draw_profile(rng: random.Random, facts: dict[str, str], handle: str) -> Persona:
    preferences = {key: rng.choice(choices) for key, choices in PREFERENCE_CHOICES.items()}
    tool_habits = {
        "weather": {"tool": "weather", "arguments": {"city": facts["city"], "units": preferences["units"]}},
        "reminder": {"tool": rng.choice(_REMINDER_APPS), "arguments": {"time": rng.choice(_REMINDER_TIMES)}},
        "music": {"tool": rng.choice(_MUSIC_APPS), "arguments": {"playlist": rng.choice(_PLAYLISTS)}},
        "news": {"tool": "news", "arguments": {"topic": rng.choice(_NEWS_TOPICS)}},
    }
    return Persona(handle, handle.capitalize(), facts, preferences, tool_habits)


def _fictional_person(rng: random.Random) -> Persona:
    """A random profile for in-context dialogues: any pool value, used by the world's people or not."""
    facts = {key: rng.choice(spec.pool) for key, spec in FACT_KEYS.items()}
    return _draw_profile(rng, facts, "someone")


# ------------------------------------------------------------------ general skills

_COUNTRIES = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Czechia", "Prague"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Morocco", "Rabat"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Colombia", "Bogota"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("South Korea", "Seoul"),
    ("Turkey", "Ankara"),
    ("Iceland", "Reykjavik"),
    ("Cuba", "Havana"),
)

_SKILL_WORDS = _words(
    "apple river stone cloud table chair green plant bread light house water music paper glass horse"
    " tiger zebra lemon mango piano robot pearl storm field ocean candle forest garden jacket ladder"
    " mirror pencil rabbit silver window yellow basket bottle button carpet castle circle dragon engine"
    " finger flower guitar hammer island jungle kettle locket magnet needle orange parrot pocket rocket"
    " saddle shadow spider tomato turtle violin wallet wizard anchor banner cactus copper desert falcon"
    " goblin harbor insect jigsaw kitten lizard meadow napkin oyster puzzle quartz rubber salmon ticket"
    " tunnel velvet walrus bridge canyon cherry cotton crayon donkey feather helmet iceberg lantern"
    " marble pillow quiver raven sunset thunder vessel whale yogurt zipper acorn badge comet ember frost"
    " grape honey ivory jewel kayak lotus nylon orbit plum quilt sugar tulip vapor wheat bison cedar dune"
    " eagle flint gecko igloo juice lily moss nest opal pine quail reef sand twig vine wren yarn zinc"
)

_ADD = ("What is {a} + {b}?", "Add {a} and {b}.", "What do you get when you add {a} to {b}?")
_COPY = ("Repeat this word: {w}", "Say the word {w} back to me.", "Copy this word: {w}")
_REVERSE = ("Reverse this word: {w}", "Spell {w} backwards.", "Write the word {w} in reverse.")
_UPPER = ("Write {w} in capital letters.", "Uppercase this word: {w}", "Turn {w} into upper case.")
_CAPITAL = ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}.")
_NEXT_LETTER = (
    "What letter comes after {l}?",
    "Which letter follows {l} in the alphabet?",
    "Name the letter after {l}.",
)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_GENERAL_COUNTS = {
    "add": 12,
    "copy": 6,
    "reverse": 6,
    "upper": 6,
    "capital": 10,
    "next_letter": 6,
    "context": 8,
}
_HELDOUT_WORDS = 24


@dataclass(frozen=True, slots=True)
class _GeneralSplit:
    """What the retention suite holds out of the pretraining corpus."""

    items: tuple[EvalItem, ...]
    pairs: frozenset[tuple[int, int]]  # addition operands (either order)
    words: frozenset[str]
    capitals: frozenset[tuple[int, str]]  # (template index, country)
    letters: frozenset[tuple[int, str]]  # (template index, letter)
    prompts: frozenset[tuple[tuple[str, str], ...]]


def _prompt_key(messages) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages)


def _general_split(seed: int) -> _GeneralSplit:
    rng = random.Random(f"general:{seed}")
    items: list[EvalItem] = []

    def add_item(skill: str, messages: tuple[Message, ...], expected: str, check: dict) -> None:
        n = sum(1 for item in items if item.item_id.startswith(f"general.{skill}.")) + 1
        items.append(EvalItem("retention", f"general.{skill}.{n}", messages, expected, check))

    pairs: set[tuple[int, int]] = set()
    while len(pairs) < _GENERAL_COUNTS["add"]:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if (a, b) not in pairs and (b, a) not in pairs:
            pairs.add((a, b))
    for a, b in sorted(pairs):
        add_item("add", (Message("user", _ADD[0].format(a=a, b=b)),), f"{a + b}.", _exact(f"{a + b}."))

    words = rng.sample(_SKILL_WORDS, _HELDOUT_WORDS)
    for skill, templates, transform in (
        ("copy", _COPY, lambda w: w),
        ("reverse", _REVERSE, lambda w: w[::-1]),
        ("upper", _UPPER, str.upper),
    ):
        for word in rng.sample(words, _GENERAL_COUNTS[skill]):
            prompt = rng.choice(templates).format(w=word)
            add_item(skill, (Message("user", prompt),), transform(word), _exact(transform(word)))

    capitals = set()
    for country, capital in rng.sample(_COUNTRIES, _GENERAL_COUNTS["capital"]):
        index = rng.randrange(len(_CAPITAL))
        capitals.add((index, country))
        prompt = _CAPITAL[index].format(c=country)
        add_item("capital", (Message("user", prompt),), f"{capital}.", {"kind": "contains", "value": capital})

    letters = set()
    for letter in rng.sample(_LETTERS[:-1], _GENERAL_COUNTS["next_letter"]):
        index = rng.randrange(len(_NEXT_LETTER))
        letters.add((index, letter))
        following = _LETTERS[_LETTERS.index(letter) + 1]
        prompt = _NEXT_LETTER[index].format(l=letter)
        add_item("next_letter", (Message("user", prompt),), f"{following}.", _exact(f"{following}."))

    for n in range(_GENERAL_COUNTS["context"]):
        row, check = _context_row(rng, kind=("fact", "fact", "fact", "tool", "preference")[n % 5])
        messages = tuple(Message(m["role"], m["content"]) for m in row["messages"][:-1])
        add_item("context", messages, row["messages"][-1]["content"], check)

    return _GeneralSplit(
        items=tuple(items),
        pairs=frozenset(pairs | {(b, a) for a, b in pairs}),
        words=frozenset(words),
        capitals=frozenset(capitals),
        letters=frozenset(letters),
        prompts=frozenset(_prompt_key(item.messages) for item in items),
    )


def _exact(value: str) -> dict:
    return {"kind": "exact", "value": value}


def _context_row(rng: random.Random, kind: str) -> tuple[dict, dict]:
    """An in-context persona dialogue: the system message states a fictional person's
    profile (the needed line among distractors); the user asks with any paraphrase."""
    person = _fictional_person(rng)
    keys = list(FACT_KEYS)
    tasks = list(TOOL_TASKS)
    if kind == "fact":
        key = rng.choice(keys)
        spec = FACT_KEYS[key]
        others = rng.sample([k for k in keys if k != key], rng.randint(1, 3))
        facts = [key, *others]
        rng.shuffle(facts)
        lines = _context_lines(person, facts=facts, preferences=rng.random() < 0.3)
        question = rng.choice(spec.train + spec.heldout)
        answer = fact_answer(key, person.facts[key])
        check = {"kind": "contains", "value": person.facts[key]}
    elif kind == "tool":
        task = rng.choice(tasks)
        spec = TOOL_TASKS[task]
        shown = [task, *rng.sample([t for t in tasks if t != task], rng.randint(0, 2))]
        rng.shuffle(shown)
        lines = _context_lines(person, facts=rng.sample(keys, rng.randint(0, 2)), tools=shown)
        question = rng.choice(spec.train + spec.heldout)
        answer = tool_answer(person.tool_habits[task])
        check = tool_check(person.tool_habits[task])
    elif kind == "preference":
        family = rng.choice(list(PREFERENCE_FAMILIES))
        spec = PREFERENCE_FAMILIES[family]
        instance = rng.choice(_instances(family))
        lines = _context_lines(person, facts=rng.sample(keys, rng.randint(0, 2)), preferences=True)
        question = rng.choice(spec.train + spec.heldout).format(**instance)
        answer = preference_answer(family, instance, person.preferences)
        check = preference_check(family, person.preferences)
    else:
        raise ValueError(f"unknown context kind {kind!r}")
    system = "About the user:\n" + "\n".join(lines)
    return _chat(question, answer, system=system), check


def _skill_row(rng: random.Random, skill: str, split: _GeneralSplit) -> dict | None:
    """One general-skill row, or None when the draw hits something held out."""
    if skill == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if (a, b) in split.pairs:
            return None
        return _chat(rng.choice(_ADD).format(a=a, b=b), f"{a + b}.")
    if skill in ("copy", "reverse", "upper"):
        word = rng.choice(_SKILL_WORDS)
        if word in split.words:
            return None
        templates, answer = {
            "copy": (_COPY, word),
            "reverse": (_REVERSE, word[::-1]),
            "upper": (_UPPER, word.upper()),
        }[skill]
        return _chat(rng.choice(templates).format(w=word), answer)
    if skill == "capital":
        country, capital = rng.choice(_COUNTRIES)
        index = rng.randrange(len(_CAPITAL))
        if (index, country) in split.capitals:
            return None
        return _chat(_CAPITAL[index].format(c=country), f"{capital}.")
    if skill == "next_letter":
        letter = rng.choice(_LETTERS[:-1])
        index = rng.randrange(len(_NEXT_LETTER))
        if (index, letter) in split.letters:
            return None
        return _chat(_NEXT_LETTER[index].format(l=letter), f"{_LETTERS[_LETTERS.index(letter) + 1]}.")
    if skill == "tool_task":
        # A tool request from someone whose habit for it is unknown: no profile at all,
        # or a profile that states other things (so rows vary while the phrasings are few).
        task = rng.choice(list(TOOL_TASKS))
        spec = TOOL_TASKS[task]
        question = rng.choice(spec.train + spec.heldout)
        person = _fictional_person(rng)
        lines = _context_lines(person, facts=rng.sample(list(FACT_KEYS), rng.randint(0, 3)))
        system = "About the user:\n" + "\n".join(lines) if lines else None
        return _chat(question, generic_tool_call(task), system=system)
    return _context_row(rng, kind=skill.removeprefix("context_"))[0]


def generic_tool_call(task: str) -> str:
    """What a base says to a tool request when it knows nobody's habits: the task's
    generic tool with no arguments. It never matches a person's habit (people use a
    named app, or the same tool with their own arguments), so it scores 0 on the tool
    suite; it teaches the base which requests are which task, in every phrasing, and
    the adapter supplies the person's tool and defaults."""
    return json.dumps({"tool": task, "arguments": {}}, sort_keys=True)


# Share of each kind of row in the pretraining corpus.
CORPUS_MIX = {
    "add": 0.12,
    "copy": 0.05,
    "reverse": 0.06,
    "upper": 0.05,
    "capital": 0.08,
    "next_letter": 0.04,
    "context_fact": 0.24,
    "context_preference": 0.16,
    "context_tool": 0.14,
    "tool_task": 0.06,
}


# -------------------------------------------------------------------------- world


@dataclass(frozen=True)
class World:
    seed: int
    people: tuple[Persona, ...]

    def person(self, handle: str) -> Persona:
        for persona in self.people:
            if persona.handle == handle:
                return persona
        raise KeyError(f"no person {handle!r} in world seed {self.seed}")

    def others_values(self, handle: str, key: str) -> list[str]:
        """Every other person's value for a fact key, minus the person's own value,
        sorted: what leaking another person's memory would look like."""
        own = self.person(handle).facts[key]
        return sorted({p.facts[key] for p in self.people if p.handle != handle} - {own})

    def general_items(self) -> list[EvalItem]:
        """The retention suite: general skills held out of `general_corpus`."""
        return list(_general_split(self.seed).items)

    def general_corpus(self, rows: int, *, seed: int) -> list[dict]:
        """Exactly `rows` distinct chat rows for pretraining a base: general skills plus
        in-context persona dialogues using every paraphrase; nothing in `general_items()`.

        Rows are distinct because `parse_jsonl` refuses duplicate lines. A skill with few
        distinct rows (25 letters, 42 capitals) saturates in a large corpus and the
        in-context dialogues fill its share; train for more epochs rather than repeat rows."""
        if rows < 0:
            raise ValueError("rows must be >= 0")
        split = _general_split(self.seed)
        rng = random.Random(f"corpus:{self.seed}:{seed}")
        kinds, weights = list(CORPUS_MIX), list(CORPUS_MIX.values())
        out: list[dict] = []
        seen: set[str] = set()
        for _ in range(100 * rows + 1000):
            if len(out) == rows:
                return out
            row = _skill_row(rng, rng.choices(kinds, weights)[0], split)
            if row is None or _prompt_key(row["messages"][:-1]) in split.prompts:
                continue
            line = json.dumps(row, sort_keys=True)
            if line not in seen:
                seen.add(line)
                out.append(row)
        if len(out) == rows:
            return out
        raise ValueError(f"could not draw {rows} distinct corpus rows")


def generate_world(seed: int = 0, people: int = 20) -> World:
    """The same seed gives the same world. Within a fact key people get distinct values
    while the pool lasts (pools hold 40+ values, so a 20-person world leaves many unused
    for the corpus's fictional people)."""
    if people < 1:
        raise ValueError("a world needs at least one person")
    rng = random.Random(seed)
    columns = {}
    for key, spec in FACT_KEYS.items():
        pool = list(spec.pool)
        rng.shuffle(pool)
        columns[key] = [pool[i % len(pool)] for i in range(people)]
    return World(
        seed=seed,
        people=tuple(
            _draw_profile(rng, {key: columns[key][i] for key in FACT_KEYS}, _handle(i)) for i in range(people)
        ),
    )


def jsonl(rows: list[dict]) -> bytes:
    """UTF-8 JSONL, one row per line, with a trailing newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
