"""Allocation wired to the engine: every open mission staffed at once from the store.

:func:`allocate_open_missions` builds an :class:`~matching.AllocationProblem` from the
engine (each open mission's eligible, scored candidates, each person's remaining capacity
under the engine's own hold rule), solves it with :func:`~matching.allocate`, and returns an
:class:`AllocationRun`; :func:`allocation_report_json` turns it into what ``crunch
allocate`` prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from graph._errors import ValidationError
from graph._payout import PayRule
from matching._allocate import Allocation, AllocationProblem, OpenMission, PersonCapacity, allocate
from matching._allocate import Candidate as AllocationCandidate
from matching._engine import MatchingEngine
from matching._rules import MissionRules, _holds

__all__ = ["AllocatedCandidate", "AllocationRun", "allocate_open_missions",
           "allocation_report_json"]

VALUES = ("p_success", "expected_payout")


@dataclass(frozen=True)
class AllocatedCandidate:
    """A candidate the allocation proposes for a mission."""

    kind: str
    candidate_id: str
    members: tuple[str, ...]
    p_success: float
    expected_payout: float
    newcomer: bool


@dataclass
class AllocationRun:
    """The result of :func:`allocate_open_missions`.

    Attributes
    ----------
    allocation : Allocation
        What :func:`~matching.allocate` returned (objective, price of the floor, ...).
    problem : AllocationProblem
        The problem it solved.
    assignments : dict of str to list of AllocatedCandidate
        The proposed candidates per staffed mission.
    missions : tuple of str
        The open missions considered.
    without_candidates : tuple of str
        Open missions with no eligible candidate at all (left out of the problem).
    value : {"p_success", "expected_payout"}
        What the objective sums.
    candidates_per_mission : int
    model_version : str
    store_version : int
    as_of : datetime
    seconds : dict of str to float
        Wall time of ``scoring`` (rules, retrieval, features, ranker over every mission),
        ``solve`` (the whole :func:`~matching.allocate` call) and ``total``.
    """

    allocation: Allocation
    problem: AllocationProblem
    assignments: dict[str, list[AllocatedCandidate]]
    missions: tuple[str, ...]
    without_candidates: tuple[str, ...]
    value: str
    candidates_per_mission: int
    model_version: str
    store_version: int
    as_of: datetime
    seconds: dict[str, float] = field(default_factory=dict)


def allocate_open_missions(engine: MatchingEngine, mission_ids: Sequence[str] | None = None,
                           candidates_per_mission: int = 30, newcomer_floor: float = 0.2,
                           value: str = "p_success", time_limit: float | None = None,
                           ) -> AllocationRun:
    """Assign candidates to every open mission at once, within everyone's capacity.

    For each mission: its eligible candidates (the engine's hard rules and retrieval), scored
    by the engine's ranker; the best ``candidates_per_mission`` by P(success) are offered to
    the solver, plus the best candidates with a newcomer in them up to
    ``ceil(newcomer_floor * candidates_per_mission)`` of those (so that the floor can be met
    by the candidates, not only by staffing fewer missions, while the allocation without the
    floor still sees the best ones).

    Capacity follows the engine's rule: a person holds an assignment during a mission when
    it was made before the engine's time, is not declined or withdrawn, and its mission's
    window overlaps. Missions of one allocation are counted as if they ran at the same time,
    so a person's remaining capacity is ``capacity`` minus the most holds overlapping any
    one of their candidate missions: at no moment is anyone used beyond capacity (room left
    by windows that do not overlap is left unused, failing closed).

    Parameters
    ----------
    engine : MatchingEngine
    mission_ids : sequence of str, optional
        Missions to staff (each must be open); default every mission whose status is
        "open".
    candidates_per_mission : int
        Candidates per mission given to the solver (before the newcomers added for the
        floor).
    newcomer_floor : float
        Least share of the allocated person-seats that go to newcomers (persons with fewer
        than ``engine.config.newcomer_outcomes`` verified outcomes).
    value : {"p_success", "expected_payout"}
        What a proposed candidate is worth: its P(success), or that times what the mission
        pays for reaching its target. Each proposed candidate counts on its own (a team of
        three on a mission counts three expected outcomes).
    time_limit : float, optional
        Seconds allowed to each solver call.

    Returns
    -------
    AllocationRun

    Raises
    ------
    NotFoundError
        A given mission is not in the store.
    ValidationError
        A given mission is not open, or an argument is out of range.

    Examples
    --------
    >>> run = allocate_open_missions(engine, newcomer_floor=0.2)  # doctest: +SKIP
    >>> run.allocation.price_of_floor  # doctest: +SKIP
    0.41
    >>> allocation_report_json(run)["newcomer_share"]  # doctest: +SKIP
    0.23
    """
    if value not in VALUES:
        raise ValidationError(f"value must be one of {VALUES}, not {value!r}")
    if candidates_per_mission < 1:
        raise ValidationError(f"candidates_per_mission must be at least 1, "
                              f"not {candidates_per_mission}")
    t0 = time.perf_counter()
    ids = _open_missions(engine, mission_ids)
    snap = engine.snapshot
    cfg = engine.config
    n_reserved = math.ceil(float(newcomer_floor) * candidates_per_mission)

    missions: list[OpenMission] = []
    empty: list[str] = []
    info: dict[tuple[str, str, str], AllocatedCandidate] = {}
    worst_holds: dict[int, int] = {}  # person index -> most holds over their missions
    for mid in ids:
        m = engine.mission(mid)
        eligibility = engine.eligible(m)
        idx, groups = engine.retrieve(m, eligibility)
        feats = engine.score(m, idx, groups)
        if feats.height == 0:
            empty.append(mid)
            continue
        p = feats["p_success"].to_numpy().astype(float)
        payout = np.asarray(engine.ranker.expected_payout(p, PayRule.of(m)), dtype=float)
        newcomer = engine._newcomer_mask(feats)
        keep = _keep(p, newcomer, feats["candidate_id"].to_list(), candidates_per_mission,
                     n_reserved)
        holds, _ = _holds(snap, MissionRules.of(m))
        cands = []
        for r in keep:
            kind, cid = feats["kind"][r], feats["candidate_id"][r]
            member_idx = ([snap.person_index[cid]] if kind == "person"
                          else snap.group_members[cid].tolist())
            members = tuple(snap.person_ids[member_idx].tolist())
            for j in member_idx:
                worst_holds[j] = max(worst_holds.get(j, 0), int(holds[j]))
            worth = p[r] if value == "p_success" else payout[r]
            cands.append(AllocationCandidate(kind, cid, max(float(worth), 0.0),
                                             members if kind == "group" else ()))
            info[(mid, kind, cid)] = AllocatedCandidate(
                kind=kind, candidate_id=cid, members=members, p_success=float(p[r]),
                expected_payout=float(payout[r]), newcomer=bool(newcomer[r]))
        missions.append(OpenMission(mid, cands, seats=int(m["team_max"]),
                                    min_seats=int(m["team_min"])))
    persons = [
        PersonCapacity(str(snap.person_ids[j]),
                       max(int(snap.capacity[j]) - h, 0),
                       newcomer=bool(snap.n_outcomes[j] < cfg.newcomer_outcomes))
        for j, h in sorted(worst_holds.items())
    ]
    problem = AllocationProblem(missions, persons, newcomer_floor=newcomer_floor,
                                time_limit=time_limit)
    t1 = time.perf_counter()
    allocation = allocate(problem)
    t2 = time.perf_counter()
    assignments: dict[str, list[AllocatedCandidate]] = {}
    for mid, kind, cid in allocation.chosen:
        assignments.setdefault(mid, []).append(info[(mid, kind, cid)])
    return AllocationRun(
        allocation=allocation, problem=problem, assignments=assignments,
        missions=tuple(ids), without_candidates=tuple(empty), value=value,
        candidates_per_mission=candidates_per_mission,
        model_version=str(getattr(engine.ranker, "version", "unknown")),
        store_version=int(engine.version), as_of=engine.now,
        seconds={"scoring": t1 - t0, "solve": t2 - t1, "total": t2 - t0},
    )


def _open_missions(engine: MatchingEngine, mission_ids: Sequence[str] | None) -> list[str]:
    missions = engine.frames.missions
    if mission_ids is None:
        return sorted(missions.filter(pl.col("status") == "open")["mission_id"].to_list())
    ids = list(dict.fromkeys(mission_ids))
    not_open = sorted(mid for mid in ids if engine.mission(mid)["status"] != "open")
    if not_open:
        raise ValidationError(f"only open missions can be allocated; not open: {not_open[:5]}")
    return ids


def _keep(p: np.ndarray, newcomer: np.ndarray, ids: list[str], n: int, n_reserved: int
          ) -> list[int]:
    """Rows given to the solver: the best ``n`` by p, plus the best ``n_reserved`` with a
    newcomer in them when they are not among those already.

    Adding rather than swapping keeps the best ``n`` in the problem, so the allocation
    without the floor (and so the price of the floor) is measured on them all.
    """
    order = sorted(range(len(p)), key=lambda r: (-p[r], ids[r]))
    keep = set(order[:n]) | set([r for r in order if newcomer[r]][:n_reserved])
    return sorted(keep, key=lambda r: (-p[r], ids[r]))


def allocation_report_json(run: AllocationRun) -> dict:
    """The allocation as plain JSON-able data (what ``crunch allocate --json`` prints).

    Identifiers and scores only: no lived experience, no personal attributes.
    """
    a = run.allocation

    def num(x: float | None) -> float | None:
        return None if x is None else round(float(x), 6)

    return {
        "as_of": run.as_of.isoformat(),
        "store_version": run.store_version,
        "model_version": run.model_version,
        "value": run.value,
        "newcomer_floor": a.newcomer_floor,
        "candidates_per_mission": run.candidates_per_mission,
        "missions_open": len(run.missions),
        "missions_staffed": len(a.staffed),
        "missions_without_candidates": list(run.without_candidates),
        "unstaffed_by_floor": list(a.unstaffed_by_floor),
        "objective": num(a.objective),
        "objective_without_floor": num(a.objective_without_floor),
        "price_of_floor": num(a.price_of_floor),
        "seats": a.seats,
        "newcomer_seats": a.newcomer_seats,
        "newcomer_share": num(a.newcomer_share),
        "newcomer_share_without_floor": num(a.newcomer_share_without_floor),
        "status": a.status,
        "mip_gap": num(a.mip_gap),
        "solves": a.solves,
        "floor_solve": a.floor_solve,
        "seconds": {k: num(v) for k, v in {**run.seconds, **{
            f"solver_{k}": v for k, v in a.seconds.items()}}.items()},
        "assignments": {
            mid: [{"kind": c.kind, "candidate_id": c.candidate_id, "members": list(c.members),
                   "p_success": num(c.p_success), "expected_payout": num(c.expected_payout),
                   "newcomer": c.newcomer} for c in cands]
            for mid, cands in sorted(run.assignments.items())
        },
    }
