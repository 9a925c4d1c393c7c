"""Does an answer's 65816 code assemble? Asar-style snippets checked with the a816 assembler.

The specialists answer in Asar syntax (``LDA #$01 : STA $7EF3C5 : RTL``, ``org``, ``pushpc``,
``!defines``, ``.sublabels``, ``+``/``-`` labels); a816 has its own dialect (``*= 0x008000``,
``0x`` hex, lower-case mnemonics, ``jsr.l`` for JSL, explicit sizes on symbolic operands). So
``check_answer`` extracts the fenced code blocks, *translates* each line to a816 and assembles
the result in memory (LoROM, IPS output discarded). What the translation does, so a reader can
judge the verdict:

- Syntax only: ``$hex`` -> ``0x``, ``%bin`` -> ``0b``, ``A :`` statement separators -> lines,
  ``db/dw/dl/dd`` -> ``.db/.dw/.dl`` (strings as bytes), ``JSL``/``JML`` -> ``jsr.l``/``jmp.l``,
  ``ASL A`` -> ``asl``, ``!name`` -> ``DEF_name``, ``.sub`` -> ``Parent__sub``, ``+``/``-`` ->
  generated labels. Hex literals without a size suffix get Asar's size by digit count (``$12``
  .b, ``$1234`` .w, ``$7EF3C5`` .l); symbolic operands get the size of their known value, else .w. Immediates: a literal is
  assembled as 8-bit (their width is a REP/SEP matter, not syntax; a816 1.0.4 also lacks some
  16-bit immediate encodings).
- Placement: code starts in freespace at ``$208000``; ``org X`` places at X; ``freecode`` and
  ``pullpc`` continue in a fresh freespace bank (the assembler's own checks do not depend on the
  exact address). ``lorom``, ``warnpc``, ``assert``, ``print`` ... are dropped: they do not make
  a line of code valid or invalid.
- Placeholders: a symbol that the answer uses but never defines (a vanilla routine such as
  ``Sprite_SpawnDynamically``, a RAM name, an ``!define`` from the user's project) is defined
  as ``0x10`` (a branch target: as a label at the end of the code) and the run is retried; the
  names are reported in ``placeholders``. The code is judged on its own lines, not on the
  project it would be pasted into.
- a816 1.0.4 lacks ``brl bvc bvs cld cli clv cop mvn mvp per wdm`` and ``JMP``/``JSR (abs,X)``:
  these are emitted as their opcode bytes with the operand expressions evaluated (so undefined symbols still count), but a
  branch's range is not checked for them.
- Not translated (``unchecked``, never counted as a failure): ``macro``/``%call()``, ``if``,
  ``while``, ``incsrc``/``incbin``, ``namespace``, ``struct``, ``table``: the answer depends on
  something the checker cannot see or does not emulate.

Statuses: ``no_code`` (no fenced block that looks like 65816), ``assembles``,
``does_not_assemble`` (with a816's error and the translated line), ``unchecked`` (with the
reason). a816 must import (``pip install 'a816==1.0.4'``: 1.1.x needs Python 3.12); when it
does not, every check is ``unchecked``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass, field

NO_CODE = "no_code"
ASSEMBLES = "assembles"
DOES_NOT_ASSEMBLE = "does_not_assemble"
UNCHECKED = "unchecked"

MNEMONICS = frozenset(
    "adc and asl bcc bcs beq bit bmi bne bpl bra brk brl bvc bvs clc cld cli clv cmp cop cpx cpy dec "
    "dex dey eor inc inx iny jml jmp jsl jsr lda ldx ldy lsr mvn mvp nop ora pea pei per pha phb phd "
    "phk php phx phy pla plb pld plp plx ply rep rol ror rti rtl rts sbc sec sed sei sep sta stp stx "
    "sty stz tax tay tcd tcs tdc trb tsb tsc tsx txa txs txy tya tyx wai wdm xba xce".split()
)
ASM_LANGS = frozenset({"asm", "asar", "65816", "65c816", "s", "snes", "a816", "wla", "ca65", "assembly"})
BRANCHES = frozenset({"bcc", "bcs", "beq", "bmi", "bne", "bpl", "bra"})
ACCUMULATOR_OPS = frozenset({"asl", "lsr", "rol", "ror", "inc", "dec"})
# mnemonics a816 1.0.4 does not know: opcode byte and operand layout
_RAW = {"cli": (0x58, ""), "cld": (0xD8, ""), "clv": (0xB8, ""), "wdm": (0x42, "b"), "cop": (0x02, "b"),
        "brl": (0x82, "w"), "per": (0x62, "w"), "bvc": (0x50, "b"), "bvs": (0x70, "b"),
        "mvn": (0x54, "mv"), "mvp": (0x44, "mv")}
_DROPPED = frozenset({"lorom", "hirom", "exlorom", "exhirom", "sa1rom", "fullsa1rom", "sfxrom", "norom",
                      "arch", "warnpc", "assert", "print", "padbyte", "padword", "padlong", "pad", "optimize",
                      "check", "bank", "cleartable", "fillbyte", "fill", "math", "warn", "error", "base",
                      "cleardefines", "undef", "autoclean", "prot", "endif_noop"})
_UNSUPPORTED = frozenset({"macro", "endmacro", "if", "elseif", "else", "endif", "while", "endwhile", "for",
                          "endfor", "incsrc", "incbin", "namespace", "struct", "endstruct", "table", "function",
                          "pushtable", "pulltable", "skip", "spcblock", "endspcblock", "include",
                          "includefrom", "includeonce", "global", "pushns", "pullns"})
_DATA = {"db": ".db", "byte": ".db", "dw": ".dw", "word": ".dw", "dl": ".dl", "long": ".dl", "dd": "dd",
         "dword": "dd"}

_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
_LABEL = re.compile(r"^([A-Za-z_][\w]*):(?!=)(.*)$")
_SUBLABEL = re.compile(r"^(\.+)([A-Za-z_]\w*)(:?)(?:\s+(.*))?$")
_ANON = re.compile(r"^(\++|-+)(:?)(?:\s+(.*))?$")
_DEFINE = re.compile(r"^!([A-Za-z_]\w*)\s*(\?=|:=|#=|=)\s*(.*)$")
_CONST = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.+)$")
_INSN = re.compile(r"^([A-Za-z]{3})(?:\.([bwlBWL]))?(?:\s+(.*))?$")
_UNDEFINED = re.compile(r'"([A-Za-z_][\w.]*) \(ExpressionNode\(.*?is not defined', re.S)
_IDENT = re.compile(r"(?<![\w.$%])[A-Za-z_]\w*")
_HEX_LITERAL = re.compile(r"\$([0-9A-Fa-f]+)")

FREESPACE_START_BANK = 0x20


@dataclass
class AsmCheck:
    status: str
    error: str | None = None
    blocks: int = 0
    placeholders: list[str] = field(default_factory=list)
    source: str | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "blocks": self.blocks,
                "placeholders": list(self.placeholders)}


class _Unsupported(Exception):
    pass


def extract_code_blocks(text: str) -> list[tuple[str, str]]:
    """Fenced code blocks as ``(language, code)``; the language lower-cased, ``""`` when untagged."""
    return [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(text or "")]


def looks_like_asm(lang: str, code: str) -> bool:
    """A block tagged as assembly, or an untagged one whose statements are mostly 65816 lines."""
    if lang in ASM_LANGS:
        return True
    if lang:
        return False
    insns = other = 0
    for line in code.splitlines():
        line = _strip_comment(line).strip()
        if not line:
            continue
        word = re.split(r"[\s.:]", line, maxsplit=1)[0].lower()
        if word in MNEMONICS:
            insns += 1
        elif _LABEL.match(line) or line.startswith((".", "!", "+", "-", "org ", "pushpc", "pullpc")):
            continue
        else:
            other += 1
    return insns > 0 and insns >= other


def asm_blocks(text: str) -> list[str]:
    return [code for lang, code in extract_code_blocks(text) if looks_like_asm(lang, code)]


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ";":
            return line[:i]
    return line


def _split_statements(line: str) -> list[str]:
    """Asar's ``a : b`` separators (a colon with blanks on both sides), outside quotes."""
    parts, quote, start = [], None, 0
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ":" and 0 < i < len(line) - 1 and line[i - 1].isspace() and line[i + 1].isspace():
            parts.append(line[start:i])
            start = i + 1
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def _literal_value(text: str) -> int | None:
    text = text.strip()
    try:
        if text.startswith("$"):
            return int(text[1:], 16)
        if text.startswith("%"):
            return int(text[1:], 2)
        if text.startswith(("0x", "0X")):
            return int(text, 16)
        if text.isdigit():
            return int(text)
    except ValueError:
        return None
    return None


def _size_for_value(value: int) -> str:
    return "b" if value < 0x100 else "w" if value < 0x10000 else "l"


class _Translator:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.parent = "Main"
        self.fwd_defs: dict[int, int] = {}   # "+" count -> how many defined so far
        self.bwd_defs: dict[int, int] = {}
        self.values: dict[str, int | None] = {}
        self.bank = FREESPACE_START_BANK
        self.stack: list[int] = []
        self.branch_targets: set[str] = set()

    def fresh(self) -> str:
        addr = (self.bank << 16) | 0x8000
        self.bank += 1
        return f"*= 0x{addr:06X}"

    def block(self, code: str) -> None:
        self.out.append(self.fresh())
        for raw in code.splitlines():
            for stmt in _split_statements(_strip_comment(raw)):
                self.statement(stmt)

    # -- operands ----------------------------------------------------------------------------
    def expr(self, text: str) -> str:
        def sub(m: re.Match) -> str:
            return f"{self.parent}__{m.group(1)}"

        text = re.sub(r"(?<![\w)\]])\.([A-Za-z_]\w*)", sub, text)         # .sub -> Parent__sub
        text = re.sub(r"!([A-Za-z_]\w*)", r"DEF_\1", text)               # !define -> DEF_define
        text = _HEX_LITERAL.sub(lambda m: "0x" + m.group(1), text)
        text = re.sub(r"(?<![\w)])%([01]+)\b", r"0b\1", text)
        return re.sub(r",\s*([XYSxys])\b", lambda m: "," + m.group(1).lower(), text)  # a816: ,x ,y ,s

    def anon_ref(self, op: str) -> str | None:
        if re.fullmatch(r"\++", op):
            return f"anon_f{len(op)}_{self.fwd_defs.get(len(op), 0)}"
        if re.fullmatch(r"-+", op):
            n = self.bwd_defs.get(len(op), 0)
            return f"anon_b{len(op)}_{n - 1}" if n else "anon_b_undefined"
        return None

    # -- statements --------------------------------------------------------------------------
    def statement(self, s: str) -> None:
        if s in ("{", "}"):
            return
        m = _LABEL.match(s)
        if m and m.group(1).lower() not in MNEMONICS:
            self.parent = m.group(1)
            self.out.append(f"{m.group(1)}:")
            if m.group(2).strip():
                self.statement(m.group(2).strip())
            return
        m = _SUBLABEL.match(s)
        if m and m.group(2).lower() not in _DATA and m.group(2).lower() not in ("db", "dw", "dl"):
            self.out.append(f"{self.parent}__{m.group(2)}:")
            if m.group(4):
                self.statement(m.group(4))
            return
        m = _ANON.match(s)
        if m:
            n = len(m.group(1))
            if m.group(1)[0] == "+":
                k = self.fwd_defs.get(n, 0)
                self.out.append(f"anon_f{n}_{k}:")
                self.fwd_defs[n] = k + 1
            else:
                k = self.bwd_defs.get(n, 0)
                self.out.append(f"anon_b{n}_{k}:")
                self.bwd_defs[n] = k + 1
            if m.group(3):
                self.statement(m.group(3))
            return
        m = _DEFINE.match(s)
        if m:
            name, value = f"DEF_{m.group(1)}", m.group(3).strip().strip('"')
            self.values[name] = _literal_value(value)
            self.out.append(f"{name} = {self.expr(value)}")
            return
        if s.startswith("%") and re.match(r"%[A-Za-z_]", s):
            raise _Unsupported(f"macro call {s.split('(')[0]}")
        word, _, rest = s.partition(" ")
        lw = word.lower()
        rest = rest.strip()
        if lw in _UNSUPPORTED or (lw == "rep" and not rest.startswith("#")):  # Asar's "rep N : insn"
            raise _Unsupported(f"the {lw} directive")
        if lw in _DROPPED:
            return
        if lw == "org":
            self.out.append(f"*= {self.expr(rest)}")
            return
        if lw == "pushpc":
            self.stack.append(len(self.out))
            return
        if lw == "pullpc":
            if self.stack:
                self.stack.pop()
            self.out.append(self.fresh())
            return
        if lw in ("freecode", "freedata", "freespace"):
            self.out.append(self.fresh())
            return
        if lw in _DATA or (lw.startswith(".") and lw[1:] in _DATA):
            self.data(_DATA[lw.lstrip(".")], rest)
            return
        m = _CONST.match(s)
        if m and m.group(1).lower() not in MNEMONICS:
            self.values[m.group(1)] = _literal_value(m.group(2))
            self.out.append(f"{m.group(1)} = {self.expr(m.group(2).strip())}")
            return
        m = _INSN.match(s)
        if m and m.group(1).lower() in MNEMONICS:
            self.instruction(m.group(1).lower(), (m.group(2) or "").lower(), (m.group(3) or "").strip())
            return
        self.out.append(self.expr(s))  # not a statement we know: a816 decides (and usually rejects)

    def data(self, directive: str, rest: str) -> None:
        items = []
        for item in _split_args(rest):
            if item[:1] in "\"'" and item[-1:] == item[:1] and len(item) >= 2:
                items.extend(str(b) for b in item[1:-1].encode("latin-1", "replace"))
            else:
                items.append(self.expr(item))
        if not items:
            self.out.append(f"{directive} ")  # let the assembler complain about an empty list
            return
        if directive == "dd":
            self.out.append(".dw " + ", ".join(f"({x}) & 0xFFFF, ({x}) >> 16" for x in items))
        else:
            self.out.append(f"{directive} " + ", ".join(items))

    def instruction(self, op: str, size: str, operand: str) -> None:
        if op in ACCUMULATOR_OPS and operand.upper() == "A":
            operand = ""
        anon = self.anon_ref(operand)
        if anon:
            operand = anon
        if op in _RAW:
            self.raw(op, operand)
            return
        if op in ("jmp", "jsr") and re.fullmatch(r"\(.*,\s*[xX]\s*\)", operand):
            # (abs,X): missing from a816 1.0.4's tables
            self.out.append(f".db 0x{0x7C if op == 'jmp' else 0xFC:02X}")
            self.out.append(f".dw ({self.expr(operand.strip()[1:-1].rsplit(',', 1)[0])}) & 0xFFFF")
            return
        if op in ("jsl", "jml"):
            if op == "jml" and operand.startswith("["):
                op, size = "jmp", ""
            else:
                op, size = ("jsr" if op == "jsl" else "jmp"), "l"
        expr = self.expr(operand)
        if op in BRANCHES:
            ident = expr.strip()
            if re.fullmatch(r"[A-Za-z_]\w*", ident):
                self.branch_targets.add(ident)
            self.out.append(f"{op} {expr}".strip())
            return
        if operand.startswith("#"):
            # an immediate's width follows REP/SEP, not syntax (and a816 1.0.4 lacks some 16-bit ones)
            size = "b"
        elif operand and not size:
            size = self.infer_size(op, operand, expr)
        self.out.append(f"{op}{'.' + size if size else ''} {expr}".rstrip())

    @staticmethod
    def _idents(expr: str) -> list[str]:
        return [i for i in _IDENT.findall(re.sub(r"0[xb][0-9A-Fa-f]+", " ", expr)) if i.lower() not in ("x", "y", "s")]

    def infer_size(self, op: str, operand: str, expr: str) -> str:
        body = operand.lstrip("#([").strip()
        if op in ("jsr", "jmp"):
            return "w" if _IDENT.search(expr.replace("0x", " ")) or not body.startswith("$") else ""
        idents = self._idents(expr)
        if idents:
            if len(idents) == 1 and self.values.get(idents[0]) is not None:
                return _size_for_value(self.values[idents[0]])  # type: ignore[arg-type]
            return "w"
        if operand.startswith("#"):
            return ""  # a literal immediate: a816 sizes it by value
        m = _HEX_LITERAL.match(body)
        if m:  # Asar sizes a hex address by its digits: $12 dp, $1234 absolute, $7EF3C5 long
            digits = len(m.group(1))
            return "b" if digits <= 2 else "w" if digits <= 4 else "l"
        return ""

    def raw(self, op: str, operand: str) -> None:
        opcode, layout = _RAW[op]
        expr = self.expr(operand.lstrip("#"))
        if layout == "":
            self.out.append(f".db 0x{opcode:02X}")
        elif layout == "b":
            self.out.append(f".db 0x{opcode:02X}, ({expr or '0'}) & 0xFF")
        elif layout == "w":
            self.out.append(f".db 0x{opcode:02X}")
            self.out.append(f".dw ({expr}) & 0xFFFF")
        else:  # mvn/mvp src, dst -> opcode, dst bank, src bank
            args = [self.expr(a.lstrip("#")) for a in _split_args(operand)]
            if len(args) != 2:
                self.out.append(f"{op} {expr}")  # a816 rejects it: two banks are required
                return
            self.out.append(f".db 0x{opcode:02X}, ({args[1]}) & 0xFF, ({args[0]}) & 0xFF")


def _split_args(text: str) -> list[str]:
    items, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        items.append("".join(cur).strip())
    return items


def translate(blocks: list[str]) -> tuple[str, set[str]]:
    """The a816 program for a list of Asar code blocks, and the identifiers used as branch targets.

    Raises ``_Unsupported`` for a construct the translation does not emulate."""
    t = _Translator()
    for code in blocks:
        t.block(code)
    return "\n".join(t.out) + "\n", t.branch_targets


def assembler_available() -> str | None:
    """None when a816 imports; else why not (a816 1.1.x needs Python 3.12)."""
    try:
        from a816.program import Program  # noqa: F401
        from a816.writers import IPSWriter  # noqa: F401
    except Exception as exc:  # SyntaxError from a816 1.1.x on Python 3.11, ImportError when absent
        return f"a816 cannot be imported ({type(exc).__name__}: {exc}); install a816==1.0.4"
    return None


def _assemble(source: str) -> str | None:
    """Assemble ``source`` in memory; None on success, else a816's message."""
    from a816.exceptions import A816Error
    from a816.program import Program
    from a816.writers import IPSWriter

    loggers = [logging.getLogger(n) for n in ("a816", "x816", "a816.parser", "a816.nodes")]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            writer = IPSWriter(io.BytesIO())
            writer.begin()
            err = Program().assemble_string_with_emitter(source, "answer.s", writer)
            writer.end()
        return None if err is None else str(err).strip() or "parse error"
    except (A816Error, RecursionError) as exc:
        return str(exc).strip() or type(exc).__name__
    except Exception as exc:  # a816 raises bare KeyError/TypeError/ValueError on some malformed input
        return f"{type(exc).__name__}: {exc}".strip()
    finally:
        for lg, was in zip(loggers, saved):
            lg.disabled = was


def _with_context(error: str, source: str) -> str:
    """a816's message on one line, with the translated line it points at (a816 counts from 0)."""
    first = error.strip().splitlines()[0] if error.strip() else "error"
    first = re.sub(r"\s+at$", "", first)
    m = re.search(r"answer\.s:(\d+)", error)
    if m:
        lines = source.splitlines()
        idx = int(m.group(1))
        if 0 <= idx < len(lines):
            return f"{first} [line {idx}: {lines[idx].strip()}]"
    return first


def check_asm(blocks: list[str], *, max_placeholders: int = 40) -> AsmCheck:
    """Assemble Asar code blocks (as one program, so a hook and its routine can refer to each other)."""
    if not blocks:
        return AsmCheck(NO_CODE)
    why = assembler_available()
    if why:
        return AsmCheck(UNCHECKED, error=why, blocks=len(blocks))
    try:
        source, branch_targets = translate(blocks)
    except _Unsupported as exc:
        return AsmCheck(UNCHECKED, error=f"not translated: {exc}", blocks=len(blocks))
    if not any(line and not line.startswith("*=") for line in source.splitlines()):
        return AsmCheck(NO_CODE, blocks=len(blocks))
    placeholders: list[str] = []
    extra: list[str] = []
    for _ in range(max_placeholders + 1):
        program = source + "".join(extra)
        err = _assemble(program)
        if err is None:
            return AsmCheck(ASSEMBLES, blocks=len(blocks), placeholders=placeholders, source=program)
        m = _UNDEFINED.search(err)
        if not m or m.group(1) in placeholders or len(placeholders) >= max_placeholders:
            return AsmCheck(DOES_NOT_ASSEMBLE, error=_with_context(err, program), blocks=len(blocks),
                            placeholders=placeholders, source=program)
        name = m.group(1)
        placeholders.append(name)
        extra.append(f"{name}:\n" if name in branch_targets or name.startswith("anon_") else f"{name} = 0x10\n")
    raise AssertionError("unreachable")


def check_answer(text: str) -> AsmCheck:
    """Extract the answer's 65816 blocks and check them."""
    return check_asm(asm_blocks(text))
