"""Hard rules: who may be proposed for a mission at all. They come before any score.

Every rule fails closed: a person about whom a rule cannot be decided (no vetting record, an
unknown area, a missing value) is excluded. Vetting is read from vetting records only, never
inferred from anything else (lived experience least of all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from features import CommunitySnapshot, MissionSpec
from graph._frames import CommunityFrames

__all__ = ["INCOMPLETE_GROUPS", "Eligibility", "MissionRules", "VettingIndex",
           "eligible_candidates", "incomplete_groups"]

# Key of ``CommunitySnapshot.extras`` holding the ids of groups with a member who joins at or
# after the snapshot's time (set by :func:`incomplete_groups`).
INCOMPLETE_GROUPS = "incomplete_groups"


@dataclass(frozen=True)
class MissionRules:
    """What the hard rules need to know of a mission."""

    mission_id: str
    area_id: str
    starts_at: datetime
    ends_at: datetime
    minutes_per_day: int
    days_per_week: int
    team_min: int = 1
    team_max: int = 1
    vetting_regime: str | None = None
    radius_km: float | None = None

    @classmethod
    def of(cls, mission) -> MissionRules:  # noqa: ANN001
        get = mission.get if isinstance(mission, dict) else (
            lambda k, d=None: getattr(mission, k, d))
        return cls(**{k: get(k) for k in cls.__dataclass_fields__})

    @property
    def weekly_minutes(self) -> int:
        return int(self.minutes_per_day) * int(self.days_per_week)

    def spec(self, need_type: str, title: str = "", description: str | None = None
             ) -> MissionSpec:
        return MissionSpec(mission_id=self.mission_id, need_type=need_type,
                           area_id=self.area_id, title=title, description=description,
                           minutes_per_day=self.minutes_per_day,
                           days_per_week=self.days_per_week, team_min=self.team_min,
                           team_max=self.team_max)


class VettingIndex:
    """Valid vetting records per regime, as arrays sorted by person, for a per-request date
    check of the persons asked about only."""

    def __init__(self, vetting: pl.DataFrame, person_index: dict[str, int]) -> None:
        valid = vetting.filter(pl.col("status") == "valid")
        self._by_regime: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for (regime,), rows in valid.group_by("regime"):
            idx = np.array([person_index.get(p, -1) for p in rows["person_id"]], dtype=np.int64)
            keep = idx >= 0
            start = rows["valid_from"].dt.epoch("s").to_numpy()[keep]
            end = rows["expires_at"].dt.epoch("s").fill_null(np.iinfo(np.int64).max)
            end = end.to_numpy()[keep]
            order = np.argsort(idx[keep], kind="stable")
            self._by_regime[regime] = (idx[keep][order], start[order], end[order])

    def vetted(self, regime: str, n_persons: int, starts_at: datetime,
               ends_at: datetime) -> np.ndarray:
        """Mask of persons with a valid check of ``regime`` covering the whole window."""
        mask = np.zeros(n_persons, dtype=bool)
        if regime not in self._by_regime:
            return mask
        idx, start, end = self._by_regime[regime]
        ok = (start <= starts_at.timestamp()) & (end >= ends_at.timestamp())
        mask[idx[ok]] = True
        return mask

    def vetted_among(self, regime: str, person_idx: np.ndarray, starts_at: datetime,
                     ends_at: datetime) -> np.ndarray:
        """:meth:`vetted` for the persons ``person_idx`` only (a mask aligned with it): reads
        their own records, whatever the size of the community."""
        person_idx = np.asarray(person_idx, dtype=np.int64)
        if regime not in self._by_regime:
            return np.zeros(len(person_idx), dtype=bool)
        idx, start, end = self._by_regime[regime]
        lo = np.searchsorted(idx, person_idx, side="left")
        hi = np.searchsorted(idx, person_idx, side="right")
        rows, owner = _ranges(lo, hi)
        ok = (start[rows] <= starts_at.timestamp()) & (end[rows] >= ends_at.timestamp())
        return np.bincount(owner[ok], minlength=len(person_idx)) > 0


def incomplete_groups(frames: CommunityFrames, snap: CommunitySnapshot) -> frozenset[str]:
    """Groups of ``frames`` with a member who joins (the group or the community) at or after
    the snapshot's time, recorded in ``snap.extras`` for :func:`eligible_candidates`."""
    t = snap.as_of
    joined = frames.persons.select("person_id", pl.col("joined_at").alias("person_joined_at"))
    late = (frames.group_members.join(joined, on="person_id", how="left")
            .filter((pl.col("joined_at") >= t) | (pl.col("person_joined_at") >= t)
                    | pl.col("person_joined_at").is_null()))
    out = frozenset(late["group_id"].unique().to_list())
    snap.extras[INCOMPLETE_GROUPS] = out
    return out


@dataclass
class Eligibility:
    """Who passed the hard rules, and how many each rule excluded (for the decision log)."""

    person_idx: np.ndarray
    group_ids: list[str]
    excluded: dict[str, int] = field(default_factory=dict)

    def filters_applied(self) -> dict:
        return {"excluded_by_rule": dict(self.excluded),
                "eligible_persons": int(len(self.person_idx)),
                "eligible_groups": len(self.group_ids)}


def eligible_candidates(snap: CommunitySnapshot, vetting: VettingIndex, mission: MissionRules,
                        exclude: Iterable[str] = (), within: np.ndarray | None = None,
                        group_ids: Iterable[str] | None = None) -> Eligibility:
    """Persons (as snapshot indices) and peer groups that pass every hard rule.

    The cost grows with the persons and groups checked, not with the community: the rules
    read per-person arrays at the persons' indices, and the groups through indexes built
    once per snapshot (:class:`_RuleIndex`).

    Parameters
    ----------
    snap : CommunitySnapshot
        The community at the time of the request.
    vetting : VettingIndex
        Valid vetting records.
    mission : MissionRules
        The mission.
    exclude : iterable of str
        Person or group ids a mission engineer excluded.
    within : array of int, optional
        Restrict the check to these person indices (retrieval's pool) and to the groups with
        a member among them; default everyone and every group.
    group_ids : iterable of str, optional
        Check these groups (ids not in the snapshot are ignored) instead of the ones
        ``within`` selects.

    Notes
    -----
    A group is checked on all its members, in ``within`` or not: it fails closed when any
    member fails a person rule. With ``within``, the result is the full community's
    restricted to ``within`` and to the groups with a member in it (or to ``group_ids``).
    """
    index = _rule_index(snap)
    exclude = set(exclude)
    excluded_persons = np.array(sorted(snap.person_index[x] for x in exclude
                                       if x in snap.person_index), dtype=np.int64)
    if within is None:
        idx = np.arange(len(snap.person_ids), dtype=np.int64)
    else:
        idx = np.unique(np.asarray(within, dtype=np.int64))
    excluded: dict[str, int] = {}
    ok = _persons_ok(snap, index, vetting, mission, exclude, excluded_persons, idx, excluded)
    person_idx = idx[ok]

    # Candidate groups, as positions in the index.
    if group_ids is not None:
        cand = np.array(sorted({index.group_pos[g] for g in group_ids if g in index.group_pos}),
                        dtype=np.int64)
    elif within is None:
        cand = np.arange(len(index.group_ids), dtype=np.int64)
    else:
        rows, _ = _ranges(index.person_group_ptr[idx], index.person_group_ptr[idx + 1])
        cand = np.unique(index.person_groups[rows])
    if exclude:
        cand = cand[~np.isin(cand, [index.group_pos[g] for g in exclude
                                    if g in index.group_pos])]
    # Groups with a member who has not joined yet (as of the snapshot): the group that will
    # take the mission is not the one the snapshot holds. Fail closed (docs/simulator.md,
    # rule 8: every member's joined_at <= t).
    late = index.incomplete[cand]
    not_joined = int(late.sum())
    cand = cand[~late]
    size = index.group_size[cand]
    fits = (mission.team_min <= size) & (size <= mission.team_max)
    wrong_size = int((~fits).sum())
    cand = cand[fits]
    # Every member of every group still standing, checked once per distinct person.
    rows, owner = _ranges(index.member_ptr[cand], index.member_ptr[cand + 1])
    persons, local = np.unique(index.members[rows], return_inverse=True)
    member_ok = _persons_ok(snap, index, vetting, mission, exclude, excluded_persons,
                            persons, None)
    failing = np.bincount(owner[~member_ok[local]], minlength=len(cand)) > 0
    members_fail = int(failing.sum())
    groups = sorted(index.group_ids[cand[~failing]].tolist())
    excluded["group_team_size"] = wrong_size
    excluded["group_member_ineligible"] = members_fail
    excluded["group_member_not_joined"] = not_joined

    if not mission.team_min <= 1 <= mission.team_max:
        excluded["team_size"] = int(len(person_idx))
        person_idx = person_idx[:0]
    return Eligibility(person_idx=person_idx, group_ids=groups, excluded=excluded)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions ``lo[i]:hi[i]`` of every ``i``, concatenated, and the ``i`` of each."""
    lo = np.asarray(lo, dtype=np.int64)
    counts = np.asarray(hi, dtype=np.int64) - lo
    owner = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    rows = np.arange(int(counts.sum()), dtype=np.int64) - starts[owner] + lo[owner]
    return rows, owner


class _RuleIndex:
    """What the hard rules read of a snapshot, indexed once so that a request touches only
    the persons and groups it checks.

    - groups: ids, sizes, members as a CSR (``member_ptr``, ``members``) and the reverse,
      each person's groups (``person_group_ptr``, ``person_groups``); whether a group is
      incomplete (:func:`incomplete_groups`);
    - holds (``snap.holds``) sorted by person (``hold_ptr``), with their windows, whether
      they are live (not declined or withdrawn) and their mission as an integer code.
    """

    def __init__(self, snap: CommunitySnapshot, incomplete: frozenset[str]) -> None:
        n = len(snap.person_ids)
        self.incomplete_source = incomplete
        self.group_ids = np.array(list(snap.group_members), dtype=object)
        self.group_pos = {g: i for i, g in enumerate(self.group_ids.tolist())}
        members = list(snap.group_members.values())
        self.group_size = np.array([len(m) for m in members], dtype=np.int64)
        self.member_ptr = np.concatenate([[0], np.cumsum(self.group_size)]).astype(np.int64)
        self.members = (np.concatenate(members).astype(np.int64) if members
                        else np.zeros(0, dtype=np.int64))
        owner = np.repeat(np.arange(len(members), dtype=np.int64), self.group_size)
        order = np.argsort(self.members, kind="stable")
        self.person_groups = owner[order]
        self.person_group_ptr = _pointers(self.members, n)
        self.incomplete = np.array([g in incomplete for g in self.group_ids.tolist()],
                                   dtype=bool)

        h = snap.holds
        person = h["person_idx"].cast(pl.Int64).to_numpy().astype(np.int64)
        order = np.argsort(person, kind="stable")
        self.hold_ptr = _pointers(person, n)
        self.hold_live = ~h["status"].is_in(["declined", "withdrawn"]).to_numpy()[order]
        # Null windows compare false (NaN): such a hold overlaps nothing, as before.
        self.hold_starts = h["starts"].cast(pl.Float64).to_numpy()[order]
        self.hold_ends = h["ends"].cast(pl.Float64).to_numpy()[order]
        codes = h["mission_id"].to_list()
        self.mission_code = {m: c for c, m in enumerate(dict.fromkeys(codes))}
        self.hold_mission = np.array([self.mission_code[m] for m in codes],
                                     dtype=np.int64)[order]

    def holds_of(self, person_idx: np.ndarray, mission: MissionRules
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per person of ``person_idx``: live holds overlapping the mission's window, and
        whether they hold any assignment on this mission (as :func:`_holds`)."""
        rows, owner = _ranges(self.hold_ptr[person_idx], self.hold_ptr[person_idx + 1])
        overlap = (self.hold_live[rows]
                   & (self.hold_starts[rows] <= mission.ends_at.timestamp())
                   & (mission.starts_at.timestamp() <= self.hold_ends[rows]))
        holds = np.bincount(owner[overlap], minlength=len(person_idx))
        code = self.mission_code.get(mission.mission_id, -1)
        already = np.bincount(owner[self.hold_mission[rows] == code],
                              minlength=len(person_idx)) > 0
        return holds, already


def _pointers(rows: np.ndarray, n: int) -> np.ndarray:
    """CSR pointers of ``n`` rows, given the row of each entry (entries sorted by row)."""
    counts = np.bincount(np.asarray(rows, dtype=np.int64), minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _rule_index(snap: CommunitySnapshot) -> _RuleIndex:
    """The snapshot's :class:`_RuleIndex`, built on first use (and again if the set of
    incomplete groups was recorded after it)."""
    incomplete = snap.extras.get(INCOMPLETE_GROUPS, frozenset())
    index = snap.extras.get("rule_index")
    if index is None or index.incomplete_source is not incomplete:
        index = _RuleIndex(snap, incomplete)
        snap.extras["rule_index"] = index
    return index


def _holds(snap: CommunitySnapshot, mission: MissionRules) -> tuple[np.ndarray, np.ndarray]:
    """Per person: assignments held during the mission's window, and any on this mission.

    A hold is an assignment made before the snapshot, not declined or withdrawn, whose
    mission's window overlaps this mission's window.
    """
    n = len(snap.person_ids)
    cache = snap.extras.setdefault("holds_cache", {})
    key = (mission.mission_id, mission.starts_at, mission.ends_at)
    if key in cache:
        return cache[key]
    h = snap.holds
    idx = h["person_idx"].cast(pl.Int64).to_numpy().astype(np.int64)
    live = ~h["status"].is_in(["declined", "withdrawn"]).to_numpy()
    overlap = ((h["starts"].to_numpy() <= mission.ends_at.timestamp())
               & (mission.starts_at.timestamp() <= h["ends"].to_numpy()))
    holds = np.bincount(idx[live & overlap], minlength=n)
    already = np.zeros(n, dtype=bool)
    already[idx[(h["mission_id"] == mission.mission_id).to_numpy()]] = True
    if len(cache) > 256:
        cache.clear()
    cache[key] = (holds, already)
    return holds, already


def _persons_ok(snap: CommunitySnapshot, index: _RuleIndex, vetting: VettingIndex,
                mission: MissionRules, exclude: set[str], excluded_persons: np.ndarray,
                idx: np.ndarray, excluded: dict[str, int] | None) -> np.ndarray:
    """Rules 1-7 for the persons ``idx``: a mask aligned with it. ``excluded`` (if given)
    receives how many each rule removed, in the order the rules apply."""
    ok = np.ones(len(idx), dtype=bool)

    def apply(name: str, passes: np.ndarray) -> None:
        if excluded is not None:
            excluded[name] = int((ok & ~passes).sum())
        ok[:] = ok & passes

    apply("consent_matching", snap.consent_matching[idx].astype(bool))
    if mission.vetting_regime:
        apply("vetting", vetting.vetted_among(mission.vetting_regime, idx, mission.starts_at,
                                              mission.ends_at))
    apply("availability", snap.availability[idx] >= mission.weekly_minutes)
    holds, already = index.holds_of(idx, mission)
    apply("capacity", holds < snap.capacity[idx])
    apply("already_on_mission", ~already)
    if mission.radius_km is not None:
        area = snap.area_index.get(mission.area_id)
        if area is None:  # an unknown area cannot be measured: fail closed
            apply("distance", np.zeros(len(idx), dtype=bool))
        else:
            apply("distance", snap.area_distance_km[snap.person_area[idx], area]
                  <= mission.radius_km)
    if exclude:
        apply("excluded_by_engineer", ~np.isin(idx, excluded_persons))
    return ok
