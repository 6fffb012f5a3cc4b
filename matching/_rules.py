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
    """Valid vetting records per regime, as arrays, for a per-request date check."""

    def __init__(self, vetting: pl.DataFrame, person_index: dict[str, int]) -> None:
        valid = vetting.filter(pl.col("status") == "valid")
        self._by_regime: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for (regime,), rows in valid.group_by("regime"):
            idx = np.array([person_index.get(p, -1) for p in rows["person_id"]], dtype=np.int64)
            keep = idx >= 0
            start = rows["valid_from"].dt.epoch("s").to_numpy()[keep]
            end = rows["expires_at"].dt.epoch("s").fill_null(np.iinfo(np.int64).max)
            self._by_regime[regime] = (idx[keep], start, end.to_numpy()[keep])

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
                        ) -> Eligibility:
    """Persons (as snapshot indices) and peer groups that pass every hard rule.

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
        Restrict the check to these person indices (retrieval's pool); default everyone.
    """
    n = len(snap.person_ids)
    exclude = set(exclude)
    pool = np.ones(n, dtype=bool)
    if within is not None:
        pool = np.zeros(n, dtype=bool)
        pool[within] = True
    excluded: dict[str, int] = {}
    mask = _person_mask(snap, vetting, mission, exclude, pool, excluded)

    # A group is checked on all its members, in the pool or not: fail closed.
    members_needed = np.zeros(n, dtype=bool)
    for members in snap.group_members.values():
        members_needed[members] = True
    member_ok = _person_mask(snap, vetting, mission, exclude, members_needed, {})
    # Groups with a member who has not joined yet (as of the snapshot): the group that will
    # take the mission is not the one the snapshot holds. Fail closed (docs/simulator.md,
    # rule 8: every member's joined_at <= t).
    incomplete = snap.extras.get(INCOMPLETE_GROUPS, frozenset())
    groups = []
    wrong_size = members_fail = not_joined = 0
    for g, members in snap.group_members.items():
        if g in exclude:
            continue
        if g in incomplete:
            not_joined += 1
            continue
        if not mission.team_min <= len(members) <= mission.team_max:
            wrong_size += 1
            continue
        if not member_ok[members].all():
            members_fail += 1
            continue
        groups.append(g)
    excluded["group_team_size"] = wrong_size
    excluded["group_member_ineligible"] = members_fail
    excluded["group_member_not_joined"] = not_joined

    if not mission.team_min <= 1 <= mission.team_max:
        excluded["team_size"] = int(mask.sum())
        mask[:] = False
    return Eligibility(person_idx=np.flatnonzero(mask), group_ids=sorted(groups),
                       excluded=excluded)


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


def _person_mask(snap: CommunitySnapshot, vetting: VettingIndex, mission: MissionRules,
                 exclude: set[str], mask: np.ndarray, excluded: dict[str, int]) -> np.ndarray:
    n = len(snap.person_ids)
    mask = mask.copy()

    def apply(name: str, ok: np.ndarray) -> None:
        excluded[name] = int((mask & ~ok).sum())
        mask[:] = mask & ok

    apply("consent_matching", snap.consent_matching.astype(bool))
    if mission.vetting_regime:
        apply("vetting", vetting.vetted(mission.vetting_regime, n, mission.starts_at,
                                        mission.ends_at))
    apply("availability", snap.availability >= mission.weekly_minutes)
    holds, already = _holds(snap, mission)
    apply("capacity", holds < snap.capacity)
    apply("already_on_mission", ~already)
    if mission.radius_km is not None:
        area = snap.area_index.get(mission.area_id)
        if area is None:  # an unknown area cannot be measured: fail closed
            apply("distance", np.zeros(n, dtype=bool))
        else:
            apply("distance", snap.area_distance_km[snap.person_area, area]
                  <= mission.radius_km)
    if exclude:
        apply("excluded_by_engineer",
              ~np.isin(snap.person_ids, np.array(sorted(exclude), dtype=object)))
    return mask
