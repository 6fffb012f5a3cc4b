"""(mission, candidate) features as polars frames: one function for training and serving."""

from features._build import (
    MissionSpec,
    attach_graph,
    build_features,
    candidate_frame_schema,
    graph_signals,
)
from features._model import FeatureModel, assignment_results, load_le_prior
from features._registry import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    FEATURES,
    FeatureSpec,
    feature_registry,
)
from features._snapshot import LE_FADE_OUTCOMES, CommunitySnapshot, le_weight

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "LE_FADE_OUTCOMES",
    "CommunitySnapshot",
    "FeatureModel",
    "FeatureSpec",
    "MissionSpec",
    "assignment_results",
    "attach_graph",
    "graph_signals",
    "build_features",
    "candidate_frame_schema",
    "feature_registry",
    "le_weight",
    "load_le_prior",
]
