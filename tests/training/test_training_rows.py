"""Training rows come only from missions whose measurement was complete at the split.

On the simulated city a successful per-unit result is reported during the mission's window
and a failure only after its end: missions still open at the split would bring their early
successes without their late failures.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from features import FeatureModel
from graph import import_bundle, load_frames, open_store, simulate_bundle, sqlite_url
from training import default_split, training_rows
from training._evaluate import data_end, heldout_missions
from training._pipeline import REPORT_DELAY_QUANTILE, report_delay


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    simulate_bundle(root / "bundle", 1200, 400, seed=3)
    store = open_store(sqlite_url(root / "store.db"))
    import_bundle(store, root / "bundle", show_progress=False)
    frames = load_frames(store)
    store.dispose()
    split_at = default_split(frames)
    return frames, split_at, FeatureModel(seed=0).fit(frames, split_at)


def test_report_delay_is_the_quantile_of_reporting_lags(city):
    frames, split_at, _ = city
    delay = report_delay(frames, split_at)
    # per assignment: how long after its mission's end its last outcome was reported
    lags = (frames.verified_outcomes().filter(pl.col("measured_at") < split_at)
            .group_by("assignment_id", "mission_id").agg(pl.col("measured_at").max())
            .join(frames.missions.select("mission_id", "ends_at"), on="mission_id")
            .select((pl.col("measured_at") - pl.col("ends_at")).dt.total_seconds()
                    .clip(lower_bound=0))).to_series()
    assert timedelta(days=7) < delay <= timedelta(days=14)  # the simulator: up to 2 weeks
    assert (lags <= delay.total_seconds()).mean() >= REPORT_DELAY_QUANTILE
    assert (lags < delay.total_seconds()).mean() < REPORT_DELAY_QUANTILE
    assert report_delay(frames, frames.missions["created_at"].min()) == timedelta(0)


def test_heldout_missions_are_measured(city):
    frames, split_at, _ = city
    held = heldout_missions(frames, split_at)
    end = data_end(frames)
    delay = report_delay(frames, end)
    closed = frames.missions.filter((pl.col("created_at") >= split_at)
                                    & (pl.col("status") == "closed"))
    assert 0 < held.height < closed.height  # the missions that ended last are left out
    assert (held["ends_at"] <= end - delay).all()
    late = closed.filter(~pl.col("mission_id").is_in(held["mission_id"].implode()))
    assert (late["ends_at"] > end - delay).all()


def test_only_measured_missions_train(city):
    frames, split_at, fm = city
    rows = training_rows(frames, fm, split_at).rows
    every = training_rows(frames, fm, split_at, measured_only=False).rows
    closed_by = split_at - report_delay(frames, split_at)
    ends = dict(frames.missions.select("mission_id", "ends_at").iter_rows())
    assert rows.height > 0
    assert all(ends[m] <= closed_by for m in rows["mission_id"].unique().to_list())
    left_out = every.filter(~pl.col("mission_id").is_in(rows["mission_id"].unique().implode()))
    assert left_out.height > 0
    assert all(ends[m] > closed_by for m in left_out["mission_id"].unique().to_list())
    # what is left out is the censored slice: successes reported early, failures not yet
    assert left_out["label"].mean() > rows["label"].mean()
