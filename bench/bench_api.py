"""Benchmark of ``POST /v1/match`` over HTTP: latency and throughput with 1 and 2 workers.

A simulated community (100,000 persons by default, seed 0; built once and cached by
``bench/_community.py``) is copied to a scratch SQLite file (the decision log grows with
every request; the cached store stays as it was). For each number of workers, this starts
``crunch serve --workers N`` on a free port of 127.0.0.1 with ``CRUNCH_DATABASE_URL`` on that
copy, ``CRUNCH_API_KEYS`` set to one platform key and a ``CRUNCH_HOME`` without an MLflow
registry (the day-one policy serves), waits until every worker has finished its start-up
(model loaded, engine built), warms up, then sends ``/v1/match`` requests (``k=10``, a
stored mission each time, taken in turn from ``--missions`` open or recent missions of
distinct area and need) from a time-bounded httpx loop with a fixed number of concurrent
connections, and reports the median (p50) and 99th percentile (p99) of the client-side
latency and the requests per second. The servers are stopped at the end (their own
process group, started here).

The client runs on the same machine as the servers: on a small machine it takes CPU from
them, and every figure includes its own overhead (about a millisecond per request).

Usage::

    python bench/bench_api.py                               # 100k persons, 1 and 2 workers
    python bench/bench_api.py --persons 10000 --duration 10 --concurrency 1 4

The data are synthetic, not real people: nothing printed here is personal data.
"""

from __future__ import annotations

import argparse
import asyncio
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


class Server:
    """``crunch serve`` in its own process group, with its output collected."""

    def __init__(self, db: Path, workers: int, key: str, home: Path) -> None:
        self.port = free_port()
        self.workers = workers
        env = {**os.environ,
               "CRUNCH_DATABASE_URL": f"sqlite:///{db}",
               "CRUNCH_HOME": str(home),
               "CRUNCH_API_KEYS": json.dumps([{"key": key, "holder": "bench",
                                               "scope": "platform"}]),
               "CRUNCH_MODEL_POLL_SECONDS": "0",
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

    def wait_ready(self, timeout: float) -> float:
        """Seconds until every worker has completed its start-up (model and engine)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit("the server stopped:\n" + "\n".join(self.lines[-30:]))
            started = sum("Application startup complete" in x for x in self.lines)
            if started >= self.workers:
                r = httpx.get(f"{self.url}/readyz", timeout=10)
                if r.status_code == 200:
                    return time.perf_counter() - t0
            time.sleep(0.5)
        raise SystemExit(f"not ready after {timeout} s:\n" + "\n".join(self.lines[-30:]))

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4],
                    help="concurrent connections of the client (one pass each)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per pass")
    ap.add_argument("--missions", type=int, default=50, help="distinct missions asked about")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3,
                    help="requests per mission and worker before measuring")
    ap.add_argument("--start-timeout", type=float, default=1200.0)
    args = ap.parse_args()

    info = machine()
    print(f"# {info['date']}, {info['cpus']} CPUs, load {info['load_avg_1_5_15']}, "
          f"code {info['code']}", flush=True)
    db, built = community_store(args.persons)
    missions = missions_of(db, args.missions)
    key = f"bench-{secrets.token_urlsafe(12)}"
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        for workers in args.workers:
            scratch = Path(tmp) / f"store_{workers}.db"
            shutil.copyfile(db, scratch)
            server = Server(scratch, workers, key, Path(tmp) / f"home_{workers}")
            try:
                start_s = server.wait_ready(args.start_timeout)
                print(f"{workers} worker(s) ready in {start_s:.1f} s on {server.url}",
                      flush=True)
                warm = asyncio.run(load(server.url, key, missions, args.k,
                                        concurrency=max(args.concurrency),
                                        requests=args.warmup * len(missions) * workers))
                print(f"  warm-up: {warm['requests']} requests, failures {warm['failures']}",
                      flush=True)
                for concurrency in args.concurrency:
                    res = asyncio.run(load(server.url, key, missions, args.k, concurrency,
                                           duration=args.duration))
                    res.update(workers=workers, concurrency=concurrency, start_s=start_s)
                    results.append(res)
                    print(f"  {concurrency} connection(s): p50 {res.get('p50_ms', 0):.1f} ms, "
                          f"p99 {res.get('p99_ms', 0):.1f} ms, "
                          f"{res['requests_per_s']:.1f} requests/s "
                          f"({res['requests']} in {res['seconds']:.0f} s, failures "
                          f"{res['failures']})", flush=True)
            finally:
                server.stop()
    print()
    print("| workers | connections | p50 (ms) | p99 (ms) | requests/s | requests | failures |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['concurrency']} | {r.get('p50_ms', float('nan')):.1f} | "
              f"{r.get('p99_ms', float('nan')):.1f} | {r['requests_per_s']:.1f} | "
              f"{r['requests']} | {sum(r['failures'].values())} |")
    print(json.dumps({"machine": info, "persons": args.persons, "k": args.k,
                      "missions": len(missions), "store": built, "results": results}))


if __name__ == "__main__":
    main()
