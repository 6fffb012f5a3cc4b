"""Benchmark of ``POST /v1/match`` over HTTP: latency and throughput with 1 and 2 workers.

A simulated community (100,000 persons by default, seed 0; built once and cached by
``bench/_community.py``) is copied to a scratch SQLite file (the decision log grows with
every request; the cached store stays as it was). For each number of workers, this starts
``crunch serve --workers N`` on a free port of 127.0.0.1 with ``CRUNCH_DATABASE_URL`` on that
copy, ``CRUNCH_API_KEYS`` set to one platform key and a ``CRUNCH_HOME`` without an MLflow
registry (the day-one policy serves), waits until every worker has finished its start-up
(model loaded, engine built), then measures, all with ``k=10``:

1. **first requests, warm-up under way**: one request for each of ``--first`` missions never
   asked about, one at a time, as soon as the workers are ready (each worker warms its
   engine up in a background thread meanwhile);
2. **first requests, after the warm-up**: the same for ``--first`` other missions, once every
   worker has logged the end of its warm-up;
3. **steady state**: after ``--warmup`` requests per mission, ``/v1/match`` requests about
   ``--missions`` missions taken in turn, from a time-bounded httpx loop with a fixed number of
   concurrent connections (one pass per ``--concurrency``).

Before the servers, ``--in-process`` requests per part show where one request's time goes:
the app served in this process through ``httpx.ASGITransport`` (no socket, no uvicorn), the
engine's ``shortlist`` alone, the service alone (the engine's answers stubbed out), the store
version read and the decision-log write, CPU and wall per call.

Missions are stored ones a platform would ask about (open or recent, distinct area and need
type; the three sets are disjoint). Reported: the median (p50) and 99th percentile (p99) of
the client-side latency, requests per second, the CPU time the server's processes spent per
request (read from ``/proc``, less noisy than the latency on a loaded machine) and the load
average around each pass. The servers are stopped at the end (their own process group,
started here).

The client runs on the same machine as the servers: on a small machine it takes CPU from
them, and every latency includes its own overhead (about a millisecond per request).

Usage::

    python bench/bench_api.py                               # 100k persons, 1 and 2 workers
    python bench/bench_api.py --persons 10000 --duration 10 --concurrency 1 4

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import polars as pl
from _community import community_store, machine, recent_missions

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missions_of(db: Path, n: int) -> list[str]:
    """``n`` stored missions a platform would ask about (see ``recent_missions``)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT mission_id, area_id, need_type, status, created_at "
                            "FROM missions").fetchall()
    frame = pl.DataFrame(rows, schema=["mission_id", "area_id", "need_type", "status",
                                       "created_at"], orient="row")
    return recent_missions(frame, n)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0 < q < 100), linear interpolation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Server:
    """``crunch serve`` in its own process group, with its output collected."""

    def __init__(self, db: Path, workers: int, key: str, home: Path,
                 warm_up: bool = True) -> None:
        self.port = free_port()
        self.workers = workers
        env = {**os.environ,
               "CRUNCH_DATABASE_URL": f"sqlite:///{db}",
               "CRUNCH_HOME": str(home),
               "CRUNCH_API_KEYS": json.dumps([{"key": key, "holder": "bench",
                                               "scope": "platform"}]),
               "CRUNCH_MODEL_POLL_SECONDS": "0",
               "CRUNCH_WARM_UP": "true" if warm_up else "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "info",
             "--no-access-log"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, text: str) -> int:
        return sum(text in x for x in self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until every worker has logged ``text``."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit("the server stopped:\n" + "\n".join(self.lines[-30:]))
            if self.count(text) >= self.workers:
                return time.perf_counter() - t0
            time.sleep(0.2)
        raise SystemExit(f"no {text!r} from every worker after {timeout} s:\n"
                         + "\n".join(self.lines[-30:]))

    def wait_ready(self, timeout: float) -> float:
        """Seconds until every worker has completed its start-up (model and engine)."""
        t0 = time.perf_counter()
        self.wait_for("Application startup complete", timeout)
        while httpx.get(f"{self.url}/readyz", timeout=10).status_code != 200:
            time.sleep(0.2)
        return time.perf_counter() - t0

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process of the server's process group."""
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == self.proc.pid:  # field 5, the process group
                total += int(fields[11]) + int(fields[12])  # fields 14 and 15
        return total / CLOCK_TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this script started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def load(url: str, key: str, missions: list[str], k: int, concurrency: int,
               duration: float | None = None, requests: int | None = None) -> dict:
    """Send ``/v1/match`` requests on ``concurrency`` connections for ``duration`` seconds
    (or until ``requests`` were sent); latencies in ms of the 200s, and the failures."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + duration if duration else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, limits=limits,
                                 timeout=120) as client:

        async def worker() -> None:
            nonlocal sent
            while True:
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                if requests is not None and sent >= requests:
                    return
                mission = missions[sent % len(missions)]
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/match", json={"mission_id": mission, "k": k})
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                ms = 1e3 * (time.perf_counter() - t)
                if status == "200":
                    latencies.append(ms)
                else:
                    failures[status] = failures.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    out = {"requests": len(latencies), "failures": failures, "seconds": elapsed,
           "requests_per_s": len(latencies) / elapsed if elapsed else 0.0}
    if latencies:
        out.update(p50_ms=statistics.median(latencies), p99_ms=percentile(latencies, 99),
                   mean_ms=statistics.fmean(latencies), max_ms=max(latencies))
    return out


def measured(server: Server, **kw) -> dict:
    """:func:`load`, with the server's CPU time per request and the load average."""
    before, cpu0 = load_avg(), server.cpu_seconds()
    res = asyncio.run(load(**kw))
    cpu = server.cpu_seconds() - cpu0
    res.update(server_cpu_ms_per_request=1e3 * cpu / max(1, res["requests"]),
               load_avg_before=before, load_avg_after=load_avg())
    return res


def show(label: str, res: dict) -> None:
    print(f"  {label}: p50 {res.get('p50_ms', 0):.1f} ms, p99 {res.get('p99_ms', 0):.1f} ms, "
          f"max {res.get('max_ms', 0):.1f} ms, {res['requests_per_s']:.1f} requests/s "
          f"({res['requests']} in {res['seconds']:.0f} s, failures {res['failures']}), server "
          f"CPU {res['server_cpu_ms_per_request']:.1f} ms/request, load "
          f"{res['load_avg_before'][0]} -> {res['load_avg_after'][0]}", flush=True)


def service_path(db: Path, missions: list[str], k: int, requests: int, tmp: Path) -> list[dict]:
    """Where one request's time goes, in-process: the app served through
    ``httpx.ASGITransport`` in this thread (no socket, no uvicorn), over a scratch copy of
    the store, after the engine's warm-up; each part timed alone, CPU and wall per call."""
    from matching import record_shortlist
    from service._sqlite import relaxed_commit
    from service.app import create_app
    from service.settings import ApiKey, Settings

    scratch = tmp / "store_in_process.db"
    shutil.copyfile(db, scratch)
    settings = Settings(home=tmp / "home_in_process", database_url=f"sqlite:///{scratch}",
                        api_keys=[ApiKey(key="k", holder="bench", scope="platform")],
                        model_poll_seconds=0)
    app = create_app(settings, model_loader=lambda: None, poll=False)
    rows: list[dict] = []

    def timed(part: str, call) -> None:  # noqa: ANN001
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(requests):
            call(i)
        rows.append({"part": part, "wall_ms": 1e3 * (time.perf_counter() - w0) / requests,
                     "cpu_ms": 1e3 * (time.process_time() - c0) / requests})

    async def run() -> None:
        async with app.router.lifespan_context(app):
            provider, store = app.state.provider, app.state.store
            while provider._warming:
                await asyncio.sleep(0.2)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://in-process",
                                         headers={"X-API-Key": "k"}) as client:

                async def post(i: int) -> None:
                    r = await client.post("/v1/match",
                                          json={"mission_id": missions[i % len(missions)],
                                                "k": k})
                    assert r.status_code == 200, r.text

                async def each(part: str) -> None:
                    w0, c0 = time.perf_counter(), time.process_time()
                    for i in range(requests):
                        await post(i)
                    rows.append({"part": part,
                                 "wall_ms": 1e3 * (time.perf_counter() - w0) / requests,
                                 "cpu_ms": 1e3 * (time.process_time() - c0) / requests})

                for i in range(len(missions)):
                    await post(i)
                await each("POST /v1/match, whole (ASGI, no socket)")
                engine, loaded = provider.engine()
                answers = {m: engine.shortlist(m, k=k, explain=False) for m in missions}
                timed("  engine.shortlist(explain=False)",
                      lambda i: engine.shortlist(missions[i % len(missions)], k=k,
                                                 explain=False))
                real = type(engine).shortlist
                type(engine).shortlist = lambda self, mission_id=None, **kw: answers[mission_id]
                try:
                    await each("  the service alone (engine answer stubbed)")
                finally:
                    type(engine).shortlist = real
                timed("    store.version()", lambda i: store.version())
                result = dataclasses.replace(answers[missions[0]], model_version=loaded.version)

                def log(i: int) -> None:
                    with relaxed_commit():
                        record_shortlist(store, result, requested_by="bench")

                timed("    decision-log write (as served)", log)

    asyncio.run(run())
    app.state.store.dispose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4],
                    help="concurrent connections of the client (one pass each)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per pass")
    ap.add_argument("--missions", type=int, default=50,
                    help="distinct missions asked about in the steady state")
    ap.add_argument("--first", type=int, default=30,
                    help="missions asked about once, before and after the warm-up")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3,
                    help="requests per mission and worker before the steady state")
    ap.add_argument("--start-timeout", type=float, default=1200.0)
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                    help="CRUNCH_WARM_UP=false: first requests solve their PageRank")
    ap.add_argument("--in-process", type=int, default=300, metavar="N",
                    help="requests per part of the in-process breakdown (0: skip it)")
    args = ap.parse_args()

    info = machine()
    print(f"# {info['date']}, {info['cpus']} CPUs, load {info['load_avg_1_5_15']}, "
          f"code {info['code']}", flush=True)
    db, built = community_store(args.persons)
    chosen = missions_of(db, args.missions + 2 * args.first)
    if len(chosen) < args.missions + 2 * args.first:
        raise SystemExit(f"only {len(chosen)} missions of distinct area and need type")
    steady = chosen[:args.missions]
    first_cold = chosen[args.missions:args.missions + args.first]
    first_warm = chosen[args.missions + args.first:]
    key = f"bench-{secrets.token_urlsafe(12)}"
    common = {"key": key, "k": args.k}
    results, firsts, parts = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        if args.in_process:
            parts = service_path(db, steady, args.k, args.in_process, Path(tmp))
            print(f"in-process, {args.in_process} requests per part (load {load_avg()}):")
            for row in parts:
                print(f"  {row['part']:45s} CPU {row['cpu_ms']:6.2f} ms, wall "
                      f"{row['wall_ms']:6.2f} ms", flush=True)
        for workers in args.workers:
            scratch = Path(tmp) / f"store_{workers}.db"
            shutil.copyfile(db, scratch)
            server = Server(scratch, workers, key, Path(tmp) / f"home_{workers}",
                            warm_up=args.warm_up)
            try:
                start_s = server.wait_ready(args.start_timeout)
                print(f"{workers} worker(s) ready in {start_s:.1f} s on {server.url}",
                      flush=True)
                warming = server.count("engine warm") < workers
                res = measured(server, url=server.url, missions=first_cold, concurrency=1,
                               requests=len(first_cold), **common)
                phase = ("first request, no warm-up" if not args.warm_up
                         else "first request, warm-up under way" if warming
                         else "first request (warm-up already done)")
                res.update(workers=workers, phase=phase)
                firsts.append(res)
                show(phase, res)
                if args.warm_up:
                    warm_s = server.wait_for("engine warm", args.start_timeout)
                    done = [x for x in server.lines if "engine warm" in x]
                    print(f"  warm-up done {warm_s:.1f} s later: "
                          f"{done[-1].split(': ', 1)[-1]}", flush=True)
                    res = measured(server, url=server.url, missions=first_warm,
                                   concurrency=1, requests=len(first_warm), **common)
                    res.update(workers=workers, phase="first request, after the warm-up")
                    firsts.append(res)
                    show(res["phase"], res)
                warm = asyncio.run(load(server.url, missions=steady,
                                        concurrency=max(args.concurrency),
                                        requests=args.warmup * len(steady) * workers,
                                        **common))
                print(f"  warm-up: {warm['requests']} requests, failures {warm['failures']}",
                      flush=True)
                for concurrency in args.concurrency:
                    res = measured(server, url=server.url, missions=steady,
                                   concurrency=concurrency, duration=args.duration, **common)
                    res.update(workers=workers, concurrency=concurrency, start_s=start_s)
                    results.append(res)
                    show(f"steady, {concurrency} connection(s)", res)
            finally:
                server.stop()
    nan = float("nan")
    print()
    print("| workers | requests | n | p50 (ms) | max (ms) | server CPU (ms/request) | load |")
    print("|---|---|---|---|---|---|---|")
    for r in firsts:
        print(f"| {r['workers']} | {r['phase']} | {r['requests']} | {r.get('p50_ms', nan):.1f} "
              f"| {r.get('max_ms', nan):.1f} | {r['server_cpu_ms_per_request']:.1f} | "
              f"{r['load_avg_before'][0]} |")
    print()
    print("| workers | connections | p50 (ms) | p99 (ms) | requests/s | requests | failures "
          "| server CPU (ms/request) | load (1 min, before -> after) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['concurrency']} | {r.get('p50_ms', nan):.1f} | "
              f"{r.get('p99_ms', nan):.1f} | {r['requests_per_s']:.1f} | {r['requests']} | "
              f"{sum(r['failures'].values())} | {r['server_cpu_ms_per_request']:.1f} | "
              f"{r['load_avg_before'][0]} -> {r['load_avg_after'][0]} |")
    print(json.dumps({"machine": info, "persons": args.persons, "k": args.k,
                      "missions": len(steady), "first": args.first, "store": built,
                      "in_process": parts, "first_requests": firsts, "results": results}))


if __name__ == "__main__":
    main()
