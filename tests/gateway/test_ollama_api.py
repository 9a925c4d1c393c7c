"""The Ollama API as its clients see it: the official ``ollama`` client (sync and async) and
raw requests shaped exactly as YAZE sends them, against the real app over sockets.

Behind the gateway: the loopback OpenAI-compatible upstream (eval/loopback_upstream.py, a
scripted server, not a model) for most tests, and, for the acceptance test, the in-process
backend generating with a tiny model and an adapter our own trainer made. YAZE's parsing rules
(``yaze_reads_ollama``, ``yaze_reads_openai``) are restated below from what its Ollama and
OpenAI services do with an answer, and applied to ours.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import ollama
import pytest

from tests.conftest import ThreadedUpstream
from tests.serving import serve


def gateway_config(base_url: str, *, extra: str = "") -> str:
    models = {"euclid-asm": "echo", "seph-tilesmith": "echo", "tool-user": "tools", "qwen-coder": "qwen-tools",
              "qwen-json-coder": "qwen-json", "parrot": "parrot", "broken": "status-500", "refuser": "status-400",
              "cut-off": "truncated", "sleepy": "slow-2"}
    tables = "".join(f'\n[[models]]\nname = "{name}"\noracle = "oracle-din"\nbackend = "up"\nupstream_model = "{up}"\n'
                     for name, up in models.items())
    return f"""
[router]
default_model = "euclid-asm"

[[oracles]]
name = "oracle-din"
default_model = "euclid-asm"

[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = 0
{tables}{extra}"""


@pytest.fixture(scope="module")
def upstream():
    with ThreadedUpstream() as up:
        up.stats.keep_bodies = True
        yield up


@pytest.fixture(scope="module")
def gateway(upstream):
    with serve(gateway_config(upstream.base_url)) as gw:
        yield gw


@pytest.fixture
def client(gateway) -> ollama.Client:
    return ollama.Client(host=gateway.url, timeout=30)


def last_upstream_body(upstream) -> dict:
    return upstream.stats.bodies[-1]


# -- YAZE's side, restated ---------------------------------------------------------------------------

def yaze_finds_model(tags: dict, configured: str) -> bool:
    """YAZE's availability check: its configured name is a SUBSTRING of some listed name."""
    return any(configured in m["name"] for m in tags.get("models", []))


def yaze_reads_ollama(status: int, body: dict, *, chat: bool = True) -> dict:
    """What YAZE's Ollama service makes of an answer (HTTP 200 only; anything else is an error)."""
    assert status == 200, f"YAZE reports 'Ollama API error: HTTP {status}'"
    output = body["message"]["content"] if chat else body["response"]
    assert isinstance(output, str)
    try:
        parsed = json.loads(output)
    except json.JSONDecodeError:
        start, end = output.find("{"), output.rfind("}")
        if start < 0 or end <= start:
            return {"text_response": output, "warning": "no JSON object"}
        parsed = json.loads(output[start:end + 1])
    out = {"model": body.get("model")}
    if isinstance(parsed, dict):
        for key in ("text_response", "reasoning"):
            if isinstance(parsed.get(key), str):
                out[key] = parsed[key]
        out["tool_calls"] = [c for c in parsed.get("tool_calls") or [] if isinstance(c, dict) and "tool_name" in c]
        out["commands"] = [c for c in parsed.get("commands") or [] if isinstance(c, str)]
    return out


def yaze_reads_openai(status: int, body: dict) -> dict:
    """What YAZE's OpenAI service makes of an answer: fences stripped, JSON fields or raw text,
    native tool calls; an error when neither text nor calls came back."""
    assert status == 200 and "error" not in body, body
    message = body["choices"][0]["message"]
    out: dict = {"text_response": "", "tool_calls": []}
    content = message.get("content")
    if content is not None:
        text = content.strip()
        text = text[7:] if text.startswith("```json") else text[3:] if text.startswith("```") else text
        text = text[:-3] if text.endswith("```") else text
        try:
            parsed = json.loads(text.strip())
        except json.JSONDecodeError:
            out["text_response"] = text.strip()
        else:
            if isinstance(parsed, dict) and isinstance(parsed.get("text_response"), str):
                out["text_response"] = parsed["text_response"]
    for call in message.get("tool_calls") or []:
        args = json.loads(call["function"]["arguments"])
        assert isinstance(args, dict)
        out["tool_calls"].append({"tool_name": call["function"]["name"], "args": args})
    assert out["text_response"] or out["tool_calls"], "YAZE: 'No valid response extracted'"
    return out


YAZE_DEFAULT_OPTIONS = {"temperature": 0.1, "top_p": 0.92, "top_k": 40, "num_predict": 2048, "num_ctx": 4096}
YAZE_SYSTEM = "You are z3ed's assistant. Answer with JSON: text_response, reasoning, tool_calls, commands."


def yaze_ollama_body(model: str, messages: list[dict], **extra) -> dict:
    return {"model": model, "system": YAZE_SYSTEM, "stream": False, "format": "json", "messages": messages,
            "options": YAZE_DEFAULT_OPTIONS, **extra}


_FAMILIES = {
    "resource": ["list", "search", "show"],
    "emulator": ["step", "run", "pause", "reset", "read-memory", "write-memory", "set-breakpoint",
                 "get-registers"],
    "dungeon": ["list-sprites", "describe-room", "list-objects", "list-chests", "set-tag"],
    "overworld": ["find-tile", "describe-map", "list-warps", "list-sprites", "set-tile"],
    "hex": ["read", "write", "search", "diff"],
    "palette": ["get", "set", "export", "import"],
    "todo": ["add", "list", "complete", "remove", "clear", "show"],
}


def yaze_tools() -> list[dict]:
    """35 function tools in YAZE's style: families of commands whose arguments are all strings."""
    tools = []
    for family, verbs in _FAMILIES.items():
        for verb in verbs:
            tools.append({"type": "function", "function": {
                "name": f"{family}-{verb}", "description": f"{family} {verb.replace('-', ' ')}",
                "parameters": {"type": "object",
                               "properties": {"target": {"type": "string", "description": "what to act on"},
                                              "format": {"type": "string", "enum": ["json", "text"]}},
                               "required": ["target"]}}})
    assert len(tools) == 35
    return tools


# -- the official client: list, chat, generate, stream -------------------------------------------------

def test_list_shows_every_name_with_its_latest_tag(client):
    models = {m.model: m for m in client.list().models}
    assert {"euclid-asm:latest", "oracle-council:latest", "oracle-din:latest"} <= set(models)
    m = models["euclid-asm:latest"]
    assert m.digest and m.size == 0 and m.modified_at is not None
    assert m.details.format and m.details.family is not None


@pytest.mark.parametrize("configured", ["euclid-asm", "euclid-asm:latest", "oracle-council"])
def test_yaze_substring_check_finds_the_configured_name(gateway, configured):
    r = httpx.get(gateway.url + "/api/tags")
    assert r.status_code == 200
    assert yaze_finds_model(r.json(), configured)
    for m in r.json()["models"]:  # what YAZE reads besides the name
        assert isinstance(m["size"], int) and {"family", "parameter_size", "quantization_level"} <= set(m["details"])


def test_chat_non_stream(client, upstream):
    r = client.chat(model="euclid-asm", messages=[{"role": "user", "content": "LDA #$01"}])
    assert r.message.role == "assistant" and r.message.content == "echo: LDA #$01"
    assert r.model == "euclid-asm" and r.done is True and r.done_reason == "stop"
    assert r.prompt_eval_count == 7 and r.eval_count == 3
    assert r.total_duration > 0 and r.eval_duration > 0 and r.prompt_eval_duration > 0 and r.load_duration == 0
    assert last_upstream_body(upstream)["model"] == "echo"


def test_tagged_names_resolve_to_the_model(client):
    for name in ("euclid-asm:latest", "euclid-asm:q4", "oracle-council:latest", "oracle-din"):
        assert client.chat(model=name, messages=[{"role": "user", "content": "x"}]).model == "euclid-asm"


def test_chat_stream_is_ndjson_ending_in_done(client):
    parts = list(client.chat(model="euclid-asm", stream=True, messages=[{"role": "user", "content": "write a hook"}]))
    assert "".join(p.message.content for p in parts).strip() == "echo: write a hook"
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done is True and last.done_reason == "stop"
    assert last.eval_count == 4 and last.prompt_eval_count == 7
    assert last.total_duration >= last.eval_duration > 0 and last.prompt_eval_duration > 0


def test_raw_stream_lines_and_headers(gateway):
    with httpx.stream("POST", gateway.url + "/api/chat", json={
            "model": "euclid-asm", "messages": [{"role": "user", "content": "x"}]}) as r:  # stream defaults to true
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-oracle-model"] == "euclid-asm" and r.headers["x-oracle-backend"] == "up"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(lines[-1][key], int)
    assert all(line["done"] is False and "created_at" in line for line in lines[:-1])


def test_generate_with_system_and_stream(client, upstream):
    r = client.generate(model="euclid-asm", prompt="STA $00", system="Be terse.")
    assert r.response == "echo: STA $00" and r.done and r.done_reason == "stop"
    sent = last_upstream_body(upstream)["messages"]
    assert sent == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "STA $00"}]
    parts = list(client.generate(model="euclid-asm", prompt="JSL Hook", stream=True))
    assert "".join(p.response for p in parts).strip() == "echo: JSL Hook" and parts[-1].done


def test_raw_generate_goes_to_completions(client, upstream):
    r = client.generate(model="euclid-asm", prompt="LDA.l $7EF3C5", raw=True, options={"num_predict": 8})
    assert r.response == "echo: LDA.l $7EF3C5"
    sent = last_upstream_body(upstream)
    assert sent["prompt"] == "LDA.l $7EF3C5" and sent["max_tokens"] == 8 and "messages" not in sent


def test_options_map_to_the_backend(client, upstream):
    client.chat(model="euclid-asm", messages=[{"role": "user", "content": "x"}],
                options={"temperature": 0.1, "top_p": 0.92, "top_k": 40, "num_predict": 64, "num_ctx": 4096,
                         "stop": ["RTL"], "seed": 7, "repeat_penalty": 1.1, "min_p": 0.05})
    sent = last_upstream_body(upstream)
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["max_tokens"]) == (0.1, 0.92, 40, 64)
    assert sent["stop"] == ["RTL"] and sent["seed"] == 7 and sent["repetition_penalty"] == 1.1
    assert sent["min_p"] == 0.05
    assert sent["options"] == {"num_ctx": 4096}  # Ollama-only options travel for Ollama backends


def test_unlimited_num_predict_sets_no_limit(client, upstream):
    client.chat(model="euclid-asm", messages=[{"role": "user", "content": "x"}], options={"num_predict": -1})
    assert "max_tokens" not in last_upstream_body(upstream)


def test_empty_chat_loads_the_model(client):
    r = client.chat(model="euclid-asm", messages=[])
    assert r.done and r.done_reason == "load"
    r = client.generate(model="euclid-asm", prompt="")
    assert r.done and r.done_reason == "load"


def test_show_ps_and_version(client, gateway):
    shown = client.show("euclid-asm:latest")
    assert "tools" in shown.capabilities and shown.details is not None and shown.modelinfo is not None
    assert {m.model for m in client.ps().models} >= {"euclid-asm:latest", "tool-user:latest"}
    assert httpx.get(gateway.url + "/api/version").json()["version"]
    assert httpx.get(gateway.url + "/").text == "Ollama is running"


async def test_async_client(gateway):
    client = ollama.AsyncClient(host=gateway.url, timeout=30)
    listed, *answers = await asyncio.gather(
        client.list(), *(client.chat(model="euclid-asm", messages=[{"role": "user", "content": f"n{i}"}])
                         for i in range(10)))
    assert "euclid-asm:latest" in {m.model for m in listed.models}
    assert [a.message.content for a in answers] == [f"echo: n{i}" for i in range(10)]
    parts = [p async for p in await client.chat(model="seph-tilesmith", stream=True,
                                                messages=[{"role": "user", "content": "4bpp tile"}])]
    assert "".join(p.message.content for p in parts).strip() == "echo: 4bpp tile" and parts[-1].done
    gen = await client.generate(model="euclid-asm", prompt="hi", format="json")
    assert json.loads(gen.response) == {"text_response": "echo: hi"}
    parts = [p async for p in await client.generate(model="euclid-asm", prompt="yo", stream=True)]
    assert parts[-1].done_reason == "stop"


# -- format: "json" and schemas (the YAZE contract) -----------------------------------------------------

def test_format_json_wraps_plain_text(client, upstream):
    r = client.chat(model="euclid-asm", format="json", messages=[{"role": "user", "content": 'say "hi"\n'}])
    assert json.loads(r.message.content) == {"text_response": 'echo: say "hi"\n'}
    assert last_upstream_body(upstream)["response_format"] == {"type": "json_object"}


def test_format_json_passes_json_through_untouched(client):
    answer = '{"text_response": "Room 0x12", "commands": ["dungeon-describe-room --room 0x12"]}'
    r = client.chat(model="parrot", format="json", messages=[{"role": "user", "content": answer}])
    assert r.message.content == answer


def test_format_json_unfences(client):
    fenced = '```json\n{"text_response": "ok", "reasoning": "why"}\n```'
    r = client.chat(model="parrot", format="json", messages=[{"role": "user", "content": fenced}])
    assert json.loads(r.message.content) == {"text_response": "ok", "reasoning": "why"}


def test_format_json_stream_sends_checked_json(client):
    parts = list(client.chat(model="euclid-asm", format="json", stream=True,
                             messages=[{"role": "user", "content": "two words"}]))
    assert json.loads("".join(p.message.content for p in parts)) == {"text_response": "echo: two words "}
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_format_schema_becomes_json_schema(client, upstream):
    schema = {"type": "object", "properties": {"text_response": {"type": "string"}}, "required": ["text_response"]}
    r = client.chat(model="euclid-asm", format=schema, messages=[{"role": "user", "content": "x"}])
    assert json.loads(r.message.content)["text_response"] == "echo: x"
    assert last_upstream_body(upstream)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


# -- tools in Ollama's shape -------------------------------------------------------------------------

HEX_READ = {"type": "function", "function": {"name": "hex-read", "description": "read ROM bytes",
                                             "parameters": {"type": "object",
                                                            "properties": {"address": {"type": "string"}}}}}


def test_native_tool_calls_come_back_with_object_arguments(client, upstream):
    r = client.chat(model="tool-user", tools=[HEX_READ], messages=[{"role": "user", "content": "read $7EF3C5"}])
    call = r.message.tool_calls[0]
    assert call.function.name == "hex-read" and call.function.arguments == {"arg": "1"}
    assert last_upstream_body(upstream)["tools"] == [HEX_READ]


@pytest.mark.parametrize("model", ["qwen-coder", "qwen-json-coder"])
def test_text_tool_calls_become_ollama_tool_calls(client, model):
    r = client.chat(model=model, tools=[HEX_READ], messages=[{"role": "user", "content": "read it"}])
    assert [c.function.name for c in r.message.tool_calls] == ["hex-read"]
    assert r.message.tool_calls[0].function.arguments == {"address": "address-1"}
    assert "<tool_call>" not in r.message.content and "hex-read" not in r.message.content
    parts = list(client.chat(model=model, tools=[HEX_READ], stream=True,
                             messages=[{"role": "user", "content": "read it"}]))
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert [c.function.name for c in calls] == ["hex-read"] and parts[-1].done
    assert "<tool_call>" not in "".join(p.message.content for p in parts)


def test_tool_round_trip_in_ollama_shape(client, upstream):
    messages = [{"role": "user", "content": "read it"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "hex-read", "arguments": {"address": "0x7EF3C5"}}}]},
                {"role": "tool", "tool_name": "hex-read", "content": "02"}]
    r = client.chat(model="euclid-asm", tools=[HEX_READ], messages=messages)
    assert r.message.content.startswith("echo:")
    sent = last_upstream_body(upstream)["messages"]
    call = sent[1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"address": "0x7EF3C5"}
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "02"}


# -- YAZE, exactly as it sends ---------------------------------------------------------------------------

def test_yaze_ollama_chat_gets_json_with_text_response(gateway, upstream):
    body = yaze_ollama_body("euclid-asm", [{"role": "user", "content": "What does JSL do?"},
                                           {"role": "assistant", "content": '{"text_response": "A long call."}'},
                                           {"role": "user", "content": "And RTL?"}])
    r = httpx.post(gateway.url + "/api/chat", content=json.dumps(body), headers={"content-type": "application/json"},
                   timeout=60)
    read = yaze_reads_ollama(r.status_code, r.json())
    assert read["text_response"] == "echo: And RTL?" and read["model"] == "euclid-asm"
    assert "warning" not in read
    sent = last_upstream_body(upstream)
    assert sent["messages"][0] == {"role": "system", "content": YAZE_SYSTEM}
    assert sent["temperature"] == 0.1 and sent["max_tokens"] == 2048 and sent["options"] == {"num_ctx": 4096}


def test_yaze_ollama_generate_path(gateway):
    body = {"model": "euclid-asm", "system": YAZE_SYSTEM, "stream": False, "format": "json",
            "prompt": "user: list the sprites of room 0x12", "options": YAZE_DEFAULT_OPTIONS}
    r = httpx.post(gateway.url + "/api/generate", json=body, timeout=60)
    assert yaze_reads_ollama(r.status_code, r.json(), chat=False)["text_response"].endswith("room 0x12")


def test_yaze_structured_answer_reaches_it_intact(gateway):
    answer = ('{"text_response": "Placing the chest.", "reasoning": "room has space", '
              '"tool_calls": [{"tool_name": "dungeon-list-sprites", "args": {"room": "0x12"}}], '
              '"commands": ["dungeon-set-tag --room 0x12"]}')
    r = httpx.post(gateway.url + "/api/chat", json=yaze_ollama_body("parrot", [{"role": "user", "content": answer}]))
    read = yaze_reads_ollama(r.status_code, r.json())
    assert read["text_response"] == "Placing the chest." and read["reasoning"] == "room has space"
    assert read["tool_calls"] == [{"tool_name": "dungeon-list-sprites", "args": {"room": "0x12"}}]
    assert read["commands"] == ["dungeon-set-tag --room 0x12"]


def yaze_openai_messages(turns: int) -> list[dict]:
    history = [{"role": "system", "content": YAZE_SYSTEM}]
    for i in range(turns):
        history.append({"role": "user", "content": f"question {i}"})
        history.append({"role": "assistant", "content": json.dumps({"text_response": f"answer {i}"})})
    return history[:1] + history[-9:]  # system + the last turns, as YAZE trims them


@pytest.mark.parametrize("base", ["", "/v1", "/v1/v1"])
def test_yaze_openai_path_with_35_tools_gets_native_tool_calls(gateway, upstream, base):
    """OPENAI_BASE_URL with or without /v1, and older YAZE builds that add /v1 to a base ending in /v1."""
    assert httpx.get(f"{gateway.url}{base}/models").json()["data"]
    messages = [*yaze_openai_messages(6), {"role": "user", "content": "Which sprites are in room 0x12?"}]
    body = {"model": "qwen-coder", "messages": messages, "temperature": 0.7, "max_tokens": 2048,
            "tools": yaze_tools()}
    r = httpx.post(f"{gateway.url}{base}/chat/completions", json=body, timeout=60,
                   headers={"authorization": "Bearer unused"})
    read = yaze_reads_openai(r.status_code, r.json())
    assert read["tool_calls"] == [{"tool_name": "resource-list", "args": {"target": "target-1", "format": "format-1"}}]
    assert read["text_response"] == "Let me look."
    assert len(last_upstream_body(upstream)["tools"]) == 35


def test_yaze_openai_tool_results_are_user_messages(gateway, upstream):
    messages = [*yaze_openai_messages(2),
                {"role": "user", "content": "Which sprites are in room 0x12?"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": '[TOOL RESULT for dungeon-list-sprites] {"sprites": ["0x41", "0x42"]}'}]
    for model in ("qwen-coder", "qwen-json-coder", "tool-user"):
        r = httpx.post(gateway.url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": messages, "temperature": 0.7, "max_tokens": 2048, "tools": yaze_tools()})
        read = yaze_reads_openai(r.status_code, r.json())
        if model != "tool-user":  # the scripted Qwen answers the result in words, no new call
            assert read == {"text_response": "Room 0x12 has 3 sprites.", "tool_calls": []}
        sent = last_upstream_body(upstream)["messages"]
        assert sent[-1]["role"] == "user" and sent[-1]["content"].startswith("[TOOL RESULT for dungeon-list-sprites]")


def test_yaze_openai_plain_text_answer(gateway):
    r = httpx.post(gateway.url + "/chat/completions", json={
        "model": "euclid-asm", "messages": yaze_openai_messages(1) + [{"role": "user", "content": "hi"}],
        "temperature": 0.7, "max_tokens": 2048, "tools": yaze_tools()})
    assert yaze_reads_openai(r.status_code, r.json()) == {"text_response": "echo: hi", "tool_calls": []}


# -- errors: {"error": "..."} with a 4xx, never a 500 -----------------------------------------------------

@pytest.mark.parametrize("path, body, status", [
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}]}, 400),
    ("/api/chat", {"model": "", "messages": []}, 400),
    ("/api/chat", {"model": "ganon-asm", "messages": [{"role": "user", "content": "x"}]}, 404),
    ("/api/chat", {"model": "qwen2.5-coder:0.5b", "messages": [{"role": "user", "content": "x"}]}, 404),
    ("/api/chat", {"model": 3, "messages": []}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": "hello"}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user", "content": ["x"]}]}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "options": {"temperature": "hot"}}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "options": "fast"}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "format": "xml"}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "format": 42}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "stream": {"on": 1}}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user"}], "tools": [{"function": {}}]}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "assistant", "tool_calls": [{"x": 1}]}]}, 400),
    ("/api/chat", {"model": "euclid-asm", "messages": [{"role": "user", "images": "abc"}]}, 400),
    ("/api/generate", {"prompt": "x"}, 400),
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404),
    ("/api/generate", {"model": "euclid-asm", "prompt": ["x"]}, 400),
    ("/api/generate", {"model": "euclid-asm", "prompt": "x", "options": {"num_predict": "lots"}}, 400),
    ("/api/show", {}, 400),
    ("/api/show", {"model": "nope"}, 404),
    ("/api/chat", {"model": "refuser", "messages": [{"role": "user", "content": "x"}], "stream": False}, 400),
])
def test_bad_input_gets_an_ollama_error_with_a_4xx(gateway, path, body, status):
    r = httpx.post(gateway.url + path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str) and r.json()["error"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe{}", b'"a string"', b"null"])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show"])
def test_unparseable_bodies_are_400(gateway, path, content):
    r = httpx.post(gateway.url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)


def test_wrong_method_and_unknown_route_are_ollama_errors(gateway):
    r = httpx.get(gateway.url + "/api/chat")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)
    r = httpx.post(gateway.url + "/api/pull", json={"model": "x"})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_client_raises_response_error_with_the_status(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="ganon-asm", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "ganon-asm" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="broken", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502


def test_upstream_failure_mid_stream_is_an_error_line(client, gateway):
    with pytest.raises(ollama.ResponseError) as info:
        list(client.chat(model="cut-off", stream=True, messages=[{"role": "user", "content": "x"}]))
    assert "backend 'up'" in info.value.error
    with httpx.stream("POST", gateway.url + "/api/chat", json={
            "model": "cut-off", "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert set(lines[-1]) == {"error"}


def test_client_going_away_cancels_the_upstream_request():
    with ThreadedUpstream() as up, serve(gateway_config(up.base_url).replace('"slow-2"', '"drip-0.05"')) as gw:
        with httpx.stream("POST", gw.url + "/api/chat", json={
                "model": "sleepy", "messages": [{"role": "user", "content": "x"}]}) as r:
            it = r.iter_lines()
            got = [json.loads(next(it)) for _ in range(3)]
        assert all(part["done"] is False for part in got)
        deadline = time.monotonic() + 5
        while up.stats.disconnects["drip-0.05"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(gw.url + "/metrics").text
    assert up.stats.disconnects["drip-0.05"] == 1
    assert 'api="ollama_chat",backend="up",model="sleepy",status="client_disconnected"' in metrics
    assert "oracle_in_flight 0.0" in metrics


def test_slow_answers_get_a_clear_error_before_yazes_timeout(gateway):
    service = gateway.app.state.ollama
    before, service.deadline = service.deadline, 0.3
    try:
        start = time.monotonic()
        r = httpx.post(gateway.url + "/api/chat",
                       json=yaze_ollama_body("sleepy", [{"role": "user", "content": "x"}]), timeout=60)
        assert time.monotonic() - start < 1.5
        assert r.status_code == 504 and "0.3 s" in r.json()["error"]
    finally:
        service.deadline = before


def test_metrics_count_the_ollama_api(client, gateway):
    client.chat(model="seph-tilesmith", messages=[{"role": "user", "content": "a b"}])
    text = httpx.get(gateway.url + "/metrics").text
    assert 'oracle_requests_total{api="ollama_chat",backend="up",model="seph-tilesmith",status="ok"}' in text


# -- acceptance: a real model behind the gateway ---------------------------------------------------------

@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    """The in-process backend generating with a tiny base model and an adapter our trainer made."""
    from tests import tiny_lm
    from tests.integration.conftest import torch_threads

    root = tmp_path_factory.mktemp("ollama-local")
    with torch_threads(1):  # fastest for this tiny model on a busy 2-core machine
        base = tiny_lm.build_base(root / "base")
        adapter = tiny_lm.train(base, tiny_lm.ASM_SAMPLES, root / "asm")
    toml = f"""
[[backends]]
name = "local"
kind = "local"
retries = 0
options = {{ base_model = "{base}", device = "cpu", max_new_tokens = 24, adapters = {{ euclid-asm = "{adapter}" }} }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "local"
upstream_model = "euclid-asm"
parameters = {{ temperature = 0.0 }}
"""
    with serve(toml) as gw:
        yield gw


@pytest.mark.slow
def test_ollama_client_against_a_real_model(local_gateway):
    from tests import tiny_lm

    client = ollama.Client(host=local_gateway.url, timeout=120)
    assert "euclid-asm:latest" in {m.model for m in client.list().models}
    prompt = tiny_lm.ASM_SAMPLES[0]["instruction"]
    whole = client.chat(model="euclid-asm", messages=[{"role": "user", "content": prompt}],
                        options={"num_predict": 16})
    assert whole.message.content and whole.done and whole.done_reason in ("stop", "length")
    assert whole.eval_count > 0 and whole.prompt_eval_count > 0
    parts = list(client.chat(model="euclid-asm:latest", stream=True, options={"num_predict": 16},
                             messages=[{"role": "user", "content": prompt}]))
    assert "".join(p.message.content for p in parts) == whole.message.content  # greedy: the same text
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    yaze = httpx.post(local_gateway.url + "/api/chat", timeout=120,
                      json=yaze_ollama_body("euclid-asm", [{"role": "user", "content": prompt}],
                                            options={**YAZE_DEFAULT_OPTIONS, "num_predict": 16}))
    assert yaze_reads_ollama(yaze.status_code, yaze.json())["text_response"]
