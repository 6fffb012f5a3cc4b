"""`crunch up --no-serve`: seeds an empty store once, then reuses it."""

from __future__ import annotations

from typer.testing import CliRunner

from graph import open_store, sqlite_url
from service.cli import app


def test_up_seeds_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("CRUNCH_HOME", str(tmp_path))
    monkeypatch.delenv("CRUNCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("CRUNCH_DEMO_PERSONS", "300")
    monkeypatch.setenv("CRUNCH_DEMO_MISSIONS", "120")
    runner = CliRunner()
    first = runner.invoke(app, ["up", "--no-serve"])
    assert first.exit_code == 0, first.output
    assert "empty store" in first.output
    store = open_store(sqlite_url(tmp_path / "community.db"))
    counts = store.counts()
    assert counts["persons"] == 300 and counts["missions"] == 120
    assert counts["outcomes"] > 0
    version = store.version()
    from training import MlflowConfig, champion_version

    cfg = MlflowConfig.under_home(tmp_path)
    champion = champion_version(cfg)
    assert champion is not None, first.output  # the day-one policy at least
    assert "champion" in first.output
    second = runner.invoke(app, ["up", "--no-serve"])
    assert second.exit_code == 0, second.output
    assert "reusing" in second.output
    assert store.counts() == counts and store.version() == version
    assert champion_version(cfg) == champion  # nothing new to train on: no new version
    store.dispose()


def test_python_m_service_is_the_same_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True,
                         text=True, check=True)
    for command in ("up", "import", "export", "simulate"):
        assert command in out.stdout
