"""Hostile input at the socket: deep nesting, invalid UTF-8, odd numbers, huge headers, odd
methods and paths. Every answer is a clean 4xx in the API's own error shape (or the HTTP server's
own refusal for a malformed request line/headers), never a 5xx, and the gateway keeps serving."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.serving import serve

CONFIG = """
[router]
policy = "direct"

[[backends]]
name = "up"
kind = "openai"
base_url = "{url}"
retries = 0

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"
"""

MSG = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.fixture(scope="module")
def gw():
    from tests.conftest import ThreadedUpstream

    with ThreadedUpstream() as up, serve(CONFIG.format(url=up.base_url)) as g:
        yield g


def _still_serving(gw) -> None:
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "euclid-asm", "messages": [
        {"role": "user", "content": "still there?"}]})
    assert r.status_code == 200 and "still there?" in r.json()["choices"][0]["message"]["content"]


BODIES = {
    "nesting beyond the parser's limit": b'{"model": "euclid-asm", ' + MSG + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nesting as messages": b'{"model": "euclid-asm", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "invalid UTF-8 inside a string": b'{"model": "euclid-\xff\xfe", ' + MSG + b"}",
    "lone surrogate escape": b'{"model": "euclid-asm", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "NaN": b'{"model": "euclid-asm", ' + MSG + b', "temperature": NaN}',
    "a number too big for a float": b'{"model": "euclid-asm", ' + MSG + b', "temperature": 1e999}',
    "a huge integer": b'{"model": "euclid-asm", ' + MSG + b', "max_tokens": ' + b"9" * 400 + b"}",
    "negative n": b'{"model": "euclid-asm", ' + MSG + b', "n": -1}',
    "zero max_tokens": b'{"model": "euclid-asm", ' + MSG + b', "max_tokens": 0}',
    "messages as a string": b'{"model": "euclid-asm", "messages": "hi"}',
    "content as a number": b'{"model": "euclid-asm", "messages": [{"role": "user", "content": 7}]}',
    "model as a list": b'{"model": ["euclid-asm"], ' + MSG + b"}",
    "a model name of 10k chars": b'{"model": "' + b"a" * 10_000 + b'", ' + MSG + b"}",
    "tools as an object": b'{"model": "euclid-asm", ' + MSG + b', "tools": {"a": 1}}',
    "stream as a string": b'{"model": "euclid-asm", ' + MSG + b', "stream": "yes"}',
    "duplicate keys": b'{"model": "nope", "model": "euclid-asm", ' + MSG + b', "n": 1, "n": 99}',
    "trailing garbage": b'{"model": "euclid-asm", ' + MSG + b"} trailing",
    "a NUL byte": b'{"model": "euclid-asm\x00", ' + MSG + b"}",
}


# fields the Ollama API does not have (it ignores unknown fields, as Ollama does); the last of
# duplicate keys wins there as in every JSON parser, which makes that body valid for Ollama
OPENAI_ONLY = {"negative n", "zero max_tokens", "duplicate keys"}


CASES = [(path, name) for path in ("/v1/chat/completions", "/api/chat") for name in BODIES
         if not (path.startswith("/api/") and name in OPENAI_ONLY)]


@pytest.mark.parametrize("path, name", CASES)
def test_hostile_bodies_are_clean_4xx(gw, path, name):
    r = httpx.post(gw.url + path, content=BODIES[name], headers={"content-type": "application/json"}, timeout=10)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    if path.startswith("/api/"):
        assert isinstance(body["error"], str) and body["error"]
    else:
        assert body["error"]["type"] == "invalid_request_error" or r.status_code == 404, body
        assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) < 2000


def test_deep_nesting_the_parser_accepts_is_passed_on_without_harm(gw):
    body = b'{"model": "euclid-asm", ' + MSG + b', "x": ' + b"[" * 200 + b"]" * 200 + b"}"
    r = httpx.post(gw.v1 + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200


def _raw(gw, data: bytes) -> bytes:
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                part = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            chunks.append(part)
    return b"".join(chunks)


def test_huge_and_many_headers_are_refused_and_the_gateway_keeps_serving(gw):
    huge = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = _raw(gw, huge)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    many = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(5000)) + b"\r\n"
    answer = _raw(gw, many)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 200")), answer[:200]
    _still_serving(gw)


def test_garbage_on_the_socket_is_refused_and_the_gateway_keeps_serving(gw):
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on plain HTTP
                 b"NOT-HTTP at all\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{\"a\""):
        answer = _raw(gw, junk)
        assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    _still_serving(gw)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_methods_are_405_in_openai_shape(gw, method):
    r = httpx.request(method, gw.v1 + "/chat/completions")
    assert r.status_code == 405
    assert r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/chat/completions/../../etc/passwd", "/%ff%fe", "/" + "a" * 5000])
def test_unknown_paths_are_404_in_openai_shape(gw, path):
    r = httpx.get(gw.url + path)
    assert r.status_code == 404, r.status_code
    assert r.json()["error"]["message"]
