"""Benchmark of the community graph: load + build, personalised PageRank, tie signals.

Generates a synthetic store (SQLite file under a temporary folder, random data inserted
with SQLAlchemy core: ~10 ties per person, so 100k persons ~ 1M ties), then measures in a
fresh subprocess per size (so that peak RSS is that of the graph alone):

- load + build: ``build_community_graph(store)`` plus both CSR operators, wall time and
  the growth of peak RSS;
- a monthly snapshot from the loaded graph (``graph.snapshot(t)``) with its operators;
- PPR per mission (median over ``--missions`` missions): one solve of its seeds together
  without any cache (each variant); its first request (both variants) when none of its
  seeds is solved yet (four single-seed solves); the warm-up of every area and need type
  (``CommunityGraph.warm``, both variants), its time and the memory of the single-seed
  cache; its first request once warm (a vector sum); a repeated request (result cache);
  the composed vectors against the joint solves and a float64 power iteration;
- ``ties_succeeded`` for 500 candidates; ``group_signals`` for every group.

Usage::

    python bench/bench_graph.py --persons 10000 100000
    python bench/bench_graph.py --persons 100000 --store-dir /tmp/bench_graph  # keep stores

The data are random, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from graph._models import (
    Area,
    AreaLink,
    Assignment,
    Client,
    GroupMember,
    Mission,
    Outcome,
    PeerGroup,
    Person,
    Tie,
)
from graph._store import Store, open_store, sqlite_url
from graph._vocabulary import LIVED_EXPERIENCE, NEED_TYPES, TIE_KINDS

T0 = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_DAYS = 4 * 365
CHUNK = 50_000


def _times(rng: np.random.Generator, n: int, lo_days: np.ndarray | float = 0.0) -> list:
    days = lo_days + rng.uniform(0, 1, n) * (SPAN_DAYS - lo_days)
    return [T0 + timedelta(days=float(d)) for d in days]


def _insert(conn, table, rows: list[dict]) -> None:  # noqa: ANN001
    for i in range(0, len(rows), CHUNK):
        conn.execute(table.insert(), rows[i : i + CHUNK])


def generate_store(path: Path, n_persons: int, ties_per_person: int = 10,
                   n_missions: int = 2000, seed: int = 0) -> Store:
    """A random community in a fresh SQLite store at ``path`` (replaced if it exists).

    Ties are mostly (80 %) between residents of the same area, as in a city.
    """
    rng = np.random.default_rng(seed)
    if path.exists():
        path.unlink()
    store = open_store(sqlite_url(path))
    n_areas = max(10, n_persons // 1000)
    side = int(np.ceil(np.sqrt(n_areas)))
    area_ids = [f"A{i:04d}" for i in range(n_areas)]
    person_ids = np.array([f"P{i:07d}" for i in range(n_persons)])
    area_of = rng.integers(0, n_areas, n_persons)
    joined_days = rng.uniform(0, SPAN_DAYS * 0.9, n_persons)
    needs = sorted(NEED_TYPES)
    le_tags = sorted(LIVED_EXPERIENCE)

    with store.engine.begin() as conn:
        _insert(conn, Area.__table__, [
            {"area_id": a, "name": a, "lat": 48.8 + (i // side) * 0.01,
             "lon": 2.3 + (i % side) * 0.01} for i, a in enumerate(area_ids)])
        links = []
        for i in range(n_areas):
            for j in (i + 1, i + side):
                if j < n_areas and (j != i + 1 or (i + 1) % side):
                    links.append({"area_a": area_ids[i], "area_b": area_ids[j]})
        _insert(conn, AreaLink.__table__, links)

        consent_le = rng.random(n_persons) < 0.6
        n_tags = rng.integers(0, 3, n_persons)
        persons = []
        for i in range(n_persons):
            tags = None
            if consent_le[i] and n_tags[i]:
                tags = ";".join(sorted(rng.choice(le_tags, n_tags[i], replace=False)))
            persons.append({
                "person_id": person_ids[i], "area_id": area_ids[area_of[i]],
                "joined_at": T0 + timedelta(days=float(joined_days[i])),
                "availability_min_per_week": 120, "max_concurrent": 2, "skills": None,
                "lived_experience": tags, "consent_matching": True,
                "consent_lived_experience": bool(consent_le[i])})
        _insert(conn, Person.__table__, persons)

        # Residents of each area: order[starts[a]: starts[a] + sizes[a]].
        order = np.argsort(area_of, kind="stable")
        starts = np.searchsorted(area_of[order], np.arange(n_areas))
        sizes = np.bincount(area_of, minlength=n_areas)

        # Peer groups of 2-6 residents of one area; most member pairs are tied.
        n_groups = max(2, n_persons // 50)
        groups, members, group_pairs = [], [], []
        for g in range(n_groups):
            area = rng.integers(0, n_areas)
            pool = order[starts[area]: starts[area] + sizes[area]]
            size = min(len(pool), int(rng.integers(2, 7)))
            chosen = rng.choice(pool, size, replace=False)
            created_d = float(joined_days[chosen].max()) + float(rng.uniform(0, 30))
            gid = f"G{g:06d}"
            groups.append({"group_id": gid, "kind": "peer",
                           "created_at": T0 + timedelta(days=created_d)})
            members += [{"group_id": gid, "person_id": person_ids[p],
                         "joined_at": T0 + timedelta(days=created_d)} for p in chosen]
            group_pairs += [(x, y) for i, x in enumerate(chosen) for y in chosen[i + 1:]
                            if rng.random() < 0.7]
        _insert(conn, PeerGroup.__table__, groups)
        _insert(conn, GroupMember.__table__, members)

        # Ties: 80 % inside the area, ordered pairs, one per (pair, kind).
        m = n_persons * ties_per_person
        a = rng.integers(0, n_persons, m)
        b = rng.integers(0, n_persons, m)
        local = rng.random(m) < 0.8
        la = area_of[a[local]]
        b[local] = order[starts[la] + (rng.random(local.sum()) * sizes[la]).astype(np.int64)]
        kinds = rng.integers(0, len(TIE_KINDS), m)
        if group_pairs:
            ga, gb = np.array(group_pairs).T
            a, b = np.concatenate([a, ga]), np.concatenate([b, gb])
            kinds = np.concatenate([kinds, np.full(len(ga), sorted(TIE_KINDS).index("peer"))])
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keep = lo != hi
        key = np.unique((lo[keep] * n_persons + hi[keep]) * len(TIE_KINDS) + kinds[keep])
        kinds = key % len(TIE_KINDS)
        pair = key // len(TIE_KINDS)
        lo, hi = pair // n_persons, pair % n_persons
        tie_kinds = sorted(TIE_KINDS)
        weights = rng.uniform(0.1, 1.0, len(key))
        start = np.maximum(joined_days[lo], joined_days[hi])
        created = _times(rng, len(key), start)
        _insert(conn, Tie.__table__, [
            {"person_a": person_ids[x], "person_b": person_ids[y], "kind": tie_kinds[k],
             "weight": float(w), "created_at": c}
            for x, y, k, w, c in zip(lo, hi, kinds, weights, created, strict=True)])

        clients = [{"client_id": f"C{i:03d}", "kind": "city", "name": f"client {i}"}
                   for i in range(50)]
        _insert(conn, Client.__table__, clients)
        missions, assignments, outcomes = [], [], []
        for k in range(n_missions):
            created = T0 + timedelta(days=float(rng.uniform(0, SPAN_DAYS)))
            mid = f"M{k:06d}"
            missions.append({
                "mission_id": mid, "client_id": clients[k % 50]["client_id"],
                "need_type": needs[rng.integers(len(needs))],
                "area_id": area_ids[rng.integers(n_areas)], "created_at": created,
                "starts_at": created + timedelta(days=7), "ends_at": created + timedelta(days=97),
                "status": "closed", "title": mid, "description": None, "metric": "count",
                "direction": "increase", "baseline": 0.0, "target": 10.0,
                "pay_rule": "per_unit", "unit_price": 50.0, "fee": None, "contract_cap": None,
                "team_min": 1, "team_max": 3, "minutes_per_day": 60, "days_per_week": 2,
                "vetting_regime": None, "radius_km": None})
            for j in range(int(rng.integers(0, 4))):
                aid = f"{mid}-{j}"
                assignments.append({
                    "assignment_id": aid, "mission_id": mid,
                    "person_id": person_ids[rng.integers(n_persons)], "group_id": None,
                    "shortlist_id": None, "assigned_at": created + timedelta(days=1),
                    "status": "completed", "propensity": None})
                status = "verified" if rng.random() < 0.8 else "claimed"
                outcomes.append({
                    "outcome_id": f"O{aid}", "assignment_id": aid,
                    "measured_at": created + timedelta(days=90), "value": 1.0,
                    "success": bool(rng.random() < 0.5), "status": status, "payout": None})
        _insert(conn, Mission.__table__, missions)
        _insert(conn, Assignment.__table__, assignments)
        _insert(conn, Outcome.__table__, outcomes)
    with store.session() as s:
        Store.bump_version(s)
    return store


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reference_ppr(graph, seeds: dict, restart: float = 0.15, steps: int = 300) -> np.ndarray:  # noqa: ANN001
    """Plain power iteration in float64, independent of the library's solver."""
    adj = graph.adjacency(lived_experience=False).astype(np.float64)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    s = np.zeros(adj.shape[0])
    for key, w in seeds.items():
        s[graph.nodes[key]] += w
    s /= s.sum()
    x = s.copy()
    for _ in range(steps):
        walk = adj @ (x * inv)
        x = restart * s + (1 - restart) * (walk + x[deg == 0].sum() * s)
    return x / x.sum()


def measure(db: Path, n_missions: int, seed: int = 1) -> dict:
    """Measure on an existing store; run in a fresh process for a meaningful peak RSS."""
    from graph._community_graph import (
        build_community_graph,
        group_signals,
        mission_seeds,
        personalized_pagerank,
        proximity,
        proximity_le,
        ties_succeeded,
    )

    store = open_store(sqlite_url(db))
    rss0 = _rss_mb()
    t = time.perf_counter()
    graph = build_community_graph(store)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    graph.operator(lived_experience=False)
    graph.operator(lived_experience=True)
    t_ops = time.perf_counter() - t
    peak = _peak_rss_mb() - rss0
    out = {
        "persons": graph.nodes.size("person"),
        "ties": int(graph.edge_counts().get("tie", 0)),
        "edges": graph.edges.height,
        "load_build_s": round(t_load, 3),
        "operators_s": round(t_ops, 3),
        "peak_rss_growth_mb": round(peak, 1),
    }

    t = time.perf_counter()
    snap = graph.snapshot(datetime(2024, 6, 1, tzinfo=UTC))
    snap.operator(lived_experience=False)
    out["snapshot_s"] = round(time.perf_counter() - t, 3)

    rng = np.random.default_rng(seed)
    # Distinct (area, need) pairs, so that no "first request" is served by the result cache.
    missions = graph.missions.unique(["area_id", "need_type"]).sort("mission_id").sample(
        n_missions, seed=seed)
    pairs = list(missions.select("area_id", "need_type").iter_rows())

    def timed(fn) -> tuple[float, float]:  # noqa: ANN001
        t, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t, time.process_time() - c

    # One solve of a mission's seeds together, per variant (no cache at all): the cost of
    # each of the two solves of a first request before single-seed composition.
    joint, joint_cpu, joint_le, iters = [], [], [], []
    for area, need in pairs:
        seeds = mission_seeds(area, need)
        w, c = timed(lambda s=seeds: personalized_pagerank(graph, s, use_cache=False))
        joint.append(w)
        joint_cpu.append(c)
        iters.append(graph.cache_info()["last_iterations"])
        w, _ = timed(lambda s=seeds: personalized_pagerank(graph, s, lived_experience=True,
                                                           use_cache=False))
        joint_le.append(w)
        iters.append(graph.cache_info()["last_iterations"])
    out["ppr_ms_median"] = round(statistics.median(joint) * 1000, 2)
    out["ppr_ms_max"] = round(max(joint) * 1000, 2)
    # CPU time of the same calls: what wall time would be on an otherwise idle machine.
    out["ppr_cpu_ms_median"] = round(statistics.median(joint_cpu) * 1000, 2)
    out["ppr_le_ms_median"] = round(statistics.median(joint_le) * 1000, 2)
    out["cg_iterations"] = sorted(set(iters))

    # A mission's first request with no seed solved yet (cache cleared before each): both
    # variants, so four single-seed solves.
    cold, cold_cpu = [], []
    for area, need in pairs:
        graph.clear_cache()
        w, c = timed(lambda a=area, n=need: (proximity(graph, a, n), proximity_le(graph, a, n)))
        cold.append(w)
        cold_cpu.append(c)
    out["first_request_cold_seeds_ms_median"] = round(statistics.median(cold) * 1000, 2)
    out["first_request_cold_seeds_cpu_ms_median"] = round(statistics.median(cold_cpu) * 1000, 2)

    # Warm-up: every area and need type, both variants (what MatchingEngine.warm_up does).
    graph.clear_cache()
    seeds = ([("need", n) for n in graph.nodes.ids("need")]
             + [("area", a) for a in graph.nodes.ids("area")])
    solved = []
    w, c = timed(lambda: solved.extend(graph.warm(seeds, lived_experience=le)
                                       for le in (False, True)))
    info = graph.cache_info()
    out["warm_up_seeds"] = len(seeds)
    out["warm_up_solves"] = sum(solved)
    out["warm_up_s"] = round(w, 2)
    out["warm_up_cpu_s"] = round(c, 2)
    out["warm_up_cpu_ms_per_solve"] = round(c / max(sum(solved), 1) * 1000, 2)
    out["seed_vector_mb"] = round(4 * len(graph.nodes) / 2**20, 3)
    out["seed_cache_mb"] = info["seed_mb"]
    out["seed_cache_max_vectors"] = info["seed_max_size"]

    # A mission's first request once its seeds are warm, then a repeated one (result cache).
    first, first_cpu, cached = [], [], []
    for area, need in pairs:
        w, c = timed(lambda a=area, n=need: (proximity(graph, a, n), proximity_le(graph, a, n)))
        first.append(w)
        first_cpu.append(c)
        w, _ = timed(lambda a=area, n=need: proximity(graph, a, n))
        cached.append(w)
    assert graph.cache_info()["seed_misses"] == info["seed_misses"]  # no solve
    out["first_request_warm_seeds_ms_median"] = round(statistics.median(first) * 1000, 3)
    out["first_request_warm_seeds_cpu_ms_median"] = round(statistics.median(first_cpu) * 1000,
                                                          3)
    out["ppr_cached_ms_median"] = round(statistics.median(cached) * 1000, 4)

    # Accuracy: the composed vector against the joint solve (both at the default tolerance)
    # over the missions, and against a float64 power iteration (300 steps).
    persons = graph.nodes.slice("person")
    err, overlap = 0.0, 1.0
    for area, need in pairs:
        for le in (False, True):
            s = mission_seeds(area, need)
            composed = personalized_pagerank(graph, s, lived_experience=le)
            alone = personalized_pagerank(graph, s, lived_experience=le, use_cache=False)
            err = max(err, float(np.abs(composed - alone).max() / alone.max()))
            top = set(np.argsort(-alone[persons])[:100])
            overlap = min(overlap, len(top & set(np.argsort(-composed[persons])[:100])) / 100)
    out["composed_vs_joint_max_err_rel_to_max"] = err
    out["composed_vs_joint_top100_overlap_min"] = overlap
    area, need = pairs[0]
    seeds = mission_seeds(area, need)
    fast = personalized_pagerank(graph, seeds).astype(np.float64)
    ref = _reference_ppr(graph, seeds)
    top = set(np.argsort(-ref[persons])[:100])
    out["ppr_max_err_rel_to_max"] = float(np.abs(fast - ref)[persons].max()
                                          / ref[persons].max())
    out["ppr_top100_overlap"] = len(top & set(np.argsort(-fast[persons])[:100])) / 100

    ids = graph.persons["person_id"].to_numpy()
    cands = list(rng.choice(ids, 500, replace=False))
    t = time.perf_counter()
    graph.tie_table()
    out["tie_table_build_ms"] = round((time.perf_counter() - t) * 1000, 1)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        ties_succeeded(graph, cands, need)
        times.append(time.perf_counter() - t)
    out["ties_succeeded_500_ms_median"] = round(statistics.median(times) * 1000, 2)
    t = time.perf_counter()
    group_signals(graph)
    out["group_signals_all_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["groups"] = graph.nodes.size("group")
    store.dispose()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ties-per-person", type=int, default=10)
    parser.add_argument("--missions", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write the SQLite stores (default: a temporary folder)")
    parser.add_argument("--store-dir", type=Path, default=None,
                        help="keep the stores in this folder and reuse those found there")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.missions)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_graph_", dir=args.dir) as tmp:
        for n in args.persons:
            folder = args.store_dir or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            db = folder / f"store_{n}_t{args.ties_per_person}.db"
            t = time.perf_counter()
            reused = args.store_dir is not None and db.exists()
            if not reused:  # written aside, then renamed: never a half-written store
                part = db.with_suffix(".part")
                generate_store(part, n, args.ties_per_person).dispose()
                part.replace(db)
            gen = time.perf_counter() - t
            res = subprocess.run(
                [sys.executable, __file__, "--measure", str(db), "--missions",
                 str(args.missions)], check=True, capture_output=True, text=True,
                env={**os.environ})
            out = json.loads(res.stdout.strip().splitlines()[-1])
            made = f"reused {db}" if reused else f"generated in {gen:.1f} s"
            print(f"# {n} persons (store {made}; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
            for k, v in out.items():
                print(f"{k:40s} {v}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
