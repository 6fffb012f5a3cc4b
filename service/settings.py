"""The one place that reads the environment (``CRUNCH_`` prefix)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from graph import sqlite_url

__all__ = ["ApiKey", "Settings", "get_settings"]


class ApiKey(BaseModel):
    """One API key: who holds it, what scope it has, and for a client key, which client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: SecretStr
    holder: str
    scope: str
    client_id: str | None = None

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if v not in ("platform", "engineer", "client", "data", "admin"):
            raise ValueError(f"unknown scope {v!r}")
        return v

    @model_validator(mode="after")
    def _client(self) -> ApiKey:
        if (self.scope == "client") != (self.client_id is not None):
            raise ValueError("a client key names its client_id, and only a client key does")
        return self


class Settings(BaseSettings):
    """Settings of the engine, read from ``CRUNCH_*`` environment variables.

    Parameters
    ----------
    home : Path
        Folder for the default SQLite store, MLflow files and caches (``CRUNCH_HOME``).
    database_url : str or None
        Community store URL (``CRUNCH_DATABASE_URL``); default a SQLite file in ``home``.
    """

    model_config = SettingsConfigDict(env_prefix="CRUNCH_", extra="ignore")

    home: Path = Path(".crunch")
    database_url: str | None = None
    demo_persons: int = 5000
    demo_missions: int = 1500
    demo_seed: int = 7
    # API keys, as JSON in CRUNCH_API_KEYS: [{"key": ..., "holder": ..., "scope": ...,
    # "client_id": ...}]. No key configured: the API answers 401 to everything.
    api_keys: list[ApiKey] = []
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    model_poll_seconds: float = 30.0
    # Warm every engine up (the PageRank of every area and need type) once built, so that
    # first requests do not solve it (CRUNCH_WARM_UP=false: they do; ~200 MB less at 100k).
    warm_up: bool = True
    mlflow_tracking_uri: str | None = None

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a SQLite file in home
        (never the community store's database)."""
        import os

        return (os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow_tracking_uri
                or f"sqlite:///{self.home.resolve() / 'mlflow.db'}")

    @property
    def store_url(self) -> str:
        return self.database_url or sqlite_url(self.home.resolve() / "community.db")


@lru_cache
def get_settings() -> Settings:
    return Settings()
