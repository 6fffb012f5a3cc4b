from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from graph import Area, Person, open_store
from graph._payout import PayRule, payout_for, success_for


def test_migrations_are_idempotent(store):
    assert store.version() == 0
    store.migrate()
    again = open_store(store.url)
    assert again.counts()["persons"] == 0
    again.dispose()


def test_times_come_back_in_utc(store):
    joined = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
    with store.session() as s:
        s.add(Area(area_id="A1", name="Nord", lat=48.9, lon=2.35))
        s.add(Person(person_id="P1", area_id="A1", joined_at=joined,
                     availability_min_per_week=120, max_concurrent=1, skills=None,
                     lived_experience=None, consent_matching=True,
                     consent_lived_experience=False))
    with store.reader() as s:
        p = s.get(Person, "P1")
        assert p.joined_at == joined
        assert p.joined_at.tzinfo is not None


def test_foreign_keys_are_enforced(store):
    with pytest.raises(IntegrityError):
        with store.session() as s:
            s.add(Person(person_id="P1", area_id="nowhere",
                         joined_at=datetime(2025, 1, 1, tzinfo=UTC),
                         availability_min_per_week=60, max_concurrent=1,
                         consent_matching=True, consent_lived_experience=False))
    assert store.counts()["persons"] == 0


def test_lived_experience_needs_consent_in_the_schema(store):
    with store.session() as s:
        s.add(Area(area_id="A1", name="Nord", lat=48.9, lon=2.35))
    with pytest.raises(IntegrityError):
        with store.session() as s:
            s.add(Person(person_id="P1", area_id="A1",
                         joined_at=datetime(2025, 1, 1, tzinfo=UTC),
                         availability_min_per_week=60, max_concurrent=1,
                         lived_experience="drug_use", consent_matching=True,
                         consent_lived_experience=False))


def test_store_version_grows_with_writes(store):
    with store.session() as s:
        assert store.bump_version(s) == 1
    with store.session() as s:
        assert store.bump_version(s) == 2
    assert store.version() == 2


@pytest.mark.parametrize(
    ("rule", "value", "paid", "success", "payout"),
    [
        (PayRule("per_unit", "increase", 0, 10, unit_price=50.0), 3, 0, True, 150.0),
        (PayRule("per_unit", "increase", 0, 10, unit_price=50.0), 0, 0, False, 0.0),
        (PayRule("per_unit", "increase", 0, 10, unit_price=50.0, contract_cap=400), 3, 300,
         True, 100.0),
        (PayRule("threshold", "decrease", 0.2, 0.1, fee=900.0), 0.1, 0, True, 900.0),
        (PayRule("threshold", "decrease", 0.2, 0.1, fee=900.0), 0.11, 0, False, 0.0),
        (PayRule("linear", "decrease", 0.2, 0.1, fee=1000.0), 0.15, 0, True, 500.0),
        (PayRule("linear", "increase", 10, 20, fee=1000.0), 12, 0, False, 200.0),
        (PayRule("linear", "increase", 10, 20, fee=1000.0), 30, 0, True, 1000.0),
        (PayRule("linear", "increase", 10, 20, fee=1000.0), 5, 0, False, 0.0),
    ],
)
def test_pay_rules(rule, value, paid, success, payout):
    assert success_for(rule, value) is success
    assert payout_for(rule, value, already_paid=paid) == pytest.approx(payout)
