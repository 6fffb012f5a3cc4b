"""The store as polars frames, loaded once, filtered as of any time.

Features, the community graph and the hard filters all read the community through
:class:`CommunityFrames`: one bulk read per table (never ORM objects for a million ties), then
point-in-time views with :meth:`CommunityFrames.as_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime

import polars as pl
from sqlalchemy import String, UniqueConstraint, cast, select
from sqlalchemy.engine import Connection

from graph._models import (
    BUNDLE_MODELS,
    StoreMeta,
    UTCDateTime,
)
from graph._store import Store

__all__ = [
    "CommunityFrames",
    "as_text",
    "fetch_frame",
    "load_frames",
    "load_truth",
    "parse_times",
]

_TABLES = {name: BUNDLE_MODELS[name] for name in (
    "areas", "area_links", "persons", "vetting", "ties", "groups", "group_members",
    "clients", "missions", "assignments", "outcomes", "vocabulary",
)}

# Which column dates a row, for the point-in-time views. Missions are kept whatever their
# date (a mission served now may have been created a minute ago), the others are dated.
_DATED = {
    "persons": "joined_at",
    "ties": "created_at",
    "groups": "created_at",
    "group_members": "joined_at",
    "vetting": "valid_from",
    "assignments": "assigned_at",
    "outcomes": "measured_at",
}


@dataclass(frozen=True)
class CommunityFrames:
    """One polars frame per table of the store, plus ``version`` and ``as_of``.

    ``outcomes`` carries, besides its own columns, the mission, need type and candidate of
    its assignment (``mission_id``, ``need_type``, ``person_id``, ``group_id``), so that
    history features need no join.
    """

    areas: pl.DataFrame
    area_links: pl.DataFrame
    persons: pl.DataFrame
    vetting: pl.DataFrame
    ties: pl.DataFrame
    groups: pl.DataFrame
    group_members: pl.DataFrame
    clients: pl.DataFrame
    missions: pl.DataFrame
    assignments: pl.DataFrame
    outcomes: pl.DataFrame
    vocabulary: pl.DataFrame
    version: int = 0
    as_of_time: datetime | None = None

    def as_of(self, t: datetime) -> CommunityFrames:
        """The community as it was just before ``t``: rows dated at or after ``t`` dropped.

        Only verified outcomes measured before ``t`` are history; a person who joined at or
        after ``t`` does not exist yet, and neither do their ties or memberships.
        """
        changes = {}
        for name, col in _DATED.items():
            frame = getattr(self, name)
            changes[name] = frame.filter(pl.col(col) < t)
        persons = changes["persons"]["person_id"].implode()
        changes["ties"] = changes["ties"].filter(
            pl.col("person_a").is_in(persons) & pl.col("person_b").is_in(persons)
        )
        changes["group_members"] = changes["group_members"].filter(
            pl.col("person_id").is_in(persons)
        )
        changes["outcomes"] = changes["outcomes"].filter(pl.col("status") == "verified")
        return replace(self, as_of_time=t, **changes)

    def verified_outcomes(self) -> pl.DataFrame:
        return self.outcomes.filter(pl.col("status") == "verified")


_FETCH_ROWS = 200_000


def fetch_frame(conn: Connection, stmt, schema: dict[str, pl.DataType]) -> pl.DataFrame:  # noqa: ANN001
    """Rows of a core select as a polars frame, straight from the DBAPI cursor.

    Times are selected as text (:func:`as_text`) and parsed by polars
    (:func:`parse_times`): converting a million datetimes row by row costs seconds.
    """
    result = conn.execute(stmt)
    cursor = result.cursor  # the DBAPI cursor: plain tuples, half the cost of Row objects
    frames = []
    while rows := cursor.fetchmany(_FETCH_ROWS):
        frames.append(pl.DataFrame(rows, schema=schema, orient="row", strict=False))
    result.close()
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames)


def as_text(col):  # noqa: ANN001, ANN201
    return cast(col, String).label(col.key)


def parse_times(frame: pl.DataFrame, *cols: str) -> pl.DataFrame:
    """Parse UTC times selected as text (SQLite and PostgreSQL print them differently)."""
    # SQLite holds "YYYY-MM-DD HH:MM:SS.ffffff", PostgreSQL prints the fraction only
    # when there is one; both are UTC.
    return frame.with_columns(
        pl.col(c).str.replace("T", " ", literal=True).str.replace(r"(Z|[+-]00(:?00)?)$", "")
        .str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", time_zone="UTC")
        for c in cols
    )


_POLARS = {str: pl.String, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}


def _read(conn: Connection, model) -> pl.DataFrame:  # noqa: ANN001
    cols, schema, times = [], {}, []
    for c in model.__table__.columns:
        if c.name == "id":
            continue
        if isinstance(c.type, UTCDateTime):
            cols.append(as_text(c))
            schema[c.name] = pl.String
            times.append(c.name)
        else:
            cols.append(c)
            schema[c.name] = _POLARS[c.type.python_type]
    return parse_times(fetch_frame(conn, select(*cols).order_by(*_row_order(model)), schema),
                       *times)


def _row_order(model) -> list:  # noqa: ANN001
    """The columns that order a table's rows: its natural key.

    Without ORDER BY, a database returns rows in whatever order its plan gives, and an
    import's insertion order need not be stable; the frames (and every index built from
    them) must not depend on either. A surrogate ``id`` gives way to the table's first
    unique constraint (ties: ``person_a, person_b, kind``).
    """
    table = model.__table__
    key = [c for c in table.primary_key.columns if c.name != "id"]
    if key:
        return key
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            return list(constraint.columns)
    return list(table.primary_key.columns)


def load_frames(store: Store) -> CommunityFrames:
    """Read the whole community from the store in one read transaction."""
    with store.reader() as s:
        conn = s.connection()
        # The version is read before the data: a write racing this read makes the frames
        # look stale, never fresh.
        row = conn.execute(select(StoreMeta.value).where(StoreMeta.key == "version")).first()
        version = int(row[0]) if row else 0
        frames = {name: _read(conn, model) for name, model in _TABLES.items()}
    joined = frames["outcomes"].join(
        frames["assignments"].select("assignment_id", "mission_id", "person_id", "group_id"),
        on="assignment_id",
        how="left",
    ).join(frames["missions"].select("mission_id", "need_type"), on="mission_id", how="left")
    frames["outcomes"] = joined
    names = {f.name for f in fields(CommunityFrames)}
    return CommunityFrames(**{k: v for k, v in frames.items() if k in names}, version=version)


def load_truth(store: Store) -> pl.DataFrame | None:
    """The synthetic ground truth (mission_id, person_id, group_id, p_success), if imported."""
    from graph._models import Truth

    with store.reader() as s:
        frame = _read(s.connection(), Truth)
    return frame if frame.height else None
