"""The request path of the service, made cheap without giving anything up: the decision log
commits without an fsync of its own while community writes stay durable, every engine is
warmed up in the background while it serves, and the request-latency metric is a plain
ASGI middleware that still labels every request."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event

from graph import open_store, sqlite_url
from matching import MatchingEngine
from service._sqlite import relaxed_commit, tune_sqlite

pytest_plugins = ["support.api"]  # the `api` fixture over the tiny city

FULL, NORMAL = 2, 1  # PRAGMA synchronous


def synchronous(dbapi_conn) -> int:  # noqa: ANN001
    """What the connection commits with, read on the DBAPI connection itself."""
    return dbapi_conn.execute("PRAGMA synchronous").fetchone()[0]


def test_only_relaxed_transactions_skip_the_fsync(tmp_path):
    store = open_store(sqlite_url(tmp_path / "store.db"))
    try:
        assert tune_sqlite(store)
        for _ in range(2):  # the same pooled connection, switched back and forth
            with relaxed_commit(), store.session() as s:
                assert synchronous(s.connection().connection.driver_connection) == NORMAL
            with store.session() as s:
                assert synchronous(s.connection().connection.driver_connection) == FULL
        with relaxed_commit():
            pass
        with store.session() as s:  # the block is over: durable again
            assert synchronous(s.connection().connection.driver_connection) == FULL
    finally:
        store.dispose()


def test_nothing_changes_off_a_wal_sqlite_file():
    store = open_store("sqlite://")  # in memory: no WAL, nothing to relax
    try:
        assert not tune_sqlite(store)
    finally:
        store.dispose()


def test_the_decision_log_is_relaxed_and_a_consent_withdrawal_is_not(api, store_url):
    if not store_url.startswith("sqlite"):
        pytest.skip("SQLite's synchronous pragma")
    commits: list[tuple[bool, int]] = []  # (wrote a served list, synchronous at commit)
    wrote_list = threading.local()

    @event.listens_for(api.store.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        if statement.lstrip().upper().startswith("INSERT INTO SHORTLISTS"):
            wrote_list.flag = True

    @event.listens_for(api.store.engine, "commit")
    def _commit(conn):  # noqa: ANN001, ANN202
        if not conn.get_execution_options().get("readonly"):
            commits.append((getattr(wrote_list, "flag", False),
                            synchronous(conn.connection.driver_connection)))
        wrote_list.flag = False

    with api.serving():
        commits.clear()
        assert api.post("platform", "/v1/match", json={"mission_id": "M20"}).status_code == 200
        r = api.patch("data", "/v1/persons/P3/consent", json={"consent_matching": False})
        assert r.status_code == 200, r.text
    assert (True, NORMAL) in commits  # the served list
    assert all(level == FULL for listed, level in commits if not listed), commits


class Engines:
    """An engine factory whose engines' warm-ups can be held, or fail."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.held.set()
        self.started = threading.Event()  # a warm-up began
        self.fail = False
        self.warmed: list[MatchingEngine] = []

    def __call__(self, frames, model) -> MatchingEngine:  # noqa: ANN001
        factory = self

        class Engine(MatchingEngine):
            def warm_up(self, mission_ids=None) -> dict:  # noqa: ANN001
                factory.started.set()
                assert factory.held.wait(60), "the warm-up was never released"
                if factory.fail:
                    raise RuntimeError("no graph")
                out = super().warm_up(mission_ids)
                factory.warmed.append(self)
                return out

        return Engine(frames, model.feature_model, model.ranker)


@pytest.fixture
def engines(api) -> Engines:
    factory = Engines()
    api.app.state.provider._factory = factory
    return factory


def wait_until(check, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def match(api) -> None:  # noqa: ANN001
    r = api.post("platform", "/v1/match", json={"mission_id": "M20", "k": 3})
    assert r.status_code == 200, r.text


def test_the_first_engine_serves_while_it_is_warmed_up(api, engines):
    provider = api.app.state.provider
    engines.held.clear()  # the first warm-up waits
    with api.serving():
        first = provider.model.engine
        match(api)  # served by the engine whose warm-up is under way
        assert engines.warmed == []
        engines.held.set()
        wait_until(lambda: engines.warmed == [first])
        assert provider.last_warm_up["store_version"] == provider.model.store_version
        assert provider.last_warm_up["seeds"] >= 1


def test_a_rebuilt_engine_is_warmed_up_before_it_replaces_the_old_one(api, engines):
    provider = api.app.state.provider
    with api.serving():
        wait_until(lambda: len(engines.warmed) == 1)
        first = provider.model.engine
        engines.held.clear()
        engines.started.clear()
        provider.max_age_s = 0.0  # a background rebuild
        match(api)
        assert engines.started.wait(30)
        provider.max_age_s = 900.0
        match(api)  # the new engine is warming: the old one serves
        assert provider.model.engine is first
        engines.held.set()
        wait_until(lambda: provider.model.engine is not first)
        assert engines.warmed[-1] is provider.model.engine and len(engines.warmed) == 2
        assert provider.retry_after() >= 1


def test_a_failed_warm_up_leaves_the_engine_serving(api, engines):
    provider = api.app.state.provider
    engines.fail = True
    with api.serving():
        wait_until(lambda: not provider._warming)
        match(api)
    assert provider.last_warm_up is None and engines.warmed == []


def test_every_request_is_timed_with_its_route_and_status(api):
    with api.serving():
        assert api.post(None, "/v1/match", json={"mission_id": "M20"}).status_code == 401
        assert api.post("platform", "/v1/match", json={"mission_id": "M0"}).status_code == 404
        assert api.get(None, "/no/such/path").status_code == 404
        assert api.post("platform", "/v1/match", json={"mission_id": "M20"}).status_code == 200
        text = api.get(None, "/metrics").text
    for method, path, status in [("POST", "/v1/match", "401"), ("POST", "/v1/match", "404"),
                                 ("GET", "unmatched", "404"), ("POST", "/v1/match", "200")]:
        assert (f'bigcrunch_request_seconds_count{{method="{method}",path="{path}",'
                f'status="{status}"}}') in text, (method, path, status)
