"""The serving path: hard rules -> retrieval -> features -> ranker -> shortlist policy.

:class:`MatchingEngine` holds what a request reads (the community snapshot as of now, its
graph, indexes, the feature model and the ranker), built once per store version; every
request then costs filters + retrieval + features + ranking over a few hundred candidates.

The shortlist policy (:meth:`MatchingEngine.shortlist`) ranks persons and peer groups
together. It explores by Thompson sampling: each candidate's success probability is drawn
from a Beta whose width shrinks with their verified outcomes, so newcomers, whose
probability is uncertain, sometimes rise; a configurable share of the list is reserved for
candidates with a newcomer in them. Exploration is capped on missions that need vetting
(minors, vulnerable adults). No person appears twice (alone and in a group) and no more than
``max_per_cluster`` candidates come from one tight cluster of ties. Every served candidate
carries its propensity: the probability that this policy shows it in the top k, estimated by
seeded Monte Carlo over the same draws (floor ``1 / mc_draws``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from features import (
    FEATURES,
    CommunitySnapshot,
    FeatureModel,
    MissionSpec,
    attach_graph,
    build_features,
)
from graph._community_graph import CommunityGraph, community_graph_from_frames
from graph._frames import CommunityFrames
from graph._payout import PayRule
from matching._ranker import BaseRanker
from matching._retrieval import RetrievalIndex, cheap_scores
from matching._rules import (
    Eligibility,
    MissionRules,
    VettingIndex,
    eligible_candidates,
    incomplete_groups,
)

__all__ = ["Candidate", "MatchingEngine", "ShortlistConfig", "ShortlistResult"]

# Features where a smaller value speaks for the candidate.
_LOWER_IS_BETTER = {"distance_km", "days_since_last", "load"}
_REASON_FEATURES = [f for f in FEATURES if f.reason]


@dataclass(frozen=True)
class ShortlistConfig:
    """Knobs of the shortlist policy.

    Parameters
    ----------
    newcomer_share : float
        Share of the k places reserved for candidates with a newcomer in them.
    newcomer_outcomes : int
        A person with fewer verified outcomes than this is a newcomer (DESIGN.md).
    vetted_newcomer_share : float
        Cap on ``newcomer_share`` for missions that need vetting (minors, vulnerable adults).
    prior_strength : float
        Pseudo-outcomes of the Thompson Beta: a newcomer's draw is Beta(p m, (1 - p) m) with
        m = prior_strength + their outcomes (capped at ``max_strength``).
    vetted_strength_factor : float
        On vetted missions, m is multiplied by this: draws stay close to the score.
    max_per_cluster : int
        Most candidates of one list in one connected component of strong ties
        (weight >= ``strong_tie``) among the list's persons; pins may exceed it.
    pool_size : int
        Candidates kept by retrieval for the ranker (persons; groups come on top).
    prefilter_size : int
        Persons kept by retrieval's cheap score, of whom the ranker keeps its best
        ``pool_size`` (a two-stage cascade; at most ``pool_size``: the cheap score alone).
    mc_draws : int
        Monte Carlo draws for the propensities.
    """

    newcomer_share: float = 0.2
    newcomer_outcomes: int = 3
    vetted_newcomer_share: float = 0.1
    prior_strength: float = 4.0
    max_strength: float = 60.0
    vetted_strength_factor: float = 10.0
    max_per_cluster: int = 3
    strong_tie: float = 0.5
    pool_size: int = 300
    prefilter_size: int = 900
    max_groups: int = 100
    mc_draws: int = 200


@dataclass
class Candidate:
    kind: str
    candidate_id: str
    members: list[str]
    rank: int
    score: float
    propensity: float
    expected_payout: float
    newcomer: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class ShortlistResult:
    mission_id: str
    candidates: list[Candidate]
    model_version: str
    policy: str
    filters: dict
    served_at: datetime
    timings_ms: dict[str, float]
    scored: pl.DataFrame | None = None


class MatchingEngine:
    """Everything a request needs, built once per store version.

    Parameters
    ----------
    frames : CommunityFrames
        The store, loaded (:func:`graph.load_frames`).
    feature_model : FeatureModel
        The fitted learned parts shipped with the ranker.
    ranker : BaseRanker
        The model (or the day-one :class:`~matching.PriorRanker`).
    now : datetime, optional
        The time of the requests (default: the wall clock at build).
    config : ShortlistConfig, optional
    graph : CommunityGraph, optional
        Built from ``frames`` when not given.

    Examples
    --------
    >>> engine = MatchingEngine(load_frames(store), feature_model, PriorRanker())  # doctest: +SKIP
    >>> engine.shortlist("M00042", k=10).candidates[0].candidate_id  # doctest: +SKIP
    'P001234'
    """

    def __init__(self, frames: CommunityFrames, feature_model: FeatureModel,
                 ranker: BaseRanker, now: datetime | None = None,
                 config: ShortlistConfig | None = None,
                 graph: CommunityGraph | None = None) -> None:
        self.frames = frames
        self.feature_model = feature_model
        self.ranker = ranker
        self.config = config or ShortlistConfig()
        self.now = now or datetime.now(UTC)
        self.version = frames.version
        self.snapshot = CommunitySnapshot.build(frames, feature_model, self.now)
        self.graph = graph if graph is not None else community_graph_from_frames(frames)
        attach_graph(self.snapshot, self.graph)
        self.vetting = VettingIndex(frames.vetting, self.snapshot.person_index)
        incomplete_groups(frames, self.snapshot)
        self.retrieval = RetrievalIndex(self.snapshot, feature_model)
        self._missions = {r["mission_id"]: r for r in frames.missions.iter_rows(named=True)}

    # -- missions ------------------------------------------------------------------------
    def mission(self, mission_id: str) -> dict:
        try:
            return self._missions[mission_id]
        except KeyError:
            from graph._errors import NotFoundError

            raise NotFoundError(f"mission {mission_id!r} is not in the store") from None

    # -- the stages ----------------------------------------------------------------------
    def eligible(self, mission: dict, exclude: Iterable[str] = (),
                 use_retrieval: bool = True) -> Eligibility:
        rules = MissionRules.of(mission)
        within = None
        if use_retrieval:
            within = self.retrieval.pool(rules.area_id, rules.radius_km, rules.weekly_minutes)
        return eligible_candidates(self.snapshot, self.vetting, rules, exclude, within=within)

    def retrieve(self, mission: dict, eligibility: Eligibility,
                 pool_size: int | None = None) -> tuple[np.ndarray, list[str]]:
        """The best ``pool_size`` eligible persons, and the best groups.

        A cascade: the cheap score keeps ``prefilter_size`` persons, then the ranker keeps its
        own best ``pool_size`` of them. The cheap score alone misses too many of a learned
        ranker's top candidates (tests/matching/test_retrieval.py measures the recall).
        """
        pool_size = pool_size or self.config.pool_size
        idx = eligibility.person_idx
        prefilter = max(pool_size, self.config.prefilter_size)
        if len(idx) > prefilter:
            s = cheap_scores(self.retrieval, idx, mission["need_type"], mission["area_id"])
            keep = np.argpartition(-s, prefilter - 1)[:prefilter]
            idx = np.sort(idx[keep])
        if len(idx) > pool_size:
            p = self.score(mission, idx, [])["p_success"].to_numpy()
            keep = np.argsort(-p, kind="stable")[:pool_size]
            idx = np.sort(idx[keep])
        groups = eligibility.group_ids
        if len(groups) > self.config.max_groups:
            snap = self.snapshot
            gs = np.array([cheap_scores(self.retrieval, snap.group_members[g],
                                        mission["need_type"], mission["area_id"]).mean()
                           for g in groups])
            keep = np.argsort(-gs, kind="stable")[: self.config.max_groups]
            groups = sorted(groups[i] for i in keep)
        return idx, groups

    def score(self, mission: dict, person_idx: np.ndarray, group_ids: Sequence[str]
              ) -> pl.DataFrame:
        """Features and calibrated success probability of each candidate."""
        snap = self.snapshot
        persons = snap.person_ids[person_idx].tolist()
        feats = build_features(self.feature_model, snap, mission, persons, list(group_ids))
        if feats.height == 0:
            return feats.with_columns(pl.lit(0.0).alias("p_success"))
        p = self.ranker.predict_proba(feats)
        return feats.with_columns(pl.Series("p_success", np.asarray(p, dtype=float)))

    # -- the shortlist -------------------------------------------------------------------
    def shortlist(self, mission_id: str | None = None, k: int = 10, *,
                  mission: dict | None = None, exclude: Iterable[str] = (),
                  pin: Sequence[str] = (), seed: int | None = None,
                  allow_special_category: bool = False) -> ShortlistResult:
        """Rank persons and peer groups together for a mission.

        Parameters
        ----------
        mission_id : str
            A stored mission; or give ``mission`` (a dict with the mission's columns) for one
            not yet stored.
        k : int
            Length of the list.
        exclude : ids
            Persons or groups a mission engineer excluded (a hard rule).
        pin : ids
            Eligible candidates an engineer wants on the list whatever their score: placed
            first, with propensity 1.
        seed : int, optional
            Seed of this request's draws (the served list and the propensities).
        allow_special_category : bool
            The caller may read reasons derived from lived experience (``engineer`` scope);
            such a reason is still shown only for persons who consented to its use.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        t0 = time.perf_counter()
        m = mission if mission is not None else self.mission(mission_id)
        eligibility = self.eligible(m, exclude)
        t1 = time.perf_counter()
        idx, groups = self.retrieve(m, eligibility)
        # Pins pass the hard rules like anyone else, wherever retrieval would have cut.
        snap = self.snapshot
        pinned: list[str] = []
        pinned_groups: list[str] = []
        if pin:  # a second pass of the rules only when there is something to check
            pin_idx = np.array([snap.person_index[p] for p in pin if p in snap.person_index],
                               dtype=np.int64)
            pin_ok = eligible_candidates(snap, self.vetting, MissionRules.of(m), exclude,
                                         within=pin_idx)
            pinned = snap.person_ids[pin_ok.person_idx].tolist()
            pinned_groups = [g for g in pin if g in set(pin_ok.group_ids)]
        unknown_pins = sorted(set(pin) - set(pinned) - set(pinned_groups))
        if unknown_pins:
            from graph._errors import ValidationError

            raise ValidationError(f"pinned candidates are not eligible for this mission: "
                                  f"{unknown_pins}")
        if pinned:
            idx = np.union1d(idx, [self.snapshot.person_index[p] for p in pinned])
        groups = sorted(set(groups) | set(pinned_groups))
        t2 = time.perf_counter()
        mission_spec = MissionSpec.of(m)
        feats = build_features(self.feature_model, self.snapshot, mission_spec,
                               self.snapshot.person_ids[idx].tolist(), groups)
        t3 = time.perf_counter()
        p = (np.asarray(self.ranker.predict_proba(feats), dtype=float) if feats.height
             else np.zeros(0))
        t4 = time.perf_counter()
        rng_seed = seed if seed is not None else int.from_bytes(np.random.bytes(4), "little")
        chosen, propensity = self._policy(m, feats, p, k, pinned + pinned_groups, rng_seed)
        t5 = time.perf_counter()
        rule = PayRule.of(m)
        payouts = np.asarray(self.ranker.expected_payout(p, rule), dtype=float) if len(p) else p
        candidates = []
        for rank, i in enumerate(chosen, start=1):
            row = feats.row(i, named=True)
            members = self._members(row["kind"], row["candidate_id"])
            candidates.append(Candidate(
                kind=row["kind"], candidate_id=row["candidate_id"], members=members,
                rank=rank, score=float(p[i]), propensity=float(propensity[i]),
                expected_payout=float(payouts[i]),
                newcomer=bool(self._newcomer_mask(feats)[i]),
                reasons=self._reasons(feats, i, members, allow_special_category),
            ))
        t6 = time.perf_counter()
        filters = eligibility.filters_applied()
        filters.update({"exclude": sorted(set(exclude)), "pin": list(pin),
                        "retrieved_persons": int(len(idx)), "retrieved_groups": len(groups)})
        return ShortlistResult(
            mission_id=m["mission_id"], candidates=candidates,
            model_version=str(getattr(self.ranker, "version", "unknown")),
            policy=self.policy_name(m), filters=filters, served_at=datetime.now(UTC),
            timings_ms={"filters": 1e3 * (t1 - t0), "retrieval": 1e3 * (t2 - t1),
                        "features": 1e3 * (t3 - t2), "ranking": 1e3 * (t4 - t3),
                        "policy": 1e3 * (t5 - t4), "reasons": 1e3 * (t6 - t5)},
            scored=feats.with_columns(pl.Series("p_success", p),
                                      pl.Series("propensity", propensity)),
        )

    def policy_name(self, mission: dict) -> str:
        c = self.config
        vetted = bool(mission.get("vetting_regime"))
        share = min(c.newcomer_share, c.vetted_newcomer_share) if vetted else c.newcomer_share
        return (f"thompson(newcomer_share={share:g},strength={c.prior_strength:g}"
                f"{',vetted' if vetted else ''},cluster_cap={c.max_per_cluster})")

    # -- policy internals ----------------------------------------------------------------
    def _members(self, kind: str, cid: str) -> list[str]:
        if kind == "person":
            return [cid]
        return self.snapshot.person_ids[self.snapshot.group_members[cid]].tolist()

    def _newcomer_mask(self, feats: pl.DataFrame) -> np.ndarray:
        cache = getattr(self, "_nc_cache", None)
        if cache is not None and cache[0] is feats:
            return cache[1]
        snap, c = self.snapshot, self.config
        out = np.zeros(feats.height, dtype=bool)
        for i, (kind, cid) in enumerate(feats.select("kind", "candidate_id").iter_rows()):
            idx = ([snap.person_index[cid]] if kind == "person" else snap.group_members[cid])
            out[i] = bool((snap.n_outcomes[idx] < c.newcomer_outcomes).any())
        self._nc_cache = (feats, out)
        return out

    def _policy(self, mission: dict, feats: pl.DataFrame, p: np.ndarray, k: int,
                pinned: Sequence[str], seed: int) -> tuple[list[int], np.ndarray]:
        """The served list (draw 0) and every candidate's top-k inclusion probability.

        Every draw is resolved as :func:`_greedy` would, but in bulk: the list a draw gives
        without the rules (pins, then its first newcomers for the reserved places, then its
        best) is the greedy's list whenever it breaks no rule (a shared person, a cluster
        over the cap), since a subset of a list that breaks no rule breaks none either. Only
        the draws whose list does break one go through the greedy, one by one.
        """
        n = feats.height
        if n == 0:
            return [], np.zeros(0)
        c = self.config
        snap = self.snapshot
        vetted = bool(mission.get("vetting_regime"))
        share = min(c.newcomer_share, c.vetted_newcomer_share) if vetted else c.newcomer_share
        kinds = feats["kind"].to_list()
        ids = feats["candidate_id"].to_list()
        member_idx = [([snap.person_index[cid]] if kd == "person"
                       else snap.group_members[cid].tolist()) for kd, cid in zip(kinds, ids,
                                                                                 strict=True)]
        sizes = np.array([len(m) for m in member_idx])
        flat = np.fromiter((x for m in member_idx for x in m), dtype=np.int64,
                           count=int(sizes.sum()))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        outcomes = np.add.reduceat(snap.n_outcomes[flat], starts)
        newcomer = self._newcomer_mask(feats)
        linked, shared = self._strong_neighbours(flat, sizes)
        strength = np.minimum(c.prior_strength + outcomes, c.max_strength)
        if vetted:
            strength = strength * c.vetted_strength_factor
        pc = np.clip(p, 1e-4, 1 - 1e-4)
        rng = np.random.default_rng(seed)
        draws = rng.beta(pc * strength, (1 - pc) * strength, size=(c.mc_draws, n))
        pinned_pos = [ids.index(x) for x in pinned if x in ids]
        n_new = int(round(share * k))
        pins = list(dict.fromkeys(pinned_pos))[:k]
        lists = np.hstack([np.broadcast_to(np.array(pins, dtype=np.int64),
                                           (c.mc_draws, len(pins))),
                           _best_of_draws(draws, k - len(pins), newcomer, n_new, pins)])
        broken = _breaks_rules(lists, linked, shared, c.max_per_cluster)
        counts = np.bincount(lists[~broken].ravel(), minlength=n).astype(float)
        served: list[int] = lists[0].tolist()
        if broken.any():
            rows, cols = np.nonzero(linked)
            tied = np.split(cols, np.searchsorted(rows, np.arange(1, n)))
            for d in np.flatnonzero(broken):
                pick = _greedy(draws[d], k, newcomer, n_new, member_idx, tied,
                               c.max_per_cluster, pinned_pos)
                counts[pick] += 1
                if d == 0:
                    served = pick
        propensity = np.maximum(counts / c.mc_draws, 1.0 / c.mc_draws)
        propensity[pinned_pos] = 1.0
        # The served list in order of its draw (pins first).
        order0 = sorted(served, key=lambda i: (i not in pinned_pos, -draws[0][i]))
        return order0, propensity

    def _strong_neighbours(self, flat: np.ndarray, sizes: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Between candidates (persons ``flat``, ``sizes`` per candidate), as dense boolean
        matrices with a false diagonal: ``linked``, a strong tie (weight >= ``strong_tie``)
        joins one's person to the other's; ``shared``, they have a person in common."""
        n = len(sizes)
        persons, local = np.unique(flat, return_inverse=True)
        sub = self.snapshot.ties[persons][:, persons]
        strong = sp.csr_matrix(sub >= self.config.strong_tie, dtype=np.float64)
        incidence = sp.csr_matrix((np.ones(len(flat)), (np.repeat(np.arange(n), sizes), local)),
                                  shape=(n, len(persons)))
        linked = (incidence @ strong @ incidence.T).toarray() > 0
        shared = (incidence @ incidence.T).toarray() > 0
        np.fill_diagonal(linked, False)
        np.fill_diagonal(shared, False)
        return linked, shared

    def _reasons(self, feats: pl.DataFrame, i: int, members: list[str],
                 allow_special: bool) -> list[str]:
        snap = self.snapshot
        consent = all(
            bool(snap.le_tags[snap.person_index[m]]) for m in members
        )  # tags are stored only with consent: no tags, no lived-experience reason
        out = []
        for f in _REASON_FEATURES:
            if f.special_category and not (allow_special and consent):
                continue
            col = feats[f.name].to_numpy().astype(float)
            if not np.isfinite(col[i]):
                continue
            std = np.nanstd(col)
            if std <= 1e-12:
                continue
            z = (col[i] - np.nanmean(col)) / std
            if f.name in _LOWER_IS_BETTER:
                z = -z
            if z > 0.5:
                out.append((z, f.family, f.reason))
        out.sort(key=lambda t: -t[0])
        # One reason per family: "lives in the neighbourhood" and "lives nearby" say one thing.
        reasons, families = [], set()
        for _, family, reason in out:
            if family not in families:
                families.add(family)
                reasons.append(reason)
        return reasons[:3]


def _best_of_draws(draws: np.ndarray, places: int, newcomer: np.ndarray, n_new: int,
                   pins: Sequence[int]) -> np.ndarray:
    """Per draw, the candidates the greedy would add to ``pins`` were no rule to bind: the
    draw's best newcomers for the reserved places, then its best of the others.

    Sets, not orders (ties between equal draws fall either way): one row per draw, each of
    the same length.
    """
    n_draws, n = draws.shape
    free = np.ones(n, dtype=bool)
    free[list(pins)] = False
    free_idx = np.flatnonzero(free)
    reserved = max(0, min(n_new - int(newcomer[list(pins)].sum()), places)) if n_new else 0
    new_pos = np.flatnonzero(newcomer[free_idx])  # positions in free_idx
    reserved = min(reserved, len(new_pos))
    neg = -draws[:, free_idx]
    rows = np.arange(n_draws)[:, None]
    first = np.empty((n_draws, 0), dtype=np.int64)
    if reserved:
        sub = neg[:, new_pos]
        top = (np.argpartition(sub, reserved - 1, axis=1)[:, :reserved]
               if reserved < len(new_pos) else np.broadcast_to(np.arange(len(new_pos)),
                                                               sub.shape))
        first = new_pos[top]
        neg[rows, first] = np.inf
    rest = min(places - reserved, len(free_idx) - reserved)
    best = np.empty((n_draws, 0), dtype=np.int64)
    if rest > 0:
        best = np.argpartition(neg, rest - 1, axis=1)[:, :rest]
    return free_idx[np.hstack([first, best])]


def _breaks_rules(lists: np.ndarray, linked: np.ndarray, shared: np.ndarray, cap: int
                  ) -> np.ndarray:
    """Per row of ``lists`` (one list of candidates per draw): does it hold a person twice
    or a connected component of strong ties larger than ``cap``?"""
    n_draws, m = lists.shape
    if m < 2:
        return np.zeros(n_draws, dtype=bool)
    rows, cols = lists[:, :, None], lists[:, None, :]
    broken = shared[rows, cols].any(axis=(1, 2))
    d, i, j = np.nonzero(linked[rows, cols])
    if len(d):
        # Components of every draw's list at once: one graph of n_draws * m nodes.
        nodes = n_draws * m
        g = sp.csr_matrix((np.ones(len(d)), (d * m + i, d * m + j)), shape=(nodes, nodes))
        _, label = connected_components(g, directed=False)
        size = np.bincount(label)[label].reshape(n_draws, m)
        broken |= (size > cap).any(axis=1)
    return broken


def _greedy(theta: np.ndarray, k: int, newcomer: np.ndarray, n_new: int,
            member_idx: list[list[int]], tied: list[np.ndarray], cap: int,
            pinned: Sequence[int]) -> list[int]:
    """One draw of the policy: pins, then the reserved newcomer places, then the rest.

    The cluster cap holds on the list itself: no connected component of strong ties among
    the chosen candidates grows beyond ``cap`` (pins excepted). Components are kept with a
    union-find over the chosen candidates only, so that a community-wide web of ties does
    not starve the list (a component of the whole pool would).
    """
    used: set[int] = set()
    chosen: list[int] = []
    parent: dict[int, int] = {}
    size: dict[int, int] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def take(i: int, force: bool = False) -> bool:
        if i in parent or used.intersection(member_idx[i]):
            return False
        roots = {root(int(j)) for j in tied[i] if int(j) in parent}
        if not force and 1 + sum(size[r] for r in roots) > cap:
            return False
        chosen.append(i)
        used.update(member_idx[i])
        parent[i], size[i] = i, 1 + sum(size[r] for r in roots)
        for r in roots:
            parent[r] = i
        return True

    for i in pinned:
        if len(chosen) < k:
            take(i, force=True)
    order = np.argsort(-theta, kind="stable")
    if n_new:
        got = sum(bool(newcomer[i]) for i in chosen)
        for i in order:
            if got >= n_new or len(chosen) >= k:
                break
            if newcomer[i] and take(int(i)):
                got += 1
    for i in order:
        if len(chosen) >= k:
            break
        take(int(i))
    return chosen
