"""``POST /v1/match``: the platform's endpoint. Ids and scores, nothing else about people."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from starlette.concurrency import run_in_threadpool

from graph import NotFoundError
from matching import record_shortlist
from service.deps import Principal, StoreDep, require
from service.routers.health import SERVED_LISTS

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["match"])


class MissionDraft(BaseModel):
    """A mission not yet stored: what matching needs to know of it."""

    model_config = ConfigDict(extra="forbid")

    need_type: StrictStr
    area_id: StrictStr
    starts_at: datetime
    ends_at: datetime
    title: StrictStr = ""
    description: StrictStr | None = None
    minutes_per_day: StrictInt = Field(60, ge=1, le=1440)
    days_per_week: StrictInt = Field(1, ge=1, le=7)
    team_min: StrictInt = Field(1, ge=1, le=6)
    team_max: StrictInt = Field(1, ge=1, le=6)
    vetting_regime: Literal["minors", "vulnerable_adults"] | None = None
    radius_km: float | None = Field(None, gt=0, le=1000)
    pay_rule: Literal["per_unit", "threshold", "linear"] = "threshold"
    direction: Literal["increase", "decrease"] = "increase"
    baseline: float = 0.0
    target: float = 1.0
    unit_price: float | None = Field(None, ge=0)
    fee: float | None = Field(None, ge=0)
    contract_cap: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _window(self) -> MissionDraft:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("starts_at and ends_at need a time zone (e.g. Z)")
        if self.starts_at > self.ends_at:
            raise ValueError("starts_at is after ends_at")
        if self.team_min > self.team_max:
            raise ValueError("team_min is larger than team_max")
        return self


class MatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mission_id: StrictStr | None = Field(None, max_length=64,
                                         description="a stored mission, or give `mission`")
    mission: MissionDraft | None = None
    k: StrictInt = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _one(self) -> MatchRequest:
        if (self.mission_id is None) == (self.mission is None):
            raise ValueError("give exactly one of mission_id and mission")
        return self


class MatchedCandidate(BaseModel):
    id: str
    kind: Literal["person", "group"]
    score: float
    propensity: float


class MatchResponse(BaseModel):
    shortlist_id: str
    mission_id: str | None
    model_version: str
    candidates: list[MatchedCandidate]


@router.post("/match", response_model=MatchResponse,
             responses={404: {"description": "unknown mission"},
                        401: {"description": "no or unknown API key"},
                        403: {"description": "scope not allowed"},
                        503: {"description": "no model loaded yet"}})
async def match(body: MatchRequest, request: Request, store: StoreDep,
                principal: Annotated[Principal, Depends(require("platform", "engineer"))]
                ) -> MatchResponse:
    """Best candidates for a mission: ids, kind, score, propensity and model version."""
    provider = request.app.state.provider
    if not provider.ready:
        raise HTTPException(503, "no model loaded yet")

    def serve() -> MatchResponse:
        engine = provider.engine()
        if body.mission_id is not None:
            mission = engine.mission(body.mission_id)
            if principal.scope == "client" and mission["client_id"] != principal.client_id:
                raise NotFoundError(f"mission {body.mission_id!r} is not in the store")
            result = engine.shortlist(body.mission_id, k=body.k)
            sid = record_shortlist(store, result, requested_by=principal.holder)
        else:
            draft = body.mission.model_dump()
            draft.update(mission_id="draft", client_id=None)
            result = engine.shortlist(mission=draft, k=body.k)
            sid = record_shortlist(store, result, requested_by=principal.holder,
                                   mission_stored=False)
        SERVED_LISTS.labels(endpoint="match").inc()
        return MatchResponse(
            shortlist_id=sid, mission_id=body.mission_id, model_version=provider.model.version,
            candidates=[MatchedCandidate(id=c.candidate_id, kind=c.kind, score=c.score,
                                         propensity=c.propensity) for c in result.candidates])

    return await run_in_threadpool(serve)
