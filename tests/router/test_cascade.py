"""The cascade without Gemini: embedding-only, failures, the cache, and never failing."""

from __future__ import annotations

import pytest

from router.cascade import Cascade, CascadeOptions
from router.errors import NoDecision
from tests.router.fakes import FakeClassifier


async def test_embedding_only_decides_and_caches():
    fake = FakeClassifier("seph-tilesmith", task=None)
    c = Cascade(CascadeOptions(policy="embedding-only", gemini_api_key="ignored"), embedding=fake)
    assert c.gemini is None
    first = await c.classify("convert png to 4bpp")
    assert first.router == "embedding" and first.specialist == "seph-tilesmith"
    assert (await c.classify("Convert PNG to 4bpp")).router == "cache"
    assert (await c.classify("convert png to 4bpp", within="oracle-din")).router == "embedding"
    assert fake.calls == 2


async def test_no_text_or_failing_classifier_is_no_decision_with_reasons():
    c = Cascade(CascadeOptions(policy="gemini-first"), embedding=FakeClassifier(fail=True))
    with pytest.raises(NoDecision, match="no user text"):
        await c.classify("   ")
    with pytest.raises(NoDecision, match="gemini skipped: no Gemini API key; embedding: scripted failure"):
        await c.classify("hello")


async def test_missing_classifier_folder_is_reported_not_raised(tmp_path):
    events = []
    c = Cascade(CascadeOptions(policy="embedding-only", classifier=str(tmp_path / "nothing")),
                on_event=lambda *e: events.append(e))
    c.load()
    assert "not a trained classifier" in c.embedding_error
    with pytest.raises(NoDecision, match="not a trained classifier"):
        await c.classify("hello")
    assert events == [("embedding", "ClassifierUnavailable")]
    c.close()


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        CascadeOptions(policy="random")


async def test_status_says_what_each_classifier_is_doing(tmp_path, monkeypatch):
    import threading

    ready = Cascade(CascadeOptions(policy="embedding-only"), embedding=FakeClassifier("seph-tilesmith", task=None))
    await ready.classify("convert png to 4bpp")
    assert ready.status() == {"policy": "embedding-only", "embedding": "ready", "gemini": "not used (embedding-only)",
                              "cached_decisions": 1}
    broken = Cascade(CascadeOptions(policy="gemini-first", classifier=str(tmp_path / "nothing")))
    broken.load()
    status = broken.status()
    assert status["embedding"].startswith("unavailable: ") and "not a trained classifier" in status["embedding"]
    assert status["gemini"] == "unavailable: no Gemini API key"
    broken.close()

    release = threading.Event()  # a classifier that takes its time to load (the first run trains one)
    slow = Cascade(CascadeOptions(policy="embedding-only"))
    monkeypatch.setattr(slow, "_load_embedding", lambda: release.wait(10))
    assert slow.status()["embedding"] == "not loaded"
    slow.start()
    assert slow.status()["embedding"] == "loading"
    release.set()
    slow.close()
