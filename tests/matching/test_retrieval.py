"""Retrieval's recall of the ranker's top 10 over the full eligible pool, measured on a
simulated community with the day-one prior and with a Ranker fitted on its training set."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support.matching_fixtures import candidate_set, simulated_fixture

import matching

TOP = 10


# 2,000 persons: most missions without a tight radius have more eligible persons than the pool
# retrieval keeps (300), so the cut is really made.
sim = simulated_fixture("retrieval", n_persons=2000, n_missions=250, seed=31)


@pytest.fixture(scope="module")
def rankers(sim):
    rows = sim.training_set().rows
    fitted = matching.Ranker(n_threads=1, random_state=0).fit(
        rows, rows["label"], times=rows["assigned_at"])
    return {"prior": matching.PriorRanker(), "fitted": fitted}


def recall(engines: dict[str, matching.MatchingEngine], missions: list[dict]
           ) -> tuple[dict[str, list[float]], int]:
    """Per mission where retrieval cuts (more eligible persons than its pool): the share of
    the ranker's own top 10 over every eligible candidate that each engine's retrieved pool
    holds (the engines share a ranker). Also: how many missions had ``TOP`` candidates."""
    first = next(iter(engines.values()))
    out: dict[str, list[float]] = {name: [] for name in engines}
    n = 0
    for m in missions:
        full = first.eligible(m, use_retrieval=False)
        if len(full.person_idx) + len(full.group_ids) < TOP:
            continue
        n += 1
        if len(full.person_idx) <= first.config.pool_size:
            continue
        scored = first.score(m, full.person_idx, full.group_ids)
        ids, _ = first.ranker.score_candidates(scored)
        top = set(ids[:TOP].tolist())
        for name, engine in engines.items():
            idx, groups = engine.retrieve(m, engine.eligible(m))
            pool = {cid for _, cid in candidate_set(engine, matching.Eligibility(idx, groups))}
            out[name].append(len(top & pool) / TOP)
    return out, n


@pytest.mark.parametrize("which", ["prior", "fitted"])
def test_retrieval_keeps_the_rankers_top_10(sim, rankers, which, record_property):
    ranker = rankers[which]
    engine = sim.engine(ranker)
    # For the record: the cheap score alone, cutting straight to the pool (no cascade).
    cheap_only = sim.engine(ranker, config=replace(engine.config, prefilter_size=0))
    found, n_missions = recall({"engine": engine, "cheap": cheap_only}, sim.held_out)
    got, cheap = found["engine"], found["cheap"]
    figure = float(np.mean(got))
    print(f"\nrecall@{TOP} of the {which} ranker's top {TOP} over {len(got)} missions where "
          f"retrieval cuts (of {n_missions}): {figure:.3f} (worst {min(got):.1f}); "
          f"cheap score alone: {np.mean(cheap):.3f} (worst {min(cheap):.1f})")
    record_property(f"retrieval_recall_{which}", figure)
    assert len(got) >= 15  # enough missions where the cut is made for the figure to mean much
    assert figure >= 0.95
    assert min(got) >= 0.7


def test_retrieval_returns_eligible_candidates_within_the_pool(sim):
    engine = sim.engine()
    cut = 0
    for m in sim.held_out:
        full = engine.eligible(m, use_retrieval=False)
        idx, groups = engine.retrieve(m, engine.eligible(m))
        assert set(idx.tolist()) <= set(full.person_idx.tolist())
        assert set(groups) <= set(full.group_ids)
        assert len(idx) <= engine.config.pool_size
        assert len(groups) <= engine.config.max_groups
        if len(full.person_idx) <= engine.config.pool_size and m["radius_km"] is not None:
            # Nothing to cut: the index gives back every eligible person of the radius.
            assert set(idx.tolist()) == set(full.person_idx.tolist())
        cut += len(full.person_idx) > engine.config.pool_size
    assert cut
