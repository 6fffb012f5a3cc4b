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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from graph import CrunchError, NotFoundError, ValidationError, open_store
from service._provider import EngineProvider
from service.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("bigcrunch.service")


def create_app(settings: Settings | None = None, model_loader: Callable | None = None,
               poll: bool = True) -> FastAPI:
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
    """
    settings = settings or Settings()
    store = open_store(settings.store_url)
    provider = EngineProvider(store, loader=model_loader or _registry_loader(settings))

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

    # Every module of service/routers with a `router` is one resource.
    for info in sorted(pkgutil.iter_modules(routers.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"service.routers.{info.name}")
        if hasattr(module, "router"):
            app.include_router(module.router)

    @app.middleware("http")
    async def timing(request: Request, call_next):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        health.REQUEST_LATENCY.labels(
            path=getattr(route, "path", "unmatched"), method=request.method,
            status=str(response.status_code)).observe(time.perf_counter() - t0)
        return response

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
        # SQLite's "database is locked" after the busy timeout: the caller may retry.
        log.warning("store busy: %s", exc.orig)
        return JSONResponse({"detail": "the store is busy, retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    return app


def _registry_loader(settings: Settings) -> Callable:
    def load():  # noqa: ANN202
        try:
            from training import _mlflow
        except ImportError:  # the registry module is not part of this build yet
            return None
        return _mlflow.load_champion_for_service(settings.tracking_uri, settings.home)

    return load
