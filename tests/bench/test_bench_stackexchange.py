"""Smoke test of the real-data benchmark (bench/bench_stackexchange.py), reduced setting.

One engine estimator (logistic, the fastest to fit), the day-one prior, the two baselines and
one routing-trained variant, trained on the last 16 weeks before the split, 100 bootstrap
resamples: the whole protocol runs (bundle, store, training rows, pool features, paired
bootstrap) and the table is checked, not the figures of the full run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT.parent / "shared" / "data" / "stackexchange-beer"

pytestmark = pytest.mark.skipif(
    not (DATA / "Posts.xml").is_file(), reason=f"Stack Exchange dump absent from {DATA}"
)

MODELS = ("logistic", "prior", "most_active", "random", "logistic_routing")
# Train on the last weeks before the split only: every training week costs a snapshot.
TRAIN_WEEKS = 16


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROJECT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    bench = _load("bench_stackexchange")
    out = tmp_path_factory.mktemp("se_bench") / "result.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = bench.main(["--source", str(DATA), "--models", ",".join(MODELS),
                           "--n-boot", "100", "--train-weeks", str(TRAIN_WEEKS),
                           "--json", str(out)])
    return bench, code, json.loads(out.read_text()), printed.getvalue()


def test_table_has_one_row_per_model_with_mrr_in_unit_interval(ran):
    _, code, result, _ = ran
    assert code == 0
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == list(MODELS)
    for r in rows.values():
        assert 0.0 <= r["ci_low"] <= r["mrr_at_10"] <= r["ci_high"] <= 1.0
        assert 0.0 <= r["hit_at_10"] <= 1.0
        # MRR@10 never exceeds hit@10 (a hit at rank r counts 1/r <= 1)
        assert r["mrr_at_10"] <= r["hit_at_10"] + 1e-12
    # the reference has no difference with itself; every other row has one, in [-1, 1]
    assert rows["most_active"]["vs_most_active"] is None
    for m in ("logistic", "prior", "random", "logistic_routing"):
        d = rows[m]["vs_most_active"]
        assert -1.0 <= d["ci_low"] <= d["diff"] <= d["ci_high"] <= 1.0
        assert 0.0 <= d["share_better"] <= 1.0
        assert d["diff"] == pytest.approx(rows[m]["mrr_at_10"] - rows["most_active"]["mrr_at_10"])
    assert result["best"] in rows and result["winner"] == "logistic"
    assert result["info"]["routing_winner"] == "logistic_routing"


def test_protocol_counts(ran):
    _, _, result, _ = ran
    c = result["counts"]
    assert result["split_at"].startswith("2016-02-19T22:46:44")
    # closed test questions with an accepted answer; warm + cold start add up
    assert 0 < c["test_questions"] <= 60
    assert c["warm"] + c["cold_start"] == c["test_questions"]
    assert c["pool"] == 393
    assert c["training_rows"] > 10 and 0 < c["training_positives"] < c["training_rows"]
    assert c["training_skipped_first_week"] == 0  # 2014 is long before the last 16 weeks
    # routing rows: pre-split questions only, each with its whole pool of earlier answerers
    assert 0 < c["routing_questions"] < 472 < c["routing_rows"]
    assert result["info"]["train_weeks"] == TRAIN_WEEKS


def test_random_baseline_is_near_chance_and_cold_start_scores_zero(ran):
    _, _, result, _ = ran
    rows = {r["model"]: r for r in result["rows"]}
    c = result["counts"]
    # a random ranking of ~400 people puts the answerer in the top 10 rarely
    assert rows["random"]["hit_at_10"] <= 0.1
    # cold-start questions count 0 for every model: the warm mean is the mean scaled up
    for r in rows.values():
        assert r["mrr_at_10_warm"] == pytest.approx(
            r["mrr_at_10"] * c["test_questions"] / c["warm"])


def test_printed_table(ran):
    _, _, result, text = ran
    lines = text.splitlines()
    assert lines[0].startswith("| model | MRR@10 [95 % CI] | hit@10 |")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [line.split(" | ")[0].lstrip("| ") for line in body] == list(MODELS)
    logistic = next(r for r in result["rows"] if r["model"] == "logistic")
    assert body[0].startswith(f"| logistic | {logistic['mrr_at_10']:.3f} [")
    assert "best engine estimator: logistic" in text
    assert "best *_routing variant: logistic_routing" in text
    assert "time: total" in text
