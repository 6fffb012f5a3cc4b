"""The one feature function: (mission, time, candidates) -> a polars frame of features.

Training rows and served requests both call :func:`build_features`, so the two can never
disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from features._model import FeatureModel
from features._registry import FEATURE_NAMES
from features._snapshot import CommunitySnapshot, le_weight
from graph._community_graph import CommunityGraph, mission_seeds, personalized_pagerank

__all__ = [
    "MissionSpec",
    "attach_graph",
    "build_features",
    "candidate_frame_schema",
    "graph_signals",
]

_MISSION_FIELDS = ("mission_id", "need_type", "area_id", "title", "description",
                   "minutes_per_day", "days_per_week", "team_min", "team_max")


@dataclass(frozen=True)
class MissionSpec:
    """What the features need to know of a mission (stored or not yet stored)."""

    mission_id: str
    need_type: str
    area_id: str
    title: str = ""
    description: str | None = None
    minutes_per_day: int = 60
    days_per_week: int = 1
    team_min: int = 1
    team_max: int = 1

    @classmethod
    def of(cls, mission: Any) -> MissionSpec:
        """From a ``Mission`` row, a mapping or a ``MissionSpec``."""
        if isinstance(mission, MissionSpec):
            return mission
        get = mission.get if isinstance(mission, Mapping) else (
            lambda k, d=None: getattr(mission, k, d))
        return cls(**{k: get(k) for k in _MISSION_FIELDS if get(k) is not None})

    @property
    def weekly_minutes(self) -> int:
        return max(1, int(self.minutes_per_day) * int(self.days_per_week))

    @property
    def text(self) -> str:
        return f"{self.title} {self.description or ''}"


def candidate_frame_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"kind": pl.String(), "candidate_id": pl.String()}
    schema.update({name: pl.Float64() for name in FEATURE_NAMES})
    return schema


@dataclass(frozen=True)
class _MissionContext:
    """What every candidate's features share for one mission: computed once per request."""

    spec: MissionSpec
    prior_strength: float
    p_global: float
    need: int | None  # column of the mission's need type (None: never seen by the model)
    p_need: float
    family_cols: list[int]
    p_family: float
    area: int | None  # row of the mission's area (None: not in the snapshot)
    le_table: Mapping
    mission_vec: sp.csr_matrix  # TF-IDF of the mission's text
    mission_norm: float

    @classmethod
    def of(cls, model: FeatureModel, snap: CommunitySnapshot, m: MissionSpec
           ) -> _MissionContext:
        f = model._check()
        family = f.need_family.get(m.need_type, m.need_type)
        mission_vec, mission_norm = _mission_tfidf(model, snap, m.text)
        return cls(
            spec=m, prior_strength=f.prior_strength, p_global=f.p_global,
            need=f.need_index.get(m.need_type), p_need=f.p_need.get(m.need_type, f.p_global),
            family_cols=[f.need_index[x] for x, fam in f.need_family.items() if fam == family],
            p_family=f.p_family.get(family, f.p_global), area=snap.area_index.get(m.area_id),
            le_table=f.le_table if snap.le_table is None else snap.le_table,
            mission_vec=mission_vec, mission_norm=mission_norm,
        )


# Mission texts whose TF-IDF vector is kept per (snapshot, model): a transform costs ~2 ms of
# sklearn validation, and a request featurises the same mission more than once.
_MISSION_TEXTS_KEPT = 512


def _model_cache(snap: CommunitySnapshot, name: str, model: FeatureModel) -> dict:
    """A cache in ``snap.extras`` for the text vectoriser of ``model``.

    Keyed by the fitted vectoriser, which is kept with its entries: a refitted model (a new
    vectoriser), or a new one that reuses a freed object's ``id``, never reads stale ones.
    """
    vectorizer = model.vectorizer
    per_model = snap.extras.setdefault(name, {})
    entry = per_model.get(id(vectorizer))
    if entry is None or entry[0] is not vectorizer:
        entry = per_model[id(vectorizer)] = (vectorizer, {})
    return entry[1]


def _mission_tfidf(model: FeatureModel, snap: CommunitySnapshot, text: str
                   ) -> tuple[sp.csr_matrix, float]:
    """TF-IDF vector of a mission's text and its norm (cached)."""
    cache = _model_cache(snap, "mission_tfidf", model)
    hit = cache.get(text)
    if hit is None:
        vec = model.vectorizer.transform([text])
        hit = (vec, float(np.sqrt(vec.multiply(vec).sum())))
        if len(cache) >= _MISSION_TEXTS_KEPT:  # forget the oldest
            cache.pop(next(iter(cache), None), None)
        cache[text] = hit
    return hit


def _neighbourhood(ties: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """The rows ``ties`` with their columns renumbered to the persons they reach.

    Returns the compact matrix and the snapshot index of each of its columns, so that
    ``ties @ x == compact @ x[cols]`` (same products, same order) without building ``x``
    over the whole community.
    """
    cols, local = np.unique(ties.indices, return_inverse=True)
    compact = sp.csr_matrix((ties.data, local.reshape(-1), ties.indptr),
                            shape=(ties.shape[0], len(cols)))
    return compact, cols


def _person_features(model: FeatureModel, snap: CommunitySnapshot, ctx: _MissionContext,
                     idx: np.ndarray, proximity: Mapping[str, np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], sp.csr_matrix]:
    """Features of the persons ``idx`` (repeats allowed) and their rows of the tie matrix.

    ``proximity`` holds the graph signals of ``idx``, row for row.

    Everything is gathered for ``idx`` and the persons they are tied to: the cost grows
    with the candidates, not with the community.
    """
    m, k, p_global, j, area = ctx.spec, ctx.prior_strength, ctx.p_global, ctx.need, ctx.area
    n_idx = len(idx)
    n_out = snap.n_outcomes[idx]
    w_le = le_weight(n_out)
    affinity = _le_affinity(snap, ctx, idx)

    if j is None:  # a need type the model has never seen: no per-need history
        need_n = need_s = np.zeros(n_idx)
        skill = skill_fit = np.zeros(n_idx)
    else:
        need_n, need_s = snap.need_n[idx, j], snap.need_s[idx, j]
        d = model._check().n_factors
        skill = snap.latent[idx, :d] @ model._check().need_factors[j, :d]
        skill_fit = snap.latent[idx, d + j]
    if ctx.family_cols:
        fam = np.ix_(idx, ctx.family_cols)
        fam_n, fam_s = snap.need_n[fam].sum(axis=1), snap.need_s[fam].sum(axis=1)
    else:
        fam_n = fam_s = np.zeros(n_idx)

    own_area = snap.person_area[idx]
    dist = (np.full(n_idx, np.nan) if area is None
            else snap.area_distance_km[own_area, area])

    ties = snap.ties[idx]
    near, cols = _neighbourhood(ties)
    succeeded = (np.zeros(len(cols)) if j is None
                 else (snap.need_s[cols, j] > 0).astype(float))
    ties_w = near @ succeeded
    ties_n = (near > 0).astype(float) @ succeeded
    reach = np.diff(ties.indptr).astype(float)
    if area is None:
        in_area = np.zeros(n_idx)
    else:
        in_area = np.log1p(near @ (snap.person_area[cols] == area).astype(float))
    rates = (snap.res_s[cols] + k * p_global) / (snap.res_n[cols] + k)
    strength = np.asarray(ties.sum(axis=1)).ravel()
    peers_rate = np.where(strength > 0, (near @ rates) / np.maximum(strength, 1e-12), p_global)

    n_nodes = max(1, len(snap.person_ids))
    prox = proximity["proximity"] * n_nodes
    prox_le = proximity["proximity_le"] * n_nodes * w_le
    feats = {
        "le_fit": w_le * affinity,
        "le_weight": w_le,
        "n_outcomes": n_out,
        "tr_rate": (snap.res_s[idx] + k * p_global) / (snap.res_n[idx] + k),
        "tr_rate_need": (need_s + k * ctx.p_need) / (need_n + k),
        "tr_rate_family": (fam_s + k * ctx.p_family) / (fam_n + k),
        "tr_recent": (snap.recent_s[idx] + k * p_global) / (snap.recent_n[idx] + k),
        "days_since_last": snap.days_since_last[idx],
        "skill_latent": skill,
        "skill_fit": skill_fit,
        "proximity": prox,
        "proximity_le": prox_le,
        "ties_succeeded": ties_n,
        "ties_succeeded_w": ties_w,
        "ties_in_area": in_area,
        "peers_rate": peers_rate,
        "distance_km": dist,
        "same_area": (own_area == area).astype(float) if area is not None
        else np.zeros(n_idx),
        "availability_ratio": snap.availability[idx] / m.weekly_minutes,
        "load": snap.load[idx] / np.maximum(snap.capacity[idx], 1),
        "tenure_days": snap.tenure_days[idx],
        "text_fit": _text_fit(model, snap, ctx, idx),
        "is_group": np.zeros(n_idx),
        "team_size": np.ones(n_idx),
        "team_fit": np.full(n_idx, float(m.team_min <= 1 <= m.team_max)),
        "group_cohesion": np.zeros(n_idx),
        "group_reach": reach,
    }
    return feats, ties


def _le_affinity(snap: CommunitySnapshot, ctx: _MissionContext, idx: np.ndarray) -> np.ndarray:
    """Best lived-experience affinity of each person's tags to the mission's need."""
    table, need = ctx.le_table, ctx.spec.need_type
    seen: dict[tuple[str, ...], float] = {}  # few distinct tag sets: look each up once
    out = np.empty(len(idx))
    for pos, i in enumerate(idx.tolist()):
        tags = tuple(snap.le_tags[i])
        a = seen.get(tags)
        if a is None:
            a = seen[tags] = max((table.get((t, need), 0.0) for t in tags), default=0.0)
        out[pos] = a
    return out


def _text_fit(model: FeatureModel, snap: CommunitySnapshot, ctx: _MissionContext,
              idx: np.ndarray) -> np.ndarray:
    cache = _model_cache(snap, "skill_tfidf", model)
    if "skills" not in cache:
        f = model._check()
        texts = [f.skill_text[s] for s in snap.skill_names]
        cache["skills"] = model.vectorizer.transform(texts)  # skills x vocabulary
    skill_tfidf = cache["skills"]
    person_vecs = snap.skills[idx] @ skill_tfidf
    num = np.asarray((person_vecs @ ctx.mission_vec.T).todense()).ravel()
    norms = np.sqrt(np.asarray(person_vecs.multiply(person_vecs).sum(axis=1)).ravel())
    m_norm = ctx.mission_norm
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((norms > 0) & (m_norm > 0), num / (norms * m_norm), 0.0)
    return out


# How a group's value of each person feature is taken from its members' values.
_GROUP_AGG = {
    "le_fit": "max", "le_weight": "mean", "n_outcomes": "sum", "tr_rate": "mean",
    "tr_rate_need": "max", "tr_rate_family": "mean", "tr_recent": "mean",
    "days_since_last": "min", "skill_latent": "max", "skill_fit": "max",
    "proximity": "sum",
    "proximity_le": "sum", "ties_succeeded": "sum", "ties_succeeded_w": "sum",
    "ties_in_area": "max", "peers_rate": "mean",
    "distance_km": "max", "same_area": "max", "availability_ratio": "min", "load": "max",
    "tenure_days": "mean", "text_fit": "max",
}
_REDUCE = {"max": np.maximum.reduceat, "min": np.minimum.reduceat, "sum": np.add.reduceat,
           "mean": np.add.reduceat}


def _group_features(members: list[np.ndarray], m: MissionSpec, feats: Mapping[str, np.ndarray],
                    ties: sp.csr_matrix, n_persons: int) -> dict[str, np.ndarray]:
    """Features of peer groups from their members' rows, concatenated group after group.

    ``feats`` and ``ties`` hold one row per member of ``members[0]``, then of
    ``members[1]``, ...; every group has at least one member.
    """
    sizes = np.array([len(x) for x in members], dtype=np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    out = {name: _REDUCE[how](feats[name], starts) for name, how in _GROUP_AGG.items()}
    for name, how in _GROUP_AGG.items():
        if how == "mean":
            out[name] = out[name] / sizes

    # Cohesion and reach from the members' tie rows: an entry is inside its group when its
    # column is one of the group's members (keys group * n + person compare both at once).
    n_groups = len(members)
    row_group = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
    entry_group = np.repeat(row_group, np.diff(ties.indptr))
    entry_key = entry_group * n_persons + ties.indices
    member_key = row_group * n_persons + np.concatenate(members)
    inside = np.isin(entry_key, member_key)
    within = np.bincount(entry_group[inside], weights=ties.data[inside], minlength=n_groups)
    outside = np.unique(entry_key[~inside])
    sizes_f = sizes.astype(float)
    out.update({
        "is_group": np.ones(n_groups),
        "team_size": sizes_f,
        "team_fit": ((m.team_min <= sizes) & (sizes <= m.team_max)).astype(float),
        "group_cohesion": within / np.maximum(1, sizes * (sizes - 1)),
        "group_reach": np.bincount(outside // n_persons, minlength=n_groups).astype(float),
    })
    return out


def build_features(model: FeatureModel, snap: CommunitySnapshot, mission: Any,
                   person_ids: Sequence[str] = (), group_ids: Sequence[str] = (),
                   signals: Mapping[str, np.ndarray] | None = None) -> pl.DataFrame:
    """Features of each candidate (persons, then peer groups) for ``mission``.

    Parameters
    ----------
    model : FeatureModel
        The fitted learned parts (shipped with the ranker).
    snap : CommunitySnapshot
        The community as of the time of the decision (nothing at or after it is used).
    mission : Mission, mapping or MissionSpec
        The mission, stored or not.
    person_ids, group_ids : sequences of str
        The candidates. Unknown ids (not in the snapshot: joined later, erased) raise
        ``KeyError``.
    signals : mapping, optional
        Graph proximity arrays over the snapshot's persons (``proximity`` and
        ``proximity_le``); computed from ``snap`` when not given.

    Returns
    -------
    polars.DataFrame
        Columns ``kind`` ("person"/"group"), ``candidate_id`` and every feature of
        :data:`features.FEATURE_NAMES`, one row per candidate, in the order given.
    """
    m = MissionSpec.of(mission)
    person_ids, group_ids = list(person_ids), list(group_ids)
    unknown = [p for p in person_ids if p not in snap.person_index]
    unknown_groups = [g for g in group_ids if g not in snap.group_members]
    if unknown or unknown_groups:
        raise KeyError(f"not in the community as of {snap.as_of.isoformat()}: "
                       f"persons {unknown[:5]}, groups {unknown_groups[:5]}")
    if not person_ids and not group_ids:
        return pl.DataFrame(schema=candidate_frame_schema())
    ctx = _MissionContext.of(model, snap, m)

    # One pass over the persons and every group's members, concatenated.
    idx = np.fromiter((snap.person_index[p] for p in person_ids), dtype=np.int64,
                      count=len(person_ids))
    members = [snap.group_members[g] for g in group_ids]
    every = np.concatenate([idx, *members])
    feats, ties = _person_features(model, snap, ctx, every, _proximity(snap, m, every, signals))
    n_p = len(idx)
    columns = {name: np.asarray(v[:n_p], dtype=np.float64) for name, v in feats.items()}
    if group_ids:
        groups = _group_features(members, m, {n: v[n_p:] for n, v in feats.items()},
                                 ties[n_p:], len(snap.person_ids))
        columns = {name: np.concatenate([columns[name], np.asarray(groups[name], np.float64)])
                   for name in columns}
    return pl.DataFrame(
        {"kind": ["person"] * n_p + ["group"] * len(group_ids),
         "candidate_id": person_ids + group_ids,
         **{name: columns[name] for name in FEATURE_NAMES}},
        schema=candidate_frame_schema(),
    )


def graph_signals(snap: CommunitySnapshot, m: MissionSpec) -> dict[str, np.ndarray]:
    """Proximity arrays over the snapshot's persons for a mission.

    Read from the community graph attached to the snapshot (:func:`attach_graph`). A
    snapshot without a graph (a feature set ablated of the graph) gives zeros.
    """
    source = snap.extras.get("graph")
    if source is None:
        n = len(snap.person_ids)
        return {"proximity": np.zeros(n), "proximity_le": np.zeros(n)}
    return source(m)


def _proximity(snap: CommunitySnapshot, m: MissionSpec, idx: np.ndarray,
               signals: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The proximity signals of the persons ``idx`` only (no array over the community)."""
    if signals is not None:
        return {k: np.asarray(signals[k])[idx] for k in ("proximity", "proximity_le")}
    source = snap.extras.get("graph")
    if source is None:
        return {"proximity": np.zeros(len(idx)), "proximity_le": np.zeros(len(idx))}
    if isinstance(source, _GraphSignals):
        return source.take(m, idx)
    return {k: v[idx] for k, v in source(m).items()}


class _GraphSignals:
    """Proximity of a snapshot's persons to a mission, from the community graph as of then.

    Calling it gives arrays over every person of the snapshot; :meth:`take` gathers only
    the persons asked for.
    """

    def __init__(self, graph: CommunityGraph, person_ids: Sequence[str]) -> None:
        self.graph = graph
        self.positions = graph.person_index(person_ids)  # snapshot row -> graph person

    def _ppr(self, m: MissionSpec) -> tuple[np.ndarray, np.ndarray] | None:
        """Both PPR vectors over the graph's persons (views of the cached solves)."""
        g = self.graph
        seeds = {k: v for k, v in mission_seeds(m.area_id, m.need_type).items() if k in g.nodes}
        if not seeds:  # neither the area nor the need is known: no proximity to measure
            return None
        total = sum(seeds.values())
        seeds = {k: v / total for k, v in seeds.items()}
        people = g.nodes.slice("person")
        return (personalized_pagerank(g, seeds)[people],
                personalized_pagerank(g, seeds, lived_experience=True)[people])

    def take(self, m: MissionSpec, idx: np.ndarray) -> dict[str, np.ndarray]:
        ppr = self._ppr(m)
        if ppr is None:
            return {"proximity": np.zeros(len(idx)), "proximity_le": np.zeros(len(idx))}
        at = self.positions[idx]
        return {"proximity": np.asarray(ppr[0][at], dtype=float),
                "proximity_le": np.asarray(ppr[1][at], dtype=float)}

    def __call__(self, m: MissionSpec) -> dict[str, np.ndarray]:
        return self.take(m, np.arange(len(self.positions)))


def attach_graph(snap: CommunitySnapshot, graph: CommunityGraph) -> CommunitySnapshot:
    """Give ``snap`` the community graph as of its time, for the proximity features.

    ``graph`` is the graph of the whole store (or as of any later time): it is cut at the
    snapshot's time, so no edge from the future reaches a feature.
    """
    g = graph if graph.as_of == snap.as_of else graph.snapshot(snap.as_of)
    snap.extras["graph"] = _GraphSignals(g, snap.person_ids.tolist())
    return snap
