"""The ``crunch`` command line (also ``python -m service``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from graph import open_store
from graph._errors import BundleError
from service.settings import Settings

__all__ = ["app"]

app = typer.Typer(
    name="crunch",
    help="bigcrunch: match people and peer groups to pay-for-results community missions.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


def _print_counts(counts: dict[str, int], title: str) -> None:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    console.print(table)


@app.command("import")
def import_cmd(
    bundle_dir: Annotated[Path, typer.Argument(help="folder of CSV or Parquet files")],
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Validate a community bundle and import it; nothing is written if any row is bad."""
    from graph import import_bundle

    settings = _settings()
    store = open_store(settings.store_url)
    try:
        report = import_bundle(store, bundle_dir, show_progress=progress)
    except BundleError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        err.print(f"bundle refused: {len(exc.problems)} problem(s); the store is unchanged")
        raise typer.Exit(2) from None
    console.print(report.summary(), markup=False, highlight=False)


@app.command("export")
def export_cmd(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the bundle into")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
) -> None:
    """Export the whole store as a community bundle."""
    from graph import export_bundle

    if fmt not in ("csv", "parquet"):
        err.print(f"--format must be csv or parquet, not {fmt!r}")
        raise typer.Exit(2)
    store = open_store(_settings().store_url)
    paths = export_bundle(store, out_dir, fmt=fmt)
    console.print(f"wrote {len(paths)} files to {out_dir}")


@app.command("simulate")
def simulate_cmd(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the bundle into")],
    persons: Annotated[int, typer.Option(min=10, help="number of persons")] = 5000,
    missions: Annotated[int, typer.Option(min=10, help="number of missions")] = 1500,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same bytes")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
) -> None:
    """Write a synthetic community (with its ground truth) as a bundle."""
    from graph import simulate_bundle

    if fmt not in ("csv", "parquet"):
        err.print(f"--format must be csv or parquet, not {fmt!r}")
        raise typer.Exit(2)
    paths = simulate_bundle(out_dir, n_persons=persons, n_missions=missions, seed=seed, fmt=fmt)
    console.print(f"wrote {len(paths)} files to {out_dir}")


def _parse_time(value: str | None, option: str):  # noqa: ANN202
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"{option}: {value!r} is not an ISO 8601 date or time")
        raise typer.Exit(2) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@app.command("evaluate")
def evaluate_cmd(
    split_at: Annotated[str | None, typer.Option(
        help="ISO time T: fit before T, evaluate on missions created after T whose window "
             "closed (default: the 80 % point of missions by creation)")] = None,
    k: Annotated[int, typer.Option(min=1, help="list length for @k metrics")] = 10,
    estimator: Annotated[str, typer.Option(help="hgb, logistic, lightgbm or lgbm_rank")] = "hgb",
    max_missions: Annotated[int | None, typer.Option(help="evaluate at most this many")] = None,
    seed: Annotated[int, typer.Option(help="seed of the policy's draws")] = 0,
) -> None:
    """Fit on outcomes before T, evaluate after T; print the report as JSON on stdout."""
    import json

    from graph import community_graph_from_frames, load_frames, load_truth
    from training import default_split, evaluate, fit_engine_model

    store = open_store(_settings().store_url)
    frames = load_frames(store)
    if frames.missions.is_empty():
        err.print("the store holds no mission: import a bundle first (crunch import DIR)")
        raise typer.Exit(2)
    split = _parse_time(split_at, "--split-at") or default_split(frames)
    graph = community_graph_from_frames(frames)
    err.print(f"fitting on outcomes before {split.isoformat()} ...")
    model = fit_engine_model(frames, split, estimator=estimator, seed=seed, graph=graph)
    err.print("evaluating ...")
    report = evaluate(frames, model, split, truth=load_truth(store), k=k, graph=graph,
                      seed=seed, max_missions=max_missions)
    report["model_info"] = model.info
    print(json.dumps(report, indent=2, default=str))


def _mlflow_config(settings: Settings):  # noqa: ANN202
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from training import MlflowConfig

    return MlflowConfig.under_home(settings.home.resolve(),
                                   tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")
                                   or settings.mlflow_tracking_uri,
                                   store_url=settings.store_url)


@app.command("train")
def train_cmd(
    split_at: Annotated[str | None, typer.Option(
        help="ISO time T: fit before T, evaluate after T (default: hold out the latest 20 % "
             "of closed missions)")] = None,
    estimator: Annotated[str, typer.Option(help="hgb, logistic, lightgbm or lgbm_rank")] = "hgb",
    gate_metric: Annotated[str | None, typer.Option(
        help="metric the challenger must not be worse on (dotted name in the evaluation)")
    ] = None,
    margin: Annotated[float, typer.Option(help="how much worse the challenger may be")] = 0.0,
    max_missions: Annotated[int | None, typer.Option(help="evaluate at most this many")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Fit, evaluate, log an MLflow run, register a version; promote it only if it passes."""
    import json

    from graph import community_graph_from_frames, load_frames, load_truth
    from training import default_split_at, train_and_register

    settings = _settings()
    store = open_store(settings.store_url)
    frames = load_frames(store)
    if frames.missions.is_empty():
        err.print("the store holds no mission: import a bundle first (crunch import DIR)")
        raise typer.Exit(2)
    if estimator not in ("hgb", "logistic", "lightgbm", "lgbm_rank"):
        err.print(f"--estimator must be hgb, logistic, lightgbm or lgbm_rank, not {estimator!r}")
        raise typer.Exit(2)
    split = _parse_time(split_at, "--split-at") or default_split_at(frames)
    cfg = _mlflow_config(settings)
    result = train_and_register(frames, split, cfg, truth=load_truth(store),
                                estimator=estimator, gate_metric=gate_metric, margin=margin,
                                seed=seed, max_missions=max_missions,
                                graph=community_graph_from_frames(frames))
    print(json.dumps(result.to_dict(), indent=2, default=str))


@app.command("up")
def up_cmd(
    serve: Annotated[bool, typer.Option(help="serve the API until stopped")] = True,
) -> None:
    """The main job: seed a demo community on an empty store, then report what it holds."""
    from graph import import_bundle, simulate_bundle

    settings = _settings()
    store = open_store(settings.store_url)
    counts = store.counts()
    if counts["persons"] == 0:
        demo = settings.home.resolve() / "demo-bundle"
        console.print(
            f"empty store: simulating a demo community of {settings.demo_persons:,} persons "
            f"and {settings.demo_missions:,} missions (seed {settings.demo_seed}) in {demo}"
        )
        simulate_bundle(
            demo,
            n_persons=settings.demo_persons,
            n_missions=settings.demo_missions,
            seed=settings.demo_seed,
        )
        report = import_bundle(store, demo, show_progress=True)
        console.print(report.summary(), markup=False, highlight=False)
        counts = store.counts()
    else:
        console.print("the store already holds a community: reusing it")
    _print_counts(counts, f"community store ({store.dialect}, version {store.version()})")
    from graph import load_frames, load_truth
    from training import champion_version, ensure_champion

    cfg = _mlflow_config(settings)
    if champion_version(cfg) is None:
        console.print("no champion model yet: registering the day-one policy, then training")
    for result in ensure_champion(load_frames(store), cfg, truth=load_truth(store)):
        verdict = "promoted to champion" if result.promoted else "registered, not promoted"
        console.print(f"model version {result.version}: {verdict} ({result.reason}; "
                      f"{result.gate_metric} {result.challenger_value} vs "
                      f"{result.champion_value})", markup=False)
    console.print(f"champion: {cfg.model_name} version {champion_version(cfg)} "
                  f"(MLflow tracking {cfg.tracking_uri})", markup=False)
    if serve:
        console.print("serving is not part of this build yet (`crunch up --no-serve` exits here)")


if __name__ == "__main__":  # pragma: no cover
    app()
