"""The learned parts of the features, fitted only on data before a cut-off.

:class:`FeatureModel` learns, from verified outcomes measured before ``cutoff``:

- base success rates (overall, per need type and need family) and the strength of the
  empirical-Bayes prior that smooths a person's own rates;
- the lived-experience table: the documented prior (``graph/lived_experience_prior.csv``, editable)
  updated by the outcomes of people who consented to the use of their lived experience;
- need-type factors of a low-rank factorisation of person x need-type outcomes (ALS), so that
  skills shown on one need transfer to related ones;
- the TF-IDF vocabulary of mission texts and skills.

It ships with the ranker (``to_dict``/``from_dict``: JSON, no pickle) and is never refitted from
the live store at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
from sklearn.exceptions import NotFittedError

from features._text import make_vectorizer, vectorizer_from_state, vectorizer_state
from graph._frames import CommunityFrames
from graph._vocabulary import (
    SKILLS,
    Vocabulary,
    builtin_vocabulary,
    load_lived_experience_prior,
)

__all__ = ["FeatureModel", "assignment_results", "load_le_prior"]

# An affinity of 1 in the lived-experience table means about +30 points of success.
LE_LIFT_SCALE = 0.30


load_le_prior = load_lived_experience_prior


def assignment_results(frames: CommunityFrames, members: pl.DataFrame | None = None
                       ) -> pl.DataFrame:
    """One row per (person, assignment) with a verified outcome: the unit of a track record.

    An assignment succeeded when any of its verified outcomes did; it is dated by its first
    verified outcome. A group's assignment counts for each of its members.
    Columns: person_id, assignment_id, mission_id, need_type, success, at.
    """
    out = frames.verified_outcomes()
    per_assignment = out.group_by("assignment_id").agg(
        pl.col("success").any().alias("success"),
        pl.col("measured_at").min().alias("at"),
        pl.col("mission_id").first(),
        pl.col("need_type").first(),
        pl.col("person_id").first(),
        pl.col("group_id").first(),
    )
    persons = per_assignment.filter(pl.col("person_id").is_not_null()).drop("group_id")
    members = frames.group_members if members is None else members
    groups = (
        per_assignment.filter(pl.col("group_id").is_not_null())
        .drop("person_id")
        .join(members.select("group_id", "person_id"), on="group_id", how="inner")
        .drop("group_id")
    )
    cols = ["person_id", "assignment_id", "mission_id", "need_type", "success", "at"]
    return pl.concat([persons.select(cols), groups.select(cols)]).sort(
        "at", "assignment_id", "person_id"
    )


@dataclass
class _Fitted:
    cutoff: datetime
    p_global: float
    p_need: dict[str, float]
    p_family: dict[str, float]
    prior_strength: float
    need_index: dict[str, int]
    need_family: dict[str, str]
    need_factors: np.ndarray
    le_table: dict[tuple[str, str], float]
    text_state: dict
    skill_text: dict[str, str]


class FeatureModel:
    """Learned parts of the (mission, candidate) features.

    Parameters
    ----------
    rank : int
        Rank of the person x need-type factorisation.
    reg : float
        Ridge penalty of the factorisation (also the pull of a person's latent skill towards
        their peers' when they have little history).
    need_smoothing : float
        Pseudo-count of the need-type base rates towards the overall rate.
    le_prior_weight : float
        Pseudo-count of the documented lived-experience prior against observed outcomes.
    seed : int
        Seed of the factorisation's initialisation.

    Examples
    --------
    >>> fm = FeatureModel(rank=3)
    >>> fm.fit(frames, cutoff)  # doctest: +SKIP
    >>> fm.le_affinity(["drug_use"], "drug_outreach")  # doctest: +SKIP
    0.87
    """

    def __init__(self, rank: int = 3, reg: float = 1.0, need_smoothing: float = 10.0,
                 le_prior_weight: float = 30.0, seed: int = 0) -> None:
        self.rank = rank
        self.reg = reg
        self.need_smoothing = need_smoothing
        self.le_prior_weight = le_prior_weight
        self.seed = seed

    # -- fitting -------------------------------------------------------------------------
    def fit(self, frames: CommunityFrames, cutoff: datetime,
            vocabulary: Vocabulary | None = None) -> FeatureModel:
        """Learn every part from data strictly before ``cutoff``; returns ``self``."""
        vocab = vocabulary or builtin_vocabulary()
        past = frames.as_of(cutoff)
        results = assignment_results(past)
        need_types = sorted(set(vocab.values.get("need_type", {}))
                            | set(frames.missions["need_type"].unique().to_list()))
        need_family = {n: vocab.family(n) for n in need_types}

        n_all = results.height
        p_global = float(results["success"].mean()) if n_all else 0.3
        by_need = results.group_by("need_type").agg(
            pl.len().alias("n"), pl.col("success").sum().alias("s"))
        m = self.need_smoothing
        p_need = {n: p_global for n in need_types}
        for row in by_need.iter_rows(named=True):
            p_need[row["need_type"]] = (row["s"] + m * p_global) / (row["n"] + m)
        fam = results.with_columns(
            pl.col("need_type").replace_strict(need_family, default=None).alias("family"))
        p_family = {f: p_global for f in set(need_family.values())}
        for row in fam.group_by("family").agg(pl.len().alias("n"),
                                               pl.col("success").sum().alias("s")).iter_rows(
                                                   named=True):
            if row["family"] is not None:
                p_family[row["family"]] = (row["s"] + m * p_global) / (row["n"] + m)

        prior_strength = self._prior_strength(results, p_global)
        need_index = {n: i for i, n in enumerate(need_types)}
        factors = self._factorise(results, need_index, p_need)
        le_table = self._le_table(past, results, p_need)

        skill_text = {s: f"{s} {d}" for s, d in {**SKILLS, **vocab.values.get("skill", {})}
                      .items()}
        texts = (past.missions.filter(pl.col("created_at") < cutoff)
                 .select(pl.concat_str([pl.col("title"), pl.col("description").fill_null("")],
                                       separator=" ")).to_series().to_list())
        vec = make_vectorizer().fit(texts + list(skill_text.values()))

        self.fitted_ = _Fitted(
            cutoff=cutoff, p_global=p_global, p_need=p_need, p_family=p_family,
            prior_strength=prior_strength, need_index=need_index, need_family=need_family,
            need_factors=factors, le_table=le_table, text_state=vectorizer_state(vec),
            skill_text=skill_text,
        )
        self._vectorizer = vec
        return self

    @staticmethod
    def _prior_strength(results: pl.DataFrame, p: float) -> float:
        """Empirical-Bayes strength of the Beta prior on a person's success rate.

        Method of moments on persons with at least 3 results: the spread of their rates
        beyond what sampling explains. Clipped to [2, 50]; 5 when there is too little data.
        """
        per = results.group_by("person_id").agg(pl.len().alias("n"),
                                                 pl.col("success").mean().alias("r"))
        per = per.filter(pl.col("n") >= 3)
        if per.height < 20 or not 0 < p < 1:
            return 5.0
        var_obs = float(per["r"].var())
        sampling = float((p * (1 - p) / per["n"]).mean())
        between = var_obs - sampling
        if between <= 1e-6:
            return 50.0
        return float(np.clip(p * (1 - p) / between - 1, 2.0, 50.0))

    def _factorise(self, results: pl.DataFrame, need_index: dict[str, int],
                   p_need: dict[str, float]) -> np.ndarray:
        """ALS on the person x need residual matrix; returns the need factors."""
        rng = np.random.default_rng(self.seed)
        n_needs = len(need_index)
        v = rng.normal(0, 0.1, size=(n_needs, self.rank))
        if results.height == 0:
            return v
        cells = results.group_by("person_id", "need_type").agg(
            pl.len().alias("n"), pl.col("success").mean().alias("r"))
        persons = {p: i for i, p in enumerate(sorted(cells["person_id"].unique().to_list()))}
        pi = np.array([persons[p] for p in cells["person_id"]])
        ni = np.array([need_index[n] for n in cells["need_type"]])
        resid = cells["r"].to_numpy() - np.array([p_need[n] for n in cells["need_type"]])
        weight = cells["n"].to_numpy().astype(float)
        u = np.zeros((len(persons), self.rank))
        eye = np.eye(self.rank) * self.reg
        for _ in range(12):
            u = _solve_rows(pi, ni, resid, weight, v, len(persons), eye)
            v = _solve_rows(ni, pi, resid, weight, u, n_needs, eye)
        return v

    def _le_table(self, past: CommunityFrames, results: pl.DataFrame,
                  p_need: dict[str, float]) -> dict[tuple[str, str], float]:
        """The documented prior updated by observed lifts (consented tags only)."""
        prior = load_le_prior()
        tags = (past.persons.filter(pl.col("consent_lived_experience")
                                    & pl.col("lived_experience").is_not_null())
                .select("person_id", pl.col("lived_experience").str.split(";").alias("tag"))
                .explode("tag"))
        obs = (results.join(tags, on="person_id", how="inner")
               .group_by("tag", "need_type")
               .agg(pl.len().alias("n"), pl.col("success").mean().alias("rate")))
        table = dict(prior)
        w0 = self.le_prior_weight
        for row in obs.iter_rows(named=True):
            key = (row["tag"], row["need_type"])
            lift = (row["rate"] - p_need.get(row["need_type"], 0.0)) / LE_LIFT_SCALE
            a0 = prior.get(key, 0.0)
            table[key] = float(np.clip((w0 * a0 + row["n"] * lift) / (w0 + row["n"]), -1, 1))
        return table

    # -- use -----------------------------------------------------------------------------
    def _check(self) -> _Fitted:
        if not hasattr(self, "fitted_"):
            raise NotFittedError("FeatureModel is not fitted: call fit(frames, cutoff) first")
        return self.fitted_

    @property
    def vectorizer(self):  # noqa: ANN201
        self._check()
        if getattr(self, "_vectorizer", None) is None:
            self._vectorizer = vectorizer_from_state(self.fitted_.text_state)
        return self._vectorizer

    def le_affinity(self, tags: list[str], need_type: str) -> float:
        """Best affinity of a person's tags with a need (0 without tags)."""
        f = self._check()
        vals = [f.le_table.get((t, need_type), 0.0) for t in tags]
        return max(vals) if vals else 0.0

    def fold_in(self, need_counts: np.ndarray, need_success: np.ndarray,
                prior: np.ndarray | None = None) -> np.ndarray:
        """Latent skill vectors of persons from their per-need counts and successes.

        ``need_counts`` and ``need_success`` are (persons x needs); ``prior`` is the mean the
        ridge pulls towards (the peers' vectors), zero by default.
        """
        f = self._check()
        v = f.need_factors
        p_need = np.array([f.p_need[n] for n in sorted(f.need_index, key=f.need_index.get)])
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(need_counts > 0, need_success / np.maximum(need_counts, 1), 0.0)
        resid = np.where(need_counts > 0, rate - p_need, 0.0)
        w = need_counts.astype(float)
        n, r = need_counts.shape[0], v.shape[1]
        prior = np.zeros((n, r)) if prior is None else prior
        # (V' W V + reg I) u = V' W resid + reg prior, for every person at once.
        a = np.einsum("pk,ki,kj->pij", w, v, v) + self.reg * np.eye(r)
        b = (w * resid) @ v + self.reg * prior
        return np.linalg.solve(a, b[..., None])[..., 0]

    # -- persistence (JSON, no pickle) ---------------------------------------------------
    def to_dict(self) -> dict:
        f = self._check()
        return {
            "params": {"rank": self.rank, "reg": self.reg, "need_smoothing": self.need_smoothing,
                       "le_prior_weight": self.le_prior_weight, "seed": self.seed},
            "cutoff": f.cutoff.isoformat(),
            "p_global": f.p_global,
            "p_need": f.p_need,
            "p_family": f.p_family,
            "prior_strength": f.prior_strength,
            "need_index": f.need_index,
            "need_family": f.need_family,
            "need_factors": f.need_factors.tolist(),
            "le_table": [[t, n, a] for (t, n), a in sorted(f.le_table.items())],
            "text_state": f.text_state,
            "skill_text": f.skill_text,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureModel:
        fm = cls(**d["params"])
        fm.fitted_ = _Fitted(
            cutoff=datetime.fromisoformat(d["cutoff"]), p_global=d["p_global"],
            p_need=d["p_need"], p_family=d["p_family"], prior_strength=d["prior_strength"],
            need_index=d["need_index"], need_family=d["need_family"],
            need_factors=np.asarray(d["need_factors"], dtype=float),
            le_table={(t, n): a for t, n, a in d["le_table"]},
            text_state=d["text_state"], skill_text=d["skill_text"],
        )
        fm._vectorizer = None
        return fm


def _solve_rows(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, w: np.ndarray,
                other: np.ndarray, n_rows: int, eye: np.ndarray) -> np.ndarray:
    """Weighted ridge solve of every row's factor given the other side's factors."""
    r = other.shape[1]
    a = np.broadcast_to(eye, (n_rows, r, r)).copy()
    b = np.zeros((n_rows, r))
    o = other[cols]
    np.add.at(a, rows, w[:, None, None] * o[:, :, None] * o[:, None, :])
    np.add.at(b, rows, (w * vals)[:, None] * o)
    return np.linalg.solve(a, b[..., None])[..., 0]
