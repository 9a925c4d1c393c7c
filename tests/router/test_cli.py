"""The router's commands as a user runs them: route (one prompt, --json, --batch), eval routing."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from router.train import default_data_path

pytestmark = pytest.mark.slow


def test_route_json_and_plain(capsys):
    assert main(["route", "--json", "How do I convert a PNG into 4bpp tiles with a BGR555 palette?"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert set(decision) == {"model", "specialist", "oracle", "task_type", "cross_domain", "confidence", "router",
                             "reason"}
    assert decision["specialist"] == "seph-tilesmith" and decision["router"] == "embedding"
    assert main(["route", "What's a good recipe for banana bread?"]) == 0
    assert "master-sword  <- out-of-scope" in capsys.readouterr().out


def test_route_batch_keeps_order(tmp_path, capsys):
    prompts = ["How do I convert a PNG into 4bpp tiles with a BGR555 palette?",
               "What's a good recipe for banana bread?",
               "Make me a BPS patch from my hacked ROM against the unheadered US ROM"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)) + "\n")
    assert main(["route", "--batch", str(src)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["specialist"] for line in lines] == ["seph-tilesmith", "out-of-scope", "agahnim-patcher"]
    out = tmp_path / "out.jsonl"
    assert main(["route", "--batch", str(src), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    src.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(SystemExit, match="in.jsonl:1"):
        main(["route", "--batch", str(src)])


def test_eval_routing_reports_baselines_and_draws_the_matrix(tmp_path, capsys):
    rows = default_data_path().read_text().splitlines()[:40]
    data = tmp_path / "some.jsonl"
    data.write_text("\n".join(rows) + "\n")
    assert main(["eval", "routing", "--data", str(data), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for needle in ("specialist accuracy", "cross-domain F1", "keyword", "centroid", "latency p50", "confusion matrix"):
        assert needle in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["router (embedding-only)"]["n"] == 40
    assert (tmp_path / "out" / "confusion-router.png").stat().st_size > 10_000
