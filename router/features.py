"""Hand-made features that embeddings of a small sentence model miss.

MiniLM reads ``LDA.l $7EF3C5`` or ``{WINDOW 02}`` as noise, and a prompt that asks for two
things ("write his lines and the ASM that picks one") is embedded as the blur of both. Three
groups of cheap features (33 floats, about 0.3 ms a prompt) fix much of that:

- a domain lexicon: for each specialist, the words and spellings that name its field (``bps``,
  ``4bpp``, ``canon``, ``tooltip``); counted per specialist and summed per oracle, plus how many
  oracles are mentioned at all, which is the strongest single cue for a cross-domain prompt;
- code shape: 65816 mnemonics at the start of a line, ``$``-addresses, long WRAM/SRAM addresses
  (``$7EF3C5``), C++ punctuation, code fences, length;
- "two tasks in one prompt": request verbs (``write``, ``fix``, ``design``), a second request
  joined by ``and``/``plus``/``then``/a comma, the number of clauses, whether two clauses lean
  towards different oracles, and which pairs of oracles are mentioned together. Single-domain
  prompts often borrow a second field's words ("the ASM is done, I only need the lines");
  cross-domain ones ask for two deliverables, and these counts tell the two apart.

Measured with 5-fold cross-validation: on the first 704 prompts of router/data/train.jsonl,
embeddings alone reached 0.79 specialist accuracy and embeddings + lexicon + code shape + char
n-grams 0.84; on 823 prompts of the first two batches, adding the two-task group and word
n-grams raised specialist accuracy from 0.784 to 0.814 and cross-domain F1 from 0.647 to 0.725
(``router train`` prints the per-class scores). The lexicon was written from the taxonomy, not
from any evaluation set.
"""

from __future__ import annotations

import math
import re

from router.taxonomy import ORACLE_NAMES, SPECIALIST_NAMES, oracle_of


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w$])(?:" + "|".join(patterns) + r")(?!\w)", re.I)


LEXICON: dict[str, re.Pattern[str]] = {
    "euclid-asm": _words(
        r"asm", r"assembly", r"65c?816", r"asar", r"opcodes?", r"(?:sub)?routines?", r"hook(?:s|ed|ing)?", r"jsl", r"jml",
        r"jsr", r"rtl", r"rts", r"org", r"freespace", r"pushpc", r"pullpc", r"rep", r"sep", r"ld[axy]", r"st[axyz]", r"adc",
        r"sbc", r"cmp", r"cp[xy]", r"b(?:ne|eq|ra|rl|cc|cs|pl|mi|vs|vc)", r"ph[abdkpxy]", r"pl[abdpxy]", r"xba",
        r"t[axy][axys]", r"mv[np]", r"accumulator", r"registers?", r"cycles?", r"crash(?:es|ed|ing)?", r"softlocks?",
        r"breakpoints?", r"debugger", r"mesen", r"bsnes", r"stack", r"nmi", r"irq", r"h?dma", r"8-bit", r"16-bit", r"wram",
        r"sram", r"ram", r"flags?", r"labels?"),
    "seph-tilesmith": _words(
        r"tiles?", r"tilesets?", r"tilemaps?", r"[248] ?bpp", r"bpp", r"palettes?", r"cgram", r"bgr ?555", r"colou?rs?",
        r"sprites?", r"oam", r"vram", r"chr", r"gfx", r"graphics?", r"pixels?", r"png", r"recolou?r\w*", r"bg ?[1-4]",
        r"mode ?7", r"portraits?", r"planar", r"bitplanes?", r"8x8", r"16x16"),
    "koume-compress": _words(
        r"compress(?:ion|or|ed|ing)?", r"recompress\w*", r"lc_?lz2", r"lz2?", r"encod(?:e|er|ing)", r"pack(?:ing|er)?",
        r"ratio", r"smaller"),
    "kotake-decompress": _words(
        r"decompress\w*", r"decod(?:e|er|ing)", r"unpack\w*", r"extract\w*", r"rip(?:ping)?", r"dump(?:ing|ed)?",
        r"inflat\w*"),
    "agahnim-patcher": _words(
        r"ips", r"bps", r"patch(?:es|ed|ing|er)?", r"flips", r"header(?:ed|less)?", r"smc", r"sfc", r"checksums?",
        r"complement", r"expan(?:d|ded|sion)", r"lorom", r"hirom", r"exhirom", r"rom size", r"mbit", r"[1-9] ?mb",
        r"overlap\w*", r"conflicts?", r"unheadered", r"copier"),
    "nayru-lorekeeper": _words(
        r"lore", r"canon\w*", r"timeline", r"historia", r"backstory", r"history", r"official(?:ly)?", r"legends?",
        r"triforce", r"goddess(?:es)?", r"sages?", r"ganon(?:dorf)?", r"imprisoning war", r"sheikah", r"hylians?",
        r"nintendo", r"in the games?", r"mythology"),
    "impa-archivist": _words(
        r"docs?", r"documents?", r"consisten\w*", r"inconsisten\w*", r"contradict\w*", r"fact[- ]?check\w*", r"verif\w*",
        r"cit(?:e|ation)s?", r"sources?", r"changelog", r"wiki", r"design doc", r"mismatch\w*", r"disagree\w*",
        r"audit\w*", r"cross[- ]?referenc\w*", r"notes", r"spreadsheet", r"script files?"),
    "kaepora-teacher": _words(
        r"explain\w*", r"tutorials?", r"lessons?", r"teach\w*", r"learn\w*", r"beginners?", r"newcomers?", r"newbies?",
        r"noobs?", r"what is an?", r"what does", r"how does", r"guide", r"eli5", r"concepts?", r"readme",
        r"step[- ]by[- ]step", r"new to", r"understand\w*", r"documentation", r"walk ?through"),
    "farore-questweaver": _words(
        r"quests?", r"questlines?", r"dungeons?", r"puzzles?", r"boss(?:es)?", r"level design", r"pacing",
        r"progression", r"layout", r"side ?quests?", r"key items?", r"mini-?boss\w*", r"rooms?", r"encounters?",
        r"difficulty", r"sequence break\w*", r"overworld", r"trading sequence"),
    "saria-voice": _words(
        r"dialog(?:ue)?s?", r"npcs?", r"lines", r"says?", r"sa(?:y|i)d", r"speak\w*", r"voice", r"tone", r"personality",
        r"conversations?", r"monologue", r"speech", r"banter", r"quips?", r"talk\w*", r"in character", r"shopkeep\w*",
        r"villagers?", r"greet\w*", r"characters?"),
    "zelda-scribe": _words(
        r"item (?:text|descriptions?|names?)", r"descriptions?", r"menus?", r"ui", r"hud", r"tooltips?", r"quest[- ]log",
        r"pause (?:menu|screen)", r"file select", r"credits", r"captions?", r"button prompts?", r"signs?", r"signposts?",
        r"popups?", r"text ?box", r"copy", r"wording"),
}
assert tuple(LEXICON) == SPECIALIST_NAMES

HEX_ADDRESS = re.compile(r"\$[0-9A-Fa-f]{2,6}\b")
LONG_ADDRESS = re.compile(r"\$7[EFef][0-9A-Fa-f]{4}\b")
MNEMONIC_LINE = re.compile(
    r"(?m)^\s*(?:[A-Za-z_.][\w.]*:\s*)?(?:LD[AXY]|ST[AXYZ]|ADC|SBC|CMP|CP[XY]|B(?:NE|EQ|RA|RL|CC|CS|PL|MI|VS|VC)|"
    r"J(?:SR|SL|MP|ML)|RT[LSI]|REP|SEP|PH[ABDKPXY]|PL[ABDPXY]|XBA|T[AXYSCD][AXYSCD]|INC|DEC|IN[XY]|DE[XY]|AND|ORA|"
    r"EOR|ASL|LSR|ROL|ROR|BIT|MV[NP]|NOP|CLC|SEC|SEI|CLI)(?:\.[bwlBWL])?\b", re.I)
CPP_TOKEN = re.compile(r"::|->|#include|\bstd::|\bauto\b|\bvoid\b|\bconst\b|;[ \t]*$", re.M)

# "two tasks in one prompt"
_VERBS = (r"write|make|fix|design|explain|draft|give|create|add|build|check|find|rewrite|plan|tell|produce|put|"
          r"code|implement|document|draw|compress|decompress|patch|convert|list|come up with|generate|update|"
          r"translate|teach|verify|describe|outline|sketch|port|hook|dump|extract")
REQUEST_VERB = re.compile(r"\b(?:" + _VERBS + r")\b", re.I)
CONJUNCTION = re.compile(r"\b(?:and|plus|also|then|as well|both|after that|once|afterwards)\b|\+|&", re.I)
# a second request: a joining word or punctuation, a few politeness words, then a request verb
SECOND_REQUEST = re.compile(
    r"(?:\b(?:and|plus|also|then|too)\b|[,;+&]|\.\s)\s*(?:(?:then|also|please|can you|could you|"
    r"i(?:'d)? (?:also )?need you to|you)\s+)*(?:" + _VERBS + r")\b", re.I)
CODE_FENCE = re.compile(r"```.*?(?:```|$)", re.S)
CLAUSE_BREAK = re.compile(
    r"(?<=[.?!])\s+(?=[A-Z0-9'\"(])|\n\s*\n|\n(?=\s*[-*\d]+[.)]?\s)|;\s+|,\s+and\s+(?=\w+\s)|"
    r"\s+(?:plus|and then|and also|then also|also|\+)\s+", re.I)

_ORACLE_INDEX = {name: ORACLE_NAMES.index(oracle_of(name)) for name in SPECIALIST_NAMES}
FEATURE_NAMES: tuple[str, ...] = (
    *(f"lex:{n}" for n in SPECIALIST_NAMES), *(f"oracle:{o}" for o in ORACLE_NAMES),
    *(f"mentions:{o}" for o in ORACLE_NAMES), "mentions>=2", "hex_addresses", "long_addresses", "mnemonic_lines",
    "cpp_tokens", "code_fences", "length", "conjunctions", "request_verbs", "distinct_request_verbs",
    "second_requests", "clauses", "clauses_lean_two_oracles",
    *(f"mentions:{ORACLE_NAMES[a]}+{ORACLE_NAMES[b]}" for a, b in ((0, 1), (0, 2), (1, 2))))


def lexicon_hits(text: str) -> dict[str, int]:
    """How many words of each specialist's lexicon ``text`` contains."""
    return {name: len(rx.findall(text)) for name, rx in LEXICON.items()}


def clauses(text: str) -> list[str]:
    """``text`` cut into clauses: each code fence is one, prose is cut at sentence ends, blank
    lines, list items, semicolons and joining words (``plus``, ``and then``, ``, and write``)."""
    parts: list[str] = []
    pos = 0
    for m in CODE_FENCE.finditer(text):
        parts.extend(CLAUSE_BREAK.split(text[pos:m.start()]))
        parts.append(m.group(0))
        pos = m.end()
    parts.extend(CLAUSE_BREAK.split(text[pos:]))
    return [p for p in parts if p and len(p.strip()) > 2]


def _per_oracle(text: str) -> list[int]:
    per_oracle = [0] * len(ORACLE_NAMES)
    for name, rx in LEXICON.items():
        per_oracle[_ORACLE_INDEX[name]] += len(rx.findall(text))
    return per_oracle


def extract(text: str) -> list[float]:
    """The feature vector of one prompt, in ``FEATURE_NAMES`` order (log-scaled counts)."""
    hits = [len(rx.findall(text)) for rx in LEXICON.values()]
    per_oracle = [0] * len(ORACLE_NAMES)
    for name, h in zip(SPECIALIST_NAMES, hits):
        per_oracle[_ORACLE_INDEX[name]] += h
    mentioned = [1.0 if h else 0.0 for h in per_oracle]
    code = (len(HEX_ADDRESS.findall(text)), len(LONG_ADDRESS.findall(text)), len(MNEMONIC_LINE.findall(text)),
            len(CPP_TOKEN.findall(text)), text.count("```"), len(text) / 200)
    verbs = [v.lower() for v in REQUEST_VERB.findall(text)]
    parts = clauses(text)
    leaning = set()  # the oracle each clause mentions most (clauses that mention none are skipped)
    if len(parts) > 1 and sum(mentioned) >= 2:
        for part in parts:
            counts = _per_oracle(part)
            if max(counts):
                leaning.add(counts.index(max(counts)))
    tasks = (len(CONJUNCTION.findall(text)), len(verbs), len(set(verbs)), len(SECOND_REQUEST.findall(text)),
             len(parts))
    return [*(math.log1p(h) for h in hits), *(math.log1p(h) for h in per_oracle), *mentioned,
            1.0 if sum(mentioned) >= 2 else 0.0, *(math.log1p(c) for c in code), *(math.log1p(t) for t in tasks),
            1.0 if len(leaning) >= 2 else 0.0,
            mentioned[0] * mentioned[1], mentioned[0] * mentioned[2], mentioned[1] * mentioned[2]]
