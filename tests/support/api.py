"""The API over the tiny city, with one key per scope and two clients.

Use the fixtures from a test module with::

    pytest_plugins = ["support.api"]

``api.get("engineer", "/v1/persons/P1")`` calls with the engineer's key; the scopes are
``platform``, ``engineer``, ``client`` (client C1), ``client2`` (client C2), ``data`` and
``admin``. The store is the ``store_url`` fixture's (SQLite, and PostgreSQL when
``CRUNCH_TEST_DATABASE_URL`` is set). The lifespan (model loading) does not run unless a test
enters ``with api.serving():``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from graph import Client, Mission, Store, VettingRecord, open_store
from service.app import create_app
from service.settings import Settings
from support.tiny_city import d, populate_tiny_city

KEYS: dict[str, dict[str, Any]] = {
    "platform": {"key": "k-platform", "holder": "platform-app", "scope": "platform"},
    "engineer": {"key": "k-engineer", "holder": "eve", "scope": "engineer"},
    "client": {"key": "k-client-1", "holder": "school-c1", "scope": "client", "client_id": "C1"},
    "client2": {"key": "k-client-2", "holder": "landlord-c2", "scope": "client",
                "client_id": "C2"},
    "data": {"key": "k-data", "holder": "dpo", "scope": "data"},
    "admin": {"key": "k-admin", "holder": "root", "scope": "admin"},
}


def populate_api_city(store: Store) -> None:
    """The tiny city plus a second client, an open per-unit mission with a contract cap
    (M20, client C2), an open mission with minors (M21, client C1) and P1's valid check."""
    populate_tiny_city(store)
    now = datetime.now(UTC)
    with store.session() as s:
        s.add(Client(client_id="C2", kind="social_landlord", name="Habitat Nord"))
        s.flush()
        common = dict(need_type="school_absenteeism", created_at=d(2025, 9, 1),
                      starts_at=d(2025, 9, 1), ends_at=datetime(now.year + 1, 12, 31, tzinfo=UTC),
                      status="open", description=None, team_min=1, team_max=2,
                      minutes_per_day=60, days_per_week=2, radius_km=None)
        s.add_all([
            Mission(mission_id="M20", client_id="C2", area_id="A2", title="Youth placed",
                    metric="youths placed", direction="increase", baseline=0, target=10,
                    pay_rule="per_unit", unit_price=50.0, fee=None, contract_cap=120.0,
                    vetting_regime=None, **common),
            Mission(mission_id="M21", client_id="C1", area_id="A1", title="Tutoring",
                    metric="absence rate", direction="decrease", baseline=0.2, target=0.1,
                    pay_rule="threshold", unit_price=None, fee=500.0, contract_cap=None,
                    vetting_regime="minors", **common),
        ])
        s.add(VettingRecord(person_id="P1", regime="minors", status="valid",
                            valid_from=d(2024, 1, 1), expires_at=None, reference="CR-1"))
        Store.bump_version(s)


class Api:
    """A test client that calls as one of the scopes of :data:`KEYS`."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.client = TestClient(app, raise_server_exceptions=False)

    @property
    def store(self) -> Store:
        return self.app.state.store

    def request(self, scope: str | None, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if scope is not None:
            headers["X-API-Key"] = KEYS[scope]["key"]
        return self.client.request(method, url, headers=headers, **kw)

    def get(self, scope: str | None, url: str, **kw: Any) -> httpx.Response:
        return self.request(scope, "GET", url, **kw)

    def post(self, scope: str | None, url: str, **kw: Any) -> httpx.Response:
        return self.request(scope, "POST", url, **kw)

    def patch(self, scope: str | None, url: str, **kw: Any) -> httpx.Response:
        return self.request(scope, "PATCH", url, **kw)

    def delete(self, scope: str | None, url: str, **kw: Any) -> httpx.Response:
        return self.request(scope, "DELETE", url, **kw)

    def fresh(self) -> Api:
        """Another client on the same app (one per thread in concurrency tests)."""
        return Api(self.app)

    @contextlib.contextmanager
    def serving(self) -> Iterator[Api]:
        """Run the lifespan (loads the day-one model) for tests that need /v1/match."""
        with self.client:
            yield self

    def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until the serving engine is rebuilt at the store's version.

        After a write, lists are served at once with the write laid over the engine (changed
        persons left out) while it is rebuilt in the background; a test about what the
        rebuilt engine scores waits for it here.
        """
        provider = self.app.state.provider
        deadline = time.monotonic() + timeout_s
        while True:
            provider.engine()  # notices the new version: starts the rebuild
            if provider.model.store_version == self.store.version():
                return
            assert time.monotonic() < deadline, "the engine was never rebuilt"
            time.sleep(0.02)


def make_app(store_url: str, home: str) -> FastAPI:
    settings = Settings(home=home, database_url=store_url, api_keys=list(KEYS.values()),
                        model_poll_seconds=0)
    app = create_app(settings, model_loader=lambda: None, poll=False)
    app.state.provider.rebuild_delay_s = 0.0  # tests wait for rebuilds: no debounce
    return app


@pytest.fixture
def api_app(store_url, tmp_path) -> Iterator[FastAPI]:
    """The app over a fresh store holding the API city."""
    seed = open_store(store_url)
    populate_api_city(seed)
    seed.dispose()
    app = make_app(store_url, str(tmp_path / "home"))
    try:
        yield app
    finally:
        app.state.store.dispose()


@pytest.fixture
def api(api_app) -> Api:
    return Api(api_app)
