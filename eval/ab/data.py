"""A/B test samples: a prepared ``test.jsonl`` (chat ``messages``) or generator/Alpaca lines.

Each line becomes a ``Sample``: the conversation to send (the system and user turns, without the
reference answer), the reference answer, the domain and the specialist that domain implies
(``training.domains.specialist_for``). Bad lines raise ``DataError`` naming file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    sample_id: str
    line: int
    domain: str
    messages: tuple[dict, ...]
    reference: str
    expected_specialist: str
    task_type: str | None
    prompt: str  # the last user turn, for reports


def _messages_from(rec: dict, where: str) -> tuple[list[dict], str]:
    msgs = rec.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: each message needs a role (system/user/assistant) and string content")
        reference = rec.get("output")
        if msgs[-1]["role"] == "assistant":
            reference = msgs[-1]["content"] if reference is None else reference
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise DataError(f"{where}: the conversation must end with a user turn (before the reference answer)")
        if not isinstance(reference, str):
            raise DataError(f"{where}: no reference answer (a final assistant turn or 'output')")
        return [{"role": m["role"], "content": m["content"]} for m in msgs], reference
    instruction = rec.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: needs 'messages' or a non-empty 'instruction'")
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"{where}: 'input' must be a string")
    output = rec.get("output")
    if not isinstance(output, str):
        raise DataError(f"{where}: 'output' (the reference answer) must be a string")
    content = instruction.strip() + ("\n\n" + extra.strip() if extra.strip() else "")
    return [{"role": "user", "content": content}], output


def load_samples(path: str | Path, *, limit: int | None = None) -> list[Sample]:
    from training.domains import specialist_for

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object")
            msgs, reference = _messages_from(rec, where)
            domain = rec.get("domain")
            if not isinstance(domain, str) or not domain.strip():
                raise DataError(f"{where}: needs a 'domain' (e.g. asm, gfx, hack_curated)")
            sid = str(rec.get("sample_id") or f"line-{n}")
            if sid in seen:
                raise DataError(f"{where}: sample_id {sid!r} already used on line {seen[sid]}")
            seen[sid] = n
            spec, task = specialist_for(domain)
            samples.append(Sample(sid, n, domain.strip(), tuple(msgs), reference, spec, task,
                                  msgs[-1]["content"]))
            if limit is not None and len(samples) >= limit:
                break
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples
