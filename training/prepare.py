"""``oracle-council data prepare``: the users' datasets -> one prepared dataset folder.

Reads generator samples, Alpaca, ChatML (metadata at the top or under ``_metadata``) and curated
dataset folders; normalizes every record to the prepared-record shape (contract 2); maps each
domain to its specialist and task type (``training.domains``); rejects samples under their
domain's quality threshold, exact and near duplicates, malformed lines and empty answers (each
with its reason in ``rejected.jsonl``); splits by domain; writes ``train.jsonl``, ``val.jsonl``,
``test.jsonl``, ``metadata.json`` and ``rejected.jsonl`` atomically and prints a summary table.

Exit status: 0 done; 1 nothing survived the filters (nothing written); 2 bad options or input
(missing or unreadable path, an output folder in the way without ``--force``, a bad ``--split``
or ``--domain-map``, the embedding model unavailable). See docs/data.md.

The top level imports only the standard library; the pipeline loads when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", nargs="+", action="extend", required=True, metavar="PATH",
                        help="sample files (.jsonl, or .json holding a list) or folders (a curated dataset folder "
                             "reads its train/val/test.jsonl; other folders every *.jsonl, recursively); repeatable")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="the dataset folder to write")
    parser.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                        help="split fractions, stratified by domain (default: 0.8,0.1,0.1)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split's shuffles (default: 42)")
    parser.add_argument("--specialist", metavar="NAME", help="keep only the samples of this specialist")
    parser.add_argument("--no-near-dedup", action="store_true",
                        help="skip near-duplicate removal (no embedding model is loaded)")
    parser.add_argument("--min-quality", type=float, metavar="X",
                        help="one quality threshold for every domain, replacing the per-domain ones")
    parser.add_argument("--domain-map", metavar="FILE",
                        help="JSON object {domain: specialist} tried before the built-in mapping")
    parser.add_argument("--domain", dest="default_domain", metavar="NAME",
                        help="domain for records that have none (otherwise they are rejected as malformed)")
    parser.add_argument("--unknown-domains", choices=("keep", "reject"), default="keep",
                        help="domains no mapping knows: keep them for master-sword (default) or reject them")
    parser.add_argument("--require-quality", action="store_true",
                        help="reject samples without a quality_score (default: keep them, no threshold applied)")
    parser.add_argument("--embedding-model", metavar="NAME",
                        help="sentence-transformers model for near duplicates (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary table")


def _fail(message: str, code: int = 2) -> int:
    print(f"oracle-council data prepare: error: {message}", file=sys.stderr)
    return code


def _load_domain_map(path: str) -> dict[str, str]:
    from router.taxonomy import MASTER_SWORD, SPECIALIST_NAMES
    from training.domains import normalize_domain

    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--domain-map {path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--domain-map {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - reported as a usage error like the others
            f"--domain-map {path}: must be a JSON object {{domain: specialist}}")
    known = (*SPECIALIST_NAMES, MASTER_SWORD)
    out = {}
    for domain, spec in data.items():
        if spec not in known:
            raise ValueError(f"--domain-map {path}: {domain!r} -> {spec!r} is not a specialist "
                             f"(one of: {', '.join(known)})")
        out[normalize_domain(domain)] = spec
    return out


def run(args: argparse.Namespace) -> int:
    from router.taxonomy import MASTER_SWORD, SPECIALIST_NAMES
    from training.dataprep.pipeline import (
        PrepareError,
        PrepareOptions,
        check_output,
        prepare,
        summary_table,
        write_output,
    )
    from training.dataprep.split import parse_fractions

    started = time.perf_counter()
    try:
        fractions = parse_fractions(args.split)
        domain_map = _load_domain_map(args.domain_map) if args.domain_map else {}
    except ValueError as exc:
        return _fail(str(exc))
    if args.specialist and args.specialist not in (*SPECIALIST_NAMES, MASTER_SWORD):
        return _fail(f"--specialist {args.specialist!r} is not a specialist (one of: "
                     f"{', '.join((*SPECIALIST_NAMES, MASTER_SWORD))})")
    if args.min_quality is not None and not 0.0 <= args.min_quality <= 1.0:
        return _fail(f"--min-quality must be in 0..1, got {args.min_quality}")
    options = PrepareOptions(
        inputs=list(args.input), output=args.output, split=fractions, seed=args.seed, specialist=args.specialist,
        near_dedup=not args.no_near_dedup, min_quality=args.min_quality, domain_map=domain_map,
        domain_map_file=args.domain_map, default_domain=args.default_domain, unknown_domains=args.unknown_domains,
        require_quality=args.require_quality, embedding_model=args.embedding_model, force=args.force,
        quiet=args.quiet)
    try:
        check_output(options)  # before the work, so a folder in the way fails fast
        result = prepare(options)
        out = write_output(result, options)
    except PrepareError as exc:
        return _fail(str(exc), exc.exit_code)
    counts = result.metadata["counts"]
    if not args.quiet:
        print(summary_table(result))
        splits = counts["splits"]
        print(f"wrote {out}: train {splits['train']}, val {splits['val']}, test {splits['test']}; "
              f"rejected {counts['rejected']} (rejected.jsonl); {time.perf_counter() - started:.1f} s")
    return 0
