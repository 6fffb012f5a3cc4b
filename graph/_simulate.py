"""The synthetic community: a city-like bundle with the ground truth it was drawn from.

The simulator builds a city (areas on a planar grid around Lyon), the people who live there
(their lived experience depends on their area; professionals have little or none), their ties
and peer groups, clients and missions over 18 months, then runs an exploring *logging policy*
that serves shortlists, makes offers and records propensities, and finally draws outcomes from a
hidden model of who succeeds where. Everything the engine may see goes into the bundle; the
hidden model is only visible through the ``truth`` file (``p_success`` of every assigned pair and
of every eligible candidate of the last 20 % of missions).

``docs/simulator.md`` describes the model, its effect sizes (the constants below), the hard
eligibility rules and the logging policy.

Examples
--------
>>> frames = simulate_community(300, 60, seed=1)
>>> sorted(frames)[:3]
['area_links', 'areas', 'assignments']
>>> frames["persons"].height
300
"""

from __future__ import annotations

import heapq
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from scipy import sparse

from graph._bundle_schema import write_bundle
from graph._payout import PayRule, payout_for, success_for
from graph._vocabulary import LIVED_EXPERIENCE, NEED_TYPES, SKILLS

__all__ = [
    "HELD_OUT_SHARE",
    "MODEL_VERSION",
    "POLICY",
    "REQUESTED_BY",
    "START",
    "SNAPSHOT",
    "haversine_km",
    "simulate_bundle",
    "simulate_community",
]

# --- timeline (seconds since the epoch, UTC; never the wall clock) --------------------------
DAY = 86_400
START = 1_735_689_600  # 2025-01-01T00:00:00Z: the first mission is created on or after it
MISSION_SPAN_DAYS = 548  # missions are created over 18 months
SNAPSHOT_LAG_DAYS = 91  # the bundle is a snapshot ~3 months after the last mission is created
SNAPSHOT = START + (MISSION_SPAN_DAYS + SNAPSHOT_LAG_DAYS) * DAY
JOIN_SPAN_DAYS = 4 * 365  # persons joined over the four years before START
HELD_OUT_SHARE = 0.2  # truth covers every eligible candidate of the last 20 % of missions

# --- the city ----------------------------------------------------------------------------------
CITY_LAT, CITY_LON = 45.7640, 4.8357  # Lyon
KM_PER_DEG_LAT = 111.32
EARTH_RADIUS_KM = 6371.0
AREA_SPACING_KM = 0.9  # grid step between neighbouring area centroids
AREA_JITTER = 0.2  # centroid jitter, as a share of the step
PERSONS_PER_AREA = 450
MIN_AREAS = 8
AREA_NAMES = (
    "Guillotiere", "Croix-Rousse", "Gerland", "Monplaisir", "Vaise", "La Duchere", "Brotteaux",
    "Montchat", "Perrache", "Saint-Rambert", "Le Tonkin", "Les Minguettes", "Mermoz", "Parilly",
    "Mas du Taureau", "La Saulaie", "Etats-Unis", "Grange Blanche", "Saint-Jean", "Terreaux",
    "Bellecour", "Part-Dieu", "Villette", "Sans Souci", "Laennec", "Bachut", "Gorge de Loup",
    "Saint-Just", "Fourviere", "Menival", "Champvert", "Point du Jour", "Debourg", "Jean Mace",
    "Saxe", "Charpennes", "Cusset", "Grandclement", "Les Buers", "Vernay", "Pierre-Benite",
    "Le Prainet", "Les Sources", "La Soie", "Mi-Plaine", "Bel Air", "Les Plantees", "Vieux Lyon",
)

# --- persons -----------------------------------------------------------------------------------
NEEDS = tuple(NEED_TYPES)
FAMILIES = tuple(dict.fromkeys(fam for fam, _ in NEED_TYPES.values()))
NEED_FAMILY = np.array([FAMILIES.index(NEED_TYPES[n][0]) for n in NEEDS])
TAGS = tuple(LIVED_EXPERIENCE)
SKILL_NAMES = tuple(SKILLS)

# Archetypes only drive generation; they are not written anywhere. Residents carry the
# area's lived experience; the others (consultants, retirees, parents, students) little.
ARCHETYPES = ("resident", "consultant", "retiree", "parent", "student")
ARCHETYPE_SHARES = (0.60, 0.10, 0.12, 0.12, 0.06)
ARCHETYPE_DEPRIVATION_PULL = (0.4, -0.8, 0.0, 0.1, -0.2)  # where they live
ARCHETYPE_AVAILABILITY = (420, 240, 720, 300, 360)  # median minutes per week when active
PAUSED_SHARE = 0.30  # availability 0: registered but not taking missions now
CONSENT_LIVED_EXPERIENCE_SHARE = 0.70
NO_CONSENT_MATCHING_SHARE = 0.03
MAX_CONCURRENT = ((1, 2, 3), (0.5, 0.35, 0.15))

# Lived-experience prevalence of a resident of an average area, the loading of each tag on
# the area's deprivation, and the archetype offsets (logit scale).
TAG_BASE = {
    "drug_use": 0.08, "homelessness": 0.06, "long_unemployment": 0.18, "incarceration": 0.04,
    "single_parent": 0.12, "large_family": 0.10, "migration": 0.15, "school_dropout": 0.12,
    "care_leaver": 0.04, "disability": 0.06, "mental_illness": 0.07, "debt": 0.10,
    "elderly_caregiver": 0.10,
}
TAG_DEPRIVATION = {
    "drug_use": 0.8, "homelessness": 0.8, "long_unemployment": 0.7, "incarceration": 0.6,
    "single_parent": 0.4, "large_family": 0.5, "migration": 0.6, "school_dropout": 0.6,
    "care_leaver": 0.3, "disability": 0.1, "mental_illness": 0.3, "debt": 0.6,
    "elderly_caregiver": -0.2,
}
AREA_TAG_NOISE = 0.5  # some areas have more of one thing (drug use, homelessness) than others
HARDSHIP_LOADING = 0.8  # a person-level factor shared by all tags (they co-occur)
ARCHETYPE_TAG_OFFSET = {
    "resident": ({}, 0.0),
    "consultant": ({}, -2.5),
    "retiree": ({"elderly_caregiver": 2.0, "large_family": 0.8}, -1.5),
    "parent": ({"large_family": 1.8, "single_parent": 1.3}, -1.0),
    "student": ({"migration": 0.8}, -1.5),
}

ARCHETYPE_SKILL_WEIGHT = {  # relative odds of declaring each skill, in SKILL_NAMES order
    #            teach med  coach outr netw admin digi lang sport cook care cons couns aid
    "resident": (1.0, 1.0, 1.0, 1.2, 0.8, 0.7, 0.8, 1.0, 1.0, 1.2, 1.0, 0.2, 0.8, 0.7),
    "consultant": (0.8, 0.7, 1.2, 0.3, 1.5, 1.5, 1.5, 0.8, 0.5, 0.4, 0.2, 3.0, 0.5, 0.3),
    "retiree": (1.5, 1.0, 0.8, 0.6, 1.0, 1.2, 0.3, 0.6, 0.4, 1.5, 2.0, 0.5, 1.2, 0.6),
    "parent": (1.3, 1.0, 1.0, 0.8, 0.8, 1.0, 0.8, 0.8, 1.0, 1.3, 1.0, 0.4, 1.0, 0.8),
    "student": (1.5, 0.7, 0.8, 1.0, 0.6, 0.6, 2.0, 1.2, 1.5, 0.6, 0.4, 0.6, 0.5, 1.0),
}
SKILL_FAMILY = {  # the need family a declared skill reveals (None: general or language)
    "teaching": "education", "sports": "education", "coaching": "employment",
    "networking": "employment", "digital": "employment", "outreach": "health",
    "first_aid": "health", "care": "social", "mediation": "social", "cooking": "social",
    "admin": "housing", "counselling": "family", "languages": None, "consulting": None,
}
SKILL_DECLARE_LINK = 0.9  # how much a latent family skill raises the odds of declaring it
SKILL_EXTRA_RELEVANCE = {  # declared skill -> need: relevance beyond its own family
    ("languages", "digital_inclusion"): 0.5, ("languages", "health_access"): 0.5,
    ("languages", "job_search"): 0.5, ("sports", "school_dropout"): 0.5,
    ("sports", "neighbourhood_mediation"): 0.5, ("cooking", "elderly_isolation"): 0.5,
    ("cooking", "homeless_outreach"): 0.5,
}
CONSULTING_RELEVANCE = 0.3  # consulting is a little relevant to every need

# --- ties and peer groups ----------------------------------------------------------------------
TIE_ROWS_PER_PERSON = 7.5  # tie rows / persons (100k persons -> ~750k ties)
TIE_OVERDRAW = 1.04  # stubs drawn per wanted row (self ties and duplicates are dropped)
TIE_MODES = ("same_area", "next_area", "experience", "anywhere")
TIE_MODE_SHARES = (0.50, 0.20, 0.15, 0.15)  # homophily by area and by lived experience
TIE_KINDS = ("peer", "family", "neighbour", "mentor", "colleague")
TIE_KIND_BY_MODE = (  # probabilities over TIE_KINDS for each mode
    (0.35, 0.25, 0.40, 0.00, 0.00),
    (0.70, 0.00, 0.00, 0.00, 0.30),
    (0.60, 0.00, 0.00, 0.40, 0.00),
    (0.40, 0.00, 0.00, 0.10, 0.50),
)
TIE_WEIGHT_BETA = ((2, 2), (5, 2), (2, 3), (3, 2), (2, 4))  # Beta(a, b) per kind
SOCIABILITY_SIGMA = 0.5  # lognormal spread of how many ties people have
PERSONS_PER_GROUP = 10  # one peer group per 10 persons
GROUP_SIZES = ((2, 3, 4, 5, 6), (0.40, 0.28, 0.16, 0.10, 0.06))
GROUP_KINDS = ("peer", "family", "neighbours", "mixed")

# --- vetting -----------------------------------------------------------------------------------
VETTING_BASE = {"minors": 0.08, "vulnerable_adults": 0.07}
VETTING_SKILLS = {
    "minors": ("teaching", "sports", "coaching", "counselling"),
    "vulnerable_adults": ("care", "first_aid", "outreach", "counselling"),
}
VETTING_SKILL_BOOST = 0.25
VETTING_STATUSES = (("valid", "expired", "pending", "revoked", "refused"),
                    (0.72, 0.12, 0.10, 0.04, 0.02))
VETTING_RENEWAL = 0.5  # share of expired checks followed by a valid renewal
VETTING_YEARS = 3

# --- clients and missions ----------------------------------------------------------------------
CLIENT_KINDS = ("city", "social_landlord", "school", "company", "association")
CLIENT_KINDS_BY_FAMILY = {
    "education": ("school", "city", "association"),
    "employment": ("city", "company", "association"),
    "health": ("city", "association"),
    "social": ("city", "association", "social_landlord"),
    "housing": ("social_landlord", "city"),
    "family": ("city", "association", "school"),
}
TEAMS = (((1, 1), (1, 2), (1, 3), (2, 4), (2, 3)), (0.45, 0.30, 0.07, 0.12, 0.06))
MINUTES_PER_DAY = ((30, 60, 90, 120, 180, 240), (0.10, 0.30, 0.20, 0.20, 0.12, 0.08))
DAYS_PER_WEEK = ((1, 2, 3, 4, 5), (0.25, 0.30, 0.20, 0.10, 0.15))
RADII_KM = ((1.0, 1.5, 2.0, None), (0.30, 0.35, 0.28, 0.07))
NEED_VETTING = {  # need -> (regime, share of its missions that require it)
    "school_absenteeism": ("minors", 0.85), "school_dropout": ("minors", 0.85),
    "homework_support": ("minors", 0.85), "youth_internships": ("minors", 0.5),
    "parenting_support": ("minors", 0.3), "elderly_isolation": ("vulnerable_adults", 0.9),
    "health_access": ("vulnerable_adults", 0.7), "homeless_outreach": ("vulnerable_adults", 0.7),
    "drug_outreach": ("vulnerable_adults", 0.4), "harm_reduction": ("vulnerable_adults", 0.3),
}
EXTRA_TEAMS_MEAN = 2.6  # teams wanted per mission: 1 + Poisson(this) (groups only: halved)
LONG_START_SHARE = 0.2  # missions that start long after creation (next school term, ...)
START_DELAY_DAYS = ((5, 30), (30, 120))
DURATION_DAYS = (28, 120)
OUTCOME_LAG_DAYS = 14  # outcomes are reported up to two weeks after the window

# Need -> (metric, kind, direction, pay rules allowed, price or fee range).
# kind "count": baseline 0 and one outcome row per unit; "rate": a level to move.
NEED_METRICS = {
    "school_absenteeism": ("unjustified absence rate", "rate", "decrease", (0.10, 0.25)),
    "school_dropout": ("pupils back in school or training", "count", "increase", (150, 300)),
    "homework_support": ("share of pupils reading at grade level", "rate", "increase",
                         (0.35, 0.60)),
    "youth_internships": ("young people placed in an internship", "count", "increase",
                          (80, 150)),
    "job_search": ("adults in work for three months", "count", "increase", (250, 500)),
    "digital_inclusion": ("people using online services on their own", "count", "increase",
                          (20, 40)),
    "drug_outreach": ("users linked to care", "count", "increase", (60, 120)),
    "harm_reduction": ("share of contacts using safer equipment", "rate", "increase",
                       (0.20, 0.45)),
    "health_access": ("health rights opened", "count", "increase", (40, 80)),
    "elderly_isolation": ("isolated residents visited every week", "count", "increase",
                          (30, 60)),
    "homeless_outreach": ("people sheltered or housed", "count", "increase", (100, 200)),
    "neighbourhood_mediation": ("complaints per month", "rate", "decrease", (8, 20)),
    "tenant_engagement": ("share of tenants at the estate meetings", "rate", "increase",
                          (0.05, 0.15)),
    "rent_arrears": ("households with a repayment plan", "count", "increase", (60, 120)),
    "parenting_support": ("families completing the programme", "count", "increase", (80, 150)),
}
RATE_RULES = (("threshold", "linear"), (0.55, 0.45))
FEE_RANGE = (500, 2000)
UNITS_EXTRA_MEAN = 1.3  # a successful per-unit team places 1 + Poisson(this) units
MAX_ROWS_PER_ASSIGNMENT = 5  # per-unit outcome rows of one team (the last row holds the rest)

# --- the ground truth: logit of p_success -----------------------------------------------------
INTERCEPT = -2.2
DIFFICULTY_SD = 0.4  # mission-level difficulty, on top of the need's own
NEED_DIFFICULTY = {  # harder needs have lower success whoever takes them
    "job_search": 0.3, "homeless_outreach": 0.3, "drug_outreach": 0.2, "school_dropout": 0.2,
    "rent_arrears": 0.1, "digital_inclusion": -0.3, "homework_support": -0.2,
    "elderly_isolation": -0.2,
}
SKILL_W_GENERAL, SKILL_W_FAMILY, SKILL_W_NEED = 0.45, 0.65, 0.60  # latent skill structure
ARCHETYPE_SKILL_SHIFT = {  # archetype -> family -> shift of latent skill (in SDs)
    "consultant": {"employment": 0.3, "housing": 0.2},
    "retiree": {"social": 0.3},
    "parent": {"family": 0.3, "education": 0.2},
    "student": {"education": 0.2},
}
SKILL_EFFECT = 1.2  # per SD of the person's latent skill for the need
LIVED_EXPERIENCE_EFFECT = 2.0  # times the true affinity of their best-fitting tag (0..1)
SAME_AREA_EFFECT = 0.5  # lives in the mission's area
NEXT_AREA_EFFECT = 0.25  # lives in an area linked to it
TIES_INTO_AREA_EFFECT = 0.35  # times log(1 + summed tie weight to residents of the area)
PEER_EFFECT = 0.3  # per SD of the tie-weighted quality of their peers
AVAILABILITY_EFFECT = 0.3  # times log2 of availability over need, capped at 4x
GROUP_COHESION_EFFECT = 1.0  # times (cohesion - GROUP_COHESION_CENTRE)
GROUP_COHESION_CENTRE = 0.35
GROUP_BEST_SKILL_EFFECT = 0.3  # times (best member's skill - members' mean skill)
P_SUCCESS_CLIP = (0.02, 0.95)

# True affinity between lived experience and needs (the hidden part of the model).
TRUE_AFFINITY = {
    "drug_use": {"drug_outreach": 1.0, "harm_reduction": 1.0, "health_access": 0.4,
                 "homeless_outreach": 0.4},
    "homelessness": {"homeless_outreach": 1.0, "rent_arrears": 0.4, "health_access": 0.4,
                     "drug_outreach": 0.3},
    "long_unemployment": {"job_search": 1.0, "youth_internships": 0.5, "digital_inclusion": 0.3},
    "incarceration": {"neighbourhood_mediation": 0.6, "school_dropout": 0.5, "drug_outreach": 0.4,
                      "youth_internships": 0.3},
    "single_parent": {"parenting_support": 0.8, "school_absenteeism": 0.4, "rent_arrears": 0.3},
    "large_family": {"school_absenteeism": 1.0, "parenting_support": 0.8,
                     "homework_support": 0.5},
    "migration": {"health_access": 0.6, "digital_inclusion": 0.4, "job_search": 0.3,
                  "neighbourhood_mediation": 0.3},
    "school_dropout": {"school_dropout": 1.0, "youth_internships": 0.6,
                       "school_absenteeism": 0.5},
    "care_leaver": {"school_dropout": 0.5, "homeless_outreach": 0.4, "parenting_support": 0.3},
    "disability": {"health_access": 0.6, "digital_inclusion": 0.3},
    "mental_illness": {"health_access": 0.5, "homeless_outreach": 0.4, "drug_outreach": 0.3,
                       "elderly_isolation": 0.3},
    "debt": {"rent_arrears": 1.0, "tenant_engagement": 0.4, "job_search": 0.3},
    "elderly_caregiver": {"elderly_isolation": 1.0, "health_access": 0.3},
}

# --- the logging policy ------------------------------------------------------------------------
MODEL_VERSION = "sim-logging-v1"
POLICY = "softmax-explore"
REQUESTED_BY = "simulator"
SHORTLIST_SIZE = 10
TEMPERATURE = 0.5  # Plackett-Luce weights exp(score / TEMPERATURE)
SCORE_NOISE = 0.5  # the policy's own noise on its heuristic score
H_FIT, H_SKILL, H_PROXIMITY, H_EXPERIENCE, H_AVAILABILITY, H_GROUP = 1.0, 0.5, 0.6, 1.0, 0.3, 0.2
MC_REPLICATIONS = 48
PROPENSITY_FLOOR = 1e-3
MC_STREAM = 7_001  # seed stream of the Monte Carlo propensity estimates
REASK_SHARE = 0.8  # share of missions with declines that get a second shortlist
HAND_PICK_SHARE = 0.22  # missions where the engineer adds one pick by hand (~5 % of rows)
WITHDRAW_SHARE = 0.04
RESPONSIVENESS_BETA = (6.0, 1.5)  # each person's chance of accepting an offer

# --- outcomes ---------------------------------------------------------------------------------
OUTCOME_STATUSES = (("verified", "claimed", "disputed", "rejected"), (0.95, 0.02, 0.015, 0.015))
RECENT_CLAIMED_SHARE = 0.4  # outcomes of the last two weeks still waiting for the client


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *more]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.log(p / (1.0 - p))


def _ids(prefix: str, n: int, width: int | None = None) -> list[str]:
    """Zero-padded ids, so that string order is index order."""
    w = width or max(4, len(str(n)))
    return [f"{prefix}{i + 1:0{w}d}" for i in range(n)]


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray):
    """Great-circle distance in km (the distance rule of eligibility)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(lon2) - np.radians(lon1)
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def _choice(rng: np.random.Generator, spec: tuple, size: int) -> np.ndarray:
    values, probs = spec
    return rng.choice(len(values), size=size, p=np.asarray(probs) / np.sum(probs))


def _segments(ptr: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the CSR rows ``sel`` and the row (0..len(sel)-1) of each."""
    starts = ptr[sel]
    lens = ptr[sel + 1] - starts
    seg = np.repeat(np.arange(len(sel)), lens)
    offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + offs, seg


# ------------------------------------------------------------------------------------------------
@dataclass
class _World:
    """Everything the simulator knows, hidden parts included (never written as such)."""

    seed: int
    n: int
    # city
    area_ids: list[str] = field(default_factory=list)
    area_names: list[str] = field(default_factory=list)
    lat: np.ndarray = None
    lon: np.ndarray = None
    links: np.ndarray = None  # (L, 2), a < b
    adjacent: np.ndarray = None  # (A, A) bool
    dist: np.ndarray = None  # (A, A) km
    deprivation: np.ndarray = None
    # persons
    person_ids: list[str] = field(default_factory=list)
    area: np.ndarray = None
    archetype: np.ndarray = None
    joined: np.ndarray = None
    avail: np.ndarray = None
    max_concurrent: np.ndarray = None
    consent_matching: np.ndarray = None
    consent_le: np.ndarray = None
    tags: np.ndarray = None  # (n, T) true lived experience (hidden unless consented)
    declared: np.ndarray = None  # (n, S) declared skills
    skill: np.ndarray = None  # (n, N) latent skill per need
    fit_true: np.ndarray = None  # (n, N) true lived-experience affinity
    fit_public: np.ndarray = None  # (n, N) the policy's prior on consented tags
    skill_match: np.ndarray = None  # (n, N) declared skills relevant to the need
    responsiveness: np.ndarray = None
    general: np.ndarray = None
    peer_quality: np.ndarray = None
    by_area: np.ndarray = None
    area_ptr: np.ndarray = None
    # ties
    tie_a: np.ndarray = None
    tie_b: np.ndarray = None
    tie_kind: np.ndarray = None
    tie_weight: np.ndarray = None
    tie_created: np.ndarray = None
    ties_into_area: sparse.csc_matrix = None  # (n, A) summed tie weight to residents
    pair_key: np.ndarray = None  # a * n + b of each tied pair (sorted), strongest tie only
    pair_kind: np.ndarray = None
    pair_weight: np.ndarray = None
    ties: sparse.csr_matrix = None  # symmetric, strongest weight per pair
    # groups
    group_ptr: np.ndarray = None
    group_members: np.ndarray = None
    group_member_joined: np.ndarray = None
    group_created: np.ndarray = None
    group_kind: np.ndarray = None
    group_size: np.ndarray = None
    group_ready: np.ndarray = None
    group_cohesion: np.ndarray = None
    # vetting (one row per record)
    vet_person: np.ndarray = None
    vet_regime: np.ndarray = None
    vet_status: np.ndarray = None
    vet_from: np.ndarray = None
    vet_expires: np.ndarray = None  # -1: no expiry
    # clients and missions
    client_kind: np.ndarray = None
    client_names: list[str] = field(default_factory=list)
    missions: dict[str, np.ndarray] = field(default_factory=dict)
    rules: list[PayRule] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
def _build_city(w: _World, rng: np.random.Generator) -> None:
    n_areas = max(MIN_AREAS, round(w.n / PERSONS_PER_AREA))
    cols = math.ceil(math.sqrt(n_areas))
    rows = math.ceil(n_areas / cols)
    idx = np.arange(n_areas)
    row, col = idx // cols, idx % cols
    jitter = rng.uniform(-AREA_JITTER, AREA_JITTER, size=(n_areas, 2))
    x = (col - (cols - 1) / 2 + jitter[:, 0]) * AREA_SPACING_KM
    y = ((rows - 1) / 2 - row + jitter[:, 1]) * AREA_SPACING_KM
    w.lat = np.round(CITY_LAT + y / KM_PER_DEG_LAT, 6)
    w.lon = np.round(CITY_LON + x / (KM_PER_DEG_LAT * math.cos(math.radians(CITY_LAT))), 6)
    w.area_ids = _ids("A", n_areas, max(3, len(str(n_areas))))
    k = len(AREA_NAMES)
    w.area_names = [AREA_NAMES[i % k] + ("" if i < k else f" {i // k + 1}") for i in range(n_areas)]
    # A grid with one diagonal per cell: planar, like a triangulated map of neighbourhoods.
    grid = np.full((rows + 1, cols + 1), -1)
    grid[row, col] = idx
    diag = rng.random((rows, cols)) < 0.5
    pairs = []
    for r in range(rows):
        for c in range(cols):
            a = grid[r, c]
            if a < 0:
                continue
            right, down, corner = grid[r, c + 1], grid[r + 1, c], grid[r + 1, c + 1]
            if c + 1 < cols and right >= 0:
                pairs.append((a, right))
            if down >= 0:
                pairs.append((a, down))
            if diag[r, c] and corner >= 0 and c + 1 < cols:
                pairs.append((a, corner))
            elif not diag[r, c] and right >= 0 and down >= 0 and c + 1 < cols:
                pairs.append((min(right, down), max(right, down)))
    links = np.array(sorted({(min(a, b), max(a, b)) for a, b in pairs}), dtype=np.int64)
    w.links = links
    adj = np.zeros((n_areas, n_areas), dtype=bool)
    adj[links[:, 0], links[:, 1]] = True
    adj[links[:, 1], links[:, 0]] = True
    w.adjacent = adj
    w.dist = haversine_km(w.lat[:, None], w.lon[:, None], w.lat[None, :], w.lon[None, :])
    # Deprivation: a smooth field of a few hot and cold spots, plus local noise.
    n_spots = max(3, n_areas // 30)
    centres = rng.choice(n_areas, size=n_spots, replace=False)
    amps = rng.choice([-1.0, 1.0, 1.0], size=n_spots) * rng.uniform(0.7, 1.3, n_spots)
    scale = max(1.5, 0.25 * math.sqrt(n_areas) * AREA_SPACING_KM)
    field_ = (amps[None, :] * np.exp(-(w.dist[:, centres] ** 2) / (2 * scale**2))).sum(axis=1)
    field_ = field_ + rng.normal(0, 0.4, n_areas)
    w.deprivation = (field_ - field_.mean()) / (field_.std() + 1e-9)


def _build_persons(w: _World, rng: np.random.Generator) -> None:
    n, n_areas = w.n, len(w.area_ids)
    w.person_ids = _ids("P", n, max(6, len(str(n))))
    arch = _choice(rng, (ARCHETYPES, ARCHETYPE_SHARES), n)
    base = rng.lognormal(0, 0.3, n_areas)
    area = np.empty(n, dtype=np.int64)
    for k, pull in enumerate(ARCHETYPE_DEPRIVATION_PULL):
        sel = np.flatnonzero(arch == k)
        p = base * np.exp(pull * w.deprivation)
        area[sel] = rng.choice(n_areas, size=len(sel), p=p / p.sum())
    w.archetype, w.area = arch, area
    order = np.argsort(area, kind="stable")
    w.by_area = order
    w.area_ptr = np.concatenate([[0], np.cumsum(np.bincount(area, minlength=n_areas))])

    # Lived experience: area rates (deprivation and local specificities) and a personal factor.
    n_tags = len(TAGS)
    tag_noise = rng.normal(0, AREA_TAG_NOISE, (n_areas, n_tags))
    offsets = np.zeros((len(ARCHETYPES), n_tags))
    for k, name in enumerate(ARCHETYPES):
        special, default = ARCHETYPE_TAG_OFFSET[name]
        offsets[k] = [special.get(t, default) for t in TAGS]
    hardship = rng.standard_normal(n)
    logit = (
        _logit([TAG_BASE[t] for t in TAGS])[None, :]
        + np.array([TAG_DEPRIVATION[t] for t in TAGS])[None, :] * w.deprivation[area][:, None]
        + tag_noise[area]
        + HARDSHIP_LOADING * hardship[:, None]
        + offsets[arch]
    )
    w.tags = rng.random((n, n_tags)) < _sigmoid(logit)
    w.consent_le = rng.random(n) < CONSENT_LIVED_EXPERIENCE_SHARE
    w.consent_matching = rng.random(n) >= NO_CONSENT_MATCHING_SHARE

    # Latent skills: general ability, one factor per need family, one per need.
    n_needs = len(NEEDS)
    general = rng.standard_normal(n)
    fam = rng.standard_normal((n, len(FAMILIES)))
    shift = np.zeros((len(ARCHETYPES), len(FAMILIES)))
    for k, name in enumerate(ARCHETYPES):
        for f, s in ARCHETYPE_SKILL_SHIFT.get(name, {}).items():
            shift[k, FAMILIES.index(f)] = s
    fam = fam + shift[arch]
    w.general = general
    w.skill = (
        SKILL_W_GENERAL * general[:, None]
        + SKILL_W_FAMILY * fam[:, NEED_FAMILY]
        + SKILL_W_NEED * rng.standard_normal((n, n_needs))
    ).astype(np.float32)

    # Declared skills: a mix per archetype, tilted by the latent family skill (nobody is
    # pigeonholed: everyone declares 1 to 4 skills from anywhere).
    weights = np.log(np.array([ARCHETYPE_SKILL_WEIGHT[a] for a in ARCHETYPES]))[arch]
    latent = np.zeros((n, len(SKILL_NAMES)))
    for s, name in enumerate(SKILL_NAMES):
        f = SKILL_FAMILY[name]
        if f is not None:
            latent[:, s] = fam[:, FAMILIES.index(f)]
        elif name == "consulting":
            latent[:, s] = general
        else:  # languages go with migration
            latent[:, s] = 1.5 * w.tags[:, TAGS.index("migration")] - 0.5
    score = weights + SKILL_DECLARE_LINK * latent + rng.gumbel(size=latent.shape)
    n_declared = 1 + rng.binomial(3, 0.45, n)
    ranks = np.argsort(np.argsort(-score, axis=1), axis=1)
    w.declared = ranks < n_declared[:, None]
    rel = np.zeros((len(SKILL_NAMES), n_needs), dtype=np.float32)
    for s, name in enumerate(SKILL_NAMES):
        f = SKILL_FAMILY[name]
        for j, need in enumerate(NEEDS):
            if f is not None and NEED_TYPES[need][0] == f:
                rel[s, j] = 1.0
            rel[s, j] = max(rel[s, j], SKILL_EXTRA_RELEVANCE.get((name, need), 0.0))
            if name == "consulting":
                rel[s, j] = CONSULTING_RELEVANCE
    w.skill_match = np.minimum(1.0, w.declared.astype(np.float32) @ rel)

    # Lived-experience fit: the true affinity (hidden), and the policy's coarser prior, which
    # only sees consented tags.
    true_aff = np.zeros((n_tags, n_needs), dtype=np.float32)
    for t, row in TRUE_AFFINITY.items():
        for need, v in row.items():
            true_aff[TAGS.index(t), NEEDS.index(need)] = v
    public_aff = np.where(true_aff >= 0.8, 1.0, np.where(true_aff >= 0.4, 0.5, 0.0))
    fit_true = np.zeros((n, n_needs), dtype=np.float32)
    fit_public = np.zeros((n, n_needs), dtype=np.float32)
    for t in range(n_tags):
        has = w.tags[:, t]
        fit_true = np.maximum(fit_true, has[:, None] * true_aff[t][None, :])
        fit_public = np.maximum(fit_public, (has & w.consent_le)[:, None] * public_aff[t][None, :])
    w.fit_true, w.fit_public = fit_true, fit_public.astype(np.float32)

    median = np.array(ARCHETYPE_AVAILABILITY, dtype=float)[arch]
    avail = np.round(median * np.exp(rng.normal(0, 0.6, n)) / 30) * 30
    avail = np.clip(avail, 60, 2400).astype(np.int64)
    avail[rng.random(n) < PAUSED_SHARE] = 0
    w.avail = avail
    w.max_concurrent = np.array(MAX_CONCURRENT[0])[_choice(rng, MAX_CONCURRENT, n)]
    w.joined = START - rng.integers(DAY, JOIN_SPAN_DAYS * DAY, n)
    w.responsiveness = rng.beta(*RESPONSIVENESS_BETA, n)


def _build_ties(w: _World, rng: np.random.Generator) -> None:
    n, n_areas = w.n, len(w.area_ids)
    n_stub = int(round(n * TIE_ROWS_PER_PERSON * TIE_OVERDRAW))
    soc = rng.lognormal(0, SOCIABILITY_SIGMA, n)
    owner = rng.choice(n, size=n_stub, p=soc / soc.sum())
    mode = _choice(rng, (TIE_MODES, TIE_MODE_SHARES), n_stub)
    u_area, u_pick = rng.random(n_stub), rng.random(n_stub)
    partner = rng.integers(0, n, n_stub)  # "anywhere", and the fallback of the others

    # Same or neighbouring area: a random resident of that area.
    adj_ptr = np.concatenate([[0], np.cumsum(w.adjacent.sum(axis=1))])
    adj_idx = np.flatnonzero(w.adjacent.ravel()) % n_areas  # row-major: sorted per row
    oa = w.area[owner]
    deg = adj_ptr[oa + 1] - adj_ptr[oa]
    nb = adj_idx[np.minimum(adj_ptr[oa] + (u_area * deg).astype(np.int64), len(adj_idx) - 1)]
    target = np.where(mode == 1, np.where(deg > 0, nb, oa), oa)
    count = w.area_ptr[target + 1] - w.area_ptr[target]
    local = w.by_area[np.minimum(w.area_ptr[target] + (u_pick * count).astype(np.int64), n - 1)]
    use_local = (mode <= 1) & (count > 0)
    partner = np.where(use_local, local, partner)

    # Shared lived experience: a random person with one of the owner's (true) tags.
    tag_count = w.tags.sum(axis=0)
    tag_ptr = np.concatenate([[0], np.cumsum(tag_count)])
    tag_members = np.nonzero(w.tags.T)[1]  # persons with tag 0, then tag 1, ...
    own_tags = w.tags[owner]
    n_own = own_tags.sum(axis=1)
    pick = (u_area * n_own).astype(np.int64)
    which = np.argmax(np.cumsum(own_tags, axis=1) > pick[:, None], axis=1)
    exp_partner = tag_members[
        np.minimum(tag_ptr[which] + (u_pick * tag_count[which]).astype(np.int64),
                   max(len(tag_members) - 1, 0))
    ] if len(tag_members) else partner
    use_exp = (mode == 2) & (n_own > 0)
    partner = np.where(use_exp, exp_partner, np.where((mode == 2), local, partner))

    kind = np.empty(n_stub, dtype=np.int64)
    for m, probs in enumerate(TIE_KIND_BY_MODE):
        sel = np.flatnonzero(mode == m)
        kind[sel] = rng.choice(len(TIE_KINDS), size=len(sel), p=probs)
    a, b = np.minimum(owner, partner), np.maximum(owner, partner)
    keep = a != b
    a, b, kind = a[keep], b[keep], kind[keep]
    key = (a * n + b) * len(TIE_KINDS) + kind
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)  # keep generation order among the survivors
    a, b, kind = a[first], b[first], kind[first]
    weight = np.empty(len(a))
    for k, (al, be) in enumerate(TIE_WEIGHT_BETA):
        sel = np.flatnonzero(kind == k)
        weight[sel] = rng.beta(al, be, len(sel))
    weight = np.clip(np.round(weight, 3), 0.001, 1.0)
    since = np.maximum(w.joined[a], w.joined[b])
    created = since + (rng.beta(1.2, 3.0, len(a)) * (SNAPSHOT - DAY - since)).astype(np.int64)
    w.tie_a, w.tie_b, w.tie_kind, w.tie_weight, w.tie_created = a, b, kind, weight, created

    # The model's view of the graph: the strongest tie of each pair, symmetric.
    order = np.lexsort((-weight, a * n + b))
    pk = (a * n + b)[order]
    firsts = order[np.concatenate([[True], pk[1:] != pk[:-1]])] if len(pk) else order
    w.pair_key = (a * n + b)[firsts]  # sorted
    w.pair_kind, w.pair_weight = kind[firsts], weight[firsts]
    strongest = sparse.coo_matrix(
        (weight[firsts], (a[firsts], b[firsts])), shape=(n, n)
    ).tocsr()
    sym = (strongest + strongest.T).tocsr()
    sym.sort_indices()
    w.ties = sym
    deg_w = np.asarray(sym.sum(axis=1)).ravel()
    peer = (sym @ w.general) / (deg_w + 1.0)
    w.peer_quality = (peer - peer.mean()) / (peer.std() + 1e-9)
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), w.area)), shape=(n, n_areas))
    w.ties_into_area = (sym @ onehot).tocsc()


def _build_groups(w: _World, rng: np.random.Generator) -> None:
    n = w.n
    sym = w.ties
    active = (w.avail > 0) & w.consent_matching
    candidates = np.flatnonzero(active & (np.diff(sym.indptr) > 0))
    n_groups = min(len(candidates), max(2, n // PERSONS_PER_GROUP))
    seeds = rng.choice(candidates, size=n_groups, replace=False) if n_groups else candidates
    sizes = np.array(GROUP_SIZES[0])[_choice(rng, GROUP_SIZES, len(seeds))]
    seen: set[tuple[int, ...]] = set()
    members: list[np.ndarray] = []
    for s, size in zip(seeds.tolist(), sizes.tolist(), strict=True):
        nbrs = sym.indices[sym.indptr[s]:sym.indptr[s + 1]]
        wts = sym.data[sym.indptr[s]:sym.indptr[s + 1]]
        ok = active[nbrs]
        nbrs, wts = nbrs[ok], wts[ok]
        if len(nbrs) == 0:
            continue
        top = nbrs[np.lexsort((nbrs, -wts))][: size - 1]
        team = tuple(sorted([s, *top.tolist()]))
        if team in seen:
            continue
        seen.add(team)
        members.append(np.array(team, dtype=np.int64))
    g = len(members)
    size = np.array([len(m) for m in members], dtype=np.int64)
    w.group_ptr = np.concatenate([[0], np.cumsum(size)]).astype(np.int64)
    flat = np.concatenate(members) if members else np.empty(0, dtype=np.int64)
    w.group_members, w.group_size = flat, size
    seg = np.repeat(np.arange(g), size)
    since = np.zeros(g, dtype=np.int64)
    np.maximum.at(since, seg, w.joined[flat])
    span = np.maximum(SNAPSHOT - 30 * DAY - since, DAY)
    created = since + (rng.beta(1.5, 2.0, g) * span).astype(np.int64)
    joined = created[seg].copy()
    late = rng.random(len(flat)) < 0.25
    joined = np.where(late, joined + rng.integers(0, 60 * DAY, len(flat)), joined)
    joined = np.minimum(joined, SNAPSHOT - DAY)
    w.group_created, w.group_member_joined = created, joined
    w.group_ready = np.zeros(g, dtype=np.int64)
    np.maximum.at(w.group_ready, seg, joined)

    # Cohesion: mean strongest tie weight over member pairs (0 for untied pairs).
    coh = np.zeros(g)
    kinds = np.zeros(g, dtype=np.int64)
    professional = w.archetype != 0
    for i, team in enumerate(members):
        pk = np.array([x * n + y for j, x in enumerate(team.tolist()) for y in team[j + 1:]])
        pos = np.minimum(np.searchsorted(w.pair_key, pk), max(len(w.pair_key) - 1, 0))
        hit = w.pair_key[pos] == pk if len(w.pair_key) else np.zeros(len(pk), dtype=bool)
        coh[i] = float(np.where(hit, w.pair_weight[pos], 0.0).mean())
        tie_kinds = [TIE_KINDS[k] for k in w.pair_kind[pos[hit]].tolist()]
        pairs = pk
        if tie_kinds.count("family") * 2 > len(pairs):
            kinds[i] = GROUP_KINDS.index("family")
        elif tie_kinds.count("neighbour") * 2 > len(pairs):
            kinds[i] = GROUP_KINDS.index("neighbours")
        elif professional[team].any() and not professional[team].all():
            kinds[i] = GROUP_KINDS.index("mixed")
        else:
            kinds[i] = GROUP_KINDS.index("peer")
    w.group_cohesion, w.group_kind = coh, kinds


def _build_vetting(w: _World, rng: np.random.Generator) -> None:
    persons, regimes, statuses, froms, expires = [], [], [], [], []
    status_names = VETTING_STATUSES[0]
    years = VETTING_YEARS * 365 * DAY
    for r, regime in enumerate(VETTING_BASE):
        skill_cols = [SKILL_NAMES.index(s) for s in VETTING_SKILLS[regime]]
        p = VETTING_BASE[regime] + VETTING_SKILL_BOOST * w.declared[:, skill_cols].any(axis=1)
        who = np.flatnonzero(rng.random(w.n) < p)
        st = _choice(rng, VETTING_STATUSES, len(who))
        vf = np.empty(len(who), dtype=np.int64)
        ex = np.full(len(who), -1, dtype=np.int64)
        name = np.array(status_names)[st]
        # valid: still valid at the snapshot (no expiry, or one after it)
        sel = name == "valid"
        vf[sel] = START + rng.integers(-450 * DAY, 450 * DAY, sel.sum())
        expiring = sel & (rng.random(len(who)) < 0.6)
        ex[expiring] = vf[expiring] + years
        # expired: ran out before the snapshot
        sel = name == "expired"
        vf[sel] = SNAPSHOT - years - rng.integers(DAY, 2 * 365 * DAY, sel.sum())
        ex[sel] = vf[sel] + years
        # pending and refused: a request date, no expiry; revoked: a normal validity
        sel = (name == "pending") | (name == "refused")
        vf[sel] = START + rng.integers(-180 * DAY, (MISSION_SPAN_DAYS + 60) * DAY, sel.sum())
        sel = name == "revoked"
        vf[sel] = START + rng.integers(-700 * DAY, 300 * DAY, sel.sum())
        ex[sel] = vf[sel] + years
        persons.append(who)
        statuses.append(st)
        froms.append(vf)
        expires.append(ex)
        regimes.append(np.full(len(who), r))
        # renewals of expired checks
        renew = np.flatnonzero((name == "expired") & (rng.random(len(who)) < VETTING_RENEWAL))
        rvf = np.minimum(ex[renew] + rng.integers(0, 90 * DAY, len(renew)), SNAPSHOT - DAY)
        rex = np.where(rng.random(len(renew)) < 0.6, rvf + years, -1)
        persons.append(who[renew])
        statuses.append(np.zeros(len(renew), dtype=np.int64))
        froms.append(rvf)
        expires.append(rex)
        regimes.append(np.full(len(renew), r))
    w.vet_person = np.concatenate(persons)
    w.vet_regime = np.concatenate(regimes)
    w.vet_status = np.concatenate(statuses)
    w.vet_from = np.concatenate(froms)
    w.vet_expires = np.concatenate(expires)


CLIENT_NAMES = {
    "city": ("Ville de {}", ("Lyon", "Villeurbanne", "Venissieux", "Bron", "Vaulx-en-Velin",
                              "Oullins", "Caluire", "Saint-Fons", "Rillieux", "Decines")),
    "social_landlord": ("{} Habitat", ("Rhone", "Lyon Metropole", "Grand Lyon", "Alliade",
                                       "Est Metropole", "Sollar", "Batigere", "Immo de France")),
    "school": ("College {}", ("Jean Moulin", "Victor Hugo", "Jules Ferry", "Louise Michel",
                              "Pablo Picasso", "Paul Eluard", "Jean Mace", "Gabriel Rosset",
                              "Elsa Triolet", "Jacques Prevert", "Henri Barbusse", "Lucie Aubrac")),
    "company": ("{}", ("Rhodia Solutions", "Lumiere Conseil", "Saone Logistique", "Canut Digital",
                       "Presqu'ile Energies", "Fourviere Assurances", "Gerland Biotech",
                       "Confluence Retail")),
    "association": ("Association {}", ("Le Relais", "Entraide Rhone", "Passerelles",
                                       "Les Petits Freres", "Habitat et Humanisme Rhone",
                                       "Secours Populaire Lyon", "Arche de Noe", "Main Tendue")),
}


def _build_clients(w: _World, rng: np.random.Generator, n_missions: int) -> None:
    n_clients = int(np.clip(n_missions // 25, 10, 400))
    kinds = np.tile(np.arange(len(CLIENT_KINDS)), n_clients // len(CLIENT_KINDS) + 1)[:n_clients]
    rng.shuffle(kinds)
    names, seen = [], {}
    for k in kinds.tolist():
        pattern, words = CLIENT_NAMES[CLIENT_KINDS[k]]
        i = seen.get(k, 0)
        seen[k] = i + 1
        name = pattern.format(words[i % len(words)])
        names.append(name if i < len(words) else f"{name} {i // len(words) + 1}")
    w.client_kind, w.client_names = kinds, names


def _build_missions(w: _World, rng: np.random.Generator, n_m: int) -> None:
    n_areas, n_needs = len(w.area_ids), len(NEEDS)
    created = np.sort(START + rng.integers(0, MISSION_SPAN_DAYS * DAY, n_m))
    need = np.tile(np.arange(n_needs), n_m // n_needs + 1)[:n_m]
    rng.shuffle(need)
    # Missions go where the need is: areas weighted by the prevalence of the fitting tags.
    tag_rate = np.zeros((n_areas, len(TAGS)))
    np.add.at(tag_rate, w.area, w.tags)
    tag_rate /= np.maximum(np.bincount(w.area, minlength=n_areas), 1)[:, None]
    area = np.empty(n_m, dtype=np.int64)
    client = np.empty(n_m, dtype=np.int64)
    for j, nd in enumerate(NEEDS):
        sel = np.flatnonzero(need == j)
        aff = np.array([TRUE_AFFINITY[t].get(nd, 0.0) for t in TAGS])
        intensity = tag_rate @ aff
        z = (intensity - intensity.mean()) / (intensity.std() + 1e-9)
        p = np.exp(0.8 * z)
        area[sel] = rng.choice(n_areas, size=len(sel), p=p / p.sum())
        kinds = [CLIENT_KINDS.index(k) for k in CLIENT_KINDS_BY_FAMILY[NEED_TYPES[nd][0]]]
        pool = np.flatnonzero(np.isin(w.client_kind, kinds))
        client[sel] = rng.choice(pool, size=len(sel))
    team = np.array(TEAMS[0])[_choice(rng, TEAMS, n_m)]
    mpd = np.array(MINUTES_PER_DAY[0])[_choice(rng, MINUTES_PER_DAY, n_m)]
    dpw = np.array(DAYS_PER_WEEK[0])[_choice(rng, DAYS_PER_WEEK, n_m)]
    r_idx = _choice(rng, RADII_KM, n_m)
    radius = np.array([np.nan if r is None else r for r in RADII_KM[0]])[r_idx]
    regime = np.full(n_m, -1)
    u = rng.random(n_m)
    for j, nd in enumerate(NEEDS):
        if nd in NEED_VETTING:
            reg, share = NEED_VETTING[nd]
            sel = (need == j) & (u < share)
            regime[sel] = list(VETTING_BASE).index(reg)
    long_start = rng.random(n_m) < LONG_START_SHARE
    lo = np.where(long_start, START_DELAY_DAYS[1][0], START_DELAY_DAYS[0][0]) * DAY
    hi = np.where(long_start, START_DELAY_DAYS[1][1], START_DELAY_DAYS[0][1]) * DAY
    starts = created + rng.integers(lo, hi)
    ends = starts + rng.integers(DURATION_DAYS[0] * DAY, DURATION_DAYS[1] * DAY, n_m)
    group_only = team[:, 0] >= 2
    teams = 1 + rng.poisson(np.where(group_only, EXTRA_TEAMS_MEAN / 2, EXTRA_TEAMS_MEAN))
    difficulty = (
        np.array([NEED_DIFFICULTY.get(nd, 0.0) for nd in NEEDS])[need]
        + rng.normal(0, DIFFICULTY_SD, n_m)
    )
    w.missions = dict(
        created=created, need=need, area=area, client=client, team_min=team[:, 0],
        team_max=team[:, 1], minutes_per_day=mpd, days_per_week=dpw, radius=radius,
        regime=regime, starts=starts, ends=ends, teams=teams, difficulty=difficulty,
        required=mpd * dpw,
    )
    # Metrics and pay rules.
    rules, metrics, rule_names = [], [], []
    for i in range(n_m):
        nd = NEEDS[need[i]]
        metric, kind, direction, (lo_v, hi_v) = NEED_METRICS[nd]
        if kind == "count":
            units = max(1, int(round(teams[i] * rng.uniform(1.5, 3.0))))
            price = float(round(rng.uniform(lo_v, hi_v) / 5) * 5)
            cap = price * max(units, int(round(units * rng.uniform(0.8, 1.3))))
            rule = PayRule("per_unit", "increase", 0.0, float(units), unit_price=price,
                           contract_cap=float(cap))
        else:
            pay = RATE_RULES[0][_choice(rng, RATE_RULES, 1)[0]]
            decimals = 1 if hi_v > 1 else 4
            base = round(float(rng.uniform(lo_v, hi_v)), decimals)
            if direction == "decrease":
                target = round(base * float(rng.uniform(0.5, 0.75)), decimals)
            else:
                target = round(base + float(rng.uniform(0.1, 0.2)), decimals)
            fee = float(round(rng.uniform(*FEE_RANGE) / 50) * 50)
            cap = fee * max(1, int(round(teams[i] * rng.uniform(0.6, 1.0))))
            rule = PayRule(pay, direction, base, target, fee=fee, contract_cap=float(cap))
        rules.append(rule)
        metrics.append(metric)
        rule_names.append(rule.pay_rule)
    w.rules = rules
    w.missions["metric"] = np.array(metrics, dtype=object)


# ------------------------------------------------------------------------------------------------
class _Occupancy:
    """Assignments that hold a person (direct or through a group), for the capacity rule."""

    def __init__(self) -> None:
        self.size = 0
        self.person = np.empty(4096, dtype=np.int64)
        self.at = np.empty(4096, dtype=np.int64)
        self.start = np.empty(4096, dtype=np.int64)
        self.end = np.empty(4096, dtype=np.int64)

    def add(self, persons: np.ndarray, at: int, start: int, end: int) -> None:
        k = len(persons)
        while self.size + k > len(self.person):
            for name in ("person", "at", "start", "end"):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.empty_like(arr)]))
        sl = slice(self.size, self.size + k)
        self.person[sl], self.at[sl], self.start[sl], self.end[sl] = persons, at, start, end
        self.size += k

    def counts(self, n: int, t: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(overlapping holds, all past holds) per person, counting holds assigned before t."""
        sl = slice(0, self.size)
        before = self.at[sl] < t
        overlap = before & (self.start[sl] <= end) & (self.end[sl] >= start)
        busy = np.bincount(self.person[sl][overlap], minlength=n)
        past = np.bincount(self.person[sl][before], minlength=n)
        return busy, past


@dataclass
class _Log:
    """What the logging policy did: shortlists, candidates, assignments, truth rows."""

    sl_mission: list[int] = field(default_factory=list)
    sl_served: list[int] = field(default_factory=list)
    sl_filters: list[str] = field(default_factory=list)
    sc_shortlist: list[np.ndarray] = field(default_factory=list)
    sc_rank: list[np.ndarray] = field(default_factory=list)
    sc_kind: list[np.ndarray] = field(default_factory=list)  # 0 person, 1 group
    sc_idx: list[np.ndarray] = field(default_factory=list)
    sc_score: list[np.ndarray] = field(default_factory=list)
    sc_prop: list[np.ndarray] = field(default_factory=list)
    a_mission: list[int] = field(default_factory=list)
    a_kind: list[int] = field(default_factory=list)
    a_idx: list[int] = field(default_factory=list)
    a_shortlist: list[int] = field(default_factory=list)  # -1: hand pick
    a_at: list[int] = field(default_factory=list)
    a_status: list[str] = field(default_factory=list)
    a_prop: list[float] = field(default_factory=list)  # nan: hand pick
    a_p: list[float] = field(default_factory=list)
    t_mission: list[np.ndarray] = field(default_factory=list)
    t_kind: list[np.ndarray] = field(default_factory=list)
    t_idx: list[np.ndarray] = field(default_factory=list)
    t_p: list[np.ndarray] = field(default_factory=list)


def _inclusion(u: np.ndarray, keys: np.ndarray, sel: np.ndarray, k: int) -> np.ndarray:
    """Rao-Blackwellised Monte Carlo estimate of P(candidate ``sel`` is in the top ``k``).

    ``keys`` are R replications of the Gumbel-perturbed log weights ``u`` of the whole pool (a
    Plackett-Luce draw is the order of such keys). Given the others' keys, candidate i is in
    the top k when its own key beats the k-th best of the others, T: that happens with
    probability 1 - exp(-exp(u_i - T)), which is averaged over the replications.
    """
    m = keys.shape[1]
    if k >= m:
        return np.ones(len(sel))
    part = -np.partition(-keys, [k - 1, k], axis=1)
    kth, next_ = part[:, k - 1][:, None], part[:, k][:, None]
    own = keys[:, sel]
    thr = np.where(own >= kth, next_, kth)  # the k-th best of the others
    return (-np.expm1(-np.exp(u[sel][None, :] - thr))).mean(axis=0)


def _run_policy(w: _World, seed: int) -> _Log:
    rng = _rng(seed, 6)
    mc = _rng(seed, MC_STREAM)  # the Monte Carlo propensities have their own stream
    ms = w.missions
    n, n_m = w.n, len(ms["created"])
    log = _Log()
    occ = _Occupancy()
    held_out = np.zeros(n_m, dtype=bool)
    held_out[n_m - math.ceil(HELD_OUT_SHARE * n_m):] = True
    on_mission: dict[int, list[int]] = {}
    in_pool = np.zeros(n, dtype=bool)
    g_seg = np.repeat(np.arange(len(w.group_size)), w.group_size)
    vet_valid = {
        r: np.flatnonzero((w.vet_status == 0) & (w.vet_regime == r)) for r in range(2)
    }
    persons_near: dict[tuple[int, float], np.ndarray] = {}

    events = [(int(ms["created"][m] + rng.integers(0, 3 * DAY)), m, 1, 0) for m in range(n_m)]
    heapq.heapify(events)
    shortlist_no = 0
    while events:
        t, m, round_, n_wanted = heapq.heappop(events)
        if t >= SNAPSHOT:
            continue
        start, end, need, a_m = ms["starts"][m], ms["ends"][m], ms["need"][m], ms["area"][m]
        tmin, tmax, req, regime = ms["team_min"][m], ms["team_max"][m], ms["required"][m], \
            ms["regime"][m]
        radius = ms["radius"][m]
        # --- hard rules (see docs/simulator.md) ---
        key = (int(a_m), -1.0 if np.isnan(radius) else float(radius))  # NaN != NaN
        if key not in persons_near:
            if np.isnan(radius):
                persons_near[key] = np.arange(n)
            else:
                areas = np.flatnonzero(w.dist[a_m] <= radius)
                persons_near[key] = np.sort(np.concatenate(
                    [w.by_area[w.area_ptr[a]:w.area_ptr[a + 1]] for a in areas]))
        pool = persons_near[key]
        ok = w.consent_matching[pool] & (w.avail[pool] >= req) & (w.joined[pool] <= t)
        if regime >= 0:
            rec = vet_valid[regime]
            good = rec[(w.vet_from[rec] <= start)
                       & ((w.vet_expires[rec] < 0) | (w.vet_expires[rec] >= end))]
            vetted = np.zeros(n, dtype=bool)
            vetted[w.vet_person[good]] = True
            ok &= vetted[pool]
        busy, past = occ.counts(n, t, start, end)
        ok &= busy[pool] < w.max_concurrent[pool]
        taken = on_mission.get(m, [])
        if taken:
            ok &= ~np.isin(pool, taken)
        elig = pool[ok]
        in_pool[:] = False
        in_pool[elig] = True
        persons = elig if tmin == 1 else np.empty(0, dtype=np.int64)
        groups = np.empty(0, dtype=np.int64)
        if tmax >= 2 and len(w.group_size):
            bad = np.bincount(g_seg, weights=~in_pool[w.group_members],
                              minlength=len(w.group_size))
            groups = np.flatnonzero((bad == 0) & (w.group_size >= tmin) & (w.group_size <= tmax)
                                    & (w.group_ready <= t))
        n_c = len(persons) + len(groups)
        if n_c == 0:
            continue
        kind = np.concatenate([np.zeros(len(persons), np.int64), np.ones(len(groups), np.int64)])
        idx = np.concatenate([persons, groups])
        gflat, gseg = _segments(w.group_ptr, groups)
        gmem = w.group_members[gflat]

        # --- the heuristic score, then softmax exploration ---
        pa = w.area[elig]
        proximity = np.zeros(n)
        proximity[elig] = np.where(pa == a_m, 1.0, np.where(w.adjacent[a_m, pa], 0.5, 0.0))
        h = np.zeros(n)
        h[elig] = (H_FIT * w.fit_public[elig, need] + H_SKILL * w.skill_match[elig, need]
                   + H_PROXIMITY * proximity[elig] + H_EXPERIENCE * np.log1p(past[elig])
                   + H_AVAILABILITY * np.log2(np.clip(w.avail[elig] / req, 1, 4)))
        g_h = np.bincount(gseg, weights=h[gmem], minlength=len(groups)) / np.maximum(
            w.group_size[groups], 1) + H_GROUP
        base = np.concatenate([h[persons], g_h])
        score = np.round(base + rng.normal(0, SCORE_NOISE, n_c), 4)
        u = score / TEMPERATURE
        k = min(SHORTLIST_SIZE, n_c)
        # A Plackett-Luce draw over every eligible candidate: no pool cut, so that every
        # candidate a new policy may offer has a logged propensity above 0 (off-policy
        # estimates are unbiased only on the logging policy's support).
        draw = u + rng.gumbel(size=n_c)
        top = np.argsort(-draw, kind="stable")[:k]  # candidates, in rank order
        remaining = n_wanted if round_ == 2 else int(ms["teams"][m])
        n_offer = min(remaining, k)
        keys = u[None, :] + mc.gumbel(size=(MC_REPLICATIONS, n_c))
        p_list = np.clip(_inclusion(u, keys, top, k), PROPENSITY_FLOOR, 1.0)
        p_offer = np.clip(_inclusion(u, keys, top, n_offer), PROPENSITY_FLOOR, 1.0)
        sl = shortlist_no
        shortlist_no += 1
        chosen = top
        log.sl_mission.append(m)
        log.sl_served.append(t)
        log.sl_filters.append(json.dumps({
            "consent_matching": True, "availability_min_per_week": int(req),
            "radius_km": None if np.isnan(radius) else float(radius),
            "vetting_regime": None if regime < 0 else list(VETTING_BASE)[regime],
            "team": [int(tmin), int(tmax)], "capacity": True,
        }, sort_keys=True))
        log.sc_shortlist.append(np.full(k, sl))
        log.sc_rank.append(np.arange(1, k + 1))
        log.sc_kind.append(kind[chosen])
        log.sc_idx.append(idx[chosen])
        log.sc_score.append(score[chosen])
        log.sc_prop.append(np.round(p_list, 6))

        # --- truth of the whole eligible pool, for held-out missions ---
        tie_col = None
        if round_ == 1 and held_out[m]:
            tie_col = _tie_column(w, a_m)
            p_all = _p_success(w, m, kind, idx, tie_col)
            log.t_mission.append(np.full(n_c, m))
            log.t_kind.append(kind)
            log.t_idx.append(idx)
            log.t_p.append(p_all)

        # --- offers: the top n_offer ranks (a candidate sharing a person with a higher-ranked
        # offer is skipped, not replaced) ---
        used: set[int] = set()
        offered = []
        for r, c in enumerate(chosen[:n_offer].tolist()):
            mem = _members(w, kind[c], idx[c])
            if used.intersection(mem.tolist()):
                continue
            used.update(mem.tolist())
            offered.append((c, float(np.round(p_offer[r], 6)), sl))
        if round_ == 1 and rng.random() < HAND_PICK_SHARE:
            # the engineer's pick: the best heuristic score off the list, free of conflicts
            rest = np.setdiff1d(np.arange(n_c), chosen)
            for c in rest[np.argsort(-base[rest], kind="stable")].tolist():
                if not used.intersection(_members(w, kind[c], idx[c]).tolist()):
                    offered.append((c, math.nan, -1))
                    break
        declined = 0
        if tie_col is None:
            tie_col = _tie_column(w, a_m)
        p_off = _p_success(w, m, kind[[c for c, _, _ in offered]],
                           idx[[c for c, _, _ in offered]], tie_col)
        for (c, prop, sl_id), p in zip(offered, p_off.tolist(), strict=True):
            mem = _members(w, kind[c], idx[c])
            at = t if sl_id < 0 else t + int(rng.integers(1800, 2 * DAY))
            accept = rng.random() < float(w.responsiveness[mem].mean())
            if not accept:
                status = "declined"
                declined += 1 if sl_id >= 0 else 0
            elif rng.random() < WITHDRAW_SHARE:
                status = "withdrawn"
            elif end < SNAPSHOT:
                status = "completed"
            elif start <= SNAPSHOT:
                status = "active"
            else:
                status = "accepted"
            log.a_mission.append(m)
            log.a_kind.append(int(kind[c]))
            log.a_idx.append(int(idx[c]))
            log.a_shortlist.append(sl_id)
            log.a_at.append(at)
            log.a_status.append(status)
            log.a_prop.append(prop)
            log.a_p.append(p)
            on_mission.setdefault(m, []).extend(mem.tolist())
            if status not in ("declined", "withdrawn"):
                occ.add(mem, at, start, end)
        if round_ == 1 and declined and rng.random() < REASK_SHARE:
            t2 = t + int(rng.integers(3 * DAY, 6 * DAY))
            if t2 < start:
                heapq.heappush(events, (t2, m, 2, declined))
    return log


def _members(w: _World, kind: int, idx: int) -> np.ndarray:
    if kind == 0:
        return np.array([idx], dtype=np.int64)
    return w.group_members[w.group_ptr[idx]:w.group_ptr[idx + 1]]


def _tie_column(w: _World, area: int) -> np.ndarray:
    col = np.zeros(w.n)
    ta = w.ties_into_area
    s, e = ta.indptr[area], ta.indptr[area + 1]
    col[ta.indices[s:e]] = ta.data[s:e]
    return col


def _person_terms(w: _World, m: int, persons: np.ndarray, tie_col: np.ndarray) -> np.ndarray:
    """Logit terms of the ground truth that belong to a person (no intercept, no difficulty)."""
    ms = w.missions
    need, a_m = ms["need"][m], ms["area"][m]
    pa = w.area[persons]
    slack = np.clip(w.avail[persons] / ms["required"][m], 1.0, 4.0)
    return (
        SKILL_EFFECT * w.skill[persons, need]
        + LIVED_EXPERIENCE_EFFECT * w.fit_true[persons, need]
        + SAME_AREA_EFFECT * (pa == a_m)
        + NEXT_AREA_EFFECT * w.adjacent[a_m, pa]
        + TIES_INTO_AREA_EFFECT * np.log1p(tie_col[persons])
        + PEER_EFFECT * w.peer_quality[persons]
        + AVAILABILITY_EFFECT * np.log2(slack)
    )


def _p_success(w: _World, m: int, kind: np.ndarray, idx: np.ndarray,
               tie_col: np.ndarray) -> np.ndarray:
    """True probability of success of each candidate (person or group) on mission ``m``."""
    kind, idx = np.asarray(kind, dtype=np.int64), np.asarray(idx, dtype=np.int64)
    base = INTERCEPT - w.missions["difficulty"][m]
    logit = np.empty(len(idx))
    pers = kind == 0
    logit[pers] = base + _person_terms(w, m, idx[pers], tie_col)
    grp = np.flatnonzero(~pers)
    if len(grp):
        gidx = idx[grp]
        flat, seg = _segments(w.group_ptr, gidx)
        mem = w.group_members[flat]
        terms = _person_terms(w, m, mem, tie_col)
        size = w.group_size[gidx]
        mean = np.bincount(seg, weights=terms, minlength=len(gidx)) / size
        sk = w.skill[mem, w.missions["need"][m]].astype(float)
        best = np.full(len(gidx), -np.inf)
        np.maximum.at(best, seg, sk)
        mean_sk = np.bincount(seg, weights=sk, minlength=len(gidx)) / size
        logit[grp] = (base + mean + GROUP_BEST_SKILL_EFFECT * (best - mean_sk)
                      + GROUP_COHESION_EFFECT * (w.group_cohesion[gidx] - GROUP_COHESION_CENTRE))
    return np.clip(_sigmoid(logit), *P_SUCCESS_CLIP)


# ------------------------------------------------------------------------------------------------
def _draw_outcomes(w: _World, log: _Log, seed: int) -> dict[str, np.ndarray]:
    """Outcome rows of completed assignments, with success and payout from the pay rule."""
    rng = _rng(seed, 8)
    ms = w.missions
    rows_a, rows_at, rows_v = [], [], []
    for j, status in enumerate(log.a_status):
        if status != "completed":
            continue
        m = log.a_mission[j]
        rule = w.rules[m]
        start, end = int(ms["starts"][m]), int(ms["ends"][m])
        success = rng.random() < log.a_p[j]
        late = min(end + int(rng.integers(0, OUTCOME_LAG_DAYS * DAY)), SNAPSHOT - 3600)
        if rule.pay_rule == "per_unit":
            if not success:
                rows_a.append(j)
                rows_at.append(late)
                rows_v.append(0.0)
                continue
            units = 1 + int(rng.poisson(UNITS_EXTRA_MEAN))
            n_rows = min(units, MAX_ROWS_PER_ASSIGNMENT)
            values = [1.0] * (n_rows - 1) + [float(units - (n_rows - 1))]
            times = np.sort(rng.integers(start, min(end, SNAPSHOT - 3600), n_rows))
            for v, at in zip(values, times.tolist(), strict=True):
                rows_a.append(j)
                rows_at.append(int(at))
                rows_v.append(v)
            continue
        # threshold / linear: one measure at the end of the window, on the right side of the
        # success line (with a margin, so that rounding never crosses it)
        if rule.pay_rule == "threshold":
            q = rng.uniform(1.02, 1.3) if success else rng.uniform(-0.2, 0.9)
        else:
            q = rng.uniform(0.55, 1.15) if success else rng.uniform(-0.15, 0.45)
        decimals = 1 if max(abs(rule.baseline), abs(rule.target)) > 1 else 4
        value = round(rule.baseline + q * (rule.target - rule.baseline), decimals)
        if rule.direction == "decrease":
            value = max(value, 0.0)
        rows_a.append(j)
        rows_at.append(late)
        rows_v.append(float(value))
    a = np.array(rows_a, dtype=np.int64)
    at = np.array(rows_at, dtype=np.int64)
    v = np.array(rows_v, dtype=float)
    order = np.lexsort((np.arange(len(a)), a, at))  # outcome ids follow measured_at
    a, at, v = a[order], at[order], v[order]
    st_names = OUTCOME_STATUSES[0]
    status = np.array(st_names)[_choice(rng, OUTCOME_STATUSES, len(a))]
    recent = (at > SNAPSHOT - OUTCOME_LAG_DAYS * DAY) & (rng.random(len(a)) < RECENT_CLAIMED_SHARE)
    status = np.where(recent, "claimed", status)
    # success and payout, exactly as the importer computes them: the cap is applied per
    # mission over verified outcomes in (measured_at, outcome_id) order, which is row order.
    success = np.zeros(len(a), dtype=bool)
    payout = np.full(len(a), np.nan)
    paid: dict[int, float] = {}
    missions = np.array(log.a_mission, dtype=np.int64)[a] if len(a) else a
    for i in range(len(a)):
        m = int(missions[i])
        rule = w.rules[m]
        success[i] = success_for(rule, float(v[i]))
        if status[i] == "verified":
            amount = payout_for(rule, float(v[i]), paid.get(m, 0.0))
            payout[i] = amount
            paid[m] = paid.get(m, 0.0) + amount
    return dict(assignment=a, measured=at, value=v, success=success, status=status,
                payout=payout)


# ------------------------------------------------------------------------------------------------
def _dt(secs: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    s = pl.Series(np.asarray(secs, dtype=np.int64) * 1_000_000).cast(pl.Datetime("us"))
    s = s.dt.replace_time_zone("UTC")
    if null is not None:
        s = pl.select(pl.when(pl.Series(null)).then(None).otherwise(s)).to_series()
    return s


def _tag_strings(mask: np.ndarray, names: tuple[str, ...]) -> list[str | None]:
    order = np.argsort(names)  # canonical: tags sorted as strings
    sorted_names = [names[i] for i in order]
    m = mask[:, order]
    out: list[str | None] = []
    for row in m:
        hit = np.flatnonzero(row)
        out.append(";".join(sorted_names[i] for i in hit) if len(hit) else None)
    return out


def _frames(w: _World, log: _Log, oc: dict[str, np.ndarray]) -> dict[str, pl.DataFrame]:
    ms = w.missions
    pid = np.array(w.person_ids, dtype=object)
    aid = np.array(w.area_ids, dtype=object)
    n_groups = len(w.group_size)
    gid = np.array(_ids("G", n_groups, max(5, len(str(n_groups)))), dtype=object)
    n_m = len(ms["created"])
    mid = np.array(_ids("M", n_m, max(6, len(str(n_m)))), dtype=object)
    cid = np.array(_ids("C", len(w.client_kind)), dtype=object)
    frames: dict[str, pl.DataFrame] = {}
    frames["areas"] = pl.DataFrame({"area_id": aid, "name": w.area_names,
                                    "lat": w.lat, "lon": w.lon}, strict=False)
    frames["area_links"] = pl.DataFrame({"area_a": aid[w.links[:, 0]],
                                         "area_b": aid[w.links[:, 1]]}, strict=False)
    lived = _tag_strings(w.tags & w.consent_le[:, None], TAGS)  # never without consent
    frames["persons"] = pl.DataFrame({
        "person_id": pid,
        "area_id": aid[w.area],
        "joined_at": _dt(w.joined),
        "availability_min_per_week": w.avail,
        "max_concurrent": w.max_concurrent,
        "skills": _tag_strings(w.declared, SKILL_NAMES),
        "lived_experience": pl.Series(lived, dtype=pl.String),
        "consent_matching": w.consent_matching,
        "consent_lived_experience": w.consent_le,
    }, strict=False)
    regimes = np.array(list(VETTING_BASE), dtype=object)
    n_vet = len(w.vet_person)
    ref_rng = _rng(w.seed, 9)
    refs = ref_rng.integers(0, 10**7, n_vet)
    prefix = np.where(w.vet_regime == 0, "MIN", "VUL")
    has_ref = np.array(VETTING_STATUSES[0], dtype=object)[w.vet_status] != "pending"
    frames["vetting"] = pl.DataFrame({
        "person_id": pid[w.vet_person],
        "regime": regimes[w.vet_regime],
        "status": np.array(VETTING_STATUSES[0], dtype=object)[w.vet_status],
        "valid_from": _dt(w.vet_from),
        "expires_at": _dt(np.maximum(w.vet_expires, 0), w.vet_expires < 0),
        "reference": [f"{p}-{r:07d}" if h else None
                      for p, r, h in zip(prefix.tolist(), refs.tolist(), has_ref.tolist(),
                                         strict=True)],
    }, strict=False)
    frames["ties"] = pl.DataFrame({
        "person_a": pid[w.tie_a], "person_b": pid[w.tie_b],
        "kind": np.array(TIE_KINDS, dtype=object)[w.tie_kind],
        "weight": w.tie_weight, "created_at": _dt(w.tie_created),
    }, strict=False)
    frames["groups"] = pl.DataFrame({
        "group_id": gid, "kind": np.array(GROUP_KINDS, dtype=object)[w.group_kind],
        "created_at": _dt(w.group_created),
    }, strict=False)
    frames["group_members"] = pl.DataFrame({
        "group_id": gid[np.repeat(np.arange(n_groups), w.group_size)],
        "person_id": pid[w.group_members],
        "joined_at": _dt(w.group_member_joined),
    }, strict=False)
    frames["clients"] = pl.DataFrame({
        "client_id": cid, "kind": np.array(CLIENT_KINDS, dtype=object)[w.client_kind],
        "name": w.client_names,
    }, strict=False)
    # mission status at the snapshot
    staffed = np.zeros(n_m, dtype=bool)
    for m, s in zip(log.a_mission, log.a_status, strict=True):
        if s in ("accepted", "active", "completed"):
            staffed[m] = True
    status = np.where(ms["ends"] < SNAPSHOT, "closed",
                      np.where(ms["starts"] <= SNAPSHOT, "measuring",
                               np.where(staffed, "staffed", "open")))
    rules = w.rules
    need_names = np.array(NEEDS, dtype=object)[ms["need"]]
    titles = [f"{NEED_TYPES[nd][1]} ({w.area_names[a]})"
              for nd, a in zip(need_names.tolist(), ms["area"].tolist(), strict=True)]
    descriptions = [
        f"{w.client_names[c]}: {metric}, from {r.baseline:g} to {r.target:g}"
        for c, metric, r in zip(ms["client"].tolist(), ms["metric"].tolist(), rules, strict=True)
    ]
    frames["missions"] = pl.DataFrame({
        "mission_id": mid,
        "client_id": cid[ms["client"]],
        "need_type": need_names,
        "area_id": aid[ms["area"]],
        "created_at": _dt(ms["created"]),
        "starts_at": _dt(ms["starts"]),
        "ends_at": _dt(ms["ends"]),
        "status": status,
        "title": titles,
        "description": descriptions,
        "metric": ms["metric"],
        "direction": [r.direction for r in rules],
        "baseline": [r.baseline for r in rules],
        "target": [r.target for r in rules],
        "pay_rule": [r.pay_rule for r in rules],
        "unit_price": pl.Series([r.unit_price for r in rules], dtype=pl.Float64),
        "fee": pl.Series([r.fee for r in rules], dtype=pl.Float64),
        "contract_cap": pl.Series([r.contract_cap for r in rules], dtype=pl.Float64),
        "team_min": ms["team_min"],
        "team_max": ms["team_max"],
        "minutes_per_day": ms["minutes_per_day"],
        "days_per_week": ms["days_per_week"],
        "vetting_regime": pl.Series([None if r < 0 else regimes[r] for r in ms["regime"]],
                                    dtype=pl.String),
        "radius_km": pl.Series([None if np.isnan(r) else float(r) for r in ms["radius"]],
                               dtype=pl.Float64),
    }, strict=False)
    n_sl = len(log.sl_mission)
    slid = np.array(_ids("S", n_sl, max(6, len(str(n_sl)))), dtype=object)
    frames["shortlists"] = pl.DataFrame({
        "shortlist_id": slid,
        "mission_id": mid[np.array(log.sl_mission, dtype=np.int64)],
        "served_at": _dt(np.array(log.sl_served, dtype=np.int64)),
        "model_version": [MODEL_VERSION] * n_sl,
        "policy": [POLICY] * n_sl,
        "requested_by": [REQUESTED_BY] * n_sl,
        "filters": log.sl_filters,
    }, strict=False)

    def who(kind: np.ndarray, idx: np.ndarray) -> tuple[pl.Series, pl.Series]:
        kind = np.asarray(kind, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        person = [pid[i] if k == 0 else None for k, i in zip(kind.tolist(), idx.tolist(),
                                                             strict=True)]
        group = [gid[i] if k == 1 else None for k, i in zip(kind.tolist(), idx.tolist(),
                                                            strict=True)]
        return pl.Series(person, dtype=pl.String), pl.Series(group, dtype=pl.String)

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.empty(0, dtype=np.int64)

    sc_person, sc_group = who(cat(log.sc_kind), cat(log.sc_idx))
    frames["shortlist_candidates"] = pl.DataFrame({
        "shortlist_id": slid[cat(log.sc_shortlist).astype(np.int64)],
        "rank": cat(log.sc_rank),
        "person_id": sc_person,
        "group_id": sc_group,
        "score": cat(log.sc_score).astype(float),
        "propensity": cat(log.sc_prop).astype(float),
    }, strict=False)
    n_a = len(log.a_mission)
    asid = np.array(_ids("X", n_a, max(7, len(str(n_a)))), dtype=object)
    a_person, a_group = who(np.array(log.a_kind), np.array(log.a_idx))
    a_sl = np.array(log.a_shortlist, dtype=np.int64)
    frames["assignments"] = pl.DataFrame({
        "assignment_id": asid,
        "mission_id": mid[np.array(log.a_mission, dtype=np.int64)],
        "person_id": a_person,
        "group_id": a_group,
        "shortlist_id": pl.Series([slid[s] if s >= 0 else None for s in a_sl.tolist()],
                                  dtype=pl.String),
        "assigned_at": _dt(np.array(log.a_at, dtype=np.int64)),
        "status": log.a_status,
        "propensity": pl.Series([None if math.isnan(p) else p for p in log.a_prop],
                                dtype=pl.Float64),
    }, strict=False)
    n_o = len(oc["assignment"])
    frames["outcomes"] = pl.DataFrame({
        "outcome_id": _ids("O", n_o, max(7, len(str(n_o)))),
        "assignment_id": asid[oc["assignment"]] if n_o else np.empty(0, dtype=object),
        "measured_at": _dt(oc["measured"]),
        "value": oc["value"],
        "success": oc["success"],
        "status": oc["status"].astype(object) if n_o else np.empty(0, dtype=object),
        "payout": pl.Series([None if math.isnan(p) else float(p) for p in oc["payout"]],
                            dtype=pl.Float64),
    }, strict=False)
    # truth: every assigned pair, and the whole eligible pool of the held-out missions
    t_m = np.concatenate([np.array(log.a_mission, dtype=np.int64), cat(log.t_mission)])
    t_k = np.concatenate([np.array(log.a_kind, dtype=np.int64), cat(log.t_kind)])
    t_i = np.concatenate([np.array(log.a_idx, dtype=np.int64), cat(log.t_idx)])
    t_p = np.concatenate([np.array(log.a_p, dtype=float), cat(log.t_p).astype(float)])
    key = (t_m * 2 + t_k) * (max(w.n, n_groups) + 1) + t_i
    _, first = np.unique(key, return_index=True)
    t_person, t_group = who(t_k[first], t_i[first])
    frames["truth"] = pl.DataFrame({
        "mission_id": mid[t_m[first]],
        "person_id": t_person,
        "group_id": t_group,
        "p_success": np.round(t_p[first], 4),
    }, strict=False)
    return frames


# ------------------------------------------------------------------------------------------------
def simulate_community(n_persons: int, n_missions: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Simulate a city-like community, its missions, a logging policy and outcomes.

    Parameters
    ----------
    n_persons : int
        Number of persons (one area per ~450 persons, at least 8 areas).
    n_missions : int
        Number of missions, created over 18 months from 2025-01-01.
    seed : int, default 0
        The same seed gives the same frames (and the same bundle bytes).

    Returns
    -------
    dict of str to polars.DataFrame
        One frame per bundle file (``graph.BUNDLE_FILES``), ``truth`` included.

    Examples
    --------
    >>> frames = simulate_community(300, 60, seed=0)
    >>> frames["persons"].filter(~pl.col("consent_lived_experience"))[
    ...     "lived_experience"].null_count() == frames["persons"].filter(
    ...     ~pl.col("consent_lived_experience")).height
    True
    """
    if n_persons < 10:
        raise ValueError("n_persons must be at least 10")
    if n_missions < 1:
        raise ValueError("n_missions must be at least 1")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    w = _World(seed=seed, n=int(n_persons))
    _build_city(w, _rng(seed, 1))
    _build_persons(w, _rng(seed, 2))
    _build_ties(w, _rng(seed, 3))
    _build_groups(w, _rng(seed, 4))
    _build_vetting(w, _rng(seed, 5))
    _build_clients(w, _rng(seed, 10), int(n_missions))
    _build_missions(w, _rng(seed, 11), int(n_missions))
    log = _run_policy(w, seed)
    outcomes = _draw_outcomes(w, log, seed)
    return _frames(w, log, outcomes)


def simulate_bundle(
    out_dir: str | os.PathLike[str],
    n_persons: int,
    n_missions: int,
    seed: int = 0,
    fmt: str = "csv",
) -> list[Path]:
    """Simulate a community (see :func:`simulate_community`) and write it as a bundle.

    Examples
    --------
    >>> import tempfile
    >>> paths = simulate_bundle(tempfile.mkdtemp(), 300, 60, seed=0)
    >>> sorted(p.name for p in paths)[:2]
    ['area_links.csv', 'areas.csv']
    """
    return write_bundle(simulate_community(n_persons, n_missions, seed), out_dir, fmt=fmt)
