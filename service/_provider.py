"""The model and the matching engine behind the API, swapped atomically.

The service keeps no state of its own beyond caches: the model comes from the MLflow registry
(the ``champion`` alias), the community from the store. The engine (snapshot, graph, indexes)
is rebuilt when the store's version moves, and tagged with it; a new champion is loaded,
smoke-checked, then swapped in one assignment, and the old one keeps serving if anything fails.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from features import FEATURE_NAMES, FeatureModel
from graph import Store, load_frames
from matching import MatchingEngine, PriorRanker
from training import EngineModel

__all__ = ["EngineProvider", "LoadedModel", "day_one_model", "smoke_check"]

log = logging.getLogger("bigcrunch.service")


@dataclass(frozen=True)
class LoadedModel:
    model: EngineModel
    version: str  # registry version (or "day-one")
    loaded_at: datetime


def day_one_model(store: Store) -> EngineModel:
    """The day-one policy over a feature model fitted on whatever the store holds."""
    frames = load_frames(store)
    fm = FeatureModel().fit(frames, datetime.now(UTC))
    return EngineModel(feature_model=fm, ranker=PriorRanker(), split_at=None,
                       info={"policy": "day-one prior"})


def smoke_check(model: EngineModel) -> None:
    """Score a made-up frame: probabilities in [0, 1], finite, one per row."""
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"kind": ["person"] * 4, "candidate_id": [f"smoke-{i}" for i in range(4)],
                          **{n: rng.random(4) for n in FEATURE_NAMES}})
    p = np.asarray(model.ranker.predict_proba(frame), dtype=float)
    if p.shape != (4,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError(f"smoke check failed: scores {p!r}")


class EngineProvider:
    """Holds the current model and the engine built for the current store version."""

    def __init__(self, store: Store, loader=None) -> None:  # noqa: ANN001
        self.store = store
        self._loader = loader  # () -> (EngineModel, version) | None: the registry's champion
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._engine: MatchingEngine | None = None
        self._engine_key: tuple[int, str] | None = None
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("no model loaded yet")
        return self._model

    def load(self) -> bool:
        """Load the champion (or the day-one policy); keep the old model on any failure.

        Returns True when a new model was swapped in.
        """
        try:
            found = self._loader() if self._loader else None
            if found is None:
                if self._model is not None:
                    return False
                model, version = day_one_model(self.store), "day-one"
            else:
                model, version = found
                if self._model is not None and self._model.version == version:
                    return False
            smoke_check(model)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("model load failed, keeping %s: %s",
                        self._model.version if self._model else None, self.last_error)
            return False
        self._model = LoadedModel(model, version, datetime.now(UTC))  # one atomic swap
        self.last_error = None
        return True

    def engine(self) -> MatchingEngine:
        """The engine for the current store version and model (rebuilt when either moves)."""
        loaded = self.model
        key = (self.store.version(), loaded.version)
        engine = self._engine
        if engine is not None and self._engine_key == key:
            return engine
        with self._lock:
            if self._engine is not None and self._engine_key == key:
                return self._engine
            t0 = time.perf_counter()
            frames = load_frames(self.store)
            engine = MatchingEngine(frames, loaded.model.feature_model, loaded.model.ranker)
            self._engine, self._engine_key = engine, (frames.version, loaded.version)
            log.info("engine built for store version %s, model %s in %.1f s",
                     frames.version, loaded.version, time.perf_counter() - t0)
            return engine
