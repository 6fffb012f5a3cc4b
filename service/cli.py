"""The ``crunch`` command line (also ``python -m service``)."""

from __future__ import annotations

import copy
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
    estimator: Annotated[str | None, typer.Option(
        help="hgb, logistic, lightgbm or lgbm_rank (default: the engine's default, "
             "matching._ranker.DEFAULT_ESTIMATOR)")] = None,
    max_missions: Annotated[int | None, typer.Option(help="evaluate at most this many")] = None,
    seed: Annotated[int, typer.Option(help="seed of the policy's draws")] = 0,
) -> None:
    """Fit on outcomes before T, evaluate after T; print the report as JSON on stdout."""
    import json

    from graph import community_graph_from_frames, load_frames, load_truth
    from training import default_split, evaluate, fit_engine_model

    estimator = _estimator(estimator)
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


def _estimator(name: str | None) -> str:
    """The ``--estimator`` asked for, or the engine's default; exit 2 on an unknown one."""
    from matching._ranker import DEFAULT_ESTIMATOR, ESTIMATORS

    if name is None:
        return DEFAULT_ESTIMATOR
    if name not in ESTIMATORS:
        err.print(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {name!r}")
        raise typer.Exit(2)
    return name


@app.command("train")
def train_cmd(
    split_at: Annotated[str | None, typer.Option(
        help="ISO time T: fit before T, evaluate after T (default: hold out the latest 20 % "
             "of closed missions)")] = None,
    estimator: Annotated[str | None, typer.Option(
        help="hgb, logistic, lightgbm or lgbm_rank (default: the engine's default, "
             "matching._ranker.DEFAULT_ESTIMATOR)")] = None,
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

    estimator = _estimator(estimator)
    settings = _settings()
    store = open_store(settings.store_url)
    frames = load_frames(store)
    if frames.missions.is_empty():
        err.print("the store holds no mission: import a bundle first (crunch import DIR)")
        raise typer.Exit(2)
    split = _parse_time(split_at, "--split-at") or default_split_at(frames)
    cfg = _mlflow_config(settings)
    result = train_and_register(frames, split, cfg, truth=load_truth(store),
                                estimator=estimator, gate_metric=gate_metric, margin=margin,
                                seed=seed, max_missions=max_missions,
                                graph=community_graph_from_frames(frames))
    print(json.dumps(result.to_dict(), indent=2, default=str))


def _champion(settings: Settings, frames, now):  # noqa: ANN001, ANN202
    """The registry's champion and its version; the day-one prior when there is none."""
    from features import FeatureModel
    from matching import PriorRanker
    from service._provider import DAY_ONE, RegistryChampion
    from training import EngineModel

    found = RegistryChampion(settings.tracking_uri, settings.home,
                             store_url=settings.store_url)()
    if found is not None:
        return found
    # Until a model is registered: the day-one prior, with features fitted on all data.
    return EngineModel(FeatureModel().fit(frames, now), PriorRanker(), None,
                       {"policy": "day-one prior"}), DAY_ONE


@app.command("allocate")
def allocate_cmd(
    floor: Annotated[float, typer.Option(
        "--floor", min=0.0, max=1.0, help="least share of person-seats for newcomers")] = 0.2,
    per_mission: Annotated[int, typer.Option(
        "--per-mission", min=1, help="candidates per mission given to the solver")] = 30,
    value: Annotated[str, typer.Option(
        help="what a proposed candidate is worth: p_success or expected_payout")] = "p_success",
    as_json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
) -> None:
    """Staff every open mission at once: nobody beyond capacity, a floor on the newcomers'
    share, and the expected outcome that floor costs."""
    import json
    from datetime import UTC, datetime

    from graph import load_frames
    from matching import MatchingEngine
    from matching._allocation_wiring import allocate_open_missions, allocation_report_json

    if value not in ("p_success", "expected_payout"):
        err.print(f"--value must be p_success or expected_payout, not {value!r}")
        raise typer.Exit(2)
    store = open_store(_settings().store_url)
    try:
        frames = load_frames(store)
    finally:
        store.dispose()
    if frames.missions.filter(frames.missions["status"] == "open").height == 0:
        if as_json:
            typer.echo(json.dumps({"missions_open": 0, "assignments": {}}))
        else:
            console.print("no open missions: nothing to allocate")
        return
    now = datetime.now(UTC)
    model, version = _champion(_settings(), frames, now)
    engine = MatchingEngine(frames, model.feature_model, model.ranker, now=now)
    run = allocate_open_missions(engine, candidates_per_mission=per_mission,
                                 newcomer_floor=floor, value=value)
    report = allocation_report_json(run)
    report["model_version"] = version
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return

    def share(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    summary = Table(title=f"allocation of {report['missions_open']} open missions "
                          f"(store version {report['store_version']}, "
                          f"{report['model_version']})")
    summary.add_column("")
    summary.add_column("", justify="right")
    for name, shown in [
        ("missions staffed", f"{report['missions_staffed']:,}"),
        ("missions without eligible candidates", f"{len(report['missions_without_candidates']):,}"),
        ("missions left unstaffed by the floor", f"{len(report['unstaffed_by_floor']):,}"),
        ("person-seats", f"{report['seats']:,}"),
        (f"newcomer share (floor {floor:g})", share(report["newcomer_share"])),
        ("newcomer share without the floor", share(report["newcomer_share_without_floor"])),
        (f"expected {value}", f"{report['objective']:,.3f}"),
        (f"expected {value} without the floor", f"{report['objective_without_floor']:,.3f}"),
        ("price of the floor", f"{report['price_of_floor']:,.3f}"),
        ("solver", f"{report['status']} (gap {report['mip_gap']:.1e})"),
        ("seconds", f"{report['seconds']['total']:.2f}"),
    ]:
        summary.add_row(name, shown)
    console.print(summary)
    if report["assignments"]:
        table = Table(title="proposed candidates")
        table.add_column("mission")
        table.add_column("candidates")
        table.add_column("newcomers", justify="right")
        for mission_id, cands in report["assignments"].items():
            table.add_row(mission_id, ", ".join(c["candidate_id"] for c in cands),
                          str(sum(c["newcomer"] for c in cands)))
        console.print(table)


def _urls(host: str, port: int) -> list[tuple[str, str]]:
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    return [("API docs", f"{base}/docs"), ("match", f"{base}/v1/match"),
            ("ready", f"{base}/readyz"), ("metrics", f"{base}/metrics")]


def _serve(settings: Settings, host: str | None, port: int | None, workers: int | None,
           log_level: str, access_log: bool = True) -> None:
    import uvicorn

    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    if not settings.api_keys:
        err.print("no API key configured (CRUNCH_API_KEYS): every /v1 call answers 401")
    for name, url in _urls(host, port):
        console.print(f"{name:>9}: {url}")
    # The service's own log (engine builds, swaps, warm-ups, failed loads) beside uvicorn's.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    level = {"trace": "DEBUG"}.get(log_level.lower(), log_level.upper())
    log_config["loggers"]["bigcrunch"] = {"handlers": ["default"], "level": level,
                                          "propagate": False}
    # A factory: every worker builds its own app from the environment (CRUNCH_*).
    # uvloop and httptools (uvicorn[standard]) are used when installed ("auto").
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=access_log,
                log_config=log_config)


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="address (default CRUNCH_HOST, 127.0.0.1)")
                    ] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="default 8000")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="processes (default 1)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
) -> None:
    """Serve the API with uvicorn until stopped (the champion model, or the day-one policy)."""
    _serve(_settings(), host, port, workers, log_level, access_log)


@app.command("up")
def up_cmd(
    serve: Annotated[bool, typer.Option(help="serve the API until stopped")] = True,
    train: Annotated[bool, typer.Option(
        help="register the day-one policy and train a first model when none exists")] = True,
    host: Annotated[str | None, typer.Option(help="address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="default 8000")] = None,
) -> None:
    """The main job: seed a demo community on an empty store, train, then serve the API."""
    import os
    import secrets

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
    if train:
        _train_if_needed(settings, store)
    store.dispose()
    if not serve:
        return
    if not settings.api_keys:
        # A local demo needs a key: one for this session, given to the workers by environment.
        key = f"demo-{secrets.token_urlsafe(18)}"
        os.environ["CRUNCH_API_KEYS"] = (
            f'[{{"key": "{key}", "holder": "demo", "scope": "admin"}}]')
        console.print(f"no API key configured: this session's admin key is {key} "
                      f"(header X-API-Key)", soft_wrap=True, markup=False, highlight=False)
        settings = _settings()
    _serve(settings, host, port, None, "info")


def _train_if_needed(settings: Settings, store) -> None:  # noqa: ANN001
    """Register the day-one policy, then train and gate a first model, when none exists."""
    from graph import load_frames, load_truth
    from training._mlflow import ensure_champion

    config = _mlflow_config(settings)
    frames = load_frames(store)
    results = ensure_champion(frames, config, truth=load_truth(store))
    if not results:
        console.print("the registry already has a champion")
    for r in results:
        console.print(f"registered {config.model_name} version {r.version}: "
                      f"{'champion' if r.promoted else 'not promoted'} ({r.reason})",
                      markup=False, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
