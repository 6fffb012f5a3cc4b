"""From assignments and their verified outcomes to training rows, with the shared features.

Each row is a (mission, candidate) pair that was assigned, labelled by whether the assignment
succeeded, with features computed by :func:`features.build_features` as of a snapshot taken
at or before the assignment: nothing that happened after the decision can leak into its row.

The snapshot is the start of the assignment's week (one snapshot serves a whole week of rows).
A candidate who did not exist yet at the start of the week (a person who joined, a group whose
second member joined, during the week) but did before the assignment gets a snapshot of its
own inside the week, taken at the assignment's time (shared by the later rows of the week
whose candidate it holds): still before the decision, and never dropped for being new.
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
_TIME = pl.Datetime("us", "UTC")


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
    ``need_type``, ``features_as_of`` (the time of the snapshot the features were built
    from, at or before ``assigned_at``) and every feature.

    ``skipped_unknown_candidate`` counts assignments whose candidate did not exist at the
    assignment's time (e.g. an erased person); ``newcomer_rows`` counts rows whose candidate
    appeared during the assignment's week, built from a snapshot inside the week.
    """

    rows: pl.DataFrame
    skipped_unknown_candidate: int = 0
    newcomer_rows: int = 0

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
    exists = _Existence(frames)
    assignments = assignments.with_columns(
        pl.col("assigned_at").map_elements(snapshot_time, return_dtype=_TIME).alias("_snap"))
    parts = []
    skipped = newcomers = 0
    groups = assignments.partition_by("_snap", maintain_order=True, as_dict=True)
    for (when,), batch in tqdm(groups.items(), disable=not show_progress,
                               desc="training rows", unit="week"):
        batch = batch.sort("assigned_at", "assignment_id")
        # Which snapshot each row reads: the week's start when the candidate existed then;
        # for a candidate new this week, the earliest snapshot of the week that holds them,
        # else one taken at the assignment's own time (rows at or after it ignored: no
        # leak). Snapshots are built only when some row needs them.
        snaps: dict[datetime, CommunitySnapshot] = {}
        which: list[datetime | None] = []
        for person, group, at in batch.select("person_id", "group_id", "assigned_at").iter_rows():
            t = None
            if exists(person, group, when):
                if when not in snaps:
                    snaps[when] = _snapshot(frames, model, when, graph)
                t = when if _holds(snaps[when], person, group) else None
            if t is None:  # new this week: snapshots of the week so far are all before `at`
                t = next((u for u in sorted(snaps) if u != when
                          and _holds(snaps[u], person, group)), None)
            if t is None and exists(person, group, at):
                if at not in snaps:
                    snaps[at] = _snapshot(frames, model, at, graph)
                t = at if _holds(snaps[at], person, group) else None
            which.append(t)  # None: not there at its time (e.g. an erased person)
        skipped += sum(t is None for t in which)
        newcomers += sum(t is not None and t != when for t in which)
        batch = batch.with_columns(_which=pl.Series(which, dtype=_TIME))
        for t, snap in sorted(snaps.items()):
            for (mission_id,), rows in batch.filter(pl.col("_which") == t).partition_by(
                    "mission_id", maintain_order=True, as_dict=True).items():
                persons = rows["person_id"].drop_nulls().unique(maintain_order=True).to_list()
                groups_ = rows["group_id"].drop_nulls().unique(maintain_order=True).to_list()
                feats = build_features(model, snap, missions[mission_id], persons, groups_)
                keyed = rows.with_columns(
                    pl.when(pl.col("person_id").is_not_null()).then(pl.lit("person"))
                    .otherwise(pl.lit("group")).alias("kind"),
                    pl.coalesce("person_id", "group_id").alias("candidate_id"),
                    pl.lit(snap.as_of, dtype=_TIME).alias("features_as_of"),
                ).select("assignment_id", "mission_id", "kind", "candidate_id", "assigned_at",
                         "label", "propensity", "need_type", "features_as_of")
                parts.append(keyed.join(feats, on=["kind", "candidate_id"], how="inner"))
    if not parts:
        return TrainingSet(rows=pl.DataFrame(), skipped_unknown_candidate=skipped)
    rows = pl.concat(parts, how="vertical_relaxed").sort("assigned_at", "assignment_id")
    return TrainingSet(rows=rows, skipped_unknown_candidate=skipped, newcomer_rows=newcomers)


def _holds(snap: CommunitySnapshot, person: str | None, group: str | None) -> bool:
    """Whether ``snap`` has the candidate: the person, or the group with 2+ members."""
    return person in snap.person_index if person is not None else group in snap.group_members


class _Existence:
    """Whether a candidate existed just before a time, from the rows (no snapshot built).

    A person exists from ``joined_at`` on; a group once two of its members had joined it,
    each of them a person by then (as :meth:`CommunityFrames.as_of` and the snapshot see it).
    """

    def __init__(self, frames: CommunityFrames) -> None:
        self.joined = dict(frames.persons.select("person_id", "joined_at").iter_rows())
        self.members: dict[str, list[tuple[str, datetime]]] = {}
        for g, p, at in frames.group_members.select(
                "group_id", "person_id", "joined_at").iter_rows():
            self.members.setdefault(g, []).append((p, at))

    def _person(self, person: str, t: datetime) -> bool:
        joined = self.joined.get(person)
        return joined is not None and joined < t

    def __call__(self, person: str | None, group: str | None, t: datetime) -> bool:
        if person is not None:
            return self._person(person, t)
        return sum(at < t and self._person(p, t) for p, at in self.members.get(group, ())) >= 2


def _snapshot(frames: CommunityFrames, model: FeatureModel, when: datetime,
              graph: CommunityGraph | None) -> CommunitySnapshot:
    snap = CommunitySnapshot.build(frames, model, when)
    if graph is not None:
        attach_graph(snap, graph)
    return snap
