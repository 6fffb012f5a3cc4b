"""The Ranker model class and the day-one PriorRanker, on synthetic feature frames."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import numpy as np
import polars as pl
import pytest
from scipy.special import expit
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from features import FEATURE_NAMES
from graph import PayRule
from matching._ranker import (
    MIN_PLATT_SLOPE,
    TRUSTED_SKOPS_TYPES,
    BaseRanker,
    PriorRanker,
    Ranker,
    _SigmoidCalibrator,
    load_ranker,
    payout_at_target,
)

try:
    import lightgbm  # noqa: F401

    HAS_LGBM = True
except ImportError:
    HAS_LGBM = False

needs_lgbm = pytest.mark.skipif(not HAS_LGBM, reason="lightgbm is not installed")
ESTIMATORS = ["hgb", "logistic",
              pytest.param("lightgbm", marks=needs_lgbm),
              pytest.param("lgbm_rank", marks=needs_lgbm)]
# few trees: these tests check the plumbing; test_auc_held_out uses the defaults
FAST = {"hgb": {"max_iter": 30}, "logistic": {}, "lightgbm": {"n_estimators": 30},
        "lgbm_rank": {"n_estimators": 30}}
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
PER_MISSION = 10  # candidates per mission: the query groups of lgbm_rank


def synthetic(n: int, seed: int = 0, shift: float = 0.0) -> tuple[pl.DataFrame, np.ndarray,
                                                                   list[dt.datetime]]:
    """Feature rows whose success depends on le_fit, text_fit, proximity and load.

    ``shift`` moves every row's log-odds (a change of base rate over time).
    """
    rng = np.random.default_rng(seed)
    cols = {name: rng.random(n) for name in FEATURE_NAMES}
    cols["le_fit"] = rng.uniform(-1.0, 1.0, n)
    cols["proximity"] = rng.exponential(1.0, n)
    cols["distance_km"] = rng.exponential(3.0, n)
    cols["distance_km"][rng.random(n) < 0.1] = np.nan  # unknown distances
    z = (-1.0 + 2.0 * cols["le_fit"] + 1.5 * cols["text_fit"]
         + 0.8 * np.log1p(cols["proximity"]) - 1.2 * cols["load"] + shift)
    y = (rng.random(n) < expit(z)).astype(int)
    X = pl.DataFrame({"kind": ["person"] * n, "candidate_id": [f"c{seed}-{i}" for i in range(n)],
                      **cols})
    times = [T0 + dt.timedelta(hours=i) for i in range(n)]
    return X, y, times


def make(estimator: str = "hgb", **kw) -> Ranker:
    # one thread: the suite runs beside others on 2 cores, where OpenMP contention costs 10x
    return Ranker(estimator=estimator, estimator_params=FAST[estimator], n_threads=1, **kw)


def fit(r: Ranker, X, y, times=None, **kw) -> Ranker:
    return r.fit(X, y, times=times, groups=np.arange(len(y)) // PER_MISSION, **kw)


@pytest.fixture(scope="module")
def data():
    return synthetic(1500, seed=1)


@pytest.fixture(scope="module")
def held_out():
    X, y, _ = synthetic(1500, seed=2)
    return X, y


# ------------------------------------------------------------------------ the contract


def test_not_fitted_before_fit(data, tmp_path):
    X, _, _ = data
    r = Ranker()
    with pytest.raises(NotFittedError):
        r.predict_proba(X)
    with pytest.raises(NotFittedError):
        r.score_candidates(X)
    with pytest.raises(NotFittedError):
        r.save(tmp_path / "r")
    assert not (tmp_path / "r" / "ranker.json").exists()


def test_fit_returns_self_and_sets_fitted_attributes(data):
    X, y, times = data
    r = make("hgb")
    assert fit(r, X, y, times) is r
    assert r.feature_names_ == FEATURE_NAMES
    assert r.n_calibration_ == 300 and r.n_train_ == 1200  # distinct times: exactly 20 %
    assert r.split_ == "time" and r.calibration_ == "isotonic"
    assert r.train_until_ == times[1199] and r.calibration_from_ == times[1200]
    assert list(r.classes_) == [0, 1]
    assert isinstance(r.base_, HistGradientBoostingClassifier)
    assert r.name == "ranker-hgb" and r.version.startswith("ranker-hgb-")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_probabilities_are_1d_in_unit_interval(estimator, data, held_out):
    X, y, times = data
    r = fit(make(estimator), X, y, times)
    p = r.predict_proba(held_out[0])
    assert p.shape == (len(held_out[1]),) and p.dtype == np.float64
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert np.array_equal(r.predict(held_out[0]), p)
    assert r.predict_proba(held_out[0].head(0)).shape == (0,)


def test_pandas_frames_give_the_same_probabilities(data, held_out):
    X, y, times = data
    r = fit(make("hgb"), X.to_pandas(), y, times)
    p = r.predict_proba(held_out[0])
    assert np.array_equal(r.predict_proba(held_out[0].to_pandas()), p)
    assert np.array_equal(fit(make("hgb"), X, y, times).predict_proba(held_out[0]), p)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_auc_held_out(estimator, data, held_out):
    X, y, times = data
    params = {} if estimator != "hgb" else None  # hgb with its defaults (200 trees)
    r = fit(Ranker(estimator=estimator, estimator_params=params, n_threads=1), X, y, times)
    auc = roc_auc_score(held_out[1], r.predict_proba(held_out[0]))
    # the true log-odds give 0.82 on this data (measured); a random ranking 0.5
    assert auc > 0.72, auc


# ------------------------------------------------------------------------- calibration


def test_base_model_never_sees_the_calibration_slice(data):
    X, y, times = data
    perm = np.random.default_rng(5).permutation(len(y))
    shuffled = [times[i] for i in perm]  # the latest rows are spread through the frame
    r = make("hgb").fit(X, y, times=shuffled)
    early = np.argsort(perm)[:r.n_train_]  # rows by time: the earliest 80 %
    M = X.select(FEATURE_NAMES).to_numpy()
    with threadpool_limits(1):
        alone = HistGradientBoostingClassifier(**r.base_.get_params()).fit(M[early], y[early])
        # and not the same as a model that saw every row
        everything = HistGradientBoostingClassifier(**r.base_.get_params()).fit(M, y)
    assert np.array_equal(alone.decision_function(M), r.base_.decision_function(M))
    assert not np.array_equal(everything.decision_function(M), r.base_.decision_function(M))


def test_without_times_the_last_rows_calibrate(data):
    X, y, _ = data
    r = make("hgb").fit(X, y)
    assert r.split_ == "row_order" and r.train_until_ is None
    M = X.select(FEATURE_NAMES).to_numpy()
    with threadpool_limits(1):
        alone = HistGradientBoostingClassifier(**r.base_.get_params()).fit(
            M[:r.n_train_], y[:r.n_train_])
    assert np.array_equal(alone.decision_function(M), r.base_.decision_function(M))


@pytest.mark.parametrize("calibration", ["isotonic", "sigmoid"])
def test_calibration_tracks_the_later_slice(calibration):
    # the base rate rises over time: probabilities must follow the later rows, not the
    # training rows
    X_old, y_old, _ = synthetic(1600, seed=3, shift=-1.0)
    X_new, y_new, _ = synthetic(400, seed=4, shift=1.0)
    X, y = pl.concat([X_old, X_new]), np.concatenate([y_old, y_new])
    times = [T0 + dt.timedelta(hours=i) for i in range(len(y))]
    r = make("hgb", calibration=calibration).fit(X, y, times=times)
    assert r.n_calibration_ == 400 and r.calibration_ == calibration
    X_test, y_test, _ = synthetic(4000, seed=6, shift=1.0)
    calibrated = r.predict_proba(X_test).mean()
    uncalibrated = expit(r.predict_uncalibrated(X_test)).mean()
    assert y_old.mean() < 0.3 and y_test.mean() > 0.5  # the shift is real
    assert abs(calibrated - y_test.mean()) < 0.05, (calibrated, y_test.mean())
    assert abs(uncalibrated - y_test.mean()) > 0.15  # the training rows alone are off


def test_small_calibration_slice_falls_back_to_sigmoid():
    X, y, times = synthetic(300, seed=7)
    r = make("hgb", calibration="isotonic").fit(X, y, times=times)  # 60 calibration rows
    assert r.calibration_ == "sigmoid"
    p = r.predict_proba(X)
    assert (p > 0).all() and (p < 1).all()


def test_platt_calibration_neither_inverts_nor_erases_a_ranking():
    rng = np.random.default_rng(11)
    s = rng.normal(size=120)
    # a calibration slice where higher base scores succeeded less often: the unbounded fit
    # would invert the ranking, a slope of 0 would make every candidate equal
    y = (rng.random(120) < expit(-1.5 * s)).astype(np.int64)
    cal = _SigmoidCalibrator.fit(s, y, None)
    assert cal.a == pytest.approx(MIN_PLATT_SLOPE)
    p = cal.predict(np.sort(s))
    assert (np.diff(p) > 0).all()  # still in the model's order, never tied
    assert p.max() - p.min() < 1e-4  # all but the slice's base rate
    assert abs(p.mean() - y.mean()) < 0.02
    # where the slice agrees with the model, the slope is fitted as usual
    y_up = (rng.random(120) < expit(1.5 * s)).astype(np.int64)
    assert _SigmoidCalibrator.fit(s, y_up, None).a > 0.5


def test_rows_at_one_time_stay_on_one_side():
    X, y, _ = synthetic(1000, seed=8)
    days = [T0 + dt.timedelta(days=i // 30) for i in range(1000)]  # 30 rows a day
    r = make("hgb").fit(X, y, times=days)
    assert r.calibration_from_ > r.train_until_
    assert r.n_train_ % 30 == 0 and r.n_calibration_ >= 200


@pytest.mark.parametrize("kind", ["numpy_seconds", "pandas", "epoch_numbers", "naive"])
def test_times_in_other_forms_split_alike(kind, data):
    X, y, times = data
    X, y, times = X.head(400), y[:400], times[:400]
    converted = {
        "numpy_seconds": np.array([t.replace(tzinfo=None) for t in times],
                                  dtype="datetime64[s]"),
        "pandas": pl.Series(times).to_pandas(),
        "epoch_numbers": [t.timestamp() for t in times],
        "naive": [t.replace(tzinfo=None) for t in times],
    }[kind]
    perm = np.random.default_rng(0).permutation(400)
    a = make("logistic").fit(X[perm], y[perm], times=[times[i] for i in perm])
    if isinstance(converted, np.ndarray):
        reordered = converted[perm]
    elif hasattr(converted, "iloc"):
        reordered = converted.iloc[perm]
    else:
        reordered = [converted[i] for i in perm]
    b = make("logistic").fit(X[perm], y[perm], times=reordered)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    if kind != "epoch_numbers":
        assert b.train_until_ == a.train_until_


# ------------------------------------------------------------------ degenerate inputs


def test_single_class_is_refused(data):
    X, _, times = data
    with pytest.raises(ValueError, match="only failures"):
        make("hgb").fit(X, np.zeros(len(times), dtype=int), times=times)


def test_training_slice_with_one_class_is_refused():
    X, _, times = synthetic(500, seed=9)
    y = np.r_[np.zeros(400, dtype=int), np.ones(100, dtype=int)]  # successes only lately
    with pytest.raises(ValueError, match="training slice"):
        make("hgb").fit(X, y, times=times)


def test_unsplittable_times_and_bad_labels_are_refused(data):
    X, y, times = data
    with pytest.raises(ValueError, match="cannot split"):
        make("hgb").fit(X, y, times=[T0] * len(y))
    with pytest.raises(ValueError, match="binary"):
        make("hgb").fit(X, y * 2, times=times)
    with pytest.raises(ValueError, match="one time per row"):
        make("hgb").fit(X, y, times=times[:-1])
    with pytest.raises(ValueError, match="calibration_share"):
        Ranker(calibration_share=1.0).fit(X, y, times=times)
    with pytest.raises(ValueError, match="estimator must be"):
        Ranker(estimator="forest").fit(X, y)


@needs_lgbm
def test_lambdarank_needs_groups(data):
    X, y, times = data
    with pytest.raises(ValueError, match="groups"):
        make("lgbm_rank").fit(X, y, times=times)


@pytest.mark.parametrize("ranker", [make("hgb"), PriorRanker()], ids=["ranker", "prior"])
def test_missing_feature_column_is_named(ranker, data):
    X, y, times = data
    if isinstance(ranker, Ranker):
        fitted = fit(clone(ranker), X, y, times)
        with pytest.raises(ValueError, match="le_fit"):
            clone(ranker).fit(X.drop("le_fit"), y, times=times)
    else:
        fitted = ranker
    with pytest.raises(ValueError, match=r"\['le_fit', 'availability_ratio'\]"):
        fitted.predict_proba(X.drop("le_fit", "availability_ratio"))
    with pytest.raises(ValueError, match="le_fit"):
        fitted.predict_proba(X.drop("le_fit").to_pandas())


# -------------------------------------------------------------------- saving and loading


def _assert_pickle_free(folder):
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib", ".cloudpickle"))]
    for p in folder.iterdir():
        if p.suffix == ".skops":
            with zipfile.ZipFile(p) as z:
                for member in z.namelist():
                    if member.endswith(".npy"):  # arrays load without pickle, or this raises
                        np.load(io.BytesIO(z.read(member)), allow_pickle=False)
    return names


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_save_load_round_trip(estimator, data, held_out, tmp_path):
    X, y, times = data
    r = fit(make(estimator, calibration="sigmoid" if estimator == "logistic" else "isotonic"),
            X, y, times)
    r.save(tmp_path / "model")
    names = _assert_pickle_free(tmp_path / "model")
    base_file = "base.lgbm.txt" if estimator.startswith("l") and estimator != "logistic" \
        else "base.skops"
    assert names == sorted(["ranker.json", base_file])

    loaded = Ranker.load(tmp_path / "model")
    assert type(loaded) is Ranker and loaded.get_params() == r.get_params()
    assert np.array_equal(loaded.predict_proba(held_out[0]), r.predict_proba(held_out[0]))
    for attr in ("feature_names_", "n_train_", "n_calibration_", "train_until_",
                 "calibration_from_", "calibration_", "split_", "version"):
        assert getattr(loaded, attr) == getattr(r, attr), attr
    assert list(loaded.classes_) == [0, 1]
    ids, scores = loaded.score_candidates(held_out[0])
    assert np.array_equal(scores, np.sort(r.predict_proba(held_out[0]))[::-1])
    assert np.array_equal(ids, r.score_candidates(held_out[0])[0])


def test_score_candidates_orders_calibration_ties_by_the_base_score(data, held_out):
    X, y, times = data
    r = fit(make("hgb", calibration="isotonic"), X, y, times)
    ids, scores = r.score_candidates(held_out[0])
    assert len(np.unique(scores)) < len(scores)  # the isotonic staircase has plateaus
    base = dict(zip(held_out[0]["candidate_id"], r.predict_uncalibrated(held_out[0]),
                    strict=True))
    ranked_base = np.array([base[i] for i in ids])
    for level in np.unique(scores):
        within = ranked_base[scores == level]
        assert (np.diff(within) <= 0).all()


def test_prior_round_trip_and_any_ranker_loads(data, tmp_path):
    X, _, _ = data
    custom = PriorRanker(weights={"le_fit": 2.0}, base_rate=0.1)
    custom.save(tmp_path / "prior")
    assert _assert_pickle_free(tmp_path / "prior") == ["ranker.json"]
    loaded = load_ranker(tmp_path / "prior")
    assert isinstance(loaded, PriorRanker) and loaded.get_params() == custom.get_params()
    assert np.array_equal(loaded.predict_proba(X), custom.predict_proba(X))
    assert loaded.version == custom.version != PriorRanker().version
    with pytest.raises(ValueError, match="is not a Ranker"):
        Ranker.load(tmp_path / "prior")


class _Smuggled:
    """A type no allow-list names."""

    def __init__(self):
        self.payload = "anything"


def test_load_refuses_untrusted_types_and_other_feature_sets(data, tmp_path):
    import skops.io as sio

    X, y, times = data
    r = fit(make("hgb"), X, y, times)
    r.save(tmp_path / "m")
    sio.dump(_Smuggled(), tmp_path / "m" / "base.skops")
    with pytest.raises(ValueError, match="_Smuggled"):
        Ranker.load(tmp_path / "m")

    r.save(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "ranker.json").read_text())
    doc["feature_set_version"] = "fs-0"
    (tmp_path / "old" / "ranker.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="feature set"):
        load_ranker(tmp_path / "old")
    old = load_ranker(tmp_path / "old", check_feature_set=False)
    assert np.array_equal(old.predict_proba(X), r.predict_proba(X))

    with pytest.raises(ValueError, match="not a saved ranker"):
        load_ranker(tmp_path / "nothing")
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in \
        TRUSTED_SKOPS_TYPES


# --------------------------------------------------------------------------- the prior


def _one_candidate(**values) -> dict:
    neutral = {name: 0.0 for name in FEATURE_NAMES}
    neutral.update(availability_ratio=1.0, team_fit=1.0, team_size=1.0, distance_km=2.0,
                   proximity=1.0)
    neutral.update(values)
    return neutral


@pytest.mark.parametrize("better, worse", [
    ({"le_fit": 0.8}, {"le_fit": 0.0}),
    ({"le_fit": 0.0}, {"le_fit": -0.5}),
    ({"proximity": 20.0}, {"proximity": 1.0}),
    ({"proximity_le": 5.0}, {"proximity_le": 0.0}),
    ({"availability_ratio": 1.2}, {"availability_ratio": 0.4}),
    ({"ties_succeeded": 3.0}, {"ties_succeeded": 0.0}),
    ({"same_area": 1.0, "distance_km": 0.0}, {"same_area": 0.0, "distance_km": 8.0}),
    ({"distance_km": 1.0}, {"distance_km": 15.0}),
    ({"text_fit": 0.7}, {"text_fit": 0.1}),
    ({"load": 0.0}, {"load": 1.0}),
    ({"team_fit": 1.0}, {"team_fit": 0.0}),
])
def test_prior_ranks_the_better_candidate_first(better, worse):
    X = pl.DataFrame([{"kind": "person", "candidate_id": "worse", **_one_candidate(**worse)},
                      {"kind": "person", "candidate_id": "better", **_one_candidate(**better)}])
    ids, scores = PriorRanker().score_candidates(X)  # no fit, no outcome
    assert list(ids) == ["better", "worse"] and scores[0] > scores[1]


def test_prior_needs_no_outcomes_and_ranks_sensibly(data):
    X, y, _ = data
    prior = PriorRanker()
    p = prior.predict_proba(X)
    assert p.shape == (len(y),) and (p > 0).all() and (p < 1).all()
    assert prior.fit(X) is prior and prior.fit(X, y) is prior  # allowed, learns nothing
    assert np.array_equal(prior.predict_proba(X), p)
    # the synthetic truth follows lived experience, text fit, proximity and load
    assert roc_auc_score(y, p) > 0.7
    # the reference candidate succeeds at the base rate; unknown distance is not punished
    ref = pl.DataFrame([_one_candidate(distance_km=0.0, proximity=0.0)])
    assert prior.predict_proba(ref)[0] == pytest.approx(0.15)
    unknown = pl.DataFrame([_one_candidate(distance_km=None)])
    assert np.isfinite(prior.predict_proba(unknown)).all()
    assert prior.name == "prior" and prior.version == "prior-1"
    with pytest.raises(ValueError, match="unknown prior weights"):
        PriorRanker(weights={"tr_rate": 1.0}).predict_proba(X)


# ------------------------------------------------------------- payout, ordering, clone


def test_expected_payout_per_pay_rule():
    prior = PriorRanker()
    proba = np.array([0.5, 0.2])
    threshold = PayRule("threshold", "decrease", 0.2, 0.1, fee=900.0)
    linear = PayRule("linear", "increase", 0, 10, fee=1000.0, contract_cap=600.0)
    per_unit_up = PayRule("per_unit", "increase", 2, 12, unit_price=50.0)
    per_unit_down = PayRule("per_unit", "decrease", 30, 20, unit_price=10.0, contract_cap=80.0)
    assert np.allclose(prior.expected_payout(proba, threshold), [450.0, 180.0])
    assert np.allclose(prior.expected_payout(proba, linear), [300.0, 120.0])  # capped at 600
    assert np.allclose(prior.expected_payout(proba, per_unit_up), [250.0, 100.0])  # 10 units
    assert np.allclose(prior.expected_payout(proba, per_unit_down), [40.0, 16.0])  # cap 80
    # one rule per row, and what each mission already paid
    assert np.allclose(prior.expected_payout(proba, [threshold, linear], already_paid=[0, 500]),
                       [450.0, 20.0])
    assert payout_at_target(PayRule("per_unit", "increase", 5, 5, unit_price=7.0)) == 7.0
    with pytest.raises(ValueError, match="pay rules"):
        prior.expected_payout(proba, [threshold])


def test_score_candidates_sorts_and_breaks_ties_by_id():
    rows = [_one_candidate(le_fit=v) for v in (0.1, 0.9, 0.1, 0.5)]
    X = pl.DataFrame(rows).with_columns(candidate_id=pl.Series(["d", "a", "b", "c"]))
    ids, scores = PriorRanker().score_candidates(X)
    assert list(ids) == ["a", "c", "b", "d"]
    assert (np.diff(scores) <= 0).all()
    with pytest.raises(ValueError, match="candidate_id"):
        PriorRanker().score_candidates(X.drop("candidate_id"))


def test_clone_get_params_set_params(data):
    X, y, times = data
    r = Ranker(estimator="logistic", calibration="sigmoid", calibration_share=0.3,
               random_state=4, features=("le_fit", "text_fit", "load"), n_threads=1)
    c = clone(r)
    assert c.get_params() == r.get_params() and c is not r
    c.set_params(calibration="isotonic")
    assert c.calibration == "isotonic" and r.calibration == "sigmoid"
    fitted = r.fit(X, y, times=times)
    assert fitted.feature_names_ == ("le_fit", "text_fit", "load")
    assert fitted.n_calibration_ == 450
    with pytest.raises(NotFittedError):
        clone(fitted).predict_proba(X)
    assert clone(PriorRanker(base_rate=0.2)).get_params() == {"weights": None, "base_rate": 0.2}
    assert isinstance(r, BaseRanker) and isinstance(PriorRanker(), BaseRanker)
