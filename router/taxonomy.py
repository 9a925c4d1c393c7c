"""The taxonomy the router chooses from, as data (design.md section 1).

Three oracles group eleven specialists; ``master-sword`` takes cross-domain prompts (two or more
oracles at once) and, by default, prompts that no specialist covers. A classifier predicts one
*route label*: a specialist, ``master-sword`` or ``out-of-scope``. ``out-of-scope`` is a label,
never a model: the gateway serves it with master-sword (else the default model), and the
decision keeps ``specialist = "out-of-scope"`` so logs and evals can tell it apart from a
cross-domain prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

MASTER_SWORD = "master-sword"
OUT_OF_SCOPE = "out-of-scope"
ROUTER_MODEL = "oracle-council"
SYSTEM_ORACLE = "system"


@dataclass(frozen=True, slots=True)
class Oracle:
    name: str
    aspect: str
    description: str


@dataclass(frozen=True, slots=True)
class Specialist:
    name: str
    oracle: str
    description: str
    task_types: tuple[str, ...] = ()


ORACLES: tuple[Oracle, ...] = (
    Oracle("oracle-din", "power", "technical execution: 65816 assembly, SNES graphics, compression, patches"),
    Oracle("oracle-nayru", "wisdom", "knowledge: Zelda lore and canon, consistency checks, teaching and documentation"),
    Oracle("oracle-farore", "courage", "creation: quests and dungeons, NPC dialogue, in-game text"),
)

# task types of euclid-asm, as the users' generators name them (domain = "asm_<task>")
ASM_TASK_TYPES: dict[str, str] = {
    "asm_base": "write new 65816 code",
    "asm_debug": "find and fix a crash or bug in 65816 code",
    "asm_optimize": "make 65816 code use fewer cycles or bytes",
    "asm_hook": "JSL/JML hooks into vanilla code: org + freespace patches",
    "asm_doc": "explain or comment 65816 code for someone who already reads it",
}

SPECIALISTS: tuple[Specialist, ...] = (
    Specialist("euclid-asm", "oracle-din", "65816 assembly in Asar syntax: write, debug, optimize, hook (org/JSL/"
               "freespace), explain ASM to someone who reads it; even when the code loads palettes, DMAs tiles or "
               "calls the decompressor", tuple(ASM_TASK_TYPES)),
    Specialist("seph-tilesmith", "oracle-din", "SNES graphics: 2/4/8bpp planar tiles, BGR555 palettes and CGRAM, "
               "sprites and OAM, tilemaps, bpp conversion, YAZE graphics code (C++)"),
    Specialist("koume-compress", "oracle-din", "LC_LZ2 and related compression, the encoding side: compressors, "
               "recompressing edited data so it fits"),
    Specialist("kotake-decompress", "oracle-din", "decompression: decoding LC_LZ2 streams, extracting compressed "
               "assets from a ROM"),
    Specialist("agahnim-patcher", "oracle-din", "IPS/BPS patches, copier and internal ROM headers, checksums, ROM "
               "expansion, patch conflicts and overlaps"),
    Specialist("nayru-lorekeeper", "oracle-nayru", "Nintendo's Zelda canon: timeline, history, characters, continuity"),
    Specialist("impa-archivist", "oracle-nayru", "consistency and fact checks of the hack's own documents, "
               "citations, which document says what"),
    Specialist("kaepora-teacher", "oracle-nayru", "teaching beginners: explaining concepts and code, tutorials, "
               "writing documentation and guides"),
    Specialist("farore-questweaver", "oracle-farore", "quest and dungeon design, world layout, puzzles, bosses, "
               "progression and pacing"),
    Specialist("saria-voice", "oracle-farore", "spoken NPC dialogue and character voice"),
    Specialist("zelda-scribe", "oracle-farore", "UI copy: item text, menu and HUD text, quest-log entries, signs"),
)

SPECIALIST_NAMES: tuple[str, ...] = tuple(s.name for s in SPECIALISTS)
ORACLE_NAMES: tuple[str, ...] = tuple(o.name for o in ORACLES)
# every label a classifier may predict, in a fixed order (array columns follow it)
ROUTE_LABELS: tuple[str, ...] = (*SPECIALIST_NAMES, MASTER_SWORD, OUT_OF_SCOPE)

_BY_NAME = {s.name: s for s in SPECIALISTS}


def specialist(name: str) -> Specialist | None:
    return _BY_NAME.get(name)


def oracle_of(label: str) -> str:
    """The oracle of a route label; ``system`` for master-sword and out-of-scope."""
    spec = _BY_NAME.get(label)
    return spec.oracle if spec else SYSTEM_ORACLE


def specialists_of(oracle: str) -> tuple[str, ...]:
    return tuple(s.name for s in SPECIALISTS if s.oracle == oracle)


def is_oracle(name: str) -> bool:
    return name in ORACLE_NAMES


def describe() -> str:
    """The taxonomy as text, for a language-model classifier's instructions."""
    lines = []
    for o in ORACLES:
        lines.append(f"{o.name} ({o.aspect}): {o.description}")
        for s in SPECIALISTS:
            if s.oracle == o.name:
                lines.append(f"  - {s.name}: {s.description}")
                if s.task_types:
                    lines.extend(f"      task_type {t}: {d}" for t, d in ASM_TASK_TYPES.items())
    lines.append(f"{MASTER_SWORD}: a prompt that needs specialists from two or more different oracles at once "
                 "(two specialists of the same oracle do not make a prompt cross-domain)")
    lines.append(f"{OUT_OF_SCOPE}: nothing to do with SNES / Zelda: A Link to the Past ROM hacking")
    return "\n".join(lines)
