"""Input files to normalized samples.

An input path is a ``.jsonl`` file, a ``.json`` file holding a list of objects (the original
Alpaca release), or a folder. In a folder, a directory holding ``train.jsonl``, ``val.jsonl`` or
``test.jsonl`` is a *curated dataset* (``<name>_<YYYYmmdd_HHMMSS>/``): only those three are read
(its ``rejected.jsonl``, ``stats.json`` and ``metadata.json`` are not samples). Elsewhere every
``*.jsonl`` file is read, recursively, in sorted order, except ``rejected.jsonl``.

Each line is one of:

- a generator sample or Alpaca record: ``instruction``, optional ``input``, ``output`` and the
  metadata (``domain``, ``source``, ``sample_id``, ``quality_score`` ...) at the top level or
  nested under ``_metadata`` (top level wins);
- ChatML: ``messages: [{role, content}, ...]`` ending with the assistant's answer; the metadata
  under ``_metadata`` or at the top level. A record that has ``messages`` and also
  ``instruction``/``input``/``output`` agreeing with the final answer (a prepared record, the
  output of this command) keeps its own instruction and input.

``read_path`` yields ``Sample`` objects and ``Problem`` objects (a line that could not become a
sample: invalid UTF-8, invalid JSON, not an object, a missing or mistyped field, an empty answer).
Nothing is dropped without one of the two.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.domains import normalize_domain

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")
SKIP_FILES = {"rejected.jsonl"}
ROLES = ("system", "user", "assistant")
_ID_NAMESPACE = uuid.UUID("6f1c0f52-3a6e-4d1b-9a55-0c0de0a1a77e")


class InputError(Exception):
    """An input path that cannot be read at all (missing, unreadable, no sample files)."""


@dataclass
class Sample:
    """One normalized record (contract 2's fields, before specialist and threshold are attached)."""

    messages: list[dict[str, str]]
    instruction: str
    input: str
    output: str
    domain: str
    sample_id: str
    quality_score: float | None
    source: str
    location: str            # "file:line", for reports
    layout: str              # generator | alpaca | chatml (+ "+_metadata")
    index: int = 0           # read order over the whole run: the tie-breaker everywhere
    specialist: str = ""
    task_type: str | None = None
    specialist_key: str = ""
    threshold: float = 0.0
    threshold_key: str = ""
    prompt_key: str = field(default="", repr=False)

    @property
    def prompt_text(self) -> str:
        """What a duplicate is judged on: every turn before the final answer (system prompts aside)."""
        turns = [m["content"] for m in self.messages[:-1] if m["role"] != "system"]
        return "\n\n".join(turns)

    def record(self) -> dict[str, Any]:
        """The output line: contract 2, keys in a fixed order."""
        return {
            "messages": self.messages, "instruction": self.instruction, "input": self.input,
            "output": self.output, "domain": self.domain, "specialist": self.specialist,
            "task_type": self.task_type, "sample_id": self.sample_id, "quality_score": self.quality_score,
            "source": self.source, "threshold": self.threshold, "threshold_key": self.threshold_key,
        }


@dataclass
class Problem:
    """A line that did not become a sample. ``reason`` is ``malformed`` or ``empty_output``."""

    reason: str
    location: str
    error: str
    domain: str | None = None
    raw: str = ""            # the start of the line, for the report
    sample_id: str | None = None


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what exact duplicates are compared on."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_hash(sample: Sample) -> str:
    return hashlib.sha256(normalize_text(sample.prompt_text).encode("utf-8")).hexdigest()


# -- finding the files ---------------------------------------------------------------------------

def discover(path: Path) -> list[Path]:
    """The sample files an input path stands for; ``InputError`` when there are none or it is unreadable."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        _check_readable(path)
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: not a file or folder")
    found: list[Path] = []
    try:
        _walk(path, found)
    except PermissionError as exc:
        raise InputError(f"{exc.filename or path}: permission denied") from None
    if not found:
        raise InputError(f"{path}: no .jsonl files in this folder (nor train/val/test.jsonl of a curated dataset)")
    for f in found:
        _check_readable(f)
    return found


def _walk(folder: Path, found: list[Path]) -> None:
    entries = sorted(folder.iterdir())
    splits = [folder / name for name in SPLIT_FILES if (folder / name).is_file()]
    if splits:  # a curated dataset folder: its split files only
        found.extend(splits)
        return
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            _walk(entry, found)
        elif entry.is_file() and entry.suffix == ".jsonl" and entry.name not in SKIP_FILES:
            found.append(entry)


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


# -- reading lines -------------------------------------------------------------------------------

def read_file(path: Path, *, default_domain: str | None = None,
              on_bytes: Callable[[int], object] | None = None) -> Iterator[Sample | Problem | int]:
    """Samples and problems from one file, in order; a bare ``int`` is a blank line's number
    (blank lines are counted and reported, not treated as records). ``on_bytes(n)`` is told of
    every n bytes read (a progress bar)."""
    if path.suffix == ".json":
        yield from _read_json_array(path, default_domain)
        if on_bytes:
            on_bytes(path.stat().st_size)
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if on_bytes:
                on_bytes(len(raw))
            location = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem("malformed", location, f"invalid UTF-8 at byte {exc.start} of the line",
                              raw=raw[:200].decode("utf-8", "replace").rstrip("\r\n"))
                continue
            if not text.strip():
                yield lineno
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Problem("malformed", location, f"invalid JSON: {exc.msg} (column {exc.colno})",
                              raw=text[:200].rstrip("\r\n"))
                continue
            yield normalize(obj, location, fallback_source=path.name, default_domain=default_domain, raw=text)


def _read_json_array(path: Path, default_domain: str | None) -> Iterator[Sample | Problem]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        yield Problem("malformed", f"{path}", f"invalid UTF-8 at byte {exc.start} of the file")
        return
    except json.JSONDecodeError as exc:
        yield Problem("malformed", f"{path}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    if not isinstance(data, list):
        yield Problem("malformed", f"{path}", f"a .json input must hold a list of records, got {_kind(data)}")
        return
    for i, obj in enumerate(data):
        yield normalize(obj, f"{path}:[{i}]", fallback_source=path.name, default_domain=default_domain)


# -- one record ----------------------------------------------------------------------------------

class _Bad(Exception):
    pass


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def normalize(obj: Any, location: str, *, fallback_source: str, default_domain: str | None = None,
              raw: str = "") -> Sample | Problem:
    """One parsed JSON value -> a ``Sample``, or a ``Problem`` saying what is wrong with it."""
    raw = raw[:200].rstrip("\r\n")
    if not isinstance(obj, dict):
        return Problem("malformed", location, f"expected a JSON object, got {_kind(obj)}", raw=raw)
    meta = obj.get("_metadata")
    if meta is not None and not isinstance(meta, dict):
        return Problem("malformed", location, f"'_metadata' must be an object, got {_kind(meta)}", raw=raw)
    meta = meta or {}

    def field_(name: str) -> Any:
        value = obj.get(name)
        return meta.get(name) if value is None else value

    domain_value = field_("domain")
    domain = normalize_domain(domain_value) if isinstance(domain_value, str) and domain_value.strip() else None
    sample_id_value = field_("sample_id")
    try:
        if "messages" in obj:
            messages, instruction, input_, output = _chatml(obj["messages"])
            layout = "chatml"
            if (isinstance(obj.get("instruction"), str) and isinstance(obj.get("input", ""), str)
                    and obj.get("output") == output):  # a prepared record: it carries both shapes
                instruction, input_, layout = obj["instruction"], obj.get("input") or "", "prepared"
        elif "instruction" in obj or "output" in obj:
            messages, instruction, input_, output = _alpaca(obj)
            generator = any(k in obj for k in ("sample_id", "quality_score", "teacher_model"))
            layout = "generator" if generator else "alpaca"
        else:
            raise _Bad("neither 'messages' (ChatML) nor 'instruction'/'output' (Alpaca, generator) is present")
        if meta:
            layout += "+_metadata"
        if domain_value is not None and not isinstance(domain_value, str):
            raise _Bad(f"'domain' must be a string, got {_kind(domain_value)}")
        if domain is None:
            if default_domain is None:
                raise _Bad("missing field 'domain' (pass --domain to name one for records without it)")
            domain = normalize_domain(default_domain)
        quality = _quality(field_("quality_score"))
        source = field_("source")
        if source is not None and not isinstance(source, str):
            raise _Bad(f"'source' must be a string, got {_kind(source)}")
        if sample_id_value is not None and (isinstance(sample_id_value, bool)
                                            or not isinstance(sample_id_value, (str, int))):
            raise _Bad(f"'sample_id' must be a string, got {_kind(sample_id_value)}")
    except _Bad as exc:
        return Problem("malformed", location, str(exc), domain=domain, raw=raw,
                       sample_id=str(sample_id_value) if isinstance(sample_id_value, (str, int)) else None)

    if sample_id_value is None or str(sample_id_value).strip() == "":
        # no id: a stable one from the place and the content, so reruns give the same id
        sample_id = "gen-" + str(uuid.uuid5(_ID_NAMESPACE, f"{Path(location).name}\n{instruction}\n{input_}\n{output}"))
    else:
        sample_id = str(sample_id_value)
    if not output.strip():
        return Problem("empty_output", location, "the answer (output / final assistant turn) is empty",
                       domain=domain, raw=raw, sample_id=sample_id)
    return Sample(messages=messages, instruction=instruction, input=input_, output=output, domain=domain,
                  sample_id=sample_id, quality_score=quality, source=source or fallback_source,
                  location=location, layout=layout)


def _quality(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"'quality_score' must be a number in 0..1 or null, got {_kind(value)} {json.dumps(value)[:40]}")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise _Bad(f"'quality_score' must be in 0..1, got {value}")
    return float(value)


def _text(value: Any, name: str, *, required: bool) -> str:
    if value is None:
        if required:
            raise _Bad(f"missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise _Bad(f"'{name}' must be a string, got {_kind(value)}")
    return value


def _alpaca(obj: dict[str, Any]) -> tuple[list[dict[str, str]], str, str, str]:
    instruction = _text(obj.get("instruction"), "instruction", required=True)
    input_ = _text(obj.get("input"), "input", required=False)
    output = _text(obj.get("output"), "output", required=True)
    system = _text(obj.get("system"), "system", required=False)
    if not instruction.strip() and not input_.strip():
        raise _Bad("'instruction' and 'input' are both empty: there is no prompt")
    user = instruction if not input_.strip() else f"{instruction}\n\n{input_}"
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return messages, instruction, input_, output


def _chatml(value: Any) -> tuple[list[dict[str, str]], str, str, str]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"'messages' must be a non-empty list, got {_kind(value) if value != [] else 'an empty list'}")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Bad(f"messages[{i}] must be an object, got {_kind(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise _Bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _Bad(f"messages[{i}].content has parts other than text")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _Bad(f"messages[{i}].content must be a string, got {_kind(content)}")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise _Bad(f"'messages' must end with the assistant's answer, ends with a {messages[-1]['role']} turn")
    users = [m for m in messages if m["role"] == "user"]
    if not users or not any(u["content"].strip() for u in users):
        raise _Bad("'messages' has no non-empty user turn")
    return messages, users[-1]["content"], "", messages[-1]["content"]
