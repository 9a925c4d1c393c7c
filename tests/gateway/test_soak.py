"""The load/soak run (eval/soak.py): a short real run through a gateway process, and its checks
on synthetic figures (so a leak or drift is known to be caught)."""

from __future__ import annotations

import argparse
import json

import pytest

from eval import soak


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**({"seconds": 6.0, "rps": 40.0, "seed": 0, "p99_drift": 2.0,
                                  "max_rss_growth_mb": 25.0, "json_out": None} | kw))


@pytest.mark.slow
def test_a_short_soak_through_a_gateway_process_passes_every_check(tmp_path):
    out = tmp_path / "soak.json"
    assert soak.run(_args(json_out=str(out))) == 0
    r = json.loads(out.read_text())
    assert r["ok"] and all(r["checks"].values()), r["checks"]
    assert r["requests"] == 240
    assert sum(k["n"] for k in r["by_kind"].values()) == 240
    assert r["by_kind"]["abandon"]["n"] > 0 and r["by_kind"]["fallback"]["n"] > 0
    assert r["n_missing"] == 0


def _outcomes(n: int, latency: float = 0.004) -> list[soak.Outcome]:
    out = []
    for i in range(n):
        kind = soak.MIX[i % len(soak.MIX)][0]
        out.append(soak.Outcome(kind, f"soak-0-{i:06d}", 0.0, status=soak.EXPECTED[kind], latency=latency))
    return out


def _logged(outcomes) -> dict[str, str]:
    return {o.rid: ("ok" if o.status == 200 else "error_404") for o in outcomes}


def _samples(rss: list[float]) -> soak.Samples:
    return soak.Samples(t=list(range(len(rss))), rss_mb=rss, fds=[14] * len(rss), upstream_conns=[1] * len(rss))


BEFORE = {"fds": 14, "upstream_conns": 0}
AFTER = {"fds": 15, "upstream_conns": 1, "rss_mb": 70.0}


def test_a_clean_run_passes():
    o = _outcomes(300)
    r = soak.evaluate(_args(), o, _samples([70.0] * 10), BEFORE, AFTER, _logged(o))
    assert r["ok"], r["checks"]


def test_leaked_upstream_connections_and_descriptors_fail():
    o = _outcomes(300)
    r = soak.evaluate(_args(), o, _samples([70.0] * 10), BEFORE, {"fds": 60, "upstream_conns": 40, "rss_mb": 70.0},
                      _logged(o))
    assert not r["ok"]
    assert not r["checks"]["fds_back"] and not r["checks"]["upstream_conns_bounded"]


def test_growing_memory_fails():
    o = _outcomes(300)
    r = soak.evaluate(_args(), o, _samples([70.0 + 10 * i for i in range(10)]), BEFORE, AFTER, _logged(o))
    assert not r["checks"]["memory_flat"] and r["rss_mb"]["growth"] == pytest.approx(70.0)


def test_latency_drift_fails():
    o = _outcomes(300)
    for x in o[200:]:
        x.latency = 0.050
    r = soak.evaluate(_args(), o, _samples([70.0] * 10), BEFORE, AFTER, _logged(o))
    assert not r["checks"]["p99_holds"]


def test_a_request_missing_from_the_log_or_logged_with_another_outcome_fails():
    o = _outcomes(300)
    logged = _logged(o)
    del logged[o[7].rid]
    r = soak.evaluate(_args(), o, _samples([70.0] * 10), BEFORE, AFTER, logged)
    assert not r["checks"]["every_request_logged"] and r["missing_from_log"] == [o[7].rid]
    logged = _logged(o)
    chat = next(x for x in o if x.kind == "chat")
    logged[chat.rid] = "upstream_error"
    r = soak.evaluate(_args(), o, _samples([70.0] * 10), BEFORE, AFTER, logged)
    assert r["status_mismatch"] == [chat.rid]
