"""The feature registry: every feature's name, meaning, unit and sensitivity.

Explanations (shortlist reasons) and the fairness report read it. A feature marked
``special_category`` is derived from lived experience: it never appears in a reason shown to
a caller without the right to see it, and no wording may hint at it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["FEATURES", "FEATURE_NAMES", "FeatureSpec", "feature_registry", "FEATURE_SET_VERSION"]

# Bump whenever a feature is added, removed or changes meaning: models record it.
# fs-4: a pair tied in several kinds counts its strongest tie (was the sum of its kinds).
FEATURE_SET_VERSION = "fs-4"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a (mission, candidate) pair.

    ``family`` groups features for ablations (graph, lived_experience, latent_skill,
    track_record, text, logistics, group). ``reason`` is the plain-language phrase used when
    the feature speaks for a candidate (``None``: never used as a reason).
    """

    name: str
    meaning: str
    unit: str
    family: str
    special_category: bool = False
    reason: str | None = None


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("le_fit", "Fit between the person's lived experience and the mission's need, "
                "faded as their own outcomes arrive", "affinity in [-1, 1]", "lived_experience",
                special_category=True,
                reason="their own life experience is close to what this mission deals with"),
    FeatureSpec("le_weight", "How much the lived-experience prior still counts for this person "
                "(1 without outcomes, 0 from 5 verified outcomes on)", "share in [0, 1]",
                "lived_experience", special_category=True),
    FeatureSpec("n_outcomes", "Verified outcomes of the person before the mission", "count",
                "track_record"),
    FeatureSpec("tr_rate", "Success rate over past missions, smoothed towards the average",
                "probability", "track_record", reason="strong track record on past missions"),
    FeatureSpec("tr_rate_need", "Success rate on missions of this need type, smoothed",
                "probability", "track_record",
                reason="has succeeded on missions of this kind before"),
    FeatureSpec("tr_rate_family", "Success rate on related needs (same family), smoothed",
                "probability", "track_record", reason="has succeeded on related missions"),
    FeatureSpec("tr_recent", "Success rate with recent missions weighted more (half-life "
                "180 days), smoothed", "probability", "track_record",
                reason="recent missions went well"),
    FeatureSpec("days_since_last", "Days since the person's last verified outcome (3650 if "
                "none)", "days", "track_record"),
    FeatureSpec("skill_latent", "What the person's own outcomes add to their expected success "
                "on this need: empirical-Bayes posterior of a general, a need-family and a "
                "need skill, so that outcomes on related needs count (0 without outcomes)",
                "success points", "latent_skill", reason="skills shown on related missions"),
    FeatureSpec("skill_fit", "Success lift that people declaring the same skills showed on this "
                "need type (learned from past outcomes, shrunk towards the need family's, then "
                "towards 0)", "success points", "text",
                reason="their skills suit this kind of mission"),
    FeatureSpec("proximity", "Personalised PageRank from the mission's area and need over "
                "residence, ties, groups and past missions (no lived-experience edges)",
                "PageRank x number of nodes", "graph", reason="well connected in this area"),
    FeatureSpec("proximity_le", "Personalised PageRank including lived-experience edges, faded "
                "like le_fit", "PageRank x number of nodes", "graph", special_category=True),
    FeatureSpec("ties_succeeded", "Ties of the person who succeeded on this need type",
                "count", "graph", reason="people they know have succeeded on such missions"),
    FeatureSpec("ties_succeeded_w", "Same, weighted by tie strength", "weighted count", "graph"),
    FeatureSpec("ties_in_area", "Ties to residents of the mission's area: log(1 + summed tie "
                "weight)", "log weight", "graph", reason="knows people in this neighbourhood"),
    FeatureSpec("peers_rate", "Tie-weighted mean success rate (smoothed) of the people the "
                "person knows", "probability", "graph",
                reason="surrounded by people who succeed"),
    FeatureSpec("distance_km", "Distance from the person's area to the mission's area", "km",
                "logistics", reason="lives nearby"),
    FeatureSpec("same_area", "Lives in the mission's area", "0/1", "logistics",
                reason="lives in the neighbourhood"),
    FeatureSpec("availability_ratio", "Weekly availability over the mission's weekly minutes",
                "ratio", "logistics", reason="has the time this mission needs"),
    FeatureSpec("load", "Active assignments over capacity", "ratio", "logistics"),
    FeatureSpec("tenure_days", "Days since the person joined", "days", "logistics"),
    FeatureSpec("text_fit", "TF-IDF similarity between the mission's text and the person's "
                "skills (French and English)", "cosine in [0, 1]", "text",
                reason="their skills match the mission's description"),
    FeatureSpec("is_group", "The candidate is a peer group", "0/1", "group"),
    FeatureSpec("team_size", "Number of persons in the candidate", "persons", "group"),
    FeatureSpec("team_fit", "Team size within the mission's team_min..team_max", "0/1", "group"),
    FeatureSpec("group_cohesion", "Weighted density of ties among the group's members",
                "share in [0, 1]", "group", reason="a close-knit team"),
    FeatureSpec("group_reach", "Number of distinct people the members know", "persons", "group"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
_BY_NAME = {f.name: f for f in FEATURES}


def feature_registry() -> list[dict]:
    """The registry as plain dicts (for MLflow artifacts and docs)."""
    return [asdict(f) for f in FEATURES]


def spec(name: str) -> FeatureSpec:
    return _BY_NAME[name]
