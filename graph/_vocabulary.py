"""Built-in vocabularies: need types, tags, regimes, statuses.

A bundle may extend the open vocabularies (need types, lived-experience tags, skills,
tie, group and client kinds) through its optional ``vocabulary`` file. The closed ones
(statuses, pay rules, directions, vetting regimes and statuses) are part of the engine's
logic and cannot be extended by data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LIVED_EXPERIENCE_PRIOR_PATH",
    "lived_experience_needs",
    "load_lived_experience_prior",
    "CLOSED_KINDS",
    "OPEN_KINDS",
    "Vocabulary",
    "builtin_vocabulary",
]

# need_type -> (family, description). The family is what "related needs" means:
# skills are expected to transfer within a family more than across families.
NEED_TYPES: dict[str, tuple[str, str]] = {
    "school_absenteeism": ("education", "Reduce unjustified absences in a school or class"),
    "school_dropout": ("education", "Bring pupils who dropped out back to school or training"),
    "homework_support": ("education", "Help pupils with homework and reading"),
    "youth_internships": ("employment", "Find internships or apprenticeships for young people"),
    "job_search": ("employment", "Help long-term unemployed adults back into work"),
    "digital_inclusion": ("employment", "Teach people to use online public services"),
    "drug_outreach": ("health", "Reach current drug users and link them to care"),
    "harm_reduction": ("health", "Distribute harm-reduction material and advice"),
    "health_access": ("health", "Help people open health rights and see a doctor"),
    "elderly_isolation": ("social", "Break the isolation of elderly residents"),
    "homeless_outreach": ("social", "Reach people sleeping rough and link them to shelter"),
    "neighbourhood_mediation": ("social", "Calm conflicts between neighbours or groups"),
    "tenant_engagement": ("housing", "Get tenants involved in their building and estate"),
    "rent_arrears": ("housing", "Help tenants in arrears before eviction"),
    "parenting_support": ("family", "Support parents facing difficulties with their children"),
}

LIVED_EXPERIENCE: dict[str, str] = {
    "drug_use": "Past use of illegal drugs",
    "homelessness": "Has lived without a home",
    "long_unemployment": "Has been unemployed for more than a year",
    "incarceration": "Has served a prison sentence",
    "single_parent": "Has raised children alone",
    "large_family": "Has raised four or more children",
    "migration": "Has migrated to the country as an adult",
    "school_dropout": "Left school without a diploma",
    "care_leaver": "Grew up in child protection care",
    "disability": "Lives with a disability",
    "mental_illness": "Has lived with a mental illness",
    "debt": "Has been through over-indebtedness or eviction",
    "elderly_caregiver": "Has cared for an elderly relative",
}

SKILLS: dict[str, str] = {
    "teaching": "Explaining, tutoring, teaching",
    "mediation": "Resolving conflicts between people",
    "coaching": "Coaching and motivating individuals",
    "outreach": "Going towards people where they are",
    "networking": "Knows employers, institutions and associations",
    "admin": "Paperwork, forms and public services",
    "digital": "Computers, smartphones, online services",
    "languages": "Speaks several languages",
    "sports": "Runs sports or outdoor activities",
    "cooking": "Cooking and shared meals",
    "care": "Caring for elderly or sick people",
    "consulting": "Problem analysis, project management, reporting",
    "counselling": "Listening and counselling",
    "first_aid": "First aid and harm reduction",
}

VETTING_REGIMES: dict[str, str] = {
    "minors": "Check for working with minors (criminal record, sex-offender register)",
    "vulnerable_adults": "Check for working with vulnerable adults",
}

TIE_KINDS = {
    "peer": "Friend or peer",
    "family": "Family member",
    "neighbour": "Neighbour",
    "mentor": "Mentor and mentee",
    "colleague": "Has worked together on a mission or elsewhere",
}
GROUP_KINDS = {
    "peer": "Friends or peers who work together",
    "family": "Family members",
    "neighbours": "Neighbours of one building or street",
    "mixed": "A deliberately mixed team",
}
CLIENT_KINDS = {
    "city": "A city or local authority",
    "social_landlord": "A social housing landlord",
    "school": "A school or school network",
    "company": "A company",
    "association": "An association or foundation",
}

# Closed vocabularies: the engine's logic depends on them.
CLOSED: dict[str, dict[str, str]] = {
    "vetting_regime": VETTING_REGIMES,
    "vetting_status": {
        "valid": "Checked and valid between valid_from and expires_at",
        "pending": "Requested, not yet returned (excluded)",
        "expired": "No longer valid (excluded)",
        "revoked": "Withdrawn after a new fact (excluded)",
        "refused": "The check was refused (excluded)",
    },
    "mission_status": {
        "draft": "Being written, not yet offered",
        "open": "Looking for people",
        "staffed": "Team complete, not yet started",
        "measuring": "Running, inside its measurement window",
        "closed": "Measurement window over",
    },
    "assignment_status": {
        "offered": "Proposed to the person or group",
        "accepted": "Accepted, not yet started",
        "declined": "Declined (free, no penalty)",
        "active": "Working on the mission",
        "completed": "Finished",
        "withdrawn": "Withdrew (free, no penalty)",
    },
    "outcome_status": {
        "claimed": "Claimed by an engineer, waiting for the client",
        "verified": "Verified by the client: paid",
        "disputed": "Disputed by the client",
        "rejected": "Rejected by the client: not paid",
    },
    "pay_rule": {
        "per_unit": "unit_price for each unit of the outcome metric",
        "threshold": "fee once the target is met",
        "linear": "fee times the share of the way from baseline to target",
    },
    "direction": {
        "increase": "Higher values are better",
        "decrease": "Lower values are better",
    },
}

OPEN: dict[str, dict[str, str]] = {
    "need_type": {k: v[1] for k, v in NEED_TYPES.items()},
    "lived_experience": LIVED_EXPERIENCE,
    "skill": SKILLS,
    "tie_kind": TIE_KINDS,
    "group_kind": GROUP_KINDS,
    "client_kind": CLIENT_KINDS,
}

OPEN_KINDS = frozenset(OPEN)
CLOSED_KINDS = frozenset(CLOSED)


@dataclass
class Vocabulary:
    """The values allowed for each kind of tag, with a description each.

    ``need_family`` maps each need type to its family (related needs share one).
    """

    values: dict[str, dict[str, str]] = field(default_factory=dict)
    need_family: dict[str, str] = field(default_factory=dict)

    def allows(self, kind: str, value: str) -> bool:
        return value in self.values.get(kind, {})

    def declare(self, kind: str, value: str, description: str, parent: str | None = None) -> None:
        if kind not in OPEN_KINDS:
            raise ValueError(f"vocabulary kind {kind!r} cannot be extended")
        self.values.setdefault(kind, {})[value] = description
        if kind == "need_type":
            self.need_family[value] = parent or value

    def family(self, need_type: str) -> str:
        return self.need_family.get(need_type, need_type)


def builtin_vocabulary() -> Vocabulary:
    """A fresh copy of the engine's built-in vocabulary."""
    values = {k: dict(v) for k, v in {**OPEN, **CLOSED}.items()}
    return Vocabulary(values=values, need_family={k: v[0] for k, v in NEED_TYPES.items()})


# The documented, editable prior between lived experience and need types (DESIGN idea 2):
# features start from it, outcomes update it, and the community graph links a consenting
# person's experience to the needs it speaks to.
LIVED_EXPERIENCE_PRIOR_PATH = Path(__file__).with_name("lived_experience_prior.csv")
# Below this affinity a tag does not link a person to a need in the community graph.
GRAPH_AFFINITY_FLOOR = 0.3


def load_lived_experience_prior(
    path: Path = LIVED_EXPERIENCE_PRIOR_PATH,
) -> dict[tuple[str, str], float]:
    """(lived_experience tag, need_type) -> affinity in [-1, 1], from the documented table."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {
            (row["lived_experience"], row["need_type"]): float(row["affinity"])
            for row in csv.DictReader(fh)
        }


def lived_experience_needs(
    floor: float = GRAPH_AFFINITY_FLOOR, path: Path = LIVED_EXPERIENCE_PRIOR_PATH
) -> dict[str, tuple[str, ...]]:
    """Tag -> the need types it speaks to (prior affinity at least ``floor``)."""
    out: dict[str, list[str]] = {}
    for (tag, need), affinity in sorted(load_lived_experience_prior(path).items()):
        if affinity >= floor:
            out.setdefault(tag, []).append(need)
    return {tag: tuple(needs) for tag, needs in out.items()}
