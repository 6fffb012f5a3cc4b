"""From assignments and their verified outcomes to training rows, with the shared features.

Each row is a (mission, candidate) pair that was assigned, labelled by whether the assignment
succeeded, with features computed by :func:`features.build_features` as of a snapshot taken
at or before the assignment (the start of its week): nothing that happened after the decision
can leak into its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from tqdm.auto import tqdm

from features import CommunitySnapshot, FeatureModel, attach_graph, build_features
from graph._community_graph import CommunityGraph
from graph._frames import CommunityFrames

__all__ = ["TrainingSet", "build_training_set", "labelled_assignments", "snapshot_time"]

SNAPSHOT_STEP = timedelta(days=7)
_EPOCH = datetime(2000, 1, 3)  # a Monday


def snapshot_time(t: datetime, step: timedelta = SNAPSHOT_STEP) -> datetime:
    """The start of ``t``'s period (weeks starting on Monday, UTC): the snapshot it uses."""
    naive = t.astimezone(UTC).replace(tzinfo=None)
    k = (naive - _EPOCH) // step
    return (_EPOCH + k * step).replace(tzinfo=UTC)


@dataclass
class TrainingSet:
    """Training rows and what was left out.

    ``rows`` has ``mission_id``, ``assignment_id``, ``kind``, ``candidate_id``,
    ``assigned_at``, ``label`` (bool), ``propensity`` (null when unusable off-policy),
    ``need_type`` and every feature.
    """

    rows: pl.DataFrame
    skipped_unknown_candidate: int = 0

    @property
    def n(self) -> int:
        return self.rows.height


def labelled_assignments(frames: CommunityFrames, until: datetime | None = None
                         ) -> pl.DataFrame:
    """Assignments with at least one verified outcome (measured before ``until``).

    ``label`` is True when any of those outcomes succeeded.
    """
    out = frames.verified_outcomes()
    if until is not None:
        out = out.filter(pl.col("measured_at") < until)
    results = out.group_by("assignment_id").agg(
        pl.col("success").any().alias("label"),
        pl.col("measured_at").min().alias("first_measured_at"),
    )
    return frames.assignments.join(results, on="assignment_id", how="inner").join(
        frames.missions.select("mission_id", "need_type"), on="mission_id", how="left"
    ).sort("assigned_at", "assignment_id")


def build_training_set(frames: CommunityFrames, model: FeatureModel,
                       assignments: pl.DataFrame,
                       graph: CommunityGraph | None = None,
                       show_progress: bool = False) -> TrainingSet:
    """Feature rows for ``assignments`` (from :func:`labelled_assignments`).

    Parameters
    ----------
    frames : CommunityFrames
        The whole store (snapshots filter it by time).
    model : FeatureModel
        Fitted learned parts (fitted on data before the training cut-off).
    assignments : polars.DataFrame
        Rows with ``assignment_id``, ``mission_id``, ``person_id``, ``group_id``,
        ``assigned_at``, ``propensity`` and ``label``.
    graph : CommunityGraph, optional
        The community graph of ``frames``; each snapshot sees it cut at its own time.
        Without it the proximity features are zero (the graph ablation).
    """
    missions = {r["mission_id"]: r for r in frames.missions.iter_rows(named=True)}
    assignments = assignments.with_columns(
        pl.col("assigned_at").map_elements(snapshot_time, return_dtype=pl.Datetime("us", "UTC"))
        .alias("_snap"))
    parts = []
    skipped = 0
    groups = assignments.partition_by("_snap", maintain_order=True, as_dict=True)
    for (when,), batch in tqdm(groups.items(), disable=not show_progress,
                               desc="training rows", unit="week"):
        snap = CommunitySnapshot.build(frames, model, when)
        if graph is not None:
            attach_graph(snap, graph)
        for (mission_id,), rows in batch.partition_by("mission_id", maintain_order=True,
                                                      as_dict=True).items():
            mission = missions[mission_id]
            persons = [p for p in rows["person_id"].drop_nulls().unique(maintain_order=True)
                       .to_list() if p in snap.person_index]
            groups_ = [g for g in rows["group_id"].drop_nulls().unique(maintain_order=True)
                       .to_list() if g in snap.group_members]
            known = pl.coalesce("person_id", "group_id").is_in(persons + groups_)
            skipped += rows.height - rows.filter(known).height
            if not persons and not groups_:
                continue
            feats = build_features(model, snap, mission, persons, groups_)
            keyed = rows.with_columns(
                pl.when(pl.col("person_id").is_not_null()).then(pl.lit("person"))
                .otherwise(pl.lit("group")).alias("kind"),
                pl.coalesce("person_id", "group_id").alias("candidate_id"),
            ).select("assignment_id", "mission_id", "kind", "candidate_id", "assigned_at",
                     "label", "propensity", "need_type")
            parts.append(keyed.join(feats, on=["kind", "candidate_id"], how="inner"))
    if not parts:
        return TrainingSet(rows=pl.DataFrame(), skipped_unknown_candidate=skipped)
    rows = pl.concat(parts, how="vertical_relaxed").sort("assigned_at", "assignment_id")
    return TrainingSet(rows=rows, skipped_unknown_candidate=skipped)
