"""The synthetic proof's bench runs end to end on a small community, and its figures obey
what holds by construction (the oracle's ranking maximises expected successes@k)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_synthetic():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_synthetic
        yield bench_synthetic
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def small_run(bench_synthetic, tmp_path_factory):
    from _community import community_store

    cache = tmp_path_factory.mktemp("bench_cache")
    original = bench_synthetic.truth_store
    bench_synthetic.truth_store = lambda n, m, seed, log=print: community_store(
        n, m, seed, cache_dir=cache, log=log, with_truth=True)
    try:
        return bench_synthetic.run_seed(5, 900, 450, ablation=True, bound=True, ceiling=True,
                                        log=lambda s: None)
    finally:
        bench_synthetic.truth_store = original


def test_figures_obey_the_oracle(small_run):
    t = small_run["truth"]
    oracle = t["oracle"]["expected_successes_at_k"]
    for name in ("engine", "random", "nearest", "most_experienced", "best_past_success_rate"):
        assert 0 < t[name]["expected_successes_at_k"] <= oracle + 1e-9, name
    assert t["engine_over_oracle"] == pytest.approx(
        t["engine"]["expected_successes_at_k"] / oracle)
    for name, m in small_run["ablation"].items():
        assert 0 < m["over_oracle"] <= 1 + 1e-9, name


def test_learning_ceiling(small_run):
    c = small_run["learning_ceiling"]
    n_train = small_run["training"]["training_rows"]
    assert c["candidates_a"] > 0 and c["candidates_b"] > 0
    for key in ("engine", "features_fitted_to_truth", "ranker_fitted_to_truth"):
        assert 0 < c[key] <= 1 + 1e-9, key
    sizes = [int(n) for n in c["ranker_on_sampled_labels"]]
    assert sizes == sorted({min(n_train * m, c["candidates_a"]) for m in (1, 4, 16)})
    assert all(0 < v <= 1 + 1e-9 for v in c["ranker_on_sampled_labels"].values())


def test_disjoint_halves(bench_synthetic):
    import polars as pl

    rows = pl.DataFrame({"mission_id": [f"M{i % 7}" for i in range(60)],
                         "candidate_id": [f"P{i % 11}" for i in range(60)]})
    a, b = bench_synthetic.disjoint_halves(rows)
    assert a.height and b.height
    assert not set(a["mission_id"]) & set(b["mission_id"])
    assert not set(a["candidate_id"]) & set(b["candidate_id"])
    assert a.height + b.height < rows.height  # the crossed quarters are left out


def test_information_reference_and_summary(bench_synthetic, small_run, capsys):
    b = small_run["information_bound"]
    assert b["rebuilt_truth_max_error"] <= 1e-3
    for key in ("bound", "bound_without_results", "bound_without_skill_info", "skill_known"):
        assert 0 < b[key] <= 1 + 1e-9, key
    s = bench_synthetic.summary([small_run])
    assert s["features_fitted_to_truth"] == [small_run["learning_ceiling"][
        "features_fitted_to_truth"]]
    bench_synthetic.print_seed(small_run, 10)
    bench_synthetic.print_summary(s)
    out = capsys.readouterr().out
    assert "learning ceiling" in out and "information reference, not an upper bound" in out
