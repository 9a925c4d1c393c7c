"""Optional pairwise LLM judge, sent through the same gateway to any registry model.

Each pair is asked twice, once with arm A's answer first and once with B's first; a verdict that
does not survive the swap (or that cannot be parsed) counts as a tie. The judge's answers are
cached like the arms' (arm name ``judge:MODEL``), so a re-run costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from eval.ab.cache import ResponseCache
from eval.ab.data import Sample

PROMPT = """You are judging two answers to the same request about Zelda: A Link to the Past ROM hacking \
(65816 assembly in Asar syntax, SNES graphics, hack design). A reference answer is given for \
orientation. Prefer the answer that is correct, complete and directly usable; ignore length and style.

## Request
{prompt}

## Reference answer
{reference}

## Answer 1
{first}

## Answer 2
{second}

Reply with exactly one word: 1 if Answer 1 is better, 2 if Answer 2 is better, TIE if neither is."""


def parse_verdict(text: str | None) -> str | None:
    """'1', '2', 'tie' or None (unparseable)."""
    if not text:
        return None
    m = re.search(r"\b(1|2|tie)\b", text.strip().lower())
    return m.group(1) if m else None


def combine(first_a: str | None, first_b: str | None) -> str:
    """Verdicts from the A-first and the B-first prompt -> 'a', 'b' or 'tie'."""
    a_side = {"1": "a", "2": "b", "tie": "tie"}.get(first_a or "")
    b_side = {"1": "b", "2": "a", "tie": "tie"}.get(first_b or "")
    return a_side if a_side is not None and a_side == b_side else "tie"


async def judge_pairs(samples: Sequence[Sample], answers: dict, arms: Sequence[str], *, model: str,
                      gateway: str, cache: ResponseCache, api_key: str | None, concurrency: int,
                      rescore: bool, progress: bool) -> dict[str, dict]:
    """sample_id -> {"winner": 'a'|'b'|'tie', "verdicts": [...]} for samples both arms answered."""
    from eval.ab.client import collect
    from eval.ab.data import Sample as S

    a, b = arms
    prompts: list[S] = []
    for s in samples:
        ta, tb = answers[(s.sample_id, a)].get("text"), answers[(s.sample_id, b)].get("text")
        if ta is None or tb is None:
            continue
        for order, (first, second) in (("ab", (ta, tb)), ("ba", (tb, ta))):
            text = PROMPT.format(prompt=s.prompt, reference=s.reference, first=first, second=second)
            prompts.append(S(f"{s.sample_id}#{order}", s.line, s.domain, ({"role": "user", "content": text},),
                             "", s.expected_specialist, s.task_type, s.prompt))
    arm = model
    rows = await collect(prompts, [arm], gateway=gateway, cache=_Prefixed(cache, "judge:"), api_key=api_key,
                         concurrency=concurrency, max_tokens=8, rescore=rescore, progress=progress)
    out: dict[str, dict] = {}
    for s in samples:
        ab, ba = rows.get((f"{s.sample_id}#ab", arm)), rows.get((f"{s.sample_id}#ba", arm))
        if ab is None or ba is None:
            continue
        v1, v2 = parse_verdict(ab.get("text")), parse_verdict(ba.get("text"))
        out[s.sample_id] = {"winner": combine(v1, v2), "verdicts": [v1, v2],
                            "errors": [r.get("error") for r in (ab, ba) if r.get("error")]}
    return out


class _Prefixed:
    """The response cache with the judge's rows kept apart from an arm of the same name."""

    def __init__(self, cache: ResponseCache, prefix: str) -> None:
        self.cache, self.prefix = cache, prefix

    def get(self, arm: str, sample_id: str, rhash: str):
        return self.cache.get(self.prefix + arm, sample_id, rhash)

    def put(self, arm: str, sample_id: str, rhash: str, row: dict) -> None:
        self.cache.put(self.prefix + arm, sample_id, rhash, row)
