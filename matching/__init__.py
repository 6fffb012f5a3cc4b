"""The serving path: hard rules, retrieval, ranker, shortlists, teams, allocation."""

from matching._allocate import (
    Allocation,
    AllocationCandidate,
    AllocationError,
    AllocationProblem,
    OpenMission,
    PersonCapacity,
    allocate,
)
from matching._allocation_wiring import (
    AllocatedCandidate,
    AllocationRun,
    allocate_open_missions,
    allocation_report_json,
)
from matching._decision_log import record_shortlist
from matching._engine import Candidate, MatchingEngine, ShortlistConfig, ShortlistResult
from matching._ranker import (
    PRIOR_VERSION,
    TRUSTED_SKOPS_TYPES,
    BaseRanker,
    PriorRanker,
    Ranker,
    load_ranker,
    payout_at_target,
)
from matching._retrieval import RetrievalIndex, cheap_scores
from matching._rules import Eligibility, MissionRules, VettingIndex, eligible_candidates
from matching._teams import MissionOffer, TeamSuggestion, missions_for, suggest_teams
from matching._training_set import (
    TrainingSet,
    build_training_set,
    labelled_assignments,
    snapshot_time,
)

__all__ = [
    "AllocatedCandidate",
    "Allocation",
    "AllocationCandidate",
    "AllocationError",
    "AllocationProblem",
    "AllocationRun",
    "MissionOffer",
    "OpenMission",
    "PersonCapacity",
    "TeamSuggestion",
    "allocate",
    "allocate_open_missions",
    "allocation_report_json",
    "missions_for",
    "suggest_teams",
    "PRIOR_VERSION",
    "TRUSTED_SKOPS_TYPES",
    "BaseRanker",
    "Candidate",
    "Eligibility",
    "MatchingEngine",
    "MissionRules",
    "PriorRanker",
    "Ranker",
    "RetrievalIndex",
    "ShortlistConfig",
    "ShortlistResult",
    "TrainingSet",
    "VettingIndex",
    "build_training_set",
    "cheap_scores",
    "eligible_candidates",
    "labelled_assignments",
    "load_ranker",
    "payout_at_target",
    "record_shortlist",
    "snapshot_time",
]
