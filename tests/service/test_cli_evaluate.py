"""`crunch evaluate` fits before T and prints the evaluation protocol's JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from graph import import_bundle, open_store, simulate_bundle, sqlite_url
from service.cli import app


def test_evaluate_prints_both_views(tmp_path, monkeypatch):
    simulate_bundle(tmp_path / "b", n_persons=400, n_missions=160, seed=3)
    url = sqlite_url(tmp_path / "store.db")
    import_bundle(open_store(url), tmp_path / "b", show_progress=False)
    monkeypatch.setenv("CRUNCH_DATABASE_URL", url)
    run = CliRunner().invoke(app, ["evaluate", "--max-missions", "8", "--k", "5"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout[run.stdout.index("{"):])
    assert report["k"] == 5 and report["heldout_missions"] == 8
    assert 0 <= report["logged"]["auc"] <= 1
    assert {"ips", "snips", "dr"} <= set(report["off_policy"])
    truth = report["truth"]
    for name in ("engine", "oracle", "random", "nearest", "most_experienced",
                 "best_past_success_rate"):
        assert truth[name]["expected_successes_at_k"] >= 0
    assert truth["oracle"]["expected_successes_at_k"] >= truth["engine"]["expected_successes_at_k"]
    for seg in report["logged"]["segments"]["area_id"]:
        assert seg["suppressed"] or seg["n_people"] >= 10


def test_evaluate_refuses_an_empty_store_and_a_bad_date(tmp_path, monkeypatch):
    monkeypatch.setenv("CRUNCH_DATABASE_URL", sqlite_url(tmp_path / "empty.db"))
    run = CliRunner().invoke(app, ["evaluate"])
    assert run.exit_code == 2 and "no mission" in run.output
    simulate_bundle(tmp_path / "b", n_persons=100, n_missions=30, seed=1)
    import_bundle(open_store(sqlite_url(tmp_path / "empty.db")), tmp_path / "b",
                  show_progress=False)
    run = CliRunner().invoke(app, ["evaluate", "--split-at", "last tuesday"])
    assert run.exit_code == 2 and "--split-at" in run.output
