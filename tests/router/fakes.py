"""A scripted classifier for tests of the cascade and the gateway: fixed scores, counted calls.

It is a real ``Classifier`` (the same ``decide``), registered under the name ``fake`` through the
real registry, so only the scoring is made up.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.base import CLASSIFIERS, Classifier, Scores, register
from router.errors import ClassifierFailed


class FakeClassifier(Classifier):
    name = "embedding"

    def __init__(self, label: str = "euclid-asm", *, confidence: float = 0.9, oracles: dict | None = None,
                 task: str | None = "asm_debug", fail: bool = False) -> None:
        self.label = label
        self.confidence = confidence
        self.oracles = oracles or {}
        self.task = task
        self.fail = fail
        self.calls = 0

    def score(self, texts: Sequence[str]) -> list[Scores]:
        self.calls += len(texts)
        if self.fail:
            raise ClassifierFailed("scripted failure")
        rest = (1 - self.confidence) / 12
        labels = {"euclid-asm": rest, "seph-tilesmith": rest, "saria-voice": rest, "kaepora-teacher": rest,
                  "out-of-scope": rest}
        labels[self.label] = self.confidence
        return [Scores(labels=dict(labels), oracles=dict(self.oracles),
                       task_types={self.task: 1.0} if self.task else {}) for _ in texts]


if "fake" not in CLASSIFIERS:
    register("fake", FakeClassifier)
