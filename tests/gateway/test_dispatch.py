"""Pieces of the dispatcher that need no server: the circuit breaker and request defaults."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.dispatch import CircuitBreaker, prepare_body


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_then_half_opens_for_one_probe():
    clock = Clock()
    b = CircuitBreaker(threshold=2, reset_after=10, clock=clock)
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.t = 10
    assert b.state == "half_open"
    assert b.allow() and not b.allow(), "only one probe while half-open"
    b.record_failure()
    assert b.state == "open"
    clock.t = 20
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_success_resets_the_failure_count():
    b = CircuitBreaker(threshold=2, reset_after=10, clock=Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


CFG = parse_config("""
[[backends]]
name = "b"
kind = "openai"
base_url = "http://x"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "b"
system_prompt = "You write Asar 65816."
parameters = { temperature = 0.2, max_tokens = 256 }
""")


def test_model_defaults_apply_only_where_the_client_set_none():
    m = CFG.model("euclid-asm")
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.9}
    out = prepare_body(m, body, "chat")
    assert out["temperature"] == 0.9 and out["max_tokens"] == 256
    assert out["messages"][0] == {"role": "system", "content": "You write Asar 65816."}
    assert body["messages"] == [{"role": "user", "content": "hi"}], "the client's body is not mutated"


def test_client_system_prompt_wins():
    m = CFG.model("euclid-asm")
    body = {"messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]}
    assert prepare_body(m, body, "chat")["messages"] == body["messages"]
    assert "messages" not in prepare_body(m, {"prompt": "x"}, "completion")
