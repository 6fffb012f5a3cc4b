"""The community store: engine, sessions, migrations and the store version.

SQLite by default (foreign keys on, WAL, a busy timeout), PostgreSQL for a
``postgresql+psycopg://`` URL. Alembic migrations are applied on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from graph._models import Base, StoreMeta

__all__ = ["Store", "open_store", "sqlite_url"]

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Store:
    """A handle on the community store.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``.

    Examples
    --------
    >>> store = open_store("sqlite://")  # in memory
    >>> store.version()
    0
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(readonly=True), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the latest migration (no-op when it is there)."""
        cfg = _alembic_config()
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session; on SQLite it does not take the write lock."""
        with self._readers() as s, s.begin():
            yield s

    def version(self) -> int:
        """A number that grows with every committed write (caches are tagged with it)."""
        with self.reader() as s:
            row = s.get(StoreMeta, "version")
            return int(row.value) if row else 0

    @staticmethod
    def bump_version(s: Session) -> int:
        """Increase the store version inside the caller's transaction."""
        row = s.execute(
            select(StoreMeta).where(StoreMeta.key == "version").with_for_update()
        ).scalar_one_or_none()
        if row is None:
            row = StoreMeta(key="version", value="0")
            s.add(row)
        row.value = str(int(row.value) + 1)
        s.flush()
        return int(row.value)

    def counts(self) -> dict[str, int]:
        """Number of rows of every table, for `crunch up` and tests."""
        out = {}
        with self.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                if table.name == "store_meta":
                    continue
                out[table.name] = conn.execute(
                    text(f'SELECT COUNT(*) FROM "{table.name}"')
                ).scalar_one()
        return out

    def dispose(self) -> None:
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # Let SQLAlchemy, not pysqlite, open transactions, and open them IMMEDIATE
            # so that two writers queue on the busy timeout instead of failing.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if path:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            if conn.get_execution_options().get("readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_store(url: str, migrate: bool = True) -> Store:
    """Open the store at ``url`` and apply pending migrations."""
    store = Store(url)
    if migrate:
        store.migrate()
    return store
