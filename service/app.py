"""The FastAPI application: ``create_app(settings)``; one router per resource."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Histogram
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graph import CrunchError, NotFoundError, ValidationError, open_store
from service._provider import EngineProvider, RegistryChampion
from service._sqlite import tune_sqlite
from service.routers._common import conflict_message
from service.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("bigcrunch.service")


def create_app(settings: Settings | None = None, model_loader: Callable | None = None,
               poll: bool = True, engine_factory: Callable | None = None) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    settings : Settings, optional
        Read from the environment when not given.
    model_loader : callable, optional
        ``() -> (EngineModel, version) | None``: where the champion comes from (the MLflow
        registry by default; None from the loader means "no champion": day-one policy).
    poll : bool
        Check for a new champion every ``settings.model_poll_seconds``.
    engine_factory : callable, optional
        ``(frames, model) -> MatchingEngine``: how engines are built (tests).
    """
    settings = settings or Settings()
    store = open_store(settings.store_url)
    tune_sqlite(store)  # decision-log writes without an fsync of their own (SQLite WAL)
    provider = EngineProvider(store, loader=model_loader or _registry_loader(settings),
                              engine_factory=engine_factory, warm_up=settings.warm_up)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        provider.load()
        stop = threading.Event()
        if poll and settings.model_poll_seconds > 0:
            def watch() -> None:
                while not stop.wait(settings.model_poll_seconds):
                    provider.load()

            threading.Thread(target=watch, name="champion-watch", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="bigcrunch", version="0.1.0", lifespan=lifespan,
                  description="Matching people and peer groups to pay-for-results missions.")
    app.state.settings = settings
    app.state.store = store
    app.state.provider = provider

    from service import routers
    from service.routers import health

    # Every module of service/routers with a `router` is one resource. /v1/match first:
    # routing tries the routes in order, and it is the one called on every served list.
    for info in sorted(pkgutil.iter_modules(routers.__path__),
                       key=lambda m: (m.name != "match", m.name)):
        module = importlib.import_module(f"service.routers.{info.name}")
        if hasattr(module, "router"):
            app.include_router(module.router)

    app.add_middleware(RequestTiming, histogram=health.REQUEST_LATENCY)

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ValidationError)
    async def invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(CrunchError)
    async def crunch_error(_: Request, exc: CrunchError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(OperationalError)
    async def busy(_: Request, exc: OperationalError) -> JSONResponse:
        # SQLite's "database is locked" after the busy timeout, a PostgreSQL deadlock or
        # serialisation failure, a dropped connection: the caller may retry.
        log.warning("store busy: %s", str(exc.orig).splitlines()[0][:200] if exc.orig else "")
        return JSONResponse({"detail": "the store is busy, retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(IntegrityError)
    async def conflict(_: Request, exc: IntegrityError) -> JSONResponse:
        # A concurrent write got there first (an id taken, a row erased meanwhile): a 409
        # naming the field and id, never a 500. Writes through routers._common.write say
        # which resource; this catches the others (erasure, consent, decision log, import).
        return JSONResponse({"detail": f"conflicts with a row stored meanwhile: "
                                       f"{conflict_message(exc)}; read it again"},
                            status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # A body that is not JSON (or not UTF-8) is bad input like any other: 422.
            return JSONResponse({"detail": [{"field": "body", "message":
                                             "not a JSON document (or not UTF-8)"}]}, 422)
        if exc.status_code == 405:
            # Starlette lists the methods of the first route of the path only.
            exc = StarletteHTTPException(405, exc.detail, headers={
                **(exc.headers or {}), "Allow": ", ".join(_methods_of(app, request.scope))})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    return app


class RequestTiming:
    """Pure ASGI middleware: every HTTP request's latency into ``histogram``, by route
    template, method and status.

    Not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the rest of
    the app in a task of its own and streams the response through a memory channel, a
    cost paid on every request.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = "500"  # an exception no handler answered

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router writes the matched route into the scope (unmatched: 404 paths).
            route = scope.get("route")
            self.histogram.labels(path=getattr(route, "path", "unmatched"),
                                  method=scope["method"], status=status
                                  ).observe(time.perf_counter() - t0)


def _methods_of(app: FastAPI, scope: dict) -> list[str]:
    """Every method the request's path answers to, over all routes (included ones too)."""
    methods: set[str] = set()
    for route in app.routes:
        contexts = (route.effective_route_contexts()
                    if hasattr(route, "effective_route_contexts") else [route])
        for ctx in contexts:
            match, _ = ctx.matches(scope)
            if match != Match.NONE:
                methods.update(getattr(ctx, "methods", None) or ())
    return sorted(methods)


def _registry_loader(settings: Settings) -> Callable:
    """The registry's champion (``training._mlflow``), read where the settings say."""
    return RegistryChampion(settings.tracking_uri, settings.home, store_url=settings.store_url)
