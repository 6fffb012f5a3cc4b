"""The community store: engine, sessions, migrations, the store version and its journal.

SQLite by default (foreign keys on, WAL, a busy timeout), PostgreSQL for a
``postgresql+psycopg://`` URL. Alembic migrations are applied on first use.

Every write that changes what matching sees moves the store version
(:meth:`Store.bump_version`) and, in the same transaction, journals what it touched: persons
(by a keyed hash of their id, never the id), peer groups and missions, or "everything" (a
bundle import). A serving engine built at version ``v`` reads :meth:`Store.changes_since`
to leave out, until it is rebuilt, whatever changed after ``v``.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from graph._models import Base, ChangeJournal, StoreMeta

__all__ = ["JOURNAL_RETENTION", "StoreChanges", "Store", "open_store", "person_key",
           "sqlite_url", "store_secret"]

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30
# The keyed hashes of person ids (journal and erasure tombstones) use this secret, made by
# migration 0002 and kept in store_meta.
SECRET_KEY = "tombstone_salt"
JOURNAL_FROM = "journal_from"
# Journal rows are kept this long. An engine is rebuilt at least every few minutes (its
# max age, and after any change), so only an engine whose rebuilds kept failing for a day
# can be older; it then finds its version below journal_from and rebuilds at once.
JOURNAL_RETENTION = timedelta(days=1)
PRUNE_EVERY = 64  # versions between two prunes (a cheap indexed delete in the writer)
# Keys of one domain: a journal key never equals the tombstone hash of the same id.
_JOURNAL_DOMAIN = b"change-journal\x1f"


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def store_secret(s: Session | Connection, create: bool = False) -> str | None:
    """The store's secret for keyed hashes of person ids (made by the migrations)."""
    value = s.execute(select(StoreMeta.value).where(StoreMeta.key == SECRET_KEY)
                      ).scalar_one_or_none()
    if value is not None or not create:
        return value
    # Made by migration 0002; this only covers a store whose row was removed by hand.
    value = secrets.token_hex(32)
    s.add(StoreMeta(key=SECRET_KEY, value=value))
    s.flush()
    return value


def person_key(secret: str, person_id: str) -> str:
    """What the change journal holds for a person: HMAC-SHA256 (hex) of the id.

    Examples
    --------
    >>> len(person_key("k", "P1"))
    64
    >>> person_key("k", "P1") == person_key("other key", "P1")
    False
    """
    return hmac.digest(secret.encode(), _JOURNAL_DOMAIN + person_id.encode(), "sha256").hex()


@dataclass(frozen=True)
class StoreChanges:
    """What changed in the store after version ``since``, up to ``version``.

    ``everything`` is set when the changes cannot be told apart (a bundle import, or a
    ``since`` older than the journal): the caller must then reread the whole store.
    """

    since: int
    version: int
    everything: bool = False
    person_keys: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    missions: frozenset[str] = frozenset()
    secret: str | None = None

    @property
    def named(self) -> bool:
        """Whether any person, group or mission is named (else only soft changes)."""
        return bool(self.person_keys or self.groups or self.missions)


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
    def bump_version(s: Session, persons: Iterable[str | None] = (),
                     groups: Iterable[str | None] = (), missions: Iterable[str | None] = (),
                     everything: bool | None = None) -> int:
        """Increase the store version inside the caller's transaction and journal what the
        write touched.

        Parameters
        ----------
        s : Session
            The writer's session (the journal rows commit or roll back with its write).
        persons, groups, missions : iterables of ids
            What the write changed, as far as matching's hard rules go: a person's consent,
            availability, capacity, vetting, ties, memberships or assignments (every member,
            for a group's); a group's kind or members; a mission's row. ``None`` entries are
            skipped. Persons are journaled by :func:`person_key`, never by id.
        everything : bool, optional
            Anything may have changed (a bundle import). By default True when nothing is
            named (so the call without arguments stays the safe one); pass False for a write
            that changes no hard rule (an outcome: only track records move).

        Returns
        -------
        int
            The new version.
        """
        persons = sorted({p for p in persons if p is not None})
        groups = sorted({g for g in groups if g is not None})
        missions = sorted({m for m in missions if m is not None})
        if everything is None:
            everything = not (persons or groups or missions)
        row = s.execute(
            select(StoreMeta).where(StoreMeta.key == "version").with_for_update()
        ).scalar_one_or_none()
        if row is None:
            row = StoreMeta(key="version", value="0")
            s.add(row)
        version = int(row.value) + 1
        row.value = str(version)
        now = datetime.now(UTC)
        if everything:
            s.add(ChangeJournal(version=version, kind="everything", key="", recorded_at=now))
        else:
            secret = store_secret(s, create=True) if persons else None
            s.add_all(
                [ChangeJournal(version=version, kind="person", key=person_key(secret, p),
                               recorded_at=now) for p in persons]
                + [ChangeJournal(version=version, kind="group", key=g, recorded_at=now)
                   for g in groups]
                + [ChangeJournal(version=version, kind="mission", key=m, recorded_at=now)
                   for m in missions])
        if version % PRUNE_EVERY == 0:
            _prune_journal(s, now - JOURNAL_RETENTION)
        s.flush()
        return version

    def changes_since(self, version: int) -> StoreChanges:
        """What the writes after ``version`` changed (one read transaction).

        ``everything`` when one of them was a bundle import, or when ``version`` is older
        than the journal (pruned, or written before the journal existed).
        """
        with self.reader() as s:
            # The version first: rows of any version up to it are committed with it.
            now = s.execute(select(StoreMeta.value).where(StoreMeta.key == "version")
                            ).scalar_one_or_none()
            now = int(now) if now is not None else 0
            if now <= version:
                return StoreChanges(since=version, version=now)
            start = s.execute(select(StoreMeta.value).where(StoreMeta.key == JOURNAL_FROM)
                              ).scalar_one_or_none()
            if start is None or version + 1 < int(start):
                return StoreChanges(since=version, version=now, everything=True)
            rows = s.execute(select(ChangeJournal.version, ChangeJournal.kind,
                                    ChangeJournal.key)
                             .where(ChangeJournal.version > version)).all()
            by_kind: dict[str, set[str]] = {"person": set(), "group": set(), "mission": set()}
            everything = False
            last = now
            for v, kind, key in rows:
                last = max(last, v)  # PostgreSQL: rows committed after the version was read
                if kind == "everything" or kind not in by_kind:
                    everything = True
                else:
                    by_kind[kind].add(key)
            return StoreChanges(
                since=version, version=last, everything=everything,
                person_keys=frozenset(by_kind["person"]), groups=frozenset(by_kind["group"]),
                missions=frozenset(by_kind["mission"]),
                secret=store_secret(s) if by_kind["person"] else None)

    def secret(self) -> str | None:
        """The secret of the keyed person hashes (None on a store without one yet)."""
        with self.reader() as s:
            return store_secret(s)

    def counts(self) -> dict[str, int]:
        """Number of rows of every table, for `crunch up` and tests."""
        out = {}
        with self.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                if table.name in ("store_meta", "change_journal"):  # bookkeeping
                    continue
                out[table.name] = conn.execute(
                    text(f'SELECT COUNT(*) FROM "{table.name}"')
                ).scalar_one()
        return out

    def dispose(self) -> None:
        self.engine.dispose()


def _prune_journal(s: Session, before: datetime) -> None:
    """Drop journal rows recorded before ``before`` and move ``journal_from`` past them."""
    last = s.execute(select(func.max(ChangeJournal.version))
                     .where(ChangeJournal.recorded_at < before)).scalar_one_or_none()
    if last is None:
        return
    s.execute(delete(ChangeJournal).where(ChangeJournal.version <= last))
    start = s.get(StoreMeta, JOURNAL_FROM)
    if start is None:
        s.add(StoreMeta(key=JOURNAL_FROM, value=str(last + 1)))
    elif int(start.value) <= last:
        start.value = str(last + 1)


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
