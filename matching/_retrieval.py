"""Retrieval: from the whole community to a few hundred candidates, by index, not by scan.

Persons are indexed by area (sorted by availability inside an area) and, per vetting regime,
by who holds a valid check; a mission first takes the areas within its radius (or the nearest
ones when it has none), cuts each area's list at the mission's weekly minutes by binary
search, applies the hard rules to that pool only, then keeps the best ``pool_size`` by a
cheap score computed from precomputed per-person arrays. The cost of a request grows with the
size of the areas it touches, not with the size of the community.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features import CommunitySnapshot, FeatureModel, le_weight

__all__ = ["RetrievalIndex", "cheap_scores"]


@dataclass
class _Area:
    persons: np.ndarray  # person indices sorted by availability, ascending
    availability: np.ndarray  # the same, their availability


class RetrievalIndex:
    """Per-area person lists and per-need cheap-score parts, built once per snapshot."""

    def __init__(self, snap: CommunitySnapshot, model: FeatureModel,
                 min_pool_persons: int = 2000) -> None:
        self.snap = snap
        self.model = model
        self.min_pool_persons = min_pool_persons
        order = np.lexsort((snap.availability, snap.person_area))
        areas = snap.person_area[order]
        bounds = np.searchsorted(areas, np.arange(len(snap.area_ids) + 1))
        self.areas = [
            _Area(order[bounds[a]:bounds[a + 1]], snap.availability[order[bounds[a]:bounds[a + 1]]])
            for a in range(len(snap.area_ids))
        ]
        f = model._check()
        needs = sorted(f.need_index, key=f.need_index.get)
        # Lived-experience affinity per person and need, faded: the same numbers le_fit uses.
        # Computed once per distinct set of tags (there are few), then gathered per person.
        w = le_weight(snap.n_outcomes)
        self.le = np.zeros((len(snap.person_ids), len(needs)))
        tag_sets: dict[tuple[str, ...], int] = {}
        rows, codes = [], []
        for i, tags in enumerate(snap.le_tags):
            if tags and w[i] > 0:
                rows.append(i)
                codes.append(tag_sets.setdefault(tuple(tags), len(tag_sets)))
        if rows:
            affinity = np.array([[model.le_affinity(list(tags), n) for n in needs]
                                 for tags in tag_sets])
            self.le[rows] = w[rows, None] * affinity[codes]
        self._succeeded: dict[int, np.ndarray] = {}

    def succeeded(self, j: int) -> np.ndarray:
        """Per person: 1.0 if they succeeded on need ``j`` before the snapshot (cached)."""
        out = self._succeeded.get(j)
        if out is None:
            out = self._succeeded[j] = (self.snap.need_s[:, j] > 0).astype(float)
        return out

    def areas_for(self, area_id: str, radius_km: float | None) -> np.ndarray:
        """Area indices a mission draws from: within its radius, else the nearest ones."""
        a = self.snap.area_index.get(area_id)
        if a is None:
            return np.zeros(0, dtype=np.int64)
        dist = self.snap.area_distance_km[a]
        if radius_km is not None:
            return np.flatnonzero(dist <= radius_km)
        order = np.argsort(dist, kind="stable")
        sizes = np.array([len(self.areas[i].persons) for i in order])
        enough = np.searchsorted(np.cumsum(sizes), self.min_pool_persons) + 1
        return order[:enough]

    def pool(self, area_id: str, radius_km: float | None, weekly_minutes: int) -> np.ndarray:
        """Persons of the mission's areas with at least the mission's weekly minutes."""
        parts = []
        for a in self.areas_for(area_id, radius_km):
            area = self.areas[a]
            start = np.searchsorted(area.availability, weekly_minutes, side="left")
            parts.append(area.persons[start:])
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def cheap_scores(index: RetrievalIndex, idx: np.ndarray, need_type: str, area_id: str
                 ) -> np.ndarray:
    """A cheap stand-in for the ranker: smoothed success on this need and overall, faded
    lived-experience fit, tie successes and closeness. Only used to cut the pool."""
    snap, f = index.snap, index.model._check()
    k = f.prior_strength
    j = f.need_index.get(need_type)
    p_need = f.p_need.get(need_type, f.p_global)
    overall = (snap.res_s[idx] + k * f.p_global) / (snap.res_n[idx] + k)
    if j is None:
        on_need = np.full(len(idx), p_need)
        le = np.zeros(len(idx))
        succeeded = np.zeros(len(snap.person_ids))
    else:
        on_need = (snap.need_s[idx, j] + k * p_need) / (snap.need_n[idx, j] + k)
        le = index.le[idx, j]
        succeeded = index.succeeded(j)
    peers = snap.ties[idx] @ succeeded
    a = snap.area_index.get(area_id)
    dist = snap.area_distance_km[snap.person_area[idx], a] if a is not None else 0.0
    skill = snap.latent[idx] @ f.need_factors[j] if j is not None else 0.0
    return (on_need + 0.5 * overall + 0.3 * le + 0.05 * np.minimum(peers, 3)
            + 0.5 * skill - 0.01 * dist)
