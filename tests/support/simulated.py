"""A simulated community, imported into a SQLite store and read back: the start of many
module fixtures."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from graph import (
    CommunityFrames,
    import_bundle,
    load_frames,
    load_truth,
    open_store,
    simulate_bundle,
    sqlite_url,
)


def simulated_frames(folder: Path, persons: int, missions: int, seed: int, *,
                     fmt: str = "csv", db: str = "store.db"
                     ) -> tuple[CommunityFrames, pl.DataFrame]:
    """Simulate a bundle into ``folder / "bundle"``, import it into ``folder / db`` and return
    the store's frames and its truth; the bundle and the store stay in ``folder``."""
    simulate_bundle(folder / "bundle", persons, missions, seed=seed, fmt=fmt)
    store = open_store(sqlite_url(folder / db))
    try:
        import_bundle(store, folder / "bundle", show_progress=False)
        return load_frames(store), load_truth(store)
    finally:
        store.dispose()
