"""Aggregate scored rows into results (pure) and write report.md, report.html, results.json and
samples.jsonl (atomically). The Markdown and the HTML are rendered from the same tables, so
they always show the same numbers as results.json.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from eval.ab import stats

ALPHA = 0.05


# -- aggregation -----------------------------------------------------------------------------

def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else math.nan


def _winner(arms: Sequence[str], diff: dict, cmp: dict) -> str:
    p = cmp.get("p_value")
    if diff["n"] == 0 or p is None or math.isnan(diff["lo"]):
        return "n/a"
    if p < ALPHA and (diff["lo"] > 0 or diff["hi"] < 0):
        return arms[0] if diff["diff"] > 0 else arms[1]
    return "no significant difference"


def _group(rows: list[dict], arms: Sequence[str], n_boot: int, seed: int) -> dict:
    a, b = arms
    sa = [r["arms"][a]["scores"]["primary"] for r in rows]
    sb = [r["arms"][b]["scores"]["primary"] for r in rows]
    out: dict = {"n": len(rows), "arms": {}}
    for arm, scores in ((a, sa), (b, sb)):
        sc = [r["arms"][arm]["scores"] for r in rows]
        out["arms"][arm] = {
            "score": stats.bootstrap_mean_ci(scores, n_boot=n_boot, seed=seed),
            "pass_rate": _mean([1.0 if s["passed"] else 0.0 for s in sc]),
            "chrf": _mean([s["chrf"] for s in sc]),
            "embed": _mean([s["embed"] for s in sc]),
            "asm": dict(Counter(s["asm_status"] for s in sc if s["asm_status"])),
            "errors": sum(1 for r in rows if r["arms"][arm]["error"]),
        }
    diff = stats.bootstrap_diff_ci(sa, sb, paired=True, n_boot=n_boot, seed=seed)
    cmp = stats.paired_comparison(sa, sb)
    out["diff"] = diff
    out["comparison"] = cmp
    out["winner"] = _winner(arms, diff, cmp)
    verdicts = [r["judge"]["winner"] for r in rows if r.get("judge")]
    if verdicts:
        ja = [1.0 if v == "a" else 0.5 if v == "tie" else 0.0 for v in verdicts]
        jcmp = stats.paired_comparison(ja, [1.0 - x for x in ja])
        out["judge"] = {"wins": verdicts.count("a"), "ties": verdicts.count("tie"), "losses": verdicts.count("b"),
                        "n": len(verdicts), "p_value": jcmp["p_value"], "test": jcmp["test"]}
    return out


def _latency(rows: list[dict], arm: str, prices: dict) -> dict:
    answered = [r["arms"][arm] for r in rows if r["arms"][arm]["latency_s"] is not None]
    total = [x["latency_s"] for x in answered]
    ttfb = [x["ttfb_s"] for x in answered]
    out_tok = [((x.get("usage") or {}).get("completion_tokens")) for x in answered]
    in_tok = [((x.get("usage") or {}).get("prompt_tokens")) for x in answered]
    pairs = [(t, lat) for t, lat in zip(out_tok, total) if t is not None and lat]
    cost, priced, unpriced = 0.0, 0, set()
    for x, i, o in zip(answered, in_tok, out_tok):
        served = x.get("served_model") or arm
        price = prices.get(served)
        if price is None or i is None or o is None:
            unpriced.add(served)
            continue
        cost += (i * price[0] + o * price[1]) / 1e6
        priced += 1
    return {
        "n": len(answered),
        "latency_s": stats.percentiles(total),
        "ttfb_s": stats.percentiles(ttfb),
        "completion_tokens_mean": _mean([t for t in out_tok if t is not None]),
        "prompt_tokens_mean": _mean([t for t in in_tok if t is not None]),
        "tokens_per_s": (sum(t for t, _ in pairs) / sum(lat for _, lat in pairs)) if pairs else math.nan,
        "cost_usd": cost if priced and not unpriced else None,
        "cost_priced_responses": priced,
        "unpriced_models": sorted(unpriced),
    }


def _routing(rows: list[dict], arm: str) -> dict:
    per_domain: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    confusion: dict[str, Counter] = defaultdict(Counter)
    served: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        x = r["arms"][arm]
        if x["error"]:
            continue
        decided = x["headers"].get("x-oracle-specialist") or x.get("served_model") or "?"
        per_domain[r["domain"]][1] += 1
        per_domain[r["domain"]][0] += int(decided == r["expected_specialist"])
        confusion[r["expected_specialist"]][decided] += 1
        served[r["expected_specialist"]][x.get("served_model") or "?"] += 1
    hits = sum(v[0] for v in per_domain.values())
    n = sum(v[1] for v in per_domain.values())
    return {
        "overall": {"routed_as_expected": hits, "n": n, "share": hits / n if n else math.nan},
        "per_domain": {d: {"routed_as_expected": v[0], "n": v[1], "share": v[0] / v[1] if v[1] else math.nan}
                       for d, v in sorted(per_domain.items())},
        "confusion": {e: dict(c) for e, c in sorted(confusion.items())},
        "served": {e: dict(c) for e, c in sorted(served.items())},
    }


def summarize(rows: list[dict], arms: Sequence[str], *, prices: dict | None = None, n_boot: int = 2000,
              seed: int = 0, router_arms: Sequence[str] = ()) -> dict:
    """The results: per domain and overall scores, comparisons, latency/tokens/cost, routing."""
    prices = prices or {}
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_domain[r["domain"]].append(r)
    domains = {d: _group(rs, arms, n_boot, seed) for d, rs in sorted(by_domain.items())}
    routed = [arm for arm in arms if arm in router_arms or len(
        {r["arms"][arm]["headers"].get("x-oracle-specialist") for r in rows if not r["arms"][arm]["error"]}) > 1]
    return {
        "arms": list(arms),
        "n_samples": len(rows),
        "alpha": ALPHA,
        "n_boot": n_boot,
        "seed": seed,
        "overall": _group(rows, arms, n_boot, seed),
        "domains": domains,
        "performance": {arm: _latency(rows, arm, prices) for arm in arms},
        "routing": {arm: _routing(rows, arm) for arm in routed},
    }


# -- tables (shared by Markdown and HTML) ----------------------------------------------------

def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_p(p) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(d: dict, key: str = "mean") -> str:
    if d.get("n") == 1:  # one sample: a bootstrap interval would be a point, which reads as certainty
        return f"{fmt(d[key])} [n=1, no CI]"
    return f"{fmt(d[key])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def headline_table(res: dict) -> tuple[list[str], list[list[str]]]:
    a, b = res["arms"]
    head = ["domain", "n", f"{a} score [95% CI]", f"{b} score [95% CI]", f"diff {a}−{b} [95% CI]",
            "W/T/L", "p", "winner"]
    rows = []
    for name, g in [*res["domains"].items(), ("**overall**", res["overall"])]:
        c = g["comparison"]
        rows.append([name, str(g["n"]), _ci(g["arms"][a]["score"]), _ci(g["arms"][b]["score"]),
                     _ci(g["diff"], "diff"), f"{c['wins']}/{c['ties']}/{c['losses']}", fmt_p(c["p_value"]),
                     g["winner"]])
    return head, rows


def components_table(res: dict) -> tuple[list[str], list[list[str]]]:
    head = ["domain", "arm", "pass rate", "chrF", "embedding sim.", "ASM: assembles / does not / no code / unchecked",
            "errors"]
    rows = []
    for name, g in [*res["domains"].items(), ("overall", res["overall"])]:
        for arm in res["arms"]:
            x = g["arms"][arm]
            asm = x["asm"]
            asm_s = (f"{asm.get('assembles', 0)} / {asm.get('does_not_assemble', 0)} / {asm.get('no_code', 0)} / "
                     f"{asm.get('unchecked', 0)}") if asm else "–"
            rows.append([name, arm, fmt(x["pass_rate"]), fmt(x["chrf"]), fmt(x["embed"]), asm_s, str(x["errors"])])
    return head, rows


def judge_table(res: dict) -> tuple[list[str], list[list[str]]] | None:
    if "judge" not in res["overall"]:
        return None
    a, b = res["arms"]
    head = ["domain", f"{a} wins", "ties", f"{b} wins", "p"]
    rows = [[name, str(g["judge"]["wins"]), str(g["judge"]["ties"]), str(g["judge"]["losses"]),
             fmt_p(g["judge"]["p_value"])]
            for name, g in [*res["domains"].items(), ("overall", res["overall"])] if "judge" in g]
    return head, rows


def performance_table(res: dict) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "answered", "latency p50 (s)", "latency p95 (s)", "first byte p50 (s)", "first byte p95 (s)",
            "completion tokens (mean)", "tokens/s", "cost (USD)"]
    rows = []
    for arm, p in res["performance"].items():
        cost = fmt(p["cost_usd"], 6) if p["cost_usd"] is not None else (
            "no price for " + ", ".join(p["unpriced_models"]) if p["unpriced_models"] else "n/a")
        rows.append([arm, str(p["n"]), fmt(p["latency_s"]["p50"]), fmt(p["latency_s"]["p95"]),
                     fmt(p["ttfb_s"]["p50"]), fmt(p["ttfb_s"]["p95"]), fmt(p["completion_tokens_mean"], 1),
                     fmt(p["tokens_per_s"], 1), cost])
    return head, rows


def routing_tables(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for arm, r in res["routing"].items():
        head = ["domain", "routed to the expected specialist", "share"]
        rows = [[d, f"{v['routed_as_expected']}/{v['n']}", fmt(v["share"])] for d, v in r["per_domain"].items()]
        o = r["overall"]
        rows.append(["overall", f"{o['routed_as_expected']}/{o['n']}", fmt(o["share"])])
        out.append((f"Routing of `{arm}`: share routed to the specialist the domain implies", head, rows))
        decided = sorted({k for c in r["confusion"].values() for k in c})
        head = ["expected \\ decided", *decided]
        rows = [[e, *[str(c.get(k, 0)) for k in decided]] for e, c in r["confusion"].items()]
        out.append((f"Routing of `{arm}`: confusion (expected specialist × the router's decision)", head, rows))
    return out


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        c = html.escape(c)
        return f"<b>{c[2:-2]}</b>" if c.startswith("**") and c.endswith("**") else c

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


METHOD = """Primary score per sample (0-1): where the reference answer contains 65816 code, 0.5 × (the answer's \
code assembles with a816) + 0.5 × chrF to the reference (chrF alone when the checker cannot judge the \
code: a macro, an incsrc); otherwise the cosine similarity of all-MiniLM-L6-v2 embeddings of answer and \
reference. Pass: primary ≥ the domain's threshold (training.domains.threshold_for). Means with 95% \
percentile-bootstrap CIs; diff is the paired bootstrap CI of the mean difference; W/T/L counts samples \
where the first arm scored higher / equal / lower; p is the two-sided Wilcoxon signed-rank test on the \
paired scores (ties dropped). Winner: p < 0.05 and the diff CI excluding 0; otherwise no significant \
difference. A failed request scores 0."""


def sections(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = [("Headline", *headline_table(res)), ("Components", *components_table(res))]
    jt = judge_table(res)
    if jt:
        out.append(("LLM judge (pairwise, both orders; inconsistent verdicts are ties)", *jt))
    out.append(("Latency, tokens and cost", *performance_table(res)))
    out.extend(routing_tables(res))
    return out


def render_markdown(res: dict, meta: dict, plots: dict[str, str]) -> str:
    a, b = res["arms"]
    parts = [f"# A/B: `{a}` vs `{b}`", "",
             f"{res['n_samples']} samples from `{meta.get('data')}` via {meta.get('gateway')}, "
             f"{meta.get('created')}.", ""]
    for title, head, rows in sections(res):
        parts += [f"## {title}", "", _md_table(head, rows), ""]
        if title == "Headline":
            parts += [f"![score by domain]({plots['scores']})", f"![wins, ties, losses]({plots['wtl']})", ""]
        if title.startswith("Latency"):
            parts += [f"![latency]({plots['latency']})", ""]
    parts += ["## Method", "", METHOD, ""]
    return "\n".join(parts)


def render_html(res: dict, meta: dict, images: dict[str, bytes]) -> str:
    a, b = res["arms"]

    def img(key: str, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(images[key]).decode()}">'

    body = [f"<h1>A/B: <code>{html.escape(a)}</code> vs <code>{html.escape(b)}</code></h1>",
            f"<p>{res['n_samples']} samples from <code>{html.escape(str(meta.get('data')))}</code> via "
            f"{html.escape(str(meta.get('gateway')))}, {html.escape(str(meta.get('created')))}.</p>"]
    for title, head, rows in sections(res):
        body += [f"<h2>{html.escape(title).replace('`', '')}</h2>", _html_table(head, rows)]
        if title == "Headline":
            body += [img("scores", "score by domain"), img("wtl", "wins, ties, losses")]
        if title.startswith("Latency"):
            body.append(img("latency", "latency"))
    body += ["<h2>Method</h2>", f"<p>{html.escape(METHOD)}</p>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>A/B {html.escape(a)} vs "
            f"{html.escape(b)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")


# -- plots -----------------------------------------------------------------------------------

def plots(res: dict, rows: list[dict]) -> dict[str, bytes]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = res["arms"]
    names = [*res["domains"], "overall"]
    groups = [*res["domains"].values(), res["overall"]]
    out = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    width = 0.38
    for i, arm in enumerate(arms):
        means = [g["arms"][arm]["score"]["mean"] for g in groups]
        lo = [m - g["arms"][arm]["score"]["lo"] for m, g in zip(means, groups)]
        hi = [g["arms"][arm]["score"]["hi"] - m for m, g in zip(means, groups)]
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=arm)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("primary score (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Score by domain")
    out["scores"] = png(fig)

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    w = [g["comparison"]["wins"] for g in groups]
    t = [g["comparison"]["ties"] for g in groups]
    lo = [g["comparison"]["losses"] for g in groups]
    ys = range(len(names))
    ax.barh(ys, w, label=f"{arms[0]} better", color="tab:blue")
    ax.barh(ys, t, left=w, label="tie", color="tab:gray")
    ax.barh(ys, lo, left=[x + y for x, y in zip(w, t)], label=f"{arms[1]} better", color="tab:orange")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("samples")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Paired wins / ties / losses")
    out["wtl"] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [[r["arms"][arm]["latency_s"] for r in rows if r["arms"][arm]["latency_s"] is not None] for arm in arms]
    if any(data):
        ax.boxplot([d or [0.0] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(arms) + 1), arms)
    ax.set_ylabel("total latency (s)")
    ax.set_title("Latency per request")
    out["latency"] = png(fig)
    return out


# -- files -----------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(out_dir: Path, res: dict, rows: list[dict], meta: dict) -> dict[str, Path]:
    images = plots(res, rows)
    names = {"scores": "plot-scores.png", "wtl": "plot-wins.png", "latency": "plot-latency.png"}
    for key, name in names.items():
        write_atomic(out_dir / name, images[key])
    paths = {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html",
             "results.json": out_dir / "results.json", "samples.jsonl": out_dir / "samples.jsonl"}
    write_atomic(paths["results.json"], json.dumps(_json_safe({"meta": meta, **res}), indent=2, ensure_ascii=False))
    write_atomic(paths["samples.jsonl"], "".join(json.dumps(_json_safe(r), ensure_ascii=False) + "\n" for r in rows))
    write_atomic(paths["report.md"], render_markdown(res, meta, names))
    write_atomic(paths["report.html"], render_html(res, meta, images))
    return paths
