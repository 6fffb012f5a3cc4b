"""The matching endpoints: ``/v1/match`` (ids and scores only), the engineer's shortlist
(reasons, teams, filters, exclude and pin), missions for a person, allocation; the decision
log of every served list; bad input; health and metrics; a locked SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from features import FEATURES
from graph import Person, Shortlist, ShortlistCandidate
from service.cli import app as cli

pytest_plugins = ["support.api"]  # the `api` fixture over the tiny city

SPECIAL_REASONS = {f.reason for f in FEATURES if f.reason and f.special_category}
DRAFT = {"need_type": "school_absenteeism", "area_id": "A1",
         "starts_at": "2026-01-05T00:00:00Z", "ends_at": "2026-06-30T00:00:00Z",
         "team_max": 2, "minutes_per_day": 60, "days_per_week": 2}


def logged(api, mission_id: str) -> list[tuple[Shortlist, list[ShortlistCandidate]]]:
    with api.store.reader() as s:
        lists = s.scalars(select(Shortlist).where(Shortlist.mission_id == mission_id)
                          .order_by(Shortlist.served_at)).all()
        return [(sl, s.scalars(select(ShortlistCandidate)
                               .where(ShortlistCandidate.shortlist_id == sl.shortlist_id)
                               .order_by(ShortlistCandidate.rank)).all()) for sl in lists]


def detail(response) -> str:
    return json.dumps(response.json()["detail"])


def test_match_gives_ids_scores_and_logs_every_list(api):
    with api.serving():
        first = api.post("platform", "/v1/match", json={"mission_id": "M20", "k": 3})
        again = api.post("platform", "/v1/match", json={"mission_id": "M20", "k": 3})
    assert first.status_code == 200, first.text
    body = first.json()
    # Nothing about the people beyond ids, kind, score and propensity.
    assert set(body) == {"shortlist_id", "mission_id", "model_version", "candidates"}
    assert body["model_version"] == "day-one" and body["mission_id"] == "M20"
    assert 1 <= len(body["candidates"]) <= 3
    for c in body["candidates"]:
        assert set(c) == {"id", "kind", "score", "propensity"}
        assert c["kind"] in ("person", "group")
        assert 0 <= c["score"] <= 1 and 0 < c["propensity"] <= 1
    # Each list, the re-ask included, is in the decision log as served.
    log = logged(api, "M20")
    assert [sl.shortlist_id for sl, _ in log] == [first.json()["shortlist_id"],
                                                  again.json()["shortlist_id"]]
    for (sl, cands), served in zip(log, (first.json(), again.json()), strict=True):
        assert sl.requested_by == "platform-app" and sl.model_version == "day-one"
        assert sl.policy.startswith("thompson(") and "eligible_persons" in json.loads(sl.filters)
        assert [(c.person_id or c.group_id, c.rank, c.propensity) for c in cands] == [
            (c["id"], r, pytest.approx(c["propensity"]))
            for r, c in enumerate(served["candidates"], start=1)]


def test_match_respects_hard_rules_and_scopes(api):
    with api.serving():
        # M21 works with minors: only P1 holds a valid check, so only P1 can be listed alone
        # and no group without a check for each member.
        r = api.post("engineer", "/v1/match", json={"mission_id": "M21", "k": 10})
        assert r.status_code == 200, r.text
        assert {c["id"] for c in r.json()["candidates"]} <= {"P1"}
        for scope in ("client", "client2", "data"):
            denied = api.post(scope, "/v1/match", json={"mission_id": "M20"})
            assert denied.status_code == 403 and "platform or engineer" in detail(denied)
        assert api.post(None, "/v1/match", json={"mission_id": "M20"}).status_code == 401
        assert api.post("admin", "/v1/match", json={"mission_id": "M20"}).status_code == 200


def test_match_a_draft_mission_is_served_not_logged(api):
    with api.serving():
        before = len(logged(api, "M20"))
        r = api.post("platform", "/v1/match", json={"mission": DRAFT, "k": 5})
        assert r.status_code == 200, r.text
        assert r.json()["shortlist_id"] is None and r.json()["mission_id"] is None
        assert r.json()["candidates"]
        with api.store.reader() as s:
            assert s.query(Shortlist).count() == before


BAD_BODIES = [
    ({}, "mission_id"),
    ({"mission_id": "M20", "mission": DRAFT}, "mission_id"),
    ({"mission_id": "M20", "k": 0}, "k"),
    ({"mission_id": "M20", "k": 101}, "k"),
    ({"mission_id": "M20", "k": "5"}, "k"),
    ({"mission_id": "M20", "k": True}, "k"),
    ({"mission_id": "M20", "colour": "red"}, "colour"),
    ({"mission_id": 20}, "mission_id"),
    ({"mission_id": ""}, "mission_id"),
    ({"mission": {**DRAFT, "starts_at": "2026-01-05T00:00:00"}}, "starts_at"),
    ({"mission": {**DRAFT, "ends_at": "2025-01-01T00:00:00Z"}}, "starts_at"),
    ({"mission": {**DRAFT, "team_min": 3}}, "team_min"),
    ({"mission": {**DRAFT, "need_type": "astrology"}}, "mission.need_type"),
    ({"mission": {**DRAFT, "area_id": "A99"}}, "mission.area_id"),
    ({"mission": {**DRAFT, "vetting_regime": "adults"}}, "vetting_regime"),
    ({"mission": {**DRAFT, "radius_km": -1}}, "radius_km"),
    ({"mission": {**DRAFT, "title": "a\x00b"}}, "title"),
    ({"mission": {k: v for k, v in DRAFT.items() if k != "area_id"}}, "area_id"),
]


def test_match_bad_input_is_a_4xx_naming_the_field(api):
    with api.serving():
        for body, field in BAD_BODIES:
            r = api.post("platform", "/v1/match", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in detail(r), (body, r.text)
        not_json = api.post("platform", "/v1/match", content=b"{mission_id",
                            headers={"content-type": "application/json"})
        assert not_json.status_code == 422


def test_match_unknown_mission_is_404_and_not_ready_is_503(api):
    r = api.post("platform", "/v1/match", json={"mission_id": "M20"})
    assert r.status_code == 503 and "no model" in detail(r)  # lifespan not run: no model
    assert api.get(None, "/readyz").status_code == 503
    with api.serving():
        r = api.post("platform", "/v1/match", json={"mission_id": "NOPE"})
        assert r.status_code == 404 and "NOPE" in detail(r)


def test_engineer_shortlist_reasons_teams_exclude_pin(api):
    with api.serving():
        r = api.post("engineer", "/v1/missions/M20/shortlist", json={"k": 5, "teams": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mission_id"] == "M20" and body["model_version"] == "day-one"
        assert body["policy"].startswith("thompson(")
        assert body["filters"]["exclude"] == [] and "eligible_persons" in body["filters"]
        ids = [c["id"] for c in body["candidates"]]
        assert [c["rank"] for c in body["candidates"]] == list(range(1, len(ids) + 1))
        assert all(c["members"] and c["reasons"] is not None for c in body["candidates"])
        # M20 takes pairs: teams come from ties between eligible persons.
        for t in body["teams"]:
            assert 2 <= len(t["members"]) <= 2 and t["why"]

        target = ids[0]
        ex = api.post("engineer", "/v1/missions/M20/shortlist",
                      json={"k": 5, "exclude": [target], "teams": 0}).json()
        assert target not in [c["id"] for c in ex["candidates"]]
        assert ex["filters"]["exclude"] == [target] and ex["teams"] == []
        for t in ex["teams"]:
            assert target not in t["members"]

        last = ids[-1]
        pinned = api.post("engineer", "/v1/missions/M20/shortlist",
                          json={"k": 2, "pin": [last], "teams": 0}).json()
        assert pinned["candidates"][0]["id"] == last
        assert pinned["candidates"][0]["propensity"] == 1.0
        assert pinned["filters"]["pin"] == [last]

        # A pin that fails a hard rule (no check for minors) is refused, naming the field.
        bad = api.post("engineer", "/v1/missions/M21/shortlist", json={"pin": ["P2"]})
        assert bad.status_code == 422 and "pin" in detail(bad) and "P2" in detail(bad)
        for body_, field in (({"k": 0}, "k"), ({"exclude": "P1"}, "exclude"),
                             ({"teams": 21}, "teams"), ({"pin": [""]}, "pin")):
            r = api.post("engineer", "/v1/missions/M20/shortlist", json=body_)
            assert r.status_code == 422 and field in detail(r), (body_, r.text)
        assert api.post("engineer", "/v1/missions/M404/shortlist", json={}).status_code == 404

    # Every list served went to the decision log, with who asked.
    log = logged(api, "M20")
    assert len(log) == 3 and {sl.requested_by for sl, _ in log} == {"eve"}
    assert json.loads(log[1][0].filters)["exclude"] == [target]


def test_special_category_reasons_only_for_engineers_and_consenting_persons(api):
    with api.serving():
        seen: dict[str, list[tuple[tuple[str, ...], list[str]]]] = {}
        for scope in ("engineer", "admin"):
            for mission in ("M20", "M9"):
                for _ in range(4):  # different draws: every eligible candidate gets listed
                    r = api.post(scope, f"/v1/missions/{mission}/shortlist",
                                 json={"k": 10, "teams": 0})
                    assert r.status_code == 200, r.text
                    for c in r.json()["candidates"]:
                        seen.setdefault(scope, []).append((tuple(c["members"]), c["reasons"]))
    with api.store.reader() as s:
        consented = {p.person_id for p in s.scalars(select(Person))
                     if p.consent_lived_experience}
    special = [(m, r) for m, reasons in seen["engineer"] for r in reasons
               if r in SPECIAL_REASONS]
    assert special, "no lived-experience reason was shown at all: the test proves nothing"
    for members, _ in special:
        assert set(members) <= consented
    assert not [r for _, reasons in seen.get("admin", []) for r in reasons
                if r in SPECIAL_REASONS]


def test_missions_for_a_person_and_allocation(api):
    with api.serving():
        r = api.post("platform", "/v1/persons/P1/missions", json={"k": 5})
        assert r.status_code == 200, r.text
        offers = r.json()["missions"]
        assert offers and r.json()["person_id"] == "P1"
        assert {o["mission_id"] for o in offers} <= {"M9", "M20", "M21"}  # open ones only
        assert [o["rank"] for o in offers] == list(range(1, len(offers) + 1))
        assert all(not set(o["reasons"]) & SPECIAL_REASONS for o in offers)  # platform scope
        assert api.post("engineer", "/v1/persons/P1/missions", json={}).status_code == 200
        assert api.post("engineer", "/v1/persons/P404/missions", json={}).status_code == 404
        assert api.post("client", "/v1/persons/P1/missions", json={}).status_code == 403
        bad = api.post("platform", "/v1/persons/P1/missions", json={"with_groups": "yes"})
        assert bad.status_code == 422 and "with_groups" in detail(bad)

        a = api.post("engineer", "/v1/allocations", json={"newcomer_floor": 0.5})
        assert a.status_code == 200, a.text
        report = a.json()
        assert report["missions_open"] == 3 and report["model_version"] == "day-one"
        staffed = report["assignments"]
        assert set(staffed) <= {"M9", "M20", "M21"}
        # Nobody is proposed beyond their capacity (max_concurrent, 2 each here; P1's group
        # G1 holds an active assignment on a closed mission, which does not overlap).
        with api.store.reader() as s:
            capacity = {p.person_id: p.max_concurrent for p in s.scalars(select(Person))}
        persons = [p for cands in staffed.values() for c in cands for p in c["members"]]
        assert persons and all(persons.count(p) <= capacity[p] for p in persons)
        only = api.post("engineer", "/v1/allocations", json={"mission_ids": ["M20"]}).json()
        assert set(only["assignments"]) <= {"M20"} and only["missions_open"] == 1
        closed = api.post("engineer", "/v1/allocations", json={"mission_ids": ["M1"]})
        assert closed.status_code == 422 and "M1" in detail(closed)
        assert api.post("engineer", "/v1/allocations",
                        json={"mission_ids": ["M404"]}).status_code == 404
        assert api.post("platform", "/v1/allocations", json={}).status_code == 403
        bad = api.post("engineer", "/v1/allocations", json={"newcomer_floor": 2})
        assert bad.status_code == 422 and "newcomer_floor" in detail(bad)


def test_health_and_metrics(api):
    assert api.get(None, "/livez").json() == {"status": "ok", "model_version": None,
                                              "detail": None}
    with api.serving():
        ready = api.get(None, "/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == "day-one"
        api.post("platform", "/v1/match", json={"mission_id": "M20"})
        text = api.get(None, "/metrics").text
    assert 'bigcrunch_model_loaded{version="day-one"} 1.0' in text
    assert 'bigcrunch_served_lists_total{endpoint="match"}' in text
    assert 'bigcrunch_request_seconds_bucket{le="0.02",method="POST",path="/v1/match"' in text


def test_a_locked_sqlite_store_is_a_503_not_a_500(api, monkeypatch, store_url):
    if not store_url.startswith("sqlite"):
        pytest.skip("SQLite's lock")
    from support.api import Api, make_app

    import graph._store

    monkeypatch.setattr(graph._store, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    app = make_app(store_url, str(api.app.state.settings.home))
    fast = Api(app)
    with fast.serving():
        path = store_url.split("///", 1)[1]
        other = sqlite3.connect(path, timeout=0.1)
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            r = fast.post("platform", "/v1/match", json={"mission_id": "M20"})
        finally:
            other.rollback()
            other.close()
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        assert fast.post("platform", "/v1/match", json={"mission_id": "M20"}).status_code == 200
    app.state.store.dispose()


# ------------------------------------------------------------------------------ commands


def test_crunch_allocate_prints_the_allocation(api, monkeypatch, tmp_path, store_url):
    monkeypatch.setenv("CRUNCH_DATABASE_URL", store_url)
    monkeypatch.setenv("CRUNCH_HOME", str(tmp_path / "cli-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(cli, ["allocate", "--json", "--floor", "0.5"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["missions_open"] == 3 and report["model_version"] == "day-one"
    assert set(report["assignments"]) <= {"M9", "M20", "M21"}
    assert CliRunner().invoke(cli, ["allocate", "--value", "fame"]).exit_code == 2


def test_crunch_serve_answers_over_http(api, tmp_path, store_url):
    """``crunch serve`` starts uvicorn on a free loopback port and serves /v1/match."""
    from support.api import KEYS

    if not store_url.startswith("sqlite"):
        pytest.skip("one backend is enough for the command")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CRUNCH_DATABASE_URL": store_url, "CRUNCH_HOME": str(tmp_path),
           "CRUNCH_API_KEYS": json.dumps([KEYS["platform"]]), "CRUNCH_MODEL_POLL_SECONDS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "crunch serve never became ready"
            time.sleep(0.2)
        r = httpx.post(f"{base}/v1/match", json={"mission_id": "M20", "k": 2},
                       headers={"X-API-Key": KEYS["platform"]["key"]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "day-one" and r.json()["shortlist_id"]
        assert httpx.post(f"{base}/v1/match", json={"mission_id": "M20"}).status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group started here
        proc.wait(timeout=30)
