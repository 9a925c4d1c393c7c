"""Two baselines that ``oracle-council eval routing`` reports beside the real router.

- ``KeywordRouter``: keyword rules in the manner of the users' old MoE router (a routing table of
  keywords per expert, the expert with the most hits wins). The table is router/features.py's
  lexicon. No hit at all: out-of-scope (their router sent those to its default model).
  Cross-domain: the two best oracles both have at least ``cross_hits`` hits.
- ``CentroidRouter``: nearest centroid. Each label's mean embedding over the training prompts
  (``centroids.npz``, written by ``router train`` beside the classifier) and the same encoder;
  the closest centroid by cosine wins, and master-sword means cross-domain.

Both return ``(label, cross_domain, task_type)``; neither predicts task types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from router.features import lexicon_hits
from router.taxonomy import MASTER_SWORD, ORACLE_NAMES, OUT_OF_SCOPE, oracle_of

Prediction = tuple[str, bool, str | None]


class KeywordRouter:
    name = "keyword"

    def __init__(self, cross_hits: int = 2) -> None:
        self.cross_hits = cross_hits

    def __call__(self, text: str) -> Prediction:
        hits = lexicon_hits(text)
        per_oracle = dict.fromkeys(ORACLE_NAMES, 0)
        for name, n in hits.items():
            per_oracle[oracle_of(name)] += n
        ranked = sorted(per_oracle.values(), reverse=True)
        if ranked[0] == 0:
            return OUT_OF_SCOPE, False, None
        if ranked[1] >= self.cross_hits:
            return MASTER_SWORD, True, None
        return max(hits, key=hits.__getitem__), False, None


class CentroidRouter:
    name = "centroid"

    def __init__(self, encoder: Callable[[Sequence[str]], Any], centroids_file: str | Path) -> None:
        import numpy as np

        data = np.load(centroids_file)
        self.labels = [str(x) for x in data["labels"]]
        vectors = data["vectors"]
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.encoder = encoder

    def __call__(self, text: str) -> Prediction:
        v = self.encoder([text])[0]
        label = self.labels[int((self.vectors @ v).argmax())]
        return label, label == MASTER_SWORD, None
