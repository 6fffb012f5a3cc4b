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


def _person_features(model: FeatureModel, snap: CommunitySnapshot, m: MissionSpec,
                     idx: np.ndarray, signals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    f = model._check()
    k = f.prior_strength
    p_global = f.p_global
    j = f.need_index.get(m.need_type)
    p_need = f.p_need.get(m.need_type, p_global)
    family = f.need_family.get(m.need_type, m.need_type)
    fam_cols = [f.need_index[x] for x, fam in f.need_family.items() if fam == family]

    n_out = snap.n_outcomes[idx]
    w_le = le_weight(n_out)
    table = f.le_table if snap.le_table is None else snap.le_table
    affinity = np.array([max((table.get((t, m.need_type), 0.0) for t in snap.le_tags[i]),
                             default=0.0) for i in idx])

    if j is None:  # a need type the model has never seen: no per-need history
        need_n = need_s = np.zeros(len(idx))
        skill = skill_fit = np.zeros(len(idx))
    else:
        need_n, need_s = snap.need_n[idx, j], snap.need_s[idx, j]
        d = f.n_factors
        skill = snap.latent[idx, :d] @ f.need_factors[j, :d]
        skill_fit = snap.latent[idx, d + j]
    fam_n = snap.need_n[idx][:, fam_cols].sum(axis=1) if fam_cols else np.zeros(len(idx))
    fam_s = snap.need_s[idx][:, fam_cols].sum(axis=1) if fam_cols else np.zeros(len(idx))
    p_fam = f.p_family.get(family, p_global)

    area = snap.area_index.get(m.area_id)
    if area is None:
        dist = np.full(len(idx), np.nan)
    else:
        dist = snap.area_distance_km[snap.person_area[idx], area]

    ties = snap.ties[idx]
    if j is None:
        succeeded = np.zeros(snap.ties.shape[0])
    else:
        succeeded = (snap.need_s[:, j] > 0).astype(float)
    ties_w = ties @ succeeded
    ties_n = (ties > 0).astype(float) @ succeeded
    reach = np.diff(ties.indptr).astype(float)
    if area is None:
        in_area = np.zeros(len(idx))
    else:
        in_area = np.log1p(ties @ (snap.person_area == area).astype(float))
    rates = (snap.res_s + k * p_global) / (snap.res_n + k)
    strength = np.asarray(ties.sum(axis=1)).ravel()
    peers_rate = np.where(strength > 0, (ties @ rates) / np.maximum(strength, 1e-12), p_global)

    n_nodes = max(1, len(snap.person_ids))
    prox = signals["proximity"][idx] * n_nodes
    prox_le = signals["proximity_le"][idx] * n_nodes * w_le
    return {
        "le_fit": w_le * affinity,
        "le_weight": w_le,
        "n_outcomes": n_out,
        "tr_rate": (snap.res_s[idx] + k * p_global) / (snap.res_n[idx] + k),
        "tr_rate_need": (need_s + k * p_need) / (need_n + k),
        "tr_rate_family": (fam_s + k * p_fam) / (fam_n + k),
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
        "same_area": (snap.person_area[idx] == area).astype(float) if area is not None
        else np.zeros(len(idx)),
        "availability_ratio": snap.availability[idx] / m.weekly_minutes,
        "load": snap.load[idx] / np.maximum(snap.capacity[idx], 1),
        "tenure_days": snap.tenure_days[idx],
        "text_fit": _text_fit(model, snap, m, idx),
        "is_group": np.zeros(len(idx)),
        "team_size": np.ones(len(idx)),
        "team_fit": np.full(len(idx), float(m.team_min <= 1 <= m.team_max)),
        "group_cohesion": np.zeros(len(idx)),
        "group_reach": reach,
    }


def _text_fit(model: FeatureModel, snap: CommunitySnapshot, m: MissionSpec,
              idx: np.ndarray) -> np.ndarray:
    cache = snap.extras.setdefault("skill_tfidf", {})
    key = id(model)
    if key not in cache:
        f = model._check()
        texts = [f.skill_text[s] for s in snap.skill_names]
        cache[key] = model.vectorizer.transform(texts)  # skills x vocabulary
    skill_tfidf = cache[key]
    mission_vec = model.vectorizer.transform([m.text])
    person_vecs = snap.skills[idx] @ skill_tfidf
    num = np.asarray((person_vecs @ mission_vec.T).todense()).ravel()
    norms = np.sqrt(np.asarray(person_vecs.multiply(person_vecs).sum(axis=1)).ravel())
    m_norm = np.sqrt(mission_vec.multiply(mission_vec).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((norms > 0) & (m_norm > 0), num / (norms * m_norm), 0.0)
    return out


_GROUP_AGG = {
    "le_fit": np.max, "le_weight": np.mean, "n_outcomes": np.sum, "tr_rate": np.mean,
    "tr_rate_need": np.max, "tr_rate_family": np.mean, "tr_recent": np.mean,
    "days_since_last": np.min, "skill_latent": np.max, "skill_fit": np.max,
    "proximity": np.sum,
    "proximity_le": np.sum, "ties_succeeded": np.sum, "ties_succeeded_w": np.sum,
    "ties_in_area": np.max, "peers_rate": np.mean,
    "distance_km": np.max, "same_area": np.max, "availability_ratio": np.min, "load": np.max,
    "tenure_days": np.mean, "text_fit": np.max,
}


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
    if signals is None:
        signals = graph_signals(snap, m)
    unknown = [p for p in person_ids if p not in snap.person_index]
    unknown_groups = [g for g in group_ids if g not in snap.group_members]
    if unknown or unknown_groups:
        raise KeyError(f"not in the community as of {snap.as_of.isoformat()}: "
                       f"persons {unknown[:5]}, groups {unknown_groups[:5]}")
    parts = []
    if len(person_ids):
        idx = np.array([snap.person_index[p] for p in person_ids], dtype=np.int64)
        feats = _person_features(model, snap, m, idx, signals)
        parts.append(pl.DataFrame({"kind": ["person"] * len(idx),
                                   "candidate_id": list(person_ids), **feats}))
    if len(group_ids):
        rows = []
        for g in group_ids:
            members = snap.group_members[g]
            feats = _person_features(model, snap, m, members, signals)
            row = {name: float(agg(feats[name])) for name, agg in _GROUP_AGG.items()}
            size = len(members)
            sub = snap.ties[members][:, members]
            neigh = set(snap.ties[members].indices.tolist()) - set(members.tolist())
            row.update({
                "is_group": 1.0, "team_size": float(size),
                "team_fit": float(m.team_min <= size <= m.team_max),
                "group_cohesion": float(sub.sum() / max(1, size * (size - 1))),
                "group_reach": float(len(neigh)),
            })
            rows.append({"kind": "group", "candidate_id": g, **row})
        parts.append(pl.DataFrame(rows))
    if not parts:
        return pl.DataFrame(schema=candidate_frame_schema())
    out = pl.concat([p.select(["kind", "candidate_id", *FEATURE_NAMES]) for p in parts],
                    how="vertical_relaxed")
    return out.with_columns(pl.col(n).cast(pl.Float64) for n in FEATURE_NAMES)


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


def attach_graph(snap: CommunitySnapshot, graph: CommunityGraph) -> CommunitySnapshot:
    """Give ``snap`` the community graph as of its time, for the proximity features.

    ``graph`` is the graph of the whole store (or as of any later time): it is cut at the
    snapshot's time, so no edge from the future reaches a feature.
    """
    g = graph if graph.as_of == snap.as_of else graph.snapshot(snap.as_of)
    positions = g.person_index(snap.person_ids.tolist())

    def signals(m: MissionSpec) -> dict[str, np.ndarray]:
        seeds = {k: v for k, v in mission_seeds(m.area_id, m.need_type).items() if k in g.nodes}
        if not seeds:  # neither the area nor the need is known: no proximity to measure
            n = len(snap.person_ids)
            return {"proximity": np.zeros(n), "proximity_le": np.zeros(n)}
        total = sum(seeds.values())
        seeds = {k: v / total for k, v in seeds.items()}
        people = g.nodes.slice("person")
        plain = personalized_pagerank(g, seeds)[people]
        with_le = personalized_pagerank(g, seeds, lived_experience=True)[people]
        return {"proximity": np.asarray(plain, dtype=float)[positions],
                "proximity_le": np.asarray(with_le, dtype=float)[positions]}

    snap.extras["graph"] = signals
    return snap
