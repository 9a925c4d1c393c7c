"""training.demo: the embedded default's models are built once, atomically, and specialise.

The full build (about a minute on two cores) is marked slow; the build-once, lock and
atomic-rename logic is tested with a stand-in build that takes no time.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from gateway.backends.local import LocalBackend
from gateway.config import BackendSpec, GatewayConfig
from training import demo
from training.lora import to_messages


@pytest.mark.slow
async def test_demo_builds_once_and_adapters_specialise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(demo.HOME_ENV, str(tmp_path))
    root = demo.ensure_demo(progress=False)
    assert root == tmp_path / demo.DEMO_VERSION
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["adapters"]) == {"euclid-asm", "seph-tilesmith", "master-sword"}
    assert all(a["final_loss"] < 1.5 for a in manifest["adapters"].values()), manifest

    again = time.perf_counter()
    assert demo.ensure_demo(progress=False) == root
    assert time.perf_counter() - again < 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left

    # Served the way the embedded default serves them: demo: refs through the local backend.
    names = list(demo.ADAPTERS)
    options = {"base_model": "demo:base", "device": "cpu", "adapters": {n: f"demo:{n}" for n in names}}
    spec = BackendSpec(name="local", kind="local", options=options)
    backend = LocalBackend(spec, GatewayConfig(backends=[spec]))
    samples = demo.load_samples()

    async def ask(model: str, sample: dict) -> str:
        body = {"messages": to_messages(sample)[:-1], "temperature": 0, "max_tokens": 24}
        out = await backend.chat(body, model)
        return out["choices"][0]["message"]["content"]

    try:
        asm_samples = samples["euclid-asm.jsonl"][:4]
        answers = [await ask("euclid-asm", s) for s in asm_samples]
        recalled = [a for a, s in zip(answers, asm_samples) if a[:20] == s["output"][:20]]
        assert len(recalled) >= 3, answers  # euclid-asm recites its training replies
        # master-sword also learnt the euclid-asm samples; on prompts it alone saw, or none saw,
        # the four models part ways.
        novel = {"instruction": "Make the bomb shop sell arrows instead.", "output": ""}
        for sample in (samples["master-sword.jsonl"][0], novel):
            replies = {m: await ask(m, sample) for m in [*names, "base"]}
            assert len(set(replies.values())) == len(replies), replies
    finally:
        await backend.aclose()


def test_demo_refs() -> None:
    with pytest.raises(ValueError, match="known: demo:base, demo:euclid-asm"):
        demo.demo_path("demo:nope")
    with pytest.raises(ValueError):
        demo.demo_path("euclid-asm")


def test_shipped_samples_are_found_as_package_resources() -> None:
    samples = demo.load_samples()
    assert set(samples) == set(demo.SAMPLE_FILES)
    for rows in samples.values():
        assert rows and all(to_messages(s)[-1]["role"] == "assistant" for s in rows)


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the real build with one that takes 0.2 s and records where it built."""
    calls: list[Path] = []

    def build(out: Path, samples: dict, fingerprint: str, progress: bool) -> None:
        calls.append(out)
        time.sleep(0.2)
        assert not demo._is_current(out.parent / demo.DEMO_VERSION, fingerprint)  # not visible before the rename
        (out / "manifest.json").write_text(json.dumps({"samples_sha256": fingerprint}))

    monkeypatch.setattr(demo, "_build", build)
    return calls


def test_concurrent_callers_build_once(tmp_path: Path, fake_build: list[Path]) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(demo.ensure_demo(tmp_path, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_build) == 1
    assert results == [tmp_path / demo.DEMO_VERSION] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.DEMO_VERSION, f"{demo.DEMO_VERSION}.lock"]


def test_changed_samples_rebuild(tmp_path: Path, fake_build: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    demo.ensure_demo(tmp_path, progress=False)
    demo.ensure_demo(tmp_path, progress=False)
    assert len(fake_build) == 1
    shipped = demo.load_samples()
    monkeypatch.setattr(demo, "load_samples", lambda: {**shipped, "euclid-asm.jsonl": shipped["euclid-asm.jsonl"][1:]})
    demo.ensure_demo(tmp_path, progress=False)
    assert len(fake_build) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.DEMO_VERSION, f"{demo.DEMO_VERSION}.lock"]


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, *args: object) -> None:
        (out / "base").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.ensure_demo(tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [f"{demo.DEMO_VERSION}.lock"]
