"""The model and the matching engine behind the API, swapped atomically.

The service keeps no state of its own beyond caches: the model comes from the MLflow registry
(the ``champion`` alias), the community from the store. A new champion is loaded, its engine
built and smoke-checked on a real request, and only then swapped in, model and engine in one
assignment: requests go on being served by the old pair meanwhile, and keep being served by it
if anything fails. An engine older than ``max_age_s`` (its "now" decides vetting expiry and
mission windows) is rebuilt in the background while the old one serves.

When the store's version moves, a hard rule may have changed, and rebuilding the engine
takes 11-25 s at 100,000 persons: no request waits for it. Every write journals what it
touched (:meth:`graph.Store.bump_version`), and the next request is served at once by the
current engine with the changes laid over it (:class:`PendingView`), failing closed:

- a person changed since the build (consent, availability, vetting, ties, memberships,
  assignments, erasure) is not matchable, nor is any group with them in it;
- a group changed since the build is left out;
- a mission changed (or created) since the build is read afresh from the store, so its
  hard rules (vetting regime, window, radius, team size, status) are the current ones.

One background rebuild starts (after ``rebuild_delay_s``, so that a burst of writes makes
one rebuild); writes made while it runs only extend the overlay, and the rebuilt engine is
swapped in atomically when done. A change the journal cannot name (a bundle import, or an
engine older than the journal) still rebuilds before the next request, as does a model
swap. Outcomes change track records only: they move the version (the next rebuild learns
them) but leave nobody out.

Every engine is warmed up (:meth:`MatchingEngine.warm_up`: the personalised PageRank of
every area and need type, which the first request of a mission would otherwise solve on its
own path: ~70 ms of CPU instead of ~25 at 100,000 persons, bench/bench_api.py). An engine
that replaces one (a background rebuild, a new champion) is warmed before the swap, while the
old, warm one serves: the warm-up holds the GIL most of the time and slows the requests
served beside it, cold seeds or not. The first engine of the process, and one rebuilt on a
request's path, serve at once and are warmed in a background thread.

Several workers (processes) on one database each hold their own pair; they agree because the
store and the registry are the only sources: each polls the registry and reads the store's
version, so all serve the same champion within one poll interval, and every served list
records the version that served it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from sqlalchemy import select

from features import FEATURE_NAMES, FeatureModel
from graph import Mission, PeerGroup, Person, Store, load_frames
from graph._store import StoreChanges, person_key
from matching import MatchingEngine, PriorRanker
from training import EngineModel

__all__ = [
    "DAY_ONE",
    "EngineProvider",
    "LoadedModel",
    "PendingView",
    "RegistryChampion",
    "day_one_model",
    "smoke_check",
]

log = logging.getLogger("bigcrunch.service")

DAY_ONE = "day-one"

Loader = Callable[[], "tuple[EngineModel, str] | None"]


@dataclass(frozen=True)
class LoadedModel:
    """A model, the engine built for it and the store version it was built from."""

    model: EngineModel
    version: str  # registry version ("bigcrunch-ranker/3"), or "day-one"
    loaded_at: datetime
    engine: MatchingEngine | None = None
    store_version: int | None = None
    built_at: float = 0.0  # time.monotonic() of the engine's build
    # Change-journal key of each person of the engine -> their snapshot index, and the store
    # secret the keys were made with (None: the overlay cannot name persons: rebuild).
    person_keys: Mapping[str, int] | None = None
    secret: str | None = None


def journal_keys(secret: str | None, engine: MatchingEngine) -> dict[str, int] | None:
    """The change-journal key of every person of ``engine`` -> their snapshot index."""
    snapshot = getattr(engine, "snapshot", None)
    if secret is None or snapshot is None:
        return None
    return {person_key(secret, pid): i for i, pid in enumerate(snapshot.person_ids.tolist())}


class PendingView(MatchingEngine):
    """An engine with the writes made since its build laid over it, failing closed.

    It shares everything with ``base`` (no copy of the heavy parts) except:

    - the persons changed since the build, and the members (as of the build) of the groups
      changed since then, are not matchable: ``consent_matching`` reads false for them in
      this view's snapshot, so every path through the hard rules (shortlist, pins, team
      suggestions, missions for a person, allocation) leaves them out, and every peer group
      with one of them in it fails its members' check;
    - the missions changed (or created) since the build are their current rows.

    Only that one per-person array differs from the base's snapshot, so whatever the rules
    index or cache per snapshot stays valid. Features and scores are the base's (track
    records as of the build); hard rules are the current ones. Nothing here names the
    persons left out: the decision log records counts (:attr:`pending`), never ids, so an
    erased person's id is not written back.

    Parameters
    ----------
    base : MatchingEngine
    persons : array of int
        Snapshot indices of the persons changed since ``base`` was built.
    groups : iterable of str
        Groups changed since then.
    missions : list of dict
        Current rows of the missions changed since then (every column of the table).
    changes : StoreChanges
        What the journal said (versions, for :attr:`pending`).
    """

    def __init__(self, base: MatchingEngine, persons: np.ndarray, groups: Iterable[str],
                 missions: list[dict], changes: StoreChanges) -> None:
        # Not MatchingEngine.__init__: the snapshot, graph and indexes are the base's.
        self.__dict__.update(base.__dict__)
        self.base = base
        snap = base.snapshot
        groups = frozenset(groups)
        in_groups = [snap.group_members[g] for g in sorted(groups & snap.group_members.keys())]
        left_out = np.unique(np.concatenate([np.asarray(persons, dtype=np.int64), *in_groups]))
        if len(left_out):
            view = copy.copy(snap)
            consent = np.array(snap.consent_matching, dtype=bool)  # a copy
            consent[left_out] = False
            view.consent_matching = consent
            self.snapshot = view
        self._left_out = left_out
        self._changed = (frozenset(snap.person_ids[left_out].tolist()) | groups)
        self._fresh: dict[str, dict] = {}
        if missions:
            schema = base.frames.missions.schema
            fresh = pl.DataFrame([{c: m.get(c) for c in schema} for m in missions],
                                 schema=schema)
            ids = fresh["mission_id"].to_list()
            # Open missions are listed from the frames (missions for a person, allocation).
            self.frames = dataclasses.replace(base.frames, missions=pl.concat(
                [base.frames.missions.filter(~pl.col("mission_id").is_in(ids)), fresh]))
            # Rows as the engine's own (same types): what every stage reads of a mission.
            self._fresh = {r["mission_id"]: r for r in fresh.iter_rows(named=True)}
        self.pending = {"since_version": int(changes.since), "version": int(changes.version),
                        "persons_left_out": int(len(left_out)), "groups_changed": len(groups),
                        "missions_reread": len(missions)}

    def mission(self, mission_id: str) -> dict:
        row = self._fresh.get(mission_id)
        return row if row is not None else self.base.mission(mission_id)

    def changed(self, ids: Iterable[str]) -> list[str]:
        """Those of ``ids`` this view leaves out for a change: persons and groups changed
        since the build, groups with such a person in them, and ids the build does not know
        (new since then)."""
        snap = self.base.snapshot
        out = []
        for i in ids:
            members = snap.group_members.get(i)
            if i in self._changed or (i not in snap.person_index and members is None) or (
                    members is not None and np.isin(members, self._left_out).any()):
                out.append(i)
        return out


def day_one_model(store: Store) -> EngineModel:
    """The day-one policy over a feature model fitted on whatever the store holds."""
    frames = load_frames(store)
    fm = FeatureModel().fit(frames, datetime.now(UTC))
    return EngineModel(feature_model=fm, ranker=PriorRanker(), split_at=None,
                       info={"policy": "day-one prior"})


def smoke_check(model: EngineModel, engine: MatchingEngine | None = None) -> None:
    """Check a model before it serves.

    Scores a made-up frame (probabilities in [0, 1], finite, one per row); with an engine,
    also serves one real list for a stored mission (an open one if any) and checks its
    scores and propensities.
    """
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"kind": ["person"] * 4, "candidate_id": [f"smoke-{i}" for i in range(4)],
                          **{n: rng.random(4) for n in FEATURE_NAMES}})
    p = np.asarray(model.ranker.predict_proba(frame), dtype=float)
    if p.shape != (4,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError(f"smoke check failed: scores {p!r}")
    if engine is None or engine.frames.missions.is_empty():
        return
    missions = engine.frames.missions.sort(
        pl.col("status") != "open", pl.col("created_at"), descending=[False, True])
    result = engine.shortlist(missions["mission_id"][0], k=3, seed=0)
    for c in result.candidates:
        if not (0 <= c.score <= 1 and 0 < c.propensity <= 1 and math.isfinite(c.score)):
            raise ValueError(f"smoke check failed: candidate {c.rank} has score {c.score!r} "
                             f"and propensity {c.propensity!r}")


class RegistryChampion:
    """The ``champion`` of the MLflow registry, as a loader for :class:`EngineProvider`.

    Each call asks the registry which version the alias points at (cheap) and downloads the
    model only when that version is new. No registry database yet (a SQLite file not
    created) or no champion: ``None``, and the day-one policy serves.

    Parameters
    ----------
    tracking_uri : str
    home : Path
        Where artifacts live by default (``MlflowConfig.under_home``).
    store_url : str, optional
        The community store's URL: a tracking URI pointing at the same database is refused.
    """

    def __init__(self, tracking_uri: str, home: Path, store_url: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.home = Path(home)
        self.store_url = store_url
        self._last: tuple[EngineModel, str] | None = None

    def _config(self):  # noqa: ANN202
        from training._mlflow import MlflowConfig

        return MlflowConfig.under_home(self.home, tracking_uri=self.tracking_uri,
                                       store_url=self.store_url)

    def _no_registry(self) -> bool:
        # A SQLite registry not created yet: nobody trained; do not create it from here.
        uri = self.tracking_uri
        return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()

    def __call__(self) -> tuple[EngineModel, str] | None:
        if self._no_registry():
            return None
        from training._mlflow import champion_version, load_champion

        config = self._config()
        number = champion_version(config)
        if number is None:
            return None
        version = f"{config.model_name}/{number}"
        if self._last is not None and self._last[1] == version:
            return self._last
        model, number = load_champion(config)
        self._last = (model, f"{config.model_name}/{number}")
        return self._last


class EngineProvider:
    """Holds the current model and its engine, and serves the store's current version.

    Parameters
    ----------
    store : Store
    loader : callable, optional
        ``() -> (EngineModel, version) | None``: the champion (``None``: no champion, the
        day-one policy serves).
    max_age_s : float
        An engine older than this is rebuilt in the background (its clock moves on).
    engine_factory : callable, optional
        ``(frames, model) -> MatchingEngine`` (tests pass one with a fixed clock).
    rebuild_delay_s : float
        After a write, how long the background rebuild waits before it reads the store, so
        that a burst of writes makes one rebuild (the overlay serves meanwhile).
    retry_s : float
        After a failed background rebuild, how long before the next try.
    warm_up : bool
        Warm every engine up in a background thread once it serves (engines without a
        ``warm_up`` method are left as they are).
    """

    def __init__(self, store: Store, loader: Loader | None = None, max_age_s: float = 900.0,
                 engine_factory: Callable | None = None, rebuild_delay_s: float = 2.0,
                 retry_s: float = 30.0, warm_up: bool = True) -> None:
        self.store = store
        self._loader = loader
        self.max_age_s = max_age_s
        self.rebuild_delay_s = rebuild_delay_s
        self.retry_s = retry_s
        self._factory = engine_factory or (
            lambda frames, model: MatchingEngine(frames, model.feature_model, model.ranker))
        self._current: LoadedModel | None = None
        self._load_lock = threading.Lock()  # one load at a time (poll thread, reload calls)
        self._build_lock = threading.Lock()  # one engine build for the current model
        self._swap_lock = threading.Lock()
        self._view_lock = threading.Lock()  # one overlay computed per version
        self._view: tuple[LoadedModel, int, MatchingEngine] | None = None
        self._refreshing = False
        self._retry_at = 0.0
        self.last_build_s = 0.0
        self.last_error: str | None = None
        self.swaps = 0
        self.rebuilds = 0  # engines built for the current model (synchronously or not)
        self.warm_up = warm_up
        self._warming = False  # a warm-up thread runs
        self._warm_again = False  # an engine was swapped in since it took its engine
        self.last_warm_up: dict | None = None  # what the last finished warm-up did
        self.last_warm_s = 0.0

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def model(self) -> LoadedModel:
        current = self._current
        if current is None:
            raise RuntimeError("no model loaded yet")
        return current

    def retry_after(self) -> int:
        """Seconds a caller should wait for the rebuild under way (for a Retry-After)."""
        return max(1, math.ceil(self.rebuild_delay_s + self.last_build_s + self.last_warm_s))

    def _build(self, model: EngineModel, current: LoadedModel | None = None,
               version: str | None = None) -> LoadedModel:
        """A new engine for ``model`` over the whole store, as the pair to serve."""
        t0 = time.perf_counter()
        secret = self.store.secret()
        frames = load_frames(self.store)
        engine = self._factory(frames, model)
        keys = journal_keys(secret, engine)
        self.last_build_s = time.perf_counter() - t0
        log.info("engine built for store version %s in %.1f s", frames.version,
                 self.last_build_s)
        if current is not None:
            model, version, loaded_at = current.model, current.version, current.loaded_at
        else:
            loaded_at = datetime.now(UTC)
        return LoadedModel(model, version, loaded_at, engine, frames.version, time.monotonic(),
                           keys, secret)

    def load(self) -> bool:
        """Load the champion (or the day-one policy); keep the old one on any failure.

        The new model's engine is built and smoke-checked before the swap. Returns True when
        a new model was swapped in.
        """
        with self._load_lock:
            current = self._current
            try:
                found = self._loader() if self._loader else None
                if found is None:
                    if current is not None:
                        # No champion (or the registry lost it): whatever serves goes on.
                        return False
                    model, version = day_one_model(self.store), DAY_ONE
                else:
                    model, version = found
                    if current is not None and current.version == version:
                        self.last_error = None  # serving the champion: nothing failed
                        return False
                smoke_check(model)
                fresh = self._build(model, version=version)
                smoke_check(model, fresh.engine)
                if current is not None:
                    self._warm(fresh)  # the old model serves meanwhile
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model load failed, keeping %s: %s",
                            current.version if current else None, self.last_error)
                return False
            with self._swap_lock:  # one atomic swap: model and engine together
                self._current = fresh
            self.last_error = None
            self.swaps += 1
            if current is None:  # the first engine serves at once, warmed meanwhile
                self._warm_in_background()
            log.info("serving model %s (was %s)", version, current.version if current else None)
            return True

    def engine(self) -> tuple[MatchingEngine, LoadedModel]:
        """The engine serving the store's current version, and the model it serves.

        When the store's version moved since the engine was built, the engine with the
        changes laid over it (:class:`PendingView`) serves at once and a rebuild starts in
        the background; only a change the journal cannot name (a bundle import) is rebuilt
        before serving. An engine older than ``max_age_s`` is rebuilt in the background.
        """
        current = self.model
        version = self.store.version()
        if current.engine is not None and current.store_version == version:
            if time.monotonic() - current.built_at > self.max_age_s:
                self._refresh_in_background(current)
            return current.engine, current
        if current.engine is not None:
            view = self._overlay(current, version)
            if view is not None:
                return view, current
        with self._build_lock:
            current = self.model
            if current.engine is not None and current.store_version == self.store.version():
                return current.engine, current
            fresh = self._build(current.model, current)
            self.rebuilds += 1
            self._swap_engine(current, fresh)
            return fresh.engine, fresh

    def _overlay(self, current: LoadedModel, version: int) -> MatchingEngine | None:
        """The current engine with the changes since its build laid over it; None when the
        changes cannot be named (rebuild before serving)."""
        with self._view_lock:
            cached = self._view
            if cached is not None and cached[0] is current and cached[1] >= version:
                view = cached[2]
            else:
                changes = self.store.changes_since(current.store_version)
                if changes.everything or (changes.person_keys and (
                        current.person_keys is None or changes.secret != current.secret)):
                    return None
                view = self._lay_over(current, changes)
                self._view = (current, changes.version, view)
        self._refresh_in_background(current, delay=self.rebuild_delay_s, changes=True)
        return view

    def _lay_over(self, current: LoadedModel, changes: StoreChanges) -> MatchingEngine:
        if not changes.named:  # outcomes only: nothing a hard rule reads moved
            return current.engine
        keys = current.person_keys or {}
        # A key the engine does not know is a person new since the build: not in it anyway.
        persons = np.array(sorted(keys[k] for k in changes.person_keys if k in keys),
                           dtype=np.int64)
        missions = []
        if changes.missions:
            with self.store.reader() as s:
                cols = [c.key for c in Mission.__table__.columns]
                for m in s.execute(select(Mission).where(
                        Mission.mission_id.in_(sorted(changes.missions)))).scalars():
                    missions.append({c: getattr(m, c) for c in cols})
        return PendingView(current.engine, persons, changes.groups, missions, changes)

    def in_store(self, ids: Iterable[str]) -> list[str]:
        """Those of ``ids`` that are persons or groups of the store now."""
        ids = sorted(set(ids))
        if not ids:
            return []
        with self.store.reader() as s:
            found = set(s.scalars(select(Person.person_id).where(Person.person_id.in_(ids))))
            found |= set(s.scalars(select(PeerGroup.group_id)
                                   .where(PeerGroup.group_id.in_(ids))))
        return [i for i in ids if i in found]

    def _swap_engine(self, old: LoadedModel, new: LoadedModel, warm: bool = False) -> None:
        # Only over the pair it was built from: a model swapped meanwhile carries its own
        # engine, and a newer engine built meanwhile is not replaced by an older one.
        with self._swap_lock:
            swapped = self._current is old
            if swapped:
                self._current = new
        if swapped and not warm:
            self._warm_in_background()

    def _warm(self, loaded: LoadedModel) -> None:
        """Warm ``loaded``'s engine up, here and now; a failure is logged (requests then
        solve what they need themselves)."""
        warm_up = getattr(loaded.engine, "warm_up", None) if self.warm_up else None
        if warm_up is None:
            return
        t0 = time.perf_counter()
        try:
            done = dict(warm_up())
        except Exception as exc:  # noqa: BLE001 - the engine serves cold
            log.warning("engine warm-up failed: %s: %s", type(exc).__name__, exc)
            return
        self.last_warm_s = time.perf_counter() - t0
        self.last_warm_up = {**done, "store_version": loaded.store_version}
        log.info("engine warmed up for store version %s: %s seeds, %s solves in %.1f s",
                 loaded.store_version, done.get("seeds"), done.get("solved"),
                 self.last_warm_s)

    def _warm_in_background(self) -> None:
        """Warm the serving engine up in a background thread (one thread at a time: an
        engine swapped in while it runs is warmed next, an engine swapped out meanwhile is
        not). Requests go on being served, by the same engine, meanwhile."""
        if not self.warm_up:
            return
        with self._swap_lock:
            self._warm_again = True
            if self._warming:
                return
            self._warming = True

        def warm() -> None:
            while True:
                with self._swap_lock:
                    if not self._warm_again:
                        self._warming = False
                        return
                    self._warm_again = False
                    current = self._current
                if current is not None:
                    self._warm(current)

        threading.Thread(target=warm, name="engine-warm-up", daemon=True).start()

    def _refresh_in_background(self, current: LoadedModel, delay: float = 0.0,
                               changes: bool = False) -> None:
        """Start one background rebuild (none when one runs, or shortly after a failure).

        ``changes``: for writes since the build; skipped if, once the delay is over, the
        serving engine is already at the store's version.
        """
        with self._swap_lock:
            if self._refreshing or time.monotonic() < self._retry_at:
                return
            self._refreshing = True

        def refresh() -> None:
            try:
                if delay > 0:
                    time.sleep(delay)
                with self._build_lock:
                    base = self._current
                    if base is None or base.model is not current.model:
                        return  # a new model came with its own engine
                    if changes and base.store_version == self.store.version():
                        return  # rebuilt meanwhile
                    fresh = self._build(base.model, base)
                    self.rebuilds += 1
                self._warm(fresh)  # the serving engine (and overlay) serve meanwhile
                self._swap_engine(base, fresh, warm=True)
                if self.last_error and self.last_error.startswith("engine refresh failed"):
                    self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the old engine (and overlay) serve on
                self.last_error = f"engine refresh failed: {type(exc).__name__}: {exc}"
                self._retry_at = time.monotonic() + self.retry_s
                log.warning(self.last_error)
            finally:
                with self._swap_lock:
                    self._refreshing = False

        threading.Thread(target=refresh, name="engine-refresh", daemon=True).start()
