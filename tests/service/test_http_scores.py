"""Score identity: one feature frame scored in-process, through the MLflow pyfunc and over our
API gives the same numbers, bit for bit.

A ranker is trained on a simulated community (300 persons x 120 missions, seed 1), logged to
an MLflow registry under the app's home and made champion; the app loads it from the registry as
it does in production (``service._provider.RegistryChampion``). For an open mission,
``POST /v1/match`` returns candidates and scores; an engine built in this process over the
same store, with the model fitted in memory, at the same "now", computes the features of those
candidates and their scores; the pyfunc loaded from ``models:/...@champion`` scores the same
frame. (That ``mlflow models serve`` answers the same numbers is tested in
tests/training/test_mlflow.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from support.api import KEYS, Api
from support.simulated import simulated_frames

from features import FEATURE_NAMES
from graph import (
    Mission,
    Store,
    import_bundle,
    load_frames,
    open_store,
)
from matching import MatchingEngine, PriorRanker
from service.app import create_app
from service.settings import Settings
from training import MlflowConfig, fit_engine_model, log_engine_model, to_pyfunc_input
from training._mlflow import default_split_at

pytestmark = [
    # MLflow's own warnings under SQLAlchemy 2.1 and pandas 3 (see VERIFIED.md)
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*range is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:mlflow"),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

OPEN = "M_OPEN"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The simulated bundle and a ranker fitted on it (not the day-one prior)."""
    root = tmp_path_factory.mktemp("http-scores")
    # seed 1: a calibration slice where the model ranks, so the scores spread (with seed 0
    # Platt's slope sits at its bound and every score is within 1e-6 of the base rate)
    frames, _ = simulated_frames(root, 300, 120, seed=1, db="fit.db")
    model = fit_engine_model(frames, default_split_at(frames, holdout_share=0.3))
    assert not isinstance(model.ranker, PriorRanker), model.info
    return root / "bundle", model


def _add_open_mission(store: Store, now: datetime) -> None:
    """A mission open now, otherwise a copy of a simulated one (no vetting, no radius)."""
    row = load_frames(store).missions.sort("mission_id").row(0, named=True)
    row.update(mission_id=OPEN, status="open", created_at=now - timedelta(days=1),
               starts_at=now, ends_at=now + timedelta(days=120), vetting_regime=None,
               radius_km=None, team_min=1, team_max=3)
    with store.session() as s:
        s.add(Mission(**row))
        Store.bump_version(s)


@pytest.fixture
def served(trained, store_url, tmp_path, monkeypatch):
    """The app over the simulated store, with the trained ranker as the registry's champion."""
    bundle, model = trained
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    config = MlflowConfig.under_home(home)
    registered = log_engine_model(model, None, config, run_name="http-scores")
    assert registered.promoted and registered.version == 1  # the first version: champion
    store = open_store(store_url)
    import_bundle(store, bundle, show_progress=False)
    _add_open_mission(store, datetime.now(UTC))
    store.dispose()
    settings = Settings(home=home, database_url=store_url, api_keys=list(KEYS.values()),
                        model_poll_seconds=0, mlflow_tracking_uri=config.tracking_uri)
    app = create_app(settings, poll=False)  # the registry's champion, as in production
    try:
        yield Api(app), config, model
    finally:
        app.state.store.dispose()


def test_match_scores_equal_in_process_and_pyfunc_scores(served, monkeypatch):
    api, config, model = served
    with api.serving():
        serving_engine, loaded = api.app.state.provider.engine()
        assert loaded.version == f"{config.model_name}/1"
        assert loaded.model.version == model.version  # the champion, read from the registry
        # an engine of this process over the same store, with the model fitted in memory,
        # at the serving engine's "now" (track records and load are as of it)
        frames = load_frames(api.store)
        assert frames.version == serving_engine.version
        local = MatchingEngine(frames, model.feature_model, model.ranker,
                               now=serving_engine.now)

        r = api.post("platform", "/v1/match", json={"mission_id": OPEN, "k": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == loaded.version
        got = body["candidates"]
        assert len(got) >= 5

        mission = local.mission(OPEN)
        persons = [c["id"] for c in got if c["kind"] == "person"]
        groups = [c["id"] for c in got if c["kind"] == "group"]
        idx = np.array([local.snapshot.person_index[p] for p in persons], dtype=np.int64)
        frame = local.score(mission, idx, groups)  # features + p_success, persons then groups
        # the serving engine builds the very same features for them
        theirs = serving_engine.score(mission, idx, groups)
        assert theirs.select("kind", "candidate_id", *FEATURE_NAMES).equals(
            frame.select("kind", "candidate_id", *FEATURE_NAMES))

    key = {(k, i): n for n, (k, i) in enumerate(frame.select("kind", "candidate_id").iter_rows())}
    order = [key[(c["kind"], c["id"])] for c in got]
    frame = frame[order]  # in the order served
    http = np.array([c["score"] for c in got], dtype=np.float64)
    in_process = frame["p_success"].to_numpy()
    np.testing.assert_array_equal(http, in_process)
    np.testing.assert_array_equal(model.ranker.predict_proba(frame), in_process)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", config.tracking_uri)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(f"models:/{config.model_name}@champion")
    out = pyfunc.predict(to_pyfunc_input(frame))
    assert out["candidate_id"].tolist() == frame["candidate_id"].to_list()
    np.testing.assert_array_equal(out["p_success"].to_numpy(), in_process)
    # the scores tell candidates apart (a constant model would pass the rest trivially)
    assert np.unique(in_process).size > 1 and np.ptp(in_process) > 0.01
    assert pl.Series(http).is_between(0.0, 1.0).all()
