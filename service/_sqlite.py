"""How the service commits to a SQLite store: the decision log without an fsync of its own.

A SQLite store in WAL mode (every file store: :func:`graph.open_store` sets it) commits with
``synchronous=FULL`` by default: each commit fsyncs the write-ahead log, about 2 ms here,
more on a busy disk. The decision log is written on every served list, so that fsync sits on
the path of every ``/v1/match``. Under WAL, ``synchronous=NORMAL`` skips the fsync at commit
(the log is synced at checkpoints) and, per SQLite's documentation, still cannot corrupt the
database: a power loss or OS crash (not a crash of the process) may only roll back the last
transactions before it.

That is acceptable for a decision-log row (a list served moments before a power loss is not
logged) but not for a community write: a consent withdrawal the caller was told is stored
must stay stored. So only the transactions opened inside :func:`relaxed_commit` commit with
``NORMAL``; every other write keeps ``FULL``. A ``FULL`` commit fsyncs the whole WAL file,
so it also makes the relaxed commits before it durable.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry

from graph import Store

__all__ = ["relaxed_commit", "tune_sqlite"]

_RELAXED: contextvars.ContextVar[bool] = contextvars.ContextVar("relaxed_commit", default=False)


@contextlib.contextmanager
def relaxed_commit() -> Iterator[None]:
    """Write transactions opened (in this thread or task) inside this block commit without
    an fsync on a SQLite store in WAL mode (see the module's docstring); elsewhere, or on
    another database, nothing changes."""
    token = _RELAXED.set(True)
    try:
        yield
    finally:
        _RELAXED.reset(token)


def tune_sqlite(store: Store) -> bool:
    """Let :func:`relaxed_commit` take effect on ``store``'s connections.

    Returns
    -------
    bool
        False (nothing done) for a store that is not a SQLite file in WAL mode.
    """
    if store.dialect != "sqlite":
        return False
    with store.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    if str(mode).lower() != "wal":  # NORMAL is only corruption-safe under WAL
        return False

    # At checkout, outside any transaction (the pool rolls back on return), where the
    # pragma may change; it holds for the commits of this checkout.
    @event.listens_for(store.engine, "checkout")
    def _synchronous(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        level = "NORMAL" if _RELAXED.get() else "FULL"
        if record.info.get("synchronous") != level:  # kept with the pooled connection
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA synchronous={level}")
            cur.close()
            record.info["synchronous"] = level

    return True
