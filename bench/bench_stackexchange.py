"""Real-data benchmark: routing Stack Exchange beer questions to the people who answer them.

The data are the public dump of beer.stackexchange.com (CC BY-SA 3.0, see
``docs/stackexchange.md``), turned into a community bundle by ``bench/stackexchange_bundle.py``:
a question is a mission, an answerer a candidate, the accepted answer the success; users who
answered, commented on or edited each other's posts are tied, each tie dated by the pair's
first interaction.

Protocol
--------
1. **Bundle and store.** The adapter builds the bundle into a temporary folder (tie weights and
   need types from interactions before the split only: ``--fit-until split``); it is imported
   into a fresh SQLite store in the same folder (under ``/tmp``) and read back with
   ``graph.load_frames``. Nothing of the dump is kept afterwards.
2. **Time split** at the 80 % quantile of question dates (``split_date`` of the adapter, the
   date it prints: 2016-02-19 22:46:44Z). Every learned part sees only what happened before it.
3. **Training rows**: answers given before the split whose outcome (accepted or not) was
   verified before it, labelled *accepted*, with features as of the start of each answer's week
   (``matching.build_training_set``, as ``training.training_rows`` does); the rankers are fit as
   ``training.fit_engine_model`` fits them (``Ranker(estimator, random_state=seed,
   n_threads=1)``, calibrated on the latest 20 % of the rows; ``lgbm_rank`` grouped by
   question). An answer by a person who joined in the answer's own week is skipped by
   ``build_training_set`` (the person is not in the week's snapshot yet; counted in the
   output). Answers of the site's first week, when no person existed yet at the week's start,
   are left out here for the same reason (``training_rows`` fails on such an empty snapshot).
4. **Test questions**: every question created at or after the split whose 60-day window has
   closed (status ``closed``) and that has an accepted answer (a verified success).
5. **Candidate pool**: fixed, the persons who answered at least once before the split (393).
   This is the *routing* task: the whole pool is ranked for each test question. The accepted
   answerer's reciprocal rank within the top 10 is the question's MRR@10 (0 when they are not
   in the top 10, or not in the pool at all: a *cold-start* answerer, counted and reported).
6. **Features of the pool** for a test question are built as of the start of the question's
   week, but never before the split (so that the whole fixed pool exists in the snapshot);
   that is always at or before the question's creation: no later tie, answer or outcome is seen.
   Dump-time counts (reputation, views, scores) are never read by the adapter.
7. **Models**:

   - ``hgb``, ``logistic``, ``lightgbm``, ``lgbm_rank``: :class:`matching.Ranker` with each
     estimator, calibrated as the Ranker does; ranked by calibrated probability, ties by the
     base model's score;
   - ``prior``: the day-one :class:`matching.PriorRanker` (no training);
   - ``als``: *implicit*'s ``AlternatingLeastSquares`` on the person x need-type confidence
     matrix of pre-split answers (an answer counts 1, an answer accepted before the split
     counts 1 more), seeded, one thread; score ``user_factors @ item_factors[need_type]``;
   - ``most_active``: the number of answers the person gave before the question was created
     (baseline; it sees the days between the week's start and the question, which the engine's
     weekly snapshot does not);
   - ``random``: seeded uniform scores (baseline).

   Remaining ties are broken by one seeded random order per question, the same for all models.

   Outside the protocol, on request (``--models ...,hgb_routing,...``): the ``*_routing``
   variants fit the same Ranker on the routing task itself: for every pre-split question
   whose accepted answer was verified before the split, every person who had answered before
   it, as of the question's week, labelled 1 for the accepted answerer and 0 for the others
   (see ``_routing_rows``). They show what the engine's training rows (answers only, so
   P(accepted | answered)) leave on the table for this task.
8. **Intervals**: per-question MRR@10, percentile bootstrap over questions
   (``training.bootstrap_ci``) and paired bootstrap of the difference with the most-active
   baseline and with the best row (``training.paired_bootstrap``), 2,000 resamples, seeded.

No hyper-parameter was tuned on the test questions: the rankers run with their defaults, ALS
with the fixed values of :data:`ALS_PARAMS`.

Usage::

    python bench/bench_stackexchange.py [--source DIR] [--models hgb,logistic,...]
                                        [--n-boot 2000] [--seed 0] [--train-weeks N]
                                        [--json PATH]

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
    build_training_set,
    labelled_assignments,
    snapshot_time,
)
from training import bootstrap_ci, paired_bootstrap, ranking_metrics_per_query  # noqa: E402

__all__ = [
    "ALL_MODELS",
    "ALS_PARAMS",
    "BASELINES",
    "DEFAULT_MODELS",
    "ENGINE_ESTIMATORS",
    "ROUTING_MODELS",
    "BenchResult",
    "format_table",
    "main",
    "run",
]

K = 10
ENGINE_ESTIMATORS = ("hgb", "logistic", "lightgbm", "lgbm_rank")
BASELINES = ("most_active", "random")
DEFAULT_MODELS = (*ENGINE_ESTIMATORS, "prior", "als", *BASELINES)
# Not part of the protocol: the same rankers trained on the routing task itself (whole pool
# per pre-split question, the accepted answerer as the one success); see _routing_rows.
ROUTING_MODELS = tuple(f"{e}_routing" for e in ENGINE_ESTIMATORS)
ALL_MODELS = (*DEFAULT_MODELS, *ROUTING_MODELS)
REFERENCE = "most_active"
# Fixed, not tuned on the test questions: 31 need types need few factors.
ALS_PARAMS = dict(factors=8, regularization=0.1, alpha=5.0, iterations=30)
_TIME = pl.Datetime("us", "UTC")


@dataclass
class BenchResult:
    """What :func:`run` measured: one row per model, per-question values, counts and times."""

    split_at: datetime
    rows: list[dict]
    per_question: pl.DataFrame
    counts: dict
    timings: dict
    winner: str | None
    best: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"split_at": self.split_at.isoformat(), "rows": self.rows,
                "counts": self.counts, "timings": self.timings, "winner": self.winner,
                "best": self.best, "info": self.info,
                "per_question": self.per_question.to_dicts()}


# ------------------------------------------------------------------------------ the data


def _load(source: Path, workdir: Path, timings: dict) -> tuple:
    t = time.perf_counter()
    bundle = workdir / "bundle"
    raw = se.build_bundle(bundle, source, "csv", fit_until="split")
    timings["bundle_s"] = time.perf_counter() - t
    split_at = se.split_date(raw["missions"]["created_at"])

    t = time.perf_counter()
    store = open_store(sqlite_url(workdir / "store.db"))
    try:
        import_bundle(store, bundle, show_progress=False)
        frames = load_frames(store)
    finally:
        store.dispose()
    timings["import_s"] = time.perf_counter() - t
    return frames, split_at


def _training_rows(frames, model: FeatureModel, split_at: datetime, graph,  # noqa: ANN001, ANN202
                   since: datetime | None = None):
    """``training.training_rows``, minus the weeks whose snapshot holds no person yet.

    ``since`` keeps only the answers given from then on (a reduced setting for quick runs).
    """
    labelled = labelled_assignments(frames, until=split_at).filter(
        pl.col("assigned_at") < split_at)
    if since is not None:
        labelled = labelled.filter(pl.col("assigned_at") >= since)
    first_person = frames.persons["joined_at"].min()
    week = pl.col("assigned_at").map_elements(snapshot_time, return_dtype=_TIME)
    early = labelled.filter(week <= first_person).height
    ts = build_training_set(frames, model, labelled.filter(week > first_person), graph=graph)
    return ts, early


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


def _test_questions(frames, split_at: datetime) -> pl.DataFrame:  # noqa: ANN001
    """Closed questions created at or after the split, with their accepted answerer."""
    accepted = (frames.verified_outcomes().filter(pl.col("success"))
                .group_by("mission_id").agg(accepted_by=pl.col("person_id").first()))
    return (frames.missions
            .filter((pl.col("created_at") >= split_at) & (pl.col("status") == "closed"))
            .join(accepted, on="mission_id", how="inner")
            .sort("created_at", "mission_id"))


def _pool_features(frames, model: FeatureModel, graph, questions: pl.DataFrame,  # noqa: ANN001
                   pool: list[str], split_at: datetime) -> pl.DataFrame:
    """Features of the whole pool for every test question, as of the question's week."""
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


def _summary(per_q: pl.DataFrame, models: list[str], n_boot: int, seed: int
             ) -> tuple[list[dict], str]:
    values = {m: per_q.filter(pl.col("model") == m).sort("mission_id") for m in models}
    mrr = {m: v["mrr_at_10"].to_numpy() for m, v in values.items()}
    best = max(models, key=lambda m: (mrr[m].mean(), -models.index(m)))
    rows = []
    for m in models:
        ci = bootstrap_ci(mrr[m], n_boot=n_boot, seed=seed)
        warm = values[m].filter(pl.col("warm"))["mrr_at_10"]
        row = {"model": m, "mrr_at_10": ci.estimate, "ci_low": ci.ci_low, "ci_high": ci.ci_high,
               "hit_at_10": float(values[m]["hit_at_10"].mean()),
               "mrr_at_10_warm": float(warm.mean()) if warm.len() else None,
               "n_questions": int(len(mrr[m]))}
        for ref, key in ((REFERENCE, "vs_most_active"), (best, "vs_best")):
            if ref in mrr and ref != m:
                d = paired_bootstrap(mrr[m], mrr[ref], n_boot=n_boot, seed=seed)
                row[key] = {"diff": d.mean_diff, "ci_low": d.ci_low, "ci_high": d.ci_high,
                            "share_better": d.share_a_better}
            else:
                row[key] = None
        rows.append(row)
    return rows, best


# ------------------------------------------------------------------------------ run


def run(source: str | Path = se.DEFAULT_SOURCE, models: tuple[str, ...] = DEFAULT_MODELS,
        n_boot: int = 2000, seed: int = 0, workdir: str | Path | None = None,
        train_weeks: int | None = None) -> BenchResult:
    """Run the benchmark (see the module docstring) and return the table's rows.

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
        Folder for the bundle and the SQLite store (default: a temporary folder, removed).
    train_weeks : int, optional
        Train only on the last ``train_weeks`` weeks before the split (a reduced setting for
        quick runs and the smoke test; default: the whole training period, the protocol).
    """
    unknown = set(models) - set(ALL_MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; known: {ALL_MODELS}")
    models = tuple(dict.fromkeys([*models, REFERENCE] if REFERENCE not in models else models))
    t_all = time.perf_counter()
    timings: dict = {}
    with tempfile.TemporaryDirectory(prefix="bigcrunch-se-") as tmp:
        frames, split_at = _load(Path(source), Path(workdir or tmp), timings)

    t = time.perf_counter()
    graph = community_graph_from_frames(frames)
    fm = FeatureModel(seed=seed).fit(frames, split_at)
    engine = [m for m in models if m in ENGINE_ESTIMATORS]
    since = None if train_weeks is None else split_at - timedelta(weeks=train_weeks)
    ts, early = _training_rows(frames, fm, split_at, graph, since) if engine else (None, 0)
    timings["training_rows_s"] = time.perf_counter() - t
    routing = None
    if any(m in ROUTING_MODELS for m in models):
        t = time.perf_counter()
        routing = _routing_rows(frames, fm, split_at, graph, since)
        timings["routing_rows_s"] = time.perf_counter() - t

    questions = _test_questions(frames, split_at)
    pool = sorted(se.candidate_pool(frames.assignments, split_at)
                  & set(frames.persons["person_id"].to_list()))
    t = time.perf_counter()
    X = _pool_features(frames, fm, graph, questions, pool, split_at)
    timings["test_features_s"] = time.perf_counter() - t
    label_of = dict(zip(questions["mission_id"], questions["accepted_by"], strict=True))
    X = X.with_columns(label=(pl.col("candidate_id") == pl.col("mission_id").replace_strict(
        label_of, return_dtype=pl.String)).cast(pl.Int64))

    rng = np.random.default_rng(seed)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fit_s: dict[str, float] = {}
    for m in models:
        t = time.perf_counter()
        if m in ENGINE_ESTIMATORS:
            ranker = Ranker(estimator=m, random_state=seed, n_threads=1).fit(
                ts.rows, ts.rows["label"], times=ts.rows["assigned_at"],
                groups=ts.rows["mission_id"] if m == "lgbm_rank" else None)
            scores[m] = _ranker_scores(ranker, X)
        elif m in ROUTING_MODELS:
            est = m.removesuffix("_routing")
            ranker = Ranker(estimator=est, random_state=seed, n_threads=1).fit(
                routing, routing["label"], times=routing["assigned_at"],
                groups=routing["mission_id"] if est == "lgbm_rank" else None)
            scores[m] = _ranker_scores(ranker, X)
        elif m == "prior":
            scores[m] = _ranker_scores(PriorRanker(), X)
        elif m == "als":
            s = _als_scores(frames, split_at, pool, questions, seed)
            scores[m] = (s, s)
        elif m == "most_active":
            s = _most_active(frames, pool, questions)
            scores[m] = (s, s)
        else:  # random
            s = rng.random(X.height)
            scores[m] = (s, s)
        fit_s[m] = time.perf_counter() - t
    timings["fit_and_score_s"] = fit_s

    tiebreak = np.random.default_rng(seed + 1).random(X.height)
    per_q = _metrics(X, scores, tiebreak, questions)
    t = time.perf_counter()
    rows, best = _summary(per_q, list(models), n_boot, seed)
    timings["bootstrap_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    engine_rows = [r for r in rows if r["model"] in ENGINE_ESTIMATORS]
    winner = max(engine_rows, key=lambda r: r["mrr_at_10"])["model"] if engine_rows else None
    routing_rows = [r for r in rows if r["model"] in ROUTING_MODELS]

    warm = int(questions["accepted_by"].is_in(pool).sum())
    counts = {
        "test_questions": questions.height, "warm": warm, "cold_start": questions.height - warm,
        "pool": len(pool),
        "training_rows": ts.n if ts is not None else 0,
        "training_positives": int(ts.rows["label"].sum()) if ts is not None and ts.n else 0,
        "training_skipped_unknown_candidate": ts.skipped_unknown_candidate if ts else 0,
        "training_skipped_first_week": early,
    }
    if routing is not None:
        counts["routing_rows"] = routing.height
        counts["routing_questions"] = routing["mission_id"].n_unique()
    info = {"n_boot": n_boot, "seed": seed, "k": K, "als_params": ALS_PARAMS,
            "train_weeks": train_weeks,
            "feature_set": FEATURE_SET_VERSION}
    if routing_rows:
        info["routing_winner"] = max(routing_rows, key=lambda r: r["mrr_at_10"])["model"]
    return BenchResult(split_at, rows, per_q, counts, timings, winner, best, info)


def _ci(lo: float | None, hi: float | None) -> str:
    return "[   n/a,    n/a]" if lo is None else f"[{lo:6.3f}, {hi:6.3f}]"


def format_table(result: BenchResult) -> str:
    """The result as a Markdown table, with the counts and the verdict below it."""
    c = result.counts
    lines = [
        f"| model | MRR@10 [95 % CI] | hit@10 | MRR@10 warm | diff vs most_active [95 % CI] "
        f"| share better | diff vs best ({result.best}) [95 % CI] | share better |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        cells = [r["model"], f"{r['mrr_at_10']:.3f} {_ci(r['ci_low'], r['ci_high'])}",
                 f"{r['hit_at_10']:.3f}",
                 "n/a" if r["mrr_at_10_warm"] is None else f"{r['mrr_at_10_warm']:.3f}"]
        for key in ("vs_most_active", "vs_best"):
            d = r[key]
            if d is None:
                cells += ["-", "-"]
            else:
                cells += [f"{d['diff']:+.3f} {_ci(d['ci_low'], d['ci_high'])}",
                          "n/a" if d["share_better"] is None else f"{d['share_better']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"split {result.split_at:%Y-%m-%d %H:%M:%S}Z; {c['test_questions']} test questions "
        f"(closed, with an accepted answer): {c['warm']} accepted answerers in the pool, "
        f"{c['cold_start']} cold start (MRR 0 for every model); pool {c['pool']} persons.",
        f"training rows {c['training_rows']} ({c['training_positives']} accepted"
        + ("" if result.info.get("train_weeks") is None
           else f", last {result.info['train_weeks']} weeks before the split only")
        + "); left out: "
        f"{c['training_skipped_unknown_candidate']} answers by persons who joined in the "
        f"answer's week, {c['training_skipped_first_week']} answers of the site's first week."
        + (f" *_routing rows: {c['routing_rows']} ({c['routing_questions']} pre-split "
           "questions x the persons who had answered before each)."
           if "routing_rows" in c else ""),
        f"bootstrap: {result.info['n_boot']} resamples of questions, seed {result.info['seed']}; "
        "'MRR@10 warm' averages over the questions whose answerer is in the pool; feature set "
        f"{result.info.get('feature_set')}.",
    ]
    for label, name in (("best engine estimator", result.winner),
                        ("best *_routing variant", result.info.get("routing_winner"))):
        if name is None:
            continue
        w = next(r for r in result.rows if r["model"] == name)
        d = w["vs_most_active"]
        verdict = "beats" if d and d["ci_low"] is not None and d["ci_low"] > 0 else (
            "is not shown to beat")
        lines.append(
            f"{label}: {name} (MRR@10 {w['mrr_at_10']:.3f}); it {verdict} the most-active "
            f"baseline (diff {d['diff']:+.3f}, 95 % CI {_ci(d['ci_low'], d['ci_high'])}).")
    t = result.timings
    fits = ", ".join(f"{m} {s:.2f}" for m, s in t["fit_and_score_s"].items())
    routing = f", routing rows {t['routing_rows_s']:.1f}" if "routing_rows_s" in t else ""
    lines.append(
        f"time: total {t['total_s']:.1f} s (bundle {t['bundle_s']:.1f}, import "
        f"{t['import_s']:.1f}, training rows {t['training_rows_s']:.1f}{routing}, test features "
        f"{t['test_features_s']:.1f}, fit+score [{fits}], bootstrap {t['bootstrap_s']:.1f}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(se.DEFAULT_SOURCE), help="the dump's folder")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated subset of {','.join(ALL_MODELS)} (default: "
                        "every model of the protocol, no *_routing variant)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-weeks", type=int, default=None,
                        help="train on the last N weeks before the split only (quick runs; "
                        "default: the whole training period)")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    result = run(args.source, models, n_boot=args.n_boot, seed=args.seed,
                 train_weeks=args.train_weeks)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
