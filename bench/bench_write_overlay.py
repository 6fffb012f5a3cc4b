"""What a community write costs the next list: the change overlay vs a synchronous rebuild.

Every write to the community (a consent withdrawn, a mission changed, an assignment) moves
the store's version. The service lays the journalled change over the engine that serves
(``service._provider.PendingView``: changed persons left out, changed missions re-read) and
rebuilds in the background; before issue 6 it rebuilt the whole engine before serving the
next list. This benchmark measures both on a copy of the cached simulated store:

- the first list after a consent withdrawal, and after a mission's vetting regime changed,
  served through the overlay (wall and CPU of the request thread);
- the median shortlist CPU of the base engine and of the overlay engine (warm);
- the synchronous rebuild a request used to wait for.

Usage::

    python bench/bench_write_overlay.py                  # 100k persons
    python bench/bench_write_overlay.py --persons 10000

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _community import community_store, machine

from graph import Mission, Store, open_store, sqlite_url
from graph._rights import change_consent
from service._provider import EngineProvider


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--missions-served", type=int, default=20)
    args = ap.parse_args(argv)
    print("machine:", machine())
    db, _ = community_store(args.persons)
    with tempfile.TemporaryDirectory(prefix="bench-overlay-") as tmp:
        copy = Path(tmp) / "store.db"
        shutil.copy(db, copy)  # the benchmark writes: never touch the shared cache
        store = open_store(sqlite_url(copy))
        # No background rebuild during the run: the overlay alone is measured.
        provider = EngineProvider(store, rebuild_delay_s=3600)
        t0, c0 = time.perf_counter(), time.process_time()
        provider.load()
        print(f"load (day-one fit + build + smoke check): {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time() - c0:.1f} s CPU")
        engine = provider.model.engine
        # The most recent missions that have someone to serve (the engine's clock is the
        # real one: missions whose window is over may have no eligible candidate).
        missions = []
        for m in engine.frames.missions.sort("created_at", descending=True)["mission_id"]:
            if any(c.kind == "person" for c in engine.shortlist(m, k=10, seed=0).candidates):
                missions.append(m)
            if len(missions) == args.missions_served:
                break
        if len(missions) < 2:
            raise SystemExit("fewer than two missions with a person to serve")

        def median_cpu_ms(eng) -> float:  # noqa: ANN001
            out = []
            for m in missions:
                t = time.thread_time()
                eng.shortlist(m, k=10, seed=0, explain=False)
                out.append(time.thread_time() - t)
            return 1e3 * statistics.median(out)

        median_cpu_ms(engine)  # warm the per-mission caches
        base_ms = median_cpu_ms(engine)

        top = engine.shortlist(missions[0], k=10, seed=0)
        withdrawn = next(c.candidate_id for c in top.candidates if c.kind == "person")
        change_consent(store, withdrawn, consent_matching=False)
        t0, c0 = time.perf_counter(), time.thread_time()
        view, _ = provider.engine()
        first = view.shortlist(missions[0], k=10, seed=0, explain=False)
        consent_wall, consent_cpu = time.perf_counter() - t0, time.thread_time() - c0
        if any(withdrawn in c.members for c in first.candidates):
            raise SystemExit("the withdrawn person was served: the overlay is broken")
        view_ms = median_cpu_ms(view)

        with store.session() as s:
            s.get(Mission, missions[1]).vetting_regime = "minors"
            s.flush()
            Store.bump_version(s, missions=[missions[1]])
        t0, c0 = time.perf_counter(), time.thread_time()
        view2, _ = provider.engine()
        view2.shortlist(missions[1], k=10, seed=0, explain=False)
        mission_wall, mission_cpu = time.perf_counter() - t0, time.thread_time() - c0

        current = provider.model
        t0, c0 = time.perf_counter(), time.process_time()
        provider._build(current.model, current)
        rebuild_wall, rebuild_cpu = time.perf_counter() - t0, time.process_time() - c0
        store.dispose()

    print(f"\n{args.persons:,} persons, {len(missions)} missions, k=10, explain=False")
    print(f"{'':52s}{'wall':>10s}{'CPU':>10s}")
    print(f"{'first list after a consent withdrawal (overlay)':52s}"
          f"{1e3 * consent_wall:8.0f}ms{1e3 * consent_cpu:8.0f}ms")
    print(f"{'first list after a mission change (overlay)':52s}"
          f"{1e3 * mission_wall:8.0f}ms{1e3 * mission_cpu:8.0f}ms")
    print(f"{'synchronous rebuild (what a request waited before)':52s}"
          f"{rebuild_wall:9.1f}s{rebuild_cpu:9.1f}s")
    print(f"median shortlist CPU, warm: base engine {base_ms:.1f} ms, overlay engine "
          f"{view_ms:.1f} ms")
    print(f"ratio rebuild / first list after a write: {rebuild_wall / consent_wall:.0f}x (wall)")


if __name__ == "__main__":
    main()
