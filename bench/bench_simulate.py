"""Benchmark of the synthetic community generator (``graph.simulate_bundle``).

Simulates a community (by default 20,000 persons x 2,000 missions), writes it as a bundle
in a temporary folder, and prints as JSON: the wall time of the simulation and of the
writing, the peak resident memory of the process, the row count of every file, and two
figures of the data: how dense the outcomes are (persons with any assignment, share of them
with 3+ outcomes) and the oracle's expected successes in the top 10 of the held-out
missions' eligible pools over random's.

Usage::

    python bench/bench_simulate.py
    python bench/bench_simulate.py --persons 100000 --missions 5000 --format parquet

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import tempfile
import time

import polars as pl

from graph import simulate_community, write_bundle
from graph._simulate import HELD_OUT_SHARE


def density(frames: dict[str, pl.DataFrame]) -> dict[str, float]:
    """Persons with any assignment (direct or through a group) and their outcome counts."""
    a, o, gm = frames["assignments"], frames["outcomes"], frames["group_members"]
    holds = pl.concat([
        a.filter(pl.col("person_id").is_not_null()).select("assignment_id", "person_id"),
        a.filter(pl.col("group_id").is_not_null()).drop("person_id")
        .join(gm.select("group_id", "person_id"), on="group_id")
        .select("assignment_id", "person_id"),
    ])
    per = (holds.join(o.select("assignment_id", "outcome_id"), on="assignment_id", how="left")
           .group_by("person_id").agg(pl.col("outcome_id").count().alias("outcomes")))
    return {
        "persons_with_an_assignment": per.height,
        "share_with_3_plus_outcomes": round(float((per["outcomes"] >= 3).mean()), 3),
        "median_outcomes": float(per["outcomes"].median()),
    }


def oracle_over_random(frames: dict[str, pl.DataFrame], k: int = 10) -> float:
    """Sum over held-out missions of the oracle's top-k expected successes, over random's."""
    m = frames["missions"]
    held_out = m.sort(["created_at", "mission_id"]).tail(math.ceil(HELD_OUT_SHARE * m.height))
    pools = (frames["truth"].filter(pl.col("mission_id").is_in(held_out["mission_id"].implode()))
             .group_by("mission_id").agg(
                 pl.col("p_success").sort(descending=True).head(k).sum().alias("oracle"),
                 (pl.col("p_success").mean() * pl.min_horizontal(pl.len(), k)).alias("random")))
    return round(float(pools["oracle"].sum() / pools["random"].sum()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--missions", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="csv", choices=["csv", "parquet"])
    args = parser.parse_args()

    t0 = time.perf_counter()
    frames = simulate_community(args.persons, args.missions, seed=args.seed)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        paths = write_bundle(frames, out, fmt=args.format)
        t2 = time.perf_counter()
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "persons": args.persons,
        "missions": args.missions,
        "seed": args.seed,
        "format": args.format,
        "simulate_s": round(t1 - t0, 2),
        "write_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "peak_rss_mb": round(peak_mb),
        "bundle_mb": round(size_mb, 1),
        "rows": {name: frame.height for name, frame in frames.items()},
        "density": density(frames),
        "oracle_over_random_top10": oracle_over_random(frames),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "polars": pl.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
