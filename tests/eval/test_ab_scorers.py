"""The A/B scorers on known cases: a816 verdicts on Asar code, chrF, data loading, the judge's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.ab import asm, scorers
from eval.ab.data import DataError, load_samples
from eval.ab.judge import combine, parse_verdict

pytestmark = pytest.mark.skipif(asm.assembler_available() is not None,
                                reason=f"a816 does not import here: {asm.assembler_available()}")


def fenced(code: str, lang: str = "asm") -> str:
    return f"Here you go:\n\n```{lang}\n{code}\n```\n\nThat's it."


def test_asar_code_that_assembles() -> None:
    r = asm.check_answer(fenced("LDA #$01 : STA $7EF3C5 : RTL"))
    assert r.status == asm.ASSEMBLES and r.error is None and r.placeholders == []
    hook = """org $0DBB67
    JSL MyHook
    NOP
pushpc
freecode
MyHook:
    LDA.l !Flag : BEQ .skip
    LDA #$02 : STA $7EF3C5
.skip
    - DEX : BPL -
    RTL
pullpc"""
    r = asm.check_answer(fenced(hook, ""))
    assert r.status == asm.ASSEMBLES, r.error
    assert r.placeholders == ["DEF_Flag"]  # the project's define, not in the answer


@pytest.mark.parametrize("code, needle", [
    ("LDZ #$01\nRTL", "Invalid Input"),                 # no such mnemonic
    ("STX $7EF3C5\nRTL", "stx does not supports size"),  # STX has no long addressing
    ("LDA ($12,S),Q\nRTL", "Invalid index"),             # no such index register
    ("LDA #\nRTL", "TokenType"),                         # missing operand
])
def test_code_that_does_not_assemble(code: str, needle: str) -> None:
    r = asm.check_answer(fenced(code))
    assert r.status == asm.DOES_NOT_ASSEMBLE
    assert needle in r.error, r.error


def test_no_code_and_unchecked() -> None:
    assert asm.check_answer("Use a JSL to your freespace routine.").status == asm.NO_CODE
    assert asm.check_answer(fenced("int x = 1;", "cpp")).status == asm.NO_CODE
    assert asm.check_answer(fenced("; just a comment")).status == asm.NO_CODE
    r = asm.check_answer(fenced("macro foo()\n  NOP\nendmacro\n%foo()"))
    assert r.status == asm.UNCHECKED and "macro" in r.error


def test_shipped_reference_answers_assemble() -> None:
    """The hand-written samples are valid Asar; the checker must accept nearly all of them."""
    root = Path(__file__).resolve().parents[2] / "training" / "samples"
    verdicts = []
    for line in (root / "euclid-asm.jsonl").read_text().splitlines():
        verdicts.append(asm.check_answer(json.loads(line)["output"]).status)
    assert verdicts.count(asm.ASSEMBLES) >= 40, verdicts
    assert verdicts.count(asm.DOES_NOT_ASSEMBLE) <= 1, verdicts


def test_chrf_and_primary_score() -> None:
    text = "LDA $7EF36D : LSR A : LSR A : LSR A : RTL"
    assert scorers.chrf(text, text) == pytest.approx(1.0)
    assert scorers.chrf("completely different words", text) < 0.2
    assert scorers.chrf("", text) == 0.0
    ref = fenced("LDA #$01 : STA $7EF3C5 : RTL")
    good = scorers.score_answer("asm", ref, ref, embed_sim=None)
    assert good["kind"] == scorers.CODE and good["asm_status"] == asm.ASSEMBLES
    assert good["primary"] == pytest.approx(1.0) and good["passed"] and good["threshold"] == 0.4
    bad = scorers.score_answer("asm", fenced("LDZ #$01"), ref, embed_sim=None)
    assert bad["asm_status"] == asm.DOES_NOT_ASSEMBLE and bad["primary"] == pytest.approx(0.5 * bad["chrf"])
    prose = scorers.score_answer("lore", "Ganon", "Ganon is the villain.", embed_sim=0.7)
    assert prose["kind"] == scorers.PROSE and prose["primary"] == 0.7 and prose["passed"] is True  # lore: 0.6
    failed = scorers.score_answer("asm", None, ref, embed_sim=None)
    assert failed["primary"] == 0.0 and not failed["passed"]


def test_samples_load_both_formats_and_report_bad_lines(tmp_path: Path) -> None:
    shipped = load_samples(Path(__file__).resolve().parents[2] / "training/samples/eval-heldout.jsonl")
    assert len(shipped) == 12 and shipped[0].expected_specialist == "euclid-asm"
    assert {s.expected_specialist for s in shipped} == {"euclid-asm", "seph-tilesmith", "master-sword"}
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}], "domain": "asm_debug", "sample_id": "x"}
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(chat) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"t\.jsonl:3: not valid JSON"):
        load_samples(p)
    p.write_text(json.dumps(chat) + "\n")
    (s,) = load_samples(p)
    assert s.messages == ({"role": "system", "content": "s"}, {"role": "user", "content": "q"})
    assert s.reference == "a" and (s.expected_specialist, s.task_type) == ("euclid-asm", "asm_debug")
    p.write_text(json.dumps(chat) + "\n" + json.dumps(chat) + "\n")
    with pytest.raises(DataError, match=r":2: sample_id 'x' already used on line 1"):
        load_samples(p)
    p.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(DataError, match=r":1: needs a 'domain'"):
        load_samples(p)


def test_judge_needs_the_same_verdict_in_both_orders() -> None:
    assert parse_verdict("1") == "1" and parse_verdict("Answer 2.") == "2" and parse_verdict("TIE") == "tie"
    assert parse_verdict("hmm") is None
    assert combine("1", "2") == "a"      # A first: 1 = A; B first: 2 = A
    assert combine("2", "1") == "b"
    assert combine("1", "1") == "tie"    # position bias: inconsistent
    assert combine("tie", "tie") == "tie" and combine(None, "2") == "tie"
