"""eval.ab.stats on synthetic data whose answers are known."""

from __future__ import annotations

import math
import random

import pytest

from eval.ab import stats


def test_mean_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    covered = 0
    trials = 200
    for seed in range(trials):
        rng = random.Random(seed)
        xs = [rng.gauss(0.3, 1.0) for _ in range(40)]
        ci = stats.bootstrap_mean_ci(xs, n_boot=500, seed=seed)
        assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n"] == 40
        covered += ci["lo"] <= 0.3 <= ci["hi"]
    # percentile bootstrap at n=40 runs slightly narrow: ~93%; far from 95% would be a bug
    assert 0.88 <= covered / trials <= 0.99, covered


def test_paired_diff_ci_finds_a_shift_and_excludes_zero() -> None:
    rng = random.Random(1)
    b = [rng.random() for _ in range(60)]
    a = [x + 0.2 + rng.gauss(0, 0.05) for x in b]
    d = stats.bootstrap_diff_ci(a, b, paired=True)
    assert d["n"] == 60 and 0.17 < d["diff"] < 0.23 and d["lo"] > 0.15 and d["hi"] < 0.25
    u = stats.bootstrap_diff_ci(a, b, paired=False)
    assert u["hi"] - u["lo"] > d["hi"] - d["lo"]  # pairing removes the shared variation
    with pytest.raises(ValueError):
        stats.bootstrap_diff_ci([1.0], [1.0, 2.0], paired=True)


def test_wins_ties_losses_and_p_values() -> None:
    a = [1.0, 0.5, 0.2, 0.2, 0.9]
    b = [0.0, 0.5, 0.3, 0.2 + 1e-12, 0.1]
    c = stats.paired_comparison(a, b)
    assert (c["wins"], c["ties"], c["losses"], c["n"]) == (2, 2, 1, 5)
    assert c["test"] == "wilcoxon_signed_rank"

    rng = random.Random(2)
    base = [rng.random() for _ in range(50)]
    clear = stats.paired_comparison([x + 0.3 for x in base], base)
    assert clear["wins"] == 50 and clear["p_value"] < 1e-6
    noise = [rng.gauss(0, 1) for _ in range(50)]
    none = stats.paired_comparison([x + e for x, e in zip(base, noise)], [x - e for x, e in zip(base, noise[::-1])])
    assert none["p_value"] > 0.05
    assert stats.paired_comparison([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0


def test_empty_and_degenerate_inputs_never_raise() -> None:
    m = stats.bootstrap_mean_ci([])
    assert m["n"] == 0 and all(math.isnan(m[k]) for k in ("mean", "lo", "hi"))
    d = stats.bootstrap_diff_ci([], [], paired=True)
    assert d["n"] == 0 and math.isnan(d["diff"])
    assert math.isnan(stats.bootstrap_diff_ci([], [1.0], paired=False)["diff"])
    c = stats.paired_comparison([], [])
    assert c == {"wins": 0, "ties": 0, "losses": 0, "n": 0, "p_value": None, "test": "wilcoxon_signed_rank"}
    p = stats.percentiles([])
    assert set(p) == {"p50", "p95"} and all(math.isnan(v) for v in p.values())
    assert stats.bootstrap_mean_ci([2.0]) == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 1}
    assert stats.bootstrap_mean_ci([1.0, float("nan"), 3.0])["n"] == 2  # non-finite values are dropped
    assert stats.percentiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {"p50": 3.0, "p95": 4.8}
