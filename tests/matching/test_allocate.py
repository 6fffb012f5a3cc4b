"""Allocation across many missions: optimality against brute force, hard rules, the floor."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from graph._errors import ValidationError
from matching._allocate import (
    Allocation,
    AllocationCandidate,
    AllocationError,
    AllocationProblem,
    OpenMission,
    PersonCapacity,
    _check,
    _flatten,
    allocate,
)


def person(person_id: str, value: float) -> AllocationCandidate:
    return AllocationCandidate("person", person_id, value)


def group(group_id: str, value: float, members: tuple[str, ...] = ()) -> AllocationCandidate:
    return AllocationCandidate("group", group_id, value, members)


# ---------------------------------------------------------------------------------------
# An independent checker and a brute-force solver.


def check_valid(problem: AllocationProblem, a: Allocation) -> None:
    """Every hard rule and every reported figure, recomputed from ``a.chosen``."""
    persons = {p.person_id: p for p in problem.persons}
    missions = {m.mission_id: m for m in problem.missions}
    usage: Counter[str] = Counter()
    value = seats = newcomer_seats = 0
    for mission_id, picks in a.by_mission().items():
        mission = missions[mission_id]
        by_key = {(c.kind, c.candidate_id): c for c in mission.candidates}
        members = [p for key in picks for p in by_key[key].members]
        assert len(members) == len(set(members)), f"a person twice in {mission_id}"
        assert mission.min_seats <= len(members) <= mission.seats, f"team size of {mission_id}"
        usage.update(members)
        value += sum(by_key[key].value for key in picks)
        seats += len(members)
        newcomer_seats += sum(persons[p].newcomer for p in members)
    for person_id, n in usage.items():
        assert n <= persons[person_id].capacity, f"capacity of {person_id}"
    assert len(a.chosen) == len(set(a.chosen))
    assert a.objective == pytest.approx(value, abs=1e-9)
    assert (a.seats, a.newcomer_seats) == (seats, newcomer_seats)
    assert a.newcomer_share == (newcomer_seats / seats if seats else None)
    assert newcomer_seats >= problem.newcomer_floor * seats - 1e-6
    assert sorted(a.staffed) == sorted(a.by_mission())
    assert a.price_of_floor >= 0
    assert a.price_of_floor == pytest.approx(a.objective_without_floor - a.objective, abs=1e-9)


def brute_force(problem: AllocationProblem, floor: float) -> float:
    """Best objective over every feasible selection (exhaustive, small problems only)."""
    newcomer = {p.person_id: p.newcomer for p in problem.persons}
    options = []  # per mission: (value, members, newcomer seats) of every valid team
    for m in problem.missions:
        teams = [(0.0, (), 0)]
        for r in range(1, len(m.candidates) + 1):
            for combo in itertools.combinations(m.candidates, r):
                members = tuple(p for c in combo for p in c.members)
                if len(set(members)) == len(members) and m.min_seats <= len(members) <= m.seats:
                    teams.append((sum(c.value for c in combo), members,
                                  sum(newcomer[p] for p in members)))
        options.append(teams)
    best = -math.inf

    def walk(i: int, left: dict[str, int], value: float, seats: int, newc: int) -> None:
        nonlocal best
        if i == len(options):
            if newc - floor * seats >= -1e-9:
                best = max(best, value)
            return
        for team_value, members, team_newc in options[i]:
            if all(left[p] > 0 for p in members):
                for p in members:
                    left[p] -= 1
                walk(i + 1, left, value + team_value, seats + len(members), newc + team_newc)
                for p in members:
                    left[p] += 1

    walk(0, {p.person_id: p.capacity for p in problem.persons}, 0.0, 0, 0)
    return best


def random_problem(rng: np.random.Generator, floor: float, **options) -> AllocationProblem:
    """2-4 missions, 2-5 candidates each (persons and groups), 3-6 persons of capacity 1-2."""
    n_persons = int(rng.integers(3, 7))
    person_ids = [f"p{i}" for i in range(n_persons)]
    persons = [PersonCapacity(p, int(rng.integers(1, 3)), bool(rng.random() < 0.4))
               for p in person_ids]
    groups = {f"g{i}": tuple(rng.choice(person_ids, size=int(rng.integers(2, 4)),
                                        replace=False).tolist()) for i in range(3)}
    missions = []
    for m in range(int(rng.integers(2, 5))):
        n_cands = int(rng.integers(2, 6))
        n_groups = int(rng.binomial(n_cands, 0.3))
        people = rng.choice(person_ids, size=min(n_cands - n_groups, n_persons), replace=False)
        cands = [person(str(p), float(rng.choice([0.0, rng.uniform(0, 10)],
                                                               p=[0.1, 0.9])))
                 for p in people]
        for g in rng.choice(sorted(groups), size=min(n_groups, len(groups)), replace=False):
            cands.append(group(str(g), float(rng.uniform(0, 15)), groups[str(g)]))
        seats = int(rng.integers(1, 4))
        missions.append(OpenMission(f"m{m}", cands, seats=seats,
                                    min_seats=int(rng.integers(1, seats + 1))))
    return AllocationProblem(missions, persons, newcomer_floor=floor, **options)


# ---------------------------------------------------------------------------------------
# Optimality on cases small enough to brute-force.


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.5])
def test_optimal_against_brute_force(floor):
    rng = np.random.default_rng(20261104 + int(floor * 10))
    binding, paths = 0, Counter()
    for case in range(100):
        problem = random_problem(rng, floor, mip_rel_gap=0.0)
        a = allocate(problem)
        paths[a.floor_solve] += 1
        assert a.status == "optimal"
        check_valid(problem, a)
        assert a.objective == pytest.approx(brute_force(problem, floor), abs=1e-7), case
        assert a.objective_without_floor == pytest.approx(brute_force(problem, 0.0),
                                                          abs=1e-7), case
        binding += a.price_of_floor > 1e-9
    if floor > 0:
        assert binding >= 10  # the floor really constrained a good share of the cases
        # Both ways of meeting a binding floor were exercised (and checked above).
        assert paths["lagrangian"] >= 3 and paths["milp"] >= 3, paths
    else:
        assert set(paths) == {"none"}


def test_default_gap_is_near_optimal():
    rng = np.random.default_rng(7)
    for _ in range(40):
        problem = random_problem(rng, 0.3)
        a = allocate(problem)
        check_valid(problem, a)
        best = brute_force(problem, 0.3)
        assert best * (1 - 1e-4) - 1e-9 <= a.objective <= best + 1e-9


# ---------------------------------------------------------------------------------------
# Hard rules on hand-made cases.


def test_a_person_appears_once_per_mission():
    # Alone and inside a group in the same mission: only one of the two may be chosen.
    problem = AllocationProblem(
        [OpenMission("m", [person("p", 5.0),
                           group("g", 6.0, ("p", "q"))], seats=3)],
        [PersonCapacity("p", 2), PersonCapacity("q", 1)])
    a = allocate(problem)
    assert a.chosen == (("m", "group", "g"),)
    assert a.objective == 6.0


def test_a_group_uses_each_members_capacity():
    problem = AllocationProblem(
        [OpenMission("m1", [group("g", 10.0, ("p", "q"))], seats=2, min_seats=2),
         OpenMission("m2", [person("p", 6.0)]),
         OpenMission("m3", [person("q", 5.0)])],
        [PersonCapacity("p", 1), PersonCapacity("q", 2)])
    a = allocate(problem)
    assert a.by_mission() == {"m1": [("group", "g")], "m3": [("person", "q")]}
    assert a.objective == 15.0


def test_capacity_zero_and_team_bounds_leave_missions_unstaffed():
    problem = AllocationProblem(
        [OpenMission("short", [person("a", 9.0)], seats=3, min_seats=2),
         OpenMission("busy", [person("b", 9.0)]),
         OpenMission("big", [group("g", 9.0, ("a", "c", "d"))], seats=2),
         OpenMission("ok", [person("a", 1.0), person("c", 2.0)],
                     seats=2, min_seats=2),
         OpenMission("none", [])],
        [PersonCapacity("a", 1), PersonCapacity("b", 0), PersonCapacity("c", 1),
         PersonCapacity("d", 1)])
    a = allocate(problem)
    assert a.staffed == ("ok",)
    assert a.objective == 3.0
    check_valid(problem, a)


def test_a_solution_breaking_a_hard_rule_is_refused():
    # The guard behind the solver: capacity is a hard rule, never traded for value.
    problem = AllocationProblem(
        [OpenMission("m1", [person("p", 1.0)]),
         OpenMission("m2", [person("p", 1.0)])],
        [PersonCapacity("p", 1)])
    arr = _flatten(problem)
    _check(arr, np.array([True, False]))
    with pytest.raises(AllocationError, match="hard rule"):
        _check(arr, np.array([True, True]))


def test_capacity_two_lets_a_person_take_two_missions():
    problem = AllocationProblem(
        [OpenMission(f"m{i}", [person("p", 3.0), person("q", 1.0)])
         for i in range(3)],
        [PersonCapacity("p", 2), PersonCapacity("q", 5)])
    a = allocate(problem)
    assert Counter(c for _, _, c in a.chosen) == {"p": 2, "q": 1}
    assert a.objective == 7.0


# ---------------------------------------------------------------------------------------
# The newcomer floor and its price.

VET_NEW = [PersonCapacity("vet", 2), PersonCapacity("new", 2, newcomer=True)]


def _two_missions(floor: float) -> AllocationProblem:
    return AllocationProblem(
        [OpenMission("m1", [person("vet", 10.0), person("new", 4.0)]),
         OpenMission("m2", [person("vet", 9.0), person("new", 5.0)])],
        VET_NEW, newcomer_floor=floor)


def test_price_of_the_floor():
    free = allocate(_two_missions(0.0))
    assert (free.objective, free.newcomer_share, free.solves) == (19.0, 0.0, 1)
    a = allocate(_two_missions(0.5))
    assert a.chosen == (("m1", "person", "vet"), ("m2", "person", "new"))
    assert (a.objective, a.objective_without_floor, a.price_of_floor) == (15.0, 19.0, 4.0)
    assert (a.newcomer_share, a.newcomer_share_without_floor) == (0.5, 0.0)
    assert a.unstaffed_by_floor == ()
    assert a.floor_solve in ("lagrangian", "milp") and a.seconds["solve_with_floor"] > 0


def test_a_floor_already_met_costs_nothing_and_one_solve():
    a = allocate(_two_missions(0.0).__class__(
        _two_missions(0.0).missions,
        [PersonCapacity("vet", 2, newcomer=True), PersonCapacity("new", 2, newcomer=True)],
        newcomer_floor=1.0))
    assert (a.objective, a.price_of_floor, a.solves, a.newcomer_share) == (19.0, 0.0, 1, 1.0)
    assert a.floor_solve == "already_met"
    assert a.seconds["solve_with_floor"] == 0.0


def test_a_group_counts_its_newcomer_members():
    problem = AllocationProblem(
        [OpenMission("m", [group("g", 10.0, ("new", "vet")),
                           person("w", 11.0)], seats=2)],
        [*VET_NEW, PersonCapacity("w", 1)], newcomer_floor=0.5)
    a = allocate(problem)
    assert a.chosen == (("m", "group", "g"),)
    assert (a.seats, a.newcomer_seats, a.price_of_floor) == (2, 1, 1.0)


def test_too_few_newcomers_leave_missions_unstaffed_and_say_so():
    # One newcomer, on m2 only: a 50 % floor allows two seats at most.
    problem = AllocationProblem(
        [OpenMission("m1", [person("v1", 10.0)]),
         OpenMission("m2", [person("v2", 8.0), person("new", 1.0)]),
         OpenMission("m3", [person("v3", 7.0)])],
        [PersonCapacity("v1", 1), PersonCapacity("v2", 1), PersonCapacity("v3", 1),
         PersonCapacity("new", 1, newcomer=True)], newcomer_floor=0.5)
    a = allocate(problem)
    assert a.chosen == (("m1", "person", "v1"), ("m2", "person", "new"))
    assert (a.objective, a.objective_without_floor, a.price_of_floor) == (11.0, 25.0, 14.0)
    assert a.unstaffed_by_floor == ("m3",)
    check_valid(problem, a)


def test_no_newcomer_at_all_staffs_nothing_and_reports_the_full_price():
    problem = AllocationProblem(
        [OpenMission("m1", [person("v1", 10.0)]),
         OpenMission("m2", [person("v2", 8.0)])],
        [PersonCapacity("v1", 1), PersonCapacity("v2", 1)], newcomer_floor=0.3)
    a = allocate(problem)
    assert a.chosen == () and a.staffed == ()
    assert (a.objective, a.price_of_floor, a.newcomer_share) == (0.0, 18.0, None)
    assert a.unstaffed_by_floor == ("m1", "m2")
    assert a.newcomer_share_without_floor == 0.0


# ---------------------------------------------------------------------------------------
# Empty problems, options, validation.


def test_empty_problems():
    for problem in (AllocationProblem([], []),
                    AllocationProblem([OpenMission("m", [])], [], newcomer_floor=0.5)):
        a = allocate(problem)
        assert (a.chosen, a.objective, a.price_of_floor, a.solves) == ((), 0.0, 0.0, 0)
        assert a.floor_solve == "none"
        assert a.newcomer_share is None and a.status == "optimal"


def test_options_reach_the_solver():
    rng = np.random.default_rng(3)
    problem = random_problem(rng, 0.3, time_limit=30.0, presolve=True, mip_rel_gap=0.0)
    a = allocate(problem)
    assert a.status == "optimal"
    assert a.objective == pytest.approx(brute_force(problem, 0.3), abs=1e-7)


def test_medium_problem_respects_every_rule():
    rng = np.random.default_rng(11)
    person_ids = [f"p{i}" for i in range(600)]
    newcomer = rng.random(600) < 0.3
    persons = [PersonCapacity(p, int(rng.integers(1, 3)), bool(n))
               for p, n in zip(person_ids, newcomer, strict=True)]
    missions = []
    for m in range(150):
        people = rng.choice(600, size=18, replace=False)
        cands = [person(person_ids[i], float(rng.uniform(0, 1) + 0.5 * ~newcomer[i]))
                 for i in people]
        for g in range(2):
            members = tuple(person_ids[i] for i in rng.choice(600, size=3, replace=False))
            cands.append(group(f"g{m}-{g}", float(rng.uniform(0, 3)), members))
        missions.append(OpenMission(f"m{m}", cands, seats=3, min_seats=2))
    problem = AllocationProblem(missions, persons, newcomer_floor=0.4)
    a = allocate(problem)
    check_valid(problem, a)
    assert a.status == "optimal" and a.floor_solve in ("lagrangian", "milp")
    assert a.newcomer_share_without_floor < 0.4 <= a.newcomer_share + 1e-9
    assert 0 < a.price_of_floor < a.objective_without_floor


@pytest.mark.parametrize("build, match", [
    (lambda: AllocationCandidate("team", "x", 1.0), "kind"),
    (lambda: AllocationCandidate("person", "p", 1.0, ("q",)), "only member is itself"),
    (lambda: group("g", 1.0), "distinct members"),
    (lambda: group("g", 1.0, ("p", "p")), "distinct members"),
    (lambda: person("p", -1.0), ">= 0"),
    (lambda: person("p", float("nan")), "finite"),
    (lambda: OpenMission("m", [], seats=2, min_seats=3), "min_seats"),
    (lambda: OpenMission("m", [], seats=1, min_seats=0), "min_seats"),
    (lambda: OpenMission("m", [person("p", 1.0)] * 2), "duplicate candidates"),
    (lambda: PersonCapacity("p", -1), "capacity"),
    (lambda: PersonCapacity("p", 1.5), "capacity"),
    (lambda: AllocationProblem([], [], newcomer_floor=1.2), "newcomer_floor"),
    (lambda: AllocationProblem([], [], time_limit=0), "time_limit"),
    (lambda: AllocationProblem([OpenMission("m", []), OpenMission("m", [])], []), "duplicate"),
    (lambda: AllocationProblem([], [PersonCapacity("p", 1)] * 2), "duplicate person"),
    (lambda: AllocationProblem([OpenMission("m", [group("g", 1.0, ("p", "q"))])],
                               [PersonCapacity("p", 1)]), "not in persons"),
])
def test_invalid_problems_are_refused(build, match):
    with pytest.raises(ValidationError, match=match):
        build()


def test_same_id_as_person_and_group_is_allowed():
    # Ids come from two tables: a person and a group may share one.
    problem = AllocationProblem(
        [OpenMission("m", [person("7", 1.0), group("7", 3.0, ("a", "b"))],
                     seats=3)],
        [PersonCapacity("7", 1), PersonCapacity("a", 1), PersonCapacity("b", 1)])
    a = allocate(problem)
    assert a.chosen == (("m", "person", "7"), ("m", "group", "7"))
    assert a.objective == 4.0
