"""`crunch import` and `crunch export` from the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from graph import open_store, sqlite_url
from service.cli import app

TINY = Path(__file__).parents[1] / "graph" / "bundles" / "tiny"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke `crunch` with its home (and so its SQLite store) in a fresh folder."""
    monkeypatch.delenv("CRUNCH_DATABASE_URL", raising=False)
    home = tmp_path / "home"

    def invoke(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args], env={"CRUNCH_HOME": str(home)})

    invoke.store_url = sqlite_url(home / "community.db")
    return invoke


def set_cell(bundle: Path, file: str, key: str, value: str, col: str, new: str) -> None:
    path = bundle / f"{file}.csv"
    df = pl.read_csv(path, infer_schema=False)
    df.with_columns(
        pl.when(pl.col(key) == value).then(pl.lit(new)).otherwise(pl.col(col)).alias(col)
    ).write_csv(path, null_value="")


def counts(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        return store.counts()
    finally:
        store.dispose()


def test_import_of_a_bad_bundle_exits_2_and_lists_every_problem(run, tmp_path):
    bad = shutil.copytree(TINY, tmp_path / "bad")
    set_cell(bad, "persons", "person_id", "P2", "max_concurrent", "0")
    set_cell(bad, "areas", "area_id", "A2", "lon", "east")
    result = run("import", bad, "--no-progress")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "areas.csv:3: lon: 'east' is not a finite number (area_id=A2)",
        "persons.csv:3: max_concurrent: 0 is below 1 (person_id=P2)",
    ]
    assert "2 problem(s)" in lines[-1]
    assert counts(run.store_url)["persons"] == 0


def test_each_problem_is_one_line_however_long(run, tmp_path):
    bad = shutil.copytree(TINY, tmp_path / "bad")
    set_cell(bad, "clients", "client_id", "C1", "kind", "guild")
    lines = run("import", bad, "--no-progress").stderr.splitlines()
    assert lines[0].startswith("clients.csv:2: ") and lines[0].endswith("(client_id=C1)")


def test_import_then_export(run, tmp_path):
    result = run("import", TINY, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "inserted" in result.stdout and "payout ledger: 2" in result.stdout
    assert counts(run.store_url)["persons"] == 6

    again = run("import", TINY, "--no-progress")
    assert again.exit_code == 0 and "nothing changed" in again.stdout

    out = tmp_path / "out"
    result = run("export", out, "--format", "parquet")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {p.stem + ".parquet" for p in TINY.iterdir()}
    persons = pl.read_parquet(out / "persons.parquet")
    assert persons.height == 6 and persons.schema["joined_at"] == pl.Datetime("us", "UTC")


def test_export_refuses_an_unknown_format(run, tmp_path):
    result = run("export", tmp_path / "out", "--format", "xlsx")
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()
