"""Every served list goes to the decision log: the ground of off-policy evaluation."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import insert

from graph import Shortlist, ShortlistCandidate, Store
from matching._engine import ShortlistResult

__all__ = ["record_shortlist"]


def record_shortlist(store: Store, result: ShortlistResult, requested_by: str,
                     mission_stored: bool = True) -> str:
    """Store ``result`` as a shortlist with its candidates; returns the shortlist id.

    A list served for a mission not stored (``mission_stored=False``) cannot reference it and
    is not logged: it cannot be evaluated off-policy either.
    """
    shortlist_id = f"SL-{uuid.uuid4().hex[:20]}"
    if not mission_stored:
        return shortlist_id
    # Core inserts (one row, then one executemany): the ORM's unit of work costs more than
    # the write itself on the /v1/match path.
    with store.session() as s:
        s.execute(insert(Shortlist), [dict(
            shortlist_id=shortlist_id, mission_id=result.mission_id,
            served_at=result.served_at, model_version=result.model_version,
            policy=result.policy, requested_by=requested_by,
            filters=json.dumps(result.filters, sort_keys=True, default=str))])
        if result.candidates:
            s.execute(insert(ShortlistCandidate), [dict(
                shortlist_id=shortlist_id, rank=c.rank,
                person_id=c.candidate_id if c.kind == "person" else None,
                group_id=c.candidate_id if c.kind == "group" else None,
                score=c.score, propensity=c.propensity) for c in result.candidates])
        # The decision log does not change the community: the store version stays, so
        # serving caches are not rebuilt by every served list.
    return shortlist_id
