"""Benchmark of the community graph and the features for one mission, at 10k and 100k persons.

For each size, a simulated community (``graph.simulate_bundle``, 1,000 missions at 10k
persons, 5,000 at 100k, seed 0) is imported once into a SQLite store cached under
``/tmp/bigcrunch-bench/``; then, in a fresh process per size, this measures the wall time,
CPU time and peak resident memory (RSS, ``VmHWM`` reset before each stage) of:

- ``graph.load_frames(store)``: the whole store as polars frames;
- ``graph.community_graph_from_frames(frames)``;
- ``features.FeatureModel().fit(frames, now)``;
- ``features.CommunitySnapshot.build(frames, model, now)``;
- ``features.attach_graph(snapshot, graph)``;
- ``features.build_features(...)`` for one mission and ~300 candidates (300 persons nearest
  to the mission's area with time to give, plus up to 30 peer groups with a member among
  them), as a request would: *first request* (the snapshot's graph operators are built and
  two PPR solves run), *uncached* (a mission seen for the first time: two PPR solves, median
  over ``--requests`` missions with distinct area and need) and *cached* (the same missions
  again: the PPR comes from the graph's cache).

"now" is the simulator's snapshot time, so that open and staffed missions are current.

Usage::

    python bench/bench_features.py                      # 10k and 100k persons
    python bench/bench_features.py --persons 10000 --profile
    python bench/bench_features.py --persons 100000 --profile CommunitySnapshot.build

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _community import (
    community_store,
    default_missions,
    machine,
    measure,
    profile,
    recent_missions,
    run_measure,
    simulated_now,
    summary,
)


def candidates_for(snap, mission: dict, n_persons: int, n_groups: int  # noqa: ANN001
                   ) -> tuple[list[str], list[str]]:
    """The ``n_persons`` persons nearest to the mission's area who give time and consent
    to matching, and up to ``n_groups`` peer groups with a member among them."""
    a = snap.area_index[mission["area_id"]]
    dist = snap.area_distance_km[snap.person_area, a]
    ok = (snap.availability > 0) & snap.consent_matching.astype(bool)
    pool = np.flatnonzero(ok)
    pool = pool[np.lexsort((pool, dist[pool]))][:n_persons]
    persons = snap.person_ids[np.sort(pool)].tolist()
    chosen = set(pool.tolist())
    groups = [g for g in sorted(snap.group_members)
              if chosen.intersection(snap.group_members[g].tolist())][:n_groups]
    return persons, groups


def run(db: Path, n_requests: int, n_persons: int, n_groups: int,
        to_profile: list[str] | None) -> dict:
    """Measure on an existing store; run in a fresh process per size."""
    import features
    import graph

    stages = []
    now = simulated_now()
    store = graph.open_store(graph.sqlite_url(db))
    with measure("load_frames", stages):
        frames = graph.load_frames(store)
    with measure("community_graph_from_frames", stages):
        g = graph.community_graph_from_frames(frames)
    with measure("FeatureModel.fit", stages):
        fm = features.FeatureModel().fit(frames, now)
    with measure("CommunitySnapshot.build", stages):
        snap = features.CommunitySnapshot.build(frames, fm, now)
    with measure("attach_graph", stages):
        features.attach_graph(snap, g)

    missions = {r["mission_id"]: r for r in frames.missions.iter_rows(named=True)}
    ids = recent_missions(frames.missions, n_requests + 2)
    cands = {m: candidates_for(snap, missions[m], n_persons, n_groups) for m in ids}

    def request(mid: str):  # noqa: ANN202
        persons, groups = cands[mid]
        return features.build_features(fm, snap, missions[mid], persons, groups)

    first_id, rest = ids[0], ids[1:n_requests + 1]
    with measure("features: first request", stages) as st:
        out = request(first_id)
        st.extra["rows"] = out.height
    timed: dict[str, list] = {"uncached": [], "cached": []}
    rows = []
    for kind in ("uncached", "cached"):  # each mission once without, then with its PPR cached
        for mid in rest:
            with measure(f"features: {kind}", timed[kind]):
                out = request(mid)
            rows.append(out.height)
    requests = {
        kind: {**summary([s.seconds for s in st]),
               "cpu_median": statistics.median(s.cpu_seconds for s in st),
               "peak_growth_mb_max": max(s.peak_growth_mb for s in st)}
        for kind, st in timed.items()
    }
    requests["candidates_median"] = statistics.median(rows)

    out = {
        "persons": frames.persons.height, "ties": frames.ties.height,
        "groups": frames.groups.height, "missions": frames.missions.height,
        "outcomes": frames.outcomes.height, "snapshot_persons": len(snap.person_ids),
        "stages": [s.as_dict() for s in stages], "requests": requests,
        "peak_rss_mb": max(s.peak_mb for s in stages),
    }
    if to_profile is not None:
        build = [s for s in stages if not s.name.startswith("features")]
        names = to_profile or [max(build, key=lambda s: s.cpu_seconds).name]
        targets = {
            "load_frames": lambda: graph.load_frames(store),
            "community_graph_from_frames": lambda: graph.community_graph_from_frames(frames),
            "FeatureModel.fit": lambda: features.FeatureModel().fit(frames, now),
            "CommunitySnapshot.build": lambda: features.CommunitySnapshot.build(frames, fm, now),
            "attach_graph": lambda: features.attach_graph(snap, g),
        }
        spare = ids[n_requests + 1]
        out["profiles"] = {name: profile(targets[name]) for name in names}
        out["profiles"]["features: uncached"] = profile(lambda: request(spare))
    store.dispose()
    return out


# --------------------------------------------------------------------------- printing


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def print_report(results: dict[int, dict], info: dict) -> None:
    sizes = sorted(results)
    print(f"# bench_features  {info['date']}  {info['cpus']} CPUs  load average at start "
          f"{info['load_avg_1_5_15']} (other jobs may be running)  python {info['python']}  "
          f"polars {info['polars']}")
    print(f"# code: {info['code']}")
    for n in sizes:
        r = results[n]
        print(f"# {n:,} persons: {r['snapshot_persons']:,} in the snapshot, {r['ties']:,} ties, "
              f"{r['groups']:,} groups, {r['missions']:,} missions, {r['outcomes']:,} outcomes; "
              f"store {r['store']}")
    head = f"{'stage':34s}" + "".join(f"{f'{n:,} persons':>34s}" for n in sizes)
    print()
    print(head)
    print(f"{'':34s}" + "".join(f"{'wall':>10s} {'cpu':>10s} {'peak+MB':>8s}   " for _ in sizes))
    names = [s["name"] for s in results[sizes[0]]["stages"]]
    for name in names:
        line = f"{name:34s}"
        for n in sizes:
            s = next(x for x in results[n]["stages"] if x["name"] == name)
            line += (f"{_fmt_s(s['seconds']):>10s} {_fmt_s(s['cpu_seconds']):>10s} "
                     f"{max(0.0, s['peak_growth_mb']):>8.0f}   ")
        print(line)
    for kind in ("uncached", "cached"):
        line = f"{'features: ' + kind + ', median':34s}"
        for n in sizes:
            q = results[n]["requests"][kind]
            line += (f"{_fmt_s(q['median']):>10s} {_fmt_s(q['cpu_median']):>10s} "
                     f"{max(0.0, q['peak_growth_mb_max']):>8.0f}   ")
        print(line)
        line = f"{'features: ' + kind + ', p90 (wall)':34s}"
        for n in sizes:
            line += f"{_fmt_s(results[n]['requests'][kind]['p90']):>10s} {'':>10s} {'':>8s}   "
        print(line)
    line = f"{'peak RSS of the process':34s}"
    for n in sizes:
        line += f"{results[n]['peak_rss_mb']:>28.0f} MB    "
    print(line)
    print("peak+MB: how far RSS rose above its level at the start of the stage (VmHWM reset "
          "per stage; for requests, the largest over the requests).")
    n_req = results[sizes[0]]["requests"]["uncached"]["n"]
    print(f"requests: {n_req} missions (distinct area and need), "
          f"{results[sizes[0]]['requests']['candidates_median']:.0f} candidates each "
          "(persons + groups); uncached = first request for the mission (2 PPR solves), "
          "cached = the same request again.")
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        print(f"\n# growth from {a:,} to {b:,} persons (x{b / a:g}): ratio of wall times "
              "and of CPU times (CPU is steadier when other jobs share the machine)")
        for kind in ("uncached", "cached"):
            qa, qb = results[a]["requests"][kind], results[b]["requests"][kind]
            print(f"{'features: ' + kind + ', median':34s} wall x{qb['median'] / qa['median']:.2f}"
                  f"   cpu x{qb['cpu_median'] / qa['cpu_median']:.2f}")
        for name in names:
            sa = next(x for x in results[a]["stages"] if x["name"] == name)
            sb = next(x for x in results[b]["stages"] if x["name"] == name)
            print(f"{name:34s} wall x{sb['seconds'] / sa['seconds']:.2f}"
                  f"   cpu x{sb['cpu_seconds'] / sa['cpu_seconds']:.2f}")
    for n in sizes:
        for name, text in results[n].get("profiles", {}).items():
            print(f"\n# cProfile, {n:,} persons, {name} (top 20 by cumulative time)\n{text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--missions", type=int, default=None,
                        help="missions simulated (default: max(1000, persons / 20))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=10,
                        help="missions measured uncached then cached")
    parser.add_argument("--candidates", type=int, default=300, help="persons per request")
    parser.add_argument("--groups", type=int, default=30, help="peer groups per request")
    parser.add_argument("--profile", nargs="*", metavar="STAGE", default=None,
                        help="cProfile one uncached request and the build stages named "
                             "(default: the one with the most CPU time)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--report", type=Path,
                        help="print the report of results saved with --json, measure nothing")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print_report({int(n): r for n, r in saved["results"].items()}, saved["machine"])
        return
    if args.measure:
        res = run(args.measure, args.requests, args.candidates, args.groups,
                  None if args.profile is None else args.profile)
        print(json.dumps(res))
        return
    info = machine()
    results = {}
    for n in args.persons:
        db, built = community_store(n, args.missions, args.seed,
                                    log=lambda s: print(s, file=sys.stderr))
        t = time.perf_counter()
        res = run_measure(__file__, [
            "--measure", str(db), "--requests", str(args.requests),
            "--candidates", str(args.candidates), "--groups", str(args.groups),
            *([] if args.profile is None else ["--profile", *args.profile])])
        res["store"] = (f"{'reused' if built['reused'] else 'built'}: simulate "
                        f"{built['simulate_s']:.0f} s + import {built['import_s']:.0f} s, "
                        f"{args.missions or default_missions(n)} missions")
        res["wall_s"] = time.perf_counter() - t
        results[n] = res
    print_report(results, info)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
