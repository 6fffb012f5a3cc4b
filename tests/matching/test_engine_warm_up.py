"""MatchingEngine.warm_up: the PageRank of first requests solved ahead, same lists."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support.matching_fixtures import simulated_fixture

from graph import NotFoundError

sim = simulated_fixture("warm_up", n_persons=300, n_missions=80, seed=5)


def _graph(engine):
    return engine.snapshot.extras["graph"].graph


def test_warm_up_makes_first_requests_solve_nothing(sim):
    cold, warm = sim.engine(), sim.engine()
    info = warm.warm_up()
    g = _graph(warm)
    n_seeds = g.nodes.size("area") + g.nodes.size("need")
    assert info["seeds"] == n_seeds and info["solved"] == 2 * n_seeds
    assert warm.warm_up()["solved"] == 0  # already warm
    misses = g.cache_info()["seed_misses"]
    for i, m in enumerate(sim.held_out[:5]):
        a = cold.shortlist(m["mission_id"], k=10, seed=i, explain=False)
        b = warm.shortlist(m["mission_id"], k=10, seed=i, explain=False)
        assert [c.candidate_id for c in a.candidates] == [c.candidate_id for c in b.candidates]
        np.testing.assert_allclose(a.scored["proximity"], b.scored["proximity"], rtol=1e-3,
                                   atol=1e-9)
    assert g.cache_info()["seed_misses"] == misses  # every seed was warm


def test_warm_up_of_given_missions_and_in_a_thread(sim):
    engine = sim.engine()
    mids = [m["mission_id"] for m in sim.held_out[:3]]
    thread = threading.Thread(target=engine.warm_up, kwargs={"mission_ids": mids})
    thread.start()
    lists = [engine.shortlist(mid, k=10, seed=1, explain=False) for mid in mids]
    thread.join()
    assert all(len(x.candidates) for x in lists)
    keys = {("area", engine.mission(m)["area_id"]) for m in mids} | {
        ("need", engine.mission(m)["need_type"]) for m in mids}
    assert _graph(engine).cache_info()["seed_size"] == 2 * len(keys)
    with pytest.raises(NotFoundError):
        engine.warm_up(["no such mission"])
