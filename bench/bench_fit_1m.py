"""Benchmark: fit the default ranker on 1,000,000 precomputed feature rows.

The rows are generated, not built from a store: this measures the ranker's fit alone
(``matching.Ranker()`` with its default estimator and calibration), the step that retraining
on years of outcomes repeats. Every column of :data:`features.FEATURE_NAMES` is drawn from a
distribution of its documented range and unit (rates in [0, 1], counts, days, kilometres
with some unknown, 0/1 flags), seeded; the label is a Bernoulli draw from a logistic of a few of
them (need track record, lived-experience fit, proximity, distance, availability), about
15-20 % successes; ``assigned_at`` spans three years in row order, so that the Ranker's later
20 % calibrates.

Measured, in this process (run it alone, in a fresh process):

- wall and CPU time of the data generation, of ``Ranker.fit`` and of ``predict_proba`` over
  every row;
- peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after generation and
  after the fit; ``tracemalloc`` stays off (it would slow the fit and count only Python
  allocations, not those of numpy or OpenMP).

Target: under 3 minutes and 4 GB on the 2-core machine of ``docs/benchmarks.md``.

Usage::

    python bench/bench_fit_1m.py [--rows 1000000] [--seed 0] [--estimator hgb] [--threads N]
                                 [--json PATH]

The data are synthetic: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from features import FEATURE_NAMES  # noqa: E402
from matching import Ranker  # noqa: E402

__all__ = ["TARGET_GB", "TARGET_SECONDS", "feature_rows", "main", "run"]

TARGET_SECONDS = 180.0
TARGET_GB = 4.0
_START = datetime(2023, 1, 2, tzinfo=UTC)
_SPAN = timedelta(days=3 * 365)


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def feature_rows(n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` generated training rows: every feature, ``label`` and ``assigned_at``.

    Examples
    --------
    >>> rows = feature_rows(1000, seed=1)
    >>> rows.height, 0.05 < rows["label"].mean() < 0.4
    (1000, True)
    """
    rng = np.random.default_rng(seed)
    n_out = rng.poisson(2.0, n).astype(float)
    le_w = np.clip(1.0 - n_out / 5.0, 0.0, 1.0) ** 2
    rate = lambda a, b: rng.beta(a, b, n)  # noqa: E731
    dist = rng.gamma(2.0, 2.0, n)
    dist[rng.random(n) < 0.05] = np.nan  # an area without coordinates
    is_group = (rng.random(n) < 0.1).astype(float)
    team = np.where(is_group > 0, rng.integers(2, 7, n), 1).astype(float)
    cols = {
        "le_fit": le_w * rng.uniform(-1.0, 1.0, n) * (rng.random(n) < 0.4),
        "le_weight": le_w,
        "n_outcomes": n_out,
        "tr_rate": rate(3, 12),
        "tr_rate_need": rate(3, 12),
        "tr_rate_family": rate(3, 12),
        "tr_recent": rate(3, 12),
        "days_since_last": np.where(n_out > 0, rng.exponential(60.0, n), 3650.0),
        "skill_latent": rng.normal(0.0, 0.5, n),
        "proximity": rng.lognormal(0.0, 1.0, n),
        "proximity_le": rng.lognormal(-1.0, 1.0, n) * le_w,
        "ties_succeeded": rng.poisson(0.8, n).astype(float),
        "ties_succeeded_w": rng.gamma(0.8, 0.5, n),
        "ties_in_area": np.log1p(rng.gamma(1.0, 1.0, n)),
        "peers_rate": rate(4, 16),
        "distance_km": dist,
        "same_area": (rng.random(n) < 0.2).astype(float),
        "availability_ratio": rng.lognormal(0.5, 0.7, n),
        "load": rng.beta(1, 4, n),
        "tenure_days": rng.uniform(0.0, 1500.0, n),
        "text_fit": rate(1, 5),
        "is_group": is_group,
        "team_size": team,
        "team_fit": (rng.random(n) < 0.95).astype(float),
        "group_cohesion": is_group * rng.beta(2, 2, n),
        "group_reach": rng.poisson(15, n).astype(float),
    }
    missing = set(FEATURE_NAMES) - set(cols)
    if missing:  # a feature added to the registry since: give it noise rather than fail
        cols.update({name: rng.normal(size=n) for name in sorted(missing)})
    z = (-1.5 + 4.0 * (cols["tr_rate_need"] - 0.2) + 1.2 * cols["le_fit"]
         + 0.4 * np.log1p(cols["proximity"]) - 0.15 * np.nan_to_num(dist, nan=4.0)
         - 0.8 * np.clip(1.0 - cols["availability_ratio"], 0.0, 1.0))
    label = rng.random(n) < 1.0 / (1.0 + np.exp(-z))
    offsets = np.sort(rng.uniform(0.0, _SPAN.total_seconds(), n))
    assigned_at = (np.datetime64(_START.replace(tzinfo=None), "us")
                   + (offsets * 1e6).astype("timedelta64[us]"))
    return pl.DataFrame({**{name: cols[name] for name in FEATURE_NAMES}, "label": label,
                         "assigned_at": pl.Series(assigned_at).dt.replace_time_zone("UTC")})


def run(rows: int = 1_000_000, seed: int = 0, estimator: str | None = None,
        n_threads: int | None = None) -> dict:
    """Generate, fit and score; return the timings and peak memory."""
    # other work on the machine slows an OpenMP fit down a lot: record how busy it was
    out: dict = {"rows": rows, "seed": seed, "cpu_count": os.cpu_count(),
                 "rss_start_mb": _peak_rss_mb(), "load_average_1min_start": os.getloadavg()[0]}
    t, c = time.perf_counter(), time.process_time()
    data = feature_rows(rows, seed)
    out["generate_s"] = time.perf_counter() - t
    out["generate_cpu_s"] = time.process_time() - c
    out["frame_mb"] = data.estimated_size() / 2**20
    out["positives"] = int(data["label"].sum())
    out["peak_rss_after_generate_mb"] = _peak_rss_mb()

    kwargs = {"n_threads": n_threads} if n_threads is not None else {}
    if estimator is not None:
        kwargs["estimator"] = estimator
    ranker = Ranker(**kwargs)
    t, c = time.perf_counter(), time.process_time()
    ranker.fit(data, data["label"], times=data["assigned_at"])
    out["fit_s"] = time.perf_counter() - t
    out["fit_cpu_s"] = time.process_time() - c
    out["peak_rss_after_fit_mb"] = _peak_rss_mb()
    out["estimator"] = ranker.estimator
    out["n_threads"] = ranker.n_threads
    out["calibration"] = ranker.calibration_
    out["n_train"], out["n_calibration"] = ranker.n_train_, ranker.n_calibration_

    t = time.perf_counter()
    p = ranker.predict_proba(data)
    out["predict_s"] = time.perf_counter() - t
    out["mean_p"] = float(p.mean())
    out["peak_rss_mb"] = _peak_rss_mb()
    out["load_average_1min_end"] = os.getloadavg()[0]
    out["meets_target"] = bool(out["fit_s"] < TARGET_SECONDS
                               and out["peak_rss_mb"] < TARGET_GB * 1024)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default=None,
                        help="Ranker estimator (default: the Ranker's own default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="Ranker n_threads (default: the Ranker's default, every core)")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    r = run(args.rows, args.seed, args.estimator, args.threads)
    print(f"rows {r['rows']:,} ({r['positives']:,} successes), {len(FEATURE_NAMES)} features, "
          f"frame {r['frame_mb']:.0f} MB, {r['cpu_count']} cores, load average "
          f"{r['load_average_1min_start']:.1f} at start, {r['load_average_1min_end']:.1f} at end")
    print(f"generate        {r['generate_s']:7.1f} s wall  {r['generate_cpu_s']:7.1f} s CPU")
    print(f"Ranker.fit      {r['fit_s']:7.1f} s wall  {r['fit_cpu_s']:7.1f} s CPU   "
          f"(estimator {r['estimator']}, {r['n_train']:,} train + {r['n_calibration']:,} "
          f"calibration rows, {r['calibration']}, n_threads {r['n_threads']})")
    print(f"predict_proba   {r['predict_s']:7.1f} s wall  (every row)")
    print(f"peak RSS        {r['peak_rss_after_generate_mb']:7.0f} MB after generation, "
          f"{r['peak_rss_after_fit_mb']:.0f} MB after fit, {r['peak_rss_mb']:.0f} MB at the end")
    print(f"target: fit under {TARGET_SECONDS:.0f} s and peak under {TARGET_GB:.0f} GB: "
          f"{'met' if r['meets_target'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
