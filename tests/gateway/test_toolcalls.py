"""Tool calls Qwen2.5-Coder writes as text: the parser on its own, then through the gateway with
the official ``openai`` SDK as the judge (the loopback upstream's ``qwen-tools`` and
``qwen-json`` models answer the way Qwen2.5-Coder does behind a server without a parser)."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.toolcalls import StreamRewriter, ToolCallScanner, parse_text, requested_tools, rewrite_completion
from tests.conftest import ThreadedUpstream
from tests.serving import serve

NAMES = frozenset({"hex-read", "dungeon-list-sprites"})
CALL = '{"name": "hex-read", "arguments": {"address": "0x7EF3C5"}}'


def names(calls) -> list[str]:
    return [c.name for c in calls]


# -- the parser ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, content, calls", [
    (f"<tool_call>\n{CALL}\n</tool_call>", "", ["hex-read"]),
    (f"Reading it.\n<tool_call>{CALL}</tool_call>", "Reading it.\n", ["hex-read"]),
    (f"<tool_call>{CALL}</tool_call>\n<tool_call>"
     '{"name": "dungeon-list-sprites", "arguments": {"room": "0x12"}}</tool_call>', "\n",
     ["hex-read", "dungeon-list-sprites"]),
    (CALL, "", ["hex-read"]),
    (f"  {CALL}\n", "", ["hex-read"]),
    (f"```json\n{CALL}\n```", "", ["hex-read"]),
    (f"[{CALL}, {CALL}]", "", ["hex-read", "hex-read"]),
    (f"{CALL}\n{CALL}", "", ["hex-read", "hex-read"]),
    ('{"name": "hex-read", "arguments": "{\\"address\\": \\"1\\"}"}', "", ["hex-read"]),  # arguments as text
    ('{"name": "hex-read", "parameters": {"address": "1"}}', "", ["hex-read"]),
    ('{"type": "function", "function": {"name": "hex-read", "arguments": {}}}', "", ["hex-read"]),
    (f"<tool_call>{CALL}", "", ["hex-read"]),  # the model stopped before the closing tag
])
def test_calls_are_recognised_and_removed(text, content, calls):
    out, found = parse_text(text, NAMES)
    assert out == content and names(found) == calls


@pytest.mark.parametrize("text", [
    "LDA #$01\nSTA $00",
    '{"text_response": "hi", "tool_calls": [{"tool_name": "hex-read", "args": {"address": "1"}}]}',  # YAZE's own
    '{"name": "teleport", "arguments": {}}',  # not a tool of the request
    '<tool_call>{"name": "teleport", "arguments": {}}</tool_call>',
    "<tool_call>not json</tool_call>",
    f"{CALL} and some words after it",
    '{"name": "hex-read", "arguments": [1, 2]}',
    "```asm\nJSL Hook\n```",
    "[1, 2, 3]",
    "a < b, and <tool",
    "",
])
def test_other_text_is_left_alone(text):
    assert parse_text(text, NAMES) == (text, [])


def feed_in_pieces(text: str, size: int) -> tuple[str, list[str]]:
    scanner = ToolCallScanner(NAMES)
    out, calls = [], []
    for i in range(0, len(text), size):
        piece, found = scanner.feed(text[i:i + size])
        out.append(piece)
        calls += found
    piece, found = scanner.finish()
    return "".join(out) + piece, names(calls + found)


@pytest.mark.parametrize("text", [
    f"I will read it.\n<tool_call>\n{CALL}\n</tool_call>\nDone.",
    CALL,
    f"```json\n[{CALL}]\n```",
    '{"text_response": "a JSON answer that is not a call"}',
    "Plain prose, with a < sign and a <b>tag</b>.",
    f"<tool_call>{CALL}",
    "```asm\nLDA #$01\n```",
])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 1000])
def test_streamed_text_in_any_pieces_gives_the_same_result(text, size):
    whole_text, whole_calls = parse_text(text, NAMES)
    assert feed_in_pieces(text, size) == (whole_text, names(whole_calls))


def test_plain_text_streams_without_delay():
    scanner = ToolCallScanner(NAMES)
    assert scanner.feed("Hello") == ("Hello", [])
    assert scanner.feed(" there <to") == (" there ", [])  # a possible tag is held back...
    assert scanner.feed("ggle>") == ("<toggle>", [])  # ...and let go once it is not one
    assert scanner.feed(f"<tool_call>{CALL}</tool_call>")[1][0].name == "hex-read"  # a call as soon as it closes


def test_json_that_is_not_a_call_is_let_go_early():
    scanner = ToolCallScanner(NAMES)
    assert scanner.feed('{"text_') == ("", [])
    assert scanner.feed('response": "hi') == ('{"text_response": "hi', [])


def test_requested_tools():
    tool = {"type": "function", "function": {"name": "hex-read"}}
    assert requested_tools({"tools": [tool]}) == {"hex-read"}
    assert requested_tools({"tools": [tool], "tool_choice": "none"}) is None
    assert requested_tools({"tools": []}) is None and requested_tools({}) is None


def test_rewrite_completion_leaves_native_calls_alone():
    native = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": CALL, "tool_calls": [{"id": "x", "type": "function",
                                                              "function": {"name": "hex-read", "arguments": "{}"}}]}}]}
    assert rewrite_completion(json.loads(json.dumps(native)), NAMES) == native
    text = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": CALL}}]}
    out = rewrite_completion(text, NAMES)["choices"][0]
    assert out["finish_reason"] == "tool_calls" and out["message"]["content"] is None
    call = out["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and json.loads(call["function"]["arguments"]) == {"address": "0x7EF3C5"}


def test_stream_rewriter_moves_calls_into_deltas():
    rewrite = StreamRewriter(NAMES)

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": "c", "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [rewrite(chunk({"role": "assistant", "content": ""}))]
    out += [rewrite(chunk({"content": piece})) for piece in ("<tool", "_call>", CALL, "</tool_call>")]
    out.append(rewrite(chunk({}, "stop")))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1] is None and out[2] is None and out[3] is None  # nothing to say while it is held
    calls = out[4]["choices"][0]["delta"]["tool_calls"]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "hex-read"
    assert out[5]["choices"][0]["finish_reason"] == "tool_calls"


# -- through the gateway, judged by the openai SDK ----------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "dungeon-list-sprites", "description": "sprites of a room",
                                           "parameters": {"type": "object",
                                                          "properties": {"room": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def client():
    with ThreadedUpstream() as up:
        toml = f"""
[[backends]]
name = "up"
kind = "openai"
base_url = "{up.base_url}"

[[models]]
name = "qwen-tags"
oracle = "oracle-din"
backend = "up"
upstream_model = "qwen-tools"

[[models]]
name = "qwen-bare"
oracle = "oracle-din"
backend = "up"
upstream_model = "qwen-json"
"""
        with serve(toml) as gw, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as c:
            yield c


@pytest.mark.parametrize("model, content", [("qwen-tags", "Let me look."), ("qwen-bare", None)])
def test_text_calls_become_native_tool_calls(client, model, content):
    r = client.chat.completions.create(model=model, tools=TOOLS, messages=[{"role": "user", "content": "room 12?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == content
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "dungeon-list-sprites"
    assert json.loads(call.function.arguments) == {"room": "room-1"}


@pytest.mark.parametrize("model", ["qwen-tags", "qwen-bare"])
def test_text_calls_become_native_tool_calls_when_streaming(client, model):
    chunks = list(client.chat.completions.create(model=model, tools=TOOLS, stream=True,
                                                 messages=[{"role": "user", "content": "room 12?"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in text and "dungeon-list-sprites" not in text
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [d.function.name for d in deltas] == ["dungeon-list-sprites"]
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"room": "room-1"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_leaves_the_text(client):
    r = client.chat.completions.create(model="qwen-tags", tools=TOOLS, tool_choice="none",
                                       messages=[{"role": "user", "content": "room 12?"}])
    assert "<tool_call>" in r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_a_tool_result_gets_a_plain_answer(client):
    messages = [{"role": "user", "content": "room 12?"},
                {"role": "assistant", "content": "Let me look."},
                {"role": "user", "content": '[TOOL RESULT for dungeon-list-sprites] {"sprites": 3}'}]
    for stream in (False, True):
        r = client.chat.completions.create(model="qwen-tags", tools=TOOLS, messages=messages, stream=stream)
        if stream:
            chunks = list(r)
            assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "Room 0x12 has 3 sprites."
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            assert r.choices[0].message.content == "Room 0x12 has 3 sprites." and not r.choices[0].message.tool_calls
