"""The ``oracle-council`` command.

    oracle-council serve [--config FILE] [--host H] [--port N]   run the gateway
    oracle-council demo [--home DIR]                             build the embedded default's model
    oracle-council check --config FILE                           validate a registry and list it
    oracle-council bench gateway [...]                           added latency versus the upstream
    oracle-council route [--config FILE] [--json] "prompt"       the routing decision for a prompt
    oracle-council route [--config FILE] --batch IN.jsonl        one decision per line, as JSON
    oracle-council router train [--data FILE] [--output DIR]     train the embedding classifier
    oracle-council eval routing --data FILE [--config] [--output DIR]   routing accuracy vs baselines
    oracle-council bench router [...]                            routing decision latency
    oracle-council bench soak [--seconds 60] [--rps 50]         load/soak: leaks, drift, accounting
    oracle-council bench train [...]                             LoRA training throughput vs a plain loop
    oracle-council bench generate [...]                          mixed-adapter batches vs one adapter
    oracle-council data prepare --input PATH... --output DIR     datasets -> train/val/test splits
    oracle-council train --data DIR --base-model M --specialist S --output DIR   train a LoRA adapter
    oracle-council train --plan [...]                            estimate training memory
    oracle-council export --adapter DIR --format F --output DIR  vllm | gguf | ollama | merged
    oracle-council eval ab --gateway URL --data FILE --output DIR   offline A/B of two arms
    oracle-council eval ab-online --db FILE                     the online A/B log, summarized
"""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"oracle-council: configuration error:\n{exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `oracle-council ... | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oracle-council", description="A gateway for a family of LoRA specialists.")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (embedded default config without --config)")
    s.add_argument("--config", help="registry TOML file (default: the embedded offline demo)")
    s.add_argument("--host", help="overrides [server].host")
    s.add_argument("--port", type=int, help="overrides [server].port")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [server].log_level")
    s.set_defaults(func=_serve)

    d = sub.add_parser("demo", help="build the embedded default's tiny base model and adapters")
    d.add_argument("--home", help="where to build (default $ORACLE_COUNCIL_HOME or ~/.cache/oracle-council)")
    d.set_defaults(func=_demo)

    c = sub.add_parser("check", help="validate a registry file and print its models")
    c.add_argument("--config", help="registry TOML file (default: the embedded one)")
    c.set_defaults(func=_check)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(metavar="WHAT")
    bg = bsub.add_parser("gateway", help="added latency of the gateway versus calling the upstream directly")
    from eval.bench_gateway import add_arguments
    add_arguments(bg)
    bg.set_defaults(func=_bench_gateway)
    br = bsub.add_parser("router", help="routing decision latency: uncached, cached, batched, by length and labels")
    br.add_argument("--config", help="registry TOML file (default: the embedded one)")
    br.add_argument("--iterations", type=int, default=200, help="timed decisions per measurement")
    br.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    br.set_defaults(func=_bench_router)
    _attach(bsub, "soak", "load and soak at a fixed rate: latency drift, memory, descriptors, upstream "
            "connections, every request in the access log", "eval.soak")
    _attach(bsub, "train", "LoRA training throughput, peak memory and MFU beside a plain transformers+peft loop",
            "eval.bench_train")
    _attach(bsub, "generate", "in-process generation with LoRA adapters: one adapter versus mixed batches, "
            "ours beside peft's", "eval.bench_generate")

    r = sub.add_parser("route", help="print the routing decision for a prompt (or --batch IN.jsonl)")
    from gateway.route_cli import add_arguments as add_route_arguments
    add_route_arguments(r)
    r.set_defaults(func=_route)

    rt = sub.add_parser("router", help="the router's classifier")
    rtsub = rt.add_subparsers(metavar="WHAT")
    tr = rtsub.add_parser("train", help="train the embedding classifier; writes heads and metadata to a folder")
    tr.add_argument("--data", help="labelled prompts, JSONL (default: the shipped router/data/train.jsonl)")
    tr.add_argument("--output", default="router-classifier", help="folder to write (default: router-classifier)")
    tr.add_argument("--model", help="sentence-transformers model (default: the offline all-MiniLM-L6-v2)")
    tr.set_defaults(func=_router_train)

    e = sub.add_parser("eval", help="evaluations")
    esub = e.add_subparsers(metavar="WHAT")
    er = esub.add_parser("routing", help="routing accuracy on labelled prompts, beside keyword and centroid baselines")
    er.add_argument("--data", required=True, help="labelled prompts, JSONL (prompt, label, task_type, domains)")
    er.add_argument("--config", help="registry TOML file whose [router] is evaluated (default: the embedded one)")
    er.add_argument("--output", help="folder for report.json, decisions.jsonl and the confusion-matrix PNGs")
    er.set_defaults(func=_eval_routing)
    _attach(esub, "ab", "offline A/B: every sample to each arm through the gateway's HTTP API, scored, with a report",
            "eval.ab.cli")
    _attach(esub, "ab-online", "summarize the gateway's online A/B log (SQLite)", "eval.ab.online")

    dt = sub.add_parser("data", help="training datasets")
    dsub = dt.add_subparsers(metavar="WHAT")
    _attach(dsub, "prepare", "normalize, filter, deduplicate and split the users' datasets", "training.prepare")
    _attach(sub, "train", "train a LoRA specialist (or --plan: estimate its memory)", "training.train_cli")
    _attach(sub, "export", "export an adapter for vLLM, llama.cpp/Ollama (GGUF + Modelfile) or merged", "training.export")
    return p


def _attach(subparsers, name: str, help: str, module: str) -> None:
    """A subcommand whose arguments and body live in ``module`` (``add_arguments(parser)``,
    ``run(args)``); the module's top level imports only the standard library."""
    import importlib

    mod = importlib.import_module(module)
    parser = subparsers.add_parser(name, help=help, description=help)
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.run)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_config

    config = load_config(args.config)
    server = config.server
    level = args.log_level or server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=args.host or server.host,
                port=args.port if args.port is not None else server.port,
                log_level=level, access_log=False, timeout_graceful_shutdown=10)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.demo import ensure_demo

    path = ensure_demo(Path(args.home) if args.home else None, progress=True)
    print(f"demo models ready in {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    config = load_config(args.config)
    print(f"{config.source}: OK ({len(config.backends)} backends, {len(config.models)} models)")
    for m in config.models:
        where = ", ".join(f"{d.backend}/{d.upstream_model}" for d in m.all_deployments()) if m.deployed else "-"
        print(f"  {'*' if m.deployed else ' '} {m.name:<20} {m.oracle:<14} {where}")
    print(f"  oracle-council -> {config.default_model_name()} (policy {config.router.policy})")
    return 0


def _route(args: argparse.Namespace) -> int:
    from gateway.route_cli import run

    return run(args)


def _router_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from router.train import TrainConfig, summary, train

    logging.basicConfig(level="INFO", format="%(message)s")
    config = TrainConfig(model=args.model) if args.model else TrainConfig()
    print(summary(train(args.data, Path(args.output), config, threads=1)))
    return 0


def _eval_routing(args: argparse.Namespace) -> int:
    from eval.routing import run

    return run(args)


def _bench_router(args: argparse.Namespace) -> int:
    from eval.bench_router import run

    return run(args)


def _bench_gateway(args: argparse.Namespace) -> int:
    from eval.bench_gateway import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
