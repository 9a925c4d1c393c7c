"""The prepare pipeline, top to bottom: read -> map -> filter -> dedup -> split -> write.

``prepare(options)`` returns a ``Result`` (kept samples per split, every rejection, counts and the
metadata) without touching the output folder; ``write_output(result, options)`` writes the five
files into a temporary folder beside the output and renames it into place, so a failed run leaves
no partial folder. ``summary_table(result)`` is what the CLI prints.

Rejection reasons (one JSON line each in ``rejected.jsonl``; every line also has ``file``, ``line``
and, for a sample that parsed, ``sample_id``, ``domain`` and the normalized ``record``):

| reason | when | details |
|---|---|---|
| ``malformed`` | bad UTF-8/JSON, not an object, missing or mistyped field | ``file``, ``line``, ``error``, ``raw`` |
| ``empty_output`` | the answer is empty or blank | ``file``, ``line`` |
| ``unknown_domain`` | only with ``--unknown-domains reject`` | ``domain`` |
| ``missing_quality`` | only with ``--require-quality`` | |
| ``below_threshold`` | ``quality_score`` under the domain's threshold | ``value``, ``threshold``, ``key`` |
| ``exact_duplicate_of`` | same normalized prompt as a kept sample | ``duplicate_of`` (sample_id, file:line) |
| ``near_duplicate_of`` | cosine >= the near-dup threshold | ``duplicate_of``, ``cosine``, ``near_dup_threshold`` |

Records of other specialists under ``--specialist`` are *excluded*, not rejected: they are counted
in the summary and metadata, not written to ``rejected.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.dataprep import dedup
from training.dataprep.records import InputError, Problem, Sample, discover, read_file
from training.dataprep.split import SPLITS, stratified_split
from training.domains import (
    DEFAULT,
    DOMAIN_THRESHOLDS,
    NEAR_DUP_THRESHOLDS,
    near_dup_rule,
    specialist_rule,
    threshold_for,
)

FORMAT_VERSION = 1
REASONS = ("malformed", "empty_output", "unknown_domain", "missing_quality", "below_threshold",
           "exact_duplicate_of", "near_duplicate_of")
OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "metadata.json", "rejected.jsonl")


class PrepareError(Exception):
    """A run that cannot go ahead: bad options, unreadable input, an output folder in the way."""

    exit_code = 2


class NothingKept(PrepareError):
    exit_code = 1


@dataclass
class PrepareOptions:
    inputs: list[str]
    output: str
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    specialist: str | None = None            # keep only this specialist's samples
    near_dedup: bool = True
    min_quality: float | None = None         # replaces every domain's threshold
    domain_map: dict[str, str] = field(default_factory=dict)  # domain -> specialist, tried first
    domain_map_file: str | None = None
    default_domain: str | None = None        # for records without a domain
    unknown_domains: str = "keep"            # keep (-> master-sword) | reject
    require_quality: bool = False            # reject samples without a quality_score
    embedding_model: str | None = None       # None: the offline all-MiniLM-L6-v2
    force: bool = False
    quiet: bool = False


@dataclass
class Rejection:
    reason: str
    details: dict[str, Any]
    domain: str | None
    record: dict[str, Any] | None = None

    def line(self) -> dict[str, Any]:
        out = {"reason": self.reason, **self.details}
        if self.record is not None:
            out["record"] = self.record
        return out


@dataclass
class Result:
    splits: dict[str, list[Sample]]
    rejections: list[Rejection]
    metadata: dict[str, Any]
    rows: dict[str, dict[str, Any]]           # per domain: the summary table's counts
    malformed_locations: list[str]
    blank_lines: dict[str, list[int]]


def _file_line(location: str) -> dict[str, Any]:
    path, _, line = location.rpartition(":")
    if not path:
        return {"file": location, "line": None}
    return {"file": path, "line": int(line) if line.isdigit() else line}


def _progress(total: int, desc: str, quiet: bool, unit: str = "sample"):
    """A tqdm bar on a terminal, nothing otherwise (or with --quiet)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=quiet or not sys.stderr.isatty(),
                leave=False)


def check_output(options: PrepareOptions) -> Path:
    out = Path(options.output)
    if out.exists():
        if not out.is_dir():
            raise PrepareError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not options.force:
            raise PrepareError(f"{out}: exists and is not empty; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise PrepareError(f"{parent}: cannot write here")
    return out


def prepare(options: PrepareOptions) -> Result:
    started = time.perf_counter()
    files: list[Path] = []
    output = Path(options.output).expanduser().resolve()
    for raw in options.inputs:
        try:
            found = discover(Path(raw).expanduser())
        except InputError as exc:
            raise PrepareError(str(exc)) from None
        for f in found:
            # never re-read the folder being replaced (a rerun with --force over an input folder)
            if f not in files and not f.resolve().is_relative_to(output):
                files.append(f)
    if not files:
        raise PrepareError(f"no input files left: every one is inside the output folder {options.output}")

    # 1. read and normalize
    samples: list[Sample] = []
    problems: list[Problem] = []
    blank: dict[str, list[int]] = {}
    inputs_meta = []
    total_bytes = sum(f.stat().st_size for f in files)
    reading = _progress(total_bytes, "reading", options.quiet, unit="B")
    for f in files:
        per = Counter()
        try:
            for item in read_file(f, default_domain=options.default_domain, on_bytes=reading.update):
                if isinstance(item, int):
                    blank.setdefault(str(f), []).append(item)
                    per["blank_lines"] += 1
                elif isinstance(item, Problem):
                    problems.append(item)
                    per[item.reason] += 1
                else:
                    item.index = len(samples)
                    samples.append(item)
                    per["samples"] += 1
                    per["layout:" + item.layout] += 1
        except OSError as exc:
            raise PrepareError(f"{f}: cannot read ({exc.strerror or exc})") from None
        inputs_meta.append({"path": str(f), "samples": per["samples"], "malformed": per["malformed"],
                            "empty_output": per["empty_output"], "blank_lines": per["blank_lines"],
                            "layouts": {k[7:]: v for k, v in sorted(per.items()) if k.startswith("layout:")}})
    reading.close()

    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"specialist": "", "read": 0, "kept": 0, "excluded": 0,
                                                           **{r: 0 for r in REASONS}, **{s: 0 for s in SPLITS}})
    rejections: list[Rejection] = []

    def reject(reason: str, sample: Sample | None, row: str | None, **details: Any) -> None:
        rows[row or "(no domain)"][reason] += 1
        if sample is not None:
            details = {"sample_id": sample.sample_id, "domain": sample.domain, **_file_line(sample.location),
                       **details}
        rejections.append(Rejection(reason, details, row, sample.record() if sample else None))

    for p in problems:
        rows[p.domain or "(no domain)"]["read"] += 1
        if p.domain:
            rows[p.domain]["specialist"] = specialist_rule(p.domain, options.domain_map)[0]
        details = {**_file_line(p.location), "error": p.error}
        if p.domain:
            details["domain"] = p.domain
        if p.sample_id:
            details["sample_id"] = p.sample_id
        if p.raw:
            details["raw"] = p.raw
        reject(p.reason, None, p.domain, **details)

    # 2. domain -> specialist and threshold; --specialist; quality
    unknown: Counter[str] = Counter()
    unscored = 0
    survivors: list[Sample] = []
    for s in samples:
        row = rows[s.domain]
        row["read"] += 1
        s.specialist, s.task_type, s.specialist_key = specialist_rule(s.domain, options.domain_map)
        row["specialist"] = s.specialist
        if options.min_quality is not None:
            s.threshold, s.threshold_key = float(options.min_quality), "--min-quality"
        else:
            s.threshold, s.threshold_key = threshold_for(s.domain)
        if s.specialist_key == DEFAULT:
            unknown[s.domain] += 1
            if options.unknown_domains == "reject":
                reject("unknown_domain", s, s.domain)
                continue
        if options.specialist and s.specialist != options.specialist:
            row["excluded"] += 1
            continue
        if s.quality_score is None:
            unscored += 1
            if options.require_quality:
                reject("missing_quality", s, s.domain)
                continue
        elif s.quality_score < s.threshold:
            reject("below_threshold", s, s.domain, value=s.quality_score, threshold=s.threshold,
                   key=s.threshold_key)
            continue
        survivors.append(s)

    # 3. duplicates: exact over the run, then near within each specialist
    survivors, exact = dedup.exact_dedup(survivors)
    versions = _versions()
    near: list[dedup.Duplicate] = []
    near_time = None
    if options.near_dedup and len(survivors) > 1:
        t0 = time.perf_counter()
        embed = _encoder(options.embedding_model, versions, quiet=options.quiet)
        with _progress(len(survivors), "near-duplicates", options.quiet) as bar:
            survivors, near = dedup.near_dedup(survivors, embed, progress=bar.update)
        near_time = round(time.perf_counter() - t0, 2)
    # a sample's match may itself be removed later (exact dup of A, A near dup of B): name the survivor too
    matched = {id(d.sample): d.of for d in (*exact, *near)}

    def target(d: dedup.Duplicate) -> dict[str, Any]:
        out = {"sample_id": d.of.sample_id, "domain": d.of.domain, **_file_line(d.of.location)}
        final = d.of
        while id(final) in matched:
            final = matched[id(final)]
        if final is not d.of:
            out["kept_sample_id"] = final.sample_id
        return out

    for d in exact:
        reject("exact_duplicate_of", d.sample, d.sample.domain, duplicate_of=target(d))
    for d in near:
        reject("near_duplicate_of", d.sample, d.sample.domain, cosine=d.cosine,
               near_dup_threshold=max(near_dup_rule(d.sample.domain)[0], near_dup_rule(d.of.domain)[0]),
               duplicate_of=target(d))
    if not survivors:
        raise NothingKept("no sample survived (see the counts above); nothing was written")

    # 4. split
    splits = stratified_split(survivors, [s.domain for s in survivors], options.split, options.seed)
    for name, part in splits.items():
        for s in part:
            rows[s.domain][name] += 1
            rows[s.domain]["kept"] += 1

    rejections.sort(key=lambda r: (REASONS.index(r.reason), str(r.details.get("file")),
                                   str(r.details.get("line"))))
    metadata = _metadata(options, inputs_meta, samples, splits, rejections, rows, unknown, unscored,
                         versions, near_time, time.perf_counter() - started)
    return Result(splits, rejections, metadata, dict(rows),
                  [r.details["file"] + f":{r.details['line']}" for r in rejections if r.reason == "malformed"],
                  blank)


def _encoder(model: str | None, versions: dict[str, str], *, quiet: bool):
    from router.encoders import DEFAULT_MODEL

    if quiet or not sys.stderr.isatty():
        try:  # transformers' own "Loading weights" bar
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    enc = _load_encoder(model or DEFAULT_MODEL)
    versions.update(enc.versions())
    versions["embedding_model"] = model or DEFAULT_MODEL
    return enc


@functools.lru_cache(maxsize=2)
def _load_encoder(model: str):
    """Loaded once per process and model (tests and notebooks call ``prepare`` repeatedly)."""
    from router.encoders import SentenceTransformerEncoder
    from router.errors import ClassifierUnavailable

    try:
        return SentenceTransformerEncoder(model, threads=None, batch_size=64)
    except ClassifierUnavailable as exc:
        raise PrepareError(f"near-duplicate removal needs the embedding model: {exc} (or pass --no-near-dedup)") \
            from None


def _versions() -> dict[str, str]:
    from importlib import metadata

    try:
        ours = metadata.version("oracle-council")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return {"oracle-council": ours, "format": str(FORMAT_VERSION), "python": platform.python_version()}


def _metadata(options: PrepareOptions, inputs_meta, samples, splits, rejections, rows, unknown, unscored,
              versions, near_time, elapsed) -> dict[str, Any]:
    kept = [s for part in splits.values() for s in part]
    domains = sorted({s.domain for s in samples})
    per_specialist: dict[str, dict[str, int]] = {}
    for name, part in splits.items():
        for s in part:
            per_specialist.setdefault(s.specialist, {n: 0 for n in SPLITS})[name] += 1
    opts = asdict(options)
    opts["split"] = list(options.split)
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": inputs_meta,
        "counts": {
            "read": len(samples) + sum(1 for r in rejections if r.reason in ("malformed", "empty_output")),
            "kept": len(kept),
            "rejected": len(rejections),
            "excluded_other_specialists": sum(r["excluded"] for r in rows.values()),
            "rejected_by_reason": {r: sum(1 for x in rejections if x.reason == r) for r in REASONS},
            "splits": {name: len(part) for name, part in splits.items()},
            "per_domain": {d: dict(rows[d]) for d in sorted(rows)},
            "per_specialist": dict(sorted(per_specialist.items())),
            "unscored_kept": sum(1 for s in kept if s.quality_score is None),
            "unscored_read": unscored,
        },
        "domains": {d: {"specialist": specialist_rule(d, options.domain_map)[0],
                        "task_type": specialist_rule(d, options.domain_map)[1],
                        "specialist_key": specialist_rule(d, options.domain_map)[2],
                        "threshold": (options.min_quality if options.min_quality is not None else threshold_for(d)[0]),
                        "threshold_key": ("--min-quality" if options.min_quality is not None else threshold_for(d)[1]),
                        "near_dup_threshold": near_dup_rule(d)[0], "near_dup_key": near_dup_rule(d)[1]}
                    for d in domains},
        "unknown_domains": dict(sorted(unknown.items())),
        "thresholds": {"quality": DOMAIN_THRESHOLDS, "near_duplicate": NEAR_DUP_THRESHOLDS,
                       "min_quality_override": options.min_quality},
        "options": opts,
        "versions": versions,
        "timing_s": {"total": round(elapsed, 2), "near_dedup": near_time},
    }


# -- writing -------------------------------------------------------------------------------------

def write_output(result: Result, options: PrepareOptions) -> Path:
    out = check_output(options)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        for name in SPLITS:
            _write_lines(tmp / f"{name}.jsonl", (s.record() for s in result.splits[name]))
        _write_lines(tmp / "rejected.jsonl", (r.line() for r in result.rejections))
        (tmp / "metadata.json").write_text(json.dumps(result.metadata, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_lines(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# -- the summary ---------------------------------------------------------------------------------

_COLUMNS = [("read", "read"), ("kept", "kept"), ("below_threshold", "low_q"), ("exact_duplicate_of", "exact"),
            ("near_duplicate_of", "near"), ("empty_output", "empty"), ("malformed", "bad"), ("other", "other"),
            ("excluded", "excl"), ("train", "train"), ("val", "val"), ("test", "test")]


def summary_table(result: Result, *, max_locations: int = 20) -> str:
    rows = result.rows
    table = [["domain", "specialist", *[h for _, h in _COLUMNS]]]
    totals = Counter()
    for domain in sorted(rows, key=lambda d: (d == "(no domain)", d)):
        r = dict(rows[domain])
        r["other"] = r["unknown_domain"] + r["missing_quality"]
        table.append([domain, r["specialist"] or "-", *[str(r[k]) for k, _ in _COLUMNS]])
        totals.update({k: r[k] for k, _ in _COLUMNS})
    table.append(["total", "", *[str(totals[k]) for k, _ in _COLUMNS]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0 or n == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("columns: low_q below the quality threshold, exact/near duplicates, empty answer, bad = malformed "
                 "line, other = unknown domain or no quality score when rejected, excl = other specialists")
    meta = result.metadata
    unknown = meta["unknown_domains"]
    if unknown:
        action = "rejected" if meta["options"]["unknown_domains"] == "reject" else "mapped to master-sword"
        lines.append(f"unknown domains ({action}): " + ", ".join(f"{d} ({n})" for d, n in unknown.items()))
    if meta["counts"]["unscored_read"]:
        lines.append(f"samples without a quality_score: {meta['counts']['unscored_read']} "
                     f"({'rejected' if meta['options']['require_quality'] else 'kept, threshold not applied'})")
    bad = [r for r in result.rejections if r.reason == "malformed"]
    if bad:
        lines.append(f"malformed lines ({len(bad)}, all in rejected.jsonl):")
        for r in bad[:max_locations]:
            lines.append(f"  {r.details['file']}:{r.details['line']}: {r.details['error']}")
        if len(bad) > max_locations:
            lines.append(f"  ... and {len(bad) - max_locations} more")
    for path, numbers in result.blank_lines.items():
        shown = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
        lines.append(f"blank lines skipped in {path}: {shown}")
    return "\n".join(lines)
