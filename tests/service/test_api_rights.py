"""Data rights: export of everything held about a person, consent, erasure and tombstones."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import String, select, text

from graph import (
    BundleError,
    Person,
    Shortlist,
    ShortlistCandidate,
    Truth,
    export_bundle,
    import_bundle,
    load_frames,
    validate_bundle,
)
from graph._models import Base, IdempotencyKey, Tombstone
from graph._rights import ERASED_PREFIX

pytest_plugins = ["support.api"]  # the `api` fixture


def add_decision_log(api, person_id: str = "P1") -> None:
    """A served list naming the person (candidate and filters) and a truth row."""
    with api.store.session() as s:
        s.add(Shortlist(shortlist_id="SL1", mission_id="M9", served_at=datetime.now(UTC),
                        model_version="day-one", policy="test", requested_by="eve",
                        filters=json.dumps({"exclude": [person_id, "P3"], "pin": [],
                                            "note": person_id})))
        s.flush()
        s.add_all([
            ShortlistCandidate(shortlist_id="SL1", rank=1, person_id=person_id, score=0.7,
                               propensity=0.5),
            ShortlistCandidate(shortlist_id="SL1", rank=2, person_id="P4", score=0.6,
                               propensity=0.5),
            Truth(mission_id="M9", person_id=person_id, p_success=0.4),
        ])


def occurrences(store, value: str) -> list[str]:
    """Every table.column that holds ``value`` (whole, or as a token inside text)."""
    found = []
    token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])")
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for col in table.columns:
                if not isinstance(col.type, String):  # Text is a String too
                    continue
                rows = conn.execute(select(col).where(col.is_not(None))).scalars()
                if any(token.search(v) for v in rows):
                    found.append(f"{table.name}.{col.name}")
    return found


# --------------------------------------------------------------------------- export


def test_export_holds_everything_about_the_person(api):
    add_decision_log(api)
    data = api.get("data", "/v1/persons/P1/export")
    assert data.status_code == 200, data.text
    d = data.json()
    assert d["person"]["person_id"] == "P1"
    assert d["person"]["lived_experience"] == ["large_family"]  # their own data, in full
    assert [v["regime"] for v in d["vetting"]] == ["minors"]
    assert sorted(t["other_person_id"] for t in d["ties"]) == ["P2", "P4"]
    assert [g["group_id"] for g in d["groups"]] == ["G1"]
    assert [a["assignment_id"] for a in d["assignments"]] == ["AS1", "AS2"]
    assert [o["outcome_id"] for o in d["outcomes"]] == ["O1", "O2"]
    assert [a["assignment_id"] for a in d["group_assignments"]] == ["AS5"]
    assert [o["outcome_id"] for o in d["group_outcomes"]] == ["O5"]
    assert d["shortlist_appearances"][0]["rank"] == 1
    assert d["truth"] == [{"mission_id": "M9", "p_success": 0.4}]
    assert api.get("admin", "/v1/persons/P1/export").status_code == 200
    for scope in ("engineer", "platform", "client"):
        assert api.get(scope, "/v1/persons/P1/export").status_code == 403
    r = api.get("data", "/v1/persons/P77/export")
    assert r.status_code == 404 and "P77" in r.text


# --------------------------------------------------------------------------- consent


def test_withdrawing_lived_experience_consent_deletes_the_tags(api):
    v = api.store.version()
    r = api.patch("engineer", "/v1/persons/P2/consent", json={"consent_lived_experience": False})
    assert r.status_code == 200 and r.json()["lived_experience_deleted"] is True
    assert api.store.version() == v + 1
    with api.store.reader() as s:
        assert s.get(Person, "P2").lived_experience is None
    assert api.get("engineer", "/v1/persons/P2").json()["lived_experience"] is None
    # Giving it back stores nothing by itself; tags come only when given again.
    r = api.patch("data", "/v1/persons/P2/consent", json={"consent_lived_experience": True})
    assert r.json()["consent_lived_experience"] is True
    assert api.get("engineer", "/v1/persons/P2").json()["lived_experience"] == []
    r = api.patch("data", "/v1/persons/P2/consent", json={})
    assert r.status_code == 422 and "consent_matching" in r.text
    assert api.patch("platform", "/v1/persons/P2/consent",
                     json={"consent_matching": False}).status_code == 403


def test_withdrawing_matching_consent_removes_the_person_from_every_list(api):
    r = api.post("engineer", "/v1/assignments", json={"mission_id": "M20", "person_id": "P4"})
    offered = r.json()["assignment_id"]
    with api.serving():
        def listed() -> set[str]:
            r = api.post("platform", "/v1/match", json={"mission_id": "M9", "k": 20})
            assert r.status_code == 200, r.text
            return {c["id"] for c in r.json()["candidates"]}

        assert "P4" in listed()
        r = api.patch("data", "/v1/persons/P4/consent", json={"consent_matching": False})
        assert r.status_code == 200 and r.json()["offers_withdrawn"] == 1
        assert "P4" not in listed()  # the very next list
    assert api.get("engineer", f"/v1/assignments/{offered}").json()["status"] == "withdrawn"


# --------------------------------------------------------------------------- erasure


def test_erasure_leaves_no_trace_of_the_person(api, tmp_path):
    add_decision_log(api)
    # An unpaid claim on a new assignment, with a key that names the person.
    aid = api.post("engineer", "/v1/assignments",
                   json={"mission_id": "M20", "person_id": "P1"}).json()["assignment_id"]
    for step in ("accepted", "active"):
        api.patch("engineer", f"/v1/assignments/{aid}", json={"status": step})
    r = api.post("engineer", f"/v1/assignments/{aid}/outcomes", headers={
        "Idempotency-Key": "claim-P1-1"}, json={"value": 1, "measured_at": datetime.now(
            UTC).isoformat(), "evidence": "register of P1"})
    assert r.status_code == 201
    assert "persons.person_id" in occurrences(api.store, "P1")
    paid_before = api.get("client", "/v1/missions/M1/ledger").json()
    counts_before = api.store.counts()

    for scope in ("engineer", "platform", "client"):
        assert api.delete(scope, "/v1/persons/P1").status_code == 403
    r = api.delete("data", "/v1/persons/P1")
    assert r.status_code == 200, r.text
    report = r.json()
    assert "P1" not in r.text
    assert report["ties"] == 2 and report["vetting_records"] == 1
    assert report["memberships"] == 1 and report["groups_dissolved"] == 1  # G1 had 2
    assert report["shortlist_entries"] == 1 and report["shortlist_filters_scrubbed"] == 1
    assert report["truth_rows"] == 1 and report["idempotency_keys"] == 1
    # AS1 and AS2 were verified (paid): kept, anonymised. The new claim and G1's unpaid
    # assignment AS5 (claimed O5) go.
    assert report["assignments_anonymised"] == 2 and report["outcomes_kept_anonymised"] == 2
    assert report["assignments_deleted"] == 2 and report["outcomes_deleted"] == 2

    assert occurrences(api.store, "P1") == []
    counts = api.store.counts()
    assert counts["persons"] == counts_before["persons"] - 1 + 2  # two pseudonyms
    assert counts["tombstones"] == 1 and counts["groups"] == counts_before["groups"] - 1
    with api.store.reader() as s:
        pseudonyms = s.execute(select(Person).where(Person.person_id.like(
            f"{ERASED_PREFIX}%"))).scalars().all()
        assert len({p.person_id for p in pseudonyms}) == 2  # one per assignment: unlinkable
        assert all(not p.consent_matching and p.lived_experience is None and p.skills is None
                   for p in pseudonyms)
        filters = json.loads(s.get(Shortlist, "SL1").filters)
        assert filters == {"exclude": ["P3"], "pin": [], "note": None}
        assert s.execute(select(IdempotencyKey)).scalars().all() == []
        assert len(s.execute(select(Tombstone.person_id_hash)).scalar_one()) == 64
    # What was paid stays paid, and the ledger did not move.
    assert api.get("client", "/v1/missions/M1/ledger").json() == paid_before
    assert api.get("client", "/v1/outcomes/O1").json()["payout"] == 1000.0
    assert api.get("client", "/v1/outcomes/O1").json()["evidence"] is None

    # The store after an erasure is still a valid bundle (pseudonyms included).
    export_bundle(api.store, tmp_path / "after")
    assert validate_bundle(tmp_path / "after") == []
    assert api.delete("data", "/v1/persons/P1").status_code == 404
    assert api.get("engineer", "/v1/persons/P1").status_code == 404


def test_training_after_an_erasure_has_no_row_of_the_person(api):
    from features import FeatureModel
    from matching import build_training_set, labelled_assignments

    api.delete("data", "/v1/persons/P1")
    frames = load_frames(api.store)
    model = FeatureModel().fit(frames, datetime.now(UTC))
    ts = build_training_set(frames, model, labelled_assignments(frames))
    ids = set(ts.rows["candidate_id"].to_list()) if ts.n else set()
    assert "P1" not in ids
    assert not any(i.startswith(ERASED_PREFIX) for i in ids)
    assert ts.skipped_unknown_candidate == 2  # the two pseudonymous paid assignments
    assert ids  # the others still train
    assert "P1" not in json.dumps(model.to_dict())


def test_a_tombstone_stops_the_person_coming_back(api, tmp_path):
    before = tmp_path / "before"
    export_bundle(api.store, before)
    assert api.delete("data", "/v1/persons/P2").status_code == 200
    with pytest.raises(BundleError) as err:
        import_bundle(api.store, before, show_progress=False)
    problems = [str(p) for p in err.value.problems]
    assert "persons.csv:3: person_id: 'P2' was erased from the store (right to erasure) " \
           "and cannot be imported again" in problems
    assert {p.file for p in err.value.problems} >= {"persons.csv", "ties.csv",
                                                   "group_members.csv", "assignments.csv"}
    assert any("was erased" in str(p) for p in validate_bundle(before, api.store))
    with api.store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM persons WHERE person_id = 'P2'")
                            ).scalar_one() == 0
    # Through the API as well, both ways in.
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in before.iterdir():
            z.write(p, p.name)
    r = api.post("data", "/v1/bundles", content=buf.getvalue())
    assert r.status_code == 422 and "was erased" in r.text
    r = api.post("engineer", "/v1/persons", json={
        "person_id": "P2", "area_id": "A1", "availability_min_per_week": 60,
        "consent_matching": True})
    assert r.status_code == 409 and "erased" in r.text
