"""The Gemini classifier through the real google-genai client, against a local server that
speaks the generateContent wire format (tests/router/gemini_wire.py): Gemini itself cannot be
reached from here."""

from __future__ import annotations

import time

import pytest

from router.cascade import Cascade, CascadeOptions
from router.errors import ClassifierFailed, ClassifierTimeout, ClassifierUnavailable, InvalidAnswer
from router.gemini import GeminiClassifier, parse_answer
from tests.router.fakes import FakeClassifier
from tests.router.gemini_wire import GeminiWireServer, Reply

ASM = {"specialist": "euclid-asm", "task_type": "asm_debug", "cross_domain": False, "oracles": ["oracle-din"],
       "confidence": 0.88, "reason": "a crash in 65816 code"}


@pytest.fixture
def wire():
    with GeminiWireServer() as server:
        yield server


def gemini(wire, **kw):
    return GeminiClassifier("test-key", base_url=wire.url, **{"timeout": 1.0, "retries": 2, **kw})


async def test_success_sends_schema_taxonomy_and_temperature_zero(wire):
    wire.script(Reply(json=ASM))
    clf = gemini(wire)
    d = clf.decide(await clf.ascore("why does LDA $7EF3C5 crash after my hook"))
    assert (d.specialist, d.task_type, d.router, d.cross_domain) == ("euclid-asm", "asm_debug", "gemini", False)
    assert d.confidence == pytest.approx(0.88) and "a crash in 65816 code" in d.reason
    sent = wire.requests[-1]
    assert sent["method"] == "generateContent" and sent["model"] == "gemini-2.5-flash"
    config = sent["body"]["generationConfig"]
    assert config["temperature"] == 0 and config["responseMimeType"] == "application/json"
    assert "kotake-decompress" in config["responseSchema"]["properties"]["specialist"]["enum"]
    assert "farore-questweaver" in str(sent["body"]["systemInstruction"])
    assert "$7EF3C5" in str(sent["body"]["contents"])


async def test_cross_domain_answer_becomes_master_sword(wire):
    wire.script(Reply(json={**ASM, "specialist": "saria-voice", "cross_domain": True,
                            "oracles": ["oracle-din", "oracle-farore"]}))
    clf = gemini(wire)
    d = clf.decide(await clf.ascore("write his lines and the asm"))
    assert d.cross_domain and d.specialist == "master-sword"


@pytest.mark.parametrize("reply, match", [
    (Reply(text="{not json"), "malformed JSON"),
    (Reply(json={**ASM, "specialist": "ganon-asm"}), "unknown label"),
    (Reply(json={**ASM, "task_type": "asm_golf"}), "unknown task type"),
    (Reply(json={**ASM, "oracles": ["oracle-ganon"]}), "unknown oracles"),
    (Reply(json={**ASM, "confidence": "high"}), "numeric confidence"),
])
async def test_invalid_answers_are_rejected_not_passed_on(wire, reply, match):
    wire.script(reply)
    with pytest.raises(InvalidAnswer, match=match):
        await gemini(wire).ascore("x")
    assert len(wire.requests) == 1  # an invalid answer is not retried


async def test_429_then_success_is_retried(wire):
    wire.script(Reply(status=429), Reply(status=503), Reply(json=ASM))
    clf = gemini(wire)
    assert clf.decide(await clf.ascore("x")).specialist == "euclid-asm"
    assert len(wire.requests) == 3


async def test_retries_are_bounded_and_4xx_is_not_retried(wire):
    wire.script(Reply(status=500), Reply(status=500))
    with pytest.raises(ClassifierFailed, match="HTTP 500"):
        await gemini(wire, retries=1).ascore("x")
    assert len(wire.requests) == 2
    wire.script(Reply(status=403))
    with pytest.raises(ClassifierFailed, match="HTTP 403"):
        await gemini(wire).ascore("x")
    assert len(wire.requests) == 3


async def test_timeout_bounds_the_whole_classification(wire):
    wire.script(Reply(delay=2.0, json=ASM), Reply(delay=2.0, json=ASM))
    start = time.perf_counter()
    with pytest.raises(ClassifierTimeout):
        await gemini(wire, timeout=0.5).ascore("x")
    assert time.perf_counter() - start < 1.5


async def test_circuit_opens_after_repeated_failures(wire):
    wire.script(*[Reply(status=400)] * 3)
    clf = gemini(wire, breaker_failures=3, breaker_reset=60)
    for _ in range(3):
        with pytest.raises(ClassifierFailed):
            await clf.ascore("x")
    with pytest.raises(ClassifierUnavailable, match="circuit is open"):
        await clf.ascore("x")
    assert len(wire.requests) == 3


def test_sync_score_uses_the_same_client(wire):
    wire.script(Reply(status=429), Reply(json=ASM))
    assert gemini(wire).score(["x"])[0].labels == {"euclid-asm": 0.88}


def test_no_key_means_unavailable():
    with pytest.raises(ClassifierUnavailable, match="API key"):
        GeminiClassifier(None)
    with pytest.raises(InvalidAnswer):
        parse_answer("[]")


def cascade(wire, policy="gemini-first", embedding=None, **kw):
    options = CascadeOptions(policy=policy, gemini_api_key="test-key", gemini_base_url=wire.url, gemini_timeout=0.5,
                             gemini_retries=1, **kw)
    return Cascade(options, embedding=embedding or FakeClassifier("kaepora-teacher", task=None))


@pytest.mark.parametrize("reply", [Reply(text="oops"), Reply(json={**ASM, "specialist": "ganon-asm"}),
                                   Reply(status=500), Reply(delay=1.5, json=ASM)])
async def test_gemini_first_falls_back_to_embedding_on_any_failure(wire, reply):
    wire.script(reply, reply)
    c = cascade(wire)
    d = await c.classify("explain what a palette is")
    assert d.router == "embedding" and d.specialist == "kaepora-teacher" and "gemini:" in d.reason
    assert len(c.cache) == 0  # a decision made after a failure is not cached: Gemini is asked again next time


async def test_gemini_first_uses_gemini_and_caches(wire):
    wire.script(Reply(json=ASM))
    c = cascade(wire)
    assert (await c.classify("my hook crashes")).router == "gemini"
    again = await c.classify("My hook  CRASHES")
    assert again.router == "cache" and again.specialist == "euclid-asm" and len(wire.requests) == 1


async def test_embedding_first_asks_gemini_only_when_unsure(wire):
    sure = cascade(wire, policy="embedding-first", embedding=FakeClassifier("zelda-scribe", confidence=0.9))
    assert (await sure.classify("item text for the boomerang")).router == "embedding"
    assert wire.requests == []
    unsure = cascade(wire, policy="embedding-first", embedding=FakeClassifier("zelda-scribe", confidence=0.3))
    d = await unsure.classify("the hook crashes")
    assert d.router == "gemini" and "embedding unsure" in d.reason
    wire.script(Reply(status=500), Reply(status=500))
    d = await unsure.classify("another unsure one")
    assert d.router == "embedding" and d.specialist == "zelda-scribe"


async def test_within_an_oracle_gemini_outside_it_falls_back(wire):
    wire.script(Reply(json=ASM))
    d = await cascade(wire).classify("x", within="oracle-nayru")
    assert d.router == "embedding" and d.oracle == "oracle-nayru"
