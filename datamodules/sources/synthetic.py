"""A seeded, learnable synthetic source with worded item titles, for tests and smoke runs."""

from __future__ import annotations

import random

from datamodules.sources.common import RawData

# fmt: off
_ADJECTIVES = (
    "Gentle", "Bright", "Soft", "Classic", "Fresh", "Silky", "Bold", "Pure",
    "Daily", "Deluxe", "Mini", "Natural", "Radiant", "Smooth", "Vivid", "Calm",
)
_COLOURS = (
    "Amber", "Coral", "Ivory", "Jade", "Lilac", "Olive", "Pearl", "Ruby",
    "Sage", "Teal", "Cobalt", "Rose", "Honey", "Slate", "Mint", "Plum",
)
_NOUNS = (
    "Shampoo", "Lotion", "Serum", "Brush", "Palette", "Cream", "Soap", "Mask",
    "Balm", "Toner", "Mist", "Polish", "Gloss", "Scrub", "Oil", "Comb",
)
# fmt: on
_USES = (
    "for everyday use",
    "for dry skin",
    "for a night routine",
    "for travel",
    "for sensitive skin",
    "for a quick refresh",
    "for shiny hair",
    "for a salon finish",
)
SYNTHETIC_STRIDES = (1, 2, 3, 5, 7)
"""Per-user step between consecutive items; a small set, so other users reveal each pattern."""


def make_synthetic(
    num_users: int, num_items: int, min_len: int, max_len: int, seed: int, noise: float = 0.1
) -> RawData:
    """A learnable, seeded synthetic source with worded item titles.

    User ``u<k>`` starts at a random item and moves by a stride drawn from
    :data:`SYNTHETIC_STRIDES`: ``next = (prev + stride) % num_items``; with probability ``noise``
    the next item is random instead. An item a user already has is skipped (the next free one is
    taken), so sequences never repeat an item and the held-out item is never in the history.
    Timestamps strictly increase per user. Items ``i<k>`` get distinct titles such as
    "Gentle Amber Shampoo" and a one-sentence description. The same arguments give the same data.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"make_synthetic needs num_users >= 1 and num_items >= 2, got {num_users} and {num_items}")
    if not 1 <= min_len <= max_len <= num_items:
        raise ValueError(
            f"make_synthetic needs 1 <= min_len <= max_len <= num_items, got {min_len}, {max_len}, {num_items}"
        )
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed)
    strides = [s for s in SYNTHETIC_STRIDES if s < num_items] or [1]
    base_time = 1_400_000_000
    interactions: list[tuple[str, str, int]] = []
    for user in range(num_users):
        length = rng.randint(min_len, max_len)
        stride = rng.choice(strides)
        item = rng.randrange(num_items)
        time = base_time + rng.randrange(365) * 86_400
        seen = {item}
        interactions.append((f"u{user}", f"i{item}", time))
        for _ in range(length - 1):
            if rng.random() < noise:
                # Rejection sampling: cheap since a sequence covers at most max_len <= num_items items.
                while item in seen:
                    item = rng.randrange(num_items)
            else:
                item = (item + stride) % num_items
                while item in seen:
                    item = (item + 1) % num_items
            seen.add(item)
            time += rng.randint(1, 3) * 86_400
            interactions.append((f"u{user}", f"i{item}", time))

    # Titles: a seeded draw of distinct (adjective, colour, noun) triples; a number once they run out.
    combos = len(_ADJECTIVES) * len(_COLOURS) * len(_NOUNS)
    codes = rng.sample(range(combos), min(num_items, combos))
    used = dict.fromkeys(item for _, item, _ in interactions)
    items: dict[str, tuple[str, str]] = {}
    for raw in used:
        index = int(raw[1:])
        code = codes[index % combos]
        adjective = _ADJECTIVES[code // (len(_COLOURS) * len(_NOUNS))]
        colour = _COLOURS[code // len(_NOUNS) % len(_COLOURS)]
        noun = _NOUNS[code % len(_NOUNS)]
        title = f"{adjective} {colour} {noun}" + (f" No. {index // combos + 1}" if index >= combos else "")
        use = _USES[(code + index) % len(_USES)]
        items[raw] = (title, f"A {adjective.lower()} {noun.lower()} in {colour.lower()}, {use}.")
    return RawData(interactions, items)
