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
    _ranges,
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
    """One served candidate. ``expected_payout`` is NaN and ``reasons`` empty when the list
    was served with ``explain=False`` (the platform's view)."""

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
    """A served list, what filtered it, and the time each stage took (``timings_ms`` wall,
    ``timings_cpu_ms`` CPU of the process)."""

    mission_id: str
    candidates: list[Candidate]
    model_version: str
    policy: str
    filters: dict
    served_at: datetime
    timings_ms: dict[str, float]
    scored: pl.DataFrame | None = None
    timings_cpu_ms: dict[str, float] = field(default_factory=dict)


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

    # -- warm-up -------------------------------------------------------------------------
    def warm_up(self, mission_ids: Iterable[str] | None = None) -> dict:
        """Solve ahead the personalised PageRank that first requests would otherwise wait for.

        A mission's proximity features are composed from the single-seed PageRank of its
        area and of its need type, in both graph variants (with and without
        lived-experience edges; :func:`graph.personalized_pagerank`). This solves those
        seeds now, on the graph the requests read, so that the first request of a mission
        costs a vector sum instead of solves (15-25 ms of CPU each at 100k persons).

        Safe to call from a background thread while requests are served: each seed is
        cached as soon as it is solved (both variants, one seed after the other), and the
        solves hold no lock a request waits for.

        Parameters
        ----------
        mission_ids : iterable of str, optional
            Warm the areas and need types of these missions only. By default: every need
            type, then every area (a mission created later can be anywhere), those of the
            open and staffed missions first. At most as many seeds as the graph's
            single-seed cache holds (``CommunityGraph.seed_cache_mb``), in that order.

        Returns
        -------
        dict
            ``seeds`` (areas and need types warmed, each in both variants), ``solved``
            (solves run: seeds not warm yet, times variants) and ``seconds`` (wall time).
        """
        start = time.perf_counter()
        signals = self.snapshot.extras.get("graph")
        g = getattr(signals, "graph", None)
        if g is None:  # no graph attached: the proximity features are zero
            return {"seeds": 0, "solved": 0, "seconds": 0.0}
        if mission_ids is None:
            status = self.frames.missions["status"]
            first = self.frames.missions.filter(status.is_in(["open", "staffed"]))
            # Need types first: few, and each serves every mission of its type.
            keys = ([("need", n) for n in first["need_type"]]
                    + [("need", n) for n in g.nodes.ids("need")]
                    + [("area", a) for a in first["area_id"]]
                    + [("area", a) for a in g.nodes.ids("area")])
        else:
            missions = [self.mission(mid) for mid in mission_ids]  # NotFoundError first
            keys = ([("area", m["area_id"]) for m in missions]
                    + [("need", m["need_type"]) for m in missions])
        # Seeds outside the graph have no proximity to warm (the features skip them too).
        keys = [k for k in dict.fromkeys(keys) if k in g.nodes]
        keys = keys[: g.cache_info()["seed_max_size"] // 2]  # both variants must fit
        solved = 0
        for key in keys:
            solved += g.warm([key]) + g.warm([key], lived_experience=True)
        return {"seeds": len(keys), "solved": solved,
                "seconds": round(time.perf_counter() - start, 3)}

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
        idx, groups, _ = self._retrieve(mission, eligibility, pool_size)
        return idx, groups

    def _retrieve(self, mission: dict, eligibility: Eligibility, pool_size: int | None = None
                  ) -> tuple[np.ndarray, list[str], pl.DataFrame | None]:
        """:meth:`retrieve`, plus the features of the persons kept (rows in ``idx`` order)
        when the ranker's cut computed them, so that the features stage does not again."""
        pool_size = pool_size or self.config.pool_size
        idx = eligibility.person_idx
        prefilter = max(pool_size, self.config.prefilter_size)
        kept = None
        if len(idx) > prefilter:
            s = cheap_scores(self.retrieval, idx, mission["need_type"], mission["area_id"])
            keep = np.argpartition(-s, prefilter - 1)[:prefilter]
            idx = np.sort(idx[keep])
        if len(idx) > pool_size:
            scored = self.score(mission, idx, [])
            p = scored["p_success"].to_numpy()
            keep = np.sort(np.argsort(-p, kind="stable")[:pool_size])
            idx = idx[keep]  # idx is sorted, so are its kept rows
            kept = scored.drop("p_success")[keep]
        groups = eligibility.group_ids
        if len(groups) > self.config.max_groups:
            # One cheap score over every member of every group, averaged per group.
            members = [self.snapshot.group_members[g] for g in groups]
            sizes = np.array([len(m) for m in members])
            s = cheap_scores(self.retrieval, np.concatenate(members), mission["need_type"],
                             mission["area_id"])
            gs = np.bincount(np.repeat(np.arange(len(groups)), sizes), weights=s,
                             minlength=len(groups)) / np.maximum(sizes, 1)
            keep = np.argsort(-gs, kind="stable")[: self.config.max_groups]
            groups = sorted(groups[i] for i in keep)
        return idx, groups, kept

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
                  allow_special_category: bool = False, explain: bool = True
                  ) -> ShortlistResult:
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
        explain : bool
            Compute what only a mission engineer reads: the reasons and the expected payout
            of each candidate. The platform's view (``POST /v1/match``) passes False; the
            list, its scores and propensities are the same either way for the same seed.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        wall, cpu = [time.perf_counter()], [time.process_time()]

        def lap() -> None:
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

        m = mission if mission is not None else self.mission(mission_id)
        eligibility = self.eligible(m, exclude)
        lap()
        idx, groups, kept = self._retrieve(m, eligibility)
        # Pins pass the hard rules like anyone else, wherever retrieval would have cut.
        snap = self.snapshot
        pinned: list[str] = []
        pinned_groups: list[str] = []
        if pin:  # a second pass of the rules only when there is something to check
            pin_idx = np.array([snap.person_index[p] for p in pin if p in snap.person_index],
                               dtype=np.int64)
            pin_ok = eligible_candidates(snap, self.vetting, MissionRules.of(m), exclude,
                                         within=pin_idx, group_ids=pin)
            pinned = snap.person_ids[pin_ok.person_idx].tolist()
            pinned_groups = [g for g in pin if g in set(pin_ok.group_ids)]
        unknown_pins = sorted(set(pin) - set(pinned) - set(pinned_groups))
        if unknown_pins:
            from graph._errors import ValidationError

            raise ValidationError(f"pinned candidates are not eligible for this mission: "
                                  f"{unknown_pins}")
        extra = np.zeros(0, dtype=np.int64)
        if pinned:
            extra = np.setdiff1d([snap.person_index[p] for p in pinned], idx)
            idx = np.union1d(idx, extra)
        groups = sorted(set(groups) | set(pinned_groups))
        lap()
        feats = self._features(m, idx, groups, kept, extra)
        lap()
        p = (np.asarray(self.ranker.predict_proba(feats), dtype=float) if feats.height
             else np.zeros(0))
        lap()
        rng_seed = seed if seed is not None else int.from_bytes(np.random.bytes(4), "little")
        chosen, propensity = self._policy(m, feats, p, k, pinned + pinned_groups, rng_seed)
        lap()
        newcomer = self._newcomer_mask(feats)
        if explain and len(chosen):
            payouts = np.asarray(self.ranker.expected_payout(p[chosen], PayRule.of(m)),
                                 dtype=float)
            reasons = self._reasons_of(feats, chosen, allow_special_category)
        else:
            payouts = np.full(len(chosen), np.nan)
            reasons = [[] for _ in chosen]
        kinds, ids = feats["kind"], feats["candidate_id"]
        candidates = []
        for rank, i in enumerate(chosen, start=1):
            kind, cid = kinds[i], ids[i]
            candidates.append(Candidate(
                kind=kind, candidate_id=cid, members=self._members(kind, cid),
                rank=rank, score=float(p[i]), propensity=float(propensity[i]),
                expected_payout=float(payouts[rank - 1]), newcomer=bool(newcomer[i]),
                reasons=reasons[rank - 1],
            ))
        lap()
        filters = eligibility.filters_applied()
        filters.update({"exclude": sorted(set(exclude)), "pin": list(pin),
                        "retrieved_persons": int(len(idx)), "retrieved_groups": len(groups)})
        stages = ("filters", "retrieval", "features", "ranking", "policy", "reasons")
        return ShortlistResult(
            mission_id=m["mission_id"], candidates=candidates,
            model_version=str(getattr(self.ranker, "version", "unknown")),
            policy=self.policy_name(m), filters=filters, served_at=datetime.now(UTC),
            timings_ms={s: 1e3 * (wall[i + 1] - wall[i]) for i, s in enumerate(stages)},
            timings_cpu_ms={s: 1e3 * (cpu[i + 1] - cpu[i]) for i, s in enumerate(stages)},
            scored=feats.with_columns(pl.Series("p_success", p),
                                      pl.Series("propensity", propensity)),
        )

    def _features(self, mission: dict, idx: np.ndarray, groups: list[str],
                  kept: pl.DataFrame | None, extra: np.ndarray) -> pl.DataFrame:
        """Features of the persons ``idx`` (in that order), then of ``groups``.

        ``kept`` holds the rows retrieval already computed for ``idx`` less ``extra`` (pinned
        persons it had cut), in order; only the rest is computed here. A person's features
        do not depend on the other candidates, so the rows are those a fresh call gives.
        """
        snap, spec = self.snapshot, MissionSpec.of(mission)
        if kept is None:
            return build_features(self.feature_model, snap, spec,
                                  snap.person_ids[idx].tolist(), groups)
        parts = [kept]
        if len(extra):
            pins = build_features(self.feature_model, snap, spec,
                                  snap.person_ids[extra].tolist(), [])
            order = np.argsort(np.concatenate([np.setdiff1d(idx, extra), extra]),
                               kind="stable")
            parts = [pl.concat([kept, pins], how="vertical_relaxed")[order]]
        if groups:
            parts.append(build_features(self.feature_model, snap, spec, [], groups))
        return pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]

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

    def _candidate_members(self, feats: pl.DataFrame
                           ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """Per row of ``feats``: its persons (snapshot indices), and the same flattened with
        the number per row. Cached for the last frame (the policy and the list read it)."""
        cache = getattr(self, "_members_cache", None)
        if cache is not None and cache[0] is feats:
            return cache[1]
        snap = self.snapshot
        member_idx = [[snap.person_index[cid]] if kind == "person"
                      else snap.group_members[cid].tolist()
                      for kind, cid in zip(feats["kind"].to_list(),
                                           feats["candidate_id"].to_list(), strict=True)]
        sizes = np.array([len(m) for m in member_idx], dtype=np.int64)
        flat = np.fromiter((x for m in member_idx for x in m), dtype=np.int64,
                           count=int(sizes.sum()))
        out = (member_idx, flat, sizes)
        self._members_cache = (feats, out)
        return out

    def _newcomer_mask(self, feats: pl.DataFrame) -> np.ndarray:
        """Per row of ``feats``: does the candidate have a newcomer in it?"""
        _, flat, sizes = self._candidate_members(feats)
        new = self.snapshot.n_outcomes[flat] < self.config.newcomer_outcomes
        return np.bincount(np.repeat(np.arange(len(sizes)), sizes), weights=new,
                           minlength=len(sizes)) > 0

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
        ids = feats["candidate_id"].to_list()
        member_idx, flat, sizes = self._candidate_members(feats)
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
        position: dict[str, int] = {}
        for i, x in enumerate(ids):
            position.setdefault(x, i)
        pinned_pos = [position[x] for x in pinned if x in position]
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
            tied = [t.tolist() for t in np.split(cols, np.searchsorted(rows, np.arange(1, n)))]
            is_new = newcomer.tolist()
            for d in np.flatnonzero(broken):
                pick = _greedy(draws[d], k, is_new, n_new, member_idx, tied,
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
        joins one's person to the other's; ``shared``, they have a person in common.

        Read from the rows of the candidates' persons in the tie matrix only (a lookup of
        their columns among those persons), not from a column slice of the whole matrix.
        """
        n = len(sizes)
        owner = np.repeat(np.arange(n), sizes)
        persons, local = np.unique(flat, return_inverse=True)
        # Candidates of each person (most persons are in one: alone, or in one group).
        by_person = np.argsort(local, kind="stable")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(local, minlength=len(persons)))])
        cand_of = owner[by_person]

        ties = self.snapshot.ties
        lo, hi = ties.indptr[persons], ties.indptr[persons + 1]
        rows, row_owner = _ranges(lo, hi)
        cols, weight = ties.indices[rows], ties.data[rows]
        at = np.minimum(np.searchsorted(persons, cols), len(persons) - 1)
        hit = (persons[at] == cols) & (weight >= self.config.strong_tie)
        linked = self._pairs(row_owner[hit], at[hit], ptr, cand_of, n)
        same = np.arange(len(persons))
        shared = self._pairs(same, same, ptr, cand_of, n)
        np.fill_diagonal(linked, False)
        np.fill_diagonal(shared, False)
        return linked, shared

    @staticmethod
    def _pairs(a: np.ndarray, b: np.ndarray, ptr: np.ndarray, cand_of: np.ndarray, n: int
               ) -> np.ndarray:
        """Dense ``n x n`` mask of the candidate pairs (one holding person ``a[e]``, the
        other ``b[e]``) over the person pairs ``e``; ``ptr``/``cand_of``: candidates of each
        person, CSR."""
        out = np.zeros((n, n), dtype=bool)
        first, pair = _ranges(ptr[a], ptr[a + 1])
        second, which = _ranges(ptr[b[pair]], ptr[b[pair] + 1])
        out[cand_of[first[which]], cand_of[second]] = True
        return out

    def _reasons(self, feats: pl.DataFrame, i: int, members: list[str],
                 allow_special: bool) -> list[str]:
        """Up to three reasons for row ``i`` of ``feats`` (persons ``members``)."""
        return self._reasons_of(feats, [i], allow_special,
                                [[self.snapshot.person_index[m] for m in members]])[0]

    def _reasons_of(self, feats: pl.DataFrame, rows: Sequence[int], allow_special: bool,
                    members: Sequence[Sequence[int]] | None = None) -> list[list[str]]:
        """Up to three reasons per row of ``rows``: the features where it stands out (z > 0.5
        against this request's candidates), one per family, strongest first. The mean and
        spread of each feature are computed once per request, not once per row.

        ``members`` gives each row's persons (snapshot indices); default the candidates'.
        """
        snap = self.snapshot
        stats = []
        for f in _REASON_FEATURES:
            col = feats[f.name].to_numpy().astype(float)
            if not np.isfinite(col).any():
                continue
            std = np.nanstd(col)
            if std <= 1e-12:
                continue
            sign = -1.0 if f.name in _LOWER_IS_BETTER else 1.0
            stats.append((f, col, np.nanmean(col), std, sign))
        if members is None:
            member_idx = self._candidate_members(feats)[0]
            members = [member_idx[i] for i in rows]
        out = []
        for i, persons in zip(rows, members, strict=True):
            # Tags are stored only with consent: no tags, no lived-experience reason.
            consent = all(bool(snap.le_tags[j]) for j in persons)
            found = []
            for f, col, mean, std, sign in stats:
                if f.special_category and not (allow_special and consent):
                    continue
                if not np.isfinite(col[i]):
                    continue
                z = sign * (col[i] - mean) / std
                if z > 0.5:
                    found.append((z, f.family, f.reason))
            found.sort(key=lambda t: -t[0])
            # One reason per family: "lives in the neighbourhood" and "lives nearby" say one
            # thing.
            reasons, families = [], set()
            for _, family, reason in found:
                if family not in families:
                    families.add(family)
                    reasons.append(reason)
            out.append(reasons[:3])
        return out


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
    broken = (shared[rows, cols].any(axis=(1, 2)) if shared.any()
              else np.zeros(n_draws, dtype=bool))
    sub = linked[rows, cols]
    # A component of more than ``cap`` candidates holds at least ``cap`` links: only lists
    # with that many are searched for components.
    check = np.flatnonzero(sub.sum(axis=(1, 2)) >= cap if cap >= 1
                           else np.full(n_draws, sub.any()))
    d, i, j = np.nonzero(sub[check])
    if len(d):
        # Components of those lists at once: one graph of len(check) * m nodes.
        nodes = len(check) * m
        g = sp.csr_matrix((np.ones(len(d)), (d * m + i, d * m + j)), shape=(nodes, nodes))
        _, label = connected_components(g, directed=False)
        size = np.bincount(label)[label].reshape(len(check), m)
        broken[check] |= (size > cap).any(axis=1)
    return broken


def _greedy(theta: np.ndarray, k: int, newcomer: Sequence[bool], n_new: int,
            member_idx: list[list[int]], tied: list[list[int]], cap: int,
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
        roots = {root(j) for j in tied[i] if j in parent}
        grown = 1 + sum(size[r] for r in roots)
        if not force and grown > cap:
            return False
        chosen.append(i)
        used.update(member_idx[i])
        parent[i], size[i] = i, grown
        for r in roots:
            parent[r] = i
        return True

    for i in pinned:
        if len(chosen) < k:
            take(i, force=True)
    order = np.argsort(-theta, kind="stable").tolist()
    if n_new:
        got = sum(bool(newcomer[i]) for i in chosen)
        for i in order:
            if got >= n_new or len(chosen) >= k:
                break
            if newcomer[i] and take(i):
                got += 1
    for i in order:
        if len(chosen) >= k:
            break
        take(i)
    return chosen
