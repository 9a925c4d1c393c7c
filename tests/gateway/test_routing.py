"""ModelResolver: how a classifier's label becomes a deployed model (design.md section 1)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ModelNotFound
from gateway.metrics import Metrics
from gateway.routing import ModelResolver
from router.cascade import Cascade, CascadeOptions
from tests.router.fakes import FakeClassifier

CONFIG = """
[router]
policy = "embedding-only"

[[oracles]]
name = "oracle-din"
default_model = "euclid-asm"

[[oracles]]
name = "oracle-nayru"

[[oracles]]
name = "oracle-farore"

[[backends]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"

[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "up"

[[models]]
name = "koume-compress"
oracle = "oracle-din"
deployed = false
fallbacks = ["euclid-asm"]

[[models]]
name = "kaepora-teacher"
oracle = "oracle-nayru"
deployed = false

[[models]]
name = "master-sword"
oracle = "system"
backend = "up"
"""


def resolver(label="euclid-asm", *, config=CONFIG, metrics=None, **fake):
    cfg = parse_config(config)
    fake_clf = FakeClassifier(label, **fake)
    cascade = Cascade(CascadeOptions(policy="embedding-only"), embedding=fake_clf)
    return ModelResolver(cfg, cascade=cascade, metrics=metrics), fake_clf


def chat(text="a prompt"):
    return {"model": "oracle-council", "messages": [{"role": "user", "content": text}]}


async def test_deployed_specialist_is_served_as_classified():
    r, _ = resolver("seph-tilesmith", task=None)
    d = await r.decide("oracle-council", chat())
    assert (d.model, d.specialist, d.router) == ("seph-tilesmith", "seph-tilesmith", "embedding")


async def test_undeployed_specialist_goes_to_its_sibling_then_master_sword():
    r, _ = resolver("koume-compress", task=None)
    d = await r.decide("oracle-council", chat())
    assert (d.model, d.specialist, d.router) == ("euclid-asm", "koume-compress", "embedding")
    assert "koume-compress is not deployed, serving euclid-asm" in d.reason
    r, _ = resolver("kaepora-teacher", task=None)
    assert (await r.decide("oracle-council", chat())).model == "master-sword"
    r, _ = resolver("saria-voice", task=None)  # not in this registry at all
    assert (await r.decide("oracle-council", chat())).model == "master-sword"


async def test_out_of_scope_goes_to_master_sword_else_the_default():
    r, _ = resolver("out-of-scope", task=None)
    d = await r.decide("oracle-council", chat())
    assert (d.model, d.specialist) == ("master-sword", "out-of-scope")
    no_ms = CONFIG.replace('name = "master-sword"\noracle = "system"\nbackend = "up"',
                           'name = "master-sword"\noracle = "system"\ndeployed = false')
    r, _ = resolver("out-of-scope", task=None, config=no_ms)
    assert (await r.decide("oracle-council", chat())).model == "euclid-asm"  # first deployed = default


async def test_a_model_named_directly_skips_the_router():
    r, fake = resolver("seph-tilesmith")
    d = await r.decide("euclid-asm", chat())
    assert (d.model, d.router) == ("euclid-asm", "direct") and fake.calls == 0
    d = await r.decide("koume-compress", chat())
    assert (d.model, d.router) == ("euclid-asm", "fallback") and fake.calls == 0
    with pytest.raises(ModelNotFound):
        await r.decide("ganon", chat())


async def test_oracle_names_route_within_the_oracle():
    r, _ = resolver("euclid-asm", confidence=0.9)  # best overall is euclid-asm, but not in oracle-farore
    d = await r.decide("oracle-farore", chat())
    assert d.oracle == "oracle-farore" and d.specialist == "saria-voice" and d.model == "master-sword"
    d = await r.decide("oracle-din", chat())
    assert (d.model, d.task_type) == ("euclid-asm", "asm_debug")


async def test_router_failures_serve_the_default_model_and_are_counted():
    metrics = Metrics()
    r, _ = resolver(fail=True, metrics=metrics)
    d = await r.decide("oracle-council", chat())
    assert (d.model, d.router) == ("master-sword", "fallback") and "scripted failure" in d.reason
    d = await r.decide("oracle-council", chat("   "))
    assert d.router == "fallback" and "no user text" in d.reason
    text = metrics.render().decode()
    assert 'oracle_router_decisions_total{router="fallback",specialist="master-sword"} 2.0' in text


async def test_an_unexpected_router_bug_never_fails_the_request(monkeypatch):
    r, _ = resolver()

    async def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(r.cascade, "classify", boom)
    d = await r.decide("oracle-council", chat())
    assert d.router == "fallback" and d.model == "master-sword"


async def test_policy_direct_never_builds_a_cascade():
    cfg = parse_config(CONFIG.replace('policy = "embedding-only"', 'policy = "direct"'))
    r = ModelResolver(cfg)
    assert r.cascade is None
    d = await r.decide("oracle-council", chat())
    assert d.router == "direct" and d.model == "master-sword"
    assert (await r.decide("oracle-din", chat())).model == "euclid-asm"
