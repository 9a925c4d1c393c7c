"""``oracle-council eval ab-online``: the gateway's online A/B, summarized from its SQLite log.

    oracle-council eval ab-online --db FILE [--since ISO] [--experiment NAME] [--json OUT]
                                  [--n-boot N] [--seed S]

Reads the request log and the feedback that the gateway writes (gateway/store.py; read-only,
safe while gateways are writing) and prints, per arm: requests, error rate, latency p50/p95,
time to the first byte, tokens and tokens/s, feedback count, mean score and thumbs-up rate
with bootstrap confidence intervals, and the models and specialists that served the arm; then
the treatment - control difference of the error rate, mean latency, mean score and thumbs-up
rate, each with an unpaired bootstrap interval (``eval.ab.stats.bootstrap_diff_ci``).

Definitions: an error is any status other than ``ok`` and ``client_disconnected`` (the client
went away: counted apart); latencies, tokens and tokens/s are over ``ok`` requests; tokens/s is
completion tokens over the summed request time; feedback belongs to the arm of the request it
names and counts every rating sent (a request rated twice counts twice).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ARMS = ("control", "treatment")
NOT_ERRORS = ("ok", "client_disconnected")
BOOT_BUDGET = 5_000_000  # resampled values per interval at most: n_boot shrinks for very large arms


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="the gateway's SQLite file ([state] db; default "
                   "$ORACLE_COUNCIL_HOME/state.db)")
    p.add_argument("--since", help="only requests from this time on, ISO 8601 (2026-01-31 or 2026-01-31T12:00; "
                   "without a zone: UTC)")
    p.add_argument("--experiment", help="the experiment's name ([ab] name); needed when the log holds several")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the results to this JSON file")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of the intervals (default 0.05)")


def run(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
        result = summarize(args.db, since=since, experiment=args.experiment, n_boot=args.n_boot, seed=args.seed,
                           alpha=args.alpha)
    except UsageError as exc:
        print(f"oracle-council eval ab-online: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    if args.json_out:
        write_json(Path(args.json_out), result)
        print(f"\nwrote {args.json_out}")
    return 0


class UsageError(Exception):
    pass


def parse_since(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: not an ISO 8601 date or time (e.g. 2026-01-31 or "
                         "2026-01-31T12:00:00+00:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


# -- reading ------------------------------------------------------------------------------------------

def _open(db: str) -> sqlite3.Connection:
    path = Path(db)
    if not path.is_file():
        raise UsageError(f"--db {db}: no such file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.execute("PRAGMA busy_timeout = 5000")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"--db {db}: not an SQLite database ({exc})") from None
    if not {"requests", "feedback"} <= tables:
        raise UsageError(f"--db {db}: not an oracle-council request log (no requests/feedback tables)")
    return conn


def load(db: str, *, since: float | None, experiment: str | None) -> dict[str, Any]:
    conn = _open(db)
    try:
        where, params = "arm IS NOT NULL", []
        if since is not None:
            where += " AND ts >= ?"
            params.append(since)
        names = [r[0] for r in conn.execute(f"SELECT DISTINCT experiment FROM requests WHERE {where}", params)]
        if experiment is None and len(names) > 1:
            raise UsageError(f"the log holds several experiments ({', '.join(sorted(map(str, names)))}); "
                             "choose one with --experiment")
        if experiment is not None:
            where += " AND experiment = ?"
            params.append(experiment)
        rows = conn.execute(
            "SELECT id, request_id, ts, arm, served_model, specialist, status, latency_ms, first_byte_ms, "
            f"prompt_tokens, completion_tokens FROM requests WHERE {where} ORDER BY id", params).fetchall()
        outside_where = "arm IS NULL" + (" AND ts >= ?" if since is not None else "")
        outside = conn.execute(f"SELECT COUNT(*) FROM requests WHERE {outside_where}",
                               [since] if since is not None else []).fetchone()[0]
        arm_of: dict[str, str] = {}
        for r in rows:  # a client may reuse a request id: its latest request wins
            arm_of[r[1]] = r[3]
        feedback = [f for f in conn.execute("SELECT request_id, score, thumbs FROM feedback ORDER BY id")
                    if f[0] in arm_of]
    finally:
        conn.close()
    return {"experiment": experiment if experiment is not None else (names[0] if names else None), "rows": rows,
            "feedback": [(arm_of[f[0]], f[1], f[2]) for f in feedback], "outside": outside}


# -- statistics ---------------------------------------------------------------------------------------

def summarize(db: str, *, since: float | None = None, experiment: str | None = None, n_boot: int = 2000,
              seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    from eval.ab.stats import bootstrap_diff_ci, bootstrap_mean_ci, percentiles

    if n_boot < 1:
        raise UsageError(f"--n-boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
    data = load(db, since=since, experiment=experiment)
    per: dict[str, dict[str, list]] = {arm: {"latency": [], "error": [], "score": [], "thumb": []} for arm in ARMS}
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        rows = [r for r in data["rows"] if r[3] == arm]
        ok = [r for r in rows if r[6] == "ok"]
        errors = [r for r in rows if r[6] not in NOT_ERRORS]
        per[arm]["latency"] = [r[7] for r in ok if r[7] is not None]
        per[arm]["error"] = [0.0 if r[6] in NOT_ERRORS else 1.0 for r in rows if r[6] != "client_disconnected"]
        completion = [(r[10], r[7]) for r in ok if r[10] is not None and r[7]]
        fb = [f for f in data["feedback"] if f[0] == arm]
        per[arm]["score"] = [f[1] for f in fb if f[1] is not None]
        per[arm]["thumb"] = [1.0 if f[2] == "up" else 0.0 for f in fb if f[2] in ("up", "down")]
        out_tokens = sum(c for c, _ in completion)
        seconds = sum(ms for _, ms in completion) / 1000.0
        arms[arm] = {
            "requests": len(rows),
            "ok": len(ok),
            "errors": len(errors),
            "client_disconnected": sum(1 for r in rows if r[6] == "client_disconnected"),
            "error_rate": len(errors) / len(per[arm]["error"]) if per[arm]["error"] else None,
            "error_statuses": dict(Counter(r[6] for r in errors).most_common()),
            "latency_ms": {**percentiles(per[arm]["latency"], (50, 95)),
                           "mean": _mean(per[arm]["latency"])},
            "first_byte_ms": percentiles([r[8] for r in ok if r[8] is not None], (50, 95)),
            "prompt_tokens": sum(r[9] or 0 for r in ok),
            "completion_tokens": sum(r[10] or 0 for r in ok),
            "completion_tokens_per_request": out_tokens / len(completion) if completion else None,
            "tokens_per_s": out_tokens / seconds if seconds > 0 else None,
            "feedback": len(fb),
            "score": {**bootstrap_mean_ci(per[arm]["score"], n_boot=_boots(n_boot, per[arm]["score"]), alpha=alpha,
                                          seed=seed)},
            "thumbs_up": {**bootstrap_mean_ci(per[arm]["thumb"], n_boot=_boots(n_boot, per[arm]["thumb"]),
                                              alpha=alpha, seed=seed),
                          "up": sum(1 for t in per[arm]["thumb"] if t == 1.0),
                          "down": sum(1 for t in per[arm]["thumb"] if t == 0.0)},
            "served_models": dict(Counter(r[4] for r in rows if r[4]).most_common()),
            "specialists": dict(Counter(r[5] for r in rows if r[5]).most_common()),
        }
    diff = {}
    for key, name in (("error", "error_rate"), ("latency", "latency_ms_mean"), ("score", "score"),
                      ("thumb", "thumbs_up_rate")):
        a, b = per["treatment"][key], per["control"][key]
        boots = min(_boots(n_boot, a), _boots(n_boot, b))
        diff[name] = {**bootstrap_diff_ci(a, b, paired=False, n_boot=boots, alpha=alpha, seed=seed),
                      "n_boot": boots}
    times = [r[2] for r in data["rows"]]
    return {
        "db": str(db),
        "experiment": data["experiment"],
        "since": datetime.fromtimestamp(since, timezone.utc).isoformat() if since is not None else None,
        "first": _iso(min(times)) if times else None,
        "last": _iso(max(times)) if times else None,
        "confidence": 1 - alpha,
        "n_boot": n_boot,
        "arms": arms,
        "diff": diff,
        "outside_experiment": data["outside"],
    }


def _boots(n_boot: int, values: list) -> int:
    return max(1, min(n_boot, BOOT_BUDGET // max(1, len(values))))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


# -- output -------------------------------------------------------------------------------------------

def _num(x: Any, fmt: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _ci(d: dict, fmt: str, scale: float = 1.0, sign: bool = False) -> str:
    if d.get("n", 0) == 0 or d.get("mean", d.get("diff")) is None:
        return "-"
    v = d.get("mean", d.get("diff"))
    if isinstance(v, float) and math.isnan(v):
        return "-"
    f = ("+" if sign else "") + fmt
    return f"{format(v * scale, f)} [{format(d['lo'] * scale, f)}, {format(d['hi'] * scale, f)}]"


def _counts(c: dict[str, int], limit: int = 4) -> str:
    items = list(c.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "") if items else "-"


def render(r: dict[str, Any]) -> str:
    c, t, d = r["arms"]["control"], r["arms"]["treatment"], r["diff"]
    pct = int(round(r["confidence"] * 100))
    head = (f"A/B experiment {r['experiment'] or '(none)'}: {r['db']}"
            + (f", since {r['since']}" if r["since"] else "")
            + (f", requests {r['first']} .. {r['last']}" if r["first"] else ", no requests in the experiment"))
    lines = [head, ""]
    rows = [
        ("", "control", "treatment", f"treatment - control [{pct}% CI]"),
        ("requests", str(c["requests"]), str(t["requests"]), ""),
        ("error rate", _pct(c["error_rate"]), _pct(t["error_rate"]), _ci(d["error_rate"], ".1f", 100, True) + " pp"
         if d["error_rate"]["n"] and not _nan(d["error_rate"]["diff"]) else "-"),
        ("client went away", str(c["client_disconnected"]), str(t["client_disconnected"]), ""),
        ("latency p50 / p95 ms", f"{_num(c['latency_ms']['p50'])} / {_num(c['latency_ms']['p95'])}",
         f"{_num(t['latency_ms']['p50'])} / {_num(t['latency_ms']['p95'])}", ""),
        ("latency mean ms", _num(c["latency_ms"]["mean"]), _num(t["latency_ms"]["mean"]),
         _ci(d["latency_ms_mean"], ".1f", 1, True)),
        ("first byte p50 ms", _num(c["first_byte_ms"]["p50"]), _num(t["first_byte_ms"]["p50"]), ""),
        ("tokens in / out", f"{c['prompt_tokens']} / {c['completion_tokens']}",
         f"{t['prompt_tokens']} / {t['completion_tokens']}", ""),
        ("out tokens / request", _num(c["completion_tokens_per_request"]), _num(t["completion_tokens_per_request"]),
         ""),
        ("tokens/s", _num(c["tokens_per_s"]), _num(t["tokens_per_s"]), ""),
        ("feedback", str(c["feedback"]), str(t["feedback"]), ""),
        ("mean score", _ci(c["score"], ".3f") + f" n={c['score']['n']}", _ci(t["score"], ".3f") +
         f" n={t['score']['n']}", _ci(d["score"], ".3f", 1, True)),
        ("thumbs up", _ci(c["thumbs_up"], ".1f", 100) + f"% n={c['thumbs_up']['n']}",
         _ci(t["thumbs_up"], ".1f", 100) + f"% n={t['thumbs_up']['n']}", _ci(d["thumbs_up_rate"], ".1f", 100, True)
         + (" pp" if d["thumbs_up_rate"]["n"] and not _nan(d["thumbs_up_rate"]["diff"]) else "")),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
    lines += ["", f"served by     control: {_counts(c['served_models'])}",
              f"              treatment: {_counts(t['served_models'])}",
              f"specialists   control: {_counts(c['specialists'])}",
              f"              treatment: {_counts(t['specialists'])}"]
    if r["outside_experiment"]:
        lines.append(f"\n{r['outside_experiment']} request(s) in the window were not in the experiment "
                     "(a model named directly, or A/B off)")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _plain(obj: Any) -> Any:
    """NaN and infinities become null: the JSON stays valid for every reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Written to a temporary file beside ``path``, then renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_plain(result), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
