"""Evaluation metrics: pure functions over numpy arrays and polars frames.

Used by ``crunch evaluate`` (which prints them as JSON) and by the notebooks.

Conventions
-----------
- A metric that is undefined on its input (AUC with a single class, NDCG of a query with no
  relevant candidate, the mean of nothing) is ``None``, never ``NaN``: ``json.dumps`` writes
  ``NaN`` as a token that is not valid JSON, and ``None`` cannot be mistaken for a value.
- Every number returned is a Python ``float`` or ``int``, so results serialise as they are.
- A *query* is one mission; its candidates are the rows that share ``query_col``.
- Randomness (bootstrap) takes an explicit ``seed``: the same call gives the same interval.
- Invalid input (NaN scores, probabilities outside [0, 1], labels other than 0/1, arrays
  of different lengths) raises ``ValueError`` rather than giving a quietly wrong figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import polars as pl

__all__ = [
    "BootstrapResult",
    "OffPolicyEstimate",
    "PairedBootstrapResult",
    "auc",
    "bootstrap_ci",
    "brier",
    "by_segment",
    "calibration_table",
    "crossfit_recalibration",
    "doubly_robust",
    "expected_calibration_error",
    "expected_successes_at_k",
    "expected_successes_per_query",
    "ips",
    "mrr_at_k",
    "ndcg_at_k",
    "paired_bootstrap",
    "ranking_metrics",
    "ranking_metrics_per_query",
    "recall_at_k",
    "snips",
]

# Bootstrap resamples are drawn in chunks so that memory stays bounded (about this many
# float64 cells per chunk) whatever the number of queries.
_BOOT_CHUNK_CELLS = 2_000_000


# --------------------------------------------------------------------------- input helpers


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, pl.Series):
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _as_float(x: Any, name: str, *, allow_missing: bool = False) -> np.ndarray:
    """1-D float array; ``None`` and polars nulls become NaN (rejected unless allowed)."""
    arr = _as_array(x, name)
    try:
        out = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric") from exc
    bad = ~np.isfinite(out) if not allow_missing else np.isinf(out)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} missing or infinite value(s)")
    return out


def _as_binary(y: Any, name: str = "y_true") -> np.ndarray:
    out = _as_float(y, name)
    if not np.isin(out, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only 0/1 (or False/True)")
    return out


def _as_probability(p: Any, name: str) -> np.ndarray:
    out = _as_float(p, name)
    if ((out < 0) | (out > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1]")
    return out


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays of different lengths: {lengths}")
    return next(iter(lengths.values()))


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


# ------------------------------------------------------------------ classification metrics


def auc(y_true: Any, y_score: Any) -> float | None:
    """Area under the ROC curve, with tied scores counted as half a correct ordering.

    Computed as the Mann-Whitney statistic on average ranks: the probability that a random
    positive scores above a random negative, ties counting 1/2.

    Parameters
    ----------
    y_true : array-like of 0/1 or bool
        Labels.
    y_score : array-like of float
        Scores, higher meaning more likely positive. Only their order matters.

    Returns
    -------
    float or None
        ``None`` when the AUC is undefined: empty input, or only one class present.

    Examples
    --------
    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1], [0.5, 0.5])
    0.5
    >>> auc([1, 1], [0.2, 0.9]) is None
    True
    """
    y = _as_binary(y_true)
    s = _as_float(y_score, "y_score")
    _same_length(y_true=y, y_score=s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # average ranks (1-based): a tie group ending at position c with n members gets c - (n-1)/2
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def brier(y_true: Any, p: Any) -> float | None:
    """Brier score: mean squared difference between predicted probability and outcome.

    Lower is better; 0.25 is what a constant 0.5 gets on any data.

    Returns
    -------
    float or None
        ``None`` on empty input.

    Examples
    --------
    >>> round(brier([1, 0], [0.8, 0.3]), 6)
    0.065
    """
    y = _as_binary(y_true)
    q = _as_probability(p, "p")
    if _same_length(y_true=y, p=q) == 0:
        return None
    return float(np.mean((q - y) ** 2))


def _bin_edges(q: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        # i / n is the double nearest to the decimal edge, so p = 0.3 falls in [0.3, 0.4)
        return np.arange(n_bins + 1) / n_bins
    if strategy == "quantile":
        # tied predictions give repeated edges; merging them leaves fewer, non-empty bins
        return np.unique(np.quantile(q, np.linspace(0.0, 1.0, n_bins + 1)))
    raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")


def calibration_table(
    y_true: Any,
    p: Any,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> list[dict[str, Any]]:
    """Reliability table: predicted probability against observed rate, per bin.

    Parameters
    ----------
    y_true : array-like of 0/1
        Outcomes.
    p : array-like of float in [0, 1]
        Predicted probabilities.
    n_bins : int, default 10
        Number of bins asked for.
    strategy : {"quantile", "uniform"}, default "quantile"
        ``"uniform"``: equal-width bins on [0, 1]. ``"quantile"``: edges at the quantiles of
        ``p``, so bins hold about the same number of rows; repeated edges (many tied
        predictions) are merged, which can leave fewer than ``n_bins`` bins.

    Returns
    -------
    list of dict
        One dict per non-empty bin, in increasing order, with ``bin`` (index of the bin
        among the edges), ``lower`` and ``upper`` (edges; bins are ``[lower, upper)``, the
        last one closed), ``count``, ``mean_predicted`` and ``observed_rate``. Empty bins
        are left out. Empty input gives ``[]``.

    Examples
    --------
    >>> for row in calibration_table([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.9], 2, "uniform"):
    ...     print(row["bin"], row["count"], round(row["mean_predicted"], 3),
    ...           row["observed_rate"])
    0 2 0.15 0.5
    1 2 0.8 0.5
    """
    y = _as_binary(y_true)
    q = _as_probability(p, "p")
    if _same_length(y_true=y, p=q) == 0:
        return []
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = _bin_edges(q, int(n_bins), strategy)
    n_edge_bins = max(1, len(edges) - 1)
    which = np.searchsorted(edges[1:-1], q, side="right")
    count = np.bincount(which, minlength=n_edge_bins)
    sum_p = np.bincount(which, weights=q, minlength=n_edge_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_edge_bins)
    rows = []
    for b in np.flatnonzero(count):
        rows.append({
            "bin": int(b),
            "lower": float(edges[b]),
            "upper": float(edges[min(b + 1, len(edges) - 1)]),
            "count": int(count[b]),
            "mean_predicted": float(sum_p[b] / count[b]),
            "observed_rate": float(sum_y[b] / count[b]),
        })
    return rows


def expected_calibration_error(
    y_true: Any,
    p: Any,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> float | None:
    """Expected calibration error over the bins of :func:`calibration_table`.

    ``sum over bins of count / n * |observed_rate - mean_predicted|``. Its value depends on
    the binning: report ``n_bins`` and ``strategy`` next to it.

    Returns
    -------
    float or None
        ``None`` on empty input.

    Examples
    --------
    >>> round(expected_calibration_error([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.9], 2, "uniform"), 6)
    0.325
    """
    table = calibration_table(y_true, p, n_bins=n_bins, strategy=strategy)
    n = sum(row["count"] for row in table)
    if n == 0:
        return None
    return float(sum(row["count"] / n * abs(row["observed_rate"] - row["mean_predicted"])
                     for row in table))


# ----------------------------------------------------------------- ranking metrics (a list)


def _gains(relevance: Any) -> np.ndarray:
    g = _as_float(relevance, "relevance")
    if (g < 0).any():
        raise ValueError("relevance must be non-negative")
    return g


def _dcg(gains: np.ndarray) -> float:
    return float(gains @ (1.0 / np.log2(np.arange(2, len(gains) + 2))))


def ndcg_at_k(relevance: Any, k: int) -> float | None:
    """Normalised discounted cumulative gain of one query's ranking, cut at ``k``.

    ``DCG@k = sum_{i=1..k} gain_i / log2(i + 1)`` with *linear* gains (the relevance itself,
    not ``2**rel - 1``), so that with true success probabilities as gains DCG is a
    position-discounted count of expected successes. ``NDCG@k = DCG@k / IDCG@k`` where the
    ideal DCG sorts the gains of **all** the candidates given, not only the top ``k``: pass
    every candidate of the query, in the order ranked, or the ideal is understated.

    Parameters
    ----------
    relevance : array-like of float >= 0
        Gains of all of the query's candidates, in ranked order (best first). Binary
        labels or graded gains (e.g. true ``p_success``).
    k : int
        Cut-off; larger than the list means the whole list.

    Returns
    -------
    float or None
        In [0, 1]; ``None`` when no candidate has a positive gain (empty list, all zeros).

    Examples
    --------
    >>> round(ndcg_at_k([0, 1, 0, 1], k=2), 4)   # (1/log2 3) / (1 + 1/log2 3)
    0.3869
    >>> round(ndcg_at_k([0.1, 0.2, 0.9], k=1), 4)  # the ideal top-1 is 0.9
    0.1111
    >>> ndcg_at_k([0, 0, 0], k=2) is None
    True
    """
    g = _gains(relevance)
    k = _check_k(k)
    if not (g > 0).any():
        return None
    ideal = np.sort(g)[::-1][:k]
    return min(1.0, _dcg(g[:k]) / _dcg(ideal))


def recall_at_k(relevance: Any, k: int) -> float | None:
    """Share of a query's relevant candidates (relevance > 0) that are in the top ``k``.

    The denominator is every relevant candidate of the query, so recall@k can stay below 1
    when there are more relevant candidates than ``k``. Meant for binary labels: with
    graded gains every positive gain counts as relevant.

    Returns
    -------
    float or None
        ``None`` when the query has no relevant candidate.

    Examples
    --------
    >>> recall_at_k([0, 1, 0, 1], k=2)
    0.5
    >>> recall_at_k([0, 1, 0, 1], k=10)
    1.0
    """
    rel = _gains(relevance) > 0
    k = _check_k(k)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return None
    return float(rel[:k].sum() / n_rel)


def mrr_at_k(relevance: Any, k: int) -> float | None:
    """Reciprocal rank of the first relevant candidate (relevance > 0) within the top ``k``.

    Returns
    -------
    float or None
        ``1 / rank`` of the first relevant candidate; ``0.0`` when the query has relevant
        candidates but none in the top ``k``; ``None`` when it has none at all (undefined,
        like NDCG and recall, so that averages run over the same queries).

    Examples
    --------
    >>> round(mrr_at_k([0, 0, 1], k=3), 4)
    0.3333
    >>> mrr_at_k([0, 0, 1], k=2)
    0.0
    >>> mrr_at_k([0, 0], k=2) is None
    True
    """
    rel = _gains(relevance) > 0
    k = _check_k(k)
    if not rel.any():
        return None
    hits = np.flatnonzero(rel[:k])
    return float(1.0 / (hits[0] + 1)) if len(hits) else 0.0


# -------------------------------------------------------------- ranking metrics (a frame)


def _ranked(
    frame: pl.DataFrame | pl.LazyFrame,
    query_col: str,
    score_col: str,
    value_col: str,
    id_col: str | None,
    value_name: str,
) -> pl.DataFrame:
    """The needed columns, validated, sorted best first per query, with a 1-based ``_rank``."""
    cols = list(dict.fromkeys([query_col, score_col, value_col]
                              + ([id_col] if id_col is not None else [])))
    df = frame.lazy().select(cols).collect()
    for col in cols:
        if df[col].null_count():
            raise ValueError(f"column {col!r} has {df[col].null_count()} null value(s)")
    for col, name in ((score_col, "score"), (value_col, value_name)):
        if not df[col].dtype.is_numeric():
            raise ValueError(f"{name} column {col!r} must be numeric, got {df[col].dtype}")
        if df[col].dtype.is_float() and not df[col].is_finite().all():
            raise ValueError(f"{name} column {col!r} has NaN or infinite values")
    if (df[value_col] < 0).any():
        raise ValueError(f"{value_name} column {value_col!r} must be non-negative")
    by, descending = [query_col, score_col], [False, True]
    if id_col is not None:
        by.append(id_col)
        descending.append(False)
    # maintain_order: without an id column, ties keep the frame's row order
    return df.sort(by, descending=descending, maintain_order=True).with_columns(
        _rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(query_col)
    )


def _discount(rank: pl.Expr) -> pl.Expr:
    return 1.0 / (rank.cast(pl.Float64) + 1.0).log(2)


def ranking_metrics_per_query(
    frame: pl.DataFrame | pl.LazyFrame,
    query_col: str,
    score_col: str,
    label_col: str,
    k: int,
    *,
    id_col: str | None = None,
) -> pl.DataFrame:
    """NDCG@k, recall@k and MRR@k of every query, ranking its rows by score.

    Same definitions as :func:`ndcg_at_k`, :func:`recall_at_k` and :func:`mrr_at_k` (the
    ideal NDCG ordering uses every row of the query). Use it to compare two models query by
    query with :func:`paired_bootstrap`.

    Parameters
    ----------
    frame : polars DataFrame or LazyFrame
        One row per (query, candidate).
    query_col, score_col, label_col : str
        Query id, the model's score (higher is better) and the relevance: 0/1 labels or
        non-negative graded gains (e.g. true ``p_success``).
    k : int
        Cut-off.
    id_col : str, optional
        Candidate id breaking score ties (ascending). Without it ties keep the frame's row
        order, which is deterministic only if the frame's order is.

    Returns
    -------
    polars.DataFrame
        One row per query, sorted by query: ``query_col``, ``n_candidates``, ``n_relevant``,
        ``ndcg_at_k``, ``recall_at_k``, ``mrr_at_k`` (all three null when ``n_relevant``
        is 0).

    Examples
    --------
    >>> frame = pl.DataFrame({"mission": [1, 1, 1, 2, 2], "score": [0.9, 0.5, 0.1, 0.3, 0.7],
    ...                       "label": [0, 1, 0, 0, 0]})
    >>> ranking_metrics_per_query(frame, "mission", "score", "label", k=2)["mrr_at_k"].to_list()
    [0.5, None]
    """
    k = _check_k(k)
    df = _ranked(frame, query_col, score_col, label_col, id_col, "label")
    label = pl.col(label_col).cast(pl.Float64)
    relevant = pl.col(label_col) > 0
    in_k = pl.col("_rank") <= k
    n_rel = pl.col("n_relevant")
    out = (
        df.lazy()
        .with_columns(
            # ordinal: tied gains get distinct ideal ranks, which leaves the ideal DCG unchanged
            _irank=pl.col(label_col).rank("ordinal", descending=True).over(query_col)
        )
        .group_by(query_col)
        .agg(
            n_candidates=pl.len(),
            n_relevant=relevant.sum(),
            _dcg=(label * _discount(pl.col("_rank"))).filter(in_k).sum(),
            _idcg=(label * _discount(pl.col("_irank"))).filter(pl.col("_irank") <= k).sum(),
            _hits=(relevant & in_k).sum(),
            _first=pl.col("_rank").filter(relevant & in_k).min(),
        )
        .with_columns(
            ndcg_at_k=pl.when(n_rel > 0).then(
                pl.min_horizontal(pl.col("_dcg") / pl.col("_idcg"), pl.lit(1.0))),
            recall_at_k=pl.when(n_rel > 0).then(pl.col("_hits") / n_rel),
            mrr_at_k=pl.when(n_rel > 0).then(
                pl.when(pl.col("_first").is_not_null())
                .then(1.0 / pl.col("_first").cast(pl.Float64))
                .otherwise(0.0)),
        )
        .select(query_col, pl.col("n_candidates").cast(pl.Int64),
                pl.col("n_relevant").cast(pl.Int64), "ndcg_at_k", "recall_at_k", "mrr_at_k")
        .sort(query_col)
    )
    return out.collect()


def _mean_or_none(s: pl.Series) -> float | None:
    return None if s.len() == 0 else float(s.mean())


def ranking_metrics(
    frame: pl.DataFrame | pl.LazyFrame,
    query_col: str,
    score_col: str,
    label_col: str,
    k: int,
    *,
    id_col: str | None = None,
) -> dict[str, Any]:
    """Mean NDCG@k, recall@k and MRR@k over the queries with at least one relevant row.

    Queries without any relevant row (every label 0) have no defined NDCG or recall; they
    are left out of every mean and counted in ``n_queries_without_relevant``. Each query
    weighs the same, whatever its number of candidates. See
    :func:`ranking_metrics_per_query` for the parameters.

    Returns
    -------
    dict
        ``k``, ``ndcg_at_k``, ``recall_at_k``, ``mrr_at_k`` (``None`` when no query is
        used), ``n_queries``, ``n_queries_used``, ``n_queries_without_relevant``, ``n_rows``.

    Examples
    --------
    >>> frame = pl.DataFrame({"mission": [1, 1, 2, 2, 3], "score": [0.9, 0.2, 0.3, 0.7, 0.5],
    ...                       "label": [1, 0, 1, 0, 0]})
    >>> m = ranking_metrics(frame, "mission", "score", "label", k=1)
    >>> m["mrr_at_k"], m["n_queries_used"], m["n_queries_without_relevant"]
    (0.5, 2, 1)
    """
    per = ranking_metrics_per_query(frame, query_col, score_col, label_col, k, id_col=id_col)
    used = per.filter(pl.col("n_relevant") > 0)
    return {
        "k": int(k),
        "ndcg_at_k": _mean_or_none(used["ndcg_at_k"]),
        "recall_at_k": _mean_or_none(used["recall_at_k"]),
        "mrr_at_k": _mean_or_none(used["mrr_at_k"]),
        "n_queries": per.height,
        "n_queries_used": used.height,
        "n_queries_without_relevant": per.height - used.height,
        "n_rows": int(per["n_candidates"].sum()) if per.height else 0,
    }


def expected_successes_per_query(
    frame: pl.DataFrame | pl.LazyFrame,
    query_col: str,
    score_col: str,
    p_col: str,
    k: int,
    *,
    id_col: str | None = None,
) -> pl.DataFrame:
    """Sum of the true success probabilities of each query's top ``k`` rows by score.

    Parameters
    ----------
    frame : polars DataFrame or LazyFrame
        Every eligible candidate of each query (e.g. the simulator's ``truth`` rows joined
        with the model's scores).
    query_col, score_col, p_col : str
        Query id, score (higher is better) and true ``p_success`` in [0, 1].
    k : int
        How many candidates a query takes.
    id_col : str, optional
        Candidate id breaking score ties (ascending); pass it, since baselines such as
        "most experienced" tie often. Without it ties keep the frame's row order.

    Returns
    -------
    polars.DataFrame
        ``query_col``, ``n_candidates``, ``expected_successes``, sorted by query.
    """
    k = _check_k(k)
    df = _ranked(frame, query_col, score_col, p_col, id_col, "p")
    if (df[p_col] > 1).any():
        raise ValueError(f"p column {p_col!r} must lie in [0, 1]")
    return (
        df.lazy()
        .group_by(query_col)
        .agg(n_candidates=pl.len().cast(pl.Int64),
             expected_successes=pl.col(p_col).cast(pl.Float64)
             .filter(pl.col("_rank") <= k).sum())
        .sort(query_col)
        .collect()
    )


def expected_successes_at_k(
    frame: pl.DataFrame | pl.LazyFrame,
    query_col: str,
    score_col: str,
    p_col: str,
    k: int,
    *,
    id_col: str | None = None,
) -> float | None:
    """Mean over queries of the expected number of successes among the top ``k`` by score.

    The oracle's value is this function with ``score_col=p_col``. See
    :func:`expected_successes_per_query` for the parameters.

    Returns
    -------
    float or None
        ``None`` for an empty frame.

    Examples
    --------
    >>> truth = pl.DataFrame({"mission": [1, 1, 1, 2, 2], "person": ["a", "b", "c", "a", "b"],
    ...                       "score": [0.5, 0.5, 0.1, 0.2, 0.9],
    ...                       "p_success": [0.2, 0.6, 0.9, 0.4, 0.1]})
    >>> round(expected_successes_at_k(truth, "mission", "score", "p_success", k=1,
    ...                               id_col="person"), 6)   # (0.2 + 0.1) / 2
    0.15
    """
    per = expected_successes_per_query(frame, query_col, score_col, p_col, k, id_col=id_col)
    return _mean_or_none(per["expected_successes"])


# ------------------------------------------------------------------------------ bootstrap


def _resampled_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of ``n_boot`` resamples (with replacement) of the rows of ``x`` (n, m)."""
    n, m = x.shape
    out = np.empty((n_boot, m))
    chunk = max(1, _BOOT_CHUNK_CELLS // max(1, n * m))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _percentile_interval(stats: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return None, None
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check_n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic and its percentile bootstrap interval (see :func:`bootstrap_ci`)."""

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    alpha: float
    n: int
    n_boot: int
    n_boot_used: int  # resamples whose statistic was defined (finite)
    seed: int
    method: str = "percentile"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for ``json.dumps``."""
        return asdict(self)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def bootstrap_ci(
    values: Any,
    statistic: Callable[[Any], float | None] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile bootstrap confidence interval of a statistic over independent units.

    Parameters
    ----------
    values : array-like or polars.DataFrame
        The units resampled with replacement: a 1-D array of per-unit values (e.g. NDCG
        per query), a 2-D array (rows are units) or a polars DataFrame (rows are units).
        Resample whole queries, not rows, when rows of one query are dependent.
    statistic : callable, optional
        Maps a resample (same type as ``values``) to a number, or ``None`` when undefined
        (such resamples are dropped and counted out of ``n_boot_used``). Default: the
        mean of a 1-D array, computed vectorised.
    n_boot : int, default 1000
        Number of resamples.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``: the same call gives the same interval.
    alpha : float, default 0.05
        The interval covers ``1 - alpha``.

    Returns
    -------
    BootstrapResult
        ``estimate`` is the statistic on ``values`` itself; ``ci_low``/``ci_high`` are
        ``None`` with fewer than 2 units.

    Examples
    --------
    >>> r = bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0], n_boot=200, seed=1)
    >>> r.estimate, r.ci_low <= r.estimate <= r.ci_high
    (0.6, True)
    """
    n_boot = _check_n_boot(n_boot)
    alpha = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    if isinstance(values, pl.DataFrame):
        data: Any = values
        n = values.height
    else:
        data = values.to_numpy() if isinstance(values, pl.Series) else np.asarray(values)
        n = len(data)
    if statistic is None:
        data = _as_float(data, "values")
        est = _float_or_none(data.mean()) if n else None
        stats = _resampled_means(data[:, None], n_boot, rng)[:, 0] if n >= 2 else None
    else:
        est = _float_or_none(statistic(data)) if n else None
        stats = None
        if n >= 2:
            stats = np.array([_float_or_none(statistic(data[rng.integers(0, n, size=n)]))
                              for _ in range(n_boot)], dtype=float)
    if stats is None:
        return BootstrapResult(est, None, None, alpha, n, n_boot, 0, seed)
    low, high = _percentile_interval(stats, alpha)
    return BootstrapResult(est, low, high, alpha, n, n_boot, int(np.isfinite(stats).sum()),
                           seed)


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Difference of two models' mean per-query metric (see :func:`paired_bootstrap`)."""

    mean_a: float | None
    mean_b: float | None
    mean_diff: float | None  # mean_a - mean_b
    ci_low: float | None
    ci_high: float | None
    share_a_better: float | None  # share of resamples where mean a > mean b, ties half
    alpha: float
    n: int  # pairs used
    n_left_out: int  # pairs where either value is missing
    n_boot: int
    seed: int
    method: str = "percentile"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for ``json.dumps``."""
        return asdict(self)


def paired_bootstrap(
    a: Any,
    b: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedBootstrapResult:
    """Compare two models on the same queries by resampling queries, keeping pairs together.

    Parameters
    ----------
    a, b : array-like of float
        Per-query metric of model A and model B, aligned (``a[i]`` and ``b[i]`` are the same
        query). Pairs where either is missing (``None``/NaN, e.g. NDCG of a query without a
        relevant candidate) are left out and counted in ``n_left_out``.
    n_boot, seed, alpha
        As in :func:`bootstrap_ci`.

    Returns
    -------
    PairedBootstrapResult
        ``mean_diff`` (A minus B), its percentile interval, and ``share_a_better``, the share
        of resamples in which A's mean is above B's, a tie counting one half (near 1: A is
        better; near 0.5: no evidence either way, e.g. 0.5 for identical models).

    Examples
    --------
    >>> r = paired_bootstrap([0.9, 0.8, 0.7, None], [0.5, 0.6, 0.7, 0.2], n_boot=200)
    >>> round(r.mean_diff, 6), r.n, r.n_left_out, r.share_a_better > 0.9
    (0.2, 3, 1, True)
    """
    n_boot = _check_n_boot(n_boot)
    alpha = _check_alpha(alpha)
    xa = _as_float(a, "a", allow_missing=True)
    xb = _as_float(b, "b", allow_missing=True)
    _same_length(a=xa, b=xb)
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    n = len(xa)
    n_left_out = int((~keep).sum())
    if n == 0:
        return PairedBootstrapResult(None, None, None, None, None, None, alpha, 0, n_left_out,
                                     n_boot, seed)
    diff = xa - xb
    mean_a, mean_b, mean_diff = float(xa.mean()), float(xb.mean()), float(diff.mean())
    if n < 2:
        return PairedBootstrapResult(mean_a, mean_b, mean_diff, None, None, None, alpha, n,
                                     n_left_out, n_boot, seed)
    boot = _resampled_means(diff[:, None], n_boot, np.random.default_rng(seed))[:, 0]
    low, high = _percentile_interval(boot, alpha)
    share = float((boot > 0).mean() + 0.5 * (boot == 0).mean())
    return PairedBootstrapResult(mean_a, mean_b, mean_diff, low, high, share, alpha, n,
                                 n_left_out, n_boot, seed)


# -------------------------------------------------------------- off-policy estimation


@dataclass(frozen=True)
class OffPolicyEstimate:
    """An off-policy estimate of a new policy's value, with what it was computed from.

    ``estimate`` is the expected number of successes per query under the new policy (its
    success rate when ``p_new`` is a choice probability; see :func:`ips`).
    """

    estimator: str  # "ips" | "snips" | "dr"
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str  # "normal" (delta method) | "bootstrap" (percentile) | "bootstrap-t"
    alpha: float
    n_used: int  # logged rows used
    n_left_out: int  # logged rows without a propensity
    n_queries: int  # queries averaged over, n_queries_unlogged included
    n_queries_unlogged: int  # served queries without a usable logged row
    n_clipped: int  # rows whose weight was clipped to max_weight
    max_weight: float | None
    effective_sample_size: float | None  # (sum w)^2 / sum w^2 over rows used
    n_boot: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for ``json.dumps``."""
        return asdict(self)


@dataclass
class _Logged:
    keep: np.ndarray  # rows used
    codes: np.ndarray  # query index of each used row, 0..n_logged_queries-1
    n_logged_queries: int
    r: np.ndarray
    w: np.ndarray
    n_clipped: int
    n_left_out: int


def _query_codes(query: Any, n: int) -> np.ndarray:
    """An index 0..n_queries-1 per row; without ``query`` every row is its own query."""
    if query is None:
        return np.arange(n)
    q = _as_array(query, "query")
    if len(q) != n:
        raise ValueError(f"query has length {len(q)}, expected {n}")
    missing = np.isnan(q).any() if q.dtype.kind == "f" else (
        q.dtype == object and any(v is None for v in q))
    if missing:
        raise ValueError("query has missing values")
    return np.unique(q, return_inverse=True)[1].reshape(-1)


def _logged(r: Any, p_log: Any, p_new: Any, query: Any, max_weight: float | None) -> _Logged:
    rr = _as_float(r, "r")
    pl_ = _as_float(p_log, "p_log", allow_missing=True)
    pn = _as_probability(p_new, "p_new")
    n = _same_length(r=rr, p_log=pl_, p_new=pn)
    codes_all = _query_codes(query, n)
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"max_weight must be positive, got {max_weight!r}")
    keep = ~np.isnan(pl_)
    if ((pl_[keep] <= 0) | (pl_[keep] > 1)).any():
        raise ValueError("p_log must lie in (0, 1]: a logged row had a chance to be logged")
    w = pn[keep] / pl_[keep]
    n_clipped = 0
    if max_weight is not None:
        n_clipped = int((w > max_weight).sum())
        w = np.minimum(w, max_weight)
    uniq, codes = np.unique(codes_all[keep], return_inverse=True)
    return _Logged(keep, codes.reshape(-1), len(uniq), rr[keep], w, n_clipped,
                   int((~keep).sum()))


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _per_query(lg: _Logged, values: np.ndarray) -> np.ndarray:
    return np.bincount(lg.codes, weights=values, minlength=lg.n_logged_queries)


def _per_query_constant(lg: _Logged, values: np.ndarray, name: str) -> np.ndarray:
    """The value of each query for a per-row input that must be constant within a query."""
    _, first_row = np.unique(lg.codes, return_index=True)
    first = values[first_row]
    if not np.allclose(values, first[lg.codes], rtol=1e-9, atol=1e-12):
        raise ValueError(f"{name} must be the same on every row of a query")
    return first


def _delta_se(z_means: np.ndarray, second: np.ndarray, grad: Callable[[np.ndarray], np.ndarray],
              n: int) -> np.ndarray:
    """Delta-method standard errors from means of ``z`` (b, m) and of ``z_i z_j`` (b, m, m)."""
    cov = (second - z_means[:, :, None] * z_means[:, None, :]) * (n / (n - 1))
    d = np.stack([grad(row) for row in z_means])  # (b, m)
    return np.sqrt(np.maximum(0.0, np.einsum("bi,bij,bj->b", d, cov, d)) / n)


def _bootstrap_t(z: np.ndarray, g: Callable[[np.ndarray], np.ndarray],
                 grad: Callable[[np.ndarray], np.ndarray], est: float, alpha: float,
                 n_boot: int, seed: int) -> tuple[float | None, float | None]:
    """Studentised (bootstrap-t) interval over queries: resample the t statistic, not the mean.

    With heavy-tailed importance weights a large weight is rare, so a sample's mean and its
    standard error are high or low together; the t statistic's distribution is then skewed
    and the normal interval misses on one side. Resampling ``(mean* - mean) / se*`` keeps
    that dependence (Efron & Tibshirani 1993, ch. 12; accurate to second order).
    """
    n, m = z.shape
    pairs = (z[:, :, None] * z[:, None, :]).reshape(n, m * m)
    boot = _resampled_means(np.hstack([z, pairs]), n_boot, np.random.default_rng(seed))
    means, second = boot[:, :m], boot[:, m:].reshape(-1, m, m)
    se_star = _delta_se(means, second, grad, n)
    full = z.mean(axis=0)
    se = float(_delta_se(full[None, :], (pairs.mean(axis=0)).reshape(1, m, m), grad, n)[0])
    t = (np.asarray(g(means), dtype=float) - est) / se_star
    t = t[np.isfinite(t)]
    if len(t) == 0 or not np.isfinite(se):
        return None, None
    t_low, t_high = np.quantile(t, [alpha / 2, 1 - alpha / 2])
    return float(est - t_high * se), float(est - t_low * se)


def _finish(
    estimator: str,
    lg: _Logged,
    z: np.ndarray,
    g: Callable[[np.ndarray], np.ndarray],
    grad: Callable[[np.ndarray], np.ndarray],
    *,
    n_unlogged: int,
    max_weight: float | None,
    ci: str,
    alpha: float,
    n_boot: int,
    seed: int,
) -> OffPolicyEstimate:
    """Estimate ``g(mean of z over queries)`` with its interval; ``z`` is (n_queries, m)."""
    alpha = _check_alpha(alpha)
    if ci not in ("normal", "bootstrap", "bootstrap-t"):
        raise ValueError(f"ci must be 'normal', 'bootstrap' or 'bootstrap-t', got {ci!r}")
    boot_fields = ({"n_boot": _check_n_boot(n_boot), "seed": seed}
                   if ci in ("bootstrap", "bootstrap-t") else {})
    w = lg.w
    ess = float(w.sum() ** 2 / (w**2).sum()) if len(w) and (w**2).sum() > 0 else None
    est = low = high = None
    n_q = z.shape[0]
    if n_q:
        with np.errstate(divide="ignore", invalid="ignore"):
            means = z.mean(axis=0)
            est = _float_or_none(g(means))
            if est is not None and n_q >= 2:
                if ci == "normal":
                    d = grad(means)
                    cov = np.atleast_2d(np.cov(z, rowvar=False, ddof=1))
                    se = float(np.sqrt(max(0.0, d @ cov @ d) / n_q))
                    half = NormalDist().inv_cdf(1 - alpha / 2) * se
                    low, high = est - half, est + half
                elif ci == "bootstrap":
                    boot = g(_resampled_means(z, n_boot, np.random.default_rng(seed)))
                    low, high = _percentile_interval(np.asarray(boot, dtype=float), alpha)
                else:
                    low, high = _bootstrap_t(z, g, grad, est, alpha, n_boot, seed)
    return OffPolicyEstimate(
        estimator=estimator, estimate=est, ci_low=low, ci_high=high, ci_method=ci,
        alpha=alpha, n_used=int(lg.keep.sum()), n_left_out=lg.n_left_out, n_queries=n_q,
        n_queries_unlogged=n_unlogged, n_clipped=lg.n_clipped,
        max_weight=None if max_weight is None else float(max_weight),
        effective_sample_size=ess, **boot_fields,
    )


def _with_unlogged(z: np.ndarray, unlogged: np.ndarray) -> np.ndarray:
    """Append the per-query terms of served queries that have no usable logged row."""
    return np.vstack([z, unlogged]) if len(unlogged) else z


def ips(
    r: Any,
    p_log: Any,
    p_new: Any,
    *,
    query: Any = None,
    n_queries_unlogged: int = 0,
    max_weight: float | None = None,
    ci: Literal["normal", "bootstrap", "bootstrap-t"] = "normal",
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> OffPolicyEstimate:
    """Inverse propensity scoring estimate of a new policy's value from logged rows.

    Each logged row is a (query, candidate) that the logging policy chose with probability
    ``p_log`` (its propensity: probability of being chosen or included in the served list),
    with reward ``r``, and that the new policy would choose with probability ``p_new``.
    The value estimated is

    ``V = mean over queries of sum over candidates a of p_new(a) * E[r | a]``

    and the estimate is ``(1 / n_queries) * sum over logged rows of w * r`` with
    ``w = p_new / p_log``. It is unbiased when ``p_log`` is the true probability of each
    row being logged and is positive wherever ``p_new`` is. If ``p_new`` is a *choice*
    probability (summing to 1 over a query's candidates) ``V`` is the new policy's success
    rate; if it is a top-k *inclusion* probability (summing to k), ``V`` is its expected
    number of successes in the top k (divide by k for a rate per pick).

    ``n_queries`` counts every query the logging policy served, **including those in which
    it logged no row** (e.g. a mission where nobody was assigned): they add nothing to the
    sum but count in the mean. Pass their number as ``n_queries_unlogged``, or the estimate
    is too high.

    Parameters
    ----------
    r : array-like of float
        Reward of each logged row, usually 0/1 (success).
    p_log : array-like of float in (0, 1] or missing
        Logged propensity. Rows where it is missing (``None``/NaN: history from before the
        engine, picks made by hand) are left out and counted in ``n_left_out``; the rows of
        the same query that have one are still used, so leave out whole queries yourself
        if their other rows are not a fair sample. A query none of whose rows has a
        propensity was not served by the logging policy and is not counted.
    p_new : array-like of float in [0, 1]
        The new policy's probability of choosing each logged row's candidate.
    query : array-like, optional
        Query (mission) of each row. Without it every row is its own query (one logged
        choice per query). Intervals average or resample over queries, since rows of one
        query are not independent.
    n_queries_unlogged : int, default 0
        Number of served queries with no usable logged row (see above).
    max_weight : float, optional
        Clip every weight to at most this value. Lowers variance at the cost of a downward
        bias for non-negative rewards (the clipped mass is lost); ``n_clipped`` counts the
        rows affected.
    ci : {"normal", "bootstrap", "bootstrap-t"}, default "normal"
        Interval: normal approximation over per-query terms (delta method for SNIPS), a
        percentile bootstrap resampling queries with ``numpy.random.default_rng(seed)``, or
        a studentised bootstrap (bootstrap-t) over queries, which holds its coverage better
        when a few large weights dominate (small effective sample size).
    alpha : float, default 0.05
        The interval covers ``1 - alpha``.
    n_boot, seed : int
        Used only by the bootstrap interval (and then reported in the result).

    Returns
    -------
    OffPolicyEstimate
        ``estimate`` is ``None`` when no query is counted; the interval is ``None`` with
        fewer than two queries.

    Examples
    --------
    >>> est = ips(r=[1, 0, 1, 1], p_log=[0.5, 0.25, 0.8, None], p_new=[1.0, 0.5, 0.2, 0.3])
    >>> est.estimate, est.n_used, est.n_left_out   # (2 + 0 + 0.25) / 3
    (0.75, 3, 1)
    """
    lg = _logged(r, p_log, p_new, query, max_weight)
    n_unlogged = _check_count(n_queries_unlogged, "n_queries_unlogged")
    z = _with_unlogged(_per_query(lg, lg.w * lg.r)[:, None], np.zeros((n_unlogged, 1)))
    return _finish("ips", lg, z, lambda m: m[..., 0], lambda m: np.ones(1),
                   n_unlogged=n_unlogged, max_weight=max_weight, ci=ci, alpha=alpha,
                   n_boot=n_boot, seed=seed)


def snips(
    r: Any,
    p_log: Any,
    p_new: Any,
    *,
    query: Any = None,
    slate_size: float = 1.0,
    n_queries_unlogged: int = 0,
    max_weight: float | None = None,
    ci: Literal["normal", "bootstrap", "bootstrap-t"] = "normal",
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> OffPolicyEstimate:
    """Self-normalised IPS: IPS with the number of queries replaced by the sum of weights.

    ``estimate = slate_size * sum(w * r) / sum(w)``. Because the expected sum of a query's
    logged weights is the sum of ``p_new`` over all its candidates, dividing by the
    observed sum of weights instead of counting queries removes much of IPS's variance, at
    the cost of a small bias that vanishes as queries grow in number. Estimates the same
    value as :func:`ips` (see there for the other parameters); the point estimate does not
    depend on ``n_queries_unlogged``, the interval does (slightly).

    Parameters
    ----------
    slate_size : float, default 1.0
        Mean over all served queries of the sum of ``p_new`` over **all** of a query's
        candidates: 1 when ``p_new`` is a choice probability, k when it is a top-k
        inclusion probability (less when queries have fewer than k eligible candidates).

    Examples
    --------
    >>> est = snips(r=[1, 0, 1], p_log=[0.5, 0.25, 0.8], p_new=[1.0, 0.5, 0.2])
    >>> round(est.estimate, 4)   # 2.25 / 4.25
    0.5294
    """
    lg = _logged(r, p_log, p_new, query, max_weight)
    n_unlogged = _check_count(n_queries_unlogged, "n_queries_unlogged")
    size = float(slate_size)
    if not (np.isfinite(size) and size > 0):
        raise ValueError(f"slate_size must be a positive number, got {slate_size!r}")
    z = _with_unlogged(np.column_stack([_per_query(lg, lg.w * lg.r), _per_query(lg, lg.w)]),
                       np.zeros((n_unlogged, 2)))

    def g(m: np.ndarray) -> np.ndarray:
        return size * m[..., 0] / m[..., 1]

    def grad(m: np.ndarray) -> np.ndarray:
        a, b = m
        return np.array([size / b, -size * a / b**2])

    return _finish("snips", lg, z, g, grad, n_unlogged=n_unlogged, max_weight=max_weight,
                   ci=ci, alpha=alpha, n_boot=n_boot, seed=seed)


def doubly_robust(
    r: Any,
    p_log: Any,
    p_new: Any,
    reward_model_logged: Any,
    reward_model_new_expected: Any,
    *,
    query: Any = None,
    unlogged_direct_method: Any = (),
    max_weight: float | None = None,
    ci: Literal["normal", "bootstrap", "bootstrap-t"] = "normal",
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> OffPolicyEstimate:
    """Doubly robust estimate: a reward model's prediction, corrected by IPS on its errors.

    For each served query ``x`` (with logged rows ``S_x`` and candidates ``C_x``)::

        DR_x = sum_{a in C_x} p_new(a) * rhat(a)              # direct method, NEW policy
             + sum_{a in S_x} w(a) * (r(a) - rhat(a))          # IPS on the model's errors

    and ``estimate = mean over queries of DR_x``. It is unbiased if either the propensities
    or the reward model are right, and has lower variance than :func:`ips` when the reward
    model is good (the correction then only carries the model's small errors, plus the
    outcome noise no estimator removes). Estimates the same value as :func:`ips` (see
    there for the other parameters).

    Parameters
    ----------
    reward_model_logged : array-like of float
        The reward model's prediction ``rhat`` for each logged row.
    reward_model_new_expected : array-like of float
        The direct-method term of each row's query: the sum over **all** the candidates
        the new policy might choose of ``p_new * rhat``. One value per logged row, the same
        on every row of a query.
    unlogged_direct_method : array-like of float, default ()
        The direct-method terms of the served queries with no usable logged row (a
        mission where nobody was assigned), one per query: they have no IPS correction
        but count in the mean.
    Examples
    --------
    >>> est = doubly_robust(r=[1, 0, 1], p_log=[0.5, 0.25, 0.8], p_new=[1.0, 0.5, 0.2],
    ...                     reward_model_logged=[0.5, 0.5, 0.5],
    ...                     reward_model_new_expected=[0.6, 0.6, 0.6])
    >>> round(est.estimate, 6)   # ((0.6 + 2*0.5) + (0.6 - 2*0.5) + (0.6 + 0.25*0.5)) / 3
    0.641667
    """
    lg = _logged(r, p_log, p_new, query, max_weight)
    rhat = _as_float(reward_model_logged, "reward_model_logged")
    dm = _as_float(reward_model_new_expected, "reward_model_new_expected")
    _same_length(r=lg.keep, reward_model_logged=rhat, reward_model_new_expected=dm)
    dm_unlogged = _as_float(np.asarray(unlogged_direct_method, dtype=float).reshape(-1),
                            "unlogged_direct_method")
    dm_q = _per_query_constant(lg, dm[lg.keep], "reward_model_new_expected")
    z = _with_unlogged((dm_q + _per_query(lg, lg.w * (lg.r - rhat[lg.keep])))[:, None],
                       dm_unlogged[:, None])
    return _finish("dr", lg, z, lambda m: m[..., 0], lambda m: np.ones(1),
                   n_unlogged=len(dm_unlogged), max_weight=max_weight, ci=ci, alpha=alpha,
                   n_boot=n_boot, seed=seed)


def _fit_platt(y: np.ndarray, x: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Coefficients ``(a, b)`` of ``P(y = 1) = sigmoid(a + b x)`` by Newton's method."""
    design = np.column_stack([np.ones_like(x), x])
    beta = np.array([0.0, 1.0])
    for _ in range(50):
        p = _sigmoid(design @ beta)
        grad = design.T @ (y - p) - ridge * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q))


def crossfit_recalibration(
    y: Any,
    p: Any,
    group: Any,
    p_apply: Any,
    group_apply: Any,
    *,
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted logistic (Platt) recalibration of a reward model, for doubly robust.

    Groups (queries) are split at random into ``n_folds`` folds; for each fold a logistic
    map ``sigmoid(a + b logit(p))`` is fitted on the outcomes ``y`` of the **other** folds'
    rows and applied to this fold's rows, in both ``p`` (rows with an outcome) and
    ``p_apply`` (rows to predict, e.g. every candidate the new policy may choose). A
    reward model fitted on earlier data can be off on the evaluated period (its base rate
    drifts); the doubly robust estimate is then only as good as the propensities that
    correct it. Cross-fitting keeps each query's correction term independent of the map
    applied to it, so the estimator's variance formula still holds.

    Parameters
    ----------
    y : array-like of {0, 1}
        Outcome of each row with one.
    p : array-like of float in [0, 1]
        The model's probability for those rows.
    group : array-like
        Query of each row of ``y``.
    p_apply, group_apply : array-like
        Probabilities to recalibrate and their queries (a query may lack outcome rows).
    n_folds : int, default 5
        Folds; queries in no fold's training data get the map fitted on all rows.
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` assigning queries to folds.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Recalibrated ``p`` and ``p_apply``.

    Examples
    --------
    >>> y = [1, 0, 0, 0] * 10
    >>> p = [0.5] * 40
    >>> fitted, applied = crossfit_recalibration(y, p, list(range(40)), [0.5], [0])
    >>> bool(0.2 < applied[0] < 0.3)
    True
    """
    yy = _as_binary(y, "y")
    pp = _as_probability(p, "p")
    gg = _as_array(group, "group")
    _same_length(y=yy, p=pp, group=gg)
    pa = _as_probability(p_apply, "p_apply")
    ga = _as_array(group_apply, "group_apply")
    _same_length(p_apply=pa, group_apply=ga)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    uniq, inv = np.unique(np.concatenate([gg.astype(object), ga.astype(object)]).astype(str),
                          return_inverse=True)
    fold = np.random.default_rng(seed).integers(0, n_folds, size=len(uniq))[inv]
    f_fit, f_app = fold[: len(gg)], fold[len(gg):]
    x, xa = _logit(pp), _logit(pa)
    out, out_a = pp.copy(), pa.copy()
    for f in range(n_folds):
        train = f_fit != f
        if train.sum() < 2 or len(np.unique(yy[train])) < 2:
            continue  # no outcomes to fit a map on: keep the model's probabilities
        a, b = _fit_platt(yy[train].astype(float), x[train])
        out[~train] = _sigmoid(a + b * x[~train])
        sel = f_app == f
        out_a[sel] = _sigmoid(a + b * xa[sel])
    return out, out_a


# ------------------------------------------------------------------------------ segments


def by_segment(
    frame: pl.DataFrame | pl.LazyFrame,
    segment_col: str,
    metric_fn: Callable[[pl.DataFrame], Any],
    min_count: int = 10,
    *,
    person_col: str = "person_id",
) -> list[dict[str, Any]]:
    """A metric per segment, suppressing segments about fewer than ``min_count`` people.

    A figure about a handful of people in a small segment (an area, a lived-experience
    tag) can tell who they are and how they did. Segments with fewer than ``min_count``
    distinct people in ``person_col`` are therefore reported with ``"suppressed": True``
    and ``None`` for the value *and* the counts (a small count discloses too), and
    ``metric_fn`` is not called on them. Only primary suppression is done: do not publish
    totals from which a suppressed cell could be derived by subtraction.

    Parameters
    ----------
    frame : polars DataFrame or LazyFrame
        Rows to split. For a multi-valued segment (e.g. ``;``-joined tags), split and
        explode it first: a person then counts in each of their segments.
    segment_col : str
        Column whose values define the segments; nulls form their own segment.
    metric_fn : callable
        Maps the rows of one segment (a DataFrame) to a JSON-ready value, e.g.
        ``lambda f: auc(f["label"], f["score"])`` or a :func:`ranking_metrics` dict.
    min_count : int, default 10
        Smallest number of distinct people a reported segment may be about.
    person_col : str, default "person_id"
        Column identifying people; nulls are not counted.

    Returns
    -------
    list of dict
        One dict per segment (sorted, null last): ``segment``, ``suppressed``,
        ``n_people``, ``n_rows``, ``value``.

    Examples
    --------
    >>> frame = pl.DataFrame({"area": ["n"] * 3 + ["s"] * 12,
    ...                       "person_id": list(range(15)), "label": [1, 0, 0] + [1] * 12})
    >>> for row in by_segment(frame, "area", lambda f: f["label"].mean(), min_count=10):
    ...     print(row)
    {'segment': 'n', 'suppressed': True, 'n_people': None, 'n_rows': None, 'value': None}
    {'segment': 's', 'suppressed': False, 'n_people': 12, 'n_rows': 12, 'value': 1.0}
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int | np.integer) \
            or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    df = frame.lazy().collect()
    for col in (segment_col, person_col):
        if col not in df.columns:
            raise ValueError(f"column {col!r} not in frame")
    rows = []
    for (segment,), part in df.group_by(segment_col):
        n_people = part[person_col].drop_nulls().n_unique()
        if n_people < min_count:
            rows.append({"segment": segment, "suppressed": True, "n_people": None,
                         "n_rows": None, "value": None})
        else:
            rows.append({"segment": segment, "suppressed": False, "n_people": int(n_people),
                         "n_rows": part.height, "value": metric_fn(part)})
    rows.sort(key=lambda row: (row["segment"] is None, _sort_key(row["segment"])))
    return rows


def _sort_key(value: Any) -> Any:
    return () if value is None else value
