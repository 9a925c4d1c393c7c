"""``oracle-council export``: a trained LoRA adapter, ready for a server.

    oracle-council export --adapter DIR --format vllm|gguf|ollama|merged --output DIR [--name NAME]
    oracle-council export --format gguf-base --base-model DIR --output DIR
    ... [--register CONFIG --backend NAME [--base-url URL]]

Formats (each output is a folder, written beside its final place and renamed when complete):

    vllm       adapter_config.json + adapter_model.safetensors, checked against what vLLM's LoRA
               loader accepts; prints the --max-lora-rank and --lora-modules flags to serve it
    gguf       NAME.gguf: a GGUF LoRA for llama.cpp (Qwen2-family bases)
    ollama     NAME.gguf + Modelfile (FROM base, ADAPTER, ChatML TEMPLATE, PARAMETERs, SYSTEM);
               prints the `ollama create` command
    merged     base + adapter merged into a standalone Hugging Face model folder with tokenizer
    gguf-base  the base model itself as GGUF (f32/f16) with its tokenizer, for llama.cpp and
               Ollama's FROM when the stock tag is not wanted (tests, offline use)

The module's top level imports only the standard library; the work happens in
``training.exporting``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

FORMATS = ("vllm", "gguf", "ollama", "merged", "gguf-base")
MANIFEST = "oracle-council-export.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", metavar="DIR", help="peft LoRA adapter folder (adapter_config.json + weights)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write (see the list above)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (must not exist, unless --force)")
    parser.add_argument("--name", help="model name: the vLLM adapter / Ollama model / GGUF file name "
                        "(default: the adapter folder's name)")
    parser.add_argument("--base-model", metavar="DIR_OR_ID", help="the base model folder (default: the adapter's "
                        "base_model_name_or_path; a Hugging Face id must be in the local cache)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--dtype", default="auto", choices=("auto", "f32", "f16", "bf16"),
                        help="weights' type: GGUF f32|f16 (auto: f32 stays f32, else f16); merged: "
                        "f32|f16|bf16 (auto: the base's)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only errors and the result")
    ollama = parser.add_argument_group("ollama")
    ollama.add_argument("--ollama-from", metavar="TAG_OR_GGUF", help="the Modelfile's FROM: an Ollama tag or a "
                        "base GGUF file (default: the base's stock tag, e.g. qwen2.5-coder:1.5b-instruct)")
    ollama.add_argument("--system", help="system prompt for the Modelfile's SYSTEM (and the registry entry); "
                        "default: the registry entry's system_prompt")
    ollama.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a Modelfile PARAMETER over the defaults (temperature=0.1, top_p=0.92, top_k=40, "
                        "num_ctx=4096); repeatable")
    reg = parser.add_argument_group("registry")
    reg.add_argument("--register", metavar="CONFIG", help="add or update this model's [[models]] entry in CONFIG")
    reg.add_argument("--backend", metavar="NAME", help="with --register: the [[backends]] entry that serves it")
    reg.add_argument("--base-url", metavar="URL", help="with --register: create --backend with this base_url "
                     "if the file has no such backend")
    reg.add_argument("--backend-kind", choices=("openai", "ollama"), help="kind of a backend created from "
                     "--base-url (default: ollama for --format ollama, else openai)")
    reg.add_argument("--upstream-model", help="the name the backend knows the model by (default: --name)")
    reg.add_argument("--oracle", help="the model's oracle (default: from router/taxonomy.py)")


def run(args: argparse.Namespace) -> int:
    from training.exporting.errors import ExportError

    try:
        return _run(args)
    except ExportError as exc:
        print(f"oracle-council export: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from training.exporting import adapter as adapters
    from training.exporting.atomic import atomic_dir, check_target
    from training.exporting.errors import ExportError

    fmt = args.format
    progress = not args.quiet and sys.stderr.isatty()
    say = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.register and not args.backend:
        raise ExportError("--register needs --backend NAME (the [[backends]] entry that will serve the model)")
    if (args.backend or args.base_url) and not args.register:
        raise ExportError("--backend and --base-url only make sense with --register CONFIG")
    if fmt == "gguf-base" and args.register:
        raise ExportError("--format gguf-base exports a base model, not a specialist: nothing to --register")
    if args.dtype == "bf16" and fmt != "merged":
        raise ExportError("--dtype bf16 applies to --format merged only; GGUF exports write f32 or f16")
    if fmt != "gguf-base" and not args.adapter:
        raise ExportError(f"--format {fmt} needs --adapter DIR")
    if fmt == "gguf-base" and not (args.adapter or args.base_model):
        raise ExportError("--format gguf-base needs --base-model DIR (or --adapter DIR, whose base is used)")

    output = Path(args.output).expanduser()
    check_target(output, args.force)

    # 1. inputs: the adapter, its base, and whether they fit
    adapter = adapters.load_adapter(args.adapter) if args.adapter else None
    try:
        base = adapters.resolve_base(adapter, args.base_model)
    except ExportError as exc:
        if fmt != "vllm" or args.base_model:
            raise
        base = None  # vLLM loads the base itself; without a local copy only the shape check is lost
        say(f"note: {exc}\nnote: the base's shapes were not checked; vLLM checks them when it loads the adapter")
    if adapter is not None and base is not None:
        adapters.check_fits(adapter, base)
    name = args.name or (adapter.path.name if adapter else base.path.name)
    if not name or any(c.isspace() for c in name) or "/" in name:
        raise ExportError(f"--name {name!r}: a model name needs no spaces or slashes")

    base_from = None
    if fmt == "ollama":  # the FROM line is settled before any work
        from training.exporting.ollama import resolve_from

        base_from = resolve_from(args.ollama_from, adapter.base_ref)

    # 2. the registry: checked before any work, written after it
    registration = entry = None
    if args.register:
        from training import registry

        entry = registry.read_entry(args.register, name)
        registration = registry.plan(
            args.register, name=name, backend=args.backend, fmt=fmt, output=output, base_url=args.base_url,
            backend_kind=args.backend_kind, upstream_model=args.upstream_model, oracle=args.oracle,
            base_model=adapter.base_ref if adapter else None, system_prompt=args.system)

    # 3. the export, into a temp folder renamed into place when complete
    started = time.perf_counter()
    with atomic_dir(output, force=args.force) as tmp:
        summary = _export(fmt, adapter, base, tmp, output, name=name, args=args, entry=entry, progress=progress,
                          base_from=base_from)
        manifest = {"format": fmt, "name": name, "adapter": str(adapter.path.resolve()) if adapter else None,
                    "base_model": str(base.path.resolve()) if base else (adapter.base_ref if adapter else None),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary["manifest"]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started

    print(f"wrote {output} ({fmt}, {seconds:.1f} s)")
    for line in summary["lines"]:
        print(line)
    if registration is not None:
        from training import registry

        action = registry.apply(registration)
        print(f"{action} [[models]] {name!r} in {registration.config}: backend = {registration.backend!r}, "
              f"upstream_model = {registration.upstream_model!r}, oracle = {registration.oracle!r}")
    return 0


def _export(fmt, adapter, base, tmp: Path, final: Path, *, name: str, args, entry: dict | None,
            progress: bool, base_from: str | None) -> dict:
    """Write ``fmt`` into ``tmp``; returns the manifest's extra fields and the lines to print."""
    if fmt == "vllm":
        from training.exporting.vllm import export_vllm

        result = export_vllm(adapter, tmp)
        base_ref = str(base.path) if base else adapter.base_ref
        lines = [f"  fixed: {fix}" for fix in result.fixes]
        lines += [f"serve it with vLLM (rank {adapter.max_rank}, so --max-lora-rank {result.max_lora_rank} or more):",
                  f"  --enable-lora --max-lora-rank {result.max_lora_rank} --lora-modules {name}={final.resolve()}",
                  (f"  python -m vllm.entrypoints.openai.api_server --model {base_ref} --enable-lora "
                   f"--max-lora-rank {result.max_lora_rank} --lora-modules {name}={final.resolve()}")]
        return {"manifest": {"max_lora_rank": result.max_lora_rank, "fixes": result.fixes}, "lines": lines}

    if fmt in ("gguf", "ollama"):
        from training.exporting.gguf_lora import export_gguf_lora

        info = export_gguf_lora(adapter, base, tmp / f"{name}.gguf", name=name, dtype=args.dtype, progress=progress)
        manifest = {"gguf": f"{name}.gguf", **info}
        if fmt == "gguf":
            gguf_file = final.resolve() / f"{name}.gguf"
            lines = [f"GGUF LoRA {gguf_file} (alpha {info['alpha']:g}, {info['tensors']} tensors, {info['dtype']})",
                     "load it over a GGUF of the base (`--format gguf-base`):",
                     f"  python -m llama_cpp.server --model BASE.gguf --lora_path {gguf_file}",
                     f"  llama-server -m BASE.gguf --lora {gguf_file}"]
            return {"manifest": manifest, "lines": lines}
        return _ollama(base, tmp, final, name=name, args=args, entry=entry, manifest=manifest, base_from=base_from)

    if fmt == "merged":
        from training.exporting.merged import export_merged

        info = export_merged(adapter, base, tmp, dtype=args.dtype, progress=progress)
        lines = [f"merged model ({info['dtype']}, {info['parameters']:,} parameters); serve it with e.g.",
                 f"  python -m vllm.entrypoints.openai.api_server --model {final.resolve()} --served-model-name {name}"]
        return {"manifest": info, "lines": lines}

    from training.exporting.gguf_base import export_gguf_base

    gguf_file = tmp / f"{name}.gguf"
    info = export_gguf_base(base, gguf_file, name=name, dtype=args.dtype, progress=progress)
    lines = [(f"GGUF base model {final.resolve() / gguf_file.name} ({info['dtype']}, {info['tensors']} tensors, "
              f"vocabulary {info['vocab']})")]
    return {"manifest": {"gguf": gguf_file.name, **info}, "lines": lines}


def _ollama(base, tmp: Path, final: Path, *, name: str, args, entry: dict | None, manifest: dict,
            base_from: str) -> dict:
    from training.exporting import ollama

    chat_template = _chat_template(base.path)
    system = args.system or (entry or {}).get("system_prompt") or ollama.default_system(chat_template)
    params = ollama.parameters((entry or {}).get("parameters"), args.parameter)
    text = ollama.modelfile(base=base_from, adapter_file=f"{name}.gguf", params=params, system=system)
    (tmp / "Modelfile").write_text(text, encoding="utf-8")
    manifest.update({"from": base_from, "system": system, "parameters": params})
    lines = [f"Modelfile: FROM {base_from}, ADAPTER ./{name}.gguf" + (", SYSTEM set" if system else ""),
             "create the Ollama model with:",
             f"  ollama create {name} -f {final.resolve() / 'Modelfile'}"]
    return {"manifest": manifest, "lines": lines}


def _chat_template(base_dir: Path) -> str | None:
    """The base's chat template text, read from its files (no tokenizer load needed)."""
    jinja = base_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text("utf-8")
    try:
        template = json.loads((base_dir / "tokenizer_config.json").read_text("utf-8")).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None
