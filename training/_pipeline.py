"""Outcomes -> training set -> fitted model: the engine's learned policy as one object.

:class:`EngineModel` is what ships (to MLflow, to the API): the fitted
:class:`~features.FeatureModel` (every learned prior, vocabulary and factorisation, fitted only
on data before the split) and the :class:`~matching.BaseRanker` over the features. It scores
a feature frame without the store; the store (or a bundle) is needed only to build features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from features import FEATURE_SET_VERSION, FeatureModel
from graph._community_graph import CommunityGraph, community_graph_from_frames
from graph._frames import CommunityFrames
from matching import (
    BaseRanker,
    PriorRanker,
    Ranker,
    TrainingSet,
    build_training_set,
    labelled_assignments,
    load_ranker,
)

__all__ = ["EngineModel", "fit_engine_model", "fit_ranker", "training_rows"]

_META = "engine_model.json"
_FEATURES = "feature_model.json"
_RANKER = "ranker"


@dataclass
class EngineModel:
    """A feature model and a ranker fitted together, with where they came from."""

    feature_model: FeatureModel
    ranker: BaseRanker
    split_at: datetime | None
    info: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{self.ranker.name}:{self.ranker.version}"

    def save(self, path: str | Path) -> Path:
        """Write a folder (JSON + the ranker's own pickle-free files)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / _FEATURES).write_text(json.dumps(self.feature_model.to_dict()))
        self.ranker.save(out / _RANKER)
        meta = {"split_at": self.split_at.isoformat() if self.split_at else None,
                "feature_set": FEATURE_SET_VERSION, "info": self.info}
        (out / _META).write_text(json.dumps(meta, indent=2, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path) -> EngineModel:
        src = Path(path)
        meta = json.loads((src / _META).read_text())
        fm = FeatureModel.from_dict(json.loads((src / _FEATURES).read_text()))
        ranker = load_ranker(src / _RANKER)
        split = datetime.fromisoformat(meta["split_at"]) if meta["split_at"] else None
        return cls(feature_model=fm, ranker=ranker, split_at=split, info=meta.get("info", {}))


# Review statuses after which an outcome is final: a claimed or disputed outcome may still
# turn out either way, so its assignment's result is not known yet.
FINAL_OUTCOME_STATUSES = ("verified", "rejected")
# A mission also counts once this share of assignments would have had their final outcome
# by then (how long after their mission's end, learnt from the data): so that an outcome
# that is never reviewed does not hold its mission back for good.
REPORT_QUANTILE = 0.99


def measured_missions(frames: CommunityFrames, at: datetime) -> pl.Series:
    """Ids of the missions whose measurement was complete at ``at``.

    A mission counts once it has ended and either every assignment of it that was completed
    had a final outcome (verified or rejected) measured before ``at``, or it ended longer
    ago than ``REPORT_QUANTILE`` of the completed assignments took, after their mission's
    end, to get their final outcome (measured before ``at``).

    A success is often reported during the window (a youth placed, a unit paid) and a
    failure only after its end: before every completed assignment has a final outcome, a
    mission's known results overstate its success.
    """
    final = frames.outcomes.filter(
        (pl.col("measured_at") < at) & pl.col("status").is_in(FINAL_OUTCOME_STATUSES)
    ).group_by("assignment_id").agg(pl.col("measured_at").max().alias("final_at"))
    completed = frames.assignments.filter(pl.col("status") == "completed").select(
        "assignment_id", "mission_id")
    waiting = completed.join(final, on="assignment_id", how="anti")["mission_id"].unique()
    lag = (completed.join(final, on="assignment_id", how="inner")
           .join(frames.missions.select("mission_id", "ends_at"), on="mission_id")
           .select((pl.col("final_at") - pl.col("ends_at")).dt.total_seconds()
                   .clip(lower_bound=0))).to_series().drop_nulls()
    ended = pl.col("ends_at") <= at
    complete = ~pl.col("mission_id").is_in(waiting.implode())
    if lag.len():
        stale = at - timedelta(seconds=float(lag.quantile(REPORT_QUANTILE,
                                                          interpolation="higher")))
        complete = complete | (pl.col("ends_at") <= stale)
    return frames.missions.filter(ended & complete)["mission_id"]


def training_rows(frames: CommunityFrames, feature_model: FeatureModel, split_at: datetime,
                  graph: CommunityGraph | None = None, show_progress: bool = False,
                  measured_only: bool = True) -> TrainingSet:
    """Rows of assignments made before ``split_at`` whose outcomes were verified before it.

    With ``measured_only`` (the default) only missions whose measurement was complete at
    ``split_at`` count (:func:`measured_missions`). Keeping the others would keep their
    early successes without their late failures, and the latest rows, which calibrate the
    ranker, would overstate success (simulated city, seed 1: 0.58 observed on that slice
    against 0.42 before and after it).
    """
    labelled = labelled_assignments(frames, until=split_at).filter(
        pl.col("assigned_at") < split_at)
    if measured_only:
        labelled = labelled.filter(
            pl.col("mission_id").is_in(measured_missions(frames, split_at).implode()))
    return build_training_set(frames, feature_model, labelled, graph=graph,
                              show_progress=show_progress)


def fit_ranker(rows: pl.DataFrame, *, estimator: str = "hgb",
               features: list[str] | None = None, seed: int = 0) -> Ranker:
    """Fit the learned :class:`~matching.Ranker` on training rows (from :func:`training_rows`).

    The latest rows (by ``assigned_at``) calibrate; ``features`` (default: every feature)
    selects the columns, e.g. for an ablation; lambdarank groups the rows by mission.
    """
    kwargs = {"features": features} if features else {}
    ranker = Ranker(estimator=estimator, random_state=seed, n_threads=1, **kwargs)
    return ranker.fit(rows, rows["label"], times=rows["assigned_at"],
                      groups=rows["mission_id"] if estimator == "lgbm_rank" else None)


def fit_engine_model(frames: CommunityFrames, split_at: datetime, *, estimator: str = "hgb",
                     features: list[str] | None = None, seed: int = 0,
                     graph: CommunityGraph | None = None, use_graph: bool = True,
                     min_rows: int = 50, show_progress: bool = False) -> EngineModel:
    """Fit the feature model and the ranker on everything before ``split_at``.

    With fewer than ``min_rows`` labelled rows (or a single class) the day-one
    :class:`~matching.PriorRanker` is returned instead, with the reason in ``info``.
    """
    fm = FeatureModel(seed=seed).fit(frames, split_at)
    if use_graph and graph is None:
        graph = community_graph_from_frames(frames)
    ts = training_rows(frames, fm, split_at, graph=graph if use_graph else None,
                       show_progress=show_progress)
    info = {"training_rows": ts.n, "skipped_unknown_candidate": ts.skipped_unknown_candidate,
            "estimator": estimator}
    labels = ts.rows["label"] if ts.n else pl.Series("label", [], dtype=pl.Boolean)
    if ts.n < min_rows or labels.n_unique() < 2:
        info["fallback"] = f"day-one prior: {ts.n} labelled rows before {split_at.isoformat()}"
        return EngineModel(fm, PriorRanker(), split_at, info)
    ranker = fit_ranker(ts.rows, estimator=estimator, features=features, seed=seed)
    info["positives"] = int(ts.rows["label"].sum())
    return EngineModel(fm, ranker, split_at, info)
