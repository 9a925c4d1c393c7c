"""Every request to a serving endpoint (``/v1/chat/completions``, ``/v1/completions``,
``/api/chat``, ``/api/generate``) is accounted for once: a row of the SQLite request log and
an increment of ``oracle_requests_total`` (and ``oracle_request_errors_total`` for an error),
whether a service served it or it was answered with an error before any backend was called
(a body that is not JSON, a schema error, an unknown model, a missing key, a body too large, a
wrong method, an unexpected exception). Against the real app over sockets, with the loopback
upstream behind it and a real SQLite file in tmp_path."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from gateway.ab import assign
from tests.serving import loopback_models, serve

SALT = "salt-acct"


def config(base_url: str, db, *, extra: str = "", server: str = "", ab: str = "",
           default_model: str = "euclid-asm", master_sword: str = "parrot") -> str:
    return f"""
[server]
{server}

[router]
policy = "direct"
default_model = "{default_model}"

[state]
db = "{db}"
flush_interval = 0.05
busy_timeout = 0.05

{ab}

{loopback_models(base_url, master_sword=master_sword)}{extra}
"""


def rows(db, request_id: str) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM requests WHERE request_id = ? ORDER BY id",
                                              (request_id,))]


def sample(gw, name: str, **labels: str) -> float:
    return gw.app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def key_in(arm: str, share: float = 0.5) -> str:
    return next(f"key-{arm}-{i}" for i in range(10_000) if assign(SALT, f"key:key-{arm}-{i}", share) == arm)


# -- the A/B headers and the accounting of a request that failed while being served ------------------

def test_a_failed_request_in_the_experiment_keeps_its_arm_headers_and_is_logged_once(upstream, tmp_path):
    """The control arm is routed to a model whose upstream refuses (400), the treatment arm's
    master-sword upstream fails (5xx): both errors carry the arm's headers, on both APIs."""
    db = tmp_path / "s.db"
    ab = f'[ab]\nenabled = true\nname = "exp-err"\nshare = 0.5\nsticky_by = "api_key"\nsalt = "{SALT}"\n'
    cases = []
    with serve(config(upstream.base_url, db, ab=ab, default_model="refuser", master_sword="status-500")) as gw:
        for arm in ("control", "treatment"):
            auth = {"authorization": f"Bearer {key_in(arm)}"}
            for path, api, body in (
                    ("/v1/chat/completions", "chat", {"messages": [{"role": "user", "content": "hi"}]}),
                    ("/v1/completions", "completion", {"prompt": "hi"}),
                    ("/api/chat", "ollama_chat", {"messages": [{"role": "user", "content": "hi"}], "stream": False}),
                    ("/api/generate", "ollama_generate", {"prompt": "hi", "stream": False})):
                r = httpx.post(gw.url + path, headers=auth, json={"model": "oracle-council", **body})
                assert (r.status_code == 400) if arm == "control" else (r.status_code >= 500), (path, r.text)
                assert r.headers["x-oracle-ab-arm"] == arm, (path, arm)
                assert r.headers["x-oracle-ab-experiment"] == "exp-err"
                cases.append((r.headers["x-request-id"], api, arm, r.status_code))
        assert gw.app.state.store.flush(10)
        assert gw.app.state.metrics.in_flight._value.get() == 0
        # a request for the control model refused before serving is in no arm and carries no A/B header
        assigned = sample(gw, "oracle_ab_assignments_total", experiment="exp-err", arm="control")
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key_in('control')}"},
                       json={"model": "oracle-council", "messages": []})
        assert r.status_code == 400 and "x-oracle-ab-arm" not in r.headers
        assert sample(gw, "oracle_ab_assignments_total", experiment="exp-err", arm="control") == assigned
        refused = r.headers["x-request-id"]
        assert gw.app.state.store.flush(10)
        assert gw.app.state.metrics.in_flight._value.get() == 0
    for rid, api, arm, status in cases:
        (row,) = rows(db, rid)
        assert (row["api"], row["arm"], row["status"]) == (api, arm, f"error_{status}")
        assert row["requested_model"] == "oracle-council" and row["backend"] is None
        assert row["error"] == "invalid_request_error" if arm == "control" else row["error"] in (
            "upstream_error", "upstream_unavailable"), row
    (row,) = rows(db, refused)
    assert (row["arm"], row["experiment"], row["status"], row["error"]) == (None, None, "error_400",
                                                                          "invalid_request_error")


# -- requests answered with an error before any backend was called -------------------------------------

@pytest.fixture(scope="module")
def module_upstream():
    from tests.conftest import ThreadedUpstream

    with ThreadedUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(module_upstream, tmp_path_factory):
    db = tmp_path_factory.mktemp("acct") / "s.db"
    with serve(config(module_upstream.base_url, db)) as running:
        running.db = db
        yield running


MESSAGES = [{"role": "user", "content": "hi"}]
REFUSED = [
    # (case, path, api, body: bytes or JSON, status, the model as sent, the error's code or type)
    ("chat-not-json", "/v1/chat/completions", "chat", b'{"model": "euclid-asm", ', 400, None,
     "invalid_request_error"),
    ("chat-empty", "/v1/chat/completions", "chat", b"", 400, None, "invalid_request_error"),
    ("chat-schema", "/v1/chat/completions", "chat", {"model": "schema-chat", "messages": []}, 400, "schema-chat",
     "invalid_request_error"),
    ("chat-strict-bool", "/v1/chat/completions", "chat",
     {"model": "euclid-asm", "messages": MESSAGES, "stream": "yes"}, 400, "euclid-asm", "invalid_request_error"),
    ("chat-unknown", "/v1/chat/completions", "chat", {"model": "nope-chat", "messages": MESSAGES}, 404,
     "nope-chat", "model_not_found"),
    ("chat-alias", "/chat/completions", "chat", {"model": 7, "messages": MESSAGES}, 400, None,
     "invalid_request_error"),
    ("completion-not-json", "/v1/completions", "completion", b"\xff\xfe{}", 400, None, "invalid_request_error"),
    ("completion-unknown", "/v1/completions", "completion", {"model": "nope-completion", "prompt": "x"}, 404,
     "nope-completion", "model_not_found"),
    ("ollama-chat-not-json", "/api/chat", "ollama_chat", b"{not json", 400, None, "invalid_request_error"),
    ("ollama-chat-strict-bool", "/api/chat", "ollama_chat",
     {"model": "euclid-asm", "messages": MESSAGES, "stream": "yes"}, 400, "euclid-asm", "invalid_request_error"),
    ("ollama-chat-unknown", "/api/chat", "ollama_chat", {"model": "nope-ollama:latest", "messages": MESSAGES}, 404,
     "nope-ollama:latest", "model_not_found"),
    ("ollama-generate-not-json", "/api/generate", "ollama_generate", b"[1, 2", 400, None, "invalid_request_error"),
    ("ollama-generate-schema", "/api/generate", "ollama_generate", {"model": "gen-schema", "prompt": ["x"]}, 400,
     "gen-schema", "invalid_request_error"),
    ("ollama-generate-unknown", "/api/generate", "ollama_generate", {"model": "nope-gen", "prompt": "x"}, 404,
     "nope-gen", "model_not_found"),
]


@pytest.mark.parametrize(("case", "path", "api", "body", "status", "model", "error"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_a_refused_request_is_one_row_and_one_count(gw, module_upstream, case, path, api, body, status, model,
                                                    error):
    # the metrics name configured models only: a name a client made up is "(unknown)" there (the
    # request log keeps it as sent)
    label = "-" if model is None else model if model == "euclid-asm" else "(unknown)"
    counted = {"api": api, "model": label, "backend": "-", "status": f"error_{status}"}
    before = (sample(gw, "oracle_requests_total", **counted),
              sample(gw, "oracle_request_errors_total", api=api, status=f"error_{status}", error=error),
              sample(gw, "oracle_request_seconds_count", api=api, model=label))
    upstream_calls = sum(module_upstream.stats.requests.values())
    rid = f"acct-{case}"
    if isinstance(body, bytes):
        r = httpx.post(gw.url + path, content=body, headers={"x-request-id": rid, "content-type": "application/json"})
    else:
        r = httpx.post(gw.url + path, json=body, headers={"x-request-id": rid})
    assert r.status_code == status, r.text
    err = r.json()["error"]  # the body is the API's usual error
    if api.startswith("ollama"):
        assert set(r.json()) == {"error"} and isinstance(err, str) and err
    else:
        assert err["type"] == "invalid_request_error" and err["message"]
        assert err["code"] == ("model_not_found" if status == 404 else None)
    assert gw.app.state.store.flush(10)
    (row,) = rows(gw.db, rid)
    assert (row["api"], row["status"], row["requested_model"], row["error"]) == (api, f"error_{status}", model,
                                                                                error)
    assert row["served_model"] == model and row["backend"] is None and row["arm"] is None
    assert row["latency_ms"] > 0 and row["first_byte_ms"] is None and row["prompt_tokens"] is None
    after = (sample(gw, "oracle_requests_total", **counted),
             sample(gw, "oracle_request_errors_total", api=api, status=f"error_{status}", error=error),
             sample(gw, "oracle_request_seconds_count", api=api, model=label))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    assert sum(module_upstream.stats.requests.values()) == upstream_calls, "no backend was called"
    assert gw.app.state.metrics.in_flight._value.get() == 0


def test_refused_requests_show_in_the_scraped_metrics(gw):
    for _ in range(2):
        r = httpx.post(gw.url + "/api/chat", json={"model": "scraped:latest", "messages": MESSAGES})
        assert r.status_code == 404
    text = httpx.get(gw.url + "/metrics").text
    assert ('oracle_requests_total{api="ollama_chat",backend="-",model="(unknown)",status="error_404"}' in text)
    assert "scraped" not in text  # a client cannot add label values
    assert 'oracle_request_errors_total{api="ollama_chat",error="model_not_found",status="error_404"}' in text


def test_a_wrong_method_and_a_crash_are_accounted_for(gw):
    r = httpx.get(gw.url + "/api/generate", headers={"x-request-id": "acct-405"})
    assert r.status_code == 405 and isinstance(r.json()["error"], str)

    async def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    gw.app.state.resolver.decide = boom  # the instance attribute hides the method, for both services
    try:
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"x-request-id": "acct-500"},
                       json={"model": "euclid-asm", "messages": MESSAGES})
        assert r.status_code == 500
    finally:
        del gw.app.state.resolver.decide
    assert gw.app.state.store.flush(10)
    (row,) = rows(gw.db, "acct-405")
    assert (row["api"], row["status"], row["requested_model"], row["error"]) == ("ollama_generate", "error_405",
                                                                                None, "405")
    (row,) = rows(gw.db, "acct-500")
    assert (row["api"], row["status"], row["requested_model"], row["error"]) == ("chat", "error_500",
                                                                                "euclid-asm", "server_error")
    assert gw.app.state.metrics.in_flight._value.get() == 0


def test_served_requests_and_other_paths_are_not_counted_twice(gw):
    ok = httpx.post(gw.url + "/api/chat", headers={"x-request-id": "acct-ok"},
                    json={"model": "euclid-asm", "messages": MESSAGES, "stream": False})
    assert ok.status_code == 200
    refused = httpx.post(gw.url + "/v1/chat/completions", headers={"x-request-id": "acct-route"},
                         json={"model": "refuser", "messages": MESSAGES})  # the upstream's 400, in the service
    assert refused.status_code == 400
    for path in ("/v1/route", "/v1/feedback", "/api/show"):  # not serving endpoints: never in the log
        assert httpx.post(gw.url + path, headers={"x-request-id": "acct-other"}, content=b"{").status_code == 400
    assert httpx.post(gw.url + "/api/pull", headers={"x-request-id": "acct-other"}, json={}).status_code == 404
    assert gw.app.state.store.flush(10)
    (row,) = rows(gw.db, "acct-ok")
    assert row["status"] == "ok" and row["error"] is None and row["backend"] == "up"
    (row,) = rows(gw.db, "acct-route")
    assert (row["status"], row["error"], row["served_model"]) == ("error_400", "invalid_request_error", "refuser")
    assert rows(gw.db, "acct-other") == []


def test_a_rejected_key_or_size_is_accounted_for(upstream, tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    with serve(config(upstream.base_url, db, server='api_keys = ["sk-acct"]\nmax_request_bytes = 2048')) as gw:
        no_key = httpx.post(gw.url + "/api/chat", headers={"x-request-id": "acct-401"},
                            json={"model": "euclid-asm", "messages": MESSAGES})
        assert no_key.status_code == 401 and isinstance(no_key.json()["error"], str)
        big = httpx.post(gw.url + "/v1/completions", headers={"x-request-id": "acct-413",
                                                              "authorization": "Bearer sk-acct"},
                         json={"model": "euclid-asm", "prompt": "A" * 5000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        other = httpx.get(gw.url + "/v1/models", headers={"x-request-id": "acct-401-models"})
        assert other.status_code == 401
        assert gw.app.state.store.flush(10)
        assert sample(gw, "oracle_request_errors_total", api="ollama_chat", status="error_401",
                      error="invalid_api_key") == 1
        assert sample(gw, "oracle_requests_total", api="completion", model="-", backend="-",
                      status="error_413") == 1
    (row,) = rows(db, "acct-401")
    assert (row["api"], row["status"], row["requested_model"], row["error"]) == ("ollama_chat", "error_401", None,
                                                                                "invalid_api_key")
    assert row["key_hash"] is None
    (row,) = rows(db, "acct-413")
    assert (row["api"], row["status"], row["error"]) == ("completion", "error_413", "request_too_large")
    assert rows(db, "acct-401-models") == []


def test_without_the_request_log_refused_requests_are_still_counted(upstream, tmp_path):
    text = config(upstream.base_url, tmp_path / "s.db").replace('db = "', 'enabled = false\ndb = "', 1)
    with serve(text) as gw:
        assert gw.app.state.store is None
        r = httpx.post(gw.url + "/api/generate", json={"model": "nope-off", "prompt": "x"})
        assert r.status_code == 404
        assert sample(gw, "oracle_requests_total", api="ollama_generate", model="(unknown)", backend="-",
                      status="error_404") == 1
    assert not (tmp_path / "s.db").exists()


def test_model_labels_are_configured_names_only():
    from gateway.metrics import UNKNOWN_MODEL, Metrics

    m = Metrics(known_models=["euclid-asm", "oracle-council"])
    assert [m.model_label(x) for x in ("euclid-asm", "euclid-asm:latest", "oracle-council", "-")] == \
        ["euclid-asm", "euclid-asm", "oracle-council", "-"]
    assert {m.model_label(x) for x in ("nope", "nope:latest", "x" * 500, "euclid-asm2")} == {UNKNOWN_MODEL}
    m.account("chat", "made-up", "-", "error_404", None, 0.0, "rid", None, "model_not_found")
    m.account("chat", "euclid-asm:latest", "up", "ok", {"prompt_tokens": 3, "completion_tokens": 2}, 0.0, "rid")
    text = m.render().decode()
    assert "made-up" not in text and 'model="(unknown)"' in text
    assert 'oracle_tokens_total{backend="up",kind="prompt",model="euclid-asm"} 3.0' in text
    assert Metrics().model_label("anything") == "anything"  # no registry given: labels as sent
