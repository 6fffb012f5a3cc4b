"""Freshness without stalls: a write is served at once, by the current engine with the write
laid over it, while the engine is rebuilt in the background.

The engine factory here holds every rebuild started after the app is up: a held rebuild
waits in its background thread until released, and a rebuild in a request's thread (a
request waiting 11-25 s at 100,000 persons) fails that request. So a test that gets its
answer while rebuilds are held proves that no request waited for one.
"""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from support.api import KEYS, Api, populate_api_city

from graph import Shortlist, Store, export_bundle, open_store
from graph._models import ChangeJournal, Tombstone
from matching import MatchingEngine
from service.app import create_app
from service.settings import Settings

NEW_MISSION = {"mission_id": "M30", "client_id": "C2", "need_type": "school_absenteeism",
               "area_id": "A2", "title": "Homework club", "metric": "pupils",
               "direction": "increase", "baseline": 0, "target": 10, "pay_rule": "per_unit",
               "unit_price": 20.0, "starts_at": "2025-09-01T00:00:00Z",
               "ends_at": "2027-06-30T00:00:00Z", "status": "open"}


class HeldBuilds:
    """An engine factory whose rebuilds can be held (see the module docstring)."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.in_request = 0  # builds run by a request's thread
        self.background = 0  # builds run by the background rebuild
        self.waiting = threading.Event()

    def hold(self) -> None:
        self._open.clear()
        self.background = 0
        self.waiting.clear()

    def release(self) -> None:
        self._open.set()

    def __call__(self, frames, model) -> MatchingEngine:  # noqa: ANN001
        if threading.current_thread().name == "engine-refresh":
            self.background += 1
            if not self._open.is_set():
                self.waiting.set()
                assert self._open.wait(120), "the held rebuild was never released"
        else:
            self.in_request += 1
            if not self._open.is_set():
                raise RuntimeError("a request waited for an engine rebuild")
        return MatchingEngine(frames, model.feature_model, model.ranker)


@pytest.fixture
def held() -> HeldBuilds:
    return HeldBuilds()


@pytest.fixture
def api(store_url, tmp_path, held) -> Iterator[Api]:
    seed = open_store(store_url)
    populate_api_city(seed)
    seed.dispose()
    settings = Settings(home=tmp_path / "home", database_url=store_url,
                        api_keys=list(KEYS.values()), model_poll_seconds=0)
    app = create_app(settings, model_loader=lambda: None, poll=False, engine_factory=held)
    app.state.provider.rebuild_delay_s = 0.0
    api = Api(app)
    with api.serving():
        held.in_request = 0  # the model's first engine, built at start-up
        yield api
    held.release()
    app.state.store.dispose()


def listed(api: Api, mission: str, scope: str = "platform") -> set[str]:
    """Every person on a list for ``mission`` (members of groups included), through
    ``/v1/match`` (platform) or the engineer's shortlist."""
    if scope == "platform":
        r = api.post("platform", "/v1/match", json={"mission_id": mission, "k": 20})
        assert r.status_code == 200, r.text
        out = set()
        for c in r.json()["candidates"]:
            out.add(c["id"])
            if c["kind"] == "group":
                group = api.get("engineer", f"/v1/groups/{c['id']}").json()
                out |= {m["person_id"] for m in group["members"]}
        return out
    r = api.post("engineer", f"/v1/missions/{mission}/shortlist", json={"k": 20, "teams": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    return ({p for c in body["candidates"] for p in [c["id"], *c["members"]]}
            | {p for t in body["teams"] for p in t["members"]})


def pinned(api: Api, mission: str, candidate: str):  # noqa: ANN201
    return api.post("engineer", f"/v1/missions/{mission}/shortlist",
                    json={"k": 5, "teams": 0, "pin": [candidate]})


def not_rebuilt(api: Api) -> bool:
    return api.app.state.provider.model.store_version < api.store.version()


def logged_since(api: Api, served: set[str]) -> list[Shortlist]:
    with api.store.reader() as s:
        return [sl for sl in s.scalars(select(Shortlist)) if sl.shortlist_id not in served]


def shortlist_ids(api: Api) -> set[str]:
    with api.store.reader() as s:
        return set(s.scalars(select(Shortlist.shortlist_id)))


def test_a_withdrawn_consent_is_left_out_at_once(api, held):
    assert "P2" in listed(api, "M20")
    assert pinned(api, "M9", "G1").status_code == 200  # eligible, with P2 in it
    before = shortlist_ids(api)
    held.hold()
    r = api.request("data", "PATCH", "/v1/persons/P2/consent", json={"consent_matching": False})
    assert r.status_code == 200, r.text
    for mission in ("M20", "M9"):
        for scope in ("platform", "engineer"):
            people = listed(api, mission, scope)
            assert "P2" not in people and "G1" not in people  # G1 has P2 in it
    assert "P1" in listed(api, "M20") and "P4" in listed(api, "M9")  # the others still are
    # A person-specific question about P2 waits for the rebuild (503, with when to retry).
    r = api.post("platform", "/v1/persons/P2/missions", json={"k": 5})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    for mission, pin in (("M20", "P2"), ("M9", "G1")):
        r = pinned(api, mission, pin)
        assert r.status_code == 503 and pin in r.text
    assert held.in_request == 0 and not_rebuilt(api)
    # The lists served meanwhile say so in the decision log: counts, never ids.
    log = logged_since(api, before)
    assert log and all(json.loads(sl.filters)["pending_changes"]["persons_left_out"] >= 1
                       for sl in log)

    held.release()
    api.settle()
    assert held.in_request == 0 and held.background >= 1
    assert "P2" not in listed(api, "M20")  # the rebuilt engine agrees
    r = api.post("platform", "/v1/persons/P2/missions", json={"k": 5})
    assert r.status_code == 200 and r.json()["missions"] == []
    assert pinned(api, "M9", "G1").status_code == 422  # not eligible: P2 withdrew


def test_an_erased_person_is_left_out_at_once_and_the_journal_keeps_no_id(api, held):
    assert "P4" in listed(api, "M20")
    before = shortlist_ids(api)
    held.hold()
    r = api.delete("data", "/v1/persons/P4")
    assert r.status_code == 200, r.text
    for scope in ("platform", "engineer"):
        assert "P4" not in listed(api, "M20", scope)
        assert "P4" not in listed(api, "M9", scope)
    assert api.post("platform", "/v1/persons/P4/missions", json={}).status_code == 404
    assert held.in_request == 0 and not_rebuilt(api)
    for sl in logged_since(api, before):
        assert "P4" not in (sl.filters or "")
    with api.store.reader() as s:
        rows = s.execute(select(ChangeJournal.kind, ChangeJournal.key)).all()
        tombstone = s.scalars(select(Tombstone.person_id_hash)).one()
    keys = [k for kind, k in rows if kind == "person"]
    assert keys and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    assert tombstone not in keys  # another key: journal and tombstones do not link
    assert not any(re.search(r"(?<![A-Za-z0-9])P4(?![A-Za-z0-9])", k) for _, k in rows)
    held.release()
    api.settle()
    assert "P4" not in listed(api, "M20")


def test_an_accepted_assignment_at_capacity_is_left_out_at_once(api, held):
    assert api.patch("engineer", "/v1/persons/P4", json={"max_concurrent": 1}).status_code == 200
    api.settle()
    assert "P4" in listed(api, "M9")
    held.hold()
    aid = api.post("engineer", "/v1/assignments", json={"mission_id": "M20",
                                                        "person_id": "P4"}).json()["assignment_id"]
    r = api.patch("engineer", f"/v1/assignments/{aid}", json={"status": "accepted"})
    assert r.status_code == 200, r.text
    # M9's window overlaps M20's: P4 holds their one place.
    assert "P4" not in listed(api, "M9") and "P4" not in listed(api, "M9", "engineer")
    staffed = api.post("engineer", "/v1/allocations", json={}).json()["assignments"]
    assert "P4" not in {p for cands in staffed.values() for c in cands for p in c["members"]}
    assert held.in_request == 0 and not_rebuilt(api)
    # One background rebuild, however many writes and requests came meanwhile.
    assert held.waiting.wait(30) and held.background == 1
    held.release()
    api.settle()
    assert "P4" not in listed(api, "M9")  # the capacity rule of the rebuilt engine agrees


def test_a_mission_window_moved_counts_at_once_against_its_holders(api, held):
    """Holds are assignments whose mission's window overlaps: moving a window changes the
    capacity left to everyone assigned to the mission, so they are left out at once."""
    assert api.patch("engineer", "/v1/persons/P4", json={"max_concurrent": 1}).status_code == 200
    assert api.post("engineer", "/v1/missions", json={**NEW_MISSION, "mission_id": "M31",
                    "starts_at": "2026-01-01T00:00:00Z",
                    "ends_at": "2026-06-30T00:00:00Z"}).status_code == 201
    r = api.post("engineer", "/v1/assignments", json={"mission_id": "M9", "person_id": "P4"})
    assert r.status_code == 201, r.text
    api.settle()
    assert "P4" in listed(api, "M31")  # M9 (autumn 2025) does not overlap M31
    held.hold()
    r = api.patch("engineer", "/v1/missions/M9", json={"ends_at": "2026-12-31T00:00:00Z"})
    assert r.status_code == 200, r.text
    assert "P4" not in listed(api, "M31") and "P4" not in listed(api, "M31", "engineer")
    assert held.in_request == 0 and not_rebuilt(api)
    held.release()
    api.settle()
    assert "P4" not in listed(api, "M31")  # the rebuilt engine agrees


def test_a_changed_mission_is_served_with_its_new_rules_at_once(api, held):
    assert {"P2", "P4", "P5"} <= listed(api, "M20")
    held.hold()
    r = api.patch("engineer", "/v1/missions/M20", json={"vetting_regime": "minors"})
    assert r.status_code == 200, r.text
    for scope in ("platform", "engineer"):
        assert listed(api, "M20", scope) == {"P1"}  # the only valid minors check
    served = api.post("platform", "/v1/match", json={"mission_id": "M20"}).json()
    with api.store.reader() as s:
        sl = s.get(Shortlist, served["shortlist_id"])
        assert "vetted" in sl.policy
        assert json.loads(sl.filters)["pending_changes"]["missions_reread"] == 1
    # A mission created, and one closed, while the rebuild is held.
    assert api.post("engineer", "/v1/missions", json=NEW_MISSION).status_code == 201
    assert api.post("platform", "/v1/match", json={"mission_id": "M30"}).status_code == 200
    assert api.patch("engineer", "/v1/missions/M9", json={"status": "closed"}).status_code == 200
    r = api.post("engineer", "/v1/allocations", json={"mission_ids": ["M9"]})
    assert r.status_code == 422 and "M9" in r.text
    report = api.post("engineer", "/v1/allocations", json={}).json()
    assert report["missions_open"] == 3  # M20, M21, M30
    assert held.in_request == 0 and not_rebuilt(api)
    held.release()
    api.settle()
    assert listed(api, "M20") == {"P1"}


def test_a_bundle_import_still_rebuilds_before_serving(api, held, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(api.store, out)
    lines = (out / "persons.csv").read_text().splitlines()
    lines.append("P8,A2,2025-01-01T00:00:00Z,600,2,teaching,,true,false")
    (out / "persons.csv").write_text("\n".join(lines) + "\n")
    r = api.post("data", "/v1/bundles", content=_zip(out))
    assert r.status_code == 200, r.text
    builds = held.in_request
    r = api.post("platform", "/v1/match", json={"mission_id": "M20", "k": 20})
    assert r.status_code == 200, r.text
    assert held.in_request == builds + 1  # rebuilt in the request, before serving
    assert not not_rebuilt(api)
    assert "P8" in {c["id"] for c in r.json()["candidates"]}  # the imported person serves
    # The journal said "everything": nothing a partial overlay could have named.
    with api.store.reader() as s:
        assert s.scalars(select(ChangeJournal.kind).where(
            ChangeJournal.version == api.store.version())).all() == ["everything"]


def test_outcomes_move_the_version_but_leave_nobody_out(api, held):
    with api.store.session() as s:
        version = Store.bump_version(s, everything=False)
    held.hold()
    assert {"P1", "P2", "P4", "P5"} <= listed(api, "M20")
    assert held.in_request == 0 and api.app.state.provider.model.store_version < version
    held.release()
    api.settle()


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, p.name)
    return buf.getvalue()
