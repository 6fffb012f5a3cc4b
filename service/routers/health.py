"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel

__all__ = ["REGISTRY", "REQUEST_LATENCY", "SERVED_LISTS", "router"]

REGISTRY = CollectorRegistry()
REQUEST_LATENCY = Histogram(
    "bigcrunch_request_seconds", "Request latency", ["path", "method", "status"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1, 2, 5), registry=REGISTRY)
SERVED_LISTS = Counter("bigcrunch_served_lists", "Lists served", ["endpoint"],
                       registry=REGISTRY)
MODEL_INFO = Gauge("bigcrunch_model_loaded", "1 for the model version being served",
                   ["version"], registry=REGISTRY)

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None


@router.get("/livez", response_model=Health)
def livez() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request, response: Response) -> Health:
    """Ready once a model (the day-one policy at least) is loaded."""
    provider = request.app.state.provider
    if not provider.ready:
        response.status_code = 503
        return Health(status="loading", detail=provider.last_error)
    return Health(status="ready", model_version=provider.model.version,
                  detail=provider.last_error)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics: request latency, model version, served lists."""
    provider = request.app.state.provider
    MODEL_INFO.clear()
    if provider.ready:
        MODEL_INFO.labels(version=provider.model.version).set(1)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
