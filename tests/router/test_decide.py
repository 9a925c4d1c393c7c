"""Classifier.decide: one rule for every classifier (best label, cross-domain, within an oracle)."""

from __future__ import annotations

import pytest

from router.base import Scores, create
from router.errors import NoDecision
from router.taxonomy import ROUTE_LABELS, SPECIALISTS, oracle_of, specialists_of
from tests.router.fakes import FakeClassifier


def test_taxonomy_is_the_design():
    assert len(SPECIALISTS) == 11 and len(ROUTE_LABELS) == 13
    assert specialists_of("oracle-nayru") == ("nayru-lorekeeper", "impa-archivist", "kaepora-teacher")
    assert oracle_of("zelda-scribe") == "oracle-farore" and oracle_of("out-of-scope") == "system"


def test_best_label_with_task_type():
    clf = FakeClassifier("euclid-asm", task="asm_hook")
    d = clf.decide(clf.score(["x"])[0])
    assert (d.model, d.specialist, d.oracle, d.task_type, d.cross_domain, d.router) == \
        ("euclid-asm", "euclid-asm", "oracle-din", "asm_hook", False, "embedding")
    assert d.confidence == pytest.approx(0.9)


def test_two_oracles_make_a_prompt_cross_domain():
    clf = FakeClassifier("saria-voice", oracles={"oracle-farore": 0.95, "oracle-din": 0.8, "oracle-nayru": 0.1})
    clf.cross_domain_threshold = 0.7
    d = clf.decide(clf.score(["x"])[0])
    assert d.cross_domain and d.specialist == "master-sword" and d.model == "master-sword" and d.oracle == "system"
    assert "oracle-din" in d.reason and d.task_type is None
    clf.cross_domain_threshold = 0.9
    assert clf.decide(clf.score(["x"])[0]).specialist == "saria-voice"


def test_out_of_scope_is_served_by_master_sword_but_keeps_its_label():
    clf = FakeClassifier("out-of-scope", oracles={"oracle-din": 0.9, "oracle-farore": 0.9})
    d = clf.decide(clf.score(["x"])[0])
    assert (d.model, d.specialist, d.cross_domain) == ("master-sword", "out-of-scope", False)


def test_within_an_oracle_only_its_specialists_compete():
    clf = FakeClassifier("euclid-asm", confidence=0.9)
    d = clf.decide(clf.score(["x"])[0], within="oracle-farore")
    assert d.specialist == "saria-voice" and d.oracle == "oracle-farore" and not d.cross_domain
    with pytest.raises(NoDecision):
        clf.decide(Scores(labels={"euclid-asm": 1.0}), within="oracle-nayru")


def test_registry_builds_registered_classifiers():
    assert isinstance(create("fake", label="zelda-scribe"), FakeClassifier)
    with pytest.raises(ValueError, match="unknown classifier"):
        create("nope")


def _ms_scores(second_oracle: float) -> Scores:
    labels = {"master-sword": 0.6, "saria-voice": 0.3, "euclid-asm": 0.1}
    return Scores(labels=labels, oracles={"oracle-farore": 0.99, "oracle-din": second_oracle, "oracle-nayru": 0.01})


def test_the_floor_vetoes_master_sword_when_only_one_oracle_is_needed():
    clf = FakeClassifier()
    clf.cross_domain_threshold = 1.01  # the oracle heads never decide alone
    assert clf.decide(_ms_scores(0.02)).specialist == "master-sword"  # no floor: the best label wins
    clf.cross_domain_floor = 0.1
    d = clf.decide(_ms_scores(0.02))
    assert (d.specialist, d.cross_domain) == ("saria-voice", False)
    d = clf.decide(_ms_scores(0.4))  # a plausible second oracle: master-sword stands
    assert d.specialist == "master-sword" and d.cross_domain
    clf.master_sword_threshold = 0.5  # the P(master-sword) rule is vetoed the same way
    assert clf.decide(_ms_scores(0.02)).specialist == "saria-voice"
    assert clf.decide(_ms_scores(0.4)).specialist == "master-sword"


def test_out_of_scope_threshold_decides_out_of_scope_alone():
    clf = FakeClassifier()  # a bare Classifier: no threshold, the argmax decides
    scores = Scores(labels={"kaepora-teacher": 0.5, "out-of-scope": 0.3, "master-sword": 0.2},
                    oracles={"oracle-nayru": 0.6, "oracle-din": 0.05, "oracle-farore": 0.02})
    assert clf.decide(scores).specialist == "kaepora-teacher"
    clf.out_of_scope_threshold = 0.25  # reached: out-of-scope wins over a higher specialist
    d = clf.decide(scores)
    assert (d.specialist, d.model, d.cross_domain) == ("out-of-scope", "master-sword", False)
    assert d.confidence == pytest.approx(0.3)  # the classifier's probability, not the rule's
    clf.out_of_scope_threshold = 0.4  # not reached: the best in-scope label wins
    assert clf.decide(scores).specialist == "kaepora-teacher"
    below = Scores(labels={"out-of-scope": 0.45, "saria-voice": 0.35, "master-sword": 0.2})
    clf.out_of_scope_threshold = 0.5  # the argmax is out-of-scope but under the threshold
    assert clf.decide(below).specialist == "saria-voice"
