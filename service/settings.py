"""The one place that reads the environment (``CRUNCH_`` prefix)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from graph import sqlite_url

__all__ = ["Settings", "get_settings"]


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

    @property
    def store_url(self) -> str:
        return self.database_url or sqlite_url(self.home.resolve() / "community.db")


@lru_cache
def get_settings() -> Settings:
    return Settings()
