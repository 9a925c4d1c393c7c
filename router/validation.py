"""Fitting the embedding classifier's heads, and measuring them by cross-validation.

``fit_heads`` fits the three heads of router/embedding.py on labelled rows and their
embeddings. ``cross_validate`` predicts every row from heads fitted on the other folds, tunes the
cross-domain thresholds on those out-of-fold predictions (maximising specialist accuracy +
cross-domain F1; the grid is small and listed below), then, with those fixed, the out-of-scope
threshold, and scores the tuned rule per class. The
scores are therefore slightly optimistic for the thresholds, and honest for everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.base import Classifier, Scores
from router.embedding import Heads, NearestLabels
from router.scoring import score
from router.taxonomy import MASTER_SWORD, ORACLE_NAMES, OUT_OF_SCOPE, ROUTE_LABELS, oracle_of

# P(master-sword) thresholds (None: master-sword only when it is the best label) and
# second-oracle thresholds (above 1: the oracle heads never decide alone), simplest first
MASTER_SWORD_GRID: tuple[float | None, ...] = (None, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)
CROSS_DOMAIN_GRID: tuple[float, ...] = (1.01, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
# the second oracle's score below which master-sword is vetoed (None: never)
CROSS_DOMAIN_FLOOR_GRID: tuple[float | None, ...] = (None, 0.1, 0.3)
# P(out-of-scope) at or above which a prompt is out-of-scope (None: when it is the best label)
OUT_OF_SCOPE_GRID: tuple[float | None, ...] = (None, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2)


def _domains(row: dict[str, Any]) -> list[str]:
    if row.get("domains") is not None:
        return list(row["domains"])
    return [] if row["label"] == OUT_OF_SCOPE else [row["label"]]


def fit_heads(rows: Sequence[dict[str, Any]], vectors: Any, config: Any) -> Heads:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = [r["prompt"] for r in rows]
    tfidf = words = None
    if config.char_ngrams[1] > 0:
        tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(config.char_ngrams), min_df=config.char_min_df,
                                sublinear_tf=True, dtype=np.float64).fit(texts)
    if config.word_ngrams[1] > 0:
        # a token may start with $ or # and hold dots: $7EF3C5, #$20, lda.l, lc_lz2
        words = TfidfVectorizer(analyzer="word", ngram_range=tuple(config.word_ngrams), min_df=config.word_min_df,
                                sublinear_tf=True, dtype=np.float64, token_pattern=r"(?u)[$#]?\b\w[\w.]*\b").fit(texts)
    heads = Heads(tfidf, None, [], None, config.embedding_weight, config.lexicon_weight, words)
    knn_block = None
    if config.knn_weight > 0:
        # each training prompt's nearest-label block comes from the other inner folds' prompts,
        # as a new prompt's comes from prompts that are not itself
        from sklearn.model_selection import KFold

        vectors = np.asarray(vectors)
        labels = [r["label"] for r in rows]
        knn_block = np.zeros((len(rows), len(ROUTE_LABELS)))
        for inner_train, inner_test in KFold(config.folds, shuffle=True, random_state=config.seed).split(rows):
            near = NearestLabels(vectors[inner_train], [labels[i] for i in inner_train], config.knn_k)
            knn_block[inner_test] = near.similarities(vectors[inner_test])
        heads.knn = NearestLabels(vectors, labels, config.knn_k)
        heads.knn_weight = config.knn_weight
    X = heads.features(texts, vectors, knn_block=knn_block)

    def lr() -> Any:
        return LogisticRegression(C=config.C, solver="newton-cg", max_iter=1000)

    heads.labels = lr().fit(X, [r["label"] for r in rows])
    for oracle in ORACLE_NAMES:
        target = [int(any(oracle_of(d) == oracle for d in _domains(r))) for r in rows]
        heads.oracles.append(lr().fit(X, target))
    asm = [i for i, r in enumerate(rows) if r.get("task_type")]
    heads.task_types = lr().fit(X[asm], [rows[i]["task_type"] for i in asm])
    return heads


class _Rule(Classifier):
    """Classifier.decide with given thresholds, to score out-of-fold predictions exactly as served."""

    name = "embedding"

    def __init__(self, master_sword: float | None, cross_domain: float, floor: float | None = None,
                 out_of_scope: float | None = None) -> None:
        self.master_sword_threshold = master_sword
        self.cross_domain_threshold = cross_domain
        self.cross_domain_floor = floor
        self.out_of_scope_threshold = out_of_scope

    def score(self, texts: Sequence[str]) -> list[Scores]:  # pragma: no cover - never called
        raise NotImplementedError


def cross_validate(rows: Sequence[dict[str, Any]], vectors: Any, config: Any) -> dict[str, Any]:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    texts = [r["prompt"] for r in rows]
    labels = [r["label"] for r in rows]
    scores: list[Scores | None] = [None] * len(rows)
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    for train_idx, test_idx in folds.split(np.zeros(len(rows)), labels):
        heads = fit_heads([rows[i] for i in train_idx], vectors[train_idx], config)
        p_labels, p_oracles, p_tasks = heads.predict([texts[i] for i in test_idx], vectors[test_idx])
        classes = [str(c) for c in heads.labels.classes_]
        tasks = [str(c) for c in heads.task_types.classes_]
        for k, i in enumerate(test_idx):
            scores[i] = Scores(labels={c: float(p) for c, p in zip(classes, p_labels[k])},
                               oracles=dict(zip(ORACLE_NAMES, map(float, p_oracles[k]))),
                               task_types={t: float(p) for t, p in zip(tasks, p_tasks[k])})

    gold_tasks = [r.get("task_type") for r in rows]

    gold_cross = [label == MASTER_SWORD for label in labels]

    def measure(rule: _Rule) -> tuple[float, Any]:
        """The objective (specialist accuracy + cross-domain F1) of one rule, and its decisions."""
        decisions = [rule.decide(s) for s in scores]  # type: ignore[arg-type]
        correct = tp = fp = fn = 0
        for gold, gold_x, d in zip(labels, gold_cross, decisions):
            correct += gold == d.specialist
            tp += gold_x and d.cross_domain
            fp += not gold_x and d.cross_domain
            fn += gold_x and not d.cross_domain
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return correct / len(labels) + f1, decisions

    # the cross-domain thresholds first, then the out-of-scope one with them fixed (simplest first:
    # a later setting must do strictly better to be chosen)
    best: tuple[float, tuple[float | None, float, float | None, float | None], Any] | None = None
    for floor in CROSS_DOMAIN_FLOOR_GRID:
        for ms in MASTER_SWORD_GRID:
            for cd in CROSS_DOMAIN_GRID:
                objective, decisions = measure(_Rule(ms, cd, floor))
                if best is None or objective > best[0] + 1e-9:
                    best = (objective, (ms, cd, floor, None), decisions)
    assert best is not None
    ms, cd, floor, _ = best[1]
    for oos in OUT_OF_SCOPE_GRID[1:]:
        objective, decisions = measure(_Rule(ms, cd, floor, oos))
        if objective > best[0] + 1e-9:
            best = (objective, (ms, cd, floor, oos), decisions)
    _, (ms, cd, floor, oos), decisions = best
    report = score(labels, [d.specialist for d in decisions], pred_cross=[d.cross_domain for d in decisions],
                   gold_tasks=gold_tasks, pred_tasks=[d.task_type for d in decisions])
    report.pop("labels")
    report.pop("confusion")
    return {"method": f"{config.folds}-fold stratified cross-validation (seed {config.seed})",
            "thresholds": {"master_sword": ms, "cross_domain": cd, "cross_domain_floor": floor,
                           "out_of_scope": oos}, **report,
            "labels_scored": list(ROUTE_LABELS)}
