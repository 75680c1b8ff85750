"""A synthetic utility task: extract an order record into a fixed ``key=value`` line, scored by exact match.

Prompt (one of six sentence templates, field order varies)::

    Extract the order record.
    On 2024-03-05, a customer in Oslo bought 3 blue chairs (order #4821).

Response::

    id=4821;qty=3;color=blue;item=chair;city=Oslo

The model must copy four spans, singularize the item and drop the date, in an output format a chat model does not
produce before fine-tuning. Everything is generated from a seed, so no data is shipped. Splits draw order ids from
disjoint pools (a fixed hash of the id picks its split), so no test prompt can occur in train, whatever the seeds.
"""

from __future__ import annotations

import random

SPLITS = ("train", "val", "test")
INSTRUCTION = "Extract the order record."

# Colors and items are one token each and cities at most two for SmolLM2's tokenizer, and qty is one digit, so a
# response is at most 24 tokens (before the end-of-turn token). Items all take a regular plural "-s".
_COLORS = (
    "red", "blue", "green", "black", "white", "yellow", "orange", "purple", "gray", "brown", "gold",
)  # fmt: skip
_ITEMS = (
    "widget", "chair", "monitor", "table", "shirt", "phone", "clock", "boot", "hat", "plate", "bag",
    "cup", "jar", "pen", "fan", "rug", "wallet", "camera", "printer", "router", "sock", "bucket",
)  # fmt: skip
_CITIES = (
    "Oslo", "Lima", "Cairo", "Austin", "Denver", "Madrid", "Berlin", "Tokyo", "Seoul", "Porto",
    "Boston", "Nairobi", "Perth", "Vienna", "Athens", "Toronto", "Chicago", "Manila", "Leeds", "Osaka",
    "London", "Paris", "Rome", "Miami", "Dallas", "Seattle", "Delhi", "Mumbai", "Milan", "Hamburg",
    "Amsterdam", "Brussels", "Geneva", "Budapest", "Stockholm", "Edinburgh", "Glasgow", "Montreal", "Vancouver", "Portland",
    "Detroit", "Orlando", "Lagos", "Accra", "Melbourne", "Auckland", "Calgary", "Memphis", "Cardiff", "Seville",
)  # fmt: skip
# {items} is the item with the plural "s" when qty != 1; {item} is always singular.
_TEMPLATES = (
    "Order {id}: {qty} {color} {items} shipped to {city} on {date}.",
    "{city} received {qty} {color} {items} under order {id} on {date}.",
    "On {date}, a customer in {city} bought {qty} {color} {items} (order #{id}).",
    "Ship {qty} {color} {items} to {city} by {date}; reference {id}.",
    "Order #{id} - {qty} x {color} {item}, destination {city}, placed {date}.",
    "We sent {qty} {color} {items} to our store in {city}. Order number: {id}.",
)
_ID_RANGE = range(1000, 10000)
# Share of the id space per split, in tenths: 7 train, 1 val, 2 test.
_SPLIT_BUCKETS = {"train": range(0, 7), "val": range(7, 8), "test": range(8, 10)}
# End-of-turn markers a generation may keep at its end.
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<eos>")


def _split_of(order_id: int) -> str:
    # Knuth's multiplicative hash: spreads ids evenly over the buckets and never changes.
    bucket = (order_id * 2654435761) % 2**32 % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def _id_pool(split: str) -> list[int]:
    return [i for i in _ID_RANGE if _split_of(i) == split]


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Generate ``n`` examples ``{"prompt", "response"}`` of the order-extraction task.

    The same ``(n, seed, split)`` always gives the same list. Order ids are unique within the list and belong to
    the split's own pool (about 6,300 train, 900 val, 1,800 test), so the splits never share a prompt.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(repr(s) for s in SPLITS)}.")
    pool = _id_pool(split)
    if not 0 <= n <= len(pool):
        raise ValueError(
            f"make_examples(n={n}, split={split!r}): the {split} split has {len(pool)} distinct order ids; "
            f"ask for between 0 and {len(pool)} examples."
        )
    rng = random.Random(f"spftune-synthetic:{split}:{seed}")
    examples = []
    for order_id in rng.sample(pool, n):
        qty = rng.randint(1, 9)
        color, item, city = rng.choice(_COLORS), rng.choice(_ITEMS), rng.choice(_CITIES)
        date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        sentence = rng.choice(_TEMPLATES).format(
            id=order_id,
            qty=qty,
            color=color,
            item=item,
            items=item if qty == 1 else item + "s",
            city=city,
            date=date,
        )
        examples.append(
            {
                "prompt": f"{INSTRUCTION}\n{sentence}",
                "response": f"id={order_id};qty={qty};color={color};item={item};city={city}",
            }
        )
    return examples


def _normalize(text: str) -> str:
    text = text.strip()
    stripped = True
    while stripped:
        stripped = False
        for marker in _END_MARKERS:
            if text.endswith(marker):
                text, stripped = text[: -len(marker)].rstrip(), True
    return text.split("\n", 1)[0].strip() if text else ""


def score(prediction: str, reference: str) -> bool:
    """Exact match of the first line, after stripping whitespace and trailing end-of-turn markers."""
    return _normalize(prediction) == _normalize(reference)
