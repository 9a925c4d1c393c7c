"""Online A/B in the gateway, the SQLite request log and ``POST /v1/feedback``, against the real
app over sockets (the official ``openai`` client, httpx for raw Ollama requests) with the
loopback OpenAI-compatible upstream (eval/loopback_upstream.py, a scripted server) behind it,
and a real SQLite file in tmp_path."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from gateway.ab import Experiment, assign, bucket
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.conftest import ThreadedUpstream
from tests.serving import loopback_models, serve

SALT = "salt-1"
EXPERIMENT = "exp-1"


def ab_config(base_url: str, db: Path | str, *, share: float = 0.5, sticky_by: str = "auto", salt: str = SALT,
              enabled: bool = True, state: str = "", flush: float = 0.05) -> str:
    return f"""
[router]
policy = "direct"
default_model = "euclid-asm"

[state]
db = "{db}"
flush_interval = {flush}
busy_timeout = 0.05
{state}

[ab]
enabled = {str(enabled).lower()}
name = "{EXPERIMENT}"
share = {share}
sticky_by = "{sticky_by}"
salt = "{salt}"

{loopback_models(base_url)}
[[models]]
name = "cut-off"
oracle = "oracle-din"
backend = "up"
upstream_model = "truncated"
"""


def identity_in(arm: str, kind: str, *, salt: str = SALT, share: float = 0.5) -> str:
    """A key or user name that the assignment puts in ``arm``."""
    return next(f"{kind}-{arm}-{i}" for i in range(10_000) if assign(salt, f"{kind}:{kind}-{arm}-{i}", share) == arm)


def rows(db, where: str = "1", params=()) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY id", params)]


_clients: dict[tuple[str, str], openai.OpenAI] = {}


def ask(gw, *, model: str = "oracle-council", key: str = "unused", **kw):
    """A chat request through the official client; the client stays open so a stream can be read."""
    client = _clients.get((gw.v1, key))
    if client is None:  # one per gateway and key: making a client costs tens of milliseconds
        client = _clients[(gw.v1, key)] = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}], **kw)


@pytest.fixture(scope="module")
def upstream():
    with ThreadedUpstream() as up:
        yield up


# -- the assignment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("share", [0.05, 0.3, 0.5, 0.9])
def test_share_of_2000_keys_is_within_the_binomial_tolerance(share):
    n = 2000
    treated = sum(assign(SALT, f"key:sk-{i:05d}", share) == "treatment" for i in range(n))
    sd = math.sqrt(n * share * (1 - share))
    assert abs(treated - n * share) <= 4 * sd, (treated, n * share, sd)  # 4 SD: a 1-in-15,000 miss for a fair hash


def test_assignment_is_deterministic_and_the_salt_reshuffles():
    ids = [f"user:u{i}" for i in range(500)]
    first = [assign(SALT, i, 0.5) for i in ids]
    assert first == [assign(SALT, i, 0.5) for i in ids]
    other = [assign("another-salt", i, 0.5) for i in ids]
    assert 150 < sum(a != b for a, b in zip(first, other)) < 350  # about half move
    assert all(0 <= bucket(SALT, i) < 1 for i in ids)
    assert all(assign(SALT, i, 0.0) == "control" and assign(SALT, i, 1.0) == "treatment" for i in ids)


def test_identity_follows_sticky_by():
    def http(key=None, host="10.0.0.7"):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return SimpleNamespace(headers=headers, client=SimpleNamespace(host=host))

    def identity(mode: str, body: dict, req) -> str:
        cfg = parse_config(ab_config("http://127.0.0.1:1/v1", "x.db", sticky_by=mode))
        from gateway.ab import bearer_key
        return Experiment(cfg.ab, cfg).identity(body, req, bearer_key(req))

    assert identity("auto", {"user": "alice"}, http("sk-1")) == "user:alice"
    assert identity("auto", {}, http("sk-1")) == "key:sk-1"
    assert identity("auto", {"user": ""}, http()) == "addr:10.0.0.7"
    assert identity("api_key", {"user": "alice"}, http("sk-1")) == "key:sk-1"
    assert identity("api_key", {"user": "alice"}, http()) == "addr:10.0.0.7"
    assert identity("user", {"user": "alice"}, http("sk-1")) == "user:alice"
    assert identity("user", {}, http("sk-1")) == "addr:10.0.0.7"


# -- config --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    (lambda t: t.replace('name = "master-sword"\noracle = "system"\nbackend = "up"',
                         'name = "master-sword"\noracle = "system"\ndeployed = false'),
     "[ab], key 'treatment': 'master-sword' is not a deployed model"),
    (lambda t: t.replace('[ab]\n', '[ab]\ncontrol = "euclid-asm"\n'),
     "[ab], key 'control': 'euclid-asm' is not routed traffic"),
    (lambda t: t.replace("share = 0.5\n", ""), "f.toml: [ab]: Value error, 'share' is required when enabled"),
    (lambda t: t.replace("share = 0.5", "share = 1.5"), "f.toml: [ab], key 'share': Input should be less than"),
    (lambda t: t.replace('sticky_by = "auto"', 'sticky_by = "cookie"'), "f.toml: [ab], key 'sticky_by'"),
    (lambda t: t.replace("flush_interval = 0.05", "flush_intervall = 0.05"),
     "f.toml: [state], key 'flush_intervall': unknown key"),
    (lambda t: t.replace("busy_timeout = 0.05", "busy_timeout = 0.05\nenabled = false"),
     "[ab], key 'enabled': the experiment needs the request log"),
])
def test_config_errors_name_the_key(change, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(change(ab_config("http://127.0.0.1:1/v1", "x.db")), source="f.toml")
    assert expected in info.value.message


def test_state_db_defaults_to_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ORACLE_COUNCIL_HOME", str(tmp_path))
    cfg = parse_config('[[backends]]\nname = "b"\nkind = "openai"\nbase_url = "http://x/v1"\n')
    assert cfg.state_db_path() == str(tmp_path / "state.db")
    assert not cfg.ab.enabled
    off = parse_config("[state]\nenabled = false\n")
    assert off.state_db_path() is None


# -- the gateway ---------------------------------------------------------------------------------------

def test_same_caller_same_arm_across_requests_and_two_instances(upstream, tmp_path):
    cfg = ab_config(upstream.base_url, tmp_path / "shared.db")
    users = [f"user-{i}" for i in range(24)]
    with serve(cfg) as a, serve(cfg) as b:
        seen: dict[str, set[str]] = {u: set() for u in users}
        for rnd in range(3):
            for i, user in enumerate(users):
                raw = ask((a, b)[(i + rnd) % 2], user=user)
                seen[user].add(raw.headers["x-oracle-ab-arm"])
                expected = assign(SALT, f"user:{user}", 0.5)
                assert raw.headers["x-oracle-ab-arm"] == expected
                assert raw.headers["x-oracle-model"] == ("master-sword" if expected == "treatment" else "euclid-asm")
    assert all(len(arms) == 1 for arms in seen.values()), seen
    assert {next(iter(s)) for s in seen.values()} == {"control", "treatment"}, "both arms are used"


def test_a_model_named_directly_is_never_moved(upstream, tmp_path):
    with serve(ab_config(upstream.base_url, tmp_path / "s.db", share=1.0)) as gw:
        direct = ask(gw, model="euclid-asm")
        assert direct.headers["x-oracle-model"] == "euclid-asm"
        assert "x-oracle-ab-arm" not in direct.headers and "x-oracle-ab-experiment" not in direct.headers
        direct_ms = ask(gw, model="master-sword")
        assert "x-oracle-ab-arm" not in direct_ms.headers
        routed = ask(gw)
        assert routed.headers["x-oracle-ab-arm"] == "treatment"
        assert routed.headers["x-oracle-ab-experiment"] == EXPERIMENT
        assert routed.headers["x-oracle-model"] == "master-sword"
        assert routed.parse().choices[0].message.content == "hello"  # the parrot upstream model answered
    with serve(ab_config(upstream.base_url, tmp_path / "s.db", share=0.0)) as gw:
        routed = ask(gw)
        assert routed.headers["x-oracle-ab-arm"] == "control"
        assert routed.headers["x-oracle-model"] == "euclid-asm"  # routed as usual ([router] default_model)


def test_headers_on_openai_stream_non_stream_and_ollama(upstream, tmp_path):
    key_t, key_c = identity_in("treatment", "key"), identity_in("control", "key")
    with serve(ab_config(upstream.base_url, tmp_path / "s.db", sticky_by="api_key")) as gw:
        for key, arm, model in ((key_t, "treatment", "master-sword"), (key_c, "control", "euclid-asm")):
            whole = ask(gw, key=key)
            assert (whole.headers["x-oracle-ab-arm"], whole.headers["x-oracle-model"]) == (arm, model)
            stream = ask(gw, key=key, stream=True)
            assert (stream.headers["x-oracle-ab-arm"], stream.headers["x-oracle-model"]) == (arm, model)
            assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices).strip()
            with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
                completion = client.completions.with_raw_response.create(model="oracle-council", prompt="LDA")
            assert completion.headers["x-oracle-ab-arm"] == arm
            auth = {"authorization": f"Bearer {key}"}
            for path, body in (("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
                               ("/api/generate", {"prompt": "hi"})):
                for streaming in (False, True):
                    r = httpx.post(gw.url + path, headers=auth,
                                   json={"model": "oracle-council:latest", "stream": streaming, **body})
                    assert r.status_code == 200, r.text
                    assert r.headers["x-oracle-ab-arm"] == arm, (path, streaming)
                    assert r.headers["x-oracle-model"] == model
                    assert r.headers["x-oracle-ab-experiment"] == EXPERIMENT
        plain = httpx.post(gw.url + "/api/chat", json={"model": "euclid-asm", "stream": False,
                                                       "messages": [{"role": "user", "content": "hi"}]})
        assert "x-oracle-ab-arm" not in plain.headers


def test_every_request_is_logged_with_its_arm_tokens_and_status(upstream, tmp_path):
    db = tmp_path / "s.db"
    user_t = identity_in("treatment", "user")
    ids: dict[str, str] = {}
    with serve(ab_config(upstream.base_url, db)) as gw:
        ids["routed"] = ask(gw, user=user_t).headers["x-request-id"]
        ids["stream"] = ask(gw, user=user_t, stream=True).headers["x-request-id"]
        raw = ask(gw, user=user_t, stream=True)
        list(raw.parse())  # read to the end: the row is written when the stream ends
        ids["stream_read"] = raw.headers["x-request-id"]
        ids["direct"] = ask(gw, model="euclid-asm", key="sk-secret-key-123").headers["x-request-id"]
        with pytest.raises(openai.BadRequestError) as bad:
            ask(gw, model="refuser")
        ids["upstream_400"] = bad.value.response.headers["x-request-id"]
        with pytest.raises(openai.NotFoundError) as missing:
            ask(gw, model="no-such-model")
        ids["unknown"] = missing.value.response.headers["x-request-id"]
        with pytest.raises(openai.APIError):
            list(ask(gw, model="cut-off", stream=True).parse())
        r = httpx.post(gw.url + "/api/chat", json={"model": "oracle-council", "stream": True,
                                                   "messages": [{"role": "user", "content": "hi"}]})
        ids["ollama_stream"] = r.headers["x-request-id"]
        assert gw.app.state.store.flush(10)
        logged = {r["request_id"]: r for r in rows(db)}
    assert set(ids.values()) <= set(logged), "every request has its row"
    assert len(logged) == 8  # and the cut-off stream too
    routed = logged[ids["routed"]]
    assert (routed["arm"], routed["experiment"], routed["served_model"], routed["requested_model"]) == (
        "treatment", EXPERIMENT, "master-sword", "oracle-council")
    assert routed["status"] == "ok" and routed["prompt_tokens"] > 0 and routed["completion_tokens"] > 0
    assert routed["latency_ms"] > 0 and 0 < routed["first_byte_ms"] <= routed["latency_ms"]
    assert routed["user_hash"] and routed["user_hash"] != user_t
    for name in ("stream", "stream_read"):
        assert logged[ids[name]]["completion_tokens"] > 0, "a stream is logged with its final usage"
        assert logged[ids[name]]["status"] == "ok"
    direct = logged[ids["direct"]]
    assert direct["arm"] is None and direct["experiment"] is None and direct["router"] == "direct"
    assert direct["key_hash"] and len(direct["key_hash"]) == 16
    assert logged[ids["upstream_400"]]["status"] == "error_400"
    assert logged[ids["unknown"]]["status"] == "error_404" and logged[ids["unknown"]]["backend"] is None
    assert [r["status"] for r in logged.values() if r["served_model"] == "cut-off"] == ["upstream_error"]
    assert logged[ids["ollama_stream"]]["api"] == "ollama_chat"
    assert logged[ids["ollama_stream"]]["arm"] in ("control", "treatment")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
    assert b"sk-secret-key-123" not in on_disk and user_t.encode() not in on_disk, "no key or user id in clear"


def test_feedback_happy_path_errors_and_persistence_across_restart(upstream, tmp_path):
    db = tmp_path / "s.db"
    with serve(ab_config(upstream.base_url, db)) as gw:
        rid = ask(gw, user="fan").headers["x-request-id"]
        ok = httpx.post(gw.v1 + "/feedback", json={"request_id": rid, "score": 0.8, "thumbs": "up",
                                                    "comment": "good hook"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["request_id"] == rid and isinstance(ok.json()["id"], int)
        thumbs_only = httpx.post(gw.v1 + "/feedback", json={"request_id": rid, "thumbs": "down"})
        assert thumbs_only.status_code == 200

        unknown = httpx.post(gw.v1 + "/feedback", json={"request_id": "never-seen", "score": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "request_not_found"
        assert unknown.json()["error"]["param"] == "request_id"
        for body, where in [({"request_id": rid}, "score"), ({"request_id": rid, "score": 1.5}, "score"),
                            ({"request_id": rid, "thumbs": "sideways"}, "thumbs"),
                            ({"request_id": rid, "score": 1, "stars": 5}, "stars"),
                            ({"request_id": rid, "score": 1, "comment": "x" * 4001}, "comment"),
                            ({"score": 1}, "request_id"), ([rid], "JSON object")]:
            bad = httpx.post(gw.v1 + "/feedback", json=body)
            assert bad.status_code == 400, (body, bad.text)
            err = bad.json()["error"]
            assert err["type"] == "invalid_request_error" and where in err["message"], err
        assert httpx.post(gw.v1 + "/feedback", content=b"{not json").status_code == 400
    # a new process on the same file: the rows and the feedback are there, and new feedback on old requests works
    with serve(ab_config(upstream.base_url, db)) as gw:
        again = httpx.post(gw.v1 + "/feedback", json={"request_id": rid, "score": 0.1})
        assert again.status_code == 200
    with sqlite3.connect(db) as conn:
        fb = conn.execute("SELECT request_id, score, thumbs, comment FROM feedback ORDER BY id").fetchall()
    assert fb == [(rid, 0.8, "up", "good hook"), (rid, None, "down", None), (rid, 0.1, None, None)]


def test_feedback_without_the_request_log_is_a_501(upstream, tmp_path):
    cfg = ab_config(upstream.base_url, tmp_path / "s.db", enabled=False, state="enabled = false")
    with serve(cfg) as gw:
        r = httpx.post(gw.v1 + "/feedback", json={"request_id": "x", "score": 1})
        assert r.status_code == 501 and r.json()["error"]["code"] == "feedback_disabled"
        assert ask(gw, model="euclid-asm").headers["x-oracle-model"] == "euclid-asm"  # serving is unaffected
    assert not (tmp_path / "s.db").exists()


def test_rows_survive_a_clean_restart_without_any_flush(upstream, tmp_path):
    db = tmp_path / "s.db"
    # a writer that would wait 60 s on its own: only the shutdown writes the rows
    with serve(ab_config(upstream.base_url, db, flush=60)) as gw:
        ids = {ask(gw, user=f"u{i}", stream=bool(i % 2)).headers["x-request-id"] for i in range(20)}
    assert {r["request_id"] for r in rows(db)} == ids


def test_sqlite_locked_then_released_every_row_arrives_no_request_failed(upstream, tmp_path):
    db = tmp_path / "s.db"
    with serve(ab_config(upstream.base_url, db)) as gw:
        first = ask(gw).headers["x-request-id"]
        assert gw.app.state.store.flush(10)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock while requests flow
        ids, slowest = {first}, 0.0
        try:
            for i in range(40):
                t0 = time.perf_counter()
                raw = ask(gw, user=f"user-{i}", stream=bool(i % 3 == 0))
                if i % 3 == 0:
                    list(raw.parse())
                slowest = max(slowest, time.perf_counter() - t0)
                assert raw.status_code == 200
                ids.add(raw.headers["x-request-id"])
            metrics = httpx.get(gw.url + "/metrics").text
            failures = [line for line in metrics.splitlines()
                        if line.startswith("oracle_store_failures_total") and not line.endswith(" 0.0")]
            assert failures, "the writer met the lock"
            assert holder.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1, "nothing got past the lock"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert slowest < 2.0, f"a request waited on the locked database ({slowest:.2f} s)"
        assert gw.app.state.store.flush(20)
    assert {r["request_id"] for r in rows(db)} == ids
    assert gw.app.state.store.dropped == 0


def test_metrics_count_arms_and_writes(upstream, tmp_path):
    user_t, user_c = identity_in("treatment", "user"), identity_in("control", "user")
    with serve(ab_config(upstream.base_url, tmp_path / "s.db")) as gw:
        for _ in range(3):
            ask(gw, user=user_t)
        ask(gw, user=user_c)
        ask(gw, model="euclid-asm")
        assert gw.app.state.store.flush(10)
        text = httpx.get(gw.url + "/metrics").text
    assert f'oracle_ab_assignments_total{{arm="treatment",experiment="{EXPERIMENT}"}} 3.0' in text
    assert f'oracle_ab_assignments_total{{arm="control",experiment="{EXPERIMENT}"}} 1.0' in text
    assert 'oracle_store_rows_total{table="requests"} 5.0' in text
    assert "oracle_store_queue 0.0" in text
