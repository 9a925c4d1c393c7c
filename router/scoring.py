"""How routing decisions are scored against labelled prompts: pure functions, no I/O.

Used by the trainer's validation (router/validation.py) and by ``oracle-council eval routing``.

Scoring rules (the same everywhere, and in README.md):

- *specialist accuracy* is strict over the 13 route labels: a prompt labelled ``out-of-scope``
  must be predicted ``out-of-scope`` (the decision's ``specialist``), a cross-domain prompt
  ``master-sword``. Both are served by master-sword, so ``served_accuracy`` also reports the
  accuracy with the two merged (what a user notices);
- *oracle accuracy* compares coarse targets: the oracle for a specialist, ``cross-domain`` for
  master-sword, ``out-of-scope`` for out-of-scope. ``single_domain_oracle_accuracy`` is the
  same over the single-specialist prompts only. ``served_oracle_accuracy`` compares the
  decision's own ``oracle`` field instead, where cross-domain and out-of-scope prompts are both
  ``system`` (both are served by master-sword);
- *cross-domain* precision/recall/F1: positive = labelled master-sword; predicted positive =
  the decision's ``cross_domain`` flag;
- *task type accuracy*: over the prompts labelled euclid-asm; a prompt routed elsewhere counts
  as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.taxonomy import MASTER_SWORD, OUT_OF_SCOPE, ROUTE_LABELS, SYSTEM_ORACLE, oracle_of

CROSS = "cross-domain"


def oracle_target(label: str, cross_domain: bool | None = None) -> str:
    if cross_domain or label == MASTER_SWORD:
        return CROSS
    if label == OUT_OF_SCOPE:
        return OUT_OF_SCOPE
    return oracle_of(label)


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)}


def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] = ROUTE_LABELS) -> list[list[int]]:
    """``m[i][j]``: prompts labelled ``labels[i]`` predicted ``labels[j]``."""
    index = {label: i for i, label in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        m[index[g]][index[p]] += 1
    return m


def score(gold: Sequence[str], pred: Sequence[str], *, pred_cross: Sequence[bool] | None = None,
          gold_tasks: Sequence[str | None] | None = None, pred_tasks: Sequence[str | None] | None = None,
          labels: Sequence[str] = ROUTE_LABELS) -> dict[str, Any]:
    """Every number of the routing report for one router's predictions."""
    n = len(gold)
    if n == 0 or len(pred) != n:
        raise ValueError("score() needs as many predictions as labels, and at least one")
    cross = list(pred_cross) if pred_cross is not None else [p == MASTER_SWORD for p in pred]
    correct = sum(g == p for g, p in zip(gold, pred))

    def merged(label: str) -> str:
        return MASTER_SWORD if label == OUT_OF_SCOPE else label

    served = sum(merged(g) == merged(p) for g, p in zip(gold, pred))
    o_gold = [oracle_target(g) for g in gold]
    o_pred = [oracle_target(p, c) for p, c in zip(pred, cross)]
    single = [i for i, g in enumerate(gold) if g not in (MASTER_SWORD, OUT_OF_SCOPE)]
    tp = sum(g == MASTER_SWORD and c for g, c in zip(gold, cross))
    fp = sum(g != MASTER_SWORD and c for g, c in zip(gold, cross))
    fn = sum(g == MASTER_SWORD and not c for g, c in zip(gold, cross))
    per_class = {}
    for label in labels:
        ltp = sum(g == label and p == label for g, p in zip(gold, pred))
        lfp = sum(g != label and p == label for g, p in zip(gold, pred))
        lfn = sum(g == label and p != label for g, p in zip(gold, pred))
        per_class[label] = {**prf(ltp, lfp, lfn), "support": sum(g == label for g in gold)}
    report: dict[str, Any] = {
        "n": n,
        "accuracy": round(correct / n, 4),
        "served_accuracy": round(served / n, 4),
        "oracle_accuracy": round(sum(a == b for a, b in zip(o_gold, o_pred)) / n, 4),
        "served_oracle_accuracy": round(sum(oracle_of(g) == (SYSTEM_ORACLE if c else oracle_of(p))
                                            for g, p, c in zip(gold, pred, cross)) / n, 4),
        "single_domain_oracle_accuracy": round(sum(o_gold[i] == o_pred[i] for i in single) / len(single), 4)
        if single else None,
        "cross_domain": prf(tp, fp, fn),
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion(gold, pred, labels),
    }
    if gold_tasks is not None and pred_tasks is not None:
        asm = [i for i, t in enumerate(gold_tasks) if t]
        report["task_type_accuracy"] = (round(sum(gold_tasks[i] == pred_tasks[i] for i in asm) / len(asm), 4)
                                        if asm else None)
    return report
