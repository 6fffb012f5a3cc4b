"""What the resource routers share: vocabularies, visibility of missions, patches, writes.

Not a router (no ``router`` here): ``create_app`` skips it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from graph import NotFoundError, Store, ValidationError
from graph._models import Mission, VocabularyEntry
from graph._vocabulary import CLOSED, OPEN
from service.deps import Principal

__all__ = [
    "ERRORS",
    "check_vocab",
    "conflict_message",
    "given",
    "mission_for",
    "vocabulary",
    "write",
]

# Declared on every resource endpoint, so that clients (and schemathesis) know them.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or unknown API key"},
    403: {"description": "the key's scope may not call this endpoint"},
    404: {"description": "an id in the path or the body is not in the store (or not yours)"},
    409: {"description": "conflicts with the state of the store"},
    422: {"description": "a field is missing, unknown or invalid (the message names it)"},
    503: {"description": "the store is busy: retry"},
}


def vocabulary(s: Session) -> dict[str, set[str]]:
    """Built-in vocabularies plus what bundles declared."""
    vocab = {k: set(v) for k, v in {**OPEN, **CLOSED}.items()}
    for kind, value in s.execute(select(VocabularyEntry.kind, VocabularyEntry.value)):
        vocab.setdefault(kind, set()).add(value)
    return vocab


def check_vocab(vocab: dict[str, set[str]], kind: str, field: str,
                values: str | list[str] | None) -> None:
    """Raise a 422 naming ``field`` for a value outside the ``kind`` vocabulary."""
    if values is None:
        return
    for value in [values] if isinstance(values, str) else values:
        if value not in vocab.get(kind, ()):
            raise ValidationError(f"{field}: {value!r} is not in the {kind} vocabulary")


def given(body: BaseModel, nullable: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The fields a PATCH body set; an explicit null only where the column allows it."""
    out = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None and name not in nullable:
            raise ValidationError(f"{name}: cannot be null")
        out[name] = value
    return out


def mission_for(s: Session, principal: Principal, mission_id: str,
                lock: bool = False) -> Mission:
    """The mission, if the caller may see it: a client key sees only its own missions
    (another client's mission is reported as not found, so ids are not probed)."""
    stmt = select(Mission).where(Mission.mission_id == mission_id)
    if lock:  # PostgreSQL: serialise writers of one mission (SQLite: BEGIN IMMEDIATE does)
        stmt = stmt.with_for_update()
    mission = s.execute(stmt).scalar_one_or_none()
    if mission is None or (principal.scope == "client"
                           and mission.client_id != principal.client_id):
        raise NotFoundError(f"mission {mission_id!r} is not in the store")
    return mission


_PG_KEY = re.compile(r"^Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\) (?P<what>.*?)\.?$")
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<cols>.+)$")
_TABLE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(?P<table>\w+)", re.I)
_INSERT_COLS = re.compile(r"^\s*INSERT\s+INTO\s+\"?\w+\"?\s*\((?P<cols>[^)]*)\)", re.I)


def conflict_message(exc: IntegrityError) -> str:
    """What an integrity error says, as a 409's message: the table, the field and, for a
    key, the conflicting id. Never the row itself (PostgreSQL's detail of a failed check
    holds every column of it, lived experience included)."""
    orig, statement = exc.orig, exc.statement or ""
    found = _TABLE.match(statement)
    table = found["table"] if found else None
    diag = getattr(orig, "diag", None)  # PostgreSQL (psycopg)
    if diag is not None:
        table = diag.table_name or table
        key = _PG_KEY.match(diag.message_detail or "")
        if key:
            return f"{table}.{key['cols']}: {key['vals']!r} {key['what']}"
        return (f"{table}: the write breaks constraint {diag.constraint_name!r} against a row "
                "stored meanwhile")
    text = str(orig)
    unique = _SQLITE_UNIQUE.search(text)
    if unique:
        cols = [c.strip() for c in unique["cols"].split(",")]
        values = _values(statement, exc.params, [c.split(".")[-1] for c in cols])
        shown = f" = {values!r}" if values else ""
        return f"{', '.join(cols)}{shown} already exists (stored meanwhile)"
    if "FOREIGN KEY" in text:
        return (f"{table or 'a row'}: refers to a row that is not (or no longer) in the store, "
                "or a row stored meanwhile refers to it")
    return f"{table or 'the store'}: {text.split(':')[0]} (a row stored meanwhile)"


def _values(statement: str, params: Any, cols: list[str]) -> str | None:
    """The values of ``cols`` (key columns) in an INSERT's parameters, if it is one row."""
    found = _INSERT_COLS.match(statement)
    if not found or not isinstance(params, tuple | list) or not params:
        return None
    if isinstance(params[0], tuple | list):  # executemany: which row failed is unknown
        return None
    names = [c.strip().strip('"') for c in found["cols"].split(",")]
    if len(names) != len(params):
        return None
    row = dict(zip(names, params, strict=True))
    if not all(c in row for c in cols):
        return None
    return ", ".join(str(row[c]) for c in cols)


@contextlib.contextmanager
def write(store: Store, what: str) -> Iterator[Session]:
    """A write transaction; a constraint the checks did not catch (a concurrent write of
    the same id) is a 409 naming the field and id, never a 500."""
    try:
        with store.session() as s:
            yield s
    except IntegrityError as exc:
        raise HTTPException(409, f"{what} conflicts with a row stored meanwhile: "
                                 f"{conflict_message(exc)}; read it again") from None
