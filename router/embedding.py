"""The embedding classifier: a sentence-transformers encoder with scikit-learn heads on top.

Features of one prompt: its sentence embedding (MiniLM by default, weighted ``embedding_weight``),
the hand-made lexicon, code-shape and two-task features of router/features.py
(``lexicon_weight``), char n-gram TF-IDF (2-5 characters within word bounds), which catches
spellings such as ``lc_lz2``, ``$7EF3C5`` or ``{WINDOW 02}`` that the sentence model tokenises
into noise, word 1-2-gram TF-IDF (``write the lines``, ``item description``, ``$7EF3C5``), and,
for each route label, how close the prompt's embedding is to that label's nearest training
prompts (the mean cosine of the ``knn_k`` closest, weighted ``knn_weight``): a new prompt that
paraphrases a known one is recognised even where a linear head cannot draw the line.

Heads (logistic regressions, whose probabilities are calibrated well enough here that the
thresholds tuned on validation folds carry over; see ``router train``'s metadata):

- ``labels``: the 13 route labels (11 specialists, master-sword, out-of-scope);
- ``oracles``: one binary head per oracle, trained on every prompt's ``domains`` ("does this
  prompt need oracle-din?"); two oracles above ``cross_domain_threshold`` make a prompt
  cross-domain even when ``labels`` prefers a specialist, and a second oracle below
  ``cross_domain_floor`` vetoes a master-sword that ``labels`` prefers (Classifier.decide);
- ``task_types``: the five euclid-asm task types, trained on the euclid-asm prompts.

A classifier is a folder written by router/train.py: ``heads.joblib`` and ``metadata.json``
(data hash, label counts, validation scores, tuned thresholds, encoder model, library versions).
``EmbeddingClassifier.open()`` with no path uses the default classifier, trained on the
shipped router/data/train.jsonl the first time it is needed on a machine and cached.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.base import Classifier, Scores
from router.errors import ClassifierUnavailable
from router.taxonomy import ORACLE_NAMES, ROUTE_LABELS

log = logging.getLogger("oracle_council.router")

HEADS_FILE = "heads.joblib"
METADATA_FILE = "metadata.json"


@dataclass
class Heads:
    """Everything fitted on the training data; pickled with joblib beside its metadata."""

    char_tfidf: Any            # sklearn TfidfVectorizer (analyzer="char_wb") or None
    labels: Any                # LogisticRegression over the route labels
    oracles: list[Any]         # one binary LogisticRegression per ORACLE_NAMES entry
    task_types: Any            # LogisticRegression over the euclid-asm task types
    embedding_weight: float
    lexicon_weight: float
    word_tfidf: Any = None     # sklearn TfidfVectorizer (word 1-2-grams) or None
    knn: "NearestLabels | None" = None  # the training prompts' embeddings, by label
    knn_weight: float = 0.0

    def features(self, texts: Sequence[str], vectors: Any, *, knn_block: Any = None) -> Any:
        """The feature matrix of ``texts``. ``knn_block``: the nearest-label block computed by the
        caller (training computes it out of fold, so a prompt is never its own neighbour)."""
        import numpy as np
        from scipy.sparse import csr_matrix, hstack

        from router import features

        lex = np.asarray([features.extract(t) for t in texts], dtype=np.float64)
        blocks = [csr_matrix(np.asarray(vectors, dtype=np.float64) * self.embedding_weight),
                  csr_matrix(lex * self.lexicon_weight)]
        if self.char_tfidf is not None:
            blocks.append(self.char_tfidf.transform(texts))
        if getattr(self, "word_tfidf", None) is not None:  # absent from heads pickled before it existed
            blocks.append(self.word_tfidf.transform(texts))
        if getattr(self, "knn", None) is not None and self.knn_weight > 0:
            if knn_block is None:
                knn_block = self.knn.similarities(vectors)
            blocks.append(csr_matrix(np.asarray(knn_block, dtype=np.float64) * self.knn_weight))
        return hstack(blocks, format="csr")

    def predict(self, texts: Sequence[str], vectors: Any) -> tuple[Any, Any, Any]:
        """(label probabilities, oracle probabilities, task-type probabilities), one row per text."""
        import numpy as np

        X = self.features(texts, vectors)
        labels = self.labels.predict_proba(X)
        oracles = np.column_stack([h.predict_proba(X)[:, 1] for h in self.oracles])
        tasks = self.task_types.predict_proba(X)
        return labels, oracles, tasks


class NearestLabels:
    """Unit-norm embeddings of labelled prompts; ``similarities(vectors)`` gives, for each route
    label, the mean cosine between each vector and its ``k`` closest prompts of that label."""

    def __init__(self, vectors: Any, labels: Sequence[str], k: int) -> None:
        import numpy as np

        if k < 1:
            raise ValueError("k must be at least 1")
        self.vectors = np.asarray(vectors, dtype=np.float32)
        labels = np.asarray(list(labels))
        self.k = k
        # column indices of each route label's prompts, in ROUTE_LABELS order (empty: no prompts)
        self.index = [np.flatnonzero(labels == label) for label in ROUTE_LABELS]

    def similarities(self, vectors: Any) -> Any:
        import numpy as np

        sims = np.asarray(vectors, dtype=np.float32) @ self.vectors.T
        out = np.zeros((sims.shape[0], len(self.index)), dtype=np.float64)
        for j, idx in enumerate(self.index):
            if len(idx) == 0:
                continue
            k = min(self.k, len(idx))
            out[:, j] = np.partition(sims[:, idx], len(idx) - k, axis=1)[:, -k:].mean(axis=1)
        return out


class EmbeddingClassifier(Classifier):
    name = "embedding"

    def __init__(self, encoder: Callable[[Sequence[str]], Any], heads: Heads, metadata: dict[str, Any], *,
                 cross_domain_threshold: float | None = None) -> None:
        self.encoder = encoder
        self.folder: Path | None = None  # where it was loaded from
        self.heads = heads
        self.metadata = metadata
        tuned = metadata.get("thresholds", {})
        self.cross_domain_threshold = (cross_domain_threshold if cross_domain_threshold is not None
                                       else float(tuned.get("cross_domain", 0.5)))
        self.master_sword_threshold = tuned.get("master_sword")
        self.cross_domain_floor = tuned.get("cross_domain_floor")
        self.out_of_scope_threshold = tuned.get("out_of_scope")
        self._labels = [str(c) for c in heads.labels.classes_]
        self._tasks = [str(c) for c in heads.task_types.classes_]

    @classmethod
    def open(cls, path: str | Path | None = None, *, model: str | None = None, threads: int | None = 1,
             home: str | Path | None = None, cross_domain_threshold: float | None = None,
             data: str | Path | None = None) -> "EmbeddingClassifier":
        """Load the classifier folder ``path``; without one, the default classifier (trained on
        first use on this machine, for ``model``, and cached under ``home``)."""
        if path is None:
            from router.train import ensure_default

            path = ensure_default(model=model, home=home, data=data, threads=threads)
        folder = Path(path)
        heads, metadata = load_folder(folder)
        from router.encoders import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(metadata.get("model"), threads=threads,
                                             max_seq_length=metadata.get("max_seq_length", 256),
                                             quantize=bool(metadata.get("quantized", False)))
        log.info("embedding classifier %s (model %s)", folder, encoder.model_name)
        classifier = cls(encoder, heads, metadata, cross_domain_threshold=cross_domain_threshold)
        classifier.folder = folder
        return classifier

    def score(self, texts: Sequence[str]) -> list[Scores]:
        texts = list(texts)
        if not texts:
            return []
        labels, oracles, tasks = self.heads.predict(texts, self.encoder(texts))
        out = []
        for i in range(len(texts)):
            out.append(Scores(labels=dict(zip(self._labels, map(float, labels[i]), strict=True)),
                              oracles=dict(zip(ORACLE_NAMES, map(float, oracles[i]), strict=True)),
                              task_types=dict(zip(self._tasks, map(float, tasks[i]), strict=True))))
        return out


def load_folder(folder: Path) -> tuple[Heads, dict[str, Any]]:
    """Read ``heads.joblib`` and ``metadata.json``; a missing or broken folder is ClassifierUnavailable."""
    try:
        import joblib
        import sklearn
    except ImportError as exc:
        raise ClassifierUnavailable(f"scikit-learn is not installed ({exc}); "
                                    "install the embedding extra: pip install 'oracle-council[embed]'") from None
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text("utf-8"))
        trained_with = metadata.get("versions", {}).get("scikit-learn")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a version mismatch is reported once, below, in our words
            heads = joblib.load(folder / HEADS_FILE)
    except FileNotFoundError as exc:
        raise ClassifierUnavailable(f"{folder} is not a trained classifier ({exc.filename} is missing); "
                                    "make one with: oracle-council router train --output DIR") from None
    except Exception as exc:  # unpickling errors come in every type
        raise ClassifierUnavailable(f"cannot load the classifier in {folder}: {exc}; retrain it with "
                                    "oracle-council router train") from None
    if trained_with and trained_with != sklearn.__version__:
        log.warning("classifier %s was trained with scikit-learn %s, running %s: retrain it if it misbehaves",
                    folder, trained_with, sklearn.__version__)
    if not isinstance(heads, Heads):
        raise ClassifierUnavailable(f"{folder / HEADS_FILE} does not hold router heads; retrain it")
    return heads, metadata
