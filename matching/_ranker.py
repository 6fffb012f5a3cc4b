"""Rankers: from (mission, candidate) features to a calibrated probability of success.

Two policies share one small interface (:class:`BaseRanker`, after scikit-learn's estimator
contract and the base class of *implicit*):

- :class:`Ranker`, learned from verified outcomes: gradient-boosted trees by default, whose
  scores are calibrated into probabilities on a *later* time slice than the one the trees were
  fit on, so that the probabilities carry the drift between the two;
- :class:`PriorRanker`, the day-one policy: a documented, hand-set logistic of lived-experience
  fit, proximity, peers, distance, availability, text fit and load. It needs no outcomes, so a
  fresh import of real data is served at once and the feedback loop can start.

Both save to a folder without pickle: ``ranker.json`` holds the class, parameters, feature names
and every fitted number; scikit-learn estimators go to a ``.skops`` file read back with an
explicit allow-list of types, LightGBM boosters to their own text format.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from features import FEATURE_NAMES, FEATURE_SET_VERSION
from graph._payout import PayRule, payout_for

__all__ = [
    "BaseRanker",
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "PriorRanker",
    "Ranker",
    "load_ranker",
    "payout_at_target",
    "PRIOR_VERSION",
    "TRUSTED_SKOPS_TYPES",
]

FORMAT = "bigcrunch.ranker"
FORMAT_VERSION = 1
_JSON_FILE = "ranker.json"
_SKOPS_FILE = "base.skops"
_LGBM_FILE = "base.lgbm.txt"

# Types a saved base model may hold beyond what skops trusts by default. Anything else found
# in a .skops file is refused at load: a model folder is data, never code.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({
    # the fitted trees of HistGradientBoostingClassifier
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # dtypes recorded by SimpleImputer / LogisticRegression in the "logistic" pipeline
    "numpy.dtype",
})

# Isotonic regression overfits a small calibration slice (a staircase through a few points);
# below these counts Platt's sigmoid, with its two parameters, is used instead.
ISOTONIC_MIN_ROWS = 200
ISOTONIC_MIN_PER_CLASS = 20

# Lower bound of Platt's slope (per unit of base score: log-odds, or a lambdarank score).
MIN_PLATT_SLOPE = 1e-6

# Smallest training slice worth fitting a model on.
_MIN_TRAIN_ROWS = 2

# Below this many rows, predict runs on one thread unless n_threads says otherwise: a served
# request is small, and OpenMP threads fighting for busy cores cost more than they save
# (200 rows through 200 trees on a loaded 2-core machine: 5.6 ms on 1 thread, 53 ms on 2).
SERIAL_PREDICT_ROWS = 10_000
_controller: Any = None


def _thread_limit(n_threads: int | None) -> contextlib.AbstractContextManager:
    """Limit OpenMP/BLAS threads (threadpoolctl) for the duration of a block."""
    global _controller
    if n_threads is None:
        return contextlib.nullcontext()
    if _controller is None:  # inspecting the loaded libraries costs ~6 ms: do it once
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=int(n_threads))


# --------------------------------------------------------------------------------- payout


def payout_at_target(rule: PayRule, already_paid: float = 0.0) -> float:
    """What a mission pays for reaching its target (contract cap applied).

    - ``threshold``: the fee (the target met);
    - ``linear``: the full fee (all of the way from baseline to target);
    - ``per_unit``: ``unit_price`` times the units aimed for, ``|target - baseline|`` in either
      direction (at least one unit: one unit is already a success for a per-unit mission).

    Examples
    --------
    >>> payout_at_target(PayRule("per_unit", "increase", 0, 10, unit_price=50.0))
    500.0
    >>> payout_at_target(PayRule("threshold", "decrease", 0.2, 0.1, fee=900.0))
    900.0
    >>> payout_at_target(PayRule("linear", "increase", 0, 10, fee=1000.0, contract_cap=600.0))
    600.0
    """
    if rule.pay_rule == "per_unit":
        # payout_for reads a per-unit value as a count of units, whatever the direction
        units = max(abs(float(rule.target) - float(rule.baseline)), 1.0)
        return payout_for(rule, units, already_paid)
    return payout_for(rule, rule.target, already_paid)


# ------------------------------------------------------------------------------ inputs


def _feature_matrix(X: Any, names: Sequence[str]) -> np.ndarray:
    """The ``names`` columns of a polars or pandas frame as a float64 matrix (null -> NaN)."""
    names = list(names)
    if isinstance(X, pl.LazyFrame):
        missing = [n for n in names if n not in X.collect_schema().names()]
        if not missing:
            X = X.select(names).collect()
    elif isinstance(X, pl.DataFrame):
        missing = [n for n in names if n not in X.columns]
    elif hasattr(X, "columns") and hasattr(X, "loc"):  # pandas, without importing it
        missing = [n for n in names if n not in X.columns]
    else:
        raise TypeError(f"X must be a polars or pandas DataFrame, got {type(X).__name__}")
    if missing:
        raise ValueError(f"X lacks feature column(s) {missing}; a ranker needs every one of "
                         f"{names}")
    if isinstance(X, pl.DataFrame):
        out = X.select(pl.col(n).cast(pl.Float64) for n in names).to_numpy()
    else:
        out = X[names].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.ascontiguousarray(out, dtype=np.float64)


def _candidate_ids(X: Any) -> np.ndarray:
    if isinstance(X, pl.LazyFrame):
        X = X.select("candidate_id").collect()
    if "candidate_id" not in X.columns:
        raise ValueError("X lacks the candidate_id column that score_candidates returns")
    if isinstance(X, pl.DataFrame):
        return X["candidate_id"].cast(pl.String).to_numpy().astype(object)
    return np.asarray(X["candidate_id"].astype(str), dtype=object)


def _labels(y: Any, n: int) -> np.ndarray:
    y = y.to_numpy() if isinstance(y, pl.Series) else np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must be 1-D with one label per row of X ({n}), got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError("y must hold binary labels (0/1 or booleans)") from e
    if not np.isin(yf, (0.0, 1.0)).all():
        raise ValueError("y must hold binary labels (0/1 or booleans): verified successes")
    return yf.astype(np.int64)


def _weights(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must be 1-D with one weight per row ({n})")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    return w


def _time_keys(times: Any, n: int) -> tuple[np.ndarray, str]:
    """Sortable keys of ``times`` and their kind ("datetime" in UTC microseconds, "number")."""
    if getattr(getattr(times, "dtype", None), "tz", None) is not None:
        # aware pandas times -> naive UTC numpy (what pyarrow does with a deprecation warning)
        times = (times.dt if hasattr(times, "dt") else times).tz_convert(None).to_numpy()
    if isinstance(times, np.ndarray) and times.dtype.kind == "M":
        times = times.astype("datetime64[us]")  # polars takes ms, us or ns only
    s = times if isinstance(times, pl.Series) else pl.Series("times", times)
    if len(s) != n:
        raise ValueError(f"times must hold one time per row of X ({n}), got {len(s)}")
    if s.null_count():
        raise ValueError("times holds empty values: every training row needs its time")
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        # naive times are read as UTC, as everywhere in the store
        s = (s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None
             else s.dt.convert_time_zone("UTC"))
        return s.dt.epoch("us").to_numpy().astype(np.int64), "datetime"
    if s.dtype.is_numeric():
        return s.cast(pl.Float64).to_numpy(), "number"
    raise TypeError(f"times must be datetimes, dates or numbers, got {s.dtype}")


def _time_value(key: float, kind: str) -> dt.datetime | float:
    if kind == "datetime":
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(key))
    return float(key)


def _time_to_json(value: dt.datetime | float | None) -> Any:
    if isinstance(value, dt.datetime):
        return {"datetime": value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    return value


def _time_from_json(value: Any) -> dt.datetime | float | None:
    if isinstance(value, dict):
        return dt.datetime.strptime(value["datetime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC)
    return value


def _time_split(keys: np.ndarray | None, n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training slice (earlier) and of the calibration slice (later).

    Rows with the same time stay on the same side, so that no calibration row is as old as
    a training row; the cut moves earlier when it can, later otherwise.
    """
    n_cal = max(1, int(round(share * n)))
    cut = n - n_cal
    if keys is None:
        order = np.arange(n)
    else:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        if cut < n:
            t_cut = sorted_keys[cut]
            first = int(np.searchsorted(sorted_keys, t_cut, side="left"))
            cut = first if first >= _MIN_TRAIN_ROWS else int(
                np.searchsorted(sorted_keys, t_cut, side="right"))
    if cut < _MIN_TRAIN_ROWS or cut >= n:
        raise ValueError(
            f"cannot split {n} rows into an earlier training slice (at least "
            f"{_MIN_TRAIN_ROWS} rows) and a later calibration slice (at least 1 row) with "
            f"calibration_share={share}: more rows, or rows at more distinct times, are needed")
    return order[:cut], order[cut:]


# ------------------------------------------------------------------------- calibrators


class _IsotonicCalibrator:
    """Isotonic map from a base score to a probability, kept as its thresholds (JSON)."""

    kind = "isotonic"

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)

    @classmethod
    def fit(cls, s: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> _IsotonicCalibrator:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(s, y, sample_weight=w)
        return cls(iso.X_thresholds_, iso.y_thresholds_)

    def predict(self, s: np.ndarray) -> np.ndarray:
        # linear between thresholds and flat beyond them, as IsotonicRegression.predict
        return np.clip(np.interp(s, self.x, self.y), 0.0, 1.0)

    def to_json(self) -> dict:
        return {"kind": self.kind, "x": self.x.tolist(), "y": self.y.tolist()}


class _SigmoidCalibrator:
    """Platt scaling ``p = expit(a * s + b)`` fit with Platt's smoothed targets."""

    kind = "sigmoid"

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = float(a), float(b)

    @classmethod
    def fit(cls, s: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> _SigmoidCalibrator:
        w = np.ones(len(s)) if w is None else w
        n_pos, n_neg = float(w[y == 1].sum()), float(w[y == 0].sum())
        # Platt (1999): targets pulled off 0 and 1, so one class alone does not diverge
        t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

        def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
            z = ab[0] * s + ab[1]
            p = expit(z)
            # log(1 + e^z) - t z, the cross-entropy written stably
            value = float(np.sum(w * (np.logaddexp(0.0, z) - t * z)))
            g = w * (p - t)
            return value, np.array([float(g @ s), float(g.sum())])

        b0 = math.log((n_neg + 1.0) / (n_pos + 1.0))
        # The slope stays positive: calibration must never invert the model's ranking (a
        # slice of a hundred rows can fit a negative slope), nor erase it. At the bound the
        # probabilities are all but the slice's base rate, still ordered as the model ranks:
        # a slope of 0 would make every candidate equal, and the policy, which reads only
        # probabilities, would then draw lists at random.
        res = minimize(loss, np.array([MIN_PLATT_SLOPE, -b0]), jac=True,
                       method="L-BFGS-B", bounds=[(MIN_PLATT_SLOPE, None), (None, None)])
        return cls(res.x[0], res.x[1])

    def predict(self, s: np.ndarray) -> np.ndarray:
        return expit(self.a * s + self.b)

    def to_json(self) -> dict:
        return {"kind": self.kind, "a": self.a, "b": self.b}


def _calibrator_from_json(d: Mapping[str, Any]) -> _IsotonicCalibrator | _SigmoidCalibrator:
    if d["kind"] == "isotonic":
        return _IsotonicCalibrator(np.array(d["x"]), np.array(d["y"]))
    if d["kind"] == "sigmoid":
        return _SigmoidCalibrator(d["a"], d["b"])
    raise ValueError(f"unknown calibrator {d['kind']!r}")


# --------------------------------------------------------------------------- base class


class BaseRanker(BaseEstimator, ABC):
    """What every ranker offers: fit, probabilities, sorted candidates, payout, save/load.

    Subclasses implement :meth:`fit`, :meth:`predict_proba` and the two hooks that put their
    fitted state into JSON and back (``_state`` / ``_set_state``). Parameters are the
    ``__init__`` arguments, stored unchanged, so scikit-learn's ``clone``, ``get_params`` and
    ``set_params`` work.

    ``X`` is a polars (or pandas) frame as built by :func:`features.build_features`: every
    column of ``feature_names_`` must be there (extra columns are ignored; a missing one
    raises ``ValueError`` naming it).

    Attributes
    ----------
    name : str
        The policy ("prior", "ranker-hgb", ...).
    version : str
        Identifies the fitted content (the prior's weights, or a fingerprint of the fitted
        model); the model registry's version is recorded next to it, not instead of it.
    feature_names_ : tuple of str
        The feature columns read from ``X``, in order.
    """

    _registry: ClassVar[dict[str, type[BaseRanker]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BaseRanker._registry[cls.__name__] = cls

    # -- the estimator contract

    @abstractmethod
    def fit(self, X: Any, y: Any, times: Any = None, sample_weight: Any = None,
            **kwargs: Any) -> BaseRanker:
        """Fit on rows ``X`` with binary labels ``y`` (verified successes); returns self."""

    @abstractmethod
    def predict_proba(self, X: Any) -> np.ndarray:
        """P(success) of each row of ``X``: a 1-D float array in [0, 1]."""

    def predict(self, X: Any) -> np.ndarray:
        """The ranker's prediction: P(success), as :meth:`predict_proba`.

        A ranker predicts a probability, not a class: this is what a pyfunc wrapper and
        batch scoring call.
        """
        return self.predict_proba(X)

    def score_candidates(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of ``X`` sorted by P(success), best first.

        Returns
        -------
        ids : numpy.ndarray of str (object)
            The ``candidate_id`` column, reordered.
        scores : numpy.ndarray of float
            P(success) of each, in the same order. Equal probabilities (an isotonic
            calibration is a staircase) are ordered by the model's own score, then by
            candidate id, so the order never depends on the order of the rows.
        """
        ids = _candidate_ids(X)
        scores, secondary = self._scores(X)
        order = np.lexsort((ids.astype(str), -secondary, -scores))
        return ids[order], scores[order]

    def _scores(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """P(success) and a finer score ordering equal probabilities (default: the same)."""
        p = self.predict_proba(X)
        return p, p

    def expected_payout(self, proba: Any, pay_rule: PayRule | Sequence[PayRule],
                        already_paid: float | Sequence[float] = 0.0) -> np.ndarray:
        """Expected payout: ``proba`` times what the mission pays for reaching its target.

        The payout of success is :func:`payout_at_target` (threshold: the fee; linear: the
        full fee; per unit: unit price times the units aimed for, ``|target - baseline|``),
        with the contract cap applied after ``already_paid``. For a linear mission, success
        (half of the way) may pay less than the full fee: this is then an upper bound, the
        stake a candidate is playing for.

        Parameters
        ----------
        proba : array-like of float
            P(success), e.g. from :meth:`predict_proba`.
        pay_rule : PayRule or sequence of PayRule
            One rule for all rows (one mission), or one per row (many missions).
        already_paid : float or sequence of float
            What each mission has paid so far (for the contract cap).

        Examples
        --------
        >>> r = PriorRanker()
        >>> r.expected_payout([0.5, 0.1], PayRule("threshold", "increase", 0, 1, fee=800.0))
        array([400.,  80.])
        """
        p = np.asarray(proba, dtype=np.float64).ravel()
        paid = np.broadcast_to(np.asarray(already_paid, dtype=np.float64), p.shape)
        rules = [pay_rule] * len(p) if isinstance(pay_rule, PayRule) else list(pay_rule)
        if len(rules) != len(p):
            raise ValueError(f"got {len(rules)} pay rules for {len(p)} probabilities")
        stake = np.array([payout_at_target(r, float(a)) for r, a in zip(rules, paid, strict=True)],
                         dtype=np.float64)
        return p * stake

    # -- saving without pickle

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies the fitted content."""

    def _state(self, folder: Path) -> dict:
        """Fitted state as JSON-able dict; may write files into ``folder``."""
        return {}

    def _set_state(self, state: Mapping[str, Any], folder: Path) -> None:
        """Restore what :meth:`_state` wrote."""

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (created if needed), without pickle.

        ``ranker.json`` holds the class, parameters, feature names and fitted numbers; a
        scikit-learn base model is written with ``skops.io.dump``, a LightGBM booster as its
        text model. ``ranker.json`` is written last: a folder that has it is complete.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "name": self.name,
            "version": self.version,
            "feature_set_version": FEATURE_SET_VERSION,
            "params": _params_to_json(self.get_params(deep=False)),
            "feature_names": list(self.feature_names_),
            "state": self._state(folder),
        }
        text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
        (folder / _JSON_FILE).write_text(text + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, path: str | Path, check_feature_set: bool = True) -> BaseRanker:
        """Load a ranker saved with :meth:`save` (whichever subclass it is).

        Parameters
        ----------
        path : str or Path
            The folder.
        check_feature_set : bool, default True
            Refuse a model fit on another version of the features
            (:data:`features.FEATURE_SET_VERSION`): the same column names could mean
            something else.

        Raises
        ------
        ValueError
            Not a ranker folder, another format or feature set, or a ``.skops`` file holding
            types outside :data:`TRUSTED_SKOPS_TYPES`.
        """
        folder = Path(path)
        doc_path = folder / _JSON_FILE
        if not doc_path.is_file():
            raise ValueError(f"{folder} holds no {_JSON_FILE}: not a saved ranker")
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{doc_path}: not a ranker of format {FORMAT} v{FORMAT_VERSION}")
        if check_feature_set and doc["feature_set_version"] != FEATURE_SET_VERSION:
            raise ValueError(
                f"{doc_path}: fit on feature set {doc['feature_set_version']!r}, but the "
                f"features are now {FEATURE_SET_VERSION!r}; retrain, or pass "
                "check_feature_set=False to compare old models knowingly")
        klass = BaseRanker._registry.get(doc["class"])
        if klass is None or not issubclass(klass, cls):
            raise ValueError(f"{doc_path}: class {doc['class']!r} is not a {cls.__name__}")
        obj = klass(**_params_from_json(doc["params"]))
        obj._set_state(doc["state"], folder)
        if tuple(doc["feature_names"]) != tuple(obj.feature_names_):
            raise ValueError(f"{doc_path}: feature names do not match the saved state")
        return obj


def load_ranker(path: str | Path, check_feature_set: bool = True) -> BaseRanker:
    """Load any ranker saved with :meth:`BaseRanker.save`."""
    return BaseRanker.load(path, check_feature_set=check_feature_set)


def _params_to_json(params: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = list(v)
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"parameter {k}={v!r} cannot be saved as JSON (use an int "
                             "random_state and plain values)") from e
        out[k] = v
    return out


def _params_from_json(params: Mapping[str, Any]) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


# ------------------------------------------------------------------------- Ranker


ESTIMATORS = ("hgb", "logistic", "lightgbm", "lgbm_rank")  # what Ranker(estimator=...) takes
# The default base model, chosen on evidence: on the Stack Exchange benchmark
# (bench/bench_stackexchange.py, docs/benchmarks.md) it has the best validation MRR@10 of the
# four, and on the later test questions it beats the most-active-answerer baseline with a
# bootstrap interval above 0; it is also what the simulated proof was measured with.
DEFAULT_ESTIMATOR = "hgb"
_CALIBRATIONS = ("isotonic", "sigmoid")


# Features whose effect on success has a known direction (1: more is better, -1: less is
# better). The trees are held to it (HistGradientBoosting's monotonic_cst), so that a few
# thousand noisy labels cannot teach them that living further away, or a worse track record,
# helps. Features left out are free (experience, load, tenure: confounded by who was chosen).
MONOTONE: dict[str, int] = {
    "le_fit": 1, "tr_rate": 1, "tr_rate_need": 1, "tr_rate_family": 1, "tr_recent": 1,
    "skill_latent": 1, "skill_fit": 1, "text_fit": 1, "proximity": 1, "ties_succeeded": 1,
    "ties_succeeded_w": 1, "ties_in_area": 1, "peers_rate": 1, "same_area": 1,
    "distance_km": -1, "availability_ratio": 1, "group_cohesion": 1,
}


def _hgb(random_state: int | None, params: Mapping[str, Any],
         names: Sequence[str] = ()) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Shallow trees held to the known directions: training sets are a few thousand
    # assignments chosen by an earlier policy, and the ranker must extrapolate to every
    # eligible candidate (simulated 5k x 3k city, seeds 1-3, feature set fs-3: 0.70 of the
    # oracle's expected successes@10 on average, against 0.63 with unconstrained 31-leaf
    # trees of 200 iterations).
    defaults = dict(
        max_iter=100,
        learning_rate=0.05,
        max_depth=3,
        min_samples_leaf=20,
        l2_regularization=1.0,
        monotonic_cst=[MONOTONE.get(n, 0) for n in names] if len(names) else None,
        early_stopping=False,  # a validation split drawn at random would break determinism
        random_state=random_state,
    )
    return HistGradientBoostingClassifier(**{**defaults, **params})


def _logistic(random_state: int | None, params: Mapping[str, Any]) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    defaults = dict(C=1.0, max_iter=2000, random_state=random_state)
    return make_pipeline(
        # unknown distance -> the median, and a column saying it was unknown
        SimpleImputer(strategy="median", add_indicator=True),
        StandardScaler(),
        LogisticRegression(**{**defaults, **params}),
    )


def _lightgbm(random_state: int | None, params: Mapping[str, Any], rank: bool,
              n_threads: int | None) -> Any:
    try:
        import lightgbm
    except ImportError as e:  # optional dependency
        raise ImportError("estimator='lightgbm'/'lgbm_rank' needs the lightgbm package") from e
    defaults = dict(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        reg_lambda=1.0,
        random_state=random_state,
        deterministic=True,  # same trees on every run and machine
        force_row_wise=True,
        verbose=-1,
    )
    if n_threads is not None:
        defaults["n_jobs"] = n_threads
    klass = lightgbm.LGBMRanker if rank else lightgbm.LGBMClassifier
    return klass(**{**defaults, **params})


class Ranker(BaseRanker):
    """A learned ranker: P(success) of a candidate on a mission, calibrated on later rows.

    The base model is fit on the earlier ``1 - calibration_share`` of the rows (by ``times``)
    and a calibrator maps its scores to probabilities on the later ``calibration_share``: the
    probabilities are thus measured on rows the base model never saw, as of a later time.

    Parameters
    ----------
    estimator : {"hgb", "logistic", "lightgbm", "lgbm_rank"}, default "hgb"
        (:data:`DEFAULT_ESTIMATOR`). ``"hgb"``: scikit-learn's HistGradientBoostingClassifier
        (100 trees of depth 3, at least 20 rows per leaf, learning rate 0.05, held monotone
        in the features of :data:`MONOTONE`, no early stopping: deterministic).
        ``"logistic"``: median imputation with missing-value indicators, standard scaling,
        logistic regression.
        ``"lightgbm"``: LGBMClassifier (optional import). ``"lgbm_rank"``: LGBMRanker with
        lambdarank, which needs ``groups`` (query ids, e.g. mission ids) in :meth:`fit`; its
        scores are then calibrated into probabilities like the others.
    calibration : {"isotonic", "sigmoid"}, default "isotonic"
        Isotonic regression falls back to the sigmoid (Platt) when the calibration slice has
        fewer than ``ISOTONIC_MIN_ROWS`` rows or ``ISOTONIC_MIN_PER_CLASS`` of either class;
        ``calibration_`` says which was used.
    calibration_share : float in (0, 1), default 0.2
        Share of the rows, the latest by ``times``, held out to calibrate.
    random_state : int or None, default 0
        Seed of the base model.
    features : tuple of str or None, default None
        Feature columns to use (``None``: all of :data:`features.FEATURE_NAMES`); a subset
        serves ablations.
    estimator_params : dict or None, default None
        Overrides of the base model's defaults, e.g. ``{"max_iter": 50}``.
    n_threads : int or None, default None
        Threads of the base model in fit and predict. ``None``: the library's default in
        fit, and one thread in predict below ``SERIAL_PREDICT_ROWS`` rows (served requests).

    Attributes
    ----------
    base_ : estimator or lightgbm.Booster
        The base model, fit on the training slice only.
    calibrator_ : object
        Maps base scores to probabilities; fit on the calibration slice only.
    calibration_ : str
        The calibration actually used ("isotonic" or "sigmoid").
    feature_names_ : tuple of str
    n_train_, n_calibration_ : int
        Rows in each slice.
    train_until_ : datetime, float or None
        Time of the latest training row (``None`` when ``times`` was not given).
    calibration_from_ : datetime, float or None
        Time of the earliest calibration row.
    split_ : str
        "time", or "row_order" when ``times`` was not given (rows are then taken to be in
        time order: the last rows calibrate).
    classes_ : numpy.ndarray
        ``[0, 1]``.

    Examples
    --------
    >>> ranker = Ranker(estimator="hgb").fit(X, y, times=assigned_at)  # doctest: +SKIP
    >>> ids, scores = ranker.score_candidates(features_of_one_mission)  # doctest: +SKIP
    """

    def __init__(self, estimator: str = DEFAULT_ESTIMATOR, calibration: str = "isotonic",
                 calibration_share: float = 0.2, random_state: int | None = 0,
                 features: Sequence[str] | None = None,
                 estimator_params: Mapping[str, Any] | None = None,
                 n_threads: int | None = None) -> None:
        self.estimator = estimator
        self.calibration = calibration
        self.calibration_share = calibration_share
        self.random_state = random_state
        self.features = features
        self.estimator_params = estimator_params
        self.n_threads = n_threads

    @property
    def name(self) -> str:
        return f"ranker-{self.estimator}"

    @property
    def version(self) -> str:
        check_is_fitted(self)
        digest = hashlib.sha256(json.dumps(
            [_params_to_json(self.get_params(deep=False)), self.n_train_, self.n_calibration_,
             _time_to_json(self.train_until_), self.calibrator_.to_json(), FEATURE_SET_VERSION],
            sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:12]}"

    def _check_params(self) -> tuple[str, ...]:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.calibration not in _CALIBRATIONS:
            raise ValueError(f"calibration must be one of {_CALIBRATIONS}, "
                             f"got {self.calibration!r}")
        if not 0.0 < float(self.calibration_share) < 1.0:
            raise ValueError(f"calibration_share must be in (0, 1), got {self.calibration_share}")
        names = tuple(FEATURE_NAMES if self.features is None else self.features)
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown or not names:
            raise ValueError(f"features must be a non-empty subset of FEATURE_NAMES; "
                             f"unknown: {unknown}")
        return names

    def _make_base(self, names: Sequence[str] = ()) -> Any:
        params = dict(self.estimator_params or {})
        if self.estimator == "hgb":
            return _hgb(self.random_state, params, names)
        if self.estimator == "logistic":
            return _logistic(self.random_state, params)
        return _lightgbm(self.random_state, params, rank=self.estimator == "lgbm_rank",
                         n_threads=self.n_threads)

    def fit(self, X: Any, y: Any, times: Any = None, sample_weight: Any = None,
            groups: Any = None) -> Ranker:
        """Fit the base model on the earlier rows and the calibrator on the later ones.

        Parameters
        ----------
        X : polars or pandas DataFrame
            One row per (mission, candidate) assignment, with the feature columns.
        y : array-like of bool or {0, 1}
            Verified success of each row.
        times : array-like of datetime or number, optional
            When each row was decided (``assigned_at``); the latest ``calibration_share`` of
            rows calibrate. Without it, the row order is taken as time order.
        sample_weight : array-like of float, optional
            Row weights (e.g. inverse logged propensities), used by both stages
            (LightGBM's lambdarank averages them over each query).
        groups : array-like, optional
            Query id of each row (e.g. mission id); needed by ``"lgbm_rank"``, unused by the
            other estimators.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Missing feature columns, non-binary labels, a single class in the training slice
            or too few rows to split.
        """
        names = self._check_params()
        M = _feature_matrix(X, names)
        n = M.shape[0]
        yy = _labels(y, n)
        w = _weights(sample_weight, n)
        if len(np.unique(yy)) < 2:
            raise ValueError(f"y holds only {'successes' if yy[0] else 'failures'} "
                             f"({n} rows): a ranker needs both to learn from")
        if times is None:
            keys, kind, split = None, "number", "row_order"
        else:
            (keys, kind), split = _time_keys(times, n), "time"
        tr, cal = _time_split(keys, n, float(self.calibration_share))
        if len(np.unique(yy[tr])) < 2:
            raise ValueError(
                f"the training slice (the earliest {len(tr)} of {n} rows) holds only "
                f"{'successes' if yy[tr][0] else 'failures'}: lower calibration_share or add "
                "earlier outcomes")

        base = self._make_base(names)
        w_tr = None if w is None else w[tr]
        if self.estimator == "lgbm_rank":
            if groups is None:
                raise ValueError("estimator='lgbm_rank' needs groups (query ids, e.g. mission "
                                 "ids) in fit")
            g = np.asarray(groups)
            if g.shape != (n,):
                raise ValueError(f"groups must hold one query id per row ({n})")
            # LightGBM wants the rows of one query contiguous: sort the slice by query
            _, inv = np.unique(g[tr], return_inverse=True)
            by_q = np.argsort(inv, kind="stable")
            tr = tr[by_q]
            sizes = np.bincount(inv[by_q])
            with _thread_limit(self.n_threads):
                base.fit(M[tr], yy[tr], group=sizes[sizes > 0],
                         sample_weight=None if w is None else w[tr])
        elif self.estimator == "logistic":
            with _thread_limit(self.n_threads):
                base.fit(M[tr], yy[tr], logisticregression__sample_weight=w_tr)
        else:
            with _thread_limit(self.n_threads):
                base.fit(M[tr], yy[tr], sample_weight=w_tr)
        self.base_ = base

        s_cal = self._base_score(M[cal])
        y_cal, w_cal = yy[cal], None if w is None else w[cal]
        method = self.calibration
        if method == "isotonic" and (len(cal) < ISOTONIC_MIN_ROWS
                                     or min(np.bincount(y_cal, minlength=2))
                                     < ISOTONIC_MIN_PER_CLASS):
            method = "sigmoid"
        klass = _IsotonicCalibrator if method == "isotonic" else _SigmoidCalibrator
        self.calibrator_ = klass.fit(s_cal, y_cal, w_cal)
        self.calibration_ = method
        self.feature_names_ = names
        self.n_train_ = int(len(tr))
        self.n_calibration_ = int(len(cal))
        self.split_ = split
        if keys is None:
            self.train_until_ = self.calibration_from_ = None
        else:
            self.train_until_ = _time_value(keys[tr].max(), kind)
            self.calibration_from_ = _time_value(keys[cal].min(), kind)
        self.classes_ = np.array([0, 1])
        return self

    def _base_score(self, M: np.ndarray) -> np.ndarray:
        """The base model's real-valued score (log-odds for classifiers)."""
        threads = self.n_threads
        if threads is None and M.shape[0] < SERIAL_PREDICT_ROWS:
            threads = 1
        if self.estimator in ("lightgbm", "lgbm_rank"):
            booster = getattr(self.base_, "booster_", self.base_)  # a loaded model is a Booster
            return np.asarray(booster.predict(M, raw_score=True, num_threads=threads or 0),
                              dtype=np.float64)
        with _thread_limit(threads):
            return np.asarray(self.base_.decision_function(M), dtype=np.float64).ravel()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated P(success) of each row of ``X`` (1-D, in [0, 1]).

        An isotonic calibration maps a range of base scores to one probability:
        :meth:`score_candidates` orders such ties by the base score.
        """
        return self._scores(X)[0]

    def _scores(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        M = _feature_matrix(X, self.feature_names_)
        if M.shape[0] == 0:
            return np.zeros(0), np.zeros(0)
        s = self._base_score(M)
        return self.calibrator_.predict(s), s

    def predict_uncalibrated(self, X: Any) -> np.ndarray:
        """The base model's own score (log-odds, or lambdarank score), before calibration."""
        check_is_fitted(self)
        return self._base_score(_feature_matrix(X, self.feature_names_))

    def _state(self, folder: Path) -> dict:
        check_is_fitted(self)
        if self.estimator in ("lightgbm", "lgbm_rank"):
            booster = getattr(self.base_, "booster_", self.base_)
            (folder / _LGBM_FILE).write_text(booster.model_to_string(), encoding="utf-8")
            base_file = _LGBM_FILE
        else:
            import skops.io as sio

            sio.dump(self.base_, folder / _SKOPS_FILE)
            base_file = _SKOPS_FILE
        return {
            "base_file": base_file,
            "calibrator": self.calibrator_.to_json(),
            "calibration": self.calibration_,
            "n_train": self.n_train_,
            "n_calibration": self.n_calibration_,
            "split": self.split_,
            "train_until": _time_to_json(self.train_until_),
            "calibration_from": _time_to_json(self.calibration_from_),
        }

    def _set_state(self, state: Mapping[str, Any], folder: Path) -> None:
        names = self._check_params()
        base_path = folder / Path(state["base_file"]).name  # never leave the folder
        if state["base_file"] == _LGBM_FILE:
            try:
                import lightgbm
            except ImportError as e:
                raise ImportError("this ranker needs the lightgbm package") from e
            self.base_ = lightgbm.Booster(model_str=base_path.read_text(encoding="utf-8"))
        else:
            import skops.io as sio

            untrusted = sio.get_untrusted_types(file=base_path)
            refused = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
            if refused:
                raise ValueError(f"{base_path} holds types outside the allow-list: {refused}")
            self.base_ = sio.load(base_path, trusted=untrusted)
        self.calibrator_ = _calibrator_from_json(state["calibrator"])
        self.calibration_ = state["calibration"]
        self.feature_names_ = names
        self.n_train_ = int(state["n_train"])
        self.n_calibration_ = int(state["n_calibration"])
        self.split_ = state["split"]
        self.train_until_ = _time_from_json(state["train_until"])
        self.calibration_from_ = _time_from_json(state["calibration_from"])
        self.classes_ = np.array([0, 1])


# --------------------------------------------------------------------------- PriorRanker

PRIOR_VERSION = "prior-1"  # bump whenever a weight or term below changes

# The day-one policy in log-odds. The reference candidate (every term at 0) is a stranger to
# the mission's need and area network who lives at the mission's place, has the time and no
# other mission: PRIOR_BASE_RATE of such candidates are expected to succeed. Bonuses and
# penalties below move a candidate from there. Hand-set, not learned: they encode the design's
# priors (lived experience first, then the community graph, then logistics) and are replaced by
# a trained Ranker as soon as outcomes allow one.
PRIOR_BASE_RATE = 0.15
PRIOR_WEIGHTS: dict[str, float] = {
    # lived-experience fit in [-1, 1], already faded by the person's own outcomes: the
    # strongest signal before any outcome (+1 fit takes 15 % to about 44 %)
    "le_fit": 1.5,
    # log(1 + personalised PageRank x nodes): known in the mission's area and need network
    "proximity": 0.5,
    # same with lived-experience edges (faded), smaller: le_fit already counts most of it
    "proximity_le": 0.25,
    # log(1 + peers who succeeded on this need): peers speak for a newcomer
    "ties_succeeded": 0.4,
    # lives in the mission's neighbourhood
    "same_area": 0.4,
    # per log(1 + km) away: each doubling of a short distance costs a little
    "distance_km": -0.3,
    # per unit of shortfall max(0, 1 - availability_ratio): not enough time for the mission
    "availability_ratio": -1.5,
    # TF-IDF cosine of skills and the mission's text, in [0, 1]
    "text_fit": 1.0,
    # per unit of min(load, 1): already busy with other missions
    "load": -0.8,
    # a group whose size is outside team_min..team_max (team_fit = 0)
    "team_fit": -1.0,
}
# Unknown distance (an area without coordinates) counts as this far: neither near nor far.
PRIOR_UNKNOWN_DISTANCE_KM = 5.0


class PriorRanker(BaseRanker):
    """The day-one policy: P(success) from priors alone, no outcome needed.

    ``P = expit(logit(PRIOR_BASE_RATE) + sum of the terms of PRIOR_WEIGHTS)``: lived-
    experience fit, graph proximity, peers who succeeded, the neighbourhood and distance,
    enough time, text fit, minus load (see the comments on :data:`PRIOR_WEIGHTS`). It is
    registered as the first model, so that a fresh import of real data is served at once and
    its decisions start the feedback loop a :class:`Ranker` learns from.

    Parameters
    ----------
    weights : dict or None, default None
        Overrides of :data:`PRIOR_WEIGHTS` (same keys); ``None`` uses the documented ones.
    base_rate : float in (0, 1) or None, default None
        Overrides :data:`PRIOR_BASE_RATE`.

    Examples
    --------
    >>> ranker = PriorRanker()  # no fit needed
    >>> ids, scores = ranker.score_candidates(features_of_one_mission)  # doctest: +SKIP
    """

    def __init__(self, weights: Mapping[str, float] | None = None,
                 base_rate: float | None = None) -> None:
        self.weights = weights
        self.base_rate = base_rate

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing to learn

    @property
    def name(self) -> str:
        return "prior"

    @property
    def version(self) -> str:
        if self.weights is None and self.base_rate is None:
            return PRIOR_VERSION
        digest = hashlib.sha256(json.dumps(
            [self._weights(), self._base_rate()], sort_keys=True).encode()).hexdigest()
        return f"{PRIOR_VERSION}-custom-{digest[:8]}"

    @property
    def feature_names_(self) -> tuple[str, ...]:
        return tuple(n for n in FEATURE_NAMES if n in PRIOR_WEIGHTS)

    def _weights(self) -> dict[str, float]:
        extra = set(self.weights or {}) - set(PRIOR_WEIGHTS)
        if extra:
            raise ValueError(f"unknown prior weights {sorted(extra)}; known: "
                             f"{sorted(PRIOR_WEIGHTS)}")
        return {**PRIOR_WEIGHTS, **{k: float(v) for k, v in (self.weights or {}).items()}}

    def _base_rate(self) -> float:
        rate = PRIOR_BASE_RATE if self.base_rate is None else float(self.base_rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"base_rate must be in (0, 1), got {rate}")
        return rate

    def fit(self, X: Any, y: Any = None, times: Any = None, sample_weight: Any = None,
            **kwargs: Any) -> PriorRanker:
        """Check that ``X`` has the needed columns; learns nothing. Returns self."""
        _feature_matrix(X, self.feature_names_)
        self._weights()
        self._base_rate()
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The log-odds of success: the weighted sum of the terms plus the base rate."""
        names = self.feature_names_
        M = _feature_matrix(X, names)
        c = {n: M[:, i] for i, n in enumerate(names)}
        w = self._weights()
        dist = np.where(np.isnan(c["distance_km"]), PRIOR_UNKNOWN_DISTANCE_KM, c["distance_km"])
        terms = {
            "le_fit": np.nan_to_num(c["le_fit"]),
            "proximity": np.log1p(np.clip(np.nan_to_num(c["proximity"]), 0.0, None)),
            "proximity_le": np.log1p(np.clip(np.nan_to_num(c["proximity_le"]), 0.0, None)),
            "ties_succeeded": np.log1p(np.clip(np.nan_to_num(c["ties_succeeded"]), 0.0, None)),
            "same_area": np.nan_to_num(c["same_area"]),
            "distance_km": np.log1p(np.clip(dist, 0.0, None)),
            # NaN availability (unknown) counts as enough time: the hard filters decide
            "availability_ratio": np.clip(1.0 - np.nan_to_num(c["availability_ratio"], nan=1.0),
                                          0.0, 1.0),
            "text_fit": np.nan_to_num(c["text_fit"]),
            "load": np.clip(np.nan_to_num(c["load"]), 0.0, 1.0),
            "team_fit": 1.0 - np.nan_to_num(c["team_fit"], nan=1.0),
        }
        z = np.full(M.shape[0], float(logit(self._base_rate())))
        for k, term in terms.items():
            z += w[k] * term
        return z

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(success) of each row of ``X`` under the day-one prior (1-D, in [0, 1])."""
        return expit(self.decision_function(X))

    def _state(self, folder: Path) -> dict:
        return {"weights": self._weights(), "base_rate": self._base_rate()}

