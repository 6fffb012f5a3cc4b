"""Smoke test of the real-data benchmark (bench/bench_stackexchange.py), reduced setting.

One engine estimator (logistic, the fastest to fit), the day-one prior, the two baselines and
one routing-trained variant, trained on the last 16 weeks before each split, 100 bootstrap
resamples: the whole protocol runs (validation stage, then test stage: bundle, store,
training rows, pool features, answers view, paired bootstrap) and the table is checked, not
the figures of the full run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import polars as pl
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
        for fig in (r, r["validation"]):
            assert 0.0 <= fig["ci_low"] <= fig["mrr_at_10"] <= fig["ci_high"] <= 1.0
            assert 0.0 <= fig["hit_at_10"] <= 1.0
            # MRR@10 never exceeds hit@10 (a hit at rank r counts 1/r <= 1)
            assert fig["mrr_at_10"] <= fig["hit_at_10"] + 1e-12
    # the reference has no difference with itself; every other row has one, in [-1, 1]
    assert rows["most_active"]["vs_most_active"] is None
    ref = rows["most_active"]
    for m in ("logistic", "prior", "random", "logistic_routing"):
        for fig, ref_fig in ((rows[m], ref), (rows[m]["validation"], ref["validation"])):
            d = fig["vs_most_active"]
            assert -1.0 <= d["ci_low"] <= d["diff"] <= d["ci_high"] <= 1.0
            assert 0.0 <= d["share_better"] <= 1.0
            assert d["diff"] == pytest.approx(fig["mrr_at_10"] - ref_fig["mrr_at_10"])


def test_the_estimator_is_selected_on_validation_and_compared_on_test(ran):
    _, _, result, _ = ran
    rows = {r["model"]: r for r in result["rows"]}
    # the only engine estimator run is the one selected; routing variants never are
    assert result["selected"] == "logistic"
    assert result["info"]["routing_selected"] == "logistic_routing"
    assert result["default"] == "hgb"  # matching.Ranker()'s, reported next to the selection
    assert rows["logistic"]["vs_selected"] is None
    for m in ("prior", "most_active", "random", "logistic_routing"):
        d = rows[m]["vs_selected"]
        assert d["diff"] == pytest.approx(rows[m]["mrr_at_10"] - rows["logistic"]["mrr_at_10"])
    # the answers view: probabilistic models only, probabilities and rates in [0, 1]
    for m in ("logistic", "prior", "logistic_routing"):
        for a in (rows[m]["answers"], rows[m]["validation"]["answers"]):
            assert 0.0 <= a["auc"] <= 1.0 and 0.0 <= a["brier"] <= 1.0
            assert 0.0 < a["mean_p"] < 1.0 and 0.0 < a["rate"] < 1.0 and a["n"] > 50
    assert rows["most_active"]["answers"] is None and rows["random"]["answers"] is None
    # routing rows predict "answered and was accepted" among the whole pool: far below the
    # acceptance rate of the answers, which the engine's own rows are calibrated to
    assert rows["logistic_routing"]["answers"]["mean_p"] < 0.5 * rows["logistic_routing"][
        "answers"]["rate"]


def test_protocol_counts(ran):
    _, _, result, _ = ran
    c, vc = result["counts"], result["info"]["validation_counts"]
    assert result["split_at"].startswith("2016-02-19T22:46:44")
    assert result["val_split_at"].startswith("2015-04-03T17:03:17")
    # closed test questions with an accepted answer; warm + cold start add up
    assert 0 < c["questions"] <= 60
    for counts in (c, vc):
        assert counts["warm"] + counts["cold_start"] == counts["questions"]
        assert counts["training_rows"] > 10
        assert 0 < counts["training_positives"] < counts["training_rows"]
        # every answer of the training weeks is a row: none is dropped for a new person
        assert counts["training_skipped_unknown_candidate"] == 0
        assert 0 <= counts["training_newcomer_rows"] < counts["training_rows"]
    assert c["pool"] == 393 and 0 < vc["pool"] < c["pool"]
    assert 0 < vc["questions"] < 119
    # routing rows: pre-split questions only, each with its whole pool of earlier answerers
    assert 0 < c["routing_questions"] < 472 < c["routing_rows"]
    assert result["info"]["train_weeks"] == TRAIN_WEEKS


def test_validation_questions_closed_before_the_test_split(tmp_path):
    bench = _load("bench_stackexchange")
    se = _load("stackexchange_bundle")
    dates = se.build_frames(DATA, fit_until=None)["missions"]["created_at"]
    split, val = se.split_date(dates), se.split_date(dates, bench.VAL_QUANTILE)
    frames, _ = bench._store(DATA, tmp_path, fit_until=val)
    qs = bench._eval_questions(frames, val, split)
    assert qs.height > 30
    assert ((qs["created_at"] >= val) & (qs["created_at"] < split)
            & (qs["ends_at"] < split)).all()
    accepted = frames.verified_outcomes().filter(pl.col("success")).join(
        qs.select("mission_id", "accepted_by"), on="mission_id")
    assert accepted.height == qs.height  # one accepted answer each, known before the split
    assert (accepted["measured_at"] < split).all()
    assert (accepted["person_id"] == accepted["accepted_by"]).all()
    # the validation bundle's tie weights and need types come from before its own split
    assert set(frames.vocabulary.filter(pl.col("kind") == "need_type")["value"]) != set(
        bench._store(DATA, tmp_path / "test", fit_until="split")[0].vocabulary.filter(
            pl.col("kind") == "need_type")["value"])


def test_random_baseline_is_near_chance_and_cold_start_scores_zero(ran):
    _, _, result, _ = ran
    rows = {r["model"]: r for r in result["rows"]}
    c = result["counts"]
    # a random ranking of ~400 people puts the answerer in the top 10 rarely
    assert rows["random"]["hit_at_10"] <= 0.1
    # cold-start questions count 0 for every model: the warm mean is the mean scaled up
    for r in rows.values():
        assert r["mrr_at_10_warm"] == pytest.approx(
            r["mrr_at_10"] * c["questions"] / c["warm"])


def test_printed_table(ran):
    _, _, result, text = ran
    lines = text.splitlines()
    assert lines[0].startswith("| model | validation MRR@10 | validation diff vs most_active")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [line.split(" | ")[0].lstrip("| ") for line in body] == [
        "logistic (selected)", *MODELS[1:]]
    logistic = next(r for r in result["rows"] if r["model"] == "logistic")
    assert body[0].startswith(f"| logistic (selected) | {logistic['validation']['mrr_at_10']:.3f}"
                              " | ")
    assert f"| {logistic['mrr_at_10']:.3f} [" in body[0]
    assert "selected on validation (engine estimators): logistic" in text
    assert "engine default (matching.Ranker().estimator = 'hgb') was not among the models " \
        "run" in text
    assert "best *_routing variant on validation (not an engine option): logistic_routing" \
        in text
    assert "time: total" in text
