"""The console script as a user runs it: `oracle-council serve --config FILE --port N` in its own
process, proxying the openai SDK to an OpenAI-compatible upstream."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai

from tests.serving import free_port


def test_serve_proxies_stream_and_non_stream_with_headers(upstream, tmp_path):
    cfg = tmp_path / "oc.toml"
    cfg.write_text(f"""
[[backends]]
name = "vllm"
kind = "openai"
base_url = "{upstream.base_url.removesuffix('/v1')}"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "vllm"
upstream_model = "echo"
""")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        raw = client.chat.completions.with_raw_response.create(
            model="euclid-asm", messages=[{"role": "user", "content": "JSL $228000"}])
        assert raw.parse().choices[0].message.content == "echo: JSL $228000"
        assert raw.headers["x-request-id"] and raw.headers["x-oracle-model"] == "euclid-asm"
        assert raw.headers["x-oracle-router"] == "direct"
        raw = client.chat.completions.with_raw_response.create(
            model="oracle-council", stream=True, messages=[{"role": "user", "content": "RTL"}])
        assert raw.headers["x-request-id"] and raw.headers["x-oracle-router"] == "direct"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text.strip() == "echo: RTL"
    finally:
        proc.terminate()
        proc.wait(10)


def test_check_reports_config_errors_with_location(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[models]]\nname = "euclid-asm"\noracle = "oracle-din"\nbackend = "nope"\n')
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{cfg}: [[models]] (name = 'euclid-asm'), key 'backend': unknown backend 'nope'" in out.stderr
