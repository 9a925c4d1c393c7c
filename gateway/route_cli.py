"""``oracle-council route``: the gateway's routing decision for prompts, without serving anything.

    oracle-council route [--config FILE] [--json] [--model NAME] "prompt"
    oracle-council route [--config FILE] --batch IN.jsonl [--output OUT.jsonl]

The decision is made exactly as the gateway makes it for a chat request whose last user turn is
the prompt (same config, same cascade, same mapping onto deployed models). ``--batch`` reads one
JSON object with a ``prompt`` field per line (other fields are ignored) and writes one decision
per line, as JSON, in input order. Blank lines are skipped; a line that is not such an object
is an error naming the line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from typing import TextIO

from gateway.config import ROUTER_MODEL, load_config
from gateway.routing import ModelResolver


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="the prompt to route (omit with --batch)")
    p.add_argument("--config", help="registry TOML file (default: the embedded one)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--batch", metavar="IN.jsonl", help="route every line's 'prompt'; one JSON decision per line out")
    p.add_argument("--output", metavar="OUT.jsonl", help="with --batch: write there instead of stdout")
    p.add_argument("--model", default=ROUTER_MODEL, help="the model a client would ask for: oracle-council "
                   "(default) or an oracle name such as oracle-din")


def run(args: argparse.Namespace) -> int:
    if bool(args.prompt) == bool(args.batch):
        print("oracle-council route: give either a prompt or --batch IN.jsonl", file=sys.stderr)
        return 2
    resolver = ModelResolver(load_config(args.config))
    if resolver.cascade is not None:
        resolver.cascade.load()  # the classifiers load (or train, the first time) before any timing starts
        if resolver.cascade.embedding_error:
            print(f"oracle-council route: warning: {resolver.cascade.embedding_error}", file=sys.stderr)
    try:
        if args.batch:
            return asyncio.run(_batch(resolver, args))
        decision = asyncio.run(resolver.decide(args.model, _body(args.prompt)))
    finally:
        resolver.close()
    if args.json:
        print(json.dumps(decision.as_dict()))
    else:
        task = f" ({decision.task_type})" if decision.task_type else ""
        print(f"{decision.model}  <- {decision.specialist}{task}, {decision.oracle}, "
              f"cross-domain {'yes' if decision.cross_domain else 'no'}, confidence {decision.confidence:.2f}, "
              f"router {decision.router}\n  {decision.reason}")
    return 0


async def _batch(resolver: ModelResolver, args: argparse.Namespace) -> int:
    out: TextIO = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for prompt in _prompts(args.batch):
            decision = await resolver.decide(args.model, _body(prompt))
            out.write(json.dumps(decision.as_dict()) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _prompts(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"oracle-council route: {path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise SystemExit(f"oracle-council route: {path}:{n}: needs an object with a 'prompt' string")
            yield row["prompt"]


def _body(prompt: str) -> dict:
    return {"model": ROUTER_MODEL, "messages": [{"role": "user", "content": prompt}]}
