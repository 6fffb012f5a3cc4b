"""Tests of training._mlflow: runs, the pyfunc from code, the registry and its champion gate.

One simulated community (300 persons x 120 missions) and one fitted model are shared by the
module; every registry lives in tmp_path (a copy of one empty MLflow database, created once:
creating it costs several seconds). The serving test starts ``mlflow models serve`` for real.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from support.simulated import simulated_frames

import training
from features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureModel
from graph import sqlite_url
from matching import PriorRanker, build_training_set, labelled_assignments
from matching._ranker import PRIOR_WEIGHTS
from training import _mlflow as M
from training._evaluate import evaluate, heldout_missions
from training._pipeline import EngineModel, fit_engine_model

MAX_MISSIONS = 15  # evaluation on the first 15 held-out missions: enough, and fast
REPO = Path(training.__file__).resolve().parents[1]

pytestmark = [
    # MLflow's own warnings under SQLAlchemy 2.1 and pandas 3 (see VERIFIED.md)
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*range is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:mlflow"),
    # raised while MLflow imports its own agent types, not about our model
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def community(tmp_path_factory):
    root = tmp_path_factory.mktemp("community")
    frames, truth = simulated_frames(root, 300, 120, seed=0)
    split_at = M.default_split_at(frames, holdout_share=0.3)
    model = fit_engine_model(frames, split_at)
    assert not isinstance(model.ranker, PriorRanker), model.info  # a real trained ranker
    report = evaluate(frames, model, split_at, truth=truth, max_missions=MAX_MISSIONS)
    holdout = M.holdout_id(frames, split_at, truth=truth, max_missions=MAX_MISSIONS)
    labelled = labelled_assignments(frames).filter(
        pl.col("mission_id").is_in(heldout_missions(frames, split_at)["mission_id"]
                                   .implode()))
    features = build_training_set(frames, model.feature_model, labelled).rows
    return {"root": root, "frames": frames, "truth": truth, "split_at": split_at,
            "model": model, "report": report, "holdout": holdout, "features": features,
            "store_url": sqlite_url(root / "store.db")}


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory):
    """An empty, migrated MLflow database, copied by each registry (first client call)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    t0 = time.perf_counter()
    assert M.champion_version(M.MlflowConfig(tracking_uri=f"sqlite:///{path}")) is None
    print(f"first MLflow client call (import + new database): {time.perf_counter() - t0:.1f} s")
    return path


def _registry(home: Path, template: Path) -> M.MlflowConfig:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / "mlflow.db")
    return M.MlflowConfig.under_home(home)


@pytest.fixture(scope="module")
def registry(community, empty_mlflow_db, tmp_path_factory):
    """Day-one v1, then the trained challenger v2 promoted over it."""
    cfg = _registry(tmp_path_factory.mktemp("home"), empty_mlflow_db)
    c = community
    day_one = M.register_day_one(cfg, c["model"].feature_model, split_at=c["split_at"])
    prior = EngineModel(c["model"].feature_model, PriorRanker(), c["split_at"])
    prior_report = evaluate(c["frames"], prior, c["split_at"], truth=c["truth"],
                            max_missions=MAX_MISSIONS)
    metric = "truth.engine.expected_successes_at_k"
    prior_value = M.flatten_metrics(prior_report)[metric]
    t0 = time.perf_counter()
    # the margin covers the prior being better on this small holdout: the test is about
    # logging, the gate has its own tests
    challenger = M.log_engine_model(c["model"], c["report"], cfg, {"data_version": 7},
                                    holdout=c["holdout"], gate_metric=metric, margin=10.0,
                                    champion_value=prior_value,
                                    champion_source="day-one evaluated on this holdout")
    print(f"log_engine_model (run + pyfunc + registry): {time.perf_counter() - t0:.1f} s")
    return {"config": cfg, "day_one": day_one, "challenger": challenger,
            "prior_value": prior_value}


def _client(cfg: M.MlflowConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry)


# ------------------------------------------------------------------------------- config


def test_config_defaults_under_home_and_refuses_the_store(tmp_path):
    cfg = M.MlflowConfig.under_home(tmp_path)
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.registry == cfg.tracking_uri
    assert cfg.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert M.MlflowConfig.under_home(tmp_path, tracking_uri="postgresql://h/mlf").tracking_uri \
        == "postgresql://h/mlf"
    store = sqlite_url(tmp_path / "crunch.db")
    M.MlflowConfig.under_home(tmp_path, store_url=store)  # a different file: fine
    with pytest.raises(ValueError, match="community store"):
        M.MlflowConfig.under_home(tmp_path, tracking_uri=store, store_url=store)
    with pytest.raises(ValueError, match="community store"):
        M.MlflowConfig.under_home(tmp_path, tracking_uri="postgresql+psycopg://u@db:5432/c",
                                  store_url="postgresql://u:pw@db:5432/c")


def test_flatten_metrics_and_decision_rules():
    import doctest

    res = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted >= 3
    kw = {"has_champion": True, "margin": 0.1, "source": "s"}
    assert M._decide(0.95, 1.0, metric="logged.auc", **kw)[0]          # within the margin
    assert not M._decide(0.85, 1.0, metric="logged.auc", **kw)[0]      # worse than that
    assert M._decide(0.29, 0.2, metric="logged.brier", **kw)[0]        # lower is better
    assert not M._decide(0.31, 0.2, metric="logged.brier", **kw)[0]
    assert not M._decide(0.9, None, metric="logged.auc", **kw)[0]      # nothing to compare
    assert not M._decide(None, 0.5, metric="logged.auc", **kw)[0]
    assert M._decide(None, None, metric="logged.auc", has_champion=False, margin=0.0,
                     source=None) == (True, "no champion yet")


def test_holdout_id_depends_on_what_is_evaluated(community):
    c = community
    frames, split_at = c["frames"], c["split_at"]
    same = M.holdout_id(frames, split_at, truth=c["truth"], max_missions=MAX_MISSIONS)
    assert same == c["holdout"]
    assert M.holdout_id(frames, split_at, truth=None, max_missions=MAX_MISSIONS) != same
    assert M.holdout_id(frames, split_at, truth=c["truth"], k=5,
                        max_missions=MAX_MISSIONS) != same
    # an outcome of a held-out mission changes: not the same holdout any more
    held = heldout_missions(frames, split_at).head(MAX_MISSIONS)["mission_id"].implode()
    target = frames.verified_outcomes().filter(pl.col("mission_id").is_in(held))["outcome_id"][0]
    flipped = frames.outcomes.with_columns(
        pl.when(pl.col("outcome_id") == target).then(~pl.col("success"))
        .otherwise(pl.col("success")).alias("success"))
    from dataclasses import replace

    assert M.holdout_id(replace(frames, outcomes=flipped), split_at, truth=c["truth"],
                        max_missions=MAX_MISSIONS) != same


# ---------------------------------------------------------------------------- the run


def test_run_logs_params_metrics_evaluation_plots_and_registry(registry, community):
    cfg, res = registry["config"], registry["challenger"]
    client = _client(cfg)
    run = client.get_run(res.run_id)
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    model = community["model"]
    assert p["split_at"] == community["split_at"].isoformat()
    assert p["ranker"] == model.ranker.name and p["ranker.estimator"] == "hgb"
    assert p["feature_set"] == FEATURE_SET_VERSION and t["feature_set"] == FEATURE_SET_VERSION
    assert p["info.training_rows"] == str(model.info["training_rows"])
    assert p["data_version"] == "7" and t["holdout"] == community["holdout"]
    report = community["report"]
    assert m["logged.auc"] == pytest.approx(report["logged"]["auc"])
    assert m["truth.engine.expected_successes_at_k"] == pytest.approx(
        report["truth"]["engine"]["expected_successes_at_k"])
    assert m["truth.oracle.ndcg_at_k"] == pytest.approx(1.0)
    assert any(k.startswith("logged.segments.experience.") for k in m)

    files = {f.path for f in client.list_artifacts(res.run_id)}
    assert {"evaluation.json", "feature_registry.json", "plots"} <= files
    plots = {f.path for f in client.list_artifacts(res.run_id, "plots")}
    assert plots == {"plots/calibration.png", "plots/ranking_at_k.png"}
    local = Path(client.download_artifacts(res.run_id, "", dst_path=str(
        community["root"] / "run-artifacts")))
    assert json.loads((local / "evaluation.json").read_text()) == json.loads(
        json.dumps(report))
    reg = json.loads((local / "feature_registry.json").read_text())
    assert reg["feature_set_version"] == FEATURE_SET_VERSION
    assert [f["name"] for f in reg["features"]] == list(FEATURE_NAMES)
    for png in plots:
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (local / png).stat().st_size > 5_000  # a drawn figure, not an empty canvas

    # registered: v1 day-one, v2 this run, champion v2; the decision is on run and version
    assert registry["day_one"].version == 1 and registry["day_one"].promoted
    assert res.version == 2 and res.previous_champion == 1 and res.promoted
    assert M.champion_version(cfg) == 2
    mv = client.get_model_version(cfg.model_name, "2")
    assert mv.run_id == res.run_id and mv.tags["holdout"] == community["holdout"]
    assert mv.tags["gate.decision"] == t["gate.decision"] == "promoted"
    assert m["gate.champion_value"] == pytest.approx(registry["prior_value"])
    assert t["gate.champion_source"] == "day-one evaluated on this holdout"


def test_input_example_is_synthetic(registry, community):
    cfg = registry["config"]
    import mlflow

    root = _client(cfg).get_model_version_download_uri(cfg.model_name, "2")
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=root, tracking_uri=cfg.tracking_uri,
        dst_path=str(community["root"] / "model-v2")))
    example = json.loads((local / "input_example.json").read_text())
    columns = example["columns"]
    ids = [row[columns.index("candidate_id")] for row in example["data"]]
    assert ids == ["example-1", "example-2"]
    real = set(community["frames"].persons["person_id"]) | set(
        community["frames"].groups["group_id"])
    assert not real & set(ids)
    assert columns == ["kind", "candidate_id", *FEATURE_NAMES]
    # the pyfunc file travels with the model: loading runs it, nothing is unpickled
    assert (local / "pyfunc_model.py").read_text() == M.PYFUNC_CODE.read_text()
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))


def test_day_one_is_registered_once(registry, community):
    again = M.register_day_one(registry["config"], community["model"].feature_model)
    assert again is None
    run = _client(registry["config"]).get_run(registry["day_one"].run_id)
    assert run.data.tags["bigcrunch.kind"] == "day-one"
    assert run.data.params["ranker"] == "prior"


# --------------------------------------------------------------------------- the gate


def test_gate_moves_the_alias_only_when_not_worse(community, empty_mlflow_db, tmp_path):
    c = community
    cfg = _registry(tmp_path / "home", empty_mlflow_db)
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # NDCG over every eligible candidate: the first held-out missions have fewer than k
    # candidates, so expected successes in the top k are the same for every ranking there
    metric = "truth.engine.ndcg_at_k"
    M.register_day_one(cfg, c["model"].feature_model, split_at=c["split_at"])

    # the day-one champion has no evaluation on this holdout: no comparable figure, no move
    blind = M.log_engine_model(c["model"], c["report"], cfg, holdout=c["holdout"],
                               gate_metric=metric)
    assert (blind.version, blind.promoted, M.champion_version(cfg)) == (2, False, 1)
    assert "no figure of the champion" in blind.reason
    assert _client(cfg).get_run(blind.run_id).data.tags["gate.decision"] == "kept champion"

    # figure passed by the caller, the challenger is not worse: promoted. The challenger
    # is the day-one prior evaluated on this holdout: on a 300-person city its ranking is a
    # steadier yardstick than a model trained on a few hundred rows.
    good = EngineModel(c["model"].feature_model, PriorRanker(), c["split_at"])
    good_report = evaluate(c["frames"], good, c["split_at"], truth=c["truth"],
                           max_missions=MAX_MISSIONS)
    value = good_report["truth"]["engine"]["ndcg_at_k"]
    up = M.log_engine_model(good, good_report, cfg, holdout=c["holdout"],
                            gate_metric=metric, champion_value=value - 0.01)
    assert (up.version, up.promoted, M.champion_version(cfg)) == (3, True, 3)

    # a worse challenger (the prior with its weights reversed) on the same holdout: the
    # champion's own figure is found through the holdout tag, and the alias stays
    reversed_prior = EngineModel(c["model"].feature_model, PriorRanker(
        weights={k: -w for k, w in PRIOR_WEIGHTS.items()}), c["split_at"])
    worse_report = evaluate(c["frames"], reversed_prior, c["split_at"], truth=c["truth"],
                            max_missions=MAX_MISSIONS)
    worse_value = M.flatten_metrics(worse_report)[metric]
    assert worse_value < value - 0.05, (worse_value, value)
    margin = 0.01
    down = M.log_engine_model(reversed_prior, worse_report, cfg, holdout=c["holdout"],
                              gate_metric=metric, margin=margin)
    assert (down.version, down.promoted, M.champion_version(cfg)) == (4, False, 3)
    assert down.champion_value == pytest.approx(value)
    assert down.challenger_value == pytest.approx(worse_value)
    assert down.champion_source == "champion v3's run, same holdout"
    run = _client(cfg).get_run(down.run_id)
    assert run.data.tags["gate.decision"] == "kept champion"
    assert run.data.tags["gate.metric"] == metric
    assert "does not hold" in run.data.tags["gate.reason"]
    assert run.data.metrics["gate.challenger_value"] == pytest.approx(worse_value)
    assert run.data.metrics["gate.champion_value"] == pytest.approx(value)
    mv = _client(cfg).get_model_version(cfg.model_name, "4")
    assert mv.tags["gate.decision"] == "kept champion"
    # with a margin wider than the gap it would have passed: the margin is what decides
    wide = M._decide(worse_value, value, has_champion=True, metric=metric,
                     margin=value - worse_value + 1e-9, source="s")
    assert wide[0]
    # logging pointed MLflow at cfg only for its duration (service/ reads that variable)
    assert {k: os.environ.get(k) for k in env_before} == env_before
    # never stages: only the alias
    assert all(v.current_stage in (None, "None") for v in
               _client(cfg).search_model_versions(f"name = '{cfg.model_name}'"))


# ---------------------------------------------------------------------------- scoring


def test_pyfunc_scores_equal_in_process(registry, community, monkeypatch):
    cfg = registry["config"]
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    import mlflow

    X = M.to_pyfunc_input(community["features"])
    assert len(X) >= 20
    expected = community["model"].ranker.predict_proba(X)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    out = pyfunc.predict(X)
    assert list(out.columns) == ["candidate_id", "p_success"]
    assert out["candidate_id"].tolist() == X["candidate_id"].tolist()
    np.testing.assert_array_equal(out["p_success"].to_numpy(), expected)
    engine, version = M.load_champion(cfg)
    assert version == 2 and engine.version == community["model"].version
    np.testing.assert_array_equal(engine.ranker.predict_proba(X), expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: str) -> dict:
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_mlflow_models_serve_scores_equal(registry, community, tmp_path):
    cfg = registry["config"]
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking_uri,
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           # the server imports training from the code under test, whatever pip installed
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           # uvicorn of this interpreter
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    log = (tmp_path / "serve.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m",
         f"models:/{cfg.model_name}@champion", "--env-manager", "local", "-p", str(port),
         "-h", "127.0.0.1", "-w", "1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        print(f"mlflow models serve ready after {time.perf_counter() - t0:.1f} s")

        X = M.to_pyfunc_input(community["features"])
        expected = community["model"].ranker.predict_proba(X)
        rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
                for row in X.itertuples(index=False, name=None)]
        # json.dumps writes floats with repr (exact); pandas' to_json rounds to 10 digits
        body = json.dumps({"dataframe_split": {"columns": list(X.columns), "data": rows}})
        got = _post(f"{base}/invocations", body)["predictions"]
        assert [g["candidate_id"] for g in got] == X["candidate_id"].tolist()
        np.testing.assert_array_equal(np.array([g["p_success"] for g in got]), expected)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group of the server started above
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


# ------------------------------------------------------------------------ crunch up


def test_ensure_champion_registers_day_one_then_gates_a_trained_model(
        community, empty_mlflow_db, tmp_path):
    c = community
    cfg = _registry(tmp_path / "home", empty_mlflow_db)
    metric = "truth.engine.ndcg_at_k"
    results = M.ensure_champion(c["frames"], cfg, truth=c["truth"], gate_metric=metric,
                                max_missions=MAX_MISSIONS, now=c["split_at"])
    assert [r.version for r in results] == [1, 2]
    day_one, trained = results
    assert day_one.promoted and day_one.reason == "no champion yet"
    # the day-one champion was evaluated on the trained model's holdout, then compared
    assert trained.champion_source == "champion v1 re-evaluated on this holdout"
    assert trained.champion_value is not None and trained.challenger_value is not None
    assert trained.promoted == (trained.challenger_value >= trained.champion_value)
    assert M.champion_version(cfg) == (2 if trained.promoted else 1)
    run = _client(cfg).get_run(trained.run_id)
    assert run.data.params["data_version"] == str(c["frames"].version)
    assert run.data.tags["gate.decision"] == ("promoted" if trained.promoted
                                              else "kept champion")
    # a champion exists: nothing more to do
    assert M.ensure_champion(c["frames"], cfg, truth=c["truth"]) == []


def test_crunch_up_compares_the_day_one_policy_as_of_the_split(community, empty_mlflow_db,
                                                               tmp_path):
    """On ``crunch up`` the day-one policy is registered with a feature model fitted on all
    the data; at the gate it is evaluated with one refitted before the split, as the
    challenger's is, never with the one that saw the holdout."""
    c = community
    frames = c["frames"]
    split_at = M.default_split_at(frames)  # the split ensure_champion trains at
    cfg = _registry(tmp_path / "home", empty_mlflow_db)
    metric = "truth.engine.ndcg_at_k"
    latest = max(frames.outcomes["measured_at"].max(), frames.assignments["assigned_at"].max(),
                 frames.missions["created_at"].max())
    later = latest + timedelta(days=1)  # "now" on crunch up: after every row of the store
    day_one, trained = M.ensure_champion(frames, cfg, truth=c["truth"], gate_metric=metric,
                                         max_missions=MAX_MISSIONS, now=later)
    assert day_one.version == 1 and trained.previous_champion == 1

    def prior_figure(fm: FeatureModel) -> float:
        model = EngineModel(fm, PriorRanker(), split_at)
        report = evaluate(frames, model, split_at, truth=c["truth"], max_missions=MAX_MISSIONS)
        return M.flatten_metrics(report)[metric]

    as_of_split = prior_figure(FeatureModel(seed=0).fit(frames, split_at))
    assert trained.champion_value == pytest.approx(as_of_split, rel=0, abs=1e-12)
    assert trained.champion_source == ("champion v1 re-evaluated on this holdout (day-one "
                                       "policy: its feature model refitted on data before the "
                                       "split)")
    assert trained.promoted == (trained.challenger_value >= as_of_split)
    # with the feature model it was registered with (fitted on everything, the holdout's
    # outcomes included) its figure would differ: the test can tell the two apart
    optimistic = prior_figure(FeatureModel(seed=0).fit(frames, later))
    print(f"day-one {metric}: {as_of_split:.6f} as of the split, {optimistic:.6f} fitted on "
          f"all; challenger {trained.challenger_value:.6f}")
    assert optimistic != pytest.approx(as_of_split, rel=0, abs=1e-9)
    # the registered day-one model itself is unchanged: fitted on everything before "now"
    import mlflow

    root = _client(cfg).get_model_version_download_uri(cfg.model_name, "1")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{root}/artifacts/engine_model", tracking_uri=cfg.tracking_uri,
        dst_path=str(tmp_path / "v1"))
    assert EngineModel.load(local).feature_model.fitted_.cutoff == later
    # the helper leaves a model fitted before the split (and any trained model) alone
    fitted_before = EngineModel(FeatureModel().fit(frames, split_at), PriorRanker(), split_at)
    assert M._before_split(fitted_before, frames, split_at) == (fitted_before, False)
    assert M._before_split(c["model"], frames, split_at) == (c["model"], False)
    seen_all = EngineModel(FeatureModel().fit(frames, later), PriorRanker(), later)
    refit, done = M._before_split(seen_all, frames, split_at)
    assert done and refit.feature_model.fitted_.cutoff == split_at
    assert refit.feature_model.to_dict()["params"] == seen_all.feature_model.to_dict()["params"]
    assert refit.ranker is seen_all.ranker and refit.split_at == split_at
