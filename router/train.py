"""Train the embedding classifier: ``oracle-council router train [--data FILE] [--output DIR]``.

Reads top to bottom: load and check the labelled prompts, embed them once, cross-validate to
measure the heads and tune the two cross-domain thresholds on the out-of-fold predictions, fit
the heads on all rows, write ``heads.joblib`` and ``metadata.json`` (what was trained on, how
it scored, with which libraries). The validation scores are from stratified k-fold
cross-validation of router/data/train.jsonl alone: no evaluation set is ever read here.

``ensure_default()`` is the classifier a config gets when it names none: trained on the shipped
data the first time it is needed and cached in ``$ORACLE_COUNCIL_HOME/router/<key>``, the key
being a hash of the data, the recipe (its version, its settings and the source of the modules
that compute features and fit heads), the encoder model and the library versions, so a new
scikit-learn, new data or an edited feature trains a new one and nothing stale is ever loaded. Training is
deterministic (fixed folds, newton-cg, prompts embedded one at a time); it takes about two minutes
on two cores (a third of it embedding, the rest cross-validation).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any

from router.encoders import DEFAULT_MODEL
from router.taxonomy import ASM_TASK_TYPES, ROUTE_LABELS

log = logging.getLogger("oracle_council.router")

CENTROIDS_FILE = "centroids.npz"
RECIPE_VERSION = "router-v5"  # bump when the recipe below changes: cached defaults are then retrained
HOME_ENV = "ORACLE_COUNCIL_HOME"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = DEFAULT_MODEL       # sentence-transformers model (name, folder or hub id in the local cache)
    embedding_weight: float = 2.0    # scale of the (unit-norm) sentence embedding in the feature vector
    lexicon_weight: float = 0.6      # scale of router/features.py's lexicon, code-shape and two-task features
    char_ngrams: tuple[int, int] = (2, 5)  # char_wb TF-IDF n-gram range; (0, 0) turns it off
    char_min_df: int = 2             # a char n-gram must occur in this many prompts
    word_ngrams: tuple[int, int] = (1, 2)  # word TF-IDF n-gram range; (0, 0) turns it off
    word_min_df: int = 2             # a word n-gram must occur in this many prompts
    C: float = 20.0                  # inverse L2 strength of every logistic regression
    knn_weight: float = 2.0          # scale of the nearest-label similarities (0 turns them off)
    knn_k: int = 3                   # how many of a label's closest training prompts are averaged
    folds: int = 5                   # cross-validation folds for the validation scores and thresholds
    seed: int = 42                   # fold shuffling
    max_seq_length: int = 256        # encoder tokens read per prompt
    quantize: bool = True            # int8 dynamic quantization of the encoder (2.6x faster, same CV accuracy)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError("folds must be at least 2")
        if self.embedding_weight <= 0 or self.lexicon_weight < 0 or self.knn_weight < 0 or self.C <= 0:
            raise ValueError("weights and C must be positive")
        if self.knn_k < 1:
            raise ValueError("knn_k must be at least 1")


def default_data_path() -> Path:
    return Path(str(resources.files("router").joinpath("data/train.jsonl")))


def load_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Labelled prompts: ``prompt``, ``label`` (a route label), ``task_type``, ``domains``."""
    rows = []
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in ROUTE_LABELS or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{n}: needs a 'prompt' string and a 'label' in {', '.join(ROUTE_LABELS)}")
        if row.get("task_type") not in (None, *ASM_TASK_TYPES):
            raise ValueError(f"{path}:{n}: unknown task_type {row.get('task_type')!r}")
        rows.append(row)
    return rows


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("oracle-council", "numpy", "scipy", "scikit-learn", "torch", "sentence-transformers", "transformers"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def train(data: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
          config: TrainConfig = TrainConfig(), *, threads: int | None = None) -> Path:
    import joblib
    import numpy as np

    from router.embedding import HEADS_FILE, METADATA_FILE
    from router.encoders import SentenceTransformerEncoder
    from router.validation import cross_validate, fit_heads

    data_path = Path(data) if data else default_data_path()
    raw = data_path.read_bytes()
    rows = load_rows(data_path)
    out = Path(output) if output else Path("router-classifier")
    start = time.perf_counter()

    # 1. embed every prompt once (this is most of the time)
    encoder = SentenceTransformerEncoder(config.model, threads=threads, max_seq_length=config.max_seq_length,
                                         quantize=config.quantize)
    texts = [r["prompt"] for r in rows]
    vectors = np.asarray(encoder(texts))
    log.info("embedded %d prompts in %.1f s", len(texts), time.perf_counter() - start)

    # 2. out-of-fold predictions: validation scores and the tuned cross-domain thresholds
    report = cross_validate(rows, vectors, config)

    # 3. the heads that ship: fitted on every row
    heads = fit_heads(rows, vectors, config)

    metadata = {
        "format": 1,
        "recipe": RECIPE_VERSION,
        "model": config.model,
        "embedding_dim": int(vectors.shape[1]),
        "max_seq_length": config.max_seq_length,
        "quantized": bool(encoder.quantized),
        "data": {"file": data_path.name, "sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows)},
        "label_counts": dict(sorted(Counter(r["label"] for r in rows).items())),
        "task_type_counts": dict(sorted(Counter(r["task_type"] for r in rows if r.get("task_type")).items())),
        "config": dataclasses.asdict(config),
        "thresholds": report.pop("thresholds"),
        "validation": report,
        "versions": versions(),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(heads, out / HEADS_FILE, compress=3)
    # per-label mean embeddings: the nearest-centroid baseline of `oracle-council eval routing`
    names = sorted({r["label"] for r in rows})
    centroids = np.stack([vectors[[i for i, r in enumerate(rows) if r["label"] == n]].mean(axis=0) for n in names])
    np.savez(out / CENTROIDS_FILE, labels=np.asarray(names), vectors=centroids.astype(np.float32))
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", "utf-8")
    return out


# -- the default classifier, trained on first use ------------------------------------------------

def default_home(home: str | os.PathLike | None = None) -> Path:
    return Path(home or os.environ.get(HOME_ENV) or Path.home() / ".cache" / "oracle-council").expanduser()


# the code that turns a prompt into features and fits the heads: an edit to any of them retrains
RECIPE_MODULES = ("features.py", "embedding.py", "validation.py", "train.py")


def default_key(data: Path, model: str) -> str:
    h = hashlib.sha256()
    h.update(data.read_bytes())
    for name in RECIPE_MODULES:
        h.update(resources.files("router").joinpath(name).read_bytes())
    h.update(json.dumps([RECIPE_VERSION, model, dataclasses.asdict(TrainConfig(model=model)),
                         {k: v for k, v in versions().items() if k != "oracle-council"}]).encode())
    return h.hexdigest()[:16]


def ensure_default(*, model: str | None = None, home: str | os.PathLike | None = None,
                   data: str | os.PathLike | None = None, threads: int | None = 1) -> Path:
    """The cached default classifier's folder, training it first when it is missing."""
    model = model or DEFAULT_MODEL
    data_path = Path(data) if data else default_data_path()
    root = default_home(home) / "router"
    target = root / default_key(data_path, model)
    if (target / "metadata.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock"):
        if (target / "metadata.json").is_file():  # another process trained it while we waited
            return target
        log.warning("training the default router classifier on %s (once per machine, ~2 min) into %s",
                    data_path.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=root))
        try:
            train(data_path, tmp, TrainConfig(model=model), threads=threads)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def summary(folder: Path) -> str:
    """A few lines about a trained classifier, for the CLI."""
    meta = json.loads((folder / "metadata.json").read_text("utf-8"))
    v = meta["validation"]
    lines = [f"{folder}: {meta['data']['rows']} prompts ({meta['data']['file']}, sha256 {meta['data']['sha256'][:12]}), "
             f"model {meta['model']}, {meta['train_seconds']} s",
             f"  {v['method']}: specialist accuracy {v['accuracy']:.3f}, oracle accuracy {v['oracle_accuracy']:.3f}, "
             f"cross-domain F1 {v['cross_domain']['f1']:.3f}, euclid-asm task type {v['task_type_accuracy']:.3f}",
             f"  thresholds: {meta['thresholds']}",
             "  label                 precision recall  f1    n"]
    for label, s in v["per_class"].items():
        lines.append(f"  {label:<21} {s['precision']:.3f}     {s['recall']:.3f}   {s['f1']:.3f} {s['support']:>4}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m router.train [DATA] [OUTPUT]
    logging.basicConfig(level="INFO")
    folder = train(*(sys.argv[1:3]))
    print(summary(folder))
