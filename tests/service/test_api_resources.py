"""Create, read, update of persons, vetting, ties, groups, clients, missions; bundle import;
scopes; and bad input always a 4xx naming the field."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from sqlalchemy import select

from graph import Person, Tie, export_bundle

pytest_plugins = ["support.api"]  # the `api` fixture

NEW_PERSON = {"area_id": "A2", "availability_min_per_week": 300, "max_concurrent": 2,
              "skills": ["teaching", "outreach"], "lived_experience": ["homelessness"],
              "consent_matching": True, "consent_lived_experience": True}


def fields_of(response) -> list[str]:
    detail = response.json()["detail"]
    return [e["field"] for e in detail] if isinstance(detail, list) else [detail]


def test_persons_create_read_update_by_scope(api):
    v0 = api.store.version()
    r = api.post("engineer", "/v1/persons", json={"person_id": "P7", **NEW_PERSON})
    assert r.status_code == 201, r.text
    assert r.json()["skills"] == ["outreach", "teaching"]
    assert api.store.version() == v0 + 1

    eng = api.get("engineer", "/v1/persons/P7").json()
    assert eng["lived_experience"] == ["homelessness"] and eng["vetting"] == []
    # The data role manages people but sees no special-category data outside an export.
    data = api.get("data", "/v1/persons/P7").json()
    assert data["lived_experience"] is None and data["vetting"] is None
    # Special-category data goes to the engineer scope only, not even to admin keys.
    admin = api.get("admin", "/v1/persons/P7").json()
    assert admin["lived_experience"] is None and admin["vetting"] is None
    for scope in ("platform", "client"):
        assert api.get(scope, "/v1/persons/P7").status_code == 403
    assert api.get(None, "/v1/persons/P7").status_code == 401

    r = api.patch("engineer", "/v1/persons/P7", json={"availability_min_per_week": 90,
                                                      "skills": []})
    assert r.status_code == 200 and r.json()["availability_min_per_week"] == 90
    assert r.json()["skills"] == []
    assert api.store.version() == v0 + 2
    listed = api.get("data", "/v1/persons", params={"area_id": "A2"}).json()
    assert [p["person_id"] for p in listed] == ["P3", "P5", "P7"]
    assert "lived_experience" not in listed[0]


def test_lived_experience_needs_consent(api):
    # P3 never consented: nothing shown, nothing stored.
    assert api.get("engineer", "/v1/persons/P3").json()["lived_experience"] is None
    r = api.patch("engineer", "/v1/persons/P3", json={"lived_experience": ["debt"]})
    assert r.status_code == 422 and "lived_experience" in r.json()["detail"]
    with api.store.reader() as s:
        assert s.get(Person, "P3").lived_experience is None
    r = api.post("engineer", "/v1/persons", json={**NEW_PERSON,
                                                  "consent_lived_experience": False})
    assert r.status_code == 422 and "lived_experience" in r.text


BAD_PERSONS = [
    ({**NEW_PERSON, "nickname": "x"}, "body.nickname"),
    ({**NEW_PERSON, "availability_min_per_week": "300"}, "body.availability_min_per_week"),
    ({**NEW_PERSON, "availability_min_per_week": 10**30}, "body.availability_min_per_week"),
    ({**NEW_PERSON, "consent_matching": 1}, "body.consent_matching"),
    ({**NEW_PERSON, "joined_at": "2025-01-01T00:00:00"}, "body.joined_at"),
    ({**NEW_PERSON, "joined_at": "0001-01-01T00:00:00+01:00"}, "body.joined_at"),
    ({**NEW_PERSON, "person_id": "P\x00"}, "body.person_id"),
    ({**NEW_PERSON, "person_id": "x" * 65}, "body.person_id"),
    ({**NEW_PERSON, "area_id": "A\x00"}, "body.area_id"),
    ({k: v for k, v in NEW_PERSON.items() if k != "area_id"}, "body.area_id"),
]


def test_bad_person_bodies_name_the_field(api):
    for body, field in BAD_PERSONS:
        r = api.post("engineer", "/v1/persons", json=body)
        assert r.status_code == 422, (field, r.text)
        assert field in fields_of(r), (field, r.text)


def test_domain_errors_name_the_field_or_id(api):
    r = api.post("engineer", "/v1/persons", json={**NEW_PERSON, "area_id": "A99"})
    assert r.status_code == 422 and "area_id" in r.json()["detail"] and "A99" in r.text
    r = api.post("engineer", "/v1/persons", json={**NEW_PERSON, "skills": ["juggling"]})
    assert r.status_code == 422 and "skills" in r.text and "juggling" in r.text
    r = api.post("engineer", "/v1/persons", json={**NEW_PERSON, "person_id": "P1"})
    assert r.status_code == 409 and "P1" in r.text
    r = api.get("engineer", "/v1/persons/P404")
    assert r.status_code == 404 and "P404" in r.text
    r = api.patch("engineer", "/v1/persons/P1", json={"area_id": None})
    assert r.status_code == 422 and "area_id" in r.text


def test_odd_requests_are_4xx_never_500(api):
    cases = [
        ("POST", "/v1/persons", {"content": b'{"area_id": NaN}',
                                 "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/persons", {"content": b"not json",
                                 "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/persons", {"content": b'{"area_id": "\\ud800", "consent_matching": true,'
                                            b' "availability_min_per_week": 1}',
                                 "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/ties", {"content": b'{"person_a": "P1", "person_b": "P2", "kind": "peer",'
                                         b' "weight": Infinity}',
                              "headers": {"content-type": "application/json"}}),
        ("GET", "/v1/persons/" + "x" * 65, {}),
        ("GET", "/v1/persons/P%00", {}),
        ("GET", "/v1/vetting/99999999999999999999999", {}),
        ("GET", "/v1/ties/0", {}),
        ("GET", "/v1/persons", {"params": {"limit": 10**9}}),
        ("GET", "/v1/persons", {"params": {"area_id": "A\x00"}}),  # PostgreSQL refuses NUL
        ("GET", "/v1/missions", {"params": {"client_id": "C\x00", "status": "lost"}}),
        ("PATCH", "/v1/missions/M9", {"content": b'{"baseline": 1e999}',
                                      "headers": {"content-type": "application/json"}}),
        ("PATCH", "/v1/missions/M9", {"json": {"title": None}}),
    ]
    for method, url, kw in cases:
        r = api.request("admin", method, url, **kw)
        assert 400 <= r.status_code < 500, (method, url, r.status_code, r.text)


def test_vetting_records(api):
    r = api.post("engineer", "/v1/persons/P2/vetting", json={
        "regime": "minors", "status": "pending", "valid_from": "2025-01-01T00:00:00Z"})
    assert r.status_code == 201, r.text
    vid = r.json()["vetting_id"]
    again = api.post("data", "/v1/persons/P2/vetting", json={
        "regime": "minors", "status": "valid", "valid_from": "2025-01-01T01:00:00+01:00"})
    assert again.status_code == 409 and "valid_from" in again.text  # same instant in UTC
    r = api.patch("data", f"/v1/vetting/{vid}", json={"status": "valid",
                                                      "reference": "CR-77"})
    assert r.status_code == 200 and r.json()["status"] == "valid"
    assert api.get("engineer", "/v1/persons/P2/vetting").json()[0]["reference"] == "CR-77"
    assert api.get("data", "/v1/persons/P2/vetting").status_code == 403
    assert api.get("admin", f"/v1/vetting/{vid}").status_code == 403
    r = api.patch("engineer", f"/v1/vetting/{vid}", json={"expires_at": "2024-01-01T00:00:00Z"})
    assert r.status_code == 422 and "expires_at" in r.text
    r = api.post("engineer", "/v1/persons/P2/vetting", json={
        "regime": "adults", "status": "valid", "valid_from": "2025-01-01T00:00:00Z"})
    assert r.status_code == 422 and "body.regime" in fields_of(r)
    assert api.get("engineer", "/v1/vetting/424242").status_code == 404


def test_ties(api):
    r = api.post("engineer", "/v1/ties", json={"person_a": "P5", "person_b": "P4",
                                               "kind": "family", "weight": 0.7})
    assert r.status_code == 201, r.text
    tie = r.json()
    assert (tie["person_a"], tie["person_b"]) == ("P4", "P5")  # undirected: ordered
    dup = api.post("engineer", "/v1/ties", json={"person_a": "P4", "person_b": "P5",
                                                 "kind": "family", "weight": 0.2})
    assert dup.status_code == 409
    r = api.post("engineer", "/v1/ties", json={"person_a": "P4", "person_b": "P4",
                                               "kind": "peer", "weight": 0.2})
    assert r.status_code == 422 and "person_b" in r.text
    r = api.post("engineer", "/v1/ties", json={"person_a": "P4", "person_b": "P77",
                                               "kind": "peer", "weight": 0.2})
    assert r.status_code == 422 and "person_b" in r.text and "P77" in r.text
    r = api.post("engineer", "/v1/ties", json={"person_a": "P4", "person_b": "P3",
                                               "kind": "peer", "weight": 0})
    assert r.status_code == 422 and "body.weight" in fields_of(r)
    r = api.patch("data", f"/v1/ties/{tie['tie_id']}", json={"weight": 0.9})
    assert r.status_code == 200 and r.json()["weight"] == 0.9
    ties = api.get("engineer", "/v1/persons/P5/ties").json()
    assert [t["tie_id"] for t in ties] == [tie["tie_id"]]
    with api.store.reader() as s:
        assert s.get(Tie, tie["tie_id"]).weight == 0.9


def test_groups(api):
    r = api.post("engineer", "/v1/groups", json={
        "group_id": "G2", "kind": "mixed", "created_at": "2025-01-01T00:00:00Z",
        "members": [{"person_id": "P3", "joined_at": "2025-02-01T00:00:00Z"},
                    {"person_id": "P4"}]})
    assert r.status_code == 201, r.text
    assert [m["person_id"] for m in r.json()["members"]] == ["P3", "P4"]
    r = api.patch("engineer", "/v1/groups/G2", json={"members": [
        {"person_id": "P3"}, {"person_id": "P5"}, {"person_id": "P1"}]})
    assert r.status_code == 200, r.text
    members = {m["person_id"]: m["joined_at"] for m in r.json()["members"]}
    assert set(members) == {"P1", "P3", "P5"}
    assert members["P3"] == "2025-02-01T00:00:00Z"  # kept
    for bad, field in [
        ([{"person_id": "P3"}], "body.members"),
        ([{"person_id": f"P{i}"} for i in range(1, 8)], "body.members"),
        ([{"person_id": "P3"}, {"person_id": "P3"}], "body.members"),
    ]:
        r = api.post("engineer", "/v1/groups", json={"kind": "peer", "members": bad})
        assert r.status_code == 422 and field in fields_of(r), r.text
    r = api.post("engineer", "/v1/groups", json={"kind": "peer", "members": [
        {"person_id": "P3"}, {"person_id": "P99"}]})
    assert r.status_code == 422 and "members.1.person_id" in r.text
    r = api.post("engineer", "/v1/groups", json={
        "kind": "peer", "created_at": "2025-06-01T00:00:00Z",
        "members": [{"person_id": "P3", "joined_at": "2025-01-01T00:00:00Z"},
                    {"person_id": "P4"}]})
    assert r.status_code == 422 and "members.0.joined_at" in r.text
    assert api.get("platform", "/v1/groups/G2").status_code == 403


def test_clients_and_missions_by_owner(api):
    r = api.post("engineer", "/v1/clients", json={"client_id": "C3", "kind": "city",
                                                  "name": "Ville"})
    assert r.status_code == 201
    mission = {"mission_id": "M30", "client_id": "C3", "need_type": "school_absenteeism",
               "area_id": "A1", "starts_at": "2026-01-01T00:00:00Z",
               "ends_at": "2026-06-30T00:00:00Z", "metric": "absence rate",
               "direction": "decrease", "baseline": 0.2, "target": 0.1,
               "pay_rule": "threshold", "fee": 800.0, "contract_cap": 800.0}
    r = api.post("engineer", "/v1/missions", json=mission)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "draft"
    # A client sees only its own missions; others' are "not found", not "forbidden".
    own = [m["mission_id"] for m in api.get("client2", "/v1/missions").json()]
    assert own == ["M20"]
    assert api.get("client2", "/v1/missions/M9").status_code == 404
    assert api.get("client", "/v1/missions/M9").status_code == 200
    assert api.get("client", "/v1/clients/C1").status_code == 200
    assert api.get("client", "/v1/clients/C2").status_code == 404
    assert api.get("platform", "/v1/missions/M30").status_code == 200
    assert api.post("client", "/v1/missions", json=mission).status_code == 403

    r = api.patch("engineer", "/v1/missions/M30", json={"status": "open", "title": "Écoles"})
    assert r.status_code == 200 and r.json()["title"] == "Écoles"
    r = api.patch("engineer", "/v1/missions/M30", json={"pay_rule": "per_unit"})
    assert r.status_code == 422 and "unit_price" in r.text
    r = api.patch("engineer", "/v1/missions/M30", json={"team_min": 3, "team_max": 2})
    assert r.status_code == 422 and "team_min" in r.text
    r = api.patch("engineer", "/v1/missions/M30", json={"client_id": "C1"})
    assert r.status_code == 422 and "body.client_id" in fields_of(r)
    # M1 has a verified (paid) outcome: its pay terms are frozen, its title is not.
    r = api.patch("engineer", "/v1/missions/M1", json={"fee": 5000.0})
    assert r.status_code == 409 and "fee" in r.text
    assert api.patch("engineer", "/v1/missions/M1", json={"title": "x"}).status_code == 200
    r = api.post("engineer", "/v1/missions", json={**mission, "mission_id": "M31",
                                                   "need_type": "astrology"})
    assert r.status_code == 422 and "need_type" in r.text


def _zip(folder: Path, top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"{top}{p.name}")
    return buf.getvalue()


def test_bundle_import(api, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(api.store, out)
    r = api.post("data", "/v1/bundles", content=_zip(out, "bundle/"),
                 headers={"content-type": "application/zip"})
    assert r.status_code == 200, r.text
    assert r.json()["files"]["persons"] == {"inserted": 0, "updated": 0, "unchanged": 5}

    lines = (out / "persons.csv").read_text().splitlines()
    lines.append("P8,A3,2025-10-01T00:00:00Z,120,1,digital,,true,false")
    (out / "persons.csv").write_text("\n".join(lines) + "\n")
    r = api.post("data", "/v1/bundles", content=_zip(out))
    assert r.status_code == 200, r.text
    assert r.json()["files"]["persons"]["inserted"] == 1

    lines.append("P9,A404,2025-10-01T00:00:00Z,120,0,,,true,false")
    (out / "persons.csv").write_text("\n".join(lines) + "\n")
    r = api.post("data", "/v1/bundles", content=_zip(out))
    assert r.status_code == 422
    problems = r.json()["detail"]["problems"]
    assert {(p["file"], p["line"]) for p in problems} == {("persons.csv", len(lines))}
    assert any("A404" in p["reason"] for p in problems)
    with api.store.reader() as s:
        assert s.get(Person, "P9") is None

    assert api.post("engineer", "/v1/bundles", content=_zip(out)).status_code == 403
    r = api.post("data", "/v1/bundles", content=b"not a zip")
    assert r.status_code == 422 and "zip" in r.text
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../persons.csv", "x")
    r = api.post("data", "/v1/bundles", content=buf.getvalue())
    assert r.status_code == 422 and "persons.csv" in r.text


def test_writes_move_the_store_version(api):
    v = api.store.version()
    api.post("engineer", "/v1/ties", json={"person_a": "P3", "person_b": "P4",
                                           "kind": "peer", "weight": 0.5})
    api.patch("engineer", "/v1/missions/M9", json={"team_max": 3})
    api.patch("engineer", "/v1/groups/G1", json={"kind": "family"})
    assert api.store.version() == v + 3
    with api.store.reader() as s:
        assert s.execute(select(Tie).where(Tie.person_a == "P3")).scalar_one().weight == 0.5
