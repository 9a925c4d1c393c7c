"""The in-process backend's test kit: a tiny base with two adapters our trainer made (``asm``
and ``gfx`` memorise their samples, so a greedy reply tells which adapter made it), and helpers
to build a backend and ask it. The fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.backends import create_backend
from gateway.backends.local import LocalBackend
from gateway.config import BackendSpec, GatewayConfig
from tests import tiny_lm

ASM_PROMPT = tiny_lm.ASM_SAMPLES[0]["instruction"]
GFX_PROMPT = tiny_lm.GFX_SAMPLES[1]["instruction"]


def build_artifacts(root: Path) -> dict[str, Path]:
    base = tiny_lm.build_base(root / "base")
    return {"base": base,
            "asm": tiny_lm.train(base, tiny_lm.ASM_SAMPLES, root / "asm"),
            "gfx": tiny_lm.train(base, tiny_lm.GFX_SAMPLES, root / "gfx")}


def make_backend(artifacts: dict[str, Path], **options: Any) -> LocalBackend:
    options = {"base_model": str(artifacts["base"]), "device": "cpu", "max_new_tokens": 48,
               "adapters": {"asm": str(artifacts["asm"]), "gfx": str(artifacts["gfx"])}, **options}
    spec = BackendSpec(name="local", kind="local", options=options)
    backend = create_backend(spec, GatewayConfig(backends=[spec]))
    assert isinstance(backend, LocalBackend)
    return backend


def chat_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}


async def reply(backend: LocalBackend, model: str, prompt: str, **extra: Any) -> str:
    out = await backend.chat(chat_body(prompt, **extra), model)
    return out["choices"][0]["message"]["content"]


async def streamed(backend: LocalBackend, model: str, prompt: str, **extra: Any) -> tuple[str, list[dict]]:
    chunks = [c async for c in backend.stream_chat(chat_body(prompt, **extra), model)]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), chunks
