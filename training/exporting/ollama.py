"""An Ollama model from a LoRA adapter: the GGUF LoRA plus a Modelfile.

Ollama takes safetensors adapters only for Llama, Mistral and Gemma; a Qwen2 adapter must be a
GGUF LoRA, and each adapter is its own Ollama model (``ollama create NAME -f Modelfile``).

The Modelfile:

    FROM qwen2.5-coder:1.5b-instruct    the base: an Ollama tag, or a GGUF file (--ollama-from)
    ADAPTER ./NAME.gguf                 the LoRA, beside the Modelfile
    TEMPLATE <ChatML>                   ChatML in Go-template syntax: system (with the tool list,
                                        in Qwen2.5's wording), user, assistant (with <tool_call>
                                        blocks), tool results as <tool_response> user turns
    PARAMETER stop "<|im_end|>"         and the sampling defaults below
    SYSTEM <text>                       only when a system prompt is given

The sampling defaults are what YAZE sends on its Ollama path (docs/ecosystem.md): temperature
0.1, top_p 0.92, top_k 40, num_ctx 4096; a registry entry's ``parameters`` and ``--parameter``
override them.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.exporting.errors import ExportError

DEFAULT_PARAMETERS: dict[str, float | int] = {"temperature": 0.1, "top_p": 0.92, "top_k": 40, "num_ctx": 4096}
STOPS = ("<|im_end|>", "<|endoftext|>")
# registry / OpenAI names -> Modelfile PARAMETER names
RENAMED = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}
KNOWN_PARAMETERS = {"temperature", "top_p", "top_k", "min_p", "num_ctx", "num_predict", "repeat_penalty",
                    "repeat_last_n", "seed", "stop", "presence_penalty", "frequency_penalty"}
# Qwen2.5-Instruct's chat template falls back to this system prompt; adapters trained through that
# template saw it, so the Modelfile keeps it when no other system prompt is given.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML for Ollama's Go templates. .System holds the request's system messages (or the
# Modelfile's SYSTEM), so system entries inside .Messages are skipped. An assistant turn that
# ends the list is left open: Ollama continues it.
CHATML_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ .System }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- if .Messages }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{- if .Content }}
{{ .Content }}
{{- end }}
{{- range .ToolCalls }}
<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>
{{- end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

_QWEN_ID = re.compile(r"(?:^|/)Qwen(?P<ver>2\.5|2)-(?P<coder>Coder-)?(?P<size>\d+(?:\.\d+)?)B(?P<instruct>-Instruct)?$",
                      re.IGNORECASE)


def ollama_tag_for(base_ref: str | None) -> str | None:
    """The stock Ollama tag of a Hugging Face Qwen2/2.5 id: ``Qwen/Qwen2.5-Coder-1.5B-Instruct``
    -> ``qwen2.5-coder:1.5b-instruct``, ``Qwen/Qwen2.5-Coder-1.5B`` -> ``qwen2.5-coder:1.5b-base``;
    None when there is none."""
    m = _QWEN_ID.search((base_ref or "").rstrip("/"))
    if m is None:
        return None
    family = f"qwen{m['ver']}" + ("-coder" if m["coder"] else "")
    return f"{family}:{m['size'].lower()}b-{'instruct' if m['instruct'] else 'base'}"


def parameters(registry: dict | None, overrides: list[str]) -> dict[str, object]:
    """Defaults, then a registry entry's ``parameters``, then ``--parameter KEY=VALUE``."""
    out: dict[str, object] = dict(DEFAULT_PARAMETERS)
    for key, value in (registry or {}).items():
        key = RENAMED.get(key, key)
        if key in KNOWN_PARAMETERS and key != "stop":
            out[key] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        key = RENAMED.get(key.strip(), key.strip())
        if not sep or not key:
            raise ExportError(f"--parameter {item!r}: expected KEY=VALUE, e.g. temperature=0.2")
        if key not in KNOWN_PARAMETERS or key == "stop":
            raise ExportError(f"--parameter {key}: not a Modelfile parameter this export sets; "
                              f"known: {', '.join(sorted(KNOWN_PARAMETERS - {'stop'}))}")
        out[key] = _number(value.strip())
    return out


def _number(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _quote_block(text: str, what: str) -> str:
    if '"""' in text:
        raise ExportError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(*, base: str, adapter_file: str, params: dict[str, object], system: str | None) -> str:
    lines = ["# Built by `oracle-council export --format ollama`. Create the model with:",
             "#   ollama create <name> -f Modelfile",
             f"FROM {base}",
             f"ADAPTER ./{adapter_file}",
             f"TEMPLATE {_quote_block(CHATML_TEMPLATE, 'template')}"]
    lines += [f'PARAMETER stop "{s}"' for s in STOPS]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    if system:
        lines.append(f"SYSTEM {_quote_block(system, 'system prompt')}")
    return "\n".join(lines) + "\n"


def default_system(chat_template: str | None) -> str | None:
    """The system prompt a base's chat template falls back to (Qwen2.5-Instruct has one)."""
    return QWEN_DEFAULT_SYSTEM if chat_template and QWEN_DEFAULT_SYSTEM in chat_template else None


def resolve_from(value: str | None, base_ref: str | None) -> str:
    """The FROM line's argument: an existing file becomes its absolute path, anything else is a
    tag; without --ollama-from, the base's stock Ollama tag."""
    if value:
        path = Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
        if value.endswith(".gguf") or "/" in value and not re.match(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$", value):
            raise ExportError(f"--ollama-from {value}: no such file")
        return value
    tag = ollama_tag_for(base_ref)
    if tag is None:
        raise ExportError(f"cannot tell the Ollama tag of the base {base_ref!r}; pass --ollama-from TAG "
                          "(e.g. qwen2.5-coder:1.5b) or --ollama-from PATH.gguf (a GGUF of the base: "
                          "`oracle-council export --format gguf-base`)")
    return tag
