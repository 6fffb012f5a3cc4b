"""Shared fixtures: a fresh community store on SQLite, and on PostgreSQL when
``CRUNCH_TEST_DATABASE_URL`` points at a server (a fresh database per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from graph import Store, open_store, sqlite_url

PG_URL = os.environ.get("CRUNCH_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def _fresh_pg_database() -> tuple[str, callable]:
    admin_url = make_url(PG_URL)
    name = f"crunch_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty store, once per backend."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "store.db")
        return
    url, drop = _fresh_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    """An empty, migrated community store, once per backend."""
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.dispose()


@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[Store]:
    """An empty SQLite store, for tests that need only one backend."""
    s = open_store(sqlite_url(tmp_path / "store.db"))
    try:
        yield s
    finally:
        s.dispose()
