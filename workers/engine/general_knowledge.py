"""A retention suite for real pretrained bases: general knowledge a small instruct model has.

The persona world's own retention suite (`World.general_items()`) tests the skills our
self-pretrained bases were taught, in the answer templates they were taught (two-digit
sums answered "81.", reversed words, capitals in a fixed sentence). A real base such as
SmolLM2-135M-Instruct was taught none of those templates, so it fails most of them
before any adapter touches it, and a retention score near zero cannot show an adapter
eroding anything.

This set asks what a small real instruct model does answer, in its own words: capitals,
opposites, plurals, past tenses and common facts, each graded by `contains` (the answer
appears as a whole word, any case), so "The capital of France is Paris." passes.

How it was chosen, by measurement: a pool of 217 questions (72 capitals, 45 opposites,
30 plurals, 20 past tenses, 50 facts) was put to the bare SmolLM2-135M-Instruct (the
packaged Q4_1 GGUF dequantized to float32; its own chat template and default system
prompt; greedy, 48 new tokens) on 2026-12-03; it answered 153 right, and those 153 are
this set. On that base the bare score is therefore 1.0 by construction, and what an
adapter does to it is the retention drop. Other bases are scored on the same 153 items
as they are (a base model without chat training, or our own tiny bases, score lower).
No item is in any person's training rows (those are about the person only) and nothing
here is used for replay, so the set stays held out.
"""

from __future__ import annotations

from workers.engine.examples import Message
from workers.engine.persona_world import EvalItem

SUITE = "retention"

# skill -> (question, answer) pairs, as kept from the measured pool (see above)
KNOWLEDGE = {
    "capital": (
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is the capital of Norway?", "Oslo"),
        ("What is the capital of Sweden?", "Stockholm"),
        ("What is the capital of Ireland?", "Dublin"),
        ("What is the capital of Poland?", "Warsaw"),
        ("What is the capital of Austria?", "Vienna"),
        ("What is the capital of Hungary?", "Budapest"),
        ("What is the capital of Greece?", "Athens"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is the capital of China?", "Beijing"),
        ("What is the capital of Russia?", "Moscow"),
        ("What is the capital of Egypt?", "Cairo"),
        ("What is the capital of Kenya?", "Nairobi"),
        ("What is the capital of Canada?", "Ottawa"),
        ("What is the capital of Mexico?", "Mexico City"),
        ("What is the capital of Peru?", "Lima"),
        ("What is the capital of Thailand?", "Bangkok"),
        ("What is the capital of South Korea?", "Seoul"),
        ("What is the capital of Cuba?", "Havana"),
        ("What is the capital of the United Kingdom?", "London"),
        ("What is the capital of England?", "London"),
        ("What is the capital of Belgium?", "Brussels"),
        ("What is the capital of India?", "New Delhi"),
        ("What is the capital of Australia?", "Canberra"),
        ("What is the capital of Iran?", "Tehran"),
        ("What is the capital of Iraq?", "Baghdad"),
        ("What is the capital of Israel?", "Jerusalem"),
        ("What is the capital of Saudi Arabia?", "Riyadh"),
        ("What is the capital of Pakistan?", "Islamabad"),
        ("What is the capital of Indonesia?", "Jakarta"),
        ("What is the capital of the Philippines?", "Manila"),
        ("What is the capital of Chile?", "Santiago"),
        ("What is the capital of Scotland?", "Edinburgh"),
        ("What is the capital of Wales?", "Cardiff"),
        ("What is the capital of the Czech Republic?", "Prague"),
        ("What is the capital of Romania?", "Bucharest"),
        ("What is the capital of Bulgaria?", "Sofia"),
        ("What is the capital of Croatia?", "Zagreb"),
        ("What is the capital of the Netherlands?", "Amsterdam"),
        ("What is the capital of Nigeria?", "Abuja"),
        ("What is the capital of Ethiopia?", "Addis Ababa"),
        ("What is the capital of New Zealand?", "Wellington"),
        ("What is the capital of Malaysia?", "Kuala Lumpur"),
        ("What is the capital of Singapore?", "Singapore"),
        ("What is the capital of Nepal?", "Kathmandu"),
        ("What is the capital of Afghanistan?", "Kabul"),
        ("What is the capital of Syria?", "Damascus"),
        ("What is the capital of Lebanon?", "Beirut"),
        ("What is the capital of Qatar?", "Doha"),
        ("What is the capital of Estonia?", "Tallinn"),
        ("What is the capital of Latvia?", "Riga"),
        ("What is the capital of Lithuania?", "Vilnius"),
    ),
    "opposite": (
        ("What is the opposite of hot?", "cold"),
        ("What is the opposite of big?", "small"),
        ("What is the opposite of up?", "down"),
        ("What is the opposite of day?", "night"),
        ("What is the opposite of fast?", "slow"),
        ("What is the opposite of open?", "closed"),
        ("What is the opposite of happy?", "sad"),
        ("What is the opposite of wet?", "dry"),
        ("What is the opposite of full?", "empty"),
        ("What is the opposite of early?", "late"),
        ("What is the opposite of left?", "right"),
        ("What is the opposite of hard?", "soft"),
        ("What is the opposite of black?", "white"),
        ("What is the opposite of tall?", "short"),
        ("What is the opposite of strong?", "weak"),
        ("What is the opposite of yes?", "no"),
        ("What is the opposite of love?", "hate"),
        ("What is the opposite of begin?", "end"),
        ("What is the opposite of push?", "pull"),
        ("What is the opposite of true?", "false"),
        ("What is the opposite of heavy?", "light"),
        ("What is the opposite of north?", "south"),
        ("What is the opposite of east?", "west"),
        ("What is the opposite of thick?", "thin"),
        ("What is the opposite of front?", "back"),
        ("What is the opposite of buy?", "sell"),
        ("What is the opposite of friend?", "enemy"),
        ("What is the opposite of sweet?", "sour"),
        ("What is the opposite of inside?", "outside"),
        ("What is the opposite of top?", "bottom"),
        ("What is the opposite of always?", "never"),
        ("What is the opposite of remember?", "forget"),
        ("What is the opposite of near?", "far"),
        ("What is the opposite of cheap?", "expensive"),
        ("What is the opposite of young?", "old"),
        ("What is the opposite of wide?", "narrow"),
    ),
    "plural": (
        ("What is the plural of mouse?", "mice"),
        ("What is the plural of child?", "children"),
        ("What is the plural of foot?", "feet"),
        ("What is the plural of tooth?", "teeth"),
        ("What is the plural of man?", "men"),
        ("What is the plural of woman?", "women"),
        ("What is the plural of person?", "people"),
        ("What is the plural of box?", "boxes"),
        ("What is the plural of city?", "cities"),
        ("What is the plural of cat?", "cats"),
        ("What is the plural of dog?", "dogs"),
        ("What is the plural of baby?", "babies"),
        ("What is the plural of knife?", "knives"),
        ("What is the plural of leaf?", "leaves"),
        ("What is the plural of wolf?", "wolves"),
        ("What is the plural of bus?", "buses"),
        ("What is the plural of church?", "churches"),
        ("What is the plural of potato?", "potatoes"),
        ("What is the plural of cactus?", "cacti"),
        ("What is the plural of sheep?", "sheep"),
        ("What is the plural of fish?", "fish"),
        ("What is the plural of deer?", "deer"),
        ("What is the plural of wife?", "wives"),
        ("What is the plural of story?", "stories"),
        ("What is the plural of glass?", "glasses"),
        ("What is the plural of watch?", "watches"),
        ("What is the plural of hero?", "heroes"),
        ("What is the plural of house?", "houses"),
    ),
    "past": (
        ("What is the past tense of swim?", "swam"),
        ("What is the past tense of take?", "took"),
        ("What is the past tense of give?", "gave"),
        ("What is the past tense of buy?", "bought"),
        ("What is the past tense of fly?", "flew"),
        ("What is the past tense of walk?", "walked"),
    ),
    "fact": (
        ("What gas do plants absorb from the air?", "carbon dioxide"),
        ("What is the largest ocean on Earth?", "Pacific"),
        ("Who wrote Romeo and Juliet?", "Shakespeare"),
        ("What is the chemical symbol for water?", "H2O"),
        ("What is the largest mammal?", "whale"),
        ("What language is mainly spoken in Brazil?", "Portuguese"),
        ("What language is mainly spoken in Mexico?", "Spanish"),
        ("What language is spoken in France?", "French"),
        ("What language is spoken in Germany?", "German"),
        ("What language is spoken in Japan?", "Japanese"),
        ("What language is spoken in Italy?", "Italian"),
        ("Which planet is known as the Red Planet?", "Mars"),
        ("Who painted the Mona Lisa?", "Leonardo"),
        ("What is the chemical symbol for gold?", "Au"),
        ("What currency is used in Japan?", "yen"),
        ("What organ pumps blood through the body?", "heart"),
        ("What do we call a baby cat?", "kitten"),
        ("What do we call a baby cow?", "calf"),
        ("What do we breathe in to live?", "oxygen"),
        ("Which ocean lies between Europe and America?", "Atlantic"),
        ("What is the largest desert in the world?", "Sahara"),
        ("Who discovered penicillin?", "Fleming"),
        ("Who developed the theory of relativity?", "Einstein"),
        ("What is the smallest prime number?", "2"),
        ("What is the square root of 9?", "3"),
        ("What is the main language spoken in Australia?", "English"),
        ("In which country are the pyramids of Giza?", "Egypt"),
        ("In which city is the Eiffel Tower?", "Paris"),
        ("In which city is the Colosseum?", "Rome"),
        ("Which animal is the fastest on land?", "cheetah"),
    ),
}


def general_knowledge_items() -> list[EvalItem]:
    """The fixed retention set for real bases: 153 items, ids `knowledge.<skill>.<n>`."""
    return [
        EvalItem(
            SUITE,
            f"knowledge.{skill}.{n}",
            (Message("user", question),),
            answer,
            {"kind": "contains", "value": answer},
        )
        for skill, pairs in KNOWLEDGE.items()
        for n, (question, answer) in enumerate(pairs, start=1)
    ]
