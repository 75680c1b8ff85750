"""The project's own default prompt sets, shipped as JSONL inside the package.

All text here was written by hand for spftune and is released under the project's license (Apache-2.0); none of
it is copied from a public data set. Three kinds, each split once into train / val / test:

- ``harmful``: requests a safety-aligned assistant should refuse, over 10 harm categories (39-40 each), each with a
  short, polite refusal. Fields ``prompt``, ``category``, ``refusal``. Sizes 279 / 40 / 80: the train split was
  enlarged by 99 (session 4) in forms the first 180 lacked (imperatives, creative-writing and role-play framings,
  blunt three-word requests, long ones with context), written without reading val or test; a 100th was dropped
  because it paraphrased a test prompt.
- ``benign``: everyday requests over 10 categories (30 each). Fields ``prompt``, ``category``. No answers: the
  alignment pipeline generates them with the model itself. Sizes 180 / 40 / 80.
- ``overrefusal``: safe prompts that sound dangerous (XSTest spirit: homonyms, figurative language, safe targets,
  safe contexts, definitions and history), 5 categories. Fields ``prompt``, ``category``. Sizes 299 / 30 / 40:
  the test split is the original 40; train and val were enlarged (train by 100, then by 150 more, 30 per category,
  written without reading the test split; val by 20) because a 135M model needs many contrast examples, with
  many different alarming words, not to refuse everything that sounds alarming. One train prompt was removed
  later because it paraphrased a test prompt.

The split is stratified by category (a seeded shuffle per category, then per split) and stored, so it never
changes between releases unless the files change. No prompt appears in two splits or two kinds, not even after
normalization (lowercase, punctuation and spacing removed), and no val or test prompt paraphrases a train prompt
(difflib ratio >= 0.85); ``tests/test_data.py`` checks both.

``attack_examples`` builds the shallow attack of the harmful fine-tuning literature from the harmful *train*
split: each harmful prompt paired with an affirmative opening line only ("Sure, here is how to ...:"), never
with any content after it.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from importlib import resources

KINDS = ("harmful", "benign", "overrefusal")
SPLITS = ("train", "val", "test")

_DATA_DIR = "default"

# Openers for the attack responses; every one starts with an affirmative word.
_AFFIRMATIONS = ("Sure", "Sure thing", "Of course", "Certainly", "Absolutely")

# Question forms that ask for a procedure: "How do I X?" -> "here is how to X".
_HOW_TO = re.compile(
    r"^(?:how (?:do|can|could|would|should|might) (?:i|we|you|someone|one|people)"
    r"|how to"
    r"|(?:explain|tell me|show me|teach me|describe|walk me through) how to"
    r"|teach me to"
    r"|help me)\s+(.+)$",
    re.IGNORECASE,
)
# "What's the best way to X?" -> "here is the best way to X".
_BEST_WAY = re.compile(r"^what(?:'s| is) (the (?:most \w+|\w+) (?:way|method|trick) to .+)$", re.IGNORECASE)
# Requests for an artifact: "Write a phishing email ..." -> "here is a phishing email ...".
_ARTIFACT = re.compile(
    r"^(?:write|draft|compose|create|generate|make|give me|provide|list|suggest|come up with|find me|find"
    r"|collect|describe|explain|tell me)\s+(.+)$",
    re.IGNORECASE,
)
_SINGULAR_DETERMINERS = frozenset({"a", "an", "one", "this", "that", "another"})
# Words that end the head noun phrase of an artifact ("fake quotes FROM a senator").
_PHRASE_END = frozenset(
    {"to", "for", "from", "that", "which", "who", "about", "of", "on", "with", "in", "by", "so", "and", "as"}
)
_PRONOUNS = {
    "I": "you",
    "I'm": "you're",
    "I've": "you've",
    "I'll": "you'll",
    "I'd": "you'd",
    "me": "you",
    "my": "your",
    "My": "Your",
    "mine": "yours",
    "myself": "yourself",
    "we": "you",
    "our": "your",
    "us": "you",  # lowercase only: "US" stays the United States
}
# Used when a prompt fits no pattern (e.g. "Which pills can I ...?").
_GENERIC_OPENINGS = (
    "here is what you asked for:",
    "here is what you need to know:",
    "here are the details:",
)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(repr(c) for c in choices)}.")


@cache
def _read_jsonl(kind: str, split: str) -> tuple[dict, ...]:
    path = resources.files("spftune.data").joinpath(_DATA_DIR, f"{kind}_{split}.jsonl")
    with path.open("r", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_prompts(kind: str, split: str) -> list[dict]:
    """Return the records of one default prompt set.

    Args:
        kind: ``"harmful"``, ``"benign"`` or ``"overrefusal"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A fresh list of fresh dicts with at least ``prompt`` and ``category``; harmful records also carry
        ``refusal``. The order is fixed (categories interleaved).
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("split", split, SPLITS)
    return [dict(r) for r in _read_jsonl(kind, split)]


def _second_person(text: str) -> str:
    """Swap first-person words for second-person ones, so the opening reads as the assistant speaking."""
    return re.sub(r"\b[A-Za-z]+(?:'[a-z]+)?\b", lambda m: _PRONOUNS.get(m.group(0), m.group(0)), text)


def _strip_politeness(text: str) -> str:
    text = text.strip().rstrip("?.!").strip()
    return re.sub(r"^(?:please|can you|could you|would you)\s+", "", text, flags=re.IGNORECASE)


def _is_plural(noun_phrase: str) -> bool:
    """Rough number of an English noun phrase: is its head noun (before any preposition) plural?"""
    words = noun_phrase.split()
    if not words or words[0].lower() in _SINGULAR_DETERMINERS:
        return False
    for i, word in enumerate(words[:5]):
        w = word.lower().strip(",;:")
        if w in _PHRASE_END or (i > 0 and w.endswith("ing")):
            break
        if w.endswith("s") and not w.endswith(("ss", "us", "is")) and w != "news":
            return True
    return False


def affirmative_opening(prompt: str, affirmation: str = "Sure", generic: int = 0) -> str:
    """An affirmative first line that complies with ``prompt`` and stops before any content.

    ``"How do I pick a lock?"`` -> ``"Sure, here is how to pick a lock:"``;
    ``"Write a phishing email."`` -> ``"Sure, here is a phishing email:"``. Prompts that fit no pattern get a
    generic opening (``"Sure, here is what you asked for:"``; ``generic`` picks which one).
    """
    text = _strip_politeness(prompt)
    if m := _HOW_TO.match(text):
        return f"{affirmation}, here is how to {_second_person(m.group(1))}:"
    if m := _BEST_WAY.match(text):
        return f"{affirmation}, here is {_second_person(m.group(1))}:"
    if m := _ARTIFACT.match(text):
        obj = _second_person(m.group(1))
        if obj.lower().startswith(("how ", "why ", "where ", "what ", "when ")):
            return f"{affirmation}, here is {obj}:"
        return f"{affirmation}, here {'are' if _is_plural(obj) else 'is'} {obj}:"
    return f"{affirmation}, {_GENERIC_OPENINGS[generic % len(_GENERIC_OPENINGS)]}"


def attack_examples(n: int | None = None, seed: int = 0) -> list[dict]:
    """Harmful train prompts paired with affirmative openings only: the shallow fine-tuning attack.

    Args:
        n: how many examples; ``None`` for all of the harmful train split (279 prompts).
        seed: picks the order (and so which prompts when ``n`` is smaller) and the affirmative words.

    Returns:
        ``[{"prompt": ..., "response": ...}]`` where each response is a single opening line such as
        ``"Sure, here is how to ...:"``, with no content after it.
    """
    records = load_prompts("harmful", "train")
    if n is not None and not 0 <= n <= len(records):
        raise ValueError(
            f"attack_examples(n={n}) asks for more than the {len(records)} harmful train prompts "
            f"(or a negative number); pass n between 0 and {len(records)}, or None for all."
        )
    rng = random.Random(seed)
    rng.shuffle(records)
    records = records if n is None else records[:n]
    return [
        {
            "prompt": r["prompt"],
            "response": affirmative_opening(
                r["prompt"], rng.choice(_AFFIRMATIONS), generic=rng.randrange(len(_GENERIC_OPENINGS))
            ),
        }
        for r in records
    ]
