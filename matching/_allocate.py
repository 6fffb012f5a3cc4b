"""Allocation of candidates across many open missions at once.

A shortlist ranks candidates for one mission; the nightly allocation decides, for every
open mission together, who is proposed where, so that nobody is used beyond their
remaining capacity, the sum of expected outcomes is as large as possible, and a floor on
the share of person-seats that go to newcomers keeps the start fair (idea 5 of the
design). The price of that floor, the expected outcome given up for it, is reported.

This module only solves an explicit :class:`AllocationProblem`: it reads no store and
computes no score (the caller fills the problem from shortlists and ranker scores).

The model is a mixed-integer program solved with :func:`scipy.optimize.milp` (HiGHS).
For every (mission, candidate) pair a binary ``x`` says whether the candidate is
proposed; for every mission a binary ``y`` says whether it is staffed:

- capacity: for every person, the pairs that use them (alone or inside a group) sum to at
  most their remaining capacity;
- within a mission, a person appears at most once (alone or inside one group);
- team size: ``min_seats * y <= persons on the mission <= seats * y`` (so an unstaffed
  mission gets nobody, and a staffed one a team of an allowed size);
- newcomer floor: ``newcomer seats - floor * seats >= 0`` over the whole allocation;
- objective: maximise the sum of the chosen candidates' expected values.

With a floor, the problem is first solved without it; if that allocation meets the floor it
is the answer. Otherwise the floor is one constraint coupling every mission, which makes the
integer program far slower (HiGHS spends most of the time looking for good allocations). So a
Lagrangian step comes first: the LP relaxation with the floor gives an upper bound and the
floor's shadow price, the floor-free program is solved with each newcomer seat earning that
price (and every seat paying ``floor`` times it; the price is raised a little when integrality
leaves the allocation just short of the floor), and if the resulting allocation meets the
floor and lies within ``mip_rel_gap`` of the bound it is returned: it is then within
``mip_rel_gap`` of the optimum, the guarantee the full solve gives. Only when it is not is the
full program with the floor row solved.

A min-cost flow would do for persons alone with no team minimum, but groups (one choice
using several persons), team minimums and the global floor are side constraints a flow
cannot carry, so one formulation serves every case.

Because every mission may stay unstaffed, the floor can always be met: at worst by staffing
fewer missions, or none. It is therefore never dropped and never raises; when newcomers
are too few, the result says what it cost: ``price_of_floor`` and the missions that were
staffed without the floor but are left unstaffed with it (``unstaffed_by_floor``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import LinearConstraint, linprog, milp

from graph._errors import CrunchError, ValidationError

__all__ = [
    "Allocation",
    "AllocationCandidate",
    "AllocationError",
    "AllocationProblem",
    "OpenMission",
    "PersonCapacity",
    "allocate",
]

CANDIDATE_KINDS = ("person", "group")

# Relative raises of the floor's LP shadow price tried by the Lagrangian step, in order.
LAGRANGIAN_STEPS = (0.0, 1e-3, 2e-3, 4e-3)

# Tolerance (in person-seats) when checking the floor on a solution: HiGHS accepts
# constraint violations up to its feasibility tolerance (1e-7).
FLOOR_TOLERANCE = 1e-6


class AllocationError(CrunchError):
    """The solver returned no usable allocation (time limit before any feasible one, or
    a numerical failure). The message names the solver status."""


@dataclass(frozen=True)
class AllocationCandidate:
    """One candidate of one mission: a person or a peer group, with its expected value.

    Parameters
    ----------
    kind : {"person", "group"}
    candidate_id : str
        The person id or the group id (unique per kind within a mission).
    value : float
        Expected outcome if proposed (e.g. p_success x the mission's value), >= 0.
    members : tuple of str
        Person ids the candidate uses. A person candidate has one member, itself: leave
        it empty. A group lists its members (distinct); each uses one seat and one unit
        of capacity.

    Examples
    --------
    >>> AllocationCandidate("person", "p1", 0.8).members
    ('p1',)
    >>> AllocationCandidate("group", "g1", 1.5, members=("p1", "p2")).size
    2
    """

    kind: str
    candidate_id: str
    value: float
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CANDIDATE_KINDS:
            raise ValidationError(f"candidate {self.candidate_id!r}: kind must be one of "
                                  f"{CANDIDATE_KINDS}, not {self.kind!r}")
        members = tuple(self.members)
        if self.kind == "person":
            if members not in ((), (self.candidate_id,)):
                raise ValidationError(f"person candidate {self.candidate_id!r} has members "
                                      f"{members!r}: a person's only member is itself")
            members = (self.candidate_id,)
        elif not members or len(set(members)) != len(members):
            raise ValidationError(f"group candidate {self.candidate_id!r} needs distinct "
                                  f"members, got {members!r}")
        object.__setattr__(self, "members", members)
        value = float(self.value)
        if not math.isfinite(value) or value < 0:
            raise ValidationError(f"candidate {self.candidate_id!r}: value must be finite "
                                  f"and >= 0, got {self.value!r}")
        object.__setattr__(self, "value", value)

    @property
    def size(self) -> int:
        """Number of person-seats the candidate takes."""
        return len(self.members)


# The first name of the class, still imported by matching/_allocation_wiring.py; drop it
# once that module imports AllocationCandidate (matching.Candidate is the engine's).
Candidate = AllocationCandidate


@dataclass(frozen=True)
class OpenMission:
    """An open mission to staff: its team size bounds and its candidates.

    Parameters
    ----------
    mission_id : str
    candidates : sequence of AllocationCandidate
    seats : int
        The most persons it takes (``team_max``), >= 1.
    min_seats : int
        The fewest persons a staffed mission takes (``team_min``), 1 <= min_seats <= seats.
        A mission may also stay unstaffed and get nobody.
    """

    mission_id: str
    candidates: tuple[AllocationCandidate, ...]
    seats: int = 1
    min_seats: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not (1 <= int(self.min_seats) <= int(self.seats)):
            raise ValidationError(f"mission {self.mission_id!r}: need 1 <= min_seats <= seats, "
                                  f"got min_seats={self.min_seats}, seats={self.seats}")
        keys = [(c.kind, c.candidate_id) for c in self.candidates]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValidationError(f"mission {self.mission_id!r}: duplicate candidates {dup[:5]}")


@dataclass(frozen=True)
class PersonCapacity:
    """What the allocation needs to know of a person.

    Parameters
    ----------
    person_id : str
    capacity : int
        Concurrent missions the person may still take (>= 0).
    newcomer : bool
        Whether the person counts as a newcomer for the floor (a group counts its
        newcomer members).
    """

    person_id: str
    capacity: int
    newcomer: bool = False

    def __post_init__(self) -> None:
        if int(self.capacity) != self.capacity or self.capacity < 0:
            raise ValidationError(f"person {self.person_id!r}: capacity must be an integer "
                                  f">= 0, got {self.capacity!r}")


@dataclass(frozen=True)
class AllocationProblem:
    """Everything :func:`allocate` needs, explicitly.

    Parameters
    ----------
    missions : sequence of OpenMission
        Distinct mission ids.
    persons : sequence of PersonCapacity
        Every person used by a candidate must be listed (an unknown person raises: capacity
        is a hard rule and is not guessed).
    newcomer_floor : float
        In [0, 1]: the least share of allocated person-seats that go to newcomers.
    time_limit : float, optional
        Seconds for the whole :func:`allocate` call. Each solver call gets what is left (at
        least one second, so the total can overrun by a little); when the time is up, the
        best allocation found so far is returned with ``status="time_limit"``.
    mip_rel_gap : float
        Relative optimality gap at which HiGHS stops (its default, 1e-4). The objectives,
        hence ``price_of_floor``, are exact to about ``mip_rel_gap * objective``; a smaller
        gap can cost minutes on thousands of missions for little change.
    presolve : bool
        HiGHS presolve. Off by default: on these problems its probing costs far more than it
        saves (2,000 missions x 50 candidates: 88 s instead of 2 s without the floor).
    """

    missions: tuple[OpenMission, ...]
    persons: tuple[PersonCapacity, ...]
    newcomer_floor: float = 0.0
    time_limit: float | None = None
    mip_rel_gap: float = 1e-4
    presolve: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "missions", tuple(self.missions))
        object.__setattr__(self, "persons", tuple(self.persons))
        floor = float(self.newcomer_floor)
        if not 0.0 <= floor <= 1.0:
            raise ValidationError(f"newcomer_floor must be in [0, 1], got {self.newcomer_floor!r}")
        object.__setattr__(self, "newcomer_floor", floor)
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValidationError(f"time_limit must be > 0 seconds, got {self.time_limit!r}")
        if not 0.0 <= self.mip_rel_gap < 1.0:
            raise ValidationError(f"mip_rel_gap must be in [0, 1), got {self.mip_rel_gap!r}")
        mission_ids = [m.mission_id for m in self.missions]
        if len(set(mission_ids)) != len(mission_ids):
            raise ValidationError(f"duplicate mission ids {_dups(mission_ids)}")
        person_ids = [p.person_id for p in self.persons]
        if len(set(person_ids)) != len(person_ids):
            raise ValidationError(f"duplicate person ids {_dups(person_ids)}")
        known = set(person_ids)
        unknown = sorted({p for m in self.missions for c in m.candidates for p in c.members
                          if p not in known})
        if unknown:
            raise ValidationError(f"{len(unknown)} member(s) of candidates are not in persons "
                                  f"(capacity unknown): {unknown[:5]}")


@dataclass(frozen=True)
class Allocation:
    """The result of :func:`allocate`.

    Attributes
    ----------
    chosen : tuple of (mission_id, kind, candidate_id)
        The proposed candidates, in the problem's order of missions and candidates.
    objective : float
        Sum of the chosen candidates' expected values.
    objective_without_floor : float
        The same, for the best allocation found without the newcomer floor.
    price_of_floor : float
        ``objective_without_floor - objective`` (>= 0): expected outcome given up for the
        floor.
    newcomer_floor : float
        The floor that was applied.
    seats, newcomer_seats : int
        Person-seats allocated, and those that went to newcomers.
    newcomer_share : float or None
        ``newcomer_seats / seats`` (None when nothing is allocated).
    newcomer_share_without_floor : float or None
        The share in the allocation without the floor.
    staffed : tuple of str
        Missions that received a team.
    unstaffed_by_floor : tuple of str
        Missions staffed without the floor but left unstaffed with it: the floor could only
        be met by staffing fewer missions (not enough newcomers among their candidates).
    status : {"optimal", "time_limit"}
        "optimal" when every solver call proved optimality within ``mip_rel_gap``.
    mip_gap : float
        The worst relative gap between allocation and bound of the solver calls.
    solves : int
        Integer-program solves made (1 to 2 + the Lagrangian steps).
    floor_solve : {"none", "already_met", "lagrangian", "milp"}
        How the floor was handled: no floor (or nothing to allocate); the allocation
        without the floor already met it (it is then also the best with it); the
        Lagrangian step gave an allocation proved within ``mip_rel_gap`` of the LP bound;
        or the full program with the floor row was solved.
    seconds : mapping of str to float
        Wall time of ``build`` (arrays and matrices), ``solve_without_floor``,
        ``floor_bound`` (the LP relaxation) and ``solve_with_floor`` (0 when not needed).
    """

    chosen: tuple[tuple[str, str, str], ...]
    objective: float
    objective_without_floor: float
    price_of_floor: float
    newcomer_floor: float
    seats: int
    newcomer_seats: int
    newcomer_share: float | None
    newcomer_share_without_floor: float | None
    staffed: tuple[str, ...]
    unstaffed_by_floor: tuple[str, ...]
    status: str
    mip_gap: float
    solves: int
    floor_solve: str
    seconds: Mapping[str, float] = field(default_factory=dict)

    def by_mission(self) -> dict[str, list[tuple[str, str]]]:
        """Chosen ``(kind, candidate_id)`` per staffed mission."""
        out: dict[str, list[tuple[str, str]]] = {}
        for mission_id, kind, candidate_id in self.chosen:
            out.setdefault(mission_id, []).append((kind, candidate_id))
        return out


@dataclass
class _Arrays:
    """The problem flattened: one entry per (mission, candidate) pair and per member."""

    pair_mission: np.ndarray  # mission index of each pair
    value: np.ndarray
    size: np.ndarray
    newcomers: np.ndarray  # newcomer members of each pair
    member_pair: np.ndarray  # pair index of each member entry
    member_person: np.ndarray  # person index of each member entry
    capacity: np.ndarray
    seats: np.ndarray
    min_seats: np.ndarray


def allocate(problem: AllocationProblem) -> Allocation:
    """Assign candidates to many open missions at once, with a newcomer floor.

    Maximises the sum of the chosen candidates' expected values such that no person is
    used beyond capacity (a group uses each member), nobody appears twice in a mission,
    each staffed mission's team is within ``[min_seats, seats]`` persons, and newcomers
    hold at least ``newcomer_floor`` of the allocated person-seats. The problem is also
    solved without the floor, and the difference is reported as ``price_of_floor``.

    Parameters
    ----------
    problem : AllocationProblem

    Returns
    -------
    Allocation

    Raises
    ------
    AllocationError
        When a time limit is reached before any feasible allocation is found, or the
        solver fails. An unmeetable floor does not raise: missions are left unstaffed and
        listed in ``unstaffed_by_floor``.

    Examples
    --------
    Two single-seat missions, one capacity each; the veteran is worth more everywhere,
    so without a floor the newcomer only gets the mission the veteran cannot take:

    >>> persons = [PersonCapacity("vet", 1), PersonCapacity("new", 1, newcomer=True)]
    >>> missions = [
    ...     OpenMission("m1", [AllocationCandidate("person", "vet", 10.0),
    ...                        AllocationCandidate("person", "new", 4.0)]),
    ...     OpenMission("m2", [AllocationCandidate("person", "vet", 9.0),
    ...                        AllocationCandidate("person", "new", 5.0)]),
    ... ]
    >>> a = allocate(AllocationProblem(missions, persons, newcomer_floor=0.5))
    >>> a.chosen
    (('m1', 'person', 'vet'), ('m2', 'person', 'new'))
    >>> a.objective, a.price_of_floor, a.newcomer_share
    (15.0, 0.0, 0.5)
    """
    t0 = time.perf_counter()
    arr = _flatten(problem)
    n_pairs, n_missions = len(arr.value), len(arr.seats)
    floor = problem.newcomer_floor
    seconds = {"build": 0.0, "solve_without_floor": 0.0, "floor_bound": 0.0,
               "solve_with_floor": 0.0}
    if n_pairs == 0:
        seconds["build"] = time.perf_counter() - t0
        return Allocation((), 0.0, 0.0, 0.0, floor, 0, 0, None, None, (), (), "optimal", 0.0,
                          0, "none", seconds)

    n_vars = n_pairs + n_missions
    rows, lb, ub = _constraints(arr)
    # A pair that can never be chosen (team too large, a member without capacity) is
    # fixed to 0 by its bound: presolve, which would find it, is off by default.
    blocked = np.zeros(n_pairs, dtype=bool)
    np.logical_or.at(blocked, arr.member_pair, arr.capacity[arr.member_person] == 0)
    x_ub = np.concatenate([(~blocked & (arr.size <= arr.seats[arr.pair_mission])).astype(float),
                           np.ones(n_missions)])
    c = np.concatenate([-arr.value, np.zeros(n_missions)])
    # Floor row: newcomer seats - floor * seats >= 0.
    slack = np.concatenate([arr.newcomers - floor * arr.size, np.zeros(n_missions)])
    seconds["build"] = time.perf_counter() - t0
    deadline = None if problem.time_limit is None else t0 + problem.time_limit

    def options() -> dict[str, float | bool]:
        out: dict[str, float | bool] = {"mip_rel_gap": problem.mip_rel_gap,
                                        "presolve": problem.presolve}
        if deadline is not None:
            out["time_limit"] = max(1.0, deadline - time.perf_counter())
        return out

    def solve(cost: np.ndarray, with_floor: bool) -> tuple[np.ndarray, int, float]:
        a, lo, hi = rows, lb, ub
        if with_floor:
            a = sparse.vstack([rows, sparse.csr_array(slack[None, :])], format="csr")
            lo, hi = np.append(lb, 0.0), np.append(ub, np.inf)
        res = milp(cost, integrality=np.ones(n_vars), bounds=(0.0, x_ub),
                   constraints=LinearConstraint(a, lo, hi), options=options())
        if res.status not in (0, 1) or res.x is None:
            raise AllocationError(f"allocation solver ({'with' if with_floor else 'without'} "
                                  f"the newcomer floor) returned no allocation: status "
                                  f"{res.status}, {res.message}")
        x = res.x[:n_pairs] > 0.5
        _check(arr, x)
        if res.mip_gap is not None:
            gap = float(res.mip_gap)
        else:
            gap = 0.0 if res.status == 0 else math.inf
        return x, int(res.status), gap

    def meets_floor(x: np.ndarray) -> bool:
        return float(slack[:n_pairs][x].sum()) >= -FLOOR_TOLERANCE

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() >= deadline

    t = time.perf_counter()
    x_free, status_free, gap_free = solve(c, with_floor=False)
    seconds["solve_without_floor"] = time.perf_counter() - t
    statuses, gaps, solves = [status_free], [gap_free], 1
    if floor == 0:
        x, floor_solve = x_free, "none"
    elif meets_floor(x_free):
        # The best allocation without the floor meets it: it is also the best with it.
        x, floor_solve = x_free, "already_met"
    else:
        x, floor_solve = None, "milp"
        t = time.perf_counter()
        bound, price = _lp_bound(c, rows, lb, ub, slack, x_ub, options())
        seconds["floor_bound"] = time.perf_counter() - t
        t = time.perf_counter()
        x_lag = None  # the best allocation of the Lagrangian step that meets the floor
        for step in LAGRANGIAN_STEPS if bound is not None and price > 0 else ():
            if out_of_time():
                break
            # The floor's shadow price turns the floor into values (each newcomer seat
            # earns it, each seat pays floor x it): the floor-free program is fast, and
            # its allocation, if it meets the floor within the gap of the LP bound, is
            # proved good enough. Integrality can leave it just short of the floor at the
            # LP price; a slightly higher price tips it over.
            x_try, _, _ = solve(c - price * (1.0 + step) * slack, with_floor=False)
            solves += 1
            if not meets_floor(x_try):
                continue
            x_lag = x_try
            value = float(arr.value[x_lag].sum())
            if bound - value <= problem.mip_rel_gap * abs(bound) + 1e-9 * (1 + abs(bound)):
                x, floor_solve = x_lag, "lagrangian"
                statuses.append(0)
                gaps.append(max(0.0, bound - value) / max(abs(bound), 1e-12))
            break  # a higher price only gives up more value
        if x is None and x_lag is not None and out_of_time():
            x = x_lag
            statuses.append(1)
            gaps.append((bound - float(arr.value[x].sum())) / max(abs(bound), 1e-12))
        elif x is None:
            x, status, gap = solve(c, with_floor=True)
            solves += 1
            if x_lag is not None and arr.value[x_lag].sum() > arr.value[x].sum():
                x = x_lag  # the full solve stopped at its time limit below the heuristic
            statuses.append(status)
            gaps.append(gap)
        seconds["solve_with_floor"] = time.perf_counter() - t

    objective = float(arr.value[x].sum())
    seats_free, newc_free = int(arr.size[x_free].sum()), int(arr.newcomers[x_free].sum())
    # Every allocation that meets the floor is feasible without it, so a time-limited
    # solve without the floor can never be worse than the one with it.
    objective_free = max(float(arr.value[x_free].sum()), objective)
    seats, newcomer_seats = int(arr.size[x].sum()), int(arr.newcomers[x].sum())
    staffed_mask = np.zeros(n_missions, dtype=bool)
    staffed_mask[arr.pair_mission[x]] = True
    staffed_free = np.zeros(n_missions, dtype=bool)
    staffed_free[arr.pair_mission[x_free]] = True
    mission_ids = [m.mission_id for m in problem.missions]
    keys = [(m.mission_id, cand.kind, cand.candidate_id)
            for m in problem.missions for cand in m.candidates]
    return Allocation(
        chosen=tuple(keys[i] for i in np.flatnonzero(x)),
        objective=objective,
        objective_without_floor=objective_free,
        price_of_floor=objective_free - objective,
        newcomer_floor=floor,
        seats=seats,
        newcomer_seats=newcomer_seats,
        newcomer_share=newcomer_seats / seats if seats else None,
        newcomer_share_without_floor=newc_free / seats_free if seats_free else None,
        staffed=tuple(mission_ids[i] for i in np.flatnonzero(staffed_mask)),
        unstaffed_by_floor=tuple(mission_ids[i]
                                 for i in np.flatnonzero(staffed_free & ~staffed_mask)),
        status="optimal" if all(s == 0 for s in statuses) else "time_limit",
        mip_gap=max(gaps),
        solves=solves,
        floor_solve=floor_solve,
        seconds=seconds,
    )


def _lp_bound(c: np.ndarray, rows: sparse.csr_array, lb: np.ndarray, ub: np.ndarray,
              slack: np.ndarray, x_ub: np.ndarray,
              options: Mapping[str, float | bool]) -> tuple[float | None, float]:
    """LP relaxation with the floor: an upper bound on the objective and the floor's price.

    Returns ``(None, 0.0)`` when the LP does not solve (e.g. time limit).
    """
    # Every row has one finite side: write all of them as A x <= b, the floor last.
    has_ub, has_lb = np.isfinite(ub), np.isfinite(lb)
    a_ub = sparse.vstack([rows[has_ub], -rows[has_lb], -sparse.csr_array(slack[None, :])],
                         format="csr")
    b_ub = np.concatenate([ub[has_ub], -lb[has_lb], [0.0]])
    lp_options = {k: v for k, v in options.items() if k in ("presolve", "time_limit")}
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=np.column_stack([np.zeros_like(x_ub), x_ub]),
                  method="highs", options=lp_options)
    if res.status != 0:
        return None, 0.0
    # The marginal of "-slack.x <= 0" is d(min c.x)/d(rhs) <= 0; its opposite is the price
    # of one unit of floor slack in objective value.
    return -float(res.fun), max(0.0, -float(res.ineqlin.marginals[-1]))


def _flatten(problem: AllocationProblem) -> _Arrays:
    person_index = {p.person_id: i for i, p in enumerate(problem.persons)}
    cands = [c for m in problem.missions for c in m.candidates]
    counts = np.fromiter((len(m.candidates) for m in problem.missions), dtype=np.int64,
                         count=len(problem.missions))
    size = np.fromiter((len(c.members) for c in cands), dtype=np.int64, count=len(cands))
    member_person = np.fromiter((person_index[p] for c in cands for p in c.members),
                                dtype=np.int64, count=int(size.sum()))
    member_pair = np.repeat(np.arange(len(cands)), size)
    newcomer = np.fromiter((p.newcomer for p in problem.persons), dtype=np.float64,
                           count=len(problem.persons))
    return _Arrays(
        pair_mission=np.repeat(np.arange(len(problem.missions)), counts),
        value=np.fromiter((c.value for c in cands), dtype=np.float64, count=len(cands)),
        size=size,
        newcomers=np.bincount(member_pair, weights=newcomer[member_person],
                              minlength=len(cands)).round().astype(np.int64),
        member_pair=member_pair,
        member_person=member_person,
        capacity=np.fromiter((int(p.capacity) for p in problem.persons), dtype=np.int64,
                             count=len(problem.persons)),
        seats=np.fromiter((int(m.seats) for m in problem.missions), dtype=np.int64,
                          count=len(problem.missions)),
        min_seats=np.fromiter((int(m.min_seats) for m in problem.missions), dtype=np.int64,
                              count=len(problem.missions)),
    )


def _constraints(arr: _Arrays) -> tuple[sparse.csr_array, np.ndarray, np.ndarray]:
    """Rows of every constraint but the floor, over variables ``[x (pairs), y (missions)]``."""
    n_pairs, n_missions = len(arr.value), len(arr.seats)
    n_vars = n_pairs + n_missions
    n_persons = len(arr.capacity)
    ones = np.ones(len(arr.member_pair))

    # Capacity: one row per person who appears in some candidate.
    used, person_row = np.unique(arr.member_person, return_inverse=True)
    cap = sparse.csr_array((ones, (person_row, arr.member_pair)), shape=(len(used), n_vars))
    cap.sum_duplicates()

    # Once per mission: only (mission, person) keys that occur in two or more pairs need a row.
    key = arr.pair_mission[arr.member_pair] * n_persons + arr.member_person
    _, key_row, key_count = np.unique(key, return_inverse=True, return_counts=True)
    dup_keys = np.flatnonzero(key_count > 1)
    in_dup = key_count[key_row] > 1
    dup_row = np.searchsorted(dup_keys, key_row[in_dup])
    once = sparse.csr_array((ones[in_dup], (dup_row, arr.member_pair[in_dup])),
                            shape=(len(dup_keys), n_vars))

    # Team size: size.x - seats*y <= 0 and size.x - min_seats*y >= 0, one pair of rows per
    # mission.
    m_idx = np.arange(n_missions)
    team_r = np.concatenate([arr.pair_mission, m_idx])
    team_c = np.concatenate([np.arange(n_pairs), n_pairs + m_idx])
    size = arr.size.astype(float)
    team_max = sparse.csr_array((np.concatenate([size, -arr.seats.astype(float)]),
                                 (team_r, team_c)), shape=(n_missions, n_vars))
    team_min = sparse.csr_array((np.concatenate([size, -arr.min_seats.astype(float)]),
                                 (team_r, team_c)), shape=(n_missions, n_vars))

    rows = sparse.vstack([cap, once, team_max, team_min], format="csr")
    lb = np.concatenate([np.full(cap.shape[0], -np.inf), np.full(once.shape[0], -np.inf),
                         np.full(n_missions, -np.inf), np.zeros(n_missions)])
    ub = np.concatenate([arr.capacity[used].astype(float), np.ones(once.shape[0]),
                         np.zeros(n_missions), np.full(n_missions, np.inf)])
    return rows, lb, ub


def _check(arr: _Arrays, x: np.ndarray) -> None:
    """Fail closed: refuse a rounded solution that breaks a hard rule."""
    chosen = x[arr.member_pair]
    usage = np.bincount(arr.member_person[chosen], minlength=len(arr.capacity))
    key = arr.pair_mission[arr.member_pair[chosen]] * len(arr.capacity) + arr.member_person[chosen]
    team = np.bincount(arr.pair_mission[x], weights=arr.size[x], minlength=len(arr.seats))
    staffed = team > 0
    if ((usage > arr.capacity).any() or len(np.unique(key)) != len(key)
            or (team > arr.seats).any() or (team[staffed] < arr.min_seats[staffed]).any()):
        raise AllocationError("the solver's allocation breaks a hard rule (capacity, one seat "
                              "per person and mission, or team size); refusing it")


def _dups(ids: Sequence[str]) -> list[str]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
