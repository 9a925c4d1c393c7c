"""Exact and near-duplicate removal; the higher-quality sample of a pair is the one kept.

*Rank*: a sample with a quality score outranks one without; a higher score outranks a lower one;
between equals, the one read first wins. Both passes walk the samples best first and keep a sample
unless it duplicates one already kept, so the survivor of any duplicate group is its best sample.

- exact: the SHA-256 of the normalized prompt (every turn before the answer: the instruction and
  input of an Alpaca record, the user turn of one-turn ChatML), compared over the whole run;
- near: cosine similarity of the prompts' embeddings (all-MiniLM-L6-v2, offline, through
  ``router.encoders``), compared among samples of the same specialist. A pair is a duplicate when
  the cosine reaches the stricter (higher) of the two domains' thresholds
  (``training.domains.near_dup_rule``: asm/oracle 0.85, text 0.82, errors 0.80, default 0.88).
  Similarities are computed a block of samples at a time against everything kept so far, so memory
  stays at block x kept floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from training.dataprep.records import Sample, prompt_hash
from training.domains import near_dup_threshold_for

BLOCK = 256


@dataclass
class Duplicate:
    sample: Sample
    of: Sample
    cosine: float | None = None  # None for exact duplicates


def rank_key(sample: Sample) -> tuple[int, float, int]:
    """Sort ascending on this to get best first."""
    q = sample.quality_score
    return (0 if q is not None else 1, -(q or 0.0), sample.index)


def exact_dedup(samples: Sequence[Sample]) -> tuple[list[Sample], list[Duplicate]]:
    kept: dict[str, Sample] = {}
    dups: list[Duplicate] = []
    for s in sorted(samples, key=rank_key):
        s.prompt_key = s.prompt_key or prompt_hash(s)
        first = kept.get(s.prompt_key)
        if first is None:
            kept[s.prompt_key] = s
        else:
            dups.append(Duplicate(s, first))
    return sorted(kept.values(), key=lambda s: s.index), dups


def near_dedup(samples: Sequence[Sample], embed: Callable[[list[str]], Any], *,
               progress: Callable[[int], None] | None = None) -> tuple[list[Sample], list[Duplicate]]:
    """``embed(texts) -> (n, dim)`` L2-normalised rows. ``progress(k)`` is told of k more embedded texts."""
    import numpy as np

    groups: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=rank_key):
        groups.setdefault(s.specialist, []).append(s)
    kept_all: list[Sample] = []
    dups: list[Duplicate] = []
    for group in groups.values():
        if len(group) < 2:
            kept_all.extend(group)
            if progress:
                progress(len(group))
            continue
        kept_vecs = np.zeros((0, 0), dtype=np.float32)
        kept_thr = np.zeros(0, dtype=np.float32)
        kept: list[Sample] = []
        for start in range(0, len(group), BLOCK):
            block = group[start:start + BLOCK]
            vecs = np.asarray(embed([s.prompt_text for s in block]), dtype=np.float32)
            if progress:
                progress(len(block))
            thr = np.array([near_dup_threshold_for(s.domain) for s in block], dtype=np.float32)
            # against everything kept so far, vectorized: the best hit per row, if any
            prev_best = np.full(len(block), -2.0, dtype=np.float32)
            prev_arg = np.zeros(len(block), dtype=np.int64)
            if kept:
                sims = vecs @ kept_vecs.T
                sims = np.where(sims >= np.maximum(thr[:, None], kept_thr[None, :]), sims, -2.0)
                prev_arg = sims.argmax(axis=1)
                prev_best = sims[np.arange(len(block)), prev_arg]
            inner = vecs @ vecs.T
            block_kept: list[int] = []
            for i, s in enumerate(block):
                best_cos, best_s = -2.0, None
                if prev_best[i] > -2.0:
                    best_cos, best_s = float(prev_best[i]), kept[int(prev_arg[i])]
                if block_kept:  # against the samples kept earlier in this block
                    idx = np.asarray(block_kept)
                    c = np.where(inner[i, idx] >= np.maximum(thr[i], thr[idx]), inner[i, idx], -2.0)
                    j = int(c.argmax())
                    if c[j] > best_cos:
                        best_cos, best_s = float(c[j]), block[block_kept[j]]
                if best_s is not None:
                    dups.append(Duplicate(s, best_s, round(best_cos, 4)))
                else:
                    block_kept.append(i)
            kept.extend(block[i] for i in block_kept)
            new_vecs = vecs[block_kept]
            kept_vecs = new_vecs if kept_vecs.size == 0 else np.vstack([kept_vecs, new_vecs])
            kept_thr = np.concatenate([kept_thr, thr[block_kept]])
        kept_all.extend(kept)
    return sorted(kept_all, key=lambda s: s.index), dups
