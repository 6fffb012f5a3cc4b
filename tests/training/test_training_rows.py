"""Training rows and held-out missions come only from missions whose measurement was complete.

On the simulated city a successful per-unit result is reported during the mission's window
and a failure only after its end (up to two weeks): missions still waiting for a report
would bring their early successes without their late failures.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from support.simulated import simulated_frames

from features import FeatureModel
from training import default_split, measured_missions, training_rows
from training._evaluate import data_end, heldout_missions


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    frames, _ = simulated_frames(tmp_path_factory.mktemp("rows"), 1200, 400, seed=3)
    split_at = default_split(frames)
    return frames, split_at, FeatureModel(seed=0).fit(frames, split_at)


def _waiting(frames, at):
    """Missions with a completed assignment that had no final outcome before ``at``."""
    reported = frames.outcomes.filter(
        (pl.col("measured_at") < at) & pl.col("status").is_in(["verified", "rejected"])
    )["assignment_id"]
    return set(frames.assignments.filter(
        (pl.col("status") == "completed") & ~pl.col("assignment_id").is_in(reported.implode())
    )["mission_id"].to_list())


def test_measured_missions(city):
    frames, split_at, _ = city
    measured = set(measured_missions(frames, split_at).to_list())
    ends = dict(frames.missions.select("mission_id", "ends_at").iter_rows())
    waiting = _waiting(frames, split_at)
    assert measured and waiting  # near the split some missions still wait for a report
    assert all(ends[m] <= split_at for m in measured)
    ended = {m for m, e in ends.items() if e <= split_at}
    # the simulator reports within two weeks of the end: older missions count even when an
    # outcome of theirs is never reviewed; recent ones only once complete
    old = {m for m in ended if ends[m] <= split_at - timedelta(days=14)}
    recent = {m for m in ended if ends[m] > split_at - timedelta(days=13)}
    assert old <= measured and old & waiting  # some outcomes are never reviewed
    assert recent & waiting and recent & measured == recent - waiting
    assert measured_missions(frames, frames.missions["created_at"].min()).len() == 0


def test_only_measured_missions_train(city):
    frames, split_at, fm = city
    rows = training_rows(frames, fm, split_at).rows
    every = training_rows(frames, fm, split_at, measured_only=False).rows
    measured = measured_missions(frames, split_at).implode()
    assert rows.height > 0 and rows["mission_id"].is_in(measured).all()
    left_out = every.filter(~pl.col("mission_id").is_in(measured))
    assert left_out.height > 0 and rows.height + left_out.height == every.height
    # what is left out is the censored slice: successes reported early, failures not yet
    assert left_out["label"].mean() > rows["label"].mean()


def test_heldout_missions_are_measured(city):
    frames, split_at, _ = city
    held = heldout_missions(frames, split_at)
    closed = frames.missions.filter((pl.col("created_at") >= split_at)
                                    & (pl.col("status") == "closed"))
    assert 0 < held.height < closed.height
    # the simulator reports every outcome before its snapshot, but reviews the last ones
    # late: a mission whose completed assignment has only a claimed outcome still waits
    claimed_only = (frames.assignments.filter(pl.col("status") == "completed")
                    .join(frames.outcomes.filter(pl.col("status").is_in(["verified",
                                                                         "rejected"])),
                          on="assignment_id", how="anti")["mission_id"].unique())
    end = data_end(frames)
    ends = dict(frames.missions.select("mission_id", "ends_at").iter_rows())
    left_out = set(closed["mission_id"].to_list()) - set(held["mission_id"].to_list())
    assert left_out and left_out <= set(claimed_only.to_list())
    assert all(ends[m] > end - timedelta(days=15) for m in left_out)
    # a store cut just after the split: its recently ended missions wait for their failures
    cut = frames.as_of(split_at + timedelta(days=150))  # missions last 40-213 days
    end = data_end(cut)
    ends_cut = dict(cut.missions.select("mission_id", "ends_at").iter_rows())
    held_cut = set(heldout_missions(cut, split_at)["mission_id"].to_list())
    waiting = _waiting(cut, end + timedelta(microseconds=1))
    ended = set(cut.missions.filter((pl.col("created_at") >= split_at)
                                    & (pl.col("status") == "closed")
                                    & (pl.col("ends_at") <= end))["mission_id"].to_list())
    recent = {m for m in ended if ends_cut[m] > end - timedelta(days=13)}
    assert recent & waiting  # some of them are still waiting for a report
    assert ended - waiting <= held_cut and not held_cut & recent & waiting
