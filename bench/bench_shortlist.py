"""Benchmark of the shortlist (``MatchingEngine.shortlist``) at 10k and 100k persons.

For each size, a simulated community (``graph.simulate_bundle``, 1,000 missions at 10k
persons, 5,000 at 100k, seed 0) is imported once into a SQLite store cached under
``/tmp/bigcrunch-bench/``; then, in a fresh process per size, this measures:

- the build of what requests read: ``graph.load_frames``, ``features.FeatureModel().fit``
  and ``matching.MatchingEngine(frames, model, PriorRanker(), now=now)`` (which builds the
  community snapshot, the community graph, the vetting and retrieval indexes), with wall
  time, CPU time and peak resident memory (RSS, ``VmHWM`` reset before each stage);
- ``engine.shortlist(mission_id, k=10, seed=i)`` over ``--missions-served`` open or recent
  missions (distinct area and need): the *very first* request of the engine (it also builds
  the graph operators of the snapshot), then for every other mission its *first* request
  (personalised PageRank not cached yet) and ``--repeats`` *repeated* requests (cached
  PageRank, other seeds). For each: median and p90 of the total wall time and of every
  stage of ``timings_ms`` (filters, retrieval, features, ranking, policy, reasons), and the
  same in CPU time (``timings_cpu_ms``, steadier on a loaded machine). ``--no-explain``
  serves as the platform does (``explain=False``: no reasons, no expected payout).

The last lines give how the cost of one ``/v1/match``-like request (a shortlist) grows from
the smallest to the largest community of the run (ratio of medians).

Usage::

    python bench/bench_shortlist.py                    # 10k and 100k persons
    python bench/bench_shortlist.py --persons 10000 --profile
    python bench/bench_shortlist.py --no-explain      # as /v1/match serves (explain=False)
    python bench/bench_shortlist.py --no-explain --warm-up   # ... after the service's warm-up

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _community import (
    community_store,
    default_missions,
    machine,
    measure,
    p90,
    profile,
    recent_missions,
    run_measure,
    simulated_now,
)

STAGES = ("filters", "retrieval", "features", "ranking", "policy", "reasons")


def _stats(calls: list[dict]) -> dict:
    out = {}
    for key in ("total", *STAGES):
        v = [c[key] for c in calls]
        out[key] = {"median": statistics.median(v), "p90": p90(v)}
        cpu = [c["cpu"][key] for c in calls if key in c.get("cpu", {})]
        if cpu:
            out[key]["cpu_median"], out[key]["cpu_p90"] = statistics.median(cpu), p90(cpu)
    out["n"] = len(calls)
    out["cpu_total_median"] = statistics.median(c["cpu_total"] for c in calls)
    # Peer groups cost features per group: split the features stage by whether any came.
    for name, part in (("with_groups", [c for c in calls if c["retrieved_groups"]]),
                       ("without_groups", [c for c in calls if not c["retrieved_groups"]])):
        out[f"features_{name}"] = {
            "n": len(part),
            "median": statistics.median(c["features"] for c in part) if part else None,
            "groups_median": statistics.median(c["retrieved_groups"] for c in part)
            if part else None}
    out["peak_growth_mb_max"] = max(c["peak_growth_mb"] for c in calls)
    return out


def run(db: Path, n_served: int, repeats: int, k: int, do_profile: bool,
        explain: bool = True, warm_up: bool = False) -> dict:
    """Measure on an existing store; run in a fresh process per size."""
    import features
    import graph
    import matching

    stages = []
    now = simulated_now()
    store = graph.open_store(graph.sqlite_url(db))
    with measure("load_frames", stages):
        frames = graph.load_frames(store)
    with measure("FeatureModel.fit", stages):
        fm = features.FeatureModel().fit(frames, now)
    with measure("MatchingEngine build", stages):
        engine = matching.MatchingEngine(frames, fm, matching.PriorRanker(), now=now)
    if warm_up:  # as the service does in the background after each build
        with measure("MatchingEngine.warm_up", stages):
            engine.warm_up()

    ids = recent_missions(frames.missions, n_served + 2)
    status = dict(frames.missions.select("mission_id", "status").iter_rows())
    seed = 0

    def call(mid: str) -> dict:
        nonlocal seed
        seed += 1
        kw = {} if explain else {"explain": False}
        with measure("shortlist", (tmp := [])):
            res = engine.shortlist(mid, k=k, seed=seed, **kw)
        s = tmp[0]
        cpu = dict(getattr(res, "timings_cpu_ms", None) or {})
        if cpu:
            cpu["total"] = s.cpu_seconds * 1e3
        return {"total": s.seconds * 1e3, "cpu_total": s.cpu_seconds * 1e3, "cpu": cpu,
                "peak_growth_mb": s.peak_growth_mb, **res.timings_ms,
                "eligible": res.filters["eligible_persons"],
                "eligible_groups": res.filters["eligible_groups"],
                "retrieved": res.filters["retrieved_persons"] + res.filters["retrieved_groups"],
                "retrieved_groups": res.filters["retrieved_groups"],
                "served": len(res.candidates)}

    very_first = call(ids[0])
    served = ids[1:n_served]
    first = [call(m) for m in served]
    repeated = [call(m) for _ in range(repeats) for m in served]
    out = {
        "persons": frames.persons.height, "ties": frames.ties.height,
        "groups": frames.groups.height, "missions": frames.missions.height,
        "snapshot_persons": len(engine.snapshot.person_ids),
        "served_missions": len(served) + 1,
        "open_or_staffed": sum(status[m] in ("open", "staffed") for m in ids[:n_served]),
        "eligible_median": statistics.median(c["eligible"] for c in first),
        "retrieved_median": statistics.median(c["retrieved"] for c in first),
        "eligible_groups_median": statistics.median(c["eligible_groups"] for c in first),
        "retrieved_groups_median": statistics.median(c["retrieved_groups"] for c in first),
        "served_min": min(c["served"] for c in first + repeated),
        "stages": [s.as_dict() for s in stages],
        "very_first": very_first,
        "first": _stats(first),
        "repeated": _stats(repeated),
        "peak_rss_mb": max(s.peak_mb for s in stages),
    }
    if do_profile:
        spare = ids[n_served + 1] if len(ids) > n_served + 1 else ids[-1]
        kw = {} if explain else {"explain": False}
        out["profiles"] = {
            "shortlist, first request of a mission":
                profile(lambda: engine.shortlist(spare, k=k, seed=10**6, **kw)),
            "shortlist, repeated request":
                profile(lambda: engine.shortlist(spare, k=k, seed=10**6 + 1, **kw)),
        }
    store.dispose()
    return out


# --------------------------------------------------------------------------- printing


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def print_report(results: dict[int, dict], info: dict, k: int) -> None:
    sizes = sorted(results)
    print(f"# bench_shortlist  {info['date']}  {info['cpus']} CPUs  load average at start "
          f"{info['load_avg_1_5_15']} (other jobs may be running)  python {info['python']}  "
          f"polars {info['polars']}")
    print(f"# code: {info['code']}")
    if info.get("explain") is False:
        print("# served with explain=False (no reasons, no expected payout), as /v1/match")
    for n in sizes:
        r = results[n]
        print(f"# {n:,} persons: {r['snapshot_persons']:,} in the snapshot, {r['ties']:,} ties, "
              f"{r['groups']:,} groups, {r['missions']:,} missions; store {r['store']}; "
              f"{r['served_missions']} missions served ({r['open_or_staffed']} open or "
              f"staffed), k={k}; medians: eligible persons {r['eligible_median']:,.0f}, "
              f"eligible groups {r['eligible_groups_median']:,.0f}, retrieved candidates "
              f"{r['retrieved_median']:,.0f} (of which groups "
              f"{r['retrieved_groups_median']:,.0f})")
    print()
    print(f"{'build':28s}" + "".join(f"{f'{n:,} persons':>32s}" for n in sizes))
    print(f"{'':28s}" + "".join(f"{'wall':>10s} {'cpu':>10s} {'peak+MB':>8s}   " for _ in sizes))
    for name in [s["name"] for s in results[sizes[0]]["stages"]]:
        line = f"{name:28s}"
        for n in sizes:
            s = next(x for x in results[n]["stages"] if x["name"] == name)
            line += (f"{_fmt_s(s['seconds']):>10s} {_fmt_s(s['cpu_seconds']):>10s} "
                     f"{max(0.0, s['peak_growth_mb']):>8.0f}   ")
        print(line)

    print("\nshortlist latency, ms (median / p90); 'first' = first request of each mission "
          "(PageRank not cached), 'repeated' = later requests")
    cols = [(n, kind) for n in sizes for kind in ("first", "repeated")]

    def stage_table(median: str, p90: str) -> None:
        print(f"{'stage':18s}" + "".join(f"{f'{n // 1000}k {kind}':>20s}" for n, kind in cols))
        for key in ("total", *STAGES):
            line = f"{key:18s}"
            for n, kind in cols:
                q = results[n][kind][key]
                line += f"{q[median]:>11.1f} / {q[p90]:>6.1f}"
            print(line)

    stage_table("median", "p90")
    line = f"{'total, cpu median':18s}"
    for n, kind in cols:
        line += f"{results[n][kind]['cpu_total_median']:>20.1f}"
    print(line)
    if all("cpu_median" in results[n][kind]["total"] for n, kind in cols):
        print("\nshortlist CPU time, ms (median / p90)")
        stage_table("cpu_median", "cpu_p90")
    line = f"{'calls':18s}"
    for n, kind in cols:
        line += f"{results[n][kind]['n']:>20d}"
    print(line)
    for n, kind in cols:
        w, wo = (results[n][kind][f"features_{x}"] for x in ("with_groups", "without_groups"))
        if w["n"] and wo["n"]:
            print(f"features stage, {n // 1000}k {kind}: median {wo['median']:.1f} ms over "
                  f"{wo['n']} requests without peer groups, {w['median']:.1f} ms over "
                  f"{w['n']} with (median {w['groups_median']:.0f} groups)")
    for n in sizes:
        v = results[n]["very_first"]
        print(f"very first request of the engine, {n:,} persons: {v['total']:.1f} ms "
              f"(features {v['features']:.1f} ms; graph operators not built by the engine's "
              "build are built here)")
    rise = {n: max(results[n][kind]["peak_growth_mb_max"] for kind in ("first", "repeated"))
            for n in sizes}
    print("peak RSS of the process: " + ", ".join(
        f"{n:,} persons {results[n]['peak_rss_mb']:.0f} MB" for n in sizes)
        + "; largest rise during one request: " + ", ".join(
        f"{rise[n]:.1f} MB" for n in sizes))
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        print(f"\n# one /v1/match-like request from {a:,} to {b:,} persons (x{b / a:g}), "
              "ratio of medians")
        for kind in ("first", "repeated"):
            ca, cb = results[a][kind]["cpu_total_median"], results[b][kind]["cpu_total_median"]
            parts = [f"total cpu x{cb / ca:.2f}"]
            for key in ("total", *STAGES):
                ma, mb = results[a][kind][key]["median"], results[b][kind][key]["median"]
                parts.append(f"{key} x{mb / ma:.2f}" if ma > 0 else f"{key} n/a")
            print(f"{kind:9s} " + ", ".join(parts))
        print("(stages are wall times; the CPU ratio is steadier when other jobs share the "
              "machine)")
    for n in sizes:
        for name, text in results[n].get("profiles", {}).items():
            print(f"\n# cProfile, {n:,} persons, {name} (top 20 by cumulative time)\n{text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--missions", type=int, default=None,
                        help="missions simulated (default: max(1000, persons / 20))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missions-served", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="repeated requests per mission")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one first and one repeated request")
    parser.add_argument("--no-explain", action="store_true",
                        help="serve as the platform does: shortlist(..., explain=False)")
    parser.add_argument("--warm-up", action="store_true",
                        help="run MatchingEngine.warm_up() (PageRank of every seed) before "
                             "serving, as the service does after each build")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--report", type=Path,
                        help="print the report of results saved with --json, measure nothing")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print_report({int(n): r for n, r in saved["results"].items()}, saved["machine"],
                     saved.get("k", args.k))
        return
    if args.measure:
        res = run(args.measure, args.missions_served, args.repeats, args.k, args.profile,
                  explain=not args.no_explain, warm_up=args.warm_up)
        print(json.dumps(res))
        return
    info = machine()
    info["explain"] = not args.no_explain
    info["warm_up"] = args.warm_up
    results = {}
    for n in args.persons:
        db, built = community_store(n, args.missions, args.seed,
                                    log=lambda s: print(s, file=sys.stderr))
        t = time.perf_counter()
        res = run_measure(__file__, [
            "--measure", str(db), "--missions-served", str(args.missions_served),
            "--repeats", str(args.repeats), "-k", str(args.k),
            *(["--profile"] if args.profile else []),
            *(["--no-explain"] if args.no_explain else []),
            *(["--warm-up"] if args.warm_up else [])])
        res["store"] = (f"{'reused' if built['reused'] else 'built'}: simulate "
                        f"{built['simulate_s']:.0f} s + import {built['import_s']:.0f} s, "
                        f"{args.missions or default_missions(n)} missions")
        res["wall_s"] = time.perf_counter() - t
        results[n] = res
    print_report(results, info, args.k)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "k": args.k, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
