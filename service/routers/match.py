"""``POST /v1/match``: the platform's endpoint. Ids and scores, nothing else about people.

Every list served for a stored mission, each re-ask included, goes to the decision log
(:func:`matching.record_shortlist`) with the version of the model that served it and who
asked; a list for a mission not stored yet cannot reference it and is not logged (its
``shortlist_id`` is null).

Lists are served at once after a write: the engine then serves with the write laid over it
(:class:`service._provider.PendingView`: changed persons and groups left out, changed
missions read afresh) while it is rebuilt in the background; such a list's logged filters
say so under ``pending_changes`` (counts, never ids).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

from graph import NotFoundError, Store, ValidationError
from graph._vocabulary import OPEN
from matching import MatchingEngine, ShortlistResult, record_shortlist
from service._provider import EngineProvider, LoadedModel, PendingView
from service._sqlite import relaxed_commit
from service.deps import Principal, StoreDep, require
from service.routers.health import SERVED_LISTS
from service.schemas import Int, Kind, Money, Number, Ref, Text, Time

__all__ = ["Int", "MatchById", "MatchDraft", "MatchRequest", "MissionDraft", "engine_for",
           "router", "serve_list", "wait_for_rebuild"]

router = APIRouter(prefix="/v1", tags=["match"])

ERRORS = {
    401: {"description": "no or unknown API key"},
    403: {"description": "the key's scope may not call this endpoint"},
    404: {"description": "an id in the path or the body is not in the store"},
    422: {"description": "a field is missing, unknown or invalid (the message names it)"},
    503: {"description": "no model loaded yet, the store is busy, or a person or group named "
                         "changed moments ago and the engine is being rebuilt: retry after "
                         "the Retry-After header's seconds"},
}


class MissionDraft(BaseModel):
    """A mission not yet stored: what matching needs to know of it."""

    model_config = ConfigDict(extra="forbid")

    need_type: Kind
    area_id: Ref
    starts_at: Time
    ends_at: Time
    title: Annotated[Text, Field(max_length=300)] = ""
    description: Annotated[Text, Field(max_length=5000)] | None = None
    minutes_per_day: Int = Field(60, ge=1, le=1440)
    days_per_week: Int = Field(1, ge=1, le=7)
    team_min: Int = Field(1, ge=1, le=6)
    team_max: Int = Field(1, ge=1, le=6)
    vetting_regime: Literal["minors", "vulnerable_adults"] | None = None
    radius_km: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False, strict=True)] | None \
        = None
    pay_rule: Literal["per_unit", "threshold", "linear"] = "threshold"
    direction: Literal["increase", "decrease"] = "increase"
    baseline: Number = 0.0
    target: Number = 1.0
    unit_price: Money | None = None
    fee: Money | None = None
    contract_cap: Money | None = None

    @model_validator(mode="after")
    def _window(self) -> MissionDraft:
        if self.starts_at > self.ends_at:
            raise ValueError("starts_at is after ends_at")
        if self.team_min > self.team_max:
            raise ValueError("team_min is larger than team_max")
        return self


class MatchById(BaseModel):
    """A stored mission."""

    model_config = ConfigDict(extra="forbid")

    mission_id: Ref
    k: Int = Field(10, ge=1, le=100, description="length of the list")


class MatchDraft(BaseModel):
    """A mission not stored yet."""

    model_config = ConfigDict(extra="forbid")

    mission: MissionDraft
    k: Int = Field(10, ge=1, le=100, description="length of the list")


def _which(body: object) -> str:
    return "draft" if isinstance(body, dict) and "mission" in body else "stored"


# Either form; errors name the fields of the form the body looks like.
MatchRequest = Annotated[Annotated[MatchById, Tag("stored")] | Annotated[MatchDraft, Tag("draft")],
                         Discriminator(_which)]


class MatchedCandidate(BaseModel):
    id: str
    kind: Literal["person", "group"]
    score: float
    propensity: float


class MatchResponse(BaseModel):
    shortlist_id: str | None = Field(
        description="the decision log's id of this list (null for a mission not stored)")
    mission_id: str | None
    model_version: str
    candidates: list[MatchedCandidate]


# ----------------------------------------------------------------------------- shared


def engine_for(request: Request) -> tuple[MatchingEngine, LoadedModel]:
    """The engine and model serving now (503 before the first model is loaded)."""
    provider: EngineProvider = request.app.state.provider
    if not provider.ready:
        raise HTTPException(503, "no model loaded yet", headers={"Retry-After": "5"})
    return provider.engine()


def wait_for_rebuild(request: Request, engine: MatchingEngine, ids: list[str],
                     field: str) -> None:
    """Refuse, for now, ids the serving engine leaves out because they changed since its
    build (or are new): a 503 with Retry-After while they are still in the store; a 404
    for a person erased meanwhile. Nothing to do when no change is pending."""
    if not isinstance(engine, PendingView):
        return
    changed = engine.changed(ids)
    if not changed:
        return
    provider: EngineProvider = request.app.state.provider
    present = provider.in_store(changed)
    if present:
        raise HTTPException(503, f"{field}: {present[:5]} changed moments ago; the engine is "
                                 "being rebuilt with the change: retry shortly",
                            headers={"Retry-After": str(provider.retry_after())})
    if field == "person_id":
        raise NotFoundError(f"person {changed[0]!r} is not in the store")


_NEEDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_draft(engine: MatchingEngine, draft: MissionDraft, field: str = "mission") -> dict:
    """The draft as a mission row, after checking its need type and area against the store."""
    known = _NEEDS.get(engine)
    if known is None:
        vocab = engine.frames.vocabulary
        declared = vocab.filter(vocab["kind"] == "need_type")["value"].to_list()
        known = _NEEDS[engine] = (set(OPEN["need_type"]) | set(declared),
                                  set(engine.frames.areas["area_id"].to_list()))
    needs, areas = known
    if draft.need_type not in needs:
        raise ValidationError(f"{field}.need_type: {draft.need_type!r} is not in the need_type "
                              f"vocabulary")
    if draft.area_id not in areas:
        raise ValidationError(f"{field}.area_id: area {draft.area_id!r} is not in the store")
    row = draft.model_dump()
    row.update(mission_id="draft", client_id=None, status="draft")
    return row


def serve_list(store: Store, loaded: LoadedModel, result: ShortlistResult, principal: Principal,
               endpoint: str, stored: bool, engine: MatchingEngine | None = None
               ) -> tuple[ShortlistResult, str | None]:
    """Log a served list in the decision log (stored missions only) with the model version
    that served it, and the changes laid over its engine if any; count it."""
    result = dataclasses.replace(result, model_version=loaded.version)
    if isinstance(engine, PendingView):
        result = dataclasses.replace(result, filters={**result.filters,
                                                      "pending_changes": dict(engine.pending)})
    sid = None
    if stored:
        # Durable at the next checkpoint or community write, not before: a list served just
        # before a power loss may go unlogged, nothing worse (see service._sqlite).
        with relaxed_commit():
            sid = record_shortlist(store, result, requested_by=principal.holder)
    SERVED_LISTS.labels(endpoint=endpoint).inc()
    return result, sid


# ---------------------------------------------------------------------------- endpoint


@router.post("/match", response_model=MatchResponse, responses=ERRORS)
async def match(body: MatchRequest, request: Request, store: StoreDep,
                principal: Annotated[Principal, Depends(require("platform", "engineer"))]
                ) -> MatchResponse:
    """Best candidates for a mission: ids, kind, score, propensity and model version.

    Give either a stored ``mission_id`` or a full ``mission`` not yet stored, and ``k``.
    Nothing else about the people is returned; a mission engineer's view with reasons is
    ``POST /v1/missions/{mission_id}/shortlist``.
    """

    def serve() -> MatchResponse:
        engine, loaded = engine_for(request)
        mission_id = body.mission_id if isinstance(body, MatchById) else None
        if mission_id is not None:
            engine.mission(mission_id)  # 404 for an unknown id
            result = engine.shortlist(mission_id, k=body.k, explain=False)
        else:
            result = engine.shortlist(mission=check_draft(engine, body.mission), k=body.k,
                                      explain=False)
        result, sid = serve_list(store, loaded, result, principal, "match",
                                 stored=mission_id is not None, engine=engine)
        return MatchResponse(
            shortlist_id=sid, mission_id=mission_id, model_version=loaded.version,
            candidates=[MatchedCandidate(id=c.candidate_id, kind=c.kind, score=c.score,
                                         propensity=c.propensity) for c in result.candidates])

    return await run_in_threadpool(serve)
