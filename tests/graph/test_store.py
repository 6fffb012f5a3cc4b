from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import graph._store as store_module
from graph import Area, Person, Store, open_store
from graph._models import ChangeJournal
from graph._payout import PayRule, payout_for, success_for
from graph._rights import tombstone_hash
from graph._store import person_key


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


def test_the_journal_names_what_each_version_changed(store):
    with store.session() as s:
        v1 = Store.bump_version(s, persons=["P1", "P2", None, "P1"], groups=["G1"])
    with store.session() as s:
        v2 = Store.bump_version(s, missions=["M9"], groups=[None])
    with store.session() as s:
        v3 = Store.bump_version(s, everything=False)  # an outcome: no hard rule moved
    secret = store.secret()
    assert secret is not None

    changes = store.changes_since(0)
    assert (changes.since, changes.version, changes.everything) == (0, v3, False)
    assert changes.person_keys == {person_key(secret, "P1"), person_key(secret, "P2")}
    assert changes.groups == {"G1"} and changes.missions == {"M9"}
    later = store.changes_since(v1)
    assert later.missions == {"M9"} and not later.person_keys and not later.groups
    soft = store.changes_since(v2)
    assert soft.version == v3 and not soft.named and not soft.everything
    assert store.changes_since(v3) == store_module.StoreChanges(since=v3, version=v3)

    # Persons by a keyed hash only, and not the tombstone's hash of the same id.
    with store.reader() as s:
        keys = set(s.scalars(select(ChangeJournal.key)))
    assert "P1" not in keys and "P2" not in keys
    assert tombstone_hash(secret, "P1") not in keys
    assert store.counts().get("change_journal") is None  # bookkeeping, like store_meta


def test_a_change_the_journal_cannot_name_is_everything(store):
    with store.session() as s:
        v1 = Store.bump_version(s, persons=["P1"])
    with store.session() as s:
        v2 = Store.bump_version(s)  # the call of old: anything may have changed
    assert store.changes_since(0).everything
    assert store.changes_since(v1).everything
    assert not store.changes_since(v2).everything


def test_old_journal_rows_are_pruned_and_older_engines_rebuild(store, monkeypatch):
    with store.session() as s:
        first = Store.bump_version(s, persons=["P1"])
    monkeypatch.setattr(store_module, "PRUNE_EVERY", 1)
    monkeypatch.setattr(store_module, "JOURNAL_RETENTION", timedelta(0))
    with store.session() as s:
        second = Store.bump_version(s, groups=["G1"])
    with store.reader() as s:
        left = s.execute(select(ChangeJournal.version)).scalars().all()
    assert first not in left
    # An engine built before the pruned versions cannot be told what changed: everything.
    assert store.changes_since(first - 1).everything
    monkeypatch.setattr(store_module, "JOURNAL_RETENTION", timedelta(days=1))
    with store.session() as s:
        third = Store.bump_version(s, missions=["M1"])
    changes = store.changes_since(second)
    assert not changes.everything and changes.missions == {"M1"} and changes.version == third


def test_a_write_that_fails_journals_nothing(store):
    with pytest.raises(IntegrityError), store.session() as s:
        Store.bump_version(s, persons=["P1"])
        s.add(Person(person_id="P1", area_id="nowhere",
                     joined_at=datetime(2025, 1, 1, tzinfo=UTC),
                     availability_min_per_week=60, max_concurrent=1,
                     consent_matching=True, consent_lived_experience=False))
    assert store.version() == 0 and store.changes_since(0) == store_module.StoreChanges(0, 0)
    with store.reader() as s:
        assert s.execute(select(ChangeJournal)).first() is None


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
