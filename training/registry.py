"""Add or update a specialist's ``[[models]]`` entry in a registry TOML file (``export --register``).

The file is edited with tomlkit, so comments, blank lines and key order survive; an existing
entry of the same name is updated in place (only the keys the export decides are touched:
``backend``, ``upstream_model``, ``oracle``, ``base_model``, ``system_prompt`` when given, and
``deployed`` back to true), a new one is appended after the last ``[[models]]``. A backend is
created only when ``--backend`` names none of the file's backends and ``--base-url`` is given.
For a ``local`` backend the adapter folder is also put in its ``options.adapters`` table, which
is where that backend finds adapters. The file is replaced atomically.

The gateway's loader (``gateway.config.load_config``) is the judge of the result; this module
checks what it can without importing the gateway (the training package never does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomllib

from training.exporting.atomic import atomic_write_text
from training.exporting.errors import ExportError

SPECIAL_ORACLES = ("system", "future")
# which export a backend kind can serve
SERVES = {
    "openai": ("vllm", "merged", "gguf", "ollama"),   # vLLM, llama.cpp's server, LM Studio
    "ollama": ("ollama",),
    "local": ("vllm",),                               # a peft folder over the backend's base_model
    "litellm": ("vllm", "merged", "gguf", "ollama"),
}


@dataclass
class Registration:
    config: Path
    name: str
    backend: str
    kind: str
    upstream_model: str
    oracle: str
    base_model: str | None = None
    system_prompt: str | None = None
    adapter_path: str | None = None       # for a local backend's options.adapters
    new_backend_url: str | None = None    # set: the backend is created


def read_entry(config: str | Path, name: str) -> dict | None:
    """The ``[[models]]`` entry called ``name``, or None."""
    data = _load(Path(config))
    return next((m for m in data.get("models", []) if isinstance(m, dict) and m.get("name") == name), None)


def plan(config: str | Path, *, name: str, backend: str, fmt: str, output: Path, base_url: str | None = None,
         backend_kind: str | None = None, upstream_model: str | None = None, oracle: str | None = None,
         base_model: str | None = None, system_prompt: str | None = None) -> Registration:
    """Check everything before the export runs, so a bad --register fails fast."""
    path = Path(config)
    data = _load(path)
    backends = {b.get("name"): b for b in data.get("backends", []) if isinstance(b, dict)}
    if backend in backends:
        kind = str(backends[backend].get("kind", ""))
        new_url = None
    elif base_url:
        kind = backend_kind or ("ollama" if fmt == "ollama" else "openai")
        if kind not in ("openai", "ollama"):
            raise ExportError(f"--backend-kind {kind}: a new backend made from --base-url is 'openai' or 'ollama'")
        new_url = base_url
    else:
        known = ", ".join(sorted(str(n) for n in backends)) or "(none)"
        raise ExportError(f"{path}: no [[backends]] named {backend!r}; existing backends: {known}. "
                          "Name one of them, or add --base-url URL to create it")
    if kind in SERVES and fmt not in SERVES[kind]:
        raise ExportError(f"backend {backend!r} is kind {kind!r}, which serves {' or '.join(SERVES[kind])} "
                          f"exports, not --format {fmt}")

    from router.taxonomy import MASTER_SWORD, SYSTEM_ORACLE, specialist

    if oracle is None:
        spec = specialist(name)
        if spec is not None:
            oracle = spec.oracle
        elif name == MASTER_SWORD:
            oracle = SYSTEM_ORACLE
        else:
            existing = read_entry(path, name)
            if existing and existing.get("oracle"):
                oracle = str(existing["oracle"])
            else:
                raise ExportError(f"{name!r} is not a specialist of the taxonomy (router/taxonomy.py), so its "
                                  "oracle is unknown; pass --oracle NAME")
    oracles = {o.get("name") for o in data.get("oracles", []) if isinstance(o, dict)}
    if oracles and oracle not in oracles | set(SPECIAL_ORACLES):
        raise ExportError(f"{path}: oracle {oracle!r} is not among the file's [[oracles]] "
                          f"({', '.join(sorted(oracles))}) nor {' / '.join(SPECIAL_ORACLES)}")

    if upstream_model is None:
        upstream_model = name   # the --lora-modules name, the Ollama tag, the served model name
    return Registration(config=path, name=name, backend=backend, kind=kind, upstream_model=upstream_model,
                        oracle=oracle, base_model=base_model, system_prompt=system_prompt,
                        adapter_path=str(output.resolve()) if kind == "local" else None, new_backend_url=new_url)


def apply(reg: Registration) -> str:
    """Write the entry; returns "created" or "updated"."""
    import tomlkit

    text = reg.config.read_text("utf-8")
    doc = tomlkit.parse(text)

    if reg.new_backend_url:
        backend = tomlkit.table()
        backend["name"] = reg.backend
        backend["kind"] = reg.kind
        backend["base_url"] = reg.new_backend_url
        _array_of_tables(doc, "backends").append(backend)
    if reg.adapter_path:
        entry = next(b for b in doc["backends"] if b.get("name") == reg.backend)
        if "options" not in entry:
            entry["options"] = tomlkit.table()
        options = entry["options"]
        if "adapters" not in options:
            options["adapters"] = tomlkit.inline_table()
        options["adapters"][reg.name] = reg.adapter_path

    models = _array_of_tables(doc, "models")
    entry = next((m for m in models if m.get("name") == reg.name), None)
    action = "updated" if entry is not None else "created"
    if entry is None:
        entry = tomlkit.table()
        entry["name"] = reg.name
        models.append(entry)
    entry["oracle"] = reg.oracle
    entry["backend"] = reg.backend
    entry["upstream_model"] = reg.upstream_model
    if reg.base_model:
        entry["base_model"] = reg.base_model
    if reg.system_prompt:
        entry["system_prompt"] = reg.system_prompt
    if entry.get("deployed") is False:
        entry["deployed"] = True

    out = tomlkit.dumps(doc)
    try:
        tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:  # a tomlkit bug would show here, not in the gateway
        raise ExportError(f"{reg.config}: the edited registry does not parse ({exc}); the file was left as it was")
    atomic_write_text(reg.config, out)
    return action


def _array_of_tables(doc, key: str):
    import tomlkit

    if key not in doc:
        doc.append(key, tomlkit.aot())
    return doc[key]


def _load(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"{path}: invalid TOML: {exc}") from None
