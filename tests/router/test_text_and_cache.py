"""What is classified (router.text) and the decision cache (LRU + TTL)."""

from __future__ import annotations

from router.cache import DecisionCache
from router.decision import RoutingDecision
from router.text import TextPolicy, cache_key, routed_text


def user(text):
    return {"role": "user", "content": text}


def test_last_user_turn_is_classified_without_system_or_tool_results():
    body = {"messages": [{"role": "system", "content": "You are YAZE's assistant " * 50},
                         user("Long question about converting 4bpp tiles to 2bpp for the HUD " * 3),
                         {"role": "assistant", "content": "Sure, here is how"},
                         user("[TOOL RESULT for palette-get] {...}")]}
    assert routed_text(body).startswith("Long question about converting 4bpp")
    assert "YAZE" not in routed_text(body)


def test_a_short_follow_up_gets_the_earlier_user_turns():
    body = {"messages": [user("Design a three-room puzzle with a switch and a moving block."),
                         {"role": "assistant", "content": "Room 1: ..."}, user("now the asm for it")]}
    assert routed_text(body) == "Design a three-room puzzle with a switch and a moving block.\nnow the asm for it"
    long_last = "x" * 200
    assert routed_text({"messages": [user("earlier"), user(long_last)]}) == long_last
    tight = TextPolicy(short_turn=160, context_chars=10)
    assert routed_text(body, tight) == "ing block.\nnow the asm for it"


def test_parts_prompts_and_limits():
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is"},
                                                       {"type": "image_url", "image_url": {"url": "x"}},
                                                       {"type": "text", "text": "CGRAM?"}]}]}
    assert routed_text(parts) == "what is\nCGRAM?"
    assert routed_text({"prompt": "LDA $00"}) == "LDA $00"
    assert routed_text({"prompt": ["first", "second"]}) == "first"
    assert routed_text({"messages": []}) == ""
    assert len(routed_text({"prompt": "y" * 10_000})) == TextPolicy().max_chars


def test_cache_key_folds_case_and_spaces_and_keeps_scope():
    assert cache_key("Convert  PNG\nto 4bpp") == cache_key("convert png to 4bpp ")
    assert cache_key("x", "oracle-din") != cache_key("x")


def decision(name="euclid-asm"):
    return RoutingDecision(model=name, specialist=name, oracle="oracle-din", router="embedding")


def test_cache_is_lru_with_ttl():
    now = [0.0]
    cache = DecisionCache(size=2, ttl=10, clock=lambda: now[0])
    cache.put("a", decision("a"))
    cache.put("b", decision("b"))
    assert cache.get("a").model == "a"        # a is now the most recent
    cache.put("c", decision("c"))             # evicts b
    assert cache.get("b") is None and cache.get("c").model == "c"
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 1
    assert (cache.hits, cache.misses) == (2, 2)


def test_cache_can_be_turned_off():
    for cache in (DecisionCache(size=0), DecisionCache(ttl=0)):
        cache.put("a", decision())
        assert cache.get("a") is None


def test_the_default_classifier_key_follows_data_and_feature_code(tmp_path, monkeypatch):
    from router import train

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "x", "label": "out-of-scope"}\n')
    key = train.default_key(data, "m")
    assert train.default_key(data, "m") == key  # deterministic
    data.write_text('{"prompt": "y", "label": "out-of-scope"}\n')
    assert train.default_key(data, "m") != key
    key = train.default_key(data, "m")
    assert "features.py" in train.RECIPE_MODULES
    monkeypatch.setattr(train, "RECIPE_MODULES", tuple(m for m in train.RECIPE_MODULES if m != "features.py"))
    assert train.default_key(data, "m") != key  # the feature code is part of the key
