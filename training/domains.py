"""Sample domains: quality thresholds, near-duplicate thresholds and the specialist each one trains.

The users' generators write a ``domain`` on every sample (``asm_debug``, ``gfx``, ``lore`` ...).
Three tables here turn it into decisions, each looked up the same way: the exact domain first,
then its *family* (the domain with its last ``_``/``-`` segment removed, repeatedly:
``asm_hook_v2`` -> ``asm_hook`` -> ``asm``), then ``default``. Every lookup also says which key
applied, so a prepared dataset can record why a threshold was used. (The users' own tooling looked
domains up exactly, so ``asm_debug`` silently fell through to the default; here it does not.)

- ``DOMAIN_THRESHOLDS``: the minimum ``quality_score`` a sample needs. The plan's values (asm_base
  ... dialogue) plus the ones the users' code adds (asm, gigaleak, oracle, cpp, errors, text,
  default).
- ``NEAR_DUP_THRESHOLDS``: the cosine similarity at or above which two prompts are near
  duplicates (the users' values).
- ``DOMAIN_SPECIALISTS``: the specialist that trains on a domain, and the euclid-asm task type
  where the domain names one (``asm_<task>``; plain ``asm`` is ``asm_base``). A domain spelled as
  a specialist's name maps to that specialist. Unknown domains go to ``master-sword`` (the
  unified model, which also takes out-of-scope prompts at serving time) and
  ``specialist_rule(domain)`` reports the key ``default`` so callers can flag or reject them.

Only the standard library and ``router.taxonomy`` (itself standard library only) are imported.
"""

from __future__ import annotations

import re

from router.taxonomy import ASM_TASK_TYPES, MASTER_SWORD, SPECIALIST_NAMES

DEFAULT = "default"

DOMAIN_THRESHOLDS: dict[str, float] = {
    # the plan's DOMAIN_THRESHOLDS
    "asm_base": 0.4,
    "asm_debug": 0.4,
    "asm_optimize": 0.45,
    "asm_hook": 0.4,
    "asm_doc": 0.5,
    "alttp_historical": 0.5,
    "yaze": 0.5,
    "lore": 0.6,
    "docs": 0.55,
    "narrative": 0.5,
    "dialogue": 0.55,
    # added by the users' own filter code
    "asm": 0.4,
    "gigaleak": 0.45,
    "oracle": 0.4,
    "cpp": 0.5,
    "errors": 0.3,
    "text": 0.6,
    DEFAULT: 0.5,
}

NEAR_DUP_THRESHOLDS: dict[str, float] = {
    "asm": 0.85,
    "oracle": 0.85,
    "text": 0.82,
    "errors": 0.80,
    DEFAULT: 0.88,
}

_EUCLID = "euclid-asm"
_SEPH = "seph-tilesmith"

# domain -> (specialist, euclid-asm task type or None). Families apply too: "asm_foo" -> "asm".
DOMAIN_SPECIALISTS: dict[str, tuple[str, str | None]] = {
    # euclid-asm: 65816 assembly. Task types only where the domain names one.
    "asm": (_EUCLID, "asm_base"),
    **{t: (_EUCLID, t) for t in ASM_TASK_TYPES},          # asm_base, asm_debug, asm_optimize, asm_hook, asm_doc
    "oracle": (_EUCLID, None),            # code from the Oracle of Secrets hack (65816)
    "gigaleak": (_EUCLID, None),          # Nintendo's historical ALttP source (65816)
    "alttp_historical": (_EUCLID, None),  # what the plan calls the gigaleak generator's domain
    "zelda3": (_EUCLID, None),            # the ALttP disassembly
    "errors": (_EUCLID, "asm_debug"),     # assembler/crash errors and their fixes
    # seph-tilesmith: SNES graphics and the YAZE editor's (graphics) C++ code
    "gfx": (_SEPH, None),
    "graphics": (_SEPH, None),
    "yaze": (_SEPH, None),
    "cpp": (_SEPH, None),
    # the other din specialists
    "compression": ("koume-compress", None),
    "decompression": ("kotake-decompress", None),
    "patch": ("agahnim-patcher", None),
    "patches": ("agahnim-patcher", None),
    # oracle-nayru
    "lore": ("nayru-lorekeeper", None),
    "consistency": ("impa-archivist", None),
    "docs": ("kaepora-teacher", None),
    # oracle-farore
    "narrative": ("farore-questweaver", None),
    "quest": ("farore-questweaver", None),
    "dialogue": ("saria-voice", None),
    "text": ("zelda-scribe", None),       # in-game text: item, menu and sign copy
    # system: cross-domain and tool-calling samples train the unified model
    "hack_curated": (MASTER_SWORD, None),
    "tool-use": (MASTER_SWORD, None),
    "tools": (MASTER_SWORD, None),
    # a domain spelled as a specialist's name
    **{name: (name, None) for name in SPECIALIST_NAMES},
    MASTER_SWORD: (MASTER_SWORD, None),
    DEFAULT: (MASTER_SWORD, None),
}

_SEP = re.compile(r"[_-]")


def normalize_domain(domain: str) -> str:
    """Lower case, surrounding blanks removed, inner blanks as ``_`` (``"ASM Debug"`` -> ``asm_debug``)."""
    return re.sub(r"\s+", "_", str(domain).strip().lower())


def lookup_chain(domain: str) -> list[str]:
    """The keys tried for a domain, most specific first: ``asm_hook_v2`` -> [asm_hook_v2, asm_hook, asm]."""
    key = normalize_domain(domain)
    chain = []
    while key:
        chain.append(key)
        parts = _SEP.split(key)
        if len(parts) < 2:
            break
        key = key[: len(key) - len(parts[-1]) - 1]
    return chain


def _resolve(table: dict, domain: str) -> tuple[object, str]:
    for key in lookup_chain(domain):
        if key in table and key != DEFAULT:
            return table[key], key
    return table[DEFAULT], DEFAULT


def threshold_for(domain: str) -> tuple[float, str]:
    """The minimum quality score for a domain and the key that supplied it (domain, family or ``default``)."""
    value, key = _resolve(DOMAIN_THRESHOLDS, domain)
    return float(value), key  # type: ignore[arg-type]


def near_dup_rule(domain: str) -> tuple[float, str]:
    """The near-duplicate cosine threshold for a domain and the key that supplied it."""
    value, key = _resolve(NEAR_DUP_THRESHOLDS, domain)
    return float(value), key  # type: ignore[arg-type]


def near_dup_threshold_for(domain: str) -> float:
    return near_dup_rule(domain)[0]


def specialist_rule(domain: str, overrides: dict[str, str] | None = None) -> tuple[str, str | None, str]:
    """``(specialist, task_type, key)``; ``key`` is ``default`` when nothing matched (an unknown domain).

    ``overrides`` (domain -> specialist, e.g. from ``--domain-map``) are tried first at every step
    of the chain; an overridden domain keeps the task type the built-in table gives it, when the
    override names the same specialist.
    """
    for key in lookup_chain(domain):
        if overrides and key in overrides:
            spec = overrides[key]
            builtin = DOMAIN_SPECIALISTS.get(key)
            return spec, (builtin[1] if builtin and builtin[0] == spec else None), key
        if key in DOMAIN_SPECIALISTS and key != DEFAULT:
            spec, task = DOMAIN_SPECIALISTS[key]
            if key == "asm" and normalize_domain(domain) != "asm":
                task = None  # asm_<something unknown>: euclid-asm, but not base code for sure
            return spec, task, key
    spec, task = DOMAIN_SPECIALISTS[DEFAULT]
    return spec, task, DEFAULT


def specialist_for(domain: str) -> tuple[str, str | None]:
    """The specialist that trains on a domain and its euclid-asm task type (None outside euclid-asm).

    ``asm_debug`` -> ("euclid-asm", "asm_debug"); ``asm`` -> ("euclid-asm", "asm_base"); an unknown
    ``asm_foo`` -> ("euclid-asm", None) through its family ``asm`` (a task we cannot name);
    ``asm_hook_v2`` -> ("euclid-asm", "asm_hook"); ``gfx`` ->
    ("seph-tilesmith", None); an unknown domain -> ("master-sword", None).
    """
    spec, task, _ = specialist_rule(domain)
    return spec, task


def is_known_domain(domain: str) -> bool:
    return specialist_rule(domain)[2] != DEFAULT
