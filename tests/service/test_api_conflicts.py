"""No request causes a 500: a row taken or erased by a concurrent write is a 409 naming the
field and id (never the row), and integers may be written 8.0 as JSON Schema allows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

import service.routers.match as match_router
from graph import Area, Person
from graph._rights import erase_person
from service.routers._common import conflict_message

pytest_plugins = ["support.api"]  # the `api` fixture

NEW_PERSON = {"area_id": "A2", "availability_min_per_week": 300, "max_concurrent": 2,
              "consent_matching": True}


def test_a_person_erased_while_their_list_is_logged_is_a_409(api, monkeypatch):
    """The list was drawn, then its person erased before the decision log took it: the
    log's foreign key refuses it, and the caller gets a 409 to ask again."""
    real = match_router.record_shortlist

    def erase_first(store, result, **kw):  # noqa: ANN001, ANN003, ANN202
        person = next(c.candidate_id for c in result.candidates if c.kind == "person")
        erase_person(store, person)
        return real(store, result, **kw)

    with api.serving():
        monkeypatch.setattr(match_router, "record_shortlist", erase_first)
        r = api.post("platform", "/v1/match", json={"mission_id": "M20", "k": 5})
        assert r.status_code == 409, r.text
        assert "shortlist_candidates" in r.json()["detail"]
        monkeypatch.setattr(match_router, "record_shortlist", real)
        assert api.post("platform", "/v1/match", json={"mission_id": "M20"}).status_code == 200


def test_a_conflict_names_the_field_and_id_never_the_row(api):
    with pytest.raises(IntegrityError) as taken, api.store.session() as s:
        s.add(Area(area_id="A1", name="again", lat=0.0, lon=0.0))
    message = conflict_message(taken.value)
    assert "areas" in message and "area_id" in message and "A1" in message

    with pytest.raises(IntegrityError) as broken, api.store.session() as s:
        s.add(Person(person_id="P77", area_id="A1", joined_at=datetime.now(UTC),
                     availability_min_per_week=-5, max_concurrent=1, skills="secret-skill",
                     lived_experience=None, consent_matching=True,
                     consent_lived_experience=False))
    message = conflict_message(broken.value)
    assert "persons" in message and "secret-skill" not in message and "-5" not in message


def test_whole_numbers_written_as_floats_are_integers(api):
    r = api.post("engineer", "/v1/persons",
                 json={**NEW_PERSON, "person_id": "P60", "availability_min_per_week": 300.0,
                       "max_concurrent": 2.0})
    assert r.status_code == 201, r.text
    assert r.json()["availability_min_per_week"] == 300 and r.json()["max_concurrent"] == 2
    r = api.patch("engineer", "/v1/persons/P60", json={"max_concurrent": 3.0})
    assert r.status_code == 200 and r.json()["max_concurrent"] == 3
    for bad in (2.5, "2", True, -1.0, 101.0):
        r = api.patch("engineer", "/v1/persons/P60", json={"max_concurrent": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["field"] == "body.max_concurrent"
    r = api.patch("engineer", "/v1/missions/M20", json={"team_max": 2.0, "days_per_week": None})
    assert r.status_code == 422 and "days_per_week" in r.text  # null: not a nullable column
    assert api.patch("engineer", "/v1/missions/M20", json={"team_max": 2.0}).status_code == 200
