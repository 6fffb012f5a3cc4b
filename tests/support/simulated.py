"""A simulated community, imported into a SQLite store: the start of many module fixtures."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from graph import (
    CommunityFrames,
    Store,
    import_bundle,
    load_frames,
    load_truth,
    open_store,
    simulate_bundle,
    sqlite_url,
)


def simulated_store(folder: Path, persons: int, missions: int, seed: int, *,
                    fmt: str = "csv", db: str = "store.db") -> Store:
    """Simulate a bundle into ``folder / "bundle"`` and import it into ``folder / db``;
    returns the open store (the caller disposes of it)."""
    simulate_bundle(folder / "bundle", persons, missions, seed=seed, fmt=fmt)
    store = open_store(sqlite_url(folder / db))
    import_bundle(store, folder / "bundle", show_progress=False)
    return store


def simulated_frames(folder: Path, persons: int, missions: int, seed: int, *,
                     fmt: str = "csv", db: str = "store.db"
                     ) -> tuple[CommunityFrames, pl.DataFrame]:
    """:func:`simulated_store`, read back: the store's frames and its truth (the bundle and
    the store stay in ``folder``)."""
    store = simulated_store(folder, persons, missions, seed, fmt=fmt, db=db)
    try:
        return load_frames(store), load_truth(store)
    finally:
        store.dispose()
