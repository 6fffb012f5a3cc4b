"""Shared helpers of the benchmarks: a simulated community store, cached, and measurements.

:func:`community_store` simulates a community with :func:`graph.simulate_bundle`, imports it
into a SQLite store with :func:`graph.import_bundle` and keeps the file under
``/tmp/bigcrunch-bench/`` (keyed by persons, missions, seed and a fingerprint of the
simulator's source), so that reruns skip the ~1-2 minutes it takes at 100k persons.

Memory is measured as resident set size from ``/proc/self/status``: ``VmHWM`` (the peak) is
reset before each stage by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so each
stage reports its own peak, Rust (polars) and C (numpy, scipy) allocations included, which
``tracemalloc`` would miss.

The data are synthetic, not real people: nothing these benchmarks print is personal data.
"""

from __future__ import annotations

import cProfile
import fcntl
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import graph
from graph import _simulate

__all__ = [
    "CACHE_DIR",
    "Stage",
    "community_store",
    "default_missions",
    "machine",
    "measure",
    "p90",
    "profile",
    "recent_missions",
    "run_measure",
    "simulated_now",
    "summary",
]

CACHE_DIR = Path("/tmp/bigcrunch-bench")


def default_missions(n_persons: int) -> int:
    """Missions simulated for a community: 1,000 at 10k persons, 5,000 at 100k."""
    return max(1000, n_persons // 20)


def _fingerprint() -> str:
    """Short hash of the simulator's source: a changed simulator gives a new cache file."""
    src = Path(_simulate.__file__).read_bytes()
    return hashlib.sha256(src).hexdigest()[:10]


def community_store(n_persons: int, n_missions: int | None = None, seed: int = 0,
                    cache_dir: Path = CACHE_DIR, log: Callable[[str], None] = print,
                    with_truth: bool = False) -> tuple[Path, dict]:
    """The path of a SQLite store holding a simulated community, built once and cached.

    Returns the path and what it cost: ``{"reused": bool, "simulate_s", "import_s"}`` (the
    timings of the first build, read back from a side file when reused). The ``truth`` file
    (ground truth for evaluation, ~3M rows at 100k persons) is imported only with
    ``with_truth`` (a separate cache file, bundle written as Parquet): only the synthetic
    proof (``bench_synthetic.py``) reads it.
    """
    n_missions = n_missions or default_missions(n_persons)
    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = "truth" if with_truth else "community"
    stem = f"{kind}_p{n_persons}_m{n_missions}_s{seed}_{_fingerprint()}"
    db = cache_dir / f"{stem}.db"
    meta = cache_dir / f"{stem}.txt"
    # One builder at a time: two benchmarks started together share the build.
    with open(cache_dir / f"{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if db.exists() and meta.exists():
            info = dict(line.split("=", 1) for line in meta.read_text().split())
            return db, {"reused": True, **{k: float(v) for k, v in info.items()}}
        log(f"building the community store {db.name} (once; cached under {cache_dir})")
        with tempfile.TemporaryDirectory(prefix="bundle_", dir=cache_dir) as tmp:
            t = time.perf_counter()
            graph.simulate_bundle(tmp, n_persons=n_persons, n_missions=n_missions, seed=seed,
                                  **({"fmt": "parquet"} if with_truth else {}))
            simulate_s = time.perf_counter() - t
            if not with_truth:
                for truth in Path(tmp).glob("truth.*"):
                    truth.unlink()
            part = db.with_suffix(".part")
            part.unlink(missing_ok=True)
            store = graph.open_store(graph.sqlite_url(part))
            t = time.perf_counter()
            graph.import_bundle(store, tmp, show_progress=False)
            import_s = time.perf_counter() - t
            store.dispose()
            shutil.move(part, db)
        meta.write_text(f"simulate_s={simulate_s:.1f}\nimport_s={import_s:.1f}\n")
        log(f"built in {simulate_s:.1f} s (simulate) + {import_s:.1f} s (import)")
        return db, {"reused": False, "simulate_s": simulate_s, "import_s": import_s}


def simulated_now() -> datetime:
    """The simulator's "now": the time its bundle is a snapshot of."""
    return datetime.fromtimestamp(_simulate.SNAPSHOT, UTC)


def recent_missions(missions: pl.DataFrame, n: int) -> list[str]:
    """``n`` missions a request would be about: open or staffed first, then the most recent,
    with distinct (area, need type) so that no "first" request hits another's PPR cache."""
    ranked = (missions
              .with_columns(pl.col("status").is_in(["open", "staffed"]).alias("_open"))
              .sort(["_open", "created_at", "mission_id"], descending=[True, True, False])
              .unique(["area_id", "need_type"], keep="first", maintain_order=True))
    return ranked["mission_id"].head(n).to_list()


# --------------------------------------------------------------------------- memory


def _status(field_name: str) -> float:
    """A ``/proc/self/status`` field in MB (nan when not on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Stage:
    """Wall time and resident memory of one measured stage."""

    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    peak_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def peak_growth_mb(self) -> float:
        """How far above the memory held before the stage its peak went."""
        return self.peak_mb - self.rss_before_mb

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "rss_before_mb": self.rss_before_mb, "rss_after_mb": self.rss_after_mb,
                "peak_mb": self.peak_mb, "peak_growth_mb": self.peak_growth_mb, **self.extra}


@contextmanager
def measure(name: str, stages: list[Stage]) -> Iterator[Stage]:
    """Time a block and record its peak RSS (``VmHWM`` reset at its start)."""
    stage = Stage(name)
    reset = _reset_peak()
    stage.rss_before_mb = _status("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    yield stage
    stage.seconds = time.perf_counter() - t
    stage.cpu_seconds = time.process_time() - c
    stage.rss_after_mb = _status("VmRSS")
    # Without a reset the peak is the process's lifetime peak: say so with nan.
    stage.peak_mb = _status("VmHWM") if reset else float("nan")
    stages.append(stage)


# --------------------------------------------------------------------------- reporting


def p90(values: list[float]) -> float:
    """90th percentile (linear interpolation; the maximum for fewer than 10 values)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "p90": p90(values), "n": len(values)}


def machine() -> dict:
    """What the figures were measured on, with the load at the start (other jobs may run)."""
    load = os.getloadavg()
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in load],
            "python": platform.python_version(), "polars": pl.__version__,
            "platform": platform.platform(terse=True), "code": _code_version()}


def _code_version() -> str:
    """The commit measured, and which library files differed from it (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = sorted(line[3:] for line in git("status", "--porcelain").splitlines()
                     if line[3:].startswith(("graph/", "features/", "matching/")))
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def run_measure(script: str, args: list[str]) -> dict:
    """Run ``script --measure ...`` in a fresh interpreter and read its JSON (last line).

    One process per community size: its peak memory and caches are its own.
    """
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         check=False)
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed ({res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def profile(fn: Callable[[], object], top: int = 20) -> str:
    """cProfile of one call of ``fn``: the ``top`` functions by cumulative time, as text."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    # Keep the table, drop the header's absolute file paths of this machine.
    text = out.getvalue()
    return text[text.find("   ncalls"):].rstrip() if "   ncalls" in text else text
