"""The train/val/test split, stratified by domain and seeded.

Each domain is split on its own, so every domain keeps the same proportions in every split:

1. the domain's samples (in read order) are shuffled with a generator seeded by ``(seed, domain)``
   (so adding a domain does not reshuffle the others);
2. counts by largest remainder: ``n * fraction`` rounded down, the leftover samples going to the
   splits with the largest fractional parts (ties: train, then val, then test);
3. small domains: with 1 or 2 samples everything goes to train (holding one out would halve what
   the specialist learns, and one sample measures nothing); with 3 or more, every split with a
   non-zero fraction gets at least one sample, taken from the largest split. So at 80/10/10 a
   domain of 3 is 1/1/1, of 5 is 3/1/1, of 10 is 8/1/1 and of 36 is 29/4/3.

Within each split the records are shuffled once more (seeded), so a trainer that reads a file in
order does not see one domain after another.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")
SPLITS = ("train", "val", "test")
SMALL = 2  # domains with at most this many samples go entirely to train


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); ValueError with a readable message otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--split needs three fractions train,val,test (e.g. 0.8,0.1,0.1), got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--split needs numbers, got {text!r}") from None
    if any(not v >= 0 for v in values):  # negative or NaN
        raise ValueError(f"--split fractions must be >= 0, got {text!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"--split fractions must add up to 1, got {text!r} (sum {sum(values):g})")
    if values[0] == 0:
        raise ValueError("--split: the train fraction must be above 0")
    return values  # type: ignore[return-value]


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    if n <= SMALL:
        return [n, 0, 0]
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    order = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda k: (counts[k], -k))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def stratified_split(items: Sequence[T], strata: Sequence[str], fractions: Sequence[float],
                     seed: int) -> dict[str, list[T]]:
    by_stratum: dict[str, list[T]] = {}
    for item, key in zip(items, strata, strict=True):
        by_stratum.setdefault(key, []).append(item)
    out: dict[str, list[T]] = {name: [] for name in SPLITS}
    for key in sorted(by_stratum):
        group = list(by_stratum[key])
        random.Random(f"{seed}:{key}").shuffle(group)
        start = 0
        for name, count in zip(SPLITS, split_counts(len(group), fractions), strict=True):
            out[name].extend(group[start:start + count])
            start += count
    for name in SPLITS:
        random.Random(f"{seed}:{name}").shuffle(out[name])
    return out
