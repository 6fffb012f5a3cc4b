"""MLflow: one run per training, the engine as a pyfunc, a registry with a champion gate.

:func:`log_engine_model` logs a run (parameters, metrics flattened from the evaluation report,
``evaluation.json``, calibration and ranking plots as PNG, the feature registry), logs the
:class:`~training.EngineModel` as an MLflow pyfunc *from code* (``training/pyfunc_model.py``;
input: the feature frame, output: ``candidate_id`` and ``p_success``; it scores without the
database and loads without pickle), registers it as a new version of the registered model and
moves the ``champion`` alias only when the challenger is not worse than the champion on a named
metric, within a margin, on the same holdout. The decision, both figures and the reason are
logged on the run and on the model version.

Tracking and registry URIs are always explicit (:class:`MlflowConfig`); nothing here reads the
environment. ``MLFLOW_DISABLE_TELEMETRY`` is set to ``true`` in this process before MLflow is
imported (it would otherwise try to reach a telemetry host), and MLflow is imported lazily
(``import mlflow`` costs 1-2 s and ~190 MB).

The holdout and the gate
------------------------
Two evaluations are comparable when they scored the same missions against the same outcomes
(and the same truth): :func:`holdout_id` fingerprints exactly that, and every registered version
carries it as the ``holdout`` tag. The gate takes the champion's figure

1. from the caller (``champion_value``: the champion evaluated on this holdout), or else
2. from the champion's own run, only when the champion's ``holdout`` tag equals this one.

Otherwise there is no comparable figure and the alias does not move (the day-one policy has no
evaluation at all). The champion is never re-evaluated inside :func:`log_engine_model`:
:func:`train_and_register` (what ``crunch train`` calls) does it when the tags differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureModel, feature_registry
from graph._community_graph import CommunityGraph, community_graph_from_frames
from graph._frames import CommunityFrames
from matching import PriorRanker
from matching._ranker import DEFAULT_ESTIMATOR
from training._evaluate import evaluate, heldout_missions
from training._pipeline import EngineModel, fit_engine_model

__all__ = [
    "CHAMPION_ALIAS",
    "LOWER_IS_BETTER",
    "MlflowConfig",
    "RegistrationResult",
    "champion_version",
    "default_split_at",
    "ensure_champion",
    "example_input",
    "flatten_metrics",
    "holdout_id",
    "load_champion",
    "log_engine_model",
    "register_day_one",
    "to_pyfunc_input",
    "train_and_register",
]

CHAMPION_ALIAS = "champion"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_MODEL_NAME_IN_RUN = "engine"
_ENGINE_ARTIFACT = "engine_model"
# Metrics where a smaller value is better; the gate reverses its comparison for them.
LOWER_IS_BETTER: tuple[str, ...] = ("brier", "expected_calibration_error")
_DEFAULT_GATE_METRICS = ("truth.engine.expected_successes_at_k", "logged.auc")
# MLflow metric and param keys: alphanumerics, _ - . space : / only.
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_KEY_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. :/]")
# What the pyfunc needs at load time (given explicitly: inferring them costs ~8 s).
_REQUIREMENTS = ("mlflow", "numpy", "pandas", "polars", "scipy", "scikit-learn", "skops",
                 "threadpoolctl", "bigcrunch")


def _mlflow() -> Any:
    """Import MLflow with telemetry off (it would otherwise try to reach a telemetry host)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    return mlflow


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class MlflowConfig:
    """Where runs, artifacts and registered models live.

    Parameters
    ----------
    tracking_uri : str
        E.g. ``sqlite:////home/me/.crunch/mlflow.db`` or ``http://mlflow:5000``. Never the
        community store's database (both use alembic: sharing one file fails).
    registry_uri : str or None
        Defaults to ``tracking_uri``.
    experiment : str
        Experiment of the training runs (created with ``artifact_location`` if missing).
    model_name : str
        The registered model whose versions the gate compares.
    artifact_location : str or None
        Root of the experiment's artifacts (a path or URI); ``None`` leaves it to the tracking
        server.

    Examples
    --------
    >>> cfg = MlflowConfig.under_home(Path("/srv/crunch"))
    >>> cfg.tracking_uri, cfg.artifact_location
    ('sqlite:////srv/crunch/mlflow.db', 'file:///srv/crunch/mlartifacts')
    >>> MlflowConfig.under_home(Path("/srv/crunch"), tracking_uri="http://mlflow:5000"
    ...                         ).artifact_location is None
    True
    """

    tracking_uri: str
    registry_uri: str | None = None
    experiment: str = "bigcrunch"
    model_name: str = "bigcrunch-ranker"
    artifact_location: str | None = None

    @property
    def registry(self) -> str:
        return self.registry_uri or self.tracking_uri

    @classmethod
    def under_home(cls, home: str | os.PathLike[str], *, tracking_uri: str | None = None,
                   registry_uri: str | None = None, store_url: str | None = None,
                   experiment: str = "bigcrunch",
                   model_name: str = "bigcrunch-ranker") -> MlflowConfig:
        """The default layout: ``HOME/mlflow.db`` and ``HOME/mlartifacts``.

        ``tracking_uri`` (what ``MLFLOW_TRACKING_URI`` says, read by ``service/``) overrides
        the SQLite file; artifacts stay under ``HOME`` unless it is an ``http(s)`` server,
        which keeps its own. With ``store_url`` given, a tracking URI that points at the
        community store's database raises ``ValueError``.
        """
        home = Path(home).absolute()
        uri = tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
        remote = uri.split(":", 1)[0].lower() in ("http", "https", "databricks")
        artifacts = None if remote else (home / "mlartifacts").as_uri()
        if store_url is not None:
            for u in (uri, registry_uri):
                if u is not None and _same_database(u, store_url):
                    raise ValueError(
                        "MLflow must not use the community store's database (both use "
                        "alembic); point MLFLOW_TRACKING_URI elsewhere")
        return cls(tracking_uri=uri, registry_uri=registry_uri, experiment=experiment,
                   model_name=model_name, artifact_location=artifacts)


def _same_database(a: str, b: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        ua, ub = make_url(a), make_url(b)
    except ArgumentError:
        return False
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        return bool(ua.database) and bool(ub.database) and (
            Path(ua.database).absolute().resolve() == Path(ub.database).absolute().resolve())
    return (ua.host, ua.port, ua.database) == (ub.host, ub.port, ub.database)


def _client(config: MlflowConfig) -> Any:
    mlflow = _mlflow()
    return mlflow.MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.registry)


@contextlib.contextmanager
def _process_uris(config: MlflowConfig) -> Iterator[str]:
    """Point the process's MLflow at ``config`` for a block; yields the experiment id.

    ``mlflow.pyfunc.log_model`` reads only the process-wide URIs, so logging must set them;
    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``. Both
    are put back afterwards, so that nothing else in the process (``service/`` reads that
    variable) sees this config. Reading the registry never touches them.
    """
    mlflow = _mlflow()
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # MLflow keeps the URIs set by set_*_uri in these module globals (None: unset)
    saved = (getattr(tracking_utils, "_tracking_uri", None),
             getattr(registry_utils, "_registry_uri", None),
             {k: os.environ.get(k) for k in _URI_VARIABLES})
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.registry)
    try:
        client = mlflow.MlflowClient(tracking_uri=config.tracking_uri,
                                     registry_uri=config.registry)
        exp = client.get_experiment_by_name(config.experiment)
        yield exp.experiment_id if exp is not None else client.create_experiment(
            config.experiment, artifact_location=config.artifact_location)
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------- pyfunc input


def to_pyfunc_input(features: pl.DataFrame) -> Any:
    """The pyfunc's input from a feature frame: ``kind``, ``candidate_id``, every feature.

    Features are cast to float64 and the frame converted to pandas here, at the pyfunc
    boundary (a signature inferred from a polars frame degrades to "any").

    Examples
    --------
    >>> X = to_pyfunc_input(pl.from_pandas(example_input()))
    >>> list(X.columns[:3]), X.shape == (2, 2 + len(FEATURE_NAMES))
    (['kind', 'candidate_id', 'le_fit'], True)
    """
    missing = [c for c in ("kind", "candidate_id", *FEATURE_NAMES) if c not in features.columns]
    if missing:
        raise ValueError(f"the feature frame lacks column(s) {missing}")
    return features.select(
        pl.col("kind").cast(pl.String), pl.col("candidate_id").cast(pl.String),
        *[pl.col(n).cast(pl.Float64) for n in FEATURE_NAMES],
    ).to_pandas()


# Made-up, plausible values for the input example: no row of any store goes into a model.
_EXAMPLE_VALUES: dict[str, tuple[float, float]] = {
    "le_fit": (0.4, 0.0), "le_weight": (0.6, 0.2), "n_outcomes": (2.0, 7.0),
    "tr_rate": (0.45, 0.55), "tr_rate_need": (0.4, 0.6), "tr_rate_family": (0.42, 0.5),
    "tr_recent": (0.5, 0.52), "days_since_last": (40.0, 12.0), "skill_latent": (0.1, 0.3),
    "proximity": (1.2, 2.5), "proximity_le": (1.0, 0.0), "ties_succeeded": (1.0, 3.0),
    "ties_succeeded_w": (0.7, 2.1), "ties_in_area": (0.9, 1.8), "peers_rate": (0.4, 0.5),
    "distance_km": (1.5, 0.8), "same_area": (0.0, 1.0), "availability_ratio": (1.4, 2.0),
    "load": (0.0, 0.5), "tenure_days": (200.0, 600.0), "text_fit": (0.15, 0.3),
    "is_group": (0.0, 1.0), "team_size": (1.0, 3.0), "team_fit": (1.0, 1.0),
    "group_cohesion": (0.0, 0.6), "group_reach": (0.0, 14.0),
}


def example_input() -> Any:
    """A synthetic two-row pyfunc input (a person and a group), for signatures and docs."""
    import pandas as pd

    cols: dict[str, Any] = {"kind": ["person", "group"],
                            "candidate_id": ["example-1", "example-2"]}
    for name in FEATURE_NAMES:
        cols[name] = np.asarray(_EXAMPLE_VALUES.get(name, (0.0, 0.0)), dtype=np.float64)
    return pd.DataFrame(cols)


# ------------------------------------------------------------------------------ holdout


def _digest(h: Any, frame: pl.DataFrame) -> None:
    h.update(frame.write_csv().encode())


def holdout_id(frames: CommunityFrames, split_at: datetime, *, k: int = 10,
               truth: pl.DataFrame | None = None, max_missions: int | None = None) -> str:
    """Fingerprint of what :func:`training.evaluate` scores for this split.

    Two evaluations with the same id scored the same held-out missions against the same
    assignments, verified outcomes and truth, with the same ``k``, after the same amount of
    history: their figures compare. Unrelated writes (a new shortlist on an open mission) leave
    it unchanged, unlike the store version. Newer data can add held-out missions, as each
    counts only once its measurement is complete as of the store's latest data
    (:func:`~training.heldout_missions`).
    """
    held = heldout_missions(frames, split_at)
    if max_missions is not None:
        held = held.head(max_missions)
    ids = held["mission_id"].sort()
    h = hashlib.sha256()
    h.update(json.dumps({"split_at": split_at.isoformat(), "k": k,
                         "max_missions": max_missions, "truth": truth is not None}).encode())
    _digest(h, ids.to_frame())
    _digest(h, frames.assignments.filter(pl.col("mission_id").is_in(ids.implode()))
            .select("assignment_id", "mission_id", "person_id", "group_id", "shortlist_id",
                    "propensity").sort("assignment_id"))
    _digest(h, frames.verified_outcomes().filter(pl.col("mission_id").is_in(ids.implode()))
            .select("outcome_id", "assignment_id", "success").sort("outcome_id"))
    # the history the features of held-out missions are built from
    before = frames.verified_outcomes().filter(pl.col("measured_at") < split_at)
    h.update(f"history:{before.height}:{frames.persons.height}:{frames.ties.height}".encode())
    if truth is not None:
        _digest(h, truth.filter(pl.col("mission_id").is_in(ids.implode()))
                .select("mission_id", "person_id", "group_id", "p_success")
                .sort("mission_id", "person_id", "group_id", nulls_last=True))
    return "ho-" + h.hexdigest()[:16]


def default_split_at(frames: CommunityFrames, holdout_share: float = 0.2) -> datetime | None:
    """A split that holds out the latest ``holdout_share`` of the closed missions.

    ``None`` when fewer than 5 missions are closed (nothing worth evaluating on).
    """
    closed = frames.missions.filter(pl.col("status") == "closed")["created_at"].sort()
    if closed.len() < 5:
        return None
    i = min(closed.len() - 1, max(1, int(round((1.0 - holdout_share) * closed.len()))))
    return closed[i]


# ------------------------------------------------------------------------------ metrics


def _key(name: str) -> str:
    return _KEY_UNSAFE.sub("_", name)[:250]


def flatten_metrics(report: dict[str, Any] | None) -> dict[str, float]:
    """Every finite numeric leaf of an evaluation report, keyed by its dotted path.

    Segment lists become ``<path>.<segment>.<leaf>``; other lists (the calibration table) are
    left to ``evaluation.json`` and the plots. Booleans and empty values are skipped.

    Examples
    --------
    >>> flatten_metrics({"k": 10, "logged": {"auc": 0.61, "calibration": [{"bin": 0}],
    ...                  "segments": {"experience": [{"segment": "newcomer", "n_people": 33,
    ...                  "value": {"auc": 0.56}}]}}})
    {'k': 10.0, 'logged.auc': 0.61, 'logged.segments.experience.newcomer.n_people': 33.0, \
'logged.segments.experience.newcomer.auc': 0.56}
    """
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, int | float | np.integer | np.floating):
            if math.isfinite(float(node)):
                out[_key(prefix)] = float(node)
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if isinstance(node, list):
            for item in node:
                if isinstance(item, dict) and "segment" in item:
                    seg = f"{prefix}.{item['segment']}"
                    for k in ("n_people", "n_rows"):
                        walk(f"{seg}.{k}", item.get(k))
                    walk(seg, item.get("value"))

    walk("", report or {})
    return out


def _resolve_gate_metric(metrics: dict[str, float], gate_metric: str | None) -> str:
    if gate_metric:
        return gate_metric
    for name in _DEFAULT_GATE_METRICS:
        if name in metrics:
            return name
    return _DEFAULT_GATE_METRICS[-1]


def _lower_is_better(metric: str) -> bool:
    leaf = metric.rsplit(".", 1)[-1]
    return leaf in LOWER_IS_BETTER


# -------------------------------------------------------------------------------- plots


def _plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Calibration and ranking plots: aggregates only, never a person's id."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    logged = report.get("logged") or {}
    table = [b for b in logged.get("calibration") or [] if b.get("count")]
    if table:
        fig = Figure(figsize=(5, 5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        x = [b["mean_predicted"] for b in table]
        y = [b["observed_rate"] for b in table]
        n = np.asarray([b["count"] for b in table], dtype=float)
        ax.plot(x, y, color="tab:blue", linewidth=1)
        ax.scatter(x, y, s=20 + 200 * n / n.max(), color="tab:blue", label="bins (size: rows)")
        ece = logged.get("expected_calibration_error")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(success)",
               ylabel="observed success rate",
               title="Calibration on held-out outcomes"
               + (f" (ECE {ece:.3f})" if isinstance(ece, float) else ""))
        ax.legend(loc="upper left")
        paths.append(out / "calibration.png")
        fig.savefig(paths[-1], dpi=100)

    truth = report.get("truth")
    k = report.get("k")
    if truth:
        names = [n for n in ("engine", "oracle", "random", "nearest", "most_experienced",
                             "best_past_success_rate") if isinstance(truth.get(n), dict)]
        fig = Figure(figsize=(10, 4))
        FigureCanvasAgg(fig)
        for i, (metric, title) in enumerate((("expected_successes_at_k",
                                               f"Expected successes in top {k}"),
                                              ("ndcg_at_k", f"NDCG@{k} (true p_success)"))):
            ax = fig.add_subplot(1, 2, i + 1)
            vals = [truth[n].get(metric) or 0.0 for n in names]
            colors = ["tab:blue" if n == "engine" else "tab:green" if n == "oracle"
                      else "tab:grey" for n in names]
            ax.barh(names, vals, color=colors)
            ax.invert_yaxis()
            ax.set(xlabel="mean per held-out mission", title=title)
        fig.tight_layout()
        paths.append(out / "ranking_at_k.png")
        fig.savefig(paths[-1], dpi=100)
    elif any(f"ranking_{m}" in logged for m in ("ndcg_at_k", "recall_at_k", "mrr_at_k")):
        fig = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        names = [m for m in ("ndcg_at_k", "recall_at_k", "mrr_at_k")
                 if isinstance(logged.get(f"ranking_{m}"), float)]
        ax.bar([n.replace("_at_k", f"@{k}") for n in names],
               [logged[f"ranking_{n}"] for n in names], color="tab:blue")
        ax.set(ylim=(0, 1), title="Ranking of assigned candidates")
        fig.tight_layout()
        paths.append(out / "ranking_at_k.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


# ------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`log_engine_model` did: the run, the version, the gate's decision.

    ``promoted`` is True when the ``champion`` alias now points at ``version``.
    ``champion_value`` is the figure the challenger was compared with (``None``: none was
    comparable), ``champion_source`` where it came from.
    """

    run_id: str
    model_uri: str
    version: int
    promoted: bool
    reason: str
    gate_metric: str
    challenger_value: float | None
    champion_value: float | None
    champion_source: str | None
    previous_champion: int | None
    champion: int | None
    margin: float
    holdout: str | None
    metrics: dict[str, float] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("metrics")
        return d


def _decide(challenger: float | None, champion: float | None, *, has_champion: bool,
            metric: str, margin: float, source: str | None) -> tuple[bool, str]:
    if not has_champion:
        return True, "no champion yet"
    if challenger is None:
        return False, f"the challenger has no {metric} (no evaluation on a holdout)"
    if champion is None:
        return False, (f"no figure of the champion on this holdout for {metric} ({source}): "
                       "pass champion_value (the champion evaluated on it)")
    lower = _lower_is_better(metric)
    if lower:
        ok = challenger <= champion + margin
        rule = f"challenger {challenger:.6g} <= champion {champion:.6g} + margin {margin:g}"
    else:
        ok = challenger >= champion - margin
        rule = f"challenger {challenger:.6g} >= champion {champion:.6g} - margin {margin:g}"
    verdict = "passed" if ok else "failed"
    return ok, f"{metric}: {rule} {'holds' if ok else 'does not hold'} ({verdict}; {source})"


# ------------------------------------------------------------------------------ logging


def _requirements() -> list[str]:
    reqs = []
    for dist in _REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _params(model: EngineModel, params: dict[str, Any] | None) -> dict[str, str]:
    base: dict[str, Any] = {
        "split_at": model.split_at.isoformat() if model.split_at else "none",
        "ranker": model.ranker.name, "ranker_version": model.ranker.version,
        "feature_set": FEATURE_SET_VERSION,
        **{f"info.{k}": v for k, v in model.info.items()},
        **(params or {}),
    }
    try:
        base.update({f"ranker.{k}": v for k, v in model.ranker.get_params(deep=False).items()})
    except (AttributeError, TypeError):  # pragma: no cover - every BaseRanker has them
        pass
    return {_key(k): str(v)[:6000] for k, v in base.items()}


def log_engine_model(model: EngineModel, report: dict[str, Any] | None, config: MlflowConfig,
                     params: dict[str, Any] | None = None, *, holdout: str | None = None,
                     gate_metric: str | None = None, margin: float = 0.0,
                     champion_value: float | None = None,
                     champion_source: str = "passed by the caller",
                     run_name: str | None = None) -> RegistrationResult:
    """Log a run and the engine's pyfunc, register a version and apply the champion gate.

    Parameters
    ----------
    model : EngineModel
        The challenger.
    report : dict or None
        Its :func:`training.evaluate` report (``None``: not evaluated, e.g. the day-one
        policy). Logged as ``evaluation.json``, flattened into metrics and plotted.
    config : MlflowConfig
    params : dict, optional
        Extra run parameters (data version, command line...).
    holdout : str, optional
        :func:`holdout_id` of the evaluation; stored as the version's ``holdout`` tag.
    gate_metric : str, optional
        A key of :func:`flatten_metrics`; default ``truth.engine.expected_successes_at_k``
        when the report has it, else ``logged.auc``. Lower is better for the names in
        :data:`LOWER_IS_BETTER`.
    margin : float
        The challenger is promoted when ``challenger >= champion - margin`` (``<= champion +
        margin`` when lower is better).
    champion_value : float, optional
        The champion's figure on this holdout, computed by the caller. Without it the gate
        uses the champion's own run only if its ``holdout`` tag equals ``holdout``; with no
        comparable figure the alias stays.

    Returns
    -------
    RegistrationResult

    Examples
    --------
    >>> cfg = MlflowConfig.under_home(home)  # doctest: +SKIP
    >>> res = log_engine_model(model, evaluate(frames, model, T, truth=truth), cfg,
    ...                        holdout=holdout_id(frames, T, truth=truth), margin=0.05)
    ...                        # doctest: +SKIP
    >>> res.promoted, res.reason  # doctest: +SKIP
    """
    mlflow = _mlflow()
    client = _client(config)
    metrics = flatten_metrics(report)
    metric = _resolve_gate_metric(metrics, gate_metric)
    kind = "day-one" if isinstance(model.ranker, PriorRanker) else "trained"
    tags = {"feature_set": FEATURE_SET_VERSION, "holdout": holdout or "none",
            "bigcrunch.kind": kind, "engine_version": model.version}

    with (_process_uris(config) as experiment_id,
          mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run):
        run_id = run.info.run_id
        mlflow.log_params(_params(model, params))
        items = list(metrics.items())
        for i in range(0, len(items), 500):  # the tracking API takes at most 1000 per batch
            mlflow.log_metrics(dict(items[i:i + 500]))
        mlflow.log_dict({"feature_set_version": FEATURE_SET_VERSION,
                         "features": feature_registry()}, "feature_registry.json")
        with tempfile.TemporaryDirectory(prefix="crunch-mlflow-") as tmp:
            tmp_path = Path(tmp)
            if report is not None:
                mlflow.log_dict(report, "evaluation.json")
                plots = tmp_path / "plots"
                plots.mkdir()
                for png in _plots(report, plots):
                    mlflow.log_artifact(str(png), artifact_path="plots")
            engine_dir = model.save(tmp_path / _ENGINE_ARTIFACT)
            example = example_input()
            out = example[["candidate_id"]].assign(p_success=np.array([0.3, 0.6]))
            info = mlflow.pyfunc.log_model(
                name=_MODEL_NAME_IN_RUN, python_model=str(PYFUNC_CODE),
                artifacts={_ENGINE_ARTIFACT: str(engine_dir)},
                pip_requirements=_requirements(),
                signature=mlflow.models.infer_signature(example, out),
                input_example=example,
            )
        mv = mlflow.register_model(info.model_uri, config.model_name, tags=tags)
        version = int(mv.version)

        previous = champion_version(config)
        challenger_value = metrics.get(metric)
        source: str | None = None
        if previous is not None and champion_value is None:
            champion_value, source = _champion_figure(client, config, previous, holdout, metric)
        elif previous is not None:
            source = champion_source
        promoted, reason = _decide(challenger_value, champion_value,
                                   has_champion=previous is not None, metric=metric,
                                   margin=margin, source=source)
        if promoted:
            client.set_registered_model_alias(config.model_name, CHAMPION_ALIAS, str(version))
        decision = {
            "gate.decision": "promoted" if promoted else "kept champion",
            "gate.reason": reason, "gate.metric": metric, "gate.margin": str(margin),
            "gate.champion_source": source or "none",
            "gate.previous_champion": str(previous) if previous is not None else "none",
            "gate.version": str(version),
        }
        mlflow.set_tags(decision)
        for name, value in (("gate.challenger_value", challenger_value),
                            ("gate.champion_value", champion_value)):
            if value is not None:
                mlflow.log_metric(name, float(value))
        for key, value in decision.items():
            if key != "gate.version":
                client.set_model_version_tag(config.model_name, str(version), key, value)

    return RegistrationResult(
        run_id=run_id, model_uri=f"models:/{config.model_name}/{version}", version=version,
        promoted=promoted, reason=reason, gate_metric=metric,
        challenger_value=challenger_value, champion_value=champion_value,
        champion_source=source, previous_champion=previous,
        champion=version if promoted else previous, margin=margin, holdout=holdout,
        metrics=metrics)


def _champion_figure(client: Any, config: MlflowConfig, version: int, holdout: str | None,
                     metric: str) -> tuple[float | None, str | None]:
    """The champion's logged figure, only when it was evaluated on the same holdout."""
    mv = client.get_model_version(config.model_name, str(version))
    theirs = (mv.tags or {}).get("holdout")
    if holdout is None or theirs != holdout:
        return None, f"champion v{version} was evaluated on another holdout ({theirs})"
    value = client.get_run(mv.run_id).data.metrics.get(metric)
    if value is None:
        return None, f"champion v{version} has no {metric}"
    return float(value), f"champion v{version}'s run, same holdout"


# ----------------------------------------------------------------------------- registry


def champion_version(config: MlflowConfig) -> int | None:
    """The version the ``champion`` alias points at (``None``: no champion yet)."""
    from mlflow.exceptions import MlflowException

    client = _client(config)
    try:
        return int(client.get_model_version_by_alias(config.model_name, CHAMPION_ALIAS).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _any_version(config: MlflowConfig) -> bool:
    client = _client(config)
    return bool(client.search_model_versions(f"name = '{config.model_name}'", max_results=1))


def load_champion(config: MlflowConfig) -> tuple[EngineModel, int]:
    """The champion's :class:`~training.EngineModel` and its version, without the pyfunc.

    Raises ``LookupError`` when there is no champion yet.
    """
    version = champion_version(config)
    if version is None:
        raise LookupError(f"no {CHAMPION_ALIAS} alias on the registered model "
                          f"{config.model_name!r}")
    mlflow = _mlflow()
    # resolved with an explicit client: "models:/" URIs would go through the process-wide
    # registry URI whatever download_artifacts is given
    root = _client(config).get_model_version_download_uri(config.model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="crunch-champion-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{root.rstrip('/')}/artifacts/{_ENGINE_ARTIFACT}", dst_path=tmp,
            tracking_uri=config.tracking_uri)
        # everything is read into memory: the folder can go
        return EngineModel.load(local), version


def register_day_one(config: MlflowConfig, feature_model: FeatureModel, *,
                     split_at: datetime | None = None) -> RegistrationResult | None:
    """Register the day-one :class:`~matching.PriorRanker` as the first version and champion.

    Does nothing (returns ``None``) once any version of the model exists. ``feature_model`` is
    fitted on whatever data exists (possibly none).
    """
    if _any_version(config):
        return None
    model = EngineModel(feature_model, PriorRanker(), split_at,
                        {"day_one": "hand-set prior policy, no outcomes needed"})
    return log_engine_model(model, None, config, run_name="day-one")


# ---------------------------------------------------------------------- what the CLI calls


def train_and_register(frames: CommunityFrames, split_at: datetime, config: MlflowConfig, *,
                       truth: pl.DataFrame | None = None, estimator: str = DEFAULT_ESTIMATOR,
                       k: int = 10, gate_metric: str | None = None, margin: float = 0.0,
                       seed: int = 0,
                       graph: CommunityGraph | None = None, max_missions: int | None = None,
                       evaluate_champion: bool = True, params: dict[str, Any] | None = None,
                       model: EngineModel | None = None) -> RegistrationResult:
    """``crunch train``: fit before ``split_at``, evaluate after it, log, register, gate.

    When a champion exists and its ``holdout`` tag differs from this evaluation's, it is
    evaluated on this holdout too (``evaluate_champion=False`` skips that: the alias then
    stays unless the tags match). A day-one champion is first taken back to ``split_at``
    (its feature model refitted on the data before it, see :func:`_before_split`), so that
    champion and challenger both see only the past of the holdout. ``model`` skips the fit
    (it must be fitted before ``split_at``).
    """
    graph = graph if graph is not None else community_graph_from_frames(frames)
    if model is None:
        model = fit_engine_model(frames, split_at, estimator=estimator, seed=seed, graph=graph)
    report = evaluate(frames, model, split_at, truth=truth, k=k, graph=graph, seed=seed,
                      max_missions=max_missions)
    hid = holdout_id(frames, split_at, k=k, truth=truth, max_missions=max_missions)
    metric = _resolve_gate_metric(flatten_metrics(report), gate_metric)
    champion_value, source = None, "passed by the caller"
    current = champion_version(config)
    if evaluate_champion and current is not None:
        client = _client(config)
        value, _ = _champion_figure(client, config, current, hid, metric)
        if value is None:
            champ, _ = load_champion(config)
            champ, refitted = _before_split(champ, frames, split_at)
            champ_report = evaluate(frames, champ, split_at, truth=truth, k=k, graph=graph,
                                    seed=seed, max_missions=max_missions)
            champion_value = flatten_metrics(champ_report).get(metric)
            source = f"champion v{current} re-evaluated on this holdout"
            if refitted:
                source += " (day-one policy: its feature model refitted on data before the split)"
            elif _fitted_after(champ, split_at):
                source += " (it was fitted on later data: its figure is optimistic)"
    run_params = {"data_version": frames.version, "k": k, "margin": margin, **(params or {})}
    return log_engine_model(model, report, config, run_params, holdout=hid,
                            gate_metric=metric, margin=margin, champion_value=champion_value,
                            champion_source=source)


def _fitted_after(model: EngineModel, split_at: datetime) -> bool:
    """Whether any learned part of ``model`` saw data from ``split_at`` on."""
    cutoff = model.feature_model.fitted_.cutoff
    return cutoff > split_at or (model.split_at is not None and model.split_at > split_at)


def _before_split(model: EngineModel, frames: CommunityFrames, split_at: datetime
                  ) -> tuple[EngineModel, bool]:
    """The day-one policy as it would have been at ``split_at``; other models unchanged.

    The day-one policy learns nothing from outcomes but its :class:`~features.FeatureModel`
    (priors, vocabulary, factors), fitted on whatever existed when it was registered (on
    ``crunch up``: everything). Evaluated on a holdout after ``split_at`` with that feature
    model it would see the holdout's own outcomes, against a challenger that saw only what
    came before: its feature model is refitted, with the same parameters, on the data before
    ``split_at``, so that both sides of the gate see the same past. A trained champion cannot
    be taken back in time this way (its ranker learned from later rows): it is returned as
    is, and its figure is flagged as optimistic by the caller.

    Returns the model to evaluate and whether it was refitted.
    """
    if not isinstance(model.ranker, PriorRanker) or not _fitted_after(model, split_at):
        return model, False
    params = model.feature_model.to_dict()["params"]
    fm = FeatureModel(**params).fit(frames, split_at)
    info = {**model.info, "feature_model_refitted_at": split_at.isoformat()}
    return EngineModel(fm, model.ranker, split_at, info), True


def ensure_champion(frames: CommunityFrames, config: MlflowConfig, *,
                    truth: pl.DataFrame | None = None, now: datetime | None = None,
                    holdout_share: float = 0.2, gate_metric: str | None = None,
                    margin: float = 0.0, seed: int = 0, max_missions: int | None = None
                    ) -> list[RegistrationResult]:
    """``crunch up``: make sure a champion exists; returns what was registered (maybe nothing).

    With no version at all, the day-one policy is registered first (its feature model fitted
    on everything before ``now``). Then, if there is no champion or the only one is the
    day-one policy registered here, a model is trained with :func:`default_split_at` and goes
    through the gate against it (the day-one policy evaluated with its feature model refitted
    at that split, as the challenger's). With too little data for either, the day-one policy
    stays.
    """
    results: list[RegistrationResult] = []
    if champion_version(config) is not None:
        return results
    now = now or datetime.now(UTC)
    if not _any_version(config):
        fm = FeatureModel(seed=seed).fit(frames, now)
        day_one = register_day_one(config, fm, split_at=now)
        if day_one is not None:
            results.append(day_one)
    split_at = default_split_at(frames, holdout_share)
    if split_at is None:
        return results
    graph = community_graph_from_frames(frames)
    model = fit_engine_model(frames, split_at, seed=seed, graph=graph)
    if isinstance(model.ranker, PriorRanker):
        return results  # too few outcomes to learn from: the day-one policy serves
    results.append(train_and_register(frames, split_at, config, truth=truth,
                                      gate_metric=gate_metric, margin=margin, seed=seed,
                                      graph=graph, model=model, max_missions=max_missions))
    return results
