"""``oracle-council eval ab-online``: the statistics of a request log with known numbers, the
CLI's errors, and a log written by a real gateway (loopback upstream) summarized."""

from __future__ import annotations

import json
import math
import sqlite3

import httpx
import openai
import pytest

from gateway.cli import main
from gateway.store import REQUEST_COLUMNS, connect, migrate
from tests.conftest import ThreadedUpstream
from tests.serving import loopback_models, serve

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def make_db(path, requests: list[dict], feedback: list[tuple]) -> str:
    conn = connect(str(path))
    migrate(conn)
    base = dict(ts=T0, api="chat", requested_model="oracle-council", backend="up", experiment="exp",
                router="direct", first_byte_ms=1.0, prompt_tokens=5, user_hash=None, key_hash=None)
    conn.execute("BEGIN")
    for r in requests:
        values = {**base, **r}
        conn.execute(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES "
                     f"({', '.join('?' for _ in REQUEST_COLUMNS)})", [values.get(c) for c in REQUEST_COLUMNS])
    conn.executemany("INSERT INTO feedback (request_id, ts, score, thumbs, comment) VALUES (?, ?, ?, ?, NULL)",
                     [(rid, T0, score, thumbs) for rid, score, thumbs in feedback])
    conn.execute("COMMIT")
    conn.close()
    return str(path)


@pytest.fixture
def known_db(tmp_path):
    reqs = []
    # control: 90 ok (1..90 ms, 10 tokens each, routed to two specialists), 8 errors, 2 clients gone
    for i in range(90):
        spec = "euclid-asm" if i < 60 else "seph-tilesmith"
        reqs.append(dict(request_id=f"c{i}", arm="control", served_model=spec, specialist=spec, status="ok",
                         latency_ms=float(i + 1), completion_tokens=10))
    reqs += [dict(request_id=f"ce{i}", arm="control", served_model="euclid-asm", specialist="euclid-asm",
                  status="error_502", latency_ms=5.0) for i in range(8)]
    reqs += [dict(request_id=f"cd{i}", arm="control", served_model="euclid-asm", specialist="euclid-asm",
                  status="client_disconnected", latency_ms=3.0) for i in range(2)]
    # treatment: 50 ok at 100 ms, 20 tokens each
    reqs += [dict(request_id=f"t{i}", arm="treatment", served_model="master-sword", specialist="master-sword",
                  status="ok", latency_ms=100.0, completion_tokens=20) for i in range(50)]
    # outside the experiment, and an old control request before --since
    reqs += [dict(request_id=f"o{i}", arm=None, experiment=None, requested_model="euclid-asm",
                  served_model="euclid-asm", status="ok", latency_ms=1.0) for i in range(7)]
    reqs.append(dict(request_id="old", ts=1000.0, arm="control", served_model="euclid-asm", status="error_500",
                     latency_ms=1.0))
    feedback = [(f"c{i}", 0.4 if i % 2 else 0.6, "up" if i < 6 else "down") for i in range(10)]
    feedback += [(f"t{i}", 0.8 if i % 2 else 1.0, "up" if i < 9 else "down") for i in range(10)]
    feedback += [("o1", 0.0, "down"), ("ghost", 0.0, "down")]  # outside / unknown: not counted
    return make_db(tmp_path / "state.db", reqs, feedback)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["eval", "ab-online", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_known_statistics(known_db, tmp_path, capsys):
    out_json = tmp_path / "out" / "ab.json"
    rc, text, _ = run_cli(capsys, "--db", known_db, "--since", "2020-01-01", "--json", str(out_json))
    assert rc == 0
    r = json.loads(out_json.read_text())
    c, t, d = r["arms"]["control"], r["arms"]["treatment"], r["diff"]
    assert r["experiment"] == "exp" and r["outside_experiment"] == 7
    assert (c["requests"], c["ok"], c["errors"], c["client_disconnected"]) == (100, 90, 8, 2)
    assert c["error_rate"] == pytest.approx(8 / 98)  # a client that went away is not an error
    assert c["latency_ms"]["p50"] == pytest.approx(45.5) and c["latency_ms"]["p95"] == pytest.approx(85.55)
    assert c["completion_tokens"] == 900 and c["prompt_tokens"] == 450
    assert c["tokens_per_s"] == pytest.approx(900 / (sum(range(1, 91)) / 1000))
    assert c["served_models"] == {"euclid-asm": 70, "seph-tilesmith": 30}
    assert t["specialists"] == {"master-sword": 50}
    assert (t["requests"], t["error_rate"], t["tokens_per_s"]) == (50, 0.0, pytest.approx(200.0))
    assert t["latency_ms"]["p50"] == 100.0
    assert (c["feedback"], t["feedback"]) == (10, 10)
    assert c["score"]["mean"] == pytest.approx(0.5) and t["score"]["mean"] == pytest.approx(0.9)
    assert c["score"]["lo"] < 0.5 < c["score"]["hi"]
    assert (c["thumbs_up"]["mean"], c["thumbs_up"]["up"], c["thumbs_up"]["down"]) == (pytest.approx(0.6), 6, 4)
    assert t["thumbs_up"]["mean"] == pytest.approx(0.9)
    assert d["score"]["diff"] == pytest.approx(0.4) and 0 < d["score"]["lo"] <= 0.4 <= d["score"]["hi"]
    assert d["thumbs_up_rate"]["diff"] == pytest.approx(0.3)
    assert d["error_rate"]["diff"] == pytest.approx(-8 / 98) and d["error_rate"]["hi"] <= 0 + 1e-12
    assert d["latency_ms_mean"]["diff"] == pytest.approx(100 - 45.5)
    assert "mean score" in text and "0.400" in text and "euclid-asm 70" in text and "+54.5" in text
    assert not list(out_json.parent.glob(".ab.json.*")), "no temporary file left"


def test_since_filters_by_time(known_db, tmp_path, capsys):
    run_cli(capsys, "--db", known_db, "--json", str(tmp_path / "all.json"))
    everything = json.loads((tmp_path / "all.json").read_text())
    assert everything["arms"]["control"]["requests"] == 101  # the old request too
    run_cli(capsys, "--db", known_db, "--since", "2026-01-01T00:00:00+00:00", "--json", str(tmp_path / "new.json"))
    assert json.loads((tmp_path / "new.json").read_text())["arms"]["control"]["requests"] == 100
    rc, text, _ = run_cli(capsys, "--db", known_db, "--since", "2099-01-01")
    assert rc == 0 and "no requests in the experiment" in text


def test_clear_errors(tmp_path, capsys, known_db):
    rc, _, err = run_cli(capsys, "--db", str(tmp_path / "nope.db"))
    assert rc == 2 and "no such file" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    rc, _, err = run_cli(capsys, "--db", str(junk))
    assert rc == 2 and "not an SQLite database" in err
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE x (a)").connection.commit()
    rc, _, err = run_cli(capsys, "--db", str(empty))
    assert rc == 2 and "not an oracle-council request log" in err
    rc, _, err = run_cli(capsys, "--db", known_db, "--since", "last tuesday")
    assert rc == 2 and "--since 'last tuesday'" in err


def test_several_experiments_need_a_choice(tmp_path, capsys):
    db = make_db(tmp_path / "two.db", [
        dict(request_id="a", arm="control", experiment="one", served_model="m", status="ok", latency_ms=1.0),
        dict(request_id="b", arm="treatment", experiment="two", served_model="m", status="ok", latency_ms=2.0),
    ], [])
    rc, _, err = run_cli(capsys, "--db", db)
    assert rc == 2 and "several experiments (one, two)" in err
    rc, _, _ = run_cli(capsys, "--db", db, "--experiment", "two", "--json", str(tmp_path / "two.json"))
    r = json.loads((tmp_path / "two.json").read_text())
    assert rc == 0 and r["arms"]["treatment"]["requests"] == 1 and r["arms"]["control"]["requests"] == 0


def test_empty_log_prints_dashes_and_valid_json(tmp_path, capsys):
    db = make_db(tmp_path / "e.db", [], [])
    rc, text, _ = run_cli(capsys, "--db", db, "--json", str(tmp_path / "e.json"))
    assert rc == 0 and "no requests in the experiment" in text
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["arms"]["control"]["score"]["mean"] is None and r["diff"]["score"]["diff"] is None


def test_a_real_gateway_log_summarized(tmp_path, capsys):
    db = tmp_path / "live.db"
    with ThreadedUpstream() as up:
        cfg = f"""
[router]
policy = "direct"
default_model = "euclid-asm"
[state]
db = "{db}"
[ab]
enabled = true
name = "live"
share = 0.5
{loopback_models(up.base_url, master_sword="echo")}"""
        arms = {"control": 0, "treatment": 0}
        thumbs = {"control": [], "treatment": []}
        with serve(cfg) as gw:
            client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
            for i in range(30):
                raw = client.chat.completions.with_raw_response.create(
                    model="oracle-council", user=f"user-{i}", messages=[{"role": "user", "content": "hi"}])
                arm = raw.headers["x-oracle-ab-arm"]
                arms[arm] += 1
                up_or_down = "up" if i % 3 else "down"
                thumbs[arm].append(up_or_down == "up")
                r = httpx.post(gw.v1 + "/feedback", json={"request_id": raw.headers["x-request-id"],
                                                          "thumbs": up_or_down})
                assert r.status_code == 200
    rc, _, _ = run_cli(capsys, "--db", str(db), "--json", str(tmp_path / "live.json"))
    assert rc == 0
    r = json.loads((tmp_path / "live.json").read_text())
    assert r["experiment"] == "live"
    for arm in ("control", "treatment"):
        assert r["arms"][arm]["requests"] == arms[arm] and r["arms"][arm]["feedback"] == arms[arm]
        assert r["arms"][arm]["error_rate"] == 0
        if thumbs[arm]:
            assert r["arms"][arm]["thumbs_up"]["mean"] == pytest.approx(sum(thumbs[arm]) / len(thumbs[arm]))
    assert r["arms"]["treatment"]["served_models"] == {"master-sword": arms["treatment"]}
    assert not math.isnan(r["arms"]["control"]["latency_ms"]["p50"])
