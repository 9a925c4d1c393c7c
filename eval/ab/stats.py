"""Pure statistics for A/B comparisons (shared by the offline and the online A/B harness).

Every function takes plain sequences of floats and returns a plain dict; nothing here touches
files, the network or global state. numpy and scipy are imported inside the functions so that
importing this module stays cheap.

Conventions:

- Empty input never raises: means and bounds are ``nan``, p-values ``None``, counts 0.
- Non-finite values (``nan``, ``inf``) are dropped before computing; for paired data the whole pair
  is dropped. ``n`` always reports how many values (or pairs) were actually used.
- Confidence intervals are percentile bootstrap intervals with a fixed ``seed``, so the same input
  gives the same interval on every run.
- ``paired_comparison`` uses the Wilcoxon signed-rank test (two-sided, scipy), with differences
  within ``tie_eps`` counted as ties and left out of the test (Wilcoxon's original zero handling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

NAN = float("nan")

__all__ = [
    "bootstrap_mean_ci",
    "bootstrap_diff_ci",
    "paired_comparison",
    "percentiles",
]


def _finite(values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(a) != len(b):
        raise ValueError(f"paired data needs equal lengths, got {len(a)} and {len(b)}")
    xa, xb = [], []
    for u, v in zip(a, b):
        if u is None or v is None:
            continue
        fu, fv = float(u), float(v)
        if math.isfinite(fu) and math.isfinite(fv):
            xa.append(fu)
            xb.append(fv)
    return xa, xb


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _interval(boot, alpha: float) -> tuple[float, float]:
    import numpy as np

    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Mean of ``values`` with a (1 - alpha) percentile-bootstrap confidence interval.

    Returns ``{"mean", "lo", "hi", "n"}``; a single value gives ``lo == hi == mean``.
    """
    _check(n_boot, alpha)
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return {"mean": NAN, "lo": NAN, "hi": NAN, "n": 0}
    import numpy as np

    arr = np.asarray(xs, dtype=float)
    mean = float(arr.mean())
    if n == 1 or float(arr.min()) == float(arr.max()):
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    lo, hi = _interval(arr[idx].mean(axis=1), alpha)
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Difference of means ``mean(a) - mean(b)`` with a percentile-bootstrap interval.

    ``paired=True``: ``a[i]`` and ``b[i]`` belong to the same sample (equal lengths required, a
    ``ValueError`` otherwise); pairs are resampled together and ``n`` is the number of pairs.
    ``paired=False``: the two groups are resampled independently; ``n`` is ``len(a) + len(b)``
    and ``n_a``/``n_b`` give the group sizes. Returns ``{"diff", "lo", "hi", "n", ...}``.
    """
    _check(n_boot, alpha)
    import numpy as np

    rng = np.random.default_rng(seed)
    if paired:
        xa, xb = _finite_pairs(a, b)
        n = len(xa)
        if n == 0:
            return {"diff": NAN, "lo": NAN, "hi": NAN, "n": 0}
        d = np.asarray(xa, dtype=float) - np.asarray(xb, dtype=float)
        diff = float(d.mean())
        if n == 1 or float(d.min()) == float(d.max()):
            return {"diff": diff, "lo": diff, "hi": diff, "n": n}
        idx = rng.integers(0, n, size=(n_boot, n))
        lo, hi = _interval(d[idx].mean(axis=1), alpha)
        return {"diff": diff, "lo": lo, "hi": hi, "n": n}

    xa, xb = _finite(a), _finite(b)
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        return {"diff": NAN, "lo": NAN, "hi": NAN, "n": na + nb, "n_a": na, "n_b": nb}
    arr_a, arr_b = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
    diff = float(arr_a.mean() - arr_b.mean())
    ma = arr_a[rng.integers(0, na, size=(n_boot, na))].mean(axis=1)
    mb = arr_b[rng.integers(0, nb, size=(n_boot, nb))].mean(axis=1)
    lo, hi = _interval(ma - mb, alpha)
    return {"diff": diff, "lo": lo, "hi": hi, "n": na + nb, "n_a": na, "n_b": nb}


def paired_comparison(a: Sequence[float], b: Sequence[float], *, tie_eps: float = 1e-9) -> dict:
    """Paired wins/ties/losses of ``a`` against ``b`` and a two-sided Wilcoxon signed-rank test.

    A win is ``a[i] - b[i] > tie_eps`` (a is better), a loss ``< -tie_eps``, anything else a tie.
    Ties are left out of the test; when every pair is a tie the p-value is 1.0, and with no pairs
    it is ``None``. Returns ``{"wins", "ties", "losses", "n", "p_value", "test"}``.
    """
    test = "wilcoxon_signed_rank"
    xa, xb = _finite_pairs(a, b)
    n = len(xa)
    diffs = [u - v for u, v in zip(xa, xb)]
    wins = sum(1 for d in diffs if d > tie_eps)
    losses = sum(1 for d in diffs if d < -tie_eps)
    ties = n - wins - losses
    result = {"wins": wins, "ties": ties, "losses": losses, "n": n, "p_value": None, "test": test}
    if n == 0:
        return result
    nonzero = [d for d in diffs if abs(d) > tie_eps]
    if not nonzero:
        result["p_value"] = 1.0
        return result
    from scipy.stats import wilcoxon

    res = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    result["p_value"] = min(1.0, p) if math.isfinite(p) else None
    return result


def _q_key(q: float) -> str:
    return f"p{int(q)}" if float(q).is_integer() else f"p{q:g}"


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> dict:
    """Percentiles of ``values`` (linear interpolation), keyed ``p50``, ``p95``, ... (``nan`` if empty)."""
    xs = _finite(values)
    if not xs:
        return {_q_key(q): NAN for q in qs}
    import numpy as np

    arr = np.asarray(xs, dtype=float)
    return {_q_key(q): float(np.percentile(arr, q)) for q in qs}
