"""The community as of a time, as arrays indexed by person: what features read per request.

A :class:`CommunitySnapshot` is built once per (store version, time) from the store's frames
and the fitted :class:`~features.FeatureModel`; computing features for a request then only
gathers rows of these arrays for the candidates, so its cost grows with the number of
candidates, not with the size of the community.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from features._model import FeatureModel, assignment_results
from graph._frames import CommunityFrames

__all__ = ["CommunitySnapshot", "haversine_km", "le_weight", "LE_FADE_OUTCOMES"]

# The lived-experience prior fades to exactly zero once a person has this many verified
# outcomes: they are then judged on what they did, not on what they went through.
LE_FADE_OUTCOMES = 5
RECENCY_HALF_LIFE_DAYS = 180.0
NO_HISTORY_DAYS = 3650.0


def le_weight(n_outcomes: np.ndarray | int) -> np.ndarray:
    """Weight of the lived-experience prior: (1 - n/5)^2, zero from 5 verified outcomes on."""
    n = np.asarray(n_outcomes, dtype=float)
    return np.clip(1.0 - n / LE_FADE_OUTCOMES, 0.0, 1.0) ** 2


def haversine_km(lat1, lon1, lat2, lon2):  # noqa: ANN001, ANN201
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 6371.0 * 2 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


@dataclass
class CommunitySnapshot:
    """Per-person arrays of the community as of ``as_of`` (exclusive)."""

    as_of: datetime
    version: int
    person_ids: np.ndarray
    person_index: dict[str, int]
    area_ids: list[str]
    area_index: dict[str, int]
    person_area: np.ndarray
    area_distance_km: np.ndarray
    availability: np.ndarray
    capacity: np.ndarray
    tenure_days: np.ndarray
    consent_matching: np.ndarray
    le_tags: list[list[str]]
    n_outcomes: np.ndarray
    res_n: np.ndarray
    res_s: np.ndarray
    need_n: np.ndarray
    need_s: np.ndarray
    recent_n: np.ndarray
    recent_s: np.ndarray
    days_since_last: np.ndarray
    load: np.ndarray
    latent: np.ndarray  # (persons x (skill factors + needs)): see FeatureModel.need_factors
    ties: sp.csr_matrix
    skills: sp.csr_matrix
    skill_names: list[str]
    group_members: dict[str, np.ndarray]
    holds: pl.DataFrame
    extras: dict = field(default_factory=dict)
    # The learned tables as of this time (see FeatureModel.tables_as_of); None: the model's.
    le_table: dict | None = None
    skill_lift: np.ndarray | None = None

    @classmethod
    def build(cls, frames: CommunityFrames, model: FeatureModel, as_of: datetime,
              full: CommunityFrames | None = None) -> CommunitySnapshot:
        """Build the snapshot from ``frames`` as of ``as_of`` (rows at or after it ignored).

        ``frames`` may already be filtered; ``full`` (the unfiltered frames) is only used to
        find missions' windows for the load of active assignments.
        """
        f = model._check()
        past = frames.as_of(as_of)
        persons = past.persons.sort("person_id")
        pid = persons["person_id"].to_numpy()
        pindex = {p: i for i, p in enumerate(pid)}
        n = len(pid)
        person_ids = persons["person_id"]

        areas = frames.areas.sort("area_id")
        area_ids = areas["area_id"].to_list()
        aindex = {a: i for i, a in enumerate(area_ids)}
        lat, lon = areas["lat"].to_numpy(), areas["lon"].to_numpy()
        dist = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
        person_area = _positions(persons["area_id"], areas["area_id"], "persons.area_id")

        # Lived-experience tags only with consent; none for an empty or missing value.
        le_tags = persons.select(
            pl.when(pl.col("consent_lived_experience").fill_null(False)
                    & (pl.col("lived_experience").fill_null("") != ""))
            .then(pl.col("lived_experience").str.split(";"))
            .otherwise(pl.lit([], dtype=pl.List(pl.String)))
        ).to_series().to_list()

        # Verified outcomes (literal count, DESIGN's newcomer definition) and results.
        outs = past.verified_outcomes()
        out_person = outs.filter(pl.col("person_id").is_not_null()).select("person_id")
        out_group = (outs.filter(pl.col("group_id").is_not_null()).select("group_id")
                     .join(past.group_members.select("group_id", "person_id"), on="group_id")
                     .select("person_id"))
        counts = pl.concat([out_person, out_group]).group_by("person_id").len()
        n_outcomes = np.zeros(n)
        _scatter(n_outcomes, person_ids, counts["person_id"], counts["len"].to_numpy())

        results = assignment_results(past)
        need_index = f.need_index
        res_n, res_s = np.zeros(n), np.zeros(n)
        need_n = np.zeros((n, len(need_index)))
        need_s = np.zeros((n, len(need_index)))
        recent_n, recent_s = np.zeros(n), np.zeros(n)
        last = np.full(n, NO_HISTORY_DAYS)
        if results.height:
            idx = _positions(results["person_id"], person_ids, default=-1)
            keep = idx >= 0
            idx = idx[keep]
            succ = results["success"].to_numpy()[keep].astype(float)
            nidx = _positions(results["need_type"], pl.Series(list(need_index), dtype=pl.String),
                              default=-1, values=list(need_index.values()))[keep]
            age_days = _days_before(as_of, results["at"])[keep]
            np.add.at(res_n, idx, 1.0)
            np.add.at(res_s, idx, succ)
            ok = nidx >= 0
            np.add.at(need_n, (idx[ok], nidx[ok]), 1.0)
            np.add.at(need_s, (idx[ok], nidx[ok]), succ[ok])
            decay = 0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS)
            np.add.at(recent_n, idx, decay)
            np.add.at(recent_s, idx, decay * succ)
            np.minimum.at(last, idx, age_days)

        # Ties as of t: a symmetric person x person matrix of weights, the strongest tie of
        # each pair over its kinds (a pair may be peers and neighbours): weights stay in
        # (0, 1], as the features' and the simulator's definitions read them.
        ties = past.ties
        a = _positions(ties["person_a"], person_ids, "ties.person_a")
        b = _positions(ties["person_b"], person_ids, "ties.person_b")
        pairs = (pl.DataFrame({"lo": np.minimum(a, b), "hi": np.maximum(a, b),
                               "weight": ties["weight"].to_numpy()})
                 .group_by("lo", "hi").agg(pl.col("weight").max()))
        lo, hi = pairs["lo"].to_numpy(), pairs["hi"].to_numpy()
        w = pairs["weight"].to_numpy()
        mirror = lo != hi  # a self tie (refused on import) would otherwise count twice
        tie_m = sp.coo_matrix((np.r_[w, w[mirror]], (np.r_[lo, hi[mirror]], np.r_[hi, lo[mirror]])),
                              shape=(n, n)).tocsr()
        tie_m.sort_indices()

        # Load: assignments made before t, not declined or withdrawn, on missions running at t.
        missions = (full or frames).missions.select("mission_id", "ends_at")
        active = (past.assignments.filter(~pl.col("status").is_in(["declined", "withdrawn"]))
                  .join(missions, on="mission_id").filter(pl.col("ends_at") > as_of))
        load_counts = pl.concat([
            active.filter(pl.col("person_id").is_not_null()).select("person_id"),
            active.filter(pl.col("group_id").is_not_null()).select("group_id")
            .join(past.group_members.select("group_id", "person_id"), on="group_id")
            .select("person_id"),
        ]).group_by("person_id").len()
        load = np.zeros(n)
        _scatter(load, person_ids, load_counts["person_id"], load_counts["len"].to_numpy())

        skill_names = sorted(f.skill_text)
        declared_tags = (persons.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
                                        pl.col("skills").str.split(";").alias("tag"))
                         .explode("tag"))
        cols = _positions(declared_tags["tag"], pl.Series(skill_names, dtype=pl.String),
                          default=-1)
        known = cols >= 0  # tags outside the model's skill vocabulary are ignored
        skills = sp.csr_matrix((np.ones(int(known.sum())),
                                (declared_tags["row"].to_numpy()[known], cols[known])),
                               shape=(n, len(skill_names)))

        # Before the model's cut-off, the learned tables are refitted on the results known
        # then, so that no training row learns from its own outcome.
        if as_of < f.cutoff:
            le_table, lift = model.tables_as_of(past, results)
        else:
            le_table, lift = None, model.skill_lift_matrix()
        # Latent skill: what declared skills predict on every need, then the posterior skill
        # factors given the person's own results (see FeatureModel.skill_posterior).
        declared = np.asarray(skills @ lift)
        latent = np.hstack([model.skill_posterior(need_n, need_s, offset=declared), declared])

        # Membership as of t: a member who joins later is not part of the group yet.
        membership = past.group_members.sort("group_id", "person_id")
        member_idx = _positions(membership["person_id"], person_ids, "group_members.person_id")
        group_ids, starts, sizes = np.unique(membership["group_id"].to_numpy(),
                                             return_index=True, return_counts=True)
        group_members = {g: member_idx[s:s + k] for g, s, k in
                         zip(group_ids.tolist(), starts.tolist(), sizes.tolist(), strict=True)
                         if k >= 2}

        # Every assignment made before t, per person (groups exploded to their members):
        # the hard rules read capacity and "once per mission" from it.
        windows = (full or frames).missions.select("mission_id", "starts_at", "ends_at")
        made = past.assignments.join(windows, on="mission_id", how="left")
        direct = made.filter(pl.col("person_id").is_not_null()).select(
            "person_id", "mission_id", "status", "starts_at", "ends_at")
        via_group = (made.filter(pl.col("group_id").is_not_null())
                     .join(frames.group_members.select("group_id", "person_id"),
                           on="group_id", how="inner", suffix="_m")
                     .select(pl.col("person_id_m").alias("person_id"), "mission_id", "status",
                             "starts_at", "ends_at"))
        holds = (pl.concat([direct, via_group])
                 .filter(pl.col("person_id").is_in(pl.Series(pid, dtype=pl.String).implode()))
                 .with_columns(pl.col("person_id").replace_strict(pindex, return_dtype=pl.Int64)
                               .alias("person_idx"))
                 .select("person_idx", "mission_id", "status",
                         pl.col("starts_at").dt.epoch("s").alias("starts"),
                         pl.col("ends_at").dt.epoch("s").alias("ends")))

        tenure = _days_before(as_of, persons["joined_at"])
        return cls(
            as_of=as_of, version=frames.version, person_ids=pid, person_index=pindex,
            area_ids=area_ids, area_index=aindex, person_area=person_area,
            area_distance_km=dist, availability=persons["availability_min_per_week"].to_numpy(),
            capacity=persons["max_concurrent"].to_numpy(), tenure_days=tenure,
            consent_matching=persons["consent_matching"].to_numpy(), le_tags=le_tags,
            n_outcomes=n_outcomes, res_n=res_n, res_s=res_s, need_n=need_n, need_s=need_s,
            recent_n=recent_n, recent_s=recent_s, days_since_last=last, load=load,
            latent=latent, ties=tie_m, skills=skills, skill_names=skill_names,
            group_members=group_members, holds=holds, le_table=le_table,
            skill_lift=None if le_table is None else lift,
        )


def _positions(keys: pl.Series, ids: pl.Series, where: str = "", *, default: int | None = None,
               values: list[int] | None = None) -> np.ndarray:
    """Position of each of ``keys`` in ``ids`` (or its entry of ``values``), as int64.

    Keys not in ``ids`` (and nulls) get ``default``; without a default they raise
    ``KeyError`` naming ``where`` and the first unknown keys.
    """
    new = pl.Series(np.arange(len(ids)) if values is None else values, dtype=pl.Int64)
    out = keys.replace_strict(ids, new, default=-1 if default is None else default,
                              return_dtype=pl.Int64)
    out = out.fill_null(-1 if default is None else default).to_numpy()
    if default is None and (missing := out < 0).any():
        unknown = keys.filter(pl.Series(missing)).head(5).to_list()
        raise KeyError(f"{where}: {int(missing.sum())} value(s) not found, first {unknown}")
    return out


def _days_before(as_of: datetime, times: pl.Series) -> np.ndarray:
    """Days from each of ``times`` to ``as_of`` (float64, as ``timedelta.total_seconds``)."""
    # Integer microseconds, then two divisions: the same rounding as the Python loop it replaced.
    micros = times.to_frame("t").select(
        (pl.lit(as_of).cast(times.dtype) - pl.col("t")).dt.total_microseconds()).to_series()
    return micros.to_numpy().astype(np.float64) / 1e6 / 86400.0


def _scatter(target: np.ndarray, ids: pl.Series, keys: pl.Series, values: np.ndarray) -> None:
    """``target[position of key] = value``; keys not in ``ids`` are skipped."""
    i = _positions(keys, ids, default=-1)
    target[i[i >= 0]] = values[i >= 0]
