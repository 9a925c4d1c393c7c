"""A scripted OpenAI-compatible upstream on loopback, for benchmarks and fault tests.

It is not a model: it answers ``/v1/chat/completions`` and ``/v1/completions`` instantly with
``echo: <last user message>``, and misbehaves on request when the model name says so. It is a
bare asyncio HTTP/1.1 server (keep-alive, chunked streams) so that it costs as little as
possible in a benchmark, and so that it can do what a framework would not let it: reset a
connection, stall mid-stream, send a malformed frame.

Model names (a ``/`` may prefix them, as in ``openai/status-500``):

    anything else          echo the last user message (stream or not)
    status-<code>          answer with that HTTP status and an OpenAI error body
    flaky-<n>              503 for the first n requests of this name, then echo
    slow-<seconds>         wait before the response headers
    stall                  stream: one chunk, then nothing (until the client goes away)
    drip-<seconds>         stream: one chunk every <seconds>, 1000 chunks
    malformed              stream: one good chunk, then a frame that is not JSON
    truncated              stream: one good chunk, then close without [DONE]
    reset                  close the connection without answering
    tools                  answer with a tool call to the first tool of the request
    qwen-tools             like Qwen2.5-Coder without a tool parser: the call to the first tool
                           written as text, in a <tool_call> block after a sentence (stream or
                           not); after a "[TOOL RESULT for ...]" user message, a plain answer
    qwen-json              the same call as a bare JSON object
    parrot                 the last user message itself, without the "echo: " prefix

``stats`` counts requests per model, and records streams whose client went away
(``disconnects``), which is how tests check that a cancelled request was cancelled upstream.

    python -m eval.loopback_upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)
    disconnects: Counter = field(default_factory=Counter)
    bodies: list = field(default_factory=list)
    keep_bodies: bool = False


class LoopbackUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep_bodies: bool = False) -> None:
        self.host = host
        self.port = port
        self.stats = Stats(keep_bodies=keep_bodies)
        self._server: asyncio.base_events.Server | None = None
        self._flaky: Counter = Counter()
        self._handlers: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> "LoopbackUpstream":
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> "LoopbackUpstream":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- HTTP plumbing ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                try:
                    keep = await self._respond(method, path.split("?", 1)[0], body, reader, writer)
                except Exception as exc:  # noqa: BLE001 - a real server answers 500 and stays up
                    await self._send_json(writer, 500, {"error": {"message": f"loopback: {exc!r}",
                                                                  "type": "server_error"}})
                    keep = True
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    @staticmethod
    def _head(status: int, content_type: str, length: int | None) -> bytes:
        framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        return (f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\n"
                f"connection: keep-alive\r\n\r\n").encode()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, obj: object) -> None:
        data = orjson.dumps(obj)
        writer.write(self._head(status, "application/json", len(data)) + data)
        await writer.drain()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    # -- behaviour ----------------------------------------------------------------------------
    async def _respond(self, method: str, path: str, body: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path.endswith("/models"):
            await self._send_json(writer, 200, {"object": "list", "data": [
                {"id": "echo", "object": "model", "created": 0, "owned_by": "loopback"}]})
            return True
        if method == "GET" and path in ("/health", "/healthz"):
            await self._send_json(writer, 200, {"ok": True})
            return True
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            await self._send_json(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
            return True
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            await self._send_json(writer, 400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
            return True
        if self.stats.keep_bodies:
            self.stats.bodies.append(req)
        model = str(req.get("model", "")).rsplit("/", 1)[-1]
        self.stats.requests[model] += 1
        chat = path.endswith("/chat/completions")
        behaviour, _, arg = model.partition("-")

        if behaviour == "reset":
            writer.transport.abort()
            return False
        if behaviour == "status" and arg.isdigit():
            await self._send_json(writer, int(arg), {"error": {"message": f"scripted {arg}", "type": "upstream"}})
            return True
        if behaviour == "flaky" and arg.isdigit():
            self._flaky[model] += 1
            if self._flaky[model] <= int(arg):
                await self._send_json(writer, 503, {"error": {"message": "scripted 503", "type": "upstream"}})
                return True
        if behaviour == "slow":
            await asyncio.sleep(float(arg))

        text = "echo: " + _last_user_text(req) if chat else "echo: " + str(req.get("prompt", ""))[-200:]
        if chat and behaviour == "qwen" and req.get("tools"):
            text = _qwen_tool_text(req, arg)
        elif chat and behaviour == "parrot":
            text = _last_user_text(req)
        if req.get("stream"):
            return await self._stream(reader, writer, req, model, text, chat, behaviour, arg)
        if chat and behaviour == "tools" and req.get("tools"):
            msg = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": req["tools"][0]["function"]["name"], "arguments": '{"arg": "1"}'}}]}
            finish = "tool_calls"
        else:
            msg, finish = {"role": "assistant", "content": text}, "stop"
        n_out = len(text.split())
        usage = {"prompt_tokens": 7, "completion_tokens": n_out, "total_tokens": 7 + n_out}
        if chat:
            out = {"id": "chatcmpl-loop", "object": "chat.completion", "created": int(time.time()), "model": model,
                   "choices": [{"index": 0, "message": msg, "finish_reason": finish}], "usage": usage}
        else:
            out = {"id": "cmpl-loop", "object": "text_completion", "created": int(time.time()), "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}
        await self._send_json(writer, 200, out)
        return True

    async def _stream(self, reader, writer, req, model, text, chat, behaviour, arg) -> bool:
        writer.write(self._head(200, "text/event-stream", None))
        created = int(time.time())

        def frame(delta_text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": delta_text} if delta_text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                obj = {"id": "chatcmpl-loop", "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [choice]}
            else:
                obj = {"id": "cmpl-loop", "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": delta_text or "", "finish_reason": finish}]}
            return self._chunk(b"data: " + orjson.dumps(obj) + b"\n\n")

        try:
            writer.write(frame(None, role=True) if chat else frame(""))
            await writer.drain()
            if behaviour in ("stall", "drip"):
                pause = float(arg) if behaviour == "drip" else None
                for i in range(1000):
                    try:  # EOF from the client means it went away
                        if not await asyncio.wait_for(reader.read(1), timeout=pause):
                            raise ConnectionResetError
                    except asyncio.TimeoutError:
                        writer.write(frame(f"t{i} "))
                        await writer.drain()
            if behaviour == "malformed":
                writer.write(self._chunk(b"data: {not json\n\n"))
                await writer.drain()
                writer.write(self._chunk(b""))
                await writer.drain()
                return True
            if behaviour == "truncated":
                writer.write(frame("partial "))
                await writer.drain()
                writer.transport.abort()
                return False
            for word in text.split(" "):
                writer.write(frame(word + " "))
            writer.write(frame(None, finish="stop"))
            if (req.get("stream_options") or {}).get("include_usage"):
                n_out = len(text.split())
                writer.write(self._chunk(b"data: " + orjson.dumps({
                    "id": "chatcmpl-loop", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n_out,
                                             "total_tokens": 7 + n_out}}) + b"\n\n"))
            writer.write(self._chunk(b"data: [DONE]\n\n") + self._chunk(b""))
            await writer.drain()
            return True
        except (ConnectionError, asyncio.CancelledError):
            self.stats.disconnects[model] += 1
            raise


def _last_user_text(req: dict) -> str:
    for msg in reversed(req.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
            return str(content)[-200:]
    return ""


def _qwen_tool_text(req: dict, style: str) -> str:
    last = next((m.get("content") for m in reversed(req.get("messages") or [])
                 if isinstance(m, dict) and m.get("role") == "user"), "")
    if isinstance(last, str) and last.startswith("[TOOL RESULT for "):
        return "Room 0x12 has 3 sprites."
    fn = req["tools"][0]["function"]
    props = (fn.get("parameters") or {}).get("properties") or {}
    call = orjson.dumps({"name": fn["name"], "arguments": {k: f"{k}-1" for k in props}}).decode()
    return call if style == "json" else f"Let me look.\n<tool_call>\n{call}\n</tool_call>"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    args = ap.parse_args(argv)

    async def run() -> None:
        up = await LoopbackUpstream(args.host, args.port).start()
        print(f"loopback upstream on {up.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
