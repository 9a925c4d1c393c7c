"""What the ``oracle-council bench`` commands that measure models share: run the measurement,
print its report, and write its JSON atomically when ``--json`` asks; a ``BenchError`` (no GPU,
bad options) is one line on stderr and exit status 2. Standard library only (the GPU machine's
scripts run these benches without the project's other dependencies)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from training.exporting.atomic import atomic_write_text


class BenchError(RuntimeError):
    pass


def finish(name: str, args: argparse.Namespace, bench: Callable[[argparse.Namespace], dict],
           report: Callable[[dict], str]) -> int:
    try:
        results = bench(args)
    except BenchError as exc:
        print(f"oracle-council bench {name}: {exc}", file=sys.stderr)
        return 2
    print(report(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0
