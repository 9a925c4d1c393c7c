"""YAZE as a context source: a local server speaking YAZE's HTTP API (``z3ed --http-port``) feeds
the gateway its symbol table; the loopback upstream records what the specialist was sent.

The stand-in answers ``GET /api/v1/health`` and ``GET /api/v1/symbols?format=asar`` the way
YAZE does: the Asar export (``org $XXXXXX`` then ``Label:``) as text/plain, or wrapped as
``{"symbols": "...", "format": "asar"}`` when asked for JSON, and 503 with ``{"error": ...}``
when no project is open. It can be slow, down, or huge.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.yaze import HEADER, parse_symbols
from tests.conftest import ThreadedUpstream
from tests.serving import free_port, serve

SYMBOLS = {"Link_ReceiveItem": 0x0987AD, "Sprite_PrepOamCoord": 0x06E416, "SRAM_Sword": 0x7EF359,
           "Player_HealthMax": 0x7EF36C, "Ancilla_Spawn": 0x099D04, "LinkState": 0x7E005D}


def asar_export(symbols: dict[str, int]) -> str:
    """YAZE's SymbolProvider export in Asar format: sorted by address."""
    return "".join(f"org ${addr:06X}\n{name}:\n" for name, addr in sorted(symbols.items(), key=lambda kv: kv[1]))


class FakeYaze:
    """YAZE's HTTP API, as far as the gateway uses it. ``delay`` slows the symbols answer,
    ``status`` fails it, ``as_json`` wraps the text the way YAZE does for Accept: application/json."""

    def __init__(self, symbols: dict[str, int] | None = None, *, text: str | None = None) -> None:
        self.text = text if text is not None else asar_export(symbols or SYMBOLS)
        self.delay = 0.0
        self.status = 200
        self.as_json = False
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path, _, query = self.path.partition("?")
                if path == "/api/v1/health":
                    return self._send(200, "application/json", b'{"status":"ok","service":"yaze-agent-api"}')
                if path != "/api/v1/symbols":
                    return self._send(404, "application/json", b'{"error":"not found"}')
                fake.requests += 1
                assert "format=asar" in query
                time.sleep(fake.delay)
                if fake.status != 200:
                    return self._send(fake.status, "application/json", b'{"error":"Symbol provider not available"}')
                if fake.as_json:
                    return self._send(200, "application/json",
                                      json.dumps({"symbols": fake.text, "format": "asar"}).encode())
                self._send(200, "text/plain", fake.text.encode())

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the gateway gave up waiting
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeYaze":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(upstream_url: str, yaze_url: str, **yaze: object) -> str:
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"base_url": yaze_url, **yaze}.items())
    return f"""
[[backends]]
name = "up"
kind = "openai"
base_url = "{upstream_url}"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"
task_types = ["asm_base", "asm_hook"]
system_prompt = "You write Asar 65816."

[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"

[yaze]
{settings}"""


@pytest.fixture
def upstream():
    with ThreadedUpstream() as up:
        up.stats.keep_bodies = True
        yield up


def ask(gw, model: str, prompt: str, **extra) -> float:
    """One chat through the OpenAI API; returns its duration."""
    start = time.monotonic()
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **extra)
    return time.monotonic() - start


def system_sent(upstream) -> str | None:
    first = upstream.stats.bodies[-1]["messages"][0]
    return first["content"] if first["role"] == "system" else None


def wait_for_table(gw, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.app.state.yaze.table is None:
        assert time.monotonic() < deadline, "the symbol table never arrived"
        time.sleep(0.02)


# -- the table and the lookup --------------------------------------------------------------------------

def test_asar_export_and_other_line_formats_parse():
    text = asar_export(SYMBOLS) + "; a comment\n!FreeSpace = $2F8000\nBank_Hook = $07A1B2\n008034 MainGameLoop\n" \
                                  "PRG:0DFA00:Mesen_Label\n"
    table = parse_symbols(text)
    assert table.by_name["Link_ReceiveItem"] == 0x0987AD and table.by_name["SRAM_Sword"] == 0x7EF359
    assert table.by_name["!FreeSpace"] == 0x2F8000 and table.by_name["Bank_Hook"] == 0x07A1B2
    assert table.by_name["MainGameLoop"] == 0x008034 and table.by_name["Mesen_Label"] == 0x0DFA00
    assert len(table) == len(SYMBOLS) + 4
    assert parse_symbols("Orphan:\norg $008000\nReset:\n").by_name == {"Reset": 0x008000}  # no org, no address


def test_lookup_by_name_and_by_address():
    table = parse_symbols(asar_export(SYMBOLS))
    found = dict(table.mentioned("JSL Link_ReceiveItem then LDA.l $7EF36C and check $005D; ignore $123456"))
    assert found == {"Link_ReceiveItem": 0x0987AD, "Player_HealthMax": 0x7EF36C, "LinkState": 0x7E005D}
    assert table.mentioned("nothing to see here") == []


def test_config_names_unknown_models():
    with pytest.raises(ConfigError, match=r"\[yaze\], key 'models': unknown model 'ganon-asm'"):
        parse_config(config("http://127.0.0.1:1/v1", "http://127.0.0.1:2", models=["ganon-asm"]))
    with pytest.raises(ConfigError, match=r"\[yaze\], key 'timeout'"):
        parse_config(config("http://127.0.0.1:1/v1", "http://127.0.0.1:2", timeout=-1))


# -- YAZE up ---------------------------------------------------------------------------------------------

def test_asm_prompts_get_the_definitions_they_mention(upstream):
    with FakeYaze() as yaze, serve(config(upstream.base_url, yaze.url)) as gw:
        wait_for_table(gw)
        ask(gw, "euclid-asm", "Hook Link_ReceiveItem so that it also sets SRAM_Sword ($7EF359) to 2")
        system = system_sent(upstream)
        assert system.startswith("You write Asar 65816.")  # the model's own system prompt stays
        block = system.split("\n\n", 1)[1]
        assert block.splitlines() == [HEADER, "Link_ReceiveItem = $0987AD", "SRAM_Sword = $7EF359"]

        ask(gw, "euclid-asm", "Write a routine that clears the OAM buffer")  # mentions no symbol
        assert system_sent(upstream) == "You write Asar 65816."
        ask(gw, "seph-tilesmith", "What palette does Link_ReceiveItem use?")  # not an ASM specialist
        assert system_sent(upstream) is None
        assert yaze.requests == 1  # fetched once, at start-up


def test_ollama_api_gets_the_context_too_and_the_clients_system_message_is_kept(upstream):
    with FakeYaze() as yaze, serve(config(upstream.base_url, yaze.url)) as gw:
        wait_for_table(gw)
        r = httpx.post(gw.url + "/api/chat", json={
            "model": "euclid-asm", "system": "YAZE's system prompt", "stream": False, "format": "json",
            "messages": [{"role": "user", "content": "Why does Ancilla_Spawn crash?"},
                         {"role": "user", "content": "[TOOL RESULT for hex-read] 22 04 9D 09"}]})
        assert r.status_code == 200 and json.loads(r.json()["message"]["content"])["text_response"]
        assert system_sent(upstream) == f"YAZE's system prompt\n\n{HEADER}\nAncilla_Spawn = $099D04"


def test_json_wrapped_table(upstream):
    with FakeYaze() as yaze, serve(config(upstream.base_url, yaze.url)) as gw:
        yaze.as_json = True
        gw.app.state.yaze._table = None  # forget the text one; fetch again
        gw.app.state.yaze._task = None
        ask(gw, "euclid-asm", "Call Sprite_PrepOamCoord")
        wait_for_table(gw)
        ask(gw, "euclid-asm", "Call Sprite_PrepOamCoord")
        assert "Sprite_PrepOamCoord = $06E416" in system_sent(upstream)


def test_context_is_bounded(upstream):
    many = {f"Routine_{i:04d}": 0x208000 + i for i in range(500)}
    with FakeYaze(many) as yaze, serve(config(upstream.base_url, yaze.url, max_context_chars=300)) as gw:
        wait_for_table(gw)
        ask(gw, "euclid-asm", " ".join(f"JSL Routine_{i:04d}" for i in range(200)))
        block = system_sent(upstream).split("\n\n", 1)[1]
        assert len(block) <= 300 and block.startswith(HEADER) and "Routine_0000 = $208000" in block


def test_stale_table_is_refreshed_in_the_background(upstream):
    with FakeYaze() as yaze, serve(config(upstream.base_url, yaze.url, ttl=0.2)) as gw:
        wait_for_table(gw)
        yaze.text = asar_export({**SYMBOLS, "Link_ReceiveItem": 0x0987B0})
        yaze.delay = 0.5
        time.sleep(0.3)
        assert ask(gw, "euclid-asm", "JSL Link_ReceiveItem") < 0.4  # served from the stale table
        assert "Link_ReceiveItem = $0987AD" in system_sent(upstream)
        deadline = time.monotonic() + 5
        while gw.app.state.yaze.table.by_name["Link_ReceiveItem"] != 0x0987B0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yaze.delay = 0
        ask(gw, "euclid-asm", "JSL Link_ReceiveItem")
        assert "Link_ReceiveItem = $0987B0" in system_sent(upstream)
        assert yaze.requests >= 2


# -- YAZE down, slow, failing, huge ----------------------------------------------------------------------

def test_yaze_down_costs_nothing(upstream):
    down = f"http://127.0.0.1:{free_port()}"
    with serve(config(upstream.base_url, down)) as gw:
        times = [ask(gw, "euclid-asm", "JSL Link_ReceiveItem") for _ in range(5)]
        assert system_sent(upstream) == "You write Asar 65816."  # no context, no failure
        assert max(times) < 1.0 and sorted(times)[2] < 0.3


def test_yaze_slow_delays_a_request_no_more_than_the_budget(upstream):
    with FakeYaze() as yaze:
        yaze.delay = 1.5
        with serve(config(upstream.base_url, yaze.url, timeout=0.3)) as gw:
            took = ask(gw, "euclid-asm", "JSL Link_ReceiveItem")
            assert 0.2 < took < 1.2  # waited for the first table, then gave up on it
            assert system_sent(upstream) == "You write Asar 65816."
            wait_for_table(gw)  # the fetch went on in the background...
            assert ask(gw, "euclid-asm", "JSL Link_ReceiveItem") < 0.5  # ...and later requests use it
            assert "Link_ReceiveItem = $0987AD" in system_sent(upstream)


def test_yaze_error_status_is_no_failure(upstream):
    with FakeYaze() as yaze:
        yaze.status = 503  # YAZE without a project open
        with serve(config(upstream.base_url, yaze.url)) as gw:
            ask(gw, "euclid-asm", "JSL Link_ReceiveItem")
            r = httpx.post(gw.url + "/api/chat", json={"model": "euclid-asm", "stream": False,
                                                       "messages": [{"role": "user", "content": "JSL Ancilla_Spawn"}]})
            assert r.status_code == 200
            assert system_sent(upstream) == "You write Asar 65816."


def test_huge_symbol_table(upstream):
    huge = {f"Label_{i:06d}": 0x208000 + i for i in range(200_000)}  # about 5 MB of Asar
    with FakeYaze(huge) as yaze, serve(config(upstream.base_url, yaze.url, timeout=5.0)) as gw:
        wait_for_table(gw, timeout=60)
        assert len(gw.app.state.yaze.table) == 200_000
        took = ask(gw, "euclid-asm", f"JSL Label_123456 then JML ${0x208000 + 150_000:06X}")
        assert took < 1.0
        assert system_sent(upstream).endswith(f"Label_123456 = ${0x208000 + 123_456:06X}\n"
                                              f"Label_150000 = ${0x208000 + 150_000:06X}")
        assert yaze.requests == 1


def test_table_over_the_size_limit_is_refused(upstream):
    huge = {f"Label_{i:06d}": 0x208000 + i for i in range(2_000)}
    with FakeYaze(huge) as yaze, serve(config(upstream.base_url, yaze.url, max_table_bytes=4096)) as gw:
        ask(gw, "euclid-asm", "JSL Label_000001")
        assert system_sent(upstream) == "You write Asar 65816." and gw.app.state.yaze.table is None


async def test_enrich_never_fails_on_a_broken_body():
    from gateway.config import YazeSettings
    from gateway.yaze import YazeContext

    cfg = parse_config(config("http://127.0.0.1:1/v1", "http://127.0.0.1:2"))
    ctx = YazeContext(YazeSettings(base_url="http://127.0.0.1:2"), cfg)
    ctx._table = parse_symbols(asar_export(SYMBOLS))
    ctx._fetched_at = time.monotonic()
    for body in ({"messages": "x"}, {"messages": []}, {"messages": [{"role": "user", "content": None}]},
                 {"messages": [{"role": "user", "content": [{"type": "text", "text": "JSL Ancilla_Spawn"}]}]}):
        out = await ctx.enrich("euclid-asm", body)
        assert isinstance(out, dict)
    assert "Ancilla_Spawn = $099D04" in out["messages"][0]["content"]
    await asyncio.sleep(0)
