"""Data for the trainer: records in, packed rows of token ids out.

1. ``load_dataset(path, ...)`` reads a prepared folder (contract 2: ``train.jsonl`` and
   ``val.jsonl``, records with ``messages`` and ``specialist``) or one JSONL file in the generator /
   Alpaca (``instruction``, ``input``, ``output``) or ChatML (``messages``) layout, and keeps the
   records of one specialist. Errors name the file and line.
2. ``encode_record`` lays a record out with a template (the tokenizer's ChatML chat template, or
   Alpaca's "### Instruction / ### Input / ### Response") and labels only the reply tokens.
3. ``pack`` puts samples into rows of at most ``max_seq_len`` tokens; ``collate`` makes tensors in
   which each sample's ``position_ids`` restart at 0. transformers reads those restarts as sample
   boundaries: flash-attention runs one variable-length sequence per sample, sdpa and eager
   attention get a block-diagonal causal mask, so no token attends across samples. Targets are
   shifted inside each sample, so no sample is asked to predict the next one's first token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


@dataclass
class Example:
    ids: list[int]
    labels: list[int]          # IGNORE_INDEX outside the reply tokens (not shifted)
    where: str                 # "file:line" it came from

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Split:
    records: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (record, "file:line")
    examples: list[Example] = field(default_factory=list)
    truncated: int = 0         # samples cut at max_seq_len
    dropped: list[str] = field(default_factory=list)  # where each sample with no reply token left came from

    def stats(self) -> dict[str, Any]:
        lengths = [len(e) for e in self.examples]
        return {"records": len(self.records), "samples": len(self.examples), "truncated": self.truncated,
                "dropped_no_reply_tokens": len(self.dropped), "dropped_where": self.dropped[:20],
                "tokens": sum(lengths), "reply_tokens": sum(sum(1 for t in e.labels if t != IGNORE_INDEX)
                                                            for e in self.examples),
                "max_len": max(lengths, default=0),
                "mean_len": round(sum(lengths) / len(lengths), 1) if lengths else 0.0}


def read_jsonl(path: Path) -> list[tuple[dict[str, Any], str]]:
    """Every record of a JSONL file with its ``file:line``; blank lines are skipped."""
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        _check_shape(record, where)
        out.append((record, where))
    return out


def _check_shape(record: dict[str, Any], where: str) -> None:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                    or not isinstance(m.get("content", ""), (str, type(None))):
                raise DataError(f"{where}: messages[{i}] needs a role (system/user/assistant) and string content")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: 'messages' has no assistant turn to train on")
    elif isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if not isinstance(record.get("input", ""), str):
            raise DataError(f"{where}: 'input' must be a string")
    else:
        raise DataError(f"{where}: a record needs 'messages' or 'instruction' + 'output' (got keys {sorted(record)})")


def specialist_of(record: dict[str, Any], where: str) -> str:
    """The record's ``specialist``, else the one its ``domain`` maps to (training.domains)."""
    if isinstance(record.get("specialist"), str) and record["specialist"]:
        return record["specialist"]
    if isinstance(record.get("domain"), str) and record["domain"]:
        from training.domains import specialist_for

        return specialist_for(record["domain"])[0]
    raise DataError(f"{where}: the record has neither 'specialist' nor 'domain'; "
                    "add one, or train on every record with --all-specialists")


@dataclass
class Dataset:
    source: str
    specialist: str
    train: Split
    val: Split

    def fingerprint(self) -> str:
        """A hash of the selected records: a resume checks that the data did not change."""
        h = hashlib.sha256()
        for split in (self.train, self.val):
            for record, _ in split.records:
                h.update(json.dumps(record, sort_keys=True).encode())
            h.update(b"|")
        return h.hexdigest()


def load_dataset(path: str | Path, specialist: str, *, all_specialists: bool = False,
                 val_path: str | Path | None = None) -> Dataset:
    """A prepared folder (train.jsonl + val.jsonl) or one JSONL file, filtered to ``specialist``."""
    path = Path(path)
    if path.is_dir():
        train_file = path / "train.jsonl"
        if not train_file.is_file():
            raise DataError(f"{path}: a prepared dataset folder needs train.jsonl "
                            "(make one with `oracle-council data prepare`)")
        val_file = Path(val_path) if val_path else path / "val.jsonl"
    elif path.is_file():
        train_file, val_file = path, Path(val_path) if val_path else None
    else:
        raise DataError(f"{path}: no such file or folder")

    def select(rows: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
        if all_specialists:
            return rows
        return [(r, w) for r, w in rows if specialist_of(r, w) == specialist]

    train_rows = read_jsonl(train_file)
    train = Split(records=select(train_rows))
    if not train.records:
        found = sorted({specialist_of(r, w) for r, w in train_rows}) if not all_specialists else []
        raise DataError(f"{train_file}: no records for specialist {specialist!r}"
                        + (f" (found: {', '.join(found)})" if found else " (the file is empty)"))
    val = Split(records=select(read_jsonl(val_file))) if val_file and val_file.is_file() else Split()
    return Dataset(source=str(path), specialist=specialist, train=train, val=val)


# -- templates --------------------------------------------------------------------------------


def alpaca_parts(record: dict[str, Any]) -> tuple[str, str, str]:
    """(instruction, input, output) of a record; ChatML records use their last user turn and reply."""
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str) \
            and (record["instruction"] or "messages" not in record):
        return record["instruction"].strip(), str(record.get("input") or "").strip(), record["output"].strip()
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    users = [m for m in messages[:last] if m["role"] == "user"]
    return (users[-1]["content"] or "").strip() if users else "", "", (messages[last]["content"] or "").strip()


def alpaca_prompt(instruction: str, input_: str = "") -> str:
    prompt = f"### Instruction:\n{instruction}\n\n"
    if input_:
        prompt += f"### Input:\n{input_}\n\n"
    return prompt + "### Response:\n"


def encode_record(tokenizer, record: dict[str, Any], template: str, max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """(ids, labels, truncated) for one record; labels are IGNORE_INDEX outside the reply."""
    if template == "alpaca":
        instruction, input_, output = alpaca_parts(record)
        prompt = tokenizer(alpaca_prompt(instruction, input_), add_special_tokens=False)["input_ids"]
        reply = tokenizer(output, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            reply = reply + [tokenizer.eos_token_id]
        ids, labels = prompt + reply, [IGNORE_INDEX] * len(prompt) + reply
    else:
        from training.lora import encode, to_messages

        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("the base model's tokenizer has no chat template; use --template alpaca")
        ids, labels = encode(tokenizer, to_messages(record), max_seq_len=10**9)
    return ids[:max_seq_len], labels[:max_seq_len], len(ids) > max_seq_len


def encode_split(tokenizer, split: Split, template: str, max_seq_len: int) -> Split:
    for record, where in split.records:
        try:
            ids, labels, cut = encode_record(tokenizer, record, template, max_seq_len)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not any(t != IGNORE_INDEX for t in labels[1:]):
            split.dropped.append(where)
            continue
        split.truncated += cut
        split.examples.append(Example(ids, labels, where))
    return split


# -- packing ----------------------------------------------------------------------------------


def pack(lengths: list[int], order: list[int], max_seq_len: int, packing: bool, window: int = 64) -> list[list[int]]:
    """Rows of sample indices, taken in ``order``: each sample goes into the first of the last
    ``window`` open rows with room for it (first fit), else a new row. Without packing, one
    sample per row."""
    if not packing:
        return [[i] for i in order]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for j in range(max(0, len(rows) - window), len(rows)):
            if room[j] >= n:
                rows[j].append(i)
                room[j] -= n
                break
        else:
            rows.append([i])
            room.append(max_seq_len - n)
    return rows


def collate(examples: list[list[Example]], pad_id: int, width: int | None = None):
    """Tensors for a micro-batch of rows: ``input_ids``, ``position_ids`` (restarting at 0 for
    every sample, and for the padding at the end of a row) and ``targets`` (the next token's
    label inside each sample, IGNORE_INDEX elsewhere), all (rows, width)."""
    import torch

    width = width or max(sum(len(e) for e in row) for row in examples)
    ids, pos, tgt = [], [], []
    for row in examples:
        r_ids, r_pos, r_tgt = [], [], []
        for e in row:
            r_ids += e.ids
            r_pos += range(len(e))
            r_tgt += e.labels[1:] + [IGNORE_INDEX]
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        pos.append(r_pos + list(range(pad)))
        tgt.append(r_tgt + [IGNORE_INDEX] * pad)
    return torch.tensor(ids), torch.tensor(pos), torch.tensor(tgt)
