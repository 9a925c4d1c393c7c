"""router.features: the hand-made features, including the "two tasks in one prompt" group."""

from __future__ import annotations

import math

from router import features


def named(text: str) -> dict[str, float]:
    values = features.extract(text)
    assert len(values) == len(features.FEATURE_NAMES)
    assert all(math.isfinite(v) for v in values)
    return dict(zip(features.FEATURE_NAMES, values, strict=True))


def test_clauses_split_prose_but_keep_a_code_fence_whole():
    text = ("Write the ghost's lines, and write the routine that picks one.\n```\nLDA $7EF3C5\n. STA $00\n```\n"
            "Then check the doc")
    parts = features.clauses(text)
    assert parts[0] == "Write the ghost's lines"
    assert parts[1].startswith("write the routine")
    assert any(p.startswith("```") and "STA $00" in p for p in parts)
    assert features.clauses("") == []


def test_a_prompt_asking_for_two_things_from_two_oracles():
    two = named("Write the blacksmith's dialogue, and then write the ASM that sets the flag at $7EF3C5.")
    one = named("The ASM is done already, so I only need the blacksmith's dialogue.")
    assert two["second_requests"] > one["second_requests"] == 0
    assert two["clauses_lean_two_oracles"] == 1.0
    assert two["mentions:oracle-din+oracle-farore"] == 1.0
    assert two["request_verbs"] > 0 and two["clauses"] > math.log1p(1)


def test_one_oracle_never_leans_two_ways():
    f = named("Design the dungeon. Then design the boss. Then place the key items in the rooms.")
    assert f["clauses_lean_two_oracles"] == 0.0
    assert f["mentions:oracle-din+oracle-farore"] == 0.0 and f["mentions:oracle-nayru+oracle-farore"] == 0.0


def test_code_shape_still_counts():
    f = named("  LDA.l $7EF3C5\n  STA $00\n  RTL")
    assert f["long_addresses"] > 0 and f["mnemonic_lines"] >= math.log1p(3)
