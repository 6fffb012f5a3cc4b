"""Model lifecycle: the champion is loaded at start, checked every N seconds and on
``POST /v1/model/reload``, swapped atomically (model and engine together), and the old model
keeps serving when a new one fails to load or fails its smoke check. Several workers on one
database serve the same champion; a store change reaches the next list of every worker (laid
over its engine while it is rebuilt: tests/service/test_engine_overlay.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from support.api import KEYS, Api, populate_api_city
from support.matching_fixtures import TableRanker

from features import FeatureModel
from graph import Shortlist, load_frames, open_store
from service.app import create_app
from service.settings import Settings
from training import EngineModel


class Registry:
    """A stand-in for the MLflow registry: what the ``champion`` alias points at."""

    def __init__(self) -> None:
        self.champion: tuple[EngineModel, str] | None = None
        self.error: Exception | None = None
        self.calls = 0

    def __call__(self) -> tuple[EngineModel, str] | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.champion


class ConstantRanker(TableRanker):
    """Every candidate gets ``p``: a served score tells which model served it."""

    def __init__(self, p: float) -> None:
        super().__init__(default=p)

    @property
    def version(self) -> str:
        return f"constant-{self.default}"


class BrokenRanker(TableRanker):
    """Fine on the smoke frame, fails on real features (a model that cannot serve)."""

    def predict_proba(self, X):  # noqa: ANN001, ANN201
        if not X["candidate_id"][0].startswith("smoke-"):
            raise RuntimeError("feature mismatch")
        return super().predict_proba(X)


@pytest.fixture
def city(store_url) -> Iterator[str]:
    seed = open_store(store_url)
    populate_api_city(seed)
    seed.dispose()
    yield store_url


@pytest.fixture
def fm(city) -> FeatureModel:
    store = open_store(city)
    try:
        return FeatureModel().fit(load_frames(store), datetime.now(UTC))
    finally:
        store.dispose()


def model(fm: FeatureModel, ranker) -> EngineModel:  # noqa: ANN001
    return EngineModel(feature_model=fm, ranker=ranker, split_at=None)


def app_on(store_url: str, home, registry: Registry, poll_s: float = 0.0) -> Api:  # noqa: ANN001
    settings = Settings(home=home, database_url=store_url, api_keys=list(KEYS.values()),
                        model_poll_seconds=poll_s)
    return Api(create_app(settings, model_loader=registry, poll=poll_s > 0))


def served(api: Api, mission: str = "M20") -> dict:
    r = api.post("platform", "/v1/match", json={"mission_id": mission, "k": 3})
    assert r.status_code == 200, r.text
    return r.json()


def test_day_one_then_a_new_champion_then_a_failed_one(city, fm, tmp_path):
    registry = Registry()
    api = app_on(city, tmp_path, registry)
    with api.serving():
        assert served(api)["model_version"] == "day-one"  # no champion yet

        registry.champion = (model(fm, ConstantRanker(0.7)), "bigcrunch-ranker/2")
        r = api.post("data", "/v1/model/reload")
        assert r.status_code == 200, r.text
        assert r.json() == {"swapped": True, "model_version": "bigcrunch-ranker/2",
                            "previous_version": "day-one", "error": None}
        body = served(api)
        assert body["model_version"] == "bigcrunch-ranker/2"
        assert {c["score"] for c in body["candidates"]} == {0.7}
        with api.store.reader() as s:
            row = s.get(Shortlist, body["shortlist_id"])
            assert row.model_version == "bigcrunch-ranker/2"  # the decision log says who served
        # Asking again for the same champion changes nothing.
        assert api.post("data", "/v1/model/reload").json()["swapped"] is False

        # A champion that cannot be loaded: the old one serves on, the error is reported.
        registry.error = OSError("artifact store unreachable")
        r = api.post("data", "/v1/model/reload").json()
        assert r["swapped"] is False and r["model_version"] == "bigcrunch-ranker/2"
        assert "artifact store unreachable" in r["error"]
        assert "unreachable" in api.get(None, "/readyz").json()["detail"]
        assert served(api)["model_version"] == "bigcrunch-ranker/2"

        # Fails the smoke check on the made-up frame (scores outside [0, 1]) ...
        registry.error = None
        registry.champion = (model(fm, ConstantRanker(1.5)), "bigcrunch-ranker/3")
        r = api.post("data", "/v1/model/reload").json()
        assert r["swapped"] is False and "smoke check" in r["error"]
        # ... or on a real list (it cannot score real features).
        registry.champion = (model(fm, BrokenRanker(default=0.5)), "bigcrunch-ranker/4")
        r = api.post("data", "/v1/model/reload").json()
        assert r["swapped"] is False and "feature mismatch" in r["error"]
        assert {c["score"] for c in served(api)["candidates"]} == {0.7}

        # A good one after the failures is taken.
        registry.champion = (model(fm, ConstantRanker(0.4)), "bigcrunch-ranker/5")
        assert api.post("data", "/v1/model/reload").json()["swapped"] is True
        assert api.get(None, "/readyz").json() == {
            "status": "ready", "model_version": "bigcrunch-ranker/5", "detail": None}
        for scope in ("platform", "engineer", "client"):
            assert api.post(scope, "/v1/model/reload").status_code == 403


def test_a_failing_registry_at_start_serves_the_day_one_policy(city, tmp_path):
    registry = Registry()
    registry.error = ConnectionError("registry down")
    api = app_on(city, tmp_path, registry)
    with api.serving():
        # Nothing loaded at all: not ready, /v1/match says so (no 500).
        assert api.get(None, "/readyz").status_code == 503
        assert "registry down" in api.get(None, "/readyz").json()["detail"]
        assert api.post("platform", "/v1/match", json={"mission_id": "M20"}).status_code == 503
        registry.error = None  # back: no champion, so the day-one policy
        assert api.post("admin", "/v1/model/reload").json()["model_version"] == "day-one"
        assert served(api)["model_version"] == "day-one"


def test_the_swap_is_atomic_under_load(city, fm, tmp_path):
    """Requests served during repeated swaps each see one model whole: the version they
    report is the one whose scores they carry, and none fails."""
    registry = Registry()
    a, b = (model(fm, ConstantRanker(0.25)), "v-a"), (model(fm, ConstantRanker(0.75)), "v-b")
    registry.champion = a
    api = app_on(city, tmp_path, registry)
    expected = {"v-a": 0.25, "v-b": 0.75}
    seen, errors = [], []
    stop = threading.Event()

    def hammer() -> None:
        client = api.fresh()
        while not stop.is_set():
            r = client.post("platform", "/v1/match", json={"mission_id": "M20", "k": 3})
            if r.status_code != 200:
                errors.append(r.text)
                continue
            body = r.json()
            seen.append(body["model_version"])
            if {c["score"] for c in body["candidates"]} != {expected[body["model_version"]]}:
                errors.append(body)

    with api.serving():
        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(6):
            registry.champion = b if i % 2 == 0 else a
            assert api.post("data", "/v1/model/reload").json()["swapped"] is True
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {"v-a", "v-b"} <= set(seen)


def test_polling_picks_up_a_new_champion(city, fm, tmp_path):
    registry = Registry()
    api = app_on(city, tmp_path, registry, poll_s=0.05)
    with api.serving():
        assert served(api)["model_version"] == "day-one"
        registry.champion = (model(fm, ConstantRanker(0.6)), "bigcrunch-ranker/7")
        deadline = time.monotonic() + 20
        while api.get(None, "/readyz").json()["model_version"] != "bigcrunch-ranker/7":
            assert time.monotonic() < deadline, "the poll never loaded the new champion"
            time.sleep(0.05)
        assert served(api)["model_version"] == "bigcrunch-ranker/7"


def test_two_workers_on_one_database_serve_the_same_champion(city, fm, tmp_path):
    registry = Registry()  # one registry, as two processes would share MLflow
    registry.champion = (model(fm, ConstantRanker(0.3)), "bigcrunch-ranker/1")
    one = app_on(city, tmp_path / "one", registry)
    two = app_on(city, tmp_path / "two", registry)
    with one.serving(), two.serving():
        assert served(one)["model_version"] == served(two)["model_version"] == \
            "bigcrunch-ranker/1"
        registry.champion = (model(fm, ConstantRanker(0.8)), "bigcrunch-ranker/2")
        for api in (one, two):  # what each worker's poll does
            api.post("data", "/v1/model/reload")
        lists = [served(one), served(two), served(one, "M9"), served(two, "M9")]
        assert {x["model_version"] for x in lists} == {"bigcrunch-ranker/2"}
        # A consent withdrawn through one worker takes the person out of the other's lists
        # from its next request (the store's journal says who changed: left out at once).
        listed = {c["id"] for x in lists for c in x["candidates"] if c["kind"] == "person"}
        gone = sorted(listed)[0]
        r = one.request("data", "PATCH", f"/v1/persons/{gone}/consent",
                        json={"consent_matching": False})
        assert r.status_code == 200, r.text
        for _ in range(5):
            for api in (one, two):
                for mission in ("M20", "M9"):
                    body = api.post("engineer", "/v1/missions/" + mission + "/shortlist",
                                    json={"k": 10, "teams": 0}).json()
                    assert all(gone not in c["members"] for c in body["candidates"])
    with one.store.reader() as s:
        versions = set(s.scalars(select(Shortlist.model_version)))
    assert versions == {"bigcrunch-ranker/1", "bigcrunch-ranker/2"}


def test_an_old_engine_is_rebuilt_in_the_background(city, tmp_path):
    api = app_on(city, tmp_path, Registry())
    provider = api.app.state.provider
    with api.serving():
        first = provider.model
        provider.max_age_s = 0.0  # every engine is too old from now on
        served(api)  # served by the old engine while a new one is built
        deadline = time.monotonic() + 20
        while provider.model.engine is first.engine:
            assert time.monotonic() < deadline, "no background rebuild"
            time.sleep(0.05)
        assert provider.model.version == first.version == "day-one"
        assert provider.model.built_at > first.built_at
        assert served(api)["model_version"] == "day-one"


def test_the_registry_champion_loader(tmp_path, city, fm):
    """``RegistryChampion`` over a real MLflow registry: nothing created before training, the
    champion loaded once, then only its version asked."""
    pytest.importorskip("mlflow")
    from service._provider import RegistryChampion, smoke_check
    from training._mlflow import MlflowConfig, register_day_one

    home = tmp_path / "home"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    loader = RegistryChampion(uri, home, store_url=city)
    assert loader() is None and not (home / "mlflow.db").exists()

    home.mkdir()
    config = MlflowConfig.under_home(home, tracking_uri=uri)
    register_day_one(config, fm)
    found = loader()
    assert found is not None and found[1] == "bigcrunch-ranker/1"
    assert loader() is found  # same version: not downloaded again
    smoke_check(found[0])  # it scores
