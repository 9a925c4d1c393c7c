"""The embedded default's model files, built once on this machine from the shipped samples.

    $ORACLE_COUNCIL_HOME/demo-v1/           (default home: ~/.cache/oracle-council)
        base/             tiny Qwen2-shaped model + ChatML tokenizer (``training.tiny``)
        euclid-asm/       LoRA adapter trained on samples/euclid-asm.jsonl
        seph-tilesmith/   LoRA adapter trained on samples/seph-tilesmith.jsonl
        master-sword/     LoRA adapter trained on all three sample files mixed
        manifest.json     what was built, from which samples, in how long

``ensure_demo()`` builds it the first time (about a minute on two cores) and returns the folder
at once afterwards. The build happens in a temporary folder beside the target and is renamed
into place when complete, under a lock file, so concurrent processes build it once and never
see half a demo. Samples edited since the build (their hash is in the manifest) trigger a
rebuild. ``demo_path("demo:NAME")`` resolves the refs the default config uses.

The base model's weights are random: the adapters learn their domain's format and memorise
parts of their samples, which is enough to tell specialists apart, not to be useful answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from training.lora import LoRATrainConfig, to_messages, train_lora
from training.tiny import build_tiny_base

logger = logging.getLogger(__name__)

DEMO_VERSION = "demo-v1"  # bump when the recipe below changes: old builds are then ignored
HOME_ENV = "ORACLE_COUNCIL_HOME"
SAMPLE_FILES = ("euclid-asm.jsonl", "seph-tilesmith.jsonl", "master-sword.jsonl")
# adapter name → (sample files, epochs). Each memorises the start of its replies; the mixed
# master-sword set is the hardest to fit and gets more passes.
ADAPTERS: dict[str, tuple[tuple[str, ...], float]] = {
    "euclid-asm": (("euclid-asm.jsonl",), 15),
    "seph-tilesmith": (("seph-tilesmith.jsonl",), 15),
    "master-sword": (SAMPLE_FILES, 20),
}
SEED = 0
# Tuned for ~1 minute on two CPU cores: short sequences (the prompt and the first ~60 tokens of
# the reply) and a high learning rate, which a random base with few parameters tolerates.
RECIPE = LoRATrainConfig(learning_rate=1e-2, batch_size=8, max_seq_len=96, warmup_steps=10, seed=SEED,
                         device="cpu")


def demo_home(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$ORACLE_COUNCIL_HOME``, else ``~/.cache/oracle-council``."""
    return Path(home or os.environ.get(HOME_ENV) or Path.home() / ".cache" / "oracle-council").expanduser()


def demo_path(ref: str, home: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """``demo:base`` or ``demo:<adapter>`` → its folder, building the demo first if needed."""
    name = ref.removeprefix("demo:")
    known = ["base", *ADAPTERS]
    if not ref.startswith("demo:") or name not in known:
        raise ValueError(f"unknown demo ref {ref!r}; known: {', '.join('demo:' + k for k in known)}")
    return ensure_demo(home, progress=progress) / name


def ensure_demo(home: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Return ``<home>/demo-v1``, building it first if it is missing or stale."""
    target = demo_home(home) / DEMO_VERSION
    samples = load_samples()
    fingerprint = _fingerprint(samples)
    if _is_current(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f"{DEMO_VERSION}.lock", progress):
        if _is_current(target, fingerprint):  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=target.parent))
        try:
            with _transformers_bars_off():
                _build(tmp, samples, fingerprint, progress)
            if target.exists():  # a stale build: move it aside, then swap
                stale = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-stale-", dir=target.parent))
                os.rename(target, stale / "old")
                os.rename(tmp, target)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_samples() -> dict[str, list[dict[str, Any]]]:
    """The shipped sample files, ``{file name: samples}``, read through importlib.resources."""
    folder = resources.files("training").joinpath("samples")
    out = {}
    for name in SAMPLE_FILES:
        text = folder.joinpath(name).read_text("utf-8")
        out[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def _build(out: Path, samples: dict[str, list[dict[str, Any]]], fingerprint: str, progress: bool) -> None:
    say = _reporter(progress)
    started = time.perf_counter()
    say(f"building the offline demo models in {out.parent / DEMO_VERSION} (once; about a minute)")

    corpus = ["system", "user", "assistant"]
    corpus += [m["content"] for rows in samples.values() for s in rows for m in to_messages(s)]
    build_tiny_base(out / "base", corpus, seed=SEED)
    say(f"[1/{1 + len(ADAPTERS)}] base model and tokenizer ({time.perf_counter() - started:.1f} s)")

    manifest: dict[str, Any] = {"version": DEMO_VERSION, "samples_sha256": fingerprint, "adapters": {}}
    for i, (name, (files, epochs)) in enumerate(ADAPTERS.items(), start=2):
        rows = [s for f in files for s in samples[f]]
        config = dataclasses.replace(RECIPE, epochs=epochs)
        result = train_lora(out / "base", rows, out / name, config, progress=progress)
        _point_at(out / name, out.parent / DEMO_VERSION / "base")  # where the base lives after the rename
        manifest["adapters"][name] = {"files": list(files), "samples": result.samples, "steps": result.steps,
                                      "final_loss": round(result.losses[-1], 4), "seconds": round(result.seconds, 1)}
        say(f"[{i}/{1 + len(ADAPTERS)}] adapter {name}: {result.samples} samples, {result.steps} steps, "
            f"loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f} ({result.seconds:.1f} s)")

    manifest["seconds"] = round(time.perf_counter() - started, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    say(f"demo models built in {manifest['seconds']} s")


def _point_at(adapter: Path, base: Path) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text("utf-8"))
    config["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fingerprint(samples: dict[str, list[dict[str, Any]]]) -> str:
    return hashlib.sha256(json.dumps(samples, sort_keys=True).encode()).hexdigest()


def _is_current(target: Path, fingerprint: str) -> bool:
    try:
        manifest = json.loads((target / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("samples_sha256") == fingerprint


@contextlib.contextmanager
def _exclusive(lock_path: Path, progress: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``, saying so if another process has it."""
    import fcntl

    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _reporter(progress)(f"waiting for another process building the demo ({lock_path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _transformers_bars_off() -> Iterator[None]:
    """Our bars and stage lines only: transformers' per-file load/save bars would bury them."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


def _reporter(progress: bool):
    """Stage lines: on stderr beside the progress bars when ``progress``, else to the log."""
    if progress:
        return lambda message: print(message, file=sys.stderr, flush=True)
    return logger.info
