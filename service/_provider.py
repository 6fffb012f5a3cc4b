"""The model and the matching engine behind the API, swapped atomically.

The service keeps no state of its own beyond caches: the model comes from the MLflow registry
(the ``champion`` alias), the community from the store. A new champion is loaded, its engine
built and smoke-checked on a real request, and only then swapped in, model and engine in one
assignment: requests go on being served by the old pair meanwhile, and keep being served by it
if anything fails. When the store's version moves (an import, a consent withdrawn, an
erasure), the engine is rebuilt before the next request is served: a hard rule that changed is
never served stale. An engine older than ``max_age_s`` (its "now" decides vetting expiry and
mission windows) is rebuilt in the background while the old one serves.

Several workers (processes) on one database each hold their own pair; they agree because the
store and the registry are the only sources: each polls the registry and reads the store's
version, so all serve the same champion within one poll interval, and every served list
records the version that served it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from features import FEATURE_NAMES, FeatureModel
from graph import Store, load_frames
from matching import MatchingEngine, PriorRanker
from training import EngineModel

__all__ = [
    "DAY_ONE",
    "EngineProvider",
    "LoadedModel",
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
    """Holds the current model and its engine, built for the store's current version.

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
    """

    def __init__(self, store: Store, loader: Loader | None = None, max_age_s: float = 900.0,
                 engine_factory: Callable | None = None) -> None:
        self.store = store
        self._loader = loader
        self.max_age_s = max_age_s
        self._factory = engine_factory or (
            lambda frames, model: MatchingEngine(frames, model.feature_model, model.ranker))
        self._current: LoadedModel | None = None
        self._load_lock = threading.Lock()  # one load at a time (poll thread, reload calls)
        self._build_lock = threading.Lock()  # one engine build for the current model
        self._swap_lock = threading.Lock()
        self._refreshing = False
        self.last_error: str | None = None
        self.swaps = 0

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def model(self) -> LoadedModel:
        current = self._current
        if current is None:
            raise RuntimeError("no model loaded yet")
        return current

    def _build(self, model: EngineModel) -> tuple[MatchingEngine, int]:
        t0 = time.perf_counter()
        frames = load_frames(self.store)
        engine = self._factory(frames, model)
        log.info("engine built for store version %s in %.1f s", frames.version,
                 time.perf_counter() - t0)
        return engine, frames.version

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
                engine, store_version = self._build(model)
                smoke_check(model, engine)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model load failed, keeping %s: %s",
                            current.version if current else None, self.last_error)
                return False
            with self._swap_lock:  # one atomic swap: model and engine together
                self._current = LoadedModel(model, version, datetime.now(UTC), engine,
                                            store_version, time.monotonic())
            self.last_error = None
            self.swaps += 1
            log.info("serving model %s (was %s)", version, current.version if current else None)
            return True

    def engine(self) -> tuple[MatchingEngine, LoadedModel]:
        """The engine for the store's current version, and the model it serves.

        Rebuilt first when the store's version moved (a hard rule may have changed); rebuilt
        in the background when only its age is over ``max_age_s``.
        """
        current = self.model
        version = self.store.version()
        if current.engine is not None and current.store_version == version:
            if time.monotonic() - current.built_at > self.max_age_s:
                self._refresh_in_background(current)
            return current.engine, current
        with self._build_lock:
            current = self.model
            if current.engine is not None and current.store_version == self.store.version():
                return current.engine, current
            engine, store_version = self._build(current.model)
            fresh = LoadedModel(current.model, current.version, current.loaded_at, engine,
                                store_version, time.monotonic())
            self._swap_engine(current, fresh)
            return engine, fresh

    def _swap_engine(self, old: LoadedModel, new: LoadedModel) -> None:
        # Only over the pair it was built from: a model swapped meanwhile carries its own
        # engine, and a newer engine built meanwhile is not replaced by an older one.
        with self._swap_lock:
            if self._current is old:
                self._current = new

    def _refresh_in_background(self, current: LoadedModel) -> None:
        if self._refreshing:
            return
        self._refreshing = True

        def refresh() -> None:
            try:
                with self._build_lock:
                    engine, store_version = self._build(current.model)
                self._swap_engine(current, LoadedModel(
                    current.model, current.version, current.loaded_at, engine, store_version,
                    time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - the old engine serves on
                self.last_error = f"engine refresh failed: {type(exc).__name__}: {exc}"
                log.warning(self.last_error)
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="engine-refresh", daemon=True).start()
