"""The store as polars frames, loaded once, filtered as of any time.

Features, the community graph and the hard filters all read the community through
:class:`CommunityFrames`: one bulk read per table (never ORM objects for a million ties), then
point-in-time views with :meth:`CommunityFrames.as_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime

import polars as pl
from sqlalchemy import select

from graph._models import (
    Area,
    AreaLink,
    Assignment,
    Client,
    GroupMember,
    Mission,
    Outcome,
    PeerGroup,
    Person,
    Tie,
    VettingRecord,
)
from graph._store import Store

__all__ = ["CommunityFrames", "load_frames"]

_TABLES = {
    "areas": Area,
    "area_links": AreaLink,
    "persons": Person,
    "vetting": VettingRecord,
    "ties": Tie,
    "groups": PeerGroup,
    "group_members": GroupMember,
    "clients": Client,
    "missions": Mission,
    "assignments": Assignment,
    "outcomes": Outcome,
}

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


def _read(conn, model) -> pl.DataFrame:  # noqa: ANN001
    table = model.__table__
    cols = [c for c in table.columns if c.name != "id"]
    schema = {}
    for c in cols:
        pytype = c.type.python_type if not hasattr(c.type, "impl") else datetime
        schema[c.name] = {
            str: pl.String,
            int: pl.Int64,
            float: pl.Float64,
            bool: pl.Boolean,
            datetime: pl.Datetime("us", "UTC"),
        }[pytype]
    rows = conn.execute(select(*cols)).all()
    # The rows are in UTC; the ORM type adds the zone, core selects return it naive.
    frame = pl.DataFrame(rows, schema={k: (pl.Datetime("us") if v == pl.Datetime("us", "UTC")
                                           else v) for k, v in schema.items()},
                         orient="row")
    return frame.with_columns(
        pl.col(k).dt.replace_time_zone("UTC") for k, v in schema.items()
        if v == pl.Datetime("us", "UTC")
    )


def load_frames(store: Store) -> CommunityFrames:
    """Read the whole community from the store in one read transaction."""
    with store.reader() as s:
        conn = s.connection()
        frames = {name: _read(conn, model) for name, model in _TABLES.items()}
    version = store.version()
    joined = frames["outcomes"].join(
        frames["assignments"].select("assignment_id", "mission_id", "person_id", "group_id"),
        on="assignment_id",
        how="left",
    ).join(frames["missions"].select("mission_id", "need_type"), on="mission_id", how="left")
    frames["outcomes"] = joined
    names = {f.name for f in fields(CommunityFrames)}
    return CommunityFrames(**{k: v for k, v in frames.items() if k in names}, version=version)
