"""Real-data benchmark: routing Stack Exchange beer questions to the people who answer them.

The data are the public dump of beer.stackexchange.com (CC BY-SA 3.0, see
``docs/stackexchange.md``), turned into a community bundle by ``bench/stackexchange_bundle.py``:
a question is a mission, an answerer a candidate, the accepted answer the success; users who
answered, commented on or edited each other's posts are tied, each tie dated by the pair's
first interaction.

Protocol
--------
The same protocol runs twice: first on a **validation** split, where the estimator is chosen,
then on the **test** split, where the chosen one (and every other model) is reported. Nothing
of the test questions takes part in the choice.

1. **Splits.** The test split is the 80 % quantile of question dates (``split_date`` of the
   adapter: 2016-02-19 22:46:44Z), the validation split the 60 % quantile (2015-04-03). The
   validation stage trains before the validation split and evaluates the questions created
   between the two splits whose 60-day window and accepted answer both closed before the
   test split; the test stage trains before the test split and evaluates the questions
   created after it whose window closed before the dump's end.
2. **Bundle and store**, one per stage. The adapter builds the bundle into a temporary folder,
   tie weights and need types from interactions before the stage's split only
   (``fit_until``); it is imported into a fresh SQLite store in the same folder (under
   ``/tmp``) and read back with ``graph.load_frames``. Nothing of the dump is kept afterwards.
   Every learned part sees only what happened before the stage's split.
3. **Training rows** (the engine's): answers given before the split whose outcome (accepted
   or not) was verified before it, labelled *accepted*, built by
   ``matching.build_training_set`` as ``training.training_rows`` does, on questions whose
   measurement was complete at the split (``training.measured_missions``) (features as of the
   start of each answer's week; for a person who joined during that week, as of a snapshot at
   the answer itself). The rankers are fit as ``training.fit_engine_model`` fits them
   (``Ranker(estimator, random_state=seed, n_threads=1)``, calibrated on the latest 20 % of
   the rows; ``lgbm_rank`` grouped by question).
4. **Evaluated questions**: those of the stage (above) with an accepted answer.
5. **Candidate pool**: fixed, the persons who answered at least once before the split (393 at
   the test split). This is the *routing* task: the whole pool is ranked for each question.
   The accepted answerer's reciprocal rank within the top 10 is the question's MRR@10 (0 when
   they are not in the top 10, or not in the pool at all: a *cold-start* answerer, counted
   and reported).
6. **Features of the pool** for a question are built as of the start of the question's week,
   but never before the split (so that the whole fixed pool exists in the snapshot); that is
   always at or before the question's creation: no later tie, answer or outcome is seen.
   Dump-time counts (reputation, views, scores) are never read by the adapter.
7. **Models**:

   - ``hgb``, ``logistic``, ``lightgbm``, ``lgbm_rank``: :class:`matching.Ranker` with each
     estimator on the engine's training rows, calibrated as the Ranker does; ranked by
     calibrated probability, ties by the base model's score. **The one with the best
     validation MRR@10 is the selected estimator** (what the engine's default should be);
   - ``prior``: the day-one :class:`matching.PriorRanker` (no training);
   - ``als``: *implicit*'s ``AlternatingLeastSquares`` on the person x need-type confidence
     matrix of pre-split answers (an answer counts 1, an answer accepted before the split
     counts 1 more), seeded, one thread; score ``user_factors @ item_factors[need_type]``;
   - ``most_active``: the number of answers the person gave before the question was created
     (baseline; it sees the days between the week's start and the question, which the engine's
     weekly snapshot does not);
   - ``random``: seeded uniform scores (baseline);
   - ``*_routing``: the same Ranker fit on the routing task itself instead of the engine's
     rows: for every pre-split question whose accepted answer was verified before the split,
     every person who had answered before it, as of the question's week, labelled 1 for the
     accepted answerer and 0 for the others (see ``_routing_rows``). Not candidates for the
     engine's default: their label is "answered and was accepted", which folds who chooses
     to answer into the probability; the engine's is P(success | assigned), the figure its
     payouts, calibration and off-policy estimates read (the *answers* columns show the
     difference).

   Remaining ties are broken by one seeded random order per question, the same for all models.
8. **Intervals**: per-question MRR@10, percentile bootstrap over questions
   (``training.bootstrap_ci``) and paired bootstrap of the difference with the most-active
   baseline (``training.paired_bootstrap``), 2,000 resamples, seeded.
9. **Answers view** (probabilistic models): AUC and Brier score of P(accepted) on the answers
   given to the stage's evaluated-period questions (closed, with or without an accepted
   answer), features as of each answer's week, outcomes verified by the stage's horizon: how
   well each model predicts the engine's own target, success given the assignment.

No hyper-parameter was tuned: the rankers run with their defaults, ALS with the fixed values
of :data:`ALS_PARAMS`; the only choice made on data is the estimator, on validation.

Usage::

    python bench/bench_stackexchange.py [--source DIR] [--models hgb,logistic,...]
                                        [--n-boot 2000] [--seed 0] [--train-weeks N]
                                        [--val-quantile 0.6] [--json PATH]

Nothing printed here names a person: ids are never printed, only aggregates.
"""

from __future__ import annotations

import os

# implicit warns (and slows down) when OpenBLAS runs threads of its own: one thread, set
# before numpy loads BLAS (threadpoolctl limits it again when imported after numpy).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import scipy.sparse as sp  # noqa: E402

# bench/ is not a package: make the project and the adapter importable when run as a script
# or loaded by path.
BENCH = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH.parent
for _p in (str(PROJECT_ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import stackexchange_bundle as se  # noqa: E402

from features import (  # noqa: E402
    FEATURE_SET_VERSION,
    CommunitySnapshot,
    FeatureModel,
    attach_graph,
    build_features,
)
from graph import (  # noqa: E402
    community_graph_from_frames,
    import_bundle,
    load_frames,
    open_store,
    sqlite_url,
)
from matching import (  # noqa: E402
    PriorRanker,
    Ranker,
    TrainingSet,
    build_training_set,
    labelled_assignments,
    snapshot_time,
)
from matching._ranker import ESTIMATORS  # noqa: E402
from training import (  # noqa: E402
    auc,
    bootstrap_ci,
    brier,
    measured_missions,
    paired_bootstrap,
    ranking_metrics_per_query,
)

__all__ = [
    "ALL_MODELS",
    "ALS_PARAMS",
    "BASELINES",
    "DEFAULT_MODELS",
    "ENGINE_ESTIMATORS",
    "ROUTING_MODELS",
    "VAL_QUANTILE",
    "BenchResult",
    "format_table",
    "main",
    "run",
]

K = 10
ENGINE_ESTIMATORS = ESTIMATORS
BASELINES = ("most_active", "random")
# The same rankers trained on the routing task itself (whole pool per pre-split question,
# the accepted answerer as the one success); see _routing_rows. Reported, never selected.
ROUTING_MODELS = tuple(f"{e}_routing" for e in ENGINE_ESTIMATORS)
DEFAULT_MODELS = (*ENGINE_ESTIMATORS, "prior", "als", *BASELINES, *ROUTING_MODELS)
ALL_MODELS = DEFAULT_MODELS
REFERENCE = "most_active"
VAL_QUANTILE = 0.6
# Fixed, not tuned: 31 need types need few factors.
ALS_PARAMS = dict(factors=8, regularization=0.1, alpha=5.0, iterations=30)
_TIME = pl.Datetime("us", "UTC")


@dataclass
class BenchResult:
    """What :func:`run` measured, on the test split, and what the validation split chose.

    ``rows`` has one entry per model (test figures, its validation MRR@10 and its answers
    view); ``selected`` is the engine estimator with the best validation MRR@10, ``default``
    the estimator of ``matching.Ranker()``.
    """

    split_at: datetime
    val_split_at: datetime
    rows: list[dict]
    per_question: pl.DataFrame
    counts: dict
    timings: dict
    selected: str | None
    default: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"split_at": self.split_at.isoformat(),
                "val_split_at": self.val_split_at.isoformat(), "rows": self.rows,
                "counts": self.counts, "timings": self.timings, "selected": self.selected,
                "default": self.default, "info": self.info,
                "per_question": self.per_question.to_dicts()}


# ------------------------------------------------------------------------------ the data


def _store(source: Path, folder: Path, fit_until: datetime | str) -> tuple:
    """Bundle (tie weights and need types from before ``fit_until``) -> store -> frames."""
    bundle = folder / "bundle"
    raw = se.build_bundle(bundle, source, "csv", fit_until=fit_until)
    store = open_store(sqlite_url(folder / "store.db"))
    try:
        import_bundle(store, bundle, show_progress=False)
        frames = load_frames(store)
    finally:
        store.dispose()
    return frames, raw


def _training_rows(frames, model: FeatureModel, split_at: datetime, graph,  # noqa: ANN001
                   since: datetime | None = None) -> TrainingSet:
    """``training.training_rows``: answers given before the split whose outcome was verified
    before it, on questions whose measurement was complete then
    (``training.measured_missions``); ``since`` keeps only the answers given from then on."""
    labelled = labelled_assignments(frames, until=split_at).filter(
        pl.col("assigned_at") < split_at,
        pl.col("mission_id").is_in(measured_missions(frames, split_at).implode()))
    if since is not None:
        labelled = labelled.filter(pl.col("assigned_at") >= since)
    return build_training_set(frames, model, labelled, graph=graph)


def _routing_rows(frames, model: FeatureModel, split_at: datetime, graph,  # noqa: ANN001
                  since: datetime | None = None) -> pl.DataFrame:
    """Training rows of the routing task (the ``*_routing`` variants), before the split.

    For each question created before the split whose accepted answer was verified before it:
    every person who had answered before the question (and exists in its week's snapshot),
    labelled 1 for the accepted answerer and 0 for everyone else, with features as of the
    question's week. Questions whose accepted answerer is not among them are left out, and so
    are questions created before ``since`` when it is given.
    """
    accepted = (frames.verified_outcomes()
                .filter(pl.col("success") & (pl.col("measured_at") < split_at))
                .group_by("mission_id").agg(accepted_by=pl.col("person_id").first()))
    qs = (frames.missions.filter(pl.col("created_at") < split_at)
          .filter(pl.col("created_at") >= (since or frames.missions["created_at"].min()))
          .join(accepted, on="mission_id", how="inner").sort("created_at", "mission_id")
          .with_columns(_week=pl.col("created_at").map_elements(snapshot_time,
                                                                return_dtype=_TIME)))
    answers = frames.assignments.select("person_id", "assigned_at").sort("assigned_at")
    first_answer = answers.group_by("person_id").agg(pl.col("assigned_at").min())
    missions = {r["mission_id"]: r for r in frames.missions.iter_rows(named=True)}
    parts = []
    for (when,), batch in qs.partition_by("_week", maintain_order=True, as_dict=True).items():
        if frames.persons.filter(pl.col("joined_at") < when).is_empty():
            continue
        snap = attach_graph(CommunitySnapshot.build(frames, model, when), graph)
        for mission_id, created, winner in batch.select(
                "mission_id", "created_at", "accepted_by").iter_rows():
            pool = sorted(p for p in first_answer.filter(pl.col("assigned_at") < created)
                          ["person_id"].to_list() if p in snap.person_index)
            if winner not in pool:
                continue
            feats = build_features(model, snap, missions[mission_id], pool)
            parts.append(feats.with_columns(
                mission_id=pl.lit(mission_id), assigned_at=pl.lit(created, dtype=_TIME),
                label=(pl.col("candidate_id") == winner)))
    return pl.concat(parts).sort("assigned_at", "mission_id", "candidate_id")


def _stage_missions(frames, split_at: datetime, until: datetime | None,  # noqa: ANN001
                    ) -> pl.DataFrame:
    """Questions created in ``[split_at, until)`` whose 60-day window has closed by then.

    ``until=None`` (the test stage): created from ``split_at`` on, closed before the dump's
    end (status ``closed``). Otherwise the window must end before ``until``.
    """
    m = frames.missions.filter(pl.col("created_at") >= split_at)
    if until is None:
        return m.filter(pl.col("status") == "closed")
    return m.filter((pl.col("created_at") < until) & (pl.col("ends_at") < until))


def _verified(frames, until: datetime | None) -> pl.DataFrame:  # noqa: ANN001
    out = frames.verified_outcomes()
    return out if until is None else out.filter(pl.col("measured_at") < until)


def _eval_questions(frames, split_at: datetime, until: datetime | None  # noqa: ANN001
                    ) -> pl.DataFrame:
    """The stage's closed questions with an accepted answer (known by ``until``)."""
    accepted = (_verified(frames, until).filter(pl.col("success"))
                .group_by("mission_id").agg(accepted_by=pl.col("person_id").first()))
    return (_stage_missions(frames, split_at, until)
            .join(accepted, on="mission_id", how="inner")
            .sort("created_at", "mission_id"))


def _answer_rows(frames, model: FeatureModel, graph, split_at: datetime,  # noqa: ANN001
                 until: datetime | None) -> TrainingSet:
    """Answers to the stage's closed questions, labelled by acceptance known by ``until``."""
    ids = _stage_missions(frames, split_at, until)["mission_id"].implode()
    labelled = labelled_assignments(frames, until=until).filter(
        pl.col("mission_id").is_in(ids) & (pl.col("assigned_at") >= split_at))
    return build_training_set(frames, model, labelled, graph=graph)


def _pool_features(frames, model: FeatureModel, graph, questions: pl.DataFrame,  # noqa: ANN001
                   pool: list[str], split_at: datetime) -> pl.DataFrame:
    """Features of the whole pool for every question, as of the question's week."""
    missions = {r["mission_id"]: r for r in frames.missions.iter_rows(named=True)}
    as_of = [max(snapshot_time(t), split_at) for t in questions["created_at"].to_list()]
    qs = questions.with_columns(_as_of=pl.Series(as_of, dtype=_TIME))
    parts = []
    for (when,), batch in qs.partition_by("_as_of", maintain_order=True, as_dict=True).items():
        snap = attach_graph(CommunitySnapshot.build(frames, model, when), graph)
        for mission_id in batch["mission_id"].to_list():
            feats = build_features(model, snap, missions[mission_id], pool)
            parts.append(feats.with_columns(mission_id=pl.lit(mission_id)))
    return pl.concat(parts)


@dataclass
class _Stage:
    """One run of the protocol at one split (validation or test)."""

    name: str
    split_at: datetime
    until: datetime | None
    frames: Any
    training: TrainingSet | None
    routing: pl.DataFrame | None
    questions: pl.DataFrame
    pool: list[str]
    X: pl.DataFrame
    answers: TrainingSet | None
    timings: dict


def _stage(name: str, source: Path, folder: Path, split_at: datetime, until: datetime | None,
           models: tuple[str, ...], seed: int, train_weeks: int | None) -> _Stage:
    timings: dict = {}
    t = time.perf_counter()
    frames, _ = _store(source, folder, fit_until=split_at)
    timings["bundle_and_import_s"] = time.perf_counter() - t

    t = time.perf_counter()
    graph = community_graph_from_frames(frames)
    fm = FeatureModel(seed=seed).fit(frames, split_at)
    since = None if train_weeks is None else split_at - timedelta(weeks=train_weeks)
    rankers = [m for m in models if m in ENGINE_ESTIMATORS or m in ROUTING_MODELS
               or m == "prior"]
    training = (_training_rows(frames, fm, split_at, graph, since)
                if any(m in ENGINE_ESTIMATORS for m in models) else None)
    timings["training_rows_s"] = time.perf_counter() - t
    routing = None
    if any(m in ROUTING_MODELS for m in models):
        t = time.perf_counter()
        routing = _routing_rows(frames, fm, split_at, graph, since)
        timings["routing_rows_s"] = time.perf_counter() - t

    questions = _eval_questions(frames, split_at, until)
    pool = sorted(se.candidate_pool(frames.assignments, split_at)
                  & set(frames.persons["person_id"].to_list()))
    t = time.perf_counter()
    X = _pool_features(frames, fm, graph, questions, pool, split_at)
    label_of = dict(zip(questions["mission_id"], questions["accepted_by"], strict=True))
    X = X.with_columns(label=(pl.col("candidate_id") == pl.col("mission_id").replace_strict(
        label_of, return_dtype=pl.String)).cast(pl.Int64))
    answers = _answer_rows(frames, fm, graph, split_at, until) if rankers else None
    timings["eval_features_s"] = time.perf_counter() - t
    return _Stage(name, split_at, until, frames, training, routing, questions, pool, X,
                  answers, timings)


# ------------------------------------------------------------------------------ models


def _als_scores(frames, split_at: datetime, pool: list[str], questions: pl.DataFrame,  # noqa: ANN001
                seed: int) -> np.ndarray:
    """implicit ALS on person x need type (pre-split answers); one score per (question, pool)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    needs = sorted(frames.vocabulary.filter(pl.col("kind") == "need_type")["value"].to_list())
    nindex = {n: j for j, n in enumerate(needs)}
    pindex = {p: i for i, p in enumerate(pool)}
    answers = (frames.assignments.filter(pl.col("assigned_at") < split_at)
               .join(frames.missions.select("mission_id", "need_type"), on="mission_id"))
    accepted = set(frames.verified_outcomes().filter(
        pl.col("success") & (pl.col("measured_at") < split_at))["assignment_id"].to_list())
    rows, cols, vals = [], [], []
    for aid, pid, need in answers.select("assignment_id", "person_id", "need_type").iter_rows():
        if pid in pindex and need in nindex:
            rows.append(pindex[pid])
            cols.append(nindex[need])
            vals.append(1.0 + (aid in accepted))
    user_items = sp.csr_matrix((vals, (rows, cols)), shape=(len(pool), len(needs)),
                               dtype=np.float32)
    user_items.sum_duplicates()
    als = AlternatingLeastSquares(**ALS_PARAMS, random_state=seed, num_threads=1)
    with threadpool_limits(1):
        als.fit(user_items, show_progress=False)
    users = np.asarray(als.user_factors)
    items = np.asarray(als.item_factors)
    out = []
    for need in questions["need_type"].to_list():
        j = nindex.get(need)
        out.append(users @ items[j] if j is not None else np.zeros(len(pool)))
    return np.concatenate(out).astype(np.float64)


def _most_active(frames, pool: list[str], questions: pl.DataFrame) -> np.ndarray:  # noqa: ANN001
    """Answers each pool person gave before each question was created."""
    times = frames.assignments.filter(pl.col("person_id").is_in(pool)).select(
        "person_id", "assigned_at")
    by_person = {p: np.sort(g["assigned_at"].dt.epoch("us").to_numpy())
                 for (p,), g in times.partition_by("person_id", as_dict=True).items()}
    out = []
    for t in questions["created_at"].dt.epoch("us").to_list():
        out.append([np.searchsorted(by_person.get(p, np.zeros(0)), t, side="left")
                    for p in pool])
    return np.asarray(out, dtype=np.float64).ravel()


def _ranker_scores(ranker, X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    p = ranker.predict_proba(X)
    if isinstance(ranker, Ranker):  # isotonic steps: order equal probabilities by the base score
        return p, ranker.predict_uncalibrated(X)
    return p, ranker.decision_function(X)


def _fit(model: str, stage: _Stage, seed: int) -> Ranker | PriorRanker:
    if model == "prior":
        return PriorRanker()
    est = model.removesuffix("_routing")
    rows = stage.routing if model in ROUTING_MODELS else stage.training.rows
    return Ranker(estimator=est, random_state=seed, n_threads=1).fit(
        rows, rows["label"], times=rows["assigned_at"],
        groups=rows["mission_id"] if est == "lgbm_rank" else None)


def _answers_view(ranker, answers: TrainingSet | None) -> dict:  # noqa: ANN001
    """AUC, Brier, mean P and observed rate of P(accepted) on the stage's answers."""
    if answers is None or not answers.n:
        return {}
    y = answers.rows["label"].cast(pl.Int64).to_numpy()
    p = np.asarray(ranker.predict_proba(answers.rows), dtype=np.float64)
    return {"auc": auc(y, p), "brier": brier(y, p), "mean_p": float(p.mean()),
            "rate": float(y.mean()), "n": int(len(y))}


def _score(stage: _Stage, models: tuple[str, ...], seed: int
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, dict], dict]:
    rng = np.random.default_rng(seed)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    views: dict[str, dict] = {}
    fit_s: dict[str, float] = {}
    frames, X, questions, pool = stage.frames, stage.X, stage.questions, stage.pool
    for m in models:
        t = time.perf_counter()
        if m in ENGINE_ESTIMATORS or m in ROUTING_MODELS or m == "prior":
            ranker = _fit(m, stage, seed)
            scores[m] = _ranker_scores(ranker, X)
            views[m] = _answers_view(ranker, stage.answers)
        elif m == "als":
            s = _als_scores(frames, stage.split_at, pool, questions, seed)
            scores[m] = (s, s)
        elif m == "most_active":
            s = _most_active(frames, pool, questions)
            scores[m] = (s, s)
        else:  # random
            s = rng.random(X.height)
            scores[m] = (s, s)
        fit_s[m] = time.perf_counter() - t
    return scores, views, fit_s


# ------------------------------------------------------------------------------ metrics


def _metrics(frame: pl.DataFrame, scores: dict[str, tuple[np.ndarray, np.ndarray]],
             tiebreak: np.ndarray, questions: pl.DataFrame) -> pl.DataFrame:
    """MRR@10 and hit@10 per question and model (0 for a cold-start answerer)."""
    out = []
    n_q = questions.height
    n_pool = frame.height // n_q
    # rows come question by question (in the order of ``questions``), the pool in each
    expected = np.repeat(questions["mission_id"].to_numpy(), n_pool)
    if frame.height != n_q * n_pool or not (frame["mission_id"].to_numpy() == expected).all():
        raise AssertionError("pool features are not laid out question by question")
    for name, (primary, secondary) in scores.items():
        # rank within each question: primary desc, secondary desc, then the shared random order
        q = np.repeat(np.arange(n_q), n_pool)
        order = np.lexsort((tiebreak, -secondary, -primary, q))
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.tile(np.arange(n_pool), n_q)
        ranked = frame.select("mission_id", "candidate_id", "label").with_columns(
            rank_score=pl.Series(-position.astype(np.float64)))
        per_q = ranking_metrics_per_query(ranked, "mission_id", "rank_score", "label", K)
        out.append(per_q.select(
            "mission_id", model=pl.lit(name),
            mrr_at_10=pl.col("mrr_at_k").fill_null(0.0),
            hit_at_10=pl.col("recall_at_k").fill_null(0.0),
            warm=pl.col("n_relevant") > 0))
    return pl.concat(out)


def _summary(per_q: pl.DataFrame, models: list[str], n_boot: int, seed: int) -> list[dict]:
    values = {m: per_q.filter(pl.col("model") == m).sort("mission_id") for m in models}
    mrr = _per_model_mrr(per_q, models)
    rows = []
    for m in models:
        ci = bootstrap_ci(mrr[m], n_boot=n_boot, seed=seed)
        warm = values[m].filter(pl.col("warm"))["mrr_at_10"]
        row = {"model": m, "mrr_at_10": ci.estimate, "ci_low": ci.ci_low, "ci_high": ci.ci_high,
               "hit_at_10": float(values[m]["hit_at_10"].mean()),
               "mrr_at_10_warm": float(warm.mean()) if warm.len() else None,
               "n_questions": int(len(mrr[m]))}
        row["vs_most_active"] = _paired(mrr, m, REFERENCE, n_boot, seed)
        rows.append(row)
    return rows


def _per_model_mrr(per_q: pl.DataFrame, models: list[str]) -> dict[str, np.ndarray]:
    return {m: per_q.filter(pl.col("model") == m).sort("mission_id")["mrr_at_10"].to_numpy()
            for m in models}


def _paired(mrr: dict[str, np.ndarray], model: str, reference: str | None, n_boot: int,
            seed: int) -> dict | None:
    """Paired bootstrap of ``model - reference`` over the same questions."""
    if reference is None or reference not in mrr or reference == model:
        return None
    d = paired_bootstrap(mrr[model], mrr[reference], n_boot=n_boot, seed=seed)
    return {"diff": d.mean_diff, "ci_low": d.ci_low, "ci_high": d.ci_high,
            "share_better": d.share_a_better}


def _evaluate_stage(stage: _Stage, models: tuple[str, ...], n_boot: int, seed: int
                    ) -> tuple[list[dict], pl.DataFrame, dict]:
    scores, views, fit_s = _score(stage, models, seed)
    tiebreak = np.random.default_rng(seed + 1).random(stage.X.height)
    per_q = _metrics(stage.X, scores, tiebreak, stage.questions)
    t = time.perf_counter()
    rows = _summary(per_q, list(models), n_boot, seed)
    for r in rows:
        r["answers"] = views.get(r["model"]) or None
    stage.timings["fit_and_score_s"] = fit_s
    stage.timings["bootstrap_s"] = time.perf_counter() - t
    return rows, per_q, _counts(stage)


def _counts(stage: _Stage) -> dict:
    warm = int(stage.questions["accepted_by"].is_in(stage.pool).sum())
    ts = stage.training
    c = {
        "questions": stage.questions.height, "warm": warm,
        "cold_start": stage.questions.height - warm, "pool": len(stage.pool),
        "training_rows": ts.n if ts is not None else 0,
        "training_positives": int(ts.rows["label"].sum()) if ts is not None and ts.n else 0,
        "training_newcomer_rows": ts.newcomer_rows if ts is not None else 0,
        "training_skipped_unknown_candidate": ts.skipped_unknown_candidate if ts else 0,
        "answers_rows": stage.answers.n if stage.answers is not None else 0,
    }
    if stage.routing is not None:
        c["routing_rows"] = stage.routing.height
        c["routing_questions"] = stage.routing["mission_id"].n_unique()
    return c


def _best(rows: list[dict], among: tuple[str, ...]) -> str | None:
    """The model of ``among`` with the best MRR@10 (the first listed on a tie)."""
    cands = [r for r in rows if r["model"] in among]
    if not cands:
        return None
    order = {m: i for i, m in enumerate(among)}
    return max(cands, key=lambda r: (r["mrr_at_10"], -order[r["model"]]))["model"]


# ------------------------------------------------------------------------------ run


def run(source: str | Path = se.DEFAULT_SOURCE, models: tuple[str, ...] = DEFAULT_MODELS,
        n_boot: int = 2000, seed: int = 0, workdir: str | Path | None = None,
        train_weeks: int | None = None, val_quantile: float = VAL_QUANTILE) -> BenchResult:
    """Run the benchmark (see the module docstring): validation stage, then test stage.

    Parameters
    ----------
    source : path
        The dump's folder.
    models : tuple of str
        Subset of :data:`ALL_MODELS`; ``most_active`` is added when missing (the reference).
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the rankers, ALS, the random baseline, the tie-breaks and the bootstrap.
    workdir : path, optional
        Folder for the bundles and the SQLite stores (default: a temporary folder, removed).
    train_weeks : int, optional
        Train only on the last ``train_weeks`` weeks before each split (a reduced setting
        for quick runs and the smoke test; default: the whole training period, the protocol).
    val_quantile : float
        Quantile of question dates used as the validation split (below the test split's).
    """
    unknown = set(models) - set(ALL_MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; known: {ALL_MODELS}")
    models = tuple(dict.fromkeys([*models, REFERENCE] if REFERENCE not in models else models))
    source = Path(source)
    t_all = time.perf_counter()
    dates = se.build_frames(source, fit_until=None)["missions"]["created_at"]
    split_at = se.split_date(dates)
    val_split_at = se.split_date(dates, val_quantile)
    if not val_split_at < split_at:
        raise ValueError(f"val_quantile={val_quantile} must fall before the test split "
                         f"({se.SPLIT_QUANTILE})")
    with tempfile.TemporaryDirectory(prefix="bigcrunch-se-") as tmp:
        root = Path(workdir or tmp)
        val = _stage("validation", source, root / "validation", val_split_at, split_at,
                     models, seed, train_weeks)
        val_rows, _, val_counts = _evaluate_stage(val, models, n_boot, seed)
        test = _stage("test", source, root / "test", split_at, None, models, seed,
                      train_weeks)
        rows, per_q, counts = _evaluate_stage(test, models, n_boot, seed)

    val_by = {r["model"]: r for r in val_rows}
    for r in rows:
        v = val_by[r["model"]]
        r["validation"] = {k: v[k] for k in ("mrr_at_10", "ci_low", "ci_high", "hit_at_10",
                                              "mrr_at_10_warm", "vs_most_active", "answers")}
    selected = _best(val_rows, ENGINE_ESTIMATORS)
    mrr = _per_model_mrr(per_q, list(models))
    for r in rows:
        r["vs_selected"] = _paired(mrr, r["model"], selected, n_boot, seed)
    default = Ranker().estimator
    info = {"n_boot": n_boot, "seed": seed, "k": K, "als_params": ALS_PARAMS,
            "train_weeks": train_weeks, "val_quantile": val_quantile,
            "feature_set": FEATURE_SET_VERSION, "validation_counts": val_counts,
            "routing_selected": _best(val_rows, ROUTING_MODELS),
            "test_best_engine_estimator": _best(rows, ENGINE_ESTIMATORS)}
    timings = {"validation": val.timings, "test": test.timings,
               "total_s": time.perf_counter() - t_all}
    return BenchResult(split_at, val_split_at, rows, per_q, counts, timings, selected,
                       default, info)


def _ci(lo: float | None, hi: float | None) -> str:
    return "[   n/a,    n/a]" if lo is None else f"[{lo:6.3f}, {hi:6.3f}]"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _diff(d: dict | None) -> str:
    return "-" if d is None else f"{d['diff']:+.3f} {_ci(d['ci_low'], d['ci_high'])}"


def _verdict(result: BenchResult, name: str) -> str:
    w = next(r for r in result.rows if r["model"] == name)
    d = w["vs_most_active"]
    verdict = "beats" if d and d["ci_low"] is not None and d["ci_low"] > 0 else (
        "is not shown to beat")
    v = w["validation"]["vs_most_active"]
    return (f"{name}: validation MRR@10 {w['validation']['mrr_at_10']:.3f} (vs most-active "
            f"{_diff(v)}), test MRR@10 {w['mrr_at_10']:.3f}; on the test questions it "
            f"{verdict} the most-active baseline (diff {d['diff']:+.3f}, 95 % CI "
            f"{_ci(d['ci_low'], d['ci_high'])}).")


def format_table(result: BenchResult) -> str:
    """The result as a Markdown table, with the counts and the verdicts below it."""
    c, vc = result.counts, result.info["validation_counts"]
    lines = [
        "| model | validation MRR@10 | validation diff vs most_active [95 % CI] "
        "| test MRR@10 [95 % CI] | test hit@10 | test diff vs most_active [95 % CI] "
        "| share better | test diff vs selected [95 % CI] | answers AUC | answers Brier "
        "| answers mean P / rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        a = r["answers"] or {}
        name = r["model"] + (" (selected)" if r["model"] == result.selected else "")
        d = r["vs_most_active"]
        cells = [name, f"{r['validation']['mrr_at_10']:.3f}",
                 _diff(r["validation"]["vs_most_active"]),
                 f"{r['mrr_at_10']:.3f} {_ci(r['ci_low'], r['ci_high'])}",
                 f"{r['hit_at_10']:.3f}", _diff(d), "-" if d is None else _num(d["share_better"]),
                 _diff(r.get("vs_selected")),
                 _num(a.get("auc")), _num(a.get("brier")),
                 f"{a['mean_p']:.3f} / {a['rate']:.3f}" if a else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    since = ("" if result.info.get("train_weeks") is None
             else f", last {result.info['train_weeks']} weeks before each split only")
    lines += [
        "",
        f"validation: split {result.val_split_at:%Y-%m-%d %H:%M:%S}Z, "
        f"{vc['questions']} questions (created before the test split, window and acceptance "
        f"closed before it): {vc['warm']} accepted answerers in the pool of {vc['pool']}, "
        f"{vc['cold_start']} cold start; training rows {vc['training_rows']} "
        f"({vc['training_positives']} accepted{since}).",
        f"test: split {result.split_at:%Y-%m-%d %H:%M:%S}Z; {c['questions']} questions "
        f"(closed, with an accepted answer): {c['warm']} accepted answerers in the pool, "
        f"{c['cold_start']} cold start (MRR 0 for every model); pool {c['pool']} persons; "
        f"training rows {c['training_rows']} ({c['training_positives']} accepted{since}; "
        f"{c['training_newcomer_rows']} of them by persons who joined in the answer's week, "
        f"{c['training_skipped_unknown_candidate']} left out)"
        + (f"; *_routing rows {c['routing_rows']} ({c['routing_questions']} pre-split "
           "questions x the persons who had answered before each)"
           if "routing_rows" in c else "")
        + f". Answers view: {c['answers_rows']} answers to the test period's closed questions.",
        f"bootstrap: {result.info['n_boot']} resamples of questions, seed "
        f"{result.info['seed']}; feature set {result.info.get('feature_set')}.",
    ]
    if result.selected is not None:
        lines.append("selected on validation (engine estimators): "
                     + _verdict(result, result.selected))
        default = result.default
        head = f"engine default (matching.Ranker().estimator = {default!r}) "
        if default == result.selected:
            lines.append(head + "is the selected estimator.")
        elif default in {r["model"] for r in result.rows}:
            lines.append(head + f"is NOT the selected estimator ({result.selected}): "
                         + _verdict(result, default))
        else:
            lines.append(head + "was not among the models run.")
    if result.info.get("routing_selected"):
        lines.append("best *_routing variant on validation (not an engine option): "
                     + _verdict(result, result.info["routing_selected"]))
    t = result.timings
    stages = []
    for name in ("validation", "test"):
        s = t[name]
        fits = ", ".join(f"{m} {v:.2f}" for m, v in s["fit_and_score_s"].items())
        routing = f", routing rows {s['routing_rows_s']:.1f}" if "routing_rows_s" in s else ""
        stages.append(f"{name}: bundle+import {s['bundle_and_import_s']:.1f}, training rows "
                      f"{s['training_rows_s']:.1f}{routing}, evaluation features "
                      f"{s['eval_features_s']:.1f}, fit+score [{fits}]")
    lines.append(f"time: total {t['total_s']:.1f} s ({'; '.join(stages)}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(se.DEFAULT_SOURCE), help="the dump's folder")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated subset of {','.join(ALL_MODELS)} (default: all)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-weeks", type=int, default=None,
                        help="train on the last N weeks before each split only (quick runs; "
                        "default: the whole training period)")
    parser.add_argument("--val-quantile", type=float, default=VAL_QUANTILE,
                        help="quantile of question dates of the validation split")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    result = run(args.source, models, n_boot=args.n_boot, seed=args.seed,
                 train_weeks=args.train_weeks, val_quantile=args.val_quantile)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
