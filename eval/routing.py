"""``oracle-council eval routing --data FILE [--config FILE] [--output DIR]``.

Routes every labelled prompt exactly as the gateway would for ``model: "oracle-council"`` (the
config's ``[router]``: policy, classifier, thresholds) and scores the decisions with
router/scoring.py: specialist accuracy (strict, 13 labels) and served accuracy, per-class
precision/recall/F1, the confusion matrix (printed, and saved as PNG with ``--output``),
cross-domain precision/recall/F1, oracle accuracy, euclid-asm task-type accuracy and the decision
latency p50/p95. Two baselines run on the same prompts side by side (eval/baselines.py):
keyword rules and nearest centroid. The data file is only read, never learned from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from eval.baselines import CentroidRouter, KeywordRouter
from gateway.config import ROUTER_MODEL, load_config
from gateway.routing import ModelResolver
from router.scoring import score
from router.taxonomy import ROUTE_LABELS
from router.train import CENTROIDS_FILE, load_rows


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.data)
    config = load_config(args.config)
    resolver = ModelResolver(config)
    if resolver.cascade is not None:
        resolver.cascade.load()
    results: dict[str, dict[str, Any]] = {}
    try:
        decisions, seconds = asyncio.run(_route_all(resolver, [r["prompt"] for r in rows]))
        preds = [(d.specialist if d.specialist in ROUTE_LABELS else d.model, d.cross_domain, d.task_type)
                 for d in decisions]
        name = f"router ({config.router.policy})"
        results[name] = _report(rows, preds, seconds)
        baselines: list[Any] = [KeywordRouter()]
        embedding = resolver.cascade.embedding if resolver.cascade is not None else None
        folder = getattr(embedding, "folder", None)
        if folder is not None and (folder / CENTROIDS_FILE).is_file():
            baselines.append(CentroidRouter(embedding.encoder, folder / CENTROIDS_FILE))  # type: ignore[union-attr]
        for baseline in baselines:
            timed = [_timed(baseline, r["prompt"]) for r in rows]
            results[baseline.name] = _report(rows, [p for p, _ in timed], [s for _, s in timed])
    finally:
        resolver.close()
    print(render(results, args.data))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
        with open(out / "decisions.jsonl", "w", encoding="utf-8") as f:
            for row, d in zip(rows, decisions):
                f.write(json.dumps({"prompt": row["prompt"][:200], "label": row["label"], **d.as_dict()}) + "\n")
        for router_name, report in results.items():
            png = out / f"confusion-{router_name.split()[0]}.png"
            if not save_confusion_png(report, png, title=f"{router_name} on {Path(args.data).name}"):
                print("(matplotlib is not installed: no PNG; pip install 'oracle-council[eval]')")
                break
        print(f"wrote {out}/report.json, decisions.jsonl and confusion-*.png")
    return 0


async def _route_all(resolver: ModelResolver, prompts: list[str]) -> tuple[list[Any], list[float]]:
    decisions, seconds = [], []
    for prompt in prompts:
        start = time.perf_counter()
        decisions.append(await resolver.decide(ROUTER_MODEL, {"messages": [{"role": "user", "content": prompt}]}))
        seconds.append(time.perf_counter() - start)
    return decisions, seconds


def _timed(router: Any, prompt: str) -> tuple[Any, float]:
    start = time.perf_counter()
    prediction = router(prompt)
    return prediction, time.perf_counter() - start


def _report(rows: list[dict[str, Any]], preds: list[tuple[str, bool, str | None]], seconds: list[float]) -> dict:
    report = score([r["label"] for r in rows], [p[0] for p in preds], pred_cross=[p[1] for p in preds],
                   gold_tasks=[r.get("task_type") for r in rows], pred_tasks=[p[2] for p in preds])
    ordered = sorted(seconds)
    report["latency_ms"] = {"p50": round(statistics.median(ordered) * 1000, 3),
                            "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 3)}
    return report


def render(results: dict[str, dict[str, Any]], data: str) -> str:
    names = list(results)
    lines = [f"routing on {data} ({next(iter(results.values()))['n']} prompts)", "",
             f"{'':<34}" + "".join(f"{n:>22}" for n in names)]

    def row(label: str, get: Any) -> None:
        lines.append(f"{label:<34}" + "".join(f"{get(results[n]):>22}" for n in names))

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    row("specialist accuracy (13 labels)", lambda r: num(r["accuracy"]))
    row("served accuracy (oos = master-sword)", lambda r: num(r["served_accuracy"]))
    row("oracle accuracy", lambda r: num(r["oracle_accuracy"]))
    row("  single-domain prompts only", lambda r: num(r["single_domain_oracle_accuracy"]))
    row("  as decided (oos, cross: system)", lambda r: num(r.get("served_oracle_accuracy")))
    row("cross-domain precision", lambda r: num(r["cross_domain"]["precision"]))
    row("cross-domain recall", lambda r: num(r["cross_domain"]["recall"]))
    row("cross-domain F1", lambda r: num(r["cross_domain"]["f1"]))
    row("euclid-asm task type accuracy", lambda r: num(r.get("task_type_accuracy")))
    row("latency p50 ms", lambda r: f"{r['latency_ms']['p50']:.2f}")
    row("latency p95 ms", lambda r: f"{r['latency_ms']['p95']:.2f}")
    main = results[names[0]]
    lines += ["", f"per class ({names[0]}):", f"  {'label':<21} precision recall    f1     n"]
    for label, s in main["per_class"].items():
        lines.append(f"  {label:<21} {s['precision']:>9.3f} {s['recall']:>6.3f} {s['f1']:>6.3f} {s['support']:>5}")
    lines += ["", f"confusion matrix ({names[0]}; rows = label, columns = prediction):"]
    short = [label[:6] for label in main["labels"]]
    lines.append(" " * 22 + "".join(f"{s:>7}" for s in short))
    for label, counts in zip(main["labels"], main["confusion"]):
        lines.append(f"  {label:<20}" + "".join(f"{c:>7}" for c in counts))
    return "\n".join(lines)


def save_confusion_png(report: dict[str, Any], path: Path, *, title: str) -> bool:
    """Draw the confusion matrix; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, m = report["labels"], report["confusion"]
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    top = max(max(r) for r in m) or 1
    for i, r in enumerate(m):
        for j, c in enumerate(r):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color="white" if c > top / 2 else "black")
    ax.set_title(f"{title}\naccuracy {report['accuracy']:.3f}, cross-domain F1 {report['cross_domain']['f1']:.3f}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
