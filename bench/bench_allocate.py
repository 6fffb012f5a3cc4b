"""Benchmark of the allocation across many open missions (``matching.allocate``).

Builds a random problem (by default 2,000 missions x 50 candidates, 10 % of them peer
groups of 2-4 persons, over 20,000 persons with a remaining capacity of 1-3), then solves
it without a newcomer floor and with a 20 % floor, and prints build and solve times, the
objective, the price of the floor and the newcomer shares as JSON.

Newcomers (35 % of persons) have lower expected values, as they would under a ranker that
has seen few of their outcomes, so that the floor binds.

Usage::

    python bench/bench_allocate.py
    python bench/bench_allocate.py --missions 500 --candidates 30 --persons 5000 --floor 0.3

The data are random, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from matching._allocate import (
    AllocationCandidate,
    AllocationProblem,
    OpenMission,
    PersonCapacity,
    allocate,
)


def random_problem(missions: int, candidates: int, persons: int, group_share: float,
                   seed: int) -> tuple[list[OpenMission], list[PersonCapacity]]:
    """A random allocation problem; peer groups are drawn from a fixed pool, as in a city."""
    rng = np.random.default_rng(seed)
    person_ids = [f"p{i}" for i in range(persons)]
    newcomer = rng.random(persons) < 0.35
    skill = np.where(newcomer, rng.beta(2, 6, persons), rng.beta(4, 4, persons))
    capacity = rng.integers(1, 4, persons)
    n_groups = max(1, persons // 10)
    group_members = [rng.choice(persons, size=int(k), replace=False)
                     for k in rng.integers(2, 5, n_groups)]
    people = [PersonCapacity(person_ids[i], int(capacity[i]), bool(newcomer[i]))
              for i in range(persons)]
    out = []
    for m in range(missions):
        worth = float(rng.uniform(500, 5000))  # what a success is worth on this mission
        n_group = int(rng.binomial(candidates, group_share))
        chosen = rng.choice(persons, size=candidates - n_group, replace=False)
        p_success = np.clip(skill[chosen] + rng.normal(0, 0.1, len(chosen)), 0.01, 0.99)
        cands = [AllocationCandidate("person", person_ids[i], float(p * worth))
                 for i, p in zip(chosen, p_success, strict=True)]
        for g in rng.choice(n_groups, size=n_group, replace=False):
            members = group_members[g]
            p = float(np.clip(skill[members].mean() + 0.05 + rng.normal(0, 0.1), 0.01, 0.99))
            cands.append(AllocationCandidate("group", f"g{g}", p * worth * len(members) ** 0.5,
                                   tuple(person_ids[i] for i in members)))
        team_max = int(rng.integers(1, 5))
        team_min = int(rng.integers(1, team_max + 1))
        out.append(OpenMission(f"m{m}", cands, seats=team_max, min_seats=team_min))
    return out, people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missions", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--persons", type=int, default=20000)
    parser.add_argument("--groups", type=float, default=0.10, help="share of group candidates")
    parser.add_argument("--floor", type=float, default=0.20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--gap", type=float, default=1e-4, help="mip_rel_gap")
    parser.add_argument("--presolve", action="store_true", help="turn HiGHS presolve on")
    args = parser.parse_args()

    t = time.perf_counter()
    missions, persons = random_problem(args.missions, args.candidates, args.persons,
                                       args.groups, args.seed)
    generate = time.perf_counter() - t
    report = {
        "problem": {"missions": args.missions, "candidates_per_mission": args.candidates,
                    "persons": args.persons, "group_share": args.groups, "seed": args.seed,
                    "pairs": sum(len(m.candidates) for m in missions),
                    "mip_rel_gap": args.gap, "time_limit": args.time_limit,
                    "presolve": args.presolve},
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "generate_seconds": round(generate, 3),
    }
    for name, floor in (("without_floor", 0.0), (f"floor_{args.floor:g}", args.floor)):
        t = time.perf_counter()
        problem = AllocationProblem(missions, persons, newcomer_floor=floor,
                                    time_limit=args.time_limit, mip_rel_gap=args.gap,
                                    presolve=args.presolve)
        validate = time.perf_counter() - t
        t = time.perf_counter()
        a = allocate(problem)
        total = time.perf_counter() - t
        report[name] = {
            "validate_seconds": round(validate, 3),
            "allocate_seconds": round(total, 3),
            **{f"{k}_seconds": round(v, 3) for k, v in a.seconds.items()},
            "solves": a.solves,
            "floor_solve": a.floor_solve,
            "status": a.status,
            "mip_gap": a.mip_gap,
            "objective": round(a.objective, 2),
            "objective_without_floor": round(a.objective_without_floor, 2),
            "price_of_floor": round(a.price_of_floor, 2),
            "price_share": round(a.price_of_floor / a.objective_without_floor, 5)
            if a.objective_without_floor else None,
            "newcomer_share": a.newcomer_share,
            "newcomer_share_without_floor": a.newcomer_share_without_floor,
            "seats": a.seats,
            "staffed_missions": len(a.staffed),
            "unstaffed_by_floor": len(a.unstaffed_by_floor),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
