"""The learned parts of the features, fitted only on data before a cut-off.

:class:`FeatureModel` learns, from verified outcomes measured before ``cutoff``:

- base success rates (overall, per need type and need family) and the strength of the
  empirical-Bayes prior that smooths a person's own rates;
- the lived-experience table: the documented prior (``graph/lived_experience_prior.csv``, editable)
  moved by the outcomes of people who consented to the use of their lived experience;
- the declared-skill table: the success lift shown, on each need type, by people declaring each
  skill (ridge regression, shrunk towards the need family's lift, itself shrunk towards 0);
- the variance components of latent skill (general, need family, need type), so that skills
  shown on one need transfer to related ones by empirical-Bayes;
- the TF-IDF vocabulary of mission texts and skills.

It ships with the ranker (``to_dict``/``from_dict``: JSON, no pickle) and is never refitted from
the live store at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
from scipy.special import expit, logit
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

# An affinity of 1 in the lived-experience table is read as about +1.5 logits of success
# (0.30 -> 0.65): the scale on which observed outcomes move the documented prior.
LE_LOGIT_SCALE = 1.5

# Variance components of latent skill (general, family, need) in squared success points, used
# when too few pairs of results of the same person exist to estimate them.
DEFAULT_SKILL_VARIANCE = (0.01, 0.01, 0.01)
SKILL_VARIANCE_FLOOR = 1e-4
MIN_PAIRS = 30

# Posterior solves are batched over this many persons (a (persons x d x d) array each).
_CHUNK = 4096

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
    need_factors: np.ndarray  # (needs x (n_factors + needs)): loadings, then the identity
    le_table: dict[tuple[str, str], float]
    text_state: dict
    skill_text: dict[str, str]
    skill_lift: dict[tuple[str, str], float]
    skill_variance: tuple[float, float, float]
    n_factors: int


class FeatureModel:
    """Learned parts of the (mission, candidate) features.

    Parameters
    ----------
    need_smoothing : float
        Pseudo-count of the need-type base rates towards the overall rate.
    le_prior_weight : float
        Pseudo-count of the documented lived-experience prior against observed outcomes: a
        cell of the table moves halfway to what its outcomes say after about this many
        results (at a success rate near one half).
    skill_smoothing : float
        Ridge penalty (a pseudo-count of results) of the declared-skill table that pulls a
        need family's lifts towards 0.
    skill_need_smoothing : float
        Ridge penalty that pulls a need type's lifts towards its family's: larger than the
        family's, as what a declared skill says is mostly about a field, less about one need.
    seed : int
        Kept so that callers can pass one; every part of the fit is deterministic.

    Examples
    --------
    >>> fm = FeatureModel()
    >>> fm.fit(frames, cutoff)  # doctest: +SKIP
    >>> fm.le_affinity(["drug_use"], "drug_outreach")  # doctest: +SKIP
    0.87
    """

    def __init__(self, need_smoothing: float = 10.0, le_prior_weight: float = 100.0,
                 skill_smoothing: float = 100.0, skill_need_smoothing: float = 400.0,
                 seed: int = 0) -> None:
        self.need_smoothing = need_smoothing
        self.le_prior_weight = le_prior_weight
        self.skill_smoothing = skill_smoothing
        self.skill_need_smoothing = skill_need_smoothing
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
        loadings = _need_loadings(need_types, need_family)
        # Latent vectors hold the skill factors, then the declared-skill lift of every need:
        # ``latent @ need_factors[j]`` is a person's whole expected lift on need j.
        factors = np.hstack([loadings, np.eye(len(need_types))])
        le_table = self._le_table(past, results, p_need)

        skill_text = {s: f"{s} {d}" for s, d in {**SKILLS, **vocab.values.get("skill", {})}
                      .items()}
        skill_names = sorted(skill_text)
        declared, need_of, resid = _result_arrays(results, past.persons, need_index, p_need,
                                                  skill_names)
        lift = self._skill_lift(declared, need_of, resid, need_types, need_family)
        offset = np.asarray(declared.multiply(lift.T[need_of]).sum(axis=1)).ravel()
        known = results.filter(pl.col("need_type").is_in(list(need_index)))
        variance = _skill_variance(known["person_id"].to_list(), need_of,
                                   np.array([need_family[n] for n in need_types])[need_of]
                                   if len(need_of) else np.zeros(0, dtype=str),
                                   resid - offset)

        texts = (past.missions.filter(pl.col("created_at") < cutoff)
                 .select(pl.concat_str([pl.col("title"), pl.col("description").fill_null("")],
                                       separator=" ")).to_series().to_list())
        vec = make_vectorizer().fit(texts + list(skill_text.values()))

        self.fitted_ = _Fitted(
            cutoff=cutoff, p_global=p_global, p_need=p_need, p_family=p_family,
            prior_strength=prior_strength, need_index=need_index, need_family=need_family,
            need_factors=factors, le_table=le_table, text_state=vectorizer_state(vec),
            skill_text=skill_text,
            skill_lift={(s, n): float(lift[i, j]) for i, s in enumerate(skill_names)
                        for j, n in enumerate(need_types) if lift[i, j] != 0.0},
            skill_variance=variance, n_factors=loadings.shape[1],
        )
        self._vectorizer = vec
        self._lift_matrix = lift
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

    def tables_as_of(self, past: CommunityFrames, results: pl.DataFrame
                     ) -> tuple[dict[tuple[str, str], float], np.ndarray]:
        """The lived-experience table and the declared-skill lifts learned from ``results``.

        :class:`~features.CommunitySnapshot` calls it for a time before the cut-off, with the
        results known then: a training row's features never learn from its own outcome (nor
        from any later one), as they would with the tables fitted at the cut-off. Base rates
        are the fitted ones.

        Returns
        -------
        le_table : dict
            (tag, need type) -> affinity, as ``fitted_.le_table``.
        lift : ndarray of shape (skills, needs)
            As :meth:`skill_lift_matrix`.
        """
        f = self._check()
        need_types = sorted(f.need_index, key=f.need_index.get)
        declared, need_of, resid = _result_arrays(results, past.persons, f.need_index, f.p_need,
                                                  self.skill_names)
        lift = self._skill_lift(declared, need_of, resid, need_types, f.need_family)
        return self._le_table(past, results, f.p_need), lift

    def _skill_lift(self, declared, need_of: np.ndarray, resid: np.ndarray,  # noqa: ANN001
                    need_types: list[str], need_family: dict[str, str]) -> np.ndarray:
        """(skills x needs) success lift of declaring each skill, by two-level ridge.

        A family's lifts are the ridge regression (penalty ``skill_smoothing``) of the
        residuals of its results on the declared-skill indicators; a need's are the same
        regression pulled towards its family's (penalty ``skill_need_smoothing``).
        """
        n_skills, n_needs = declared.shape[1], len(need_types)
        lift = np.zeros((n_skills, n_needs))
        if not len(resid):
            return lift
        lam = float(self.skill_smoothing) * np.eye(n_skills)
        lam_need = float(self.skill_need_smoothing) * np.eye(n_skills)
        fam_of = np.array([need_family[n] for n in need_types])
        for family in sorted(set(fam_of.tolist())):
            rows = np.flatnonzero(fam_of[need_of] == family)
            if not len(rows):
                continue
            x = declared[rows]
            gram = np.asarray((x.T @ x).todense())
            beta_f = np.linalg.solve(gram + lam, x.T @ resid[rows])
            for j in np.flatnonzero(fam_of == family):
                sel = rows[need_of[rows] == j]
                xj = declared[sel]
                g = np.asarray((xj.T @ xj).todense())
                lift[:, j] = np.linalg.solve(g + lam_need, xj.T @ resid[sel] + lam_need @ beta_f)
        return lift

    def _le_table(self, past: CommunityFrames, results: pl.DataFrame,
                  p_need: dict[str, float]) -> dict[tuple[str, str], float]:
        """The documented prior, moved by outcomes of people who consented (one Newton step).

        A result of a person on a need speaks for the tag that gives the person their best
        prior affinity with that need (the table is read as a maximum over tags); people
        with no relevant tag set the need's baseline. Each cell then takes one penalised
        Newton step of a logistic model, ``logit p = logit(baseline) + LE_LOGIT_SCALE *
        affinity``, from its prior value, with a Gaussian penalty worth ``le_prior_weight``
        results.
        """
        prior = load_le_prior()
        table = dict(prior)
        consented = (past.persons.filter(pl.col("consent_lived_experience"))
                     .select("person_id", pl.col("lived_experience").alias("tags")))
        obs = results.join(consented, on="person_id", how="inner")
        if obs.height == 0:
            return table
        tags = [t.split(";") if t else [] for t in obs["tags"].to_list()]
        needs = obs["need_type"].to_list()
        y = obs["success"].to_numpy().astype(float)
        best = np.array([max([prior.get((t, n), 0.0) for t in ts] + [0.0])
                         for ts, n in zip(tags, needs, strict=True)])
        # The baseline of a need: its results by consented people with no relevant tag.
        m = self.need_smoothing
        base: dict[str, list[float]] = {}
        for n, b, yy in zip(needs, best, y, strict=True):
            if b == 0.0:
                base.setdefault(n, []).append(yy)
        p0 = np.array([(sum(base.get(n, [])) + m * p_need.get(n, 0.5))
                       / (len(base.get(n, [])) + m) for n in needs])
        p_hat = expit(logit(np.clip(p0, 1e-3, 1 - 1e-3)) + LE_LOGIT_SCALE * best)
        grad: dict[tuple[str, str], float] = {}
        info: dict[tuple[str, str], float] = {}
        for ts, n, b, yy, p in zip(tags, needs, best, y, p_hat, strict=True):
            for t in ts:
                if prior.get((t, n), 0.0) >= b:  # this tag gives the person's best fit
                    grad[t, n] = grad.get((t, n), 0.0) + (yy - p)
                    info[t, n] = info.get((t, n), 0.0) + p * (1.0 - p)
        w0 = float(self.le_prior_weight) / 4.0  # pseudo-results at p = 1/2
        for key, g in grad.items():
            step = g / (LE_LOGIT_SCALE * (info[key] + w0))
            table[key] = float(np.clip(prior.get(key, 0.0) + step, -1.0, 1.0))
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

    @property
    def skill_names(self) -> list[str]:
        """The declared skills the model knows, in the order of :meth:`skill_lift_matrix`."""
        return sorted(self._check().skill_text)

    def skill_lift_matrix(self) -> np.ndarray:
        """(skills x need types) success lift of declaring each skill, in need_index order."""
        f = self._check()
        if getattr(self, "_lift_matrix", None) is None:
            lift = np.zeros((len(f.skill_text), len(f.need_index)))
            rows = {s: i for i, s in enumerate(self.skill_names)}
            for (s, n), v in f.skill_lift.items():
                if s in rows and n in f.need_index:
                    lift[rows[s], f.need_index[n]] = v
            self._lift_matrix = lift
        return self._lift_matrix

    def le_affinity(self, tags: list[str], need_type: str) -> float:
        """Best affinity of a person's tags with a need (0 without tags)."""
        f = self._check()
        vals = [f.le_table.get((t, need_type), 0.0) for t in tags]
        return max(vals) if vals else 0.0

    def skill_posterior(self, need_counts: np.ndarray, need_success: np.ndarray,
                        offset: np.ndarray | None = None) -> np.ndarray:
        """Posterior mean of the latent skill factors of persons, given their results.

        A person's success lift on need ``j`` is ``loadings[j] @ theta`` (``loadings`` being
        the first ``n_factors`` columns of ``need_factors``): a general
        factor, their need family's and the need's own, with the variance components learned
        by :meth:`fit` as a Gaussian prior. Each result is read as the lift plus noise of
        variance ``p (1 - p)`` around the need's base rate plus ``offset`` (what declared
        skills predict), and the posterior mean follows by Gaussian conditioning, so that a
        success on one need moves related needs in proportion to what they share.

        Parameters
        ----------
        need_counts, need_success : ndarray of shape (persons, needs)
            Results and successes per need type (need_index order).
        offset : ndarray of shape (persons, needs), optional
            Expected lift before any result (default 0).

        Returns
        -------
        ndarray of shape (persons, n_factors)
            Zero for persons without results. ``theta @ need_factors[j, :n_factors]`` is
            what their results add to the expected lift on need ``j``.
        """
        f = self._check()
        loadings = f.need_factors[:, :f.n_factors]
        n, d = need_counts.shape[0], loadings.shape[1]
        theta = np.zeros((n, d))
        p = np.array([f.p_need[x] for x in sorted(f.need_index, key=f.need_index.get)])
        v = np.clip(p * (1.0 - p), 1e-3, None)
        var_g, var_f, var_n = f.skill_variance
        n_fam = d - 1 - loadings.shape[0]
        precision = 1.0 / np.r_[var_g, np.full(n_fam, var_f), np.full(loadings.shape[0], var_n)]
        who = np.flatnonzero(need_counts.sum(axis=1) > 0)
        for start in range(0, len(who), _CHUNK):
            rows = who[start:start + _CHUNK]
            cnt = need_counts[rows]
            expected = p if offset is None else p + offset[rows]
            w = cnt / v
            z = (need_success[rows] - cnt * expected) / v
            # (Lambda^-1 + L' W L) theta = L' z, for every person of the chunk at once
            a = np.einsum("pk,ki,kj->pij", w, loadings, loadings) + np.diag(precision)
            theta[rows] = np.linalg.solve(a, (z @ loadings)[..., None])[..., 0]
        return theta

    # -- persistence (JSON, no pickle) ---------------------------------------------------
    def to_dict(self) -> dict:
        f = self._check()
        return {
            "params": {"need_smoothing": self.need_smoothing,
                       "le_prior_weight": self.le_prior_weight,
                       "skill_smoothing": self.skill_smoothing,
                       "skill_need_smoothing": self.skill_need_smoothing, "seed": self.seed},
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
            "skill_lift": [[s, n, v] for (s, n), v in sorted(f.skill_lift.items())],
            "skill_variance": list(f.skill_variance),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureModel:
        fm = cls(**d["params"])
        factors = np.asarray(d["need_factors"], dtype=float)
        fm.fitted_ = _Fitted(
            cutoff=datetime.fromisoformat(d["cutoff"]), p_global=d["p_global"],
            p_need=d["p_need"], p_family=d["p_family"], prior_strength=d["prior_strength"],
            need_index=d["need_index"], need_family=d["need_family"],
            need_factors=factors,
            le_table={(t, n): a for t, n, a in d["le_table"]},
            text_state=d["text_state"], skill_text=d["skill_text"],
            skill_lift={(s, n): v for s, n, v in d["skill_lift"]},
            skill_variance=tuple(d["skill_variance"]),
            n_factors=factors.shape[1] - factors.shape[0],
        )
        fm._vectorizer = None
        fm._lift_matrix = None
        return fm


def _need_loadings(need_types: list[str], need_family: dict[str, str]) -> np.ndarray:
    """(needs x factors) loadings: a general factor, one per need family, one per need."""
    families = sorted(set(need_family[n] for n in need_types))
    n = len(need_types)
    out = np.zeros((n, 1 + len(families) + n))
    for j, need in enumerate(need_types):
        out[j, 0] = 1.0
        out[j, 1 + families.index(need_family[need])] = 1.0
        out[j, 1 + len(families) + j] = 1.0
    return out


def _result_arrays(results: pl.DataFrame, persons: pl.DataFrame, need_index: dict[str, int],
                   p_need: dict[str, float], skill_names: list[str]):  # noqa: ANN202
    """Results as arrays: declared skills of the person (sparse 0/1), need, and the residual
    of the success against the need's base rate. Needs the model does not know are left out."""
    known = results.filter(pl.col("need_type").is_in(list(need_index)))
    declared = _skill_matrix(
        known.join(persons.select("person_id", "skills"), on="person_id", how="left",
                   maintain_order="left")["skills"].to_list(), skill_names)
    need_of = np.array([need_index[n] for n in known["need_type"]], dtype=np.int64)
    base = np.array([p_need[n] for n in sorted(need_index, key=need_index.get)])[need_of]
    return declared, need_of, known["success"].to_numpy().astype(float) - base


def _skill_matrix(skills: list[str | None], skill_names: list[str]):  # noqa: ANN202
    """(rows x skills) sparse 0/1 matrix of ';'-joined declared skills (unknown ones ignored)."""
    import scipy.sparse as sp

    index = {s: i for i, s in enumerate(skill_names)}
    rows, cols = [], []
    for i, s in enumerate(skills):
        for tag in (s.split(";") if s else []):
            if tag in index:
                rows.append(i)
                cols.append(index[tag])
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(skills), len(index)))


def _skill_variance(persons: list[str], need_of: np.ndarray, family_of: np.ndarray,
                    resid: np.ndarray) -> tuple[float, float, float]:
    """Variance components (general, family, need) of the success lift, by moments.

    Two results of one person share the general part of their lifts; on the same family they
    also share the family part; on the same need, the need part too. The mean product of the
    residuals of such pairs estimates each sum of components (their noise is independent).
    Falls back to ``DEFAULT_SKILL_VARIANCE`` for a kind of pair seen fewer than ``MIN_PAIRS``
    times.
    """
    if not len(resid):
        return DEFAULT_SKILL_VARIANCE
    frame = pl.DataFrame({"person": persons, "need": need_of, "family": family_of,
                          "r": resid})

    def pair_sums(keys: list[str]) -> tuple[float, float]:
        g = frame.group_by(keys).agg(pl.col("r").sum().alias("s"),
                                     (pl.col("r") ** 2).sum().alias("q"), pl.len().alias("n"))
        total = float(((g["s"] ** 2 - g["q"]) / 2).sum())
        count = float((g["n"] * (g["n"] - 1) / 2).sum())
        return total, count

    s_all, n_all = pair_sums(["person"])
    s_fam, n_fam = pair_sums(["person", "family"])
    s_need, n_need = pair_sums(["person", "need"])
    moments = []
    for total, count in ((s_all - s_fam, n_all - n_fam), (s_fam - s_need, n_fam - n_need),
                         (s_need, n_need)):
        moments.append(total / count if count >= MIN_PAIRS else None)
    default = DEFAULT_SKILL_VARIANCE
    c_g = moments[0] if moments[0] is not None else default[0]
    c_f = moments[1] if moments[1] is not None else c_g + default[1]
    c_n = moments[2] if moments[2] is not None else c_f + default[2]
    floor = SKILL_VARIANCE_FLOOR
    return (max(c_g, floor), max(c_f - c_g, floor), max(c_n - c_f, floor))
