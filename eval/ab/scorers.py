"""Per-sample scores: pure functions of (domain, answer, reference), plus the embedding helper.

Primary score, one per sample, in [0, 1]:

- **code** (the reference answer contains a 65816 block: asm domains and cross-domain answers
  with code): ``0.5 * assembles + 0.5 * chrF``, where ``assembles`` is 1 only when the answer's
  code assembles (``eval.ab.asm``; "no code" and "does not assemble" are 0). When the checker
  cannot judge the code (``unchecked``: a macro, an ``incsrc``), the score is chrF alone.
- **prose** (every other reference): cosine similarity of the answer's and the reference's
  all-MiniLM-L6-v2 embeddings, clipped to [0, 1].

Components reported beside it: chrF (sacrebleu, 0-1), embedding similarity, the ASM status.
``passed``: the primary score reaches the domain's threshold (``training.domains.threshold_for``).
"""

from __future__ import annotations

from collections.abc import Sequence

from eval.ab import asm

CODE = "code"
PROSE = "prose"


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (sacrebleu defaults: character 6-grams, beta 2), scaled to 0-1."""
    from sacrebleu.metrics import CHRF

    if not (hypothesis or "").strip() or not (reference or "").strip():
        return 0.0
    return float(CHRF().sentence_score(hypothesis, [reference]).score) / 100.0


def kind_for(reference: str) -> str:
    return CODE if asm.asm_blocks(reference) else PROSE


def primary_score(kind: str, *, chrf_score: float, embed_sim: float | None, asm_status: str | None) -> float:
    if kind == CODE:
        if asm_status == asm.UNCHECKED:
            return chrf_score
        return 0.5 * (1.0 if asm_status == asm.ASSEMBLES else 0.0) + 0.5 * chrf_score
    return min(1.0, max(0.0, embed_sim if embed_sim is not None else 0.0))


def score_answer(domain: str, answer: str | None, reference: str, *, embed_sim: float | None) -> dict:
    """Every score of one answer. ``embed_sim`` comes from ``embedding_similarities`` (batched)."""
    from training.domains import threshold_for

    threshold, key = threshold_for(domain)
    kind = kind_for(reference)
    if answer is None:  # the request failed: scored as the worst answer, and flagged
        return {"kind": kind, "primary": 0.0, "chrf": 0.0, "embed": None, "asm_status": None, "asm_error": None,
                "asm_placeholders": [], "threshold": threshold, "threshold_key": key, "passed": False}
    check = asm.check_answer(answer) if kind == CODE else None
    c = chrf(answer, reference)
    p = primary_score(kind, chrf_score=c, embed_sim=embed_sim, asm_status=check.status if check else None)
    return {"kind": kind, "primary": p, "chrf": c, "embed": embed_sim,
            "asm_status": check.status if check else None, "asm_error": check.error if check else None,
            "asm_placeholders": check.placeholders if check else [], "threshold": threshold,
            "threshold_key": key, "passed": p >= threshold}


_ENCODER = None


def embedding_similarities(pairs: Sequence[tuple[str, str]], *, model: str | None = None) -> list[float]:
    """Cosine similarity of each (answer, reference) pair with the offline all-MiniLM-L6-v2."""
    global _ENCODER
    if not pairs:
        return []
    import numpy as np

    from router.encoders import SentenceTransformerEncoder

    if _ENCODER is None or (model and _ENCODER.model_name != model):
        _ENCODER = SentenceTransformerEncoder(model, threads=None)
    texts = [t or "" for pair in pairs for t in pair]
    vecs = np.asarray(_ENCODER(texts), dtype=np.float32)
    a, b = vecs[0::2], vecs[1::2]
    return [float(x) for x in (a * b).sum(axis=1)]
