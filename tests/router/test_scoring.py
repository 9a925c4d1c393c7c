"""router/scoring.py: every figure of the routing report, checked on hand-worked examples."""

import pytest

from router.scoring import CROSS, oracle_target, prf, score

GOLD = ["euclid-asm", "saria-voice", "master-sword", "out-of-scope", "impa-archivist", "master-sword"]
PRED = ["euclid-asm", "zelda-scribe", "master-sword", "master-sword", "nayru-lorekeeper", "saria-voice"]
CROSS_FLAGS = [False, False, True, True, False, False]


def test_accuracies_on_a_hand_worked_example():
    r = score(GOLD, PRED, pred_cross=CROSS_FLAGS)
    assert r["n"] == 6
    assert r["accuracy"] == round(2 / 6, 4)                 # euclid-asm and the first master-sword
    assert r["served_accuracy"] == round(3 / 6, 4)          # + out-of-scope served by master-sword
    # strict oracle targets: din, farore, cross, oos, nayru, cross vs din, farore, cross, cross, nayru, farore
    assert r["oracle_accuracy"] == round(4 / 6, 4)
    # the decision's oracle field: cross-domain and out-of-scope are both "system"
    assert r["served_oracle_accuracy"] == round(5 / 6, 4)
    assert r["single_domain_oracle_accuracy"] == 1.0        # the three single-specialist prompts
    # cross-domain: tp 1, fp 1 (out-of-scope flagged), fn 1 (the master-sword sent to saria-voice)
    assert r["cross_domain"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_confusion_and_per_class():
    r = score(GOLD, PRED, pred_cross=CROSS_FLAGS)
    labels = r["labels"]
    m = r["confusion"]
    assert m[labels.index("saria-voice")][labels.index("zelda-scribe")] == 1
    assert m[labels.index("master-sword")][labels.index("saria-voice")] == 1
    assert sum(map(sum, m)) == 6
    assert r["per_class"]["master-sword"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["per_class"]["euclid-asm"]["f1"] == 1.0


def test_cross_flag_defaults_to_the_master_sword_label():
    r = score(["master-sword", "euclid-asm"], ["master-sword", "master-sword"])
    assert r["cross_domain"] == prf(1, 1, 0)
    assert r["oracle_accuracy"] == 0.5


def test_task_type_accuracy_counts_misrouted_asm_as_a_miss():
    r = score(["euclid-asm", "euclid-asm", "saria-voice"], ["euclid-asm", "kaepora-teacher", "saria-voice"],
              gold_tasks=["asm_hook", "asm_doc", None], pred_tasks=["asm_hook", None, None])
    assert r["task_type_accuracy"] == 0.5


def test_oracle_targets():
    assert oracle_target("seph-tilesmith") == "oracle-din"
    assert oracle_target("master-sword") == CROSS
    assert oracle_target("saria-voice", cross_domain=True) == CROSS
    assert oracle_target("out-of-scope") == "out-of-scope"


def test_bad_input_is_an_error():
    with pytest.raises(ValueError):
        score([], [])
    with pytest.raises(ValueError):
        score(["euclid-asm"], [])
