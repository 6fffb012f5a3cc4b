"""Teams from ties, and the other direction: open missions for a person.

:func:`suggest_teams` proposes pairs or small teams for a mission, formed from ties between
eligible persons, preferring a proven person with a newcomer they know (idea 4 of the
design). :func:`missions_for` ranks the open missions a person may take, so that someone
who just succeeded is offered the related missions nearby (idea 7).

Both go through the engine's hard rules first (:func:`~matching.eligible_candidates`) and
score with the engine's ranker: nothing here overrides a rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import scipy.sparse as sp

from features import FEATURES, MissionSpec, build_features
from graph._errors import NotFoundError
from graph._payout import PayRule
from matching._engine import MatchingEngine
from matching._rules import Eligibility, MissionRules, eligible_candidates

__all__ = ["MissionOffer", "TeamSuggestion", "missions_for", "suggest_teams"]

# Teams larger than this are peer groups' business, not suggestions from ties.
MAX_TEAM_SIZE = 3
# Added to a team's combined chance per unit of mean tie weight inside the team (in [0, 1]).
TIE_BONUS = 0.05
# Added when a team holds both a proven person and a newcomer: the pairing the design asks
# for (a newcomer learns on the job, next to someone whose results are known).
MENTOR_BONUS = 0.05
# Pairs extended into teams of three: the best ones by score.
TRIPLE_BEAM = 50


@dataclass(frozen=True)
class TeamSuggestion:
    """A team of persons linked by ties, suggested for one mission.

    Attributes
    ----------
    rank : int
        1 for the best team of the list.
    members : tuple of str
        Person ids, best ``member_scores`` first.
    score : float
        ``p_team + TIE_BONUS * tie_strength + MENTOR_BONUS * (proven and newcomer)``:
        what the list is sorted by.
    p_team : float
        ``1 - prod(1 - p_i)`` over the members' success probabilities: the chance that at
        least one of them would carry the mission, were their results independent. It is
        an optimistic summary of the members' scores, not a calibrated team probability
        (the ranker has never seen this team).
    member_scores : tuple of float
        Each member's calibrated P(success) for the mission, scored alone.
    expected_payout : float
        ``p_team`` times what the mission pays for reaching its target.
    tie_strength : float
        Mean weight of the ties inside the team (in [0, 1]).
    proven, newcomers : tuple of str
        Members with at least ``config.newcomer_outcomes`` verified outcomes, and the others.
    why : str
        A plain-language reason, e.g. "a proven person with a newcomer they know".
    """

    rank: int
    members: tuple[str, ...]
    score: float
    p_team: float
    member_scores: tuple[float, ...]
    expected_payout: float
    tie_strength: float
    proven: tuple[str, ...]
    newcomers: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class MissionOffer:
    """An open mission offered to a person.

    Attributes
    ----------
    rank : int
    mission_id, need_type : str
    score : float
        Calibrated P(success) of the person (or of the peer group they would take it with).
    expected_payout : float
        ``score`` times what the mission pays for reaching its target.
    distance_km : float or None
        From the person's area to the mission's (None when an area has no coordinates).
    kind : {"person", "group"}
        "person" when the person may take the mission alone, "group" when only through one
        of their peer groups (a mission for teams of two or more).
    candidate_id : str
        The person, or that peer group.
    reasons : tuple of str
        Plain-language reasons, relative to the person's other open missions.
    """

    rank: int
    mission_id: str
    need_type: str
    score: float
    expected_payout: float
    distance_km: float | None
    kind: str
    candidate_id: str
    reasons: tuple[str, ...]


# -- teams ---------------------------------------------------------------------------------

def suggest_teams(engine: MatchingEngine, mission_id: str | None = None, k: int = 5,
                  max_size: int | None = None, *, mission: dict | None = None,
                  exclude: Iterable[str] = (), max_per_person: int = 2,
                  ) -> list[TeamSuggestion]:
    """Suggest pairs or small teams, linked by ties, for a mission that takes teams.

    The pool is the mission's eligible persons (every hard rule a peer group's member must
    pass: consent, vetting, availability, capacity, once per mission, distance), cut by
    retrieval and scored by the engine's ranker each as a member of a team of fitting
    size. Teams are the pairs of the pool joined by a tie and, when the mission takes three
    or more, those pairs extended by a person tied to one of them. A team that is exactly an
    existing peer group is left out: groups are already candidates of the shortlist.

    Parameters
    ----------
    engine : MatchingEngine
    mission_id : str
        A stored mission; or give ``mission`` (a dict of the mission's columns).
    k : int
        Most teams returned.
    max_size : int, optional
        Largest team (default and at most ``min(team_max, 3)``).
    exclude : ids
        Persons a mission engineer excluded (a hard rule).
    max_per_person : int
        Most teams of the list a person appears in, so that one strong person does not fill
        every place.

    Returns
    -------
    list of TeamSuggestion
        Best first; empty when the mission does not take teams (``team_max < 2``) or no two
        eligible persons are tied. The best team of a proven person with a newcomer always
        has a place when one exists; the other places go by score.

    Examples
    --------
    >>> teams = suggest_teams(engine, "M00042", k=3)  # doctest: +SKIP
    >>> teams[0].members, teams[0].why  # doctest: +SKIP
    (('P000123', 'P000456'), 'a proven person with a newcomer they know, closely tied')
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if max_size is not None and max_size < 2:
        raise ValueError(f"max_size must be at least 2, not {max_size}")
    if max_per_person < 1:
        raise ValueError(f"max_per_person must be at least 1, not {max_per_person}")
    m = mission if mission is not None else engine.mission(mission_id)
    rules = MissionRules.of(m)
    size_max = min(int(rules.team_max), MAX_TEAM_SIZE, max_size or MAX_TEAM_SIZE)
    size_min = max(2, int(rules.team_min))
    if size_max < size_min:
        return []

    snap, cfg = engine.snapshot, engine.config
    # Members pass the person rules (1-7); the team size is checked by construction.
    as_member = replace(rules, team_min=1, team_max=max(1, int(rules.team_max)))
    within = engine.retrieval.pool(rules.area_id, rules.radius_km, rules.weekly_minutes)
    ok = eligible_candidates(snap, engine.vetting, as_member, exclude, within=within)
    idx, _ = engine.retrieve(m, Eligibility(ok.person_idx, []))
    if len(idx) < 2:
        return []
    # Scored as a member of a team that fits, so no team-size penalty on the persons.
    scored = engine.score({**m, "team_min": 1}, idx, [])
    p = scored["p_success"].to_numpy().astype(float)
    proven = snap.n_outcomes[idx] >= cfg.newcomer_outcomes

    ties = sp.csr_matrix(snap.ties[idx][:, idx])
    ties.eliminate_zeros()
    upper = sp.triu(ties, k=1).tocoo()
    groups = {frozenset(g.tolist()) for g in snap.group_members.values()}

    def raw(team: tuple[int, ...]) -> tuple[float, float, float]:
        members = list(team)
        sub = ties[members][:, members]
        strength = float(sub.sum() / max(sub.nnz, 1))
        p_team = 1.0 - float(np.prod(1.0 - p[members]))
        mentor = bool(proven[members].any() and (~proven[members]).any())
        return p_team + TIE_BONUS * strength + MENTOR_BONUS * mentor, p_team, strength

    # Pairs at once (a city's pool holds thousands of tied pairs); triples one by one.
    a_, b_, w_ = upper.row, upper.col, upper.data
    p_pair = 1.0 - (1.0 - p[a_]) * (1.0 - p[b_])
    s_pair = p_pair + TIE_BONUS * w_ + MENTOR_BONUS * (proven[a_] != proven[b_])
    pairs = {(int(a), int(b)): (float(s), float(q), float(w))
             for a, b, s, q, w in zip(a_, b_, s_pair, p_pair, w_, strict=True)}
    candidates = dict(pairs)
    if size_max >= 3:
        # Extend the best pairs (one that is a group too: a group plus one is a new team).
        for a, b in sorted(pairs, key=lambda pr: (-pairs[pr][0], pr))[:TRIPLE_BEAM]:
            for c in np.union1d(ties[a].indices, ties[b].indices).tolist():
                team = tuple(sorted((a, b, c)))
                if c not in (a, b) and team not in candidates:
                    candidates[team] = raw(team)
    teams = {t: d for t, d in candidates.items()
             if size_min <= len(t) and frozenset(idx[list(t)].tolist()) not in groups}
    if not teams:
        return []

    ids = snap.person_ids[idx]
    order = sorted(teams, key=lambda t: (-teams[t][0], sorted(ids[list(t)].tolist())))

    def is_mentor(t: tuple[int, ...]) -> bool:
        return bool(proven[list(t)].any() and (~proven[list(t)]).any())

    # The best team of a proven person with a newcomer has a place first, then the rest by
    # score, with nobody in more than max_per_person teams.
    best_mentor = next((t for t in order if is_mentor(t)), None)
    chosen: list[tuple[int, ...]] = []
    uses: dict[int, int] = {}
    for t in ([best_mentor] if best_mentor is not None else []) + order:
        if len(chosen) >= k:
            break
        if t in chosen or any(uses.get(i, 0) >= max_per_person for i in t):
            continue
        chosen.append(t)
        for i in t:
            uses[i] = uses.get(i, 0) + 1
    chosen.sort(key=lambda t: (-teams[t][0], sorted(ids[list(t)].tolist())))

    stake = float(engine.ranker.expected_payout([1.0], PayRule.of(m))[0])
    out = []
    for rank, t in enumerate(chosen, start=1):
        score, p_team, strength = teams[t]
        members = sorted(t, key=lambda i: (-p[i], ids[i]))
        pro = tuple(ids[i] for i in members if proven[i])
        new = tuple(ids[i] for i in members if not proven[i])
        out.append(TeamSuggestion(
            rank=rank, members=tuple(ids[i] for i in members), score=score, p_team=p_team,
            member_scores=tuple(float(p[i]) for i in members),
            expected_payout=p_team * stake, tie_strength=strength, proven=pro, newcomers=new,
            why=_why(len(pro), len(new), strength >= cfg.strong_tie,
                     direct=all(ties[j, i] > 0 for j in members if proven[j]
                                for i in members if not proven[i])),
        ))
    return out


def _why(n_proven: int, n_new: int, close: bool, direct: bool = True) -> str:
    if n_proven and n_new:
        who = "a proven person" if n_proven == 1 else "proven people"
        whom = "a newcomer" if n_new == 1 else "newcomers"
        # "they know" only when every newcomer is tied to every proven member.
        text = f"{who} with {whom} they know" if direct else f"{who} and {whom}, linked by ties"
    elif n_proven:
        text = "proven people who know each other"
    else:
        text = "newcomers who know each other"
    return text + (", closely tied" if close else "")


# -- the other direction -------------------------------------------------------------------

def missions_for(engine: MatchingEngine, person_id: str, k: int = 10, *,
                 statuses: Sequence[str] = ("open",), with_groups: bool = True,
                 allow_special_category: bool = False) -> list[MissionOffer]:
    """Rank the open missions a person may take, best first.

    Each mission's hard rules are run for this one person
    (:func:`~matching.eligible_candidates` with ``within=[person]``): a mission they may not
    take is never offered. A mission that needs a team (``team_min >= 2``) is offered
    through one of the person's peer groups when that group passes the rules. The pairs are
    scored with :func:`features.build_features` and the engine's ranker, and ranked by
    P(success), then expected payout, then mission id. Someone who just succeeded sees the
    related missions rise, as far as the ranker has learned that track record on a need or
    its family speaks for the next mission (the day-one prior reads the graph only).

    Parameters
    ----------
    engine : MatchingEngine
    person_id : str
    k : int
        Most missions returned.
    statuses : sequence of str
        Mission statuses considered open.
    with_groups : bool
        Also offer missions the person may only take with one of their peer groups.
    allow_special_category : bool
        The caller may read reasons derived from lived experience (still only for a person
        who consented to its use).

    Returns
    -------
    list of MissionOffer

    Raises
    ------
    NotFoundError
        When the person is not in the community as of the engine's time.

    Examples
    --------
    >>> offers = missions_for(engine, "P000123", k=5)  # doctest: +SKIP
    >>> [(o.mission_id, round(o.score, 2)) for o in offers]  # doctest: +SKIP
    [('M01432', 0.61), ('M01437', 0.58), ...]
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    snap = engine.snapshot
    i = snap.person_index.get(person_id)
    if i is None:
        raise NotFoundError(f"person {person_id!r} is not in the community as of "
                            f"{snap.as_of.isoformat()}")
    missions = engine.frames.missions.filter(pl.col("status").is_in(list(statuses)))
    if missions.height == 0 or not bool(snap.consent_matching[i]):
        return []
    missions = _prefilter(engine, i, missions.sort("mission_id"))
    my_groups = sorted(g for g, members in snap.group_members.items() if i in members)

    within = np.array([i], dtype=np.int64)
    parts, routes = [], []
    for m in missions.iter_rows(named=True):
        ok = eligible_candidates(snap, engine.vetting, MissionRules.of(m), within=within)
        persons = [person_id] if len(ok.person_idx) else []
        groups = [g for g in my_groups if g in set(ok.group_ids)] if with_groups else []
        if not persons and not groups:
            continue
        feats = build_features(engine.feature_model, snap, MissionSpec.of(m), persons, groups)
        parts.append(feats.with_columns(pl.lit(m["mission_id"]).alias("_mission")))
        routes.extend([m] * feats.height)
    if not parts:
        return []
    feats = pl.concat(parts, how="vertical_relaxed")
    p = np.asarray(engine.ranker.predict_proba(feats), dtype=float)
    payout = np.asarray(engine.ranker.expected_payout(p, [PayRule.of(m) for m in routes]),
                        dtype=float)
    kinds = feats["kind"].to_list()
    # One route per mission: the best (alone before a group on equal scores).
    best: dict[str, int] = {}
    for r, mid in enumerate(feats["_mission"].to_list()):
        j = best.get(mid)
        if j is None or (p[r], kinds[r] == "person") > (p[j], kinds[j] == "person"):
            best[mid] = r
    rows = sorted(best.values(), key=lambda r: (-p[r], -payout[r], routes[r]["mission_id"]))
    # Reasons compare the person's missions with one another.
    frame = feats[rows]
    out = []
    for rank, r in enumerate(rows[:k], start=1):
        cid = feats["candidate_id"][r]
        members = ([person_id] if kinds[r] == "person"
                   else snap.person_ids[snap.group_members[cid]].tolist())
        dist = float(feats["distance_km"][r])
        out.append(MissionOffer(
            rank=rank, mission_id=routes[r]["mission_id"], need_type=routes[r]["need_type"],
            score=float(p[r]), expected_payout=float(payout[r]),
            distance_km=dist if math.isfinite(dist) else None, kind=kinds[r],
            candidate_id=cid,
            reasons=_offer_reasons(engine, frame, rank - 1, members, routes[r]["need_type"],
                                   allow_special_category),
        ))
    return out


# Reasons whose feature can speak for a person without the history the phrase claims (a
# smoothed rate differs between needs even with no outcome at all): kept only with evidence.
_NEEDS_EVIDENCE = {spec.reason: spec.name for spec in FEATURES
                   if spec.name in ("tr_rate", "tr_rate_need", "tr_rate_family", "tr_recent",
                                    "skill_latent", "ties_succeeded")}
_REASON = {spec.name: spec.reason for spec in FEATURES}


def _offer_reasons(engine: MatchingEngine, frame: pl.DataFrame, row: int, members: list[str],
                   need_type: str, allow_special: bool) -> tuple[str, ...]:
    """Why this mission, for this person: their own successes on this need (or its family)
    first, then the engine's reasons compared across the person's missions, backed by
    history."""
    snap, f = engine.snapshot, engine.feature_model._check()
    idx = [snap.person_index[m] for m in members]
    j = f.need_index.get(need_type)
    family = f.need_family.get(need_type, need_type)
    fam_cols = [f.need_index[n] for n, fam in f.need_family.items() if fam == family]
    on_need = j is not None and snap.need_s[idx, j].sum() > 0
    on_family = bool(fam_cols) and snap.need_s[np.ix_(idx, fam_cols)].sum() > 0
    evidence = {
        "tr_rate": snap.res_s[idx].sum() > 0,
        "tr_recent": snap.res_s[idx].sum() > 0,
        "tr_rate_need": on_need,
        "tr_rate_family": on_family,
        "skill_latent": snap.n_outcomes[idx].sum() > 0,
        "ties_succeeded": frame["ties_succeeded"][row] > 0,
    }
    # Success earns more: a success on this kind of mission is the first thing to say.
    first = ([_REASON["tr_rate_need"]] if on_need
             else [_REASON["tr_rate_family"]] if on_family else [])
    track = {_REASON[n] for n in ("tr_rate", "tr_rate_need", "tr_rate_family", "tr_recent")}
    rest = [r for r in engine._reasons(frame, row, members, allow_special)
            if (r not in _NEEDS_EVIDENCE or evidence[_NEEDS_EVIDENCE[r]])
            and not (first and r in track)]
    return tuple(first + rest)[:3]


def _prefilter(engine: MatchingEngine, i: int, missions: pl.DataFrame) -> pl.DataFrame:
    """Drop missions the person fails on availability or distance, over all missions at once.

    Both rules bind a group's members too, so no route survives them; everything else (and
    these again) is decided by :func:`~matching.eligible_candidates`.
    """
    snap = engine.snapshot
    weekly = (missions["minutes_per_day"] * missions["days_per_week"]).to_numpy()
    keep = snap.availability[i] >= weekly
    area = np.array([snap.area_index.get(a, -1) for a in missions["area_id"]], dtype=np.int64)
    dist = np.where(area >= 0, snap.area_distance_km[snap.person_area[i], area], np.inf)
    radius = missions["radius_km"].fill_null(np.inf).to_numpy()
    keep &= dist <= radius
    return missions.filter(pl.Series(keep))
