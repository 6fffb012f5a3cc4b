"""The Stack Exchange beer dump as a community bundle (bench/stackexchange_bundle.py).

The figures asserted here are those of the data's SOURCE.md, recomputed from the raw XML
with plain ElementTree code independent of the adapter.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import random
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from graph._bundle_schema import BUNDLE_FILES, FILES_BY_NAME
from graph._payout import PayRule, payout_for, success_for

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT.parent / "shared" / "data" / "stackexchange-beer"

pytestmark = pytest.mark.skipif(
    not (DATA / "Posts.xml").is_file(), reason=f"Stack Exchange dump absent from {DATA}"
)

# Dump-time snapshots the adapter must never depend on.
DUMP_TIME = {
    "Posts": ("Score", "ViewCount", "AnswerCount", "CommentCount", "FavoriteCount",
              "LastActivityDate", "LastEditDate", "ClosedDate", "LastEditorUserId",
              "CommunityOwnedDate"),
    "Users": ("Reputation", "Views", "UpVotes", "DownVotes", "LastAccessDate", "Age",
              "AboutMe", "Location", "WebsiteUrl", "DisplayName"),
    "Comments": ("Score",),
}


def _load_adapter():
    name = "stackexchange_bundle"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROJECT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


se = _load_adapter()


def _rows(name: str, source: Path = DATA) -> list[dict[str, str]]:
    return [r.attrib for r in ET.parse(source / f"{name}.xml").getroot()]


def _read(out: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(out / f"{name}.csv", infer_schema=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("se_bundle")
    t0 = time.perf_counter()
    frames = se.build_bundle(out, DATA, "csv")
    return out, frames, time.perf_counter() - t0


@pytest.fixture(scope="module")
def raw():
    posts = _rows("Posts")
    return {
        "questions": {p["Id"]: p for p in posts if p["PostTypeId"] == "1"},
        "answers": {p["Id"]: p for p in posts if p["PostTypeId"] == "2"},
        "owner": {p["Id"]: p.get("OwnerUserId") for p in posts if p["PostTypeId"] in "12"},
        "comments": _rows("Comments"),
        "history": _rows("PostHistory"),
        "users": {u["Id"] for u in _rows("Users")},
    }


def test_row_counts_match_source_md(built, raw):
    out, _, _ = built
    missions, assignments, outcomes = (_read(out, n) for n in
                                       ("missions", "assignments", "outcomes"))
    answers_with_owner = [a for a in raw["answers"].values()
                          if a.get("OwnerUserId") not in (None, "-1")]
    assert missions.height == 591
    assert len(raw["answers"]) == 1398
    assert assignments.height == outcomes.height == len(answers_with_owner) == 1393
    assert assignments["person_id"].n_unique() == 496  # distinct answerers
    accepted = [q for q in raw["questions"].values() if q.get("AcceptedAnswerId")]
    assert len(accepted) == 359
    # 358 of the 359 accepted answers have an owner: the 359th has no candidate.
    assert outcomes.filter(pl.col("success") == "true").height == 358
    assert outcomes.filter(pl.col("value") == "1.0").height == 358
    assert set(outcomes["status"]) == {"verified"}
    # Each success is exactly the question's AcceptedAnswerId.
    won = set(outcomes.filter(pl.col("success") == "true")["outcome_id"].str.slice(1))
    assert won == {q["AcceptedAnswerId"] for q in accepted
                   if raw["answers"][q["AcceptedAnswerId"]].get("OwnerUserId")}
    assert {f.name for f in BUNDLE_FILES if f.required} <= {p.stem for p in out.iterdir()}


def test_build_takes_a_few_seconds(built):
    _, _, elapsed = built
    assert elapsed < 5.0, f"building the bundle took {elapsed:.1f} s"


def test_split_and_cold_start_figures(built):
    _, frames, _ = built
    s = se.summarize(frames)
    assert f"{s['split_date']:%Y-%m-%d}" == "2016-02-19"
    assert s["test_questions_accepted"] == 60
    assert s["accepted_answerer_answered_before_split"] == 34
    assert s["cold_start"] == 26


def test_ties_are_dated_by_the_first_interaction(built, raw):
    out, frames, _ = built
    ties = _read(out, "ties")
    owner, users = raw["owner"], raw["users"]
    events = []  # (user, user, date to the second)
    for a in raw["answers"].values():
        events.append((a.get("OwnerUserId"), owner.get(a["ParentId"]), a["CreationDate"]))
    for c in raw["comments"]:
        events.append((c.get("UserId"), owner.get(c["PostId"]), c["CreationDate"]))
    for h in raw["history"]:
        if h["PostHistoryTypeId"] in {"4", "5", "6", "7", "8", "9"}:
            events.append((h.get("UserId"), owner.get(h["PostId"]), h["CreationDate"]))
    split = se.split_date(frames["missions"]["created_at"]).strftime("%Y-%m-%dT%H:%M:%S")
    first: dict[tuple[str, str], str] = {}
    before_split: collections.Counter = collections.Counter()
    for u, v, at in events:
        if u in (None, "-1") or v in (None, "-1") or u == v or u not in users or v not in users:
            continue
        pair = tuple(sorted(("U" + u, "U" + v)))
        at = at[:19]
        first[pair] = min(first.get(pair, at), at)
        before_split[pair] += at < split

    got = {(r["person_a"], r["person_b"]): r for r in ties.iter_rows(named=True)}
    assert set(got) == set(first)
    assert len(got) == ties.height  # one tie per pair
    for pair, r in got.items():
        assert r["created_at"] == first[pair] + "Z", pair
        n = max(1, before_split[pair])
        assert math.isclose(float(r["weight"]), 1 - math.exp(-n / 3), rel_tol=1e-12), pair
    assert (ties["person_a"] < ties["person_b"]).all()
    assert set(ties["kind"]) == {"peer"}
    weights = ties["weight"].cast(pl.Float64)
    assert ((weights > 0) & (weights <= 1)).all()
    # Answer and comment interactions alone give SOURCE.md's 2,078 undirected pairs.
    assert ties.height > 2078


def test_bundle_invariants(built):
    out, _, _ = built
    f = {spec.name: _read(out, spec.name) for spec in BUNDLE_FILES
         if (out / f"{spec.name}.csv").exists()}
    for name, frame in f.items():
        spec = FILES_BY_NAME[name]
        assert frame.columns == [c for c in spec.column_names if c in frame.columns], name
        assert frame.select(spec.key).is_duplicated().sum() == 0, name
        for col in spec.columns:
            if col.name in frame.columns and not col.nullable:
                assert frame[col.name].null_count() == 0, (name, col.name)
            if col.ref and col.name in frame.columns:
                ref_file, ref_col = col.ref.split(".")
                values = set(frame[col.name].drop_nulls())
                assert values <= set(f[ref_file][ref_col]), (name, col.name)
    for name in ("groups", "group_members", "vetting", "shortlists", "shortlist_candidates",
                 "area_links"):
        assert f[name].height == 0, name
    assert "truth" not in f

    declared = set(f["vocabulary"].filter(pl.col("kind") == "need_type")["value"])
    assert set(f["missions"]["need_type"]) <= declared
    assert len(declared) == 31 and "other" in declared

    persons = f["persons"]
    assert persons["skills"].null_count() == persons["lived_experience"].null_count()
    assert persons["lived_experience"].null_count() == persons.height
    assert set(persons["consent_matching"]) == {"true"}
    assert set(persons["consent_lived_experience"]) == {"false"}

    a = f["assignments"]
    assert a["shortlist_id"].null_count() == a["propensity"].null_count() == a.height
    m = f["missions"].select("mission_id", "created_at", "ends_at")
    joined = a.join(m, on="mission_id").join(
        persons.select("person_id", "joined_at"), on="person_id")
    assert (joined["assigned_at"] >= joined["created_at"]).all()
    # a person exists strictly before their first answer or tie (a snapshot at that time,
    # which ignores rows at or after it, holds them)
    assert (joined["joined_at"] < joined["assigned_at"]).all()
    for side in ("person_a", "person_b"):
        t = f["ties"].join(persons.select("person_id", "joined_at"),
                           left_on=side, right_on="person_id")
        assert (t["joined_at"] < t["created_at"]).all(), side

    # Payout and success recomputed with the pay rule, in the store's order.
    rules = {r["mission_id"]: PayRule(r["pay_rule"], r["direction"], float(r["baseline"]),
                                      float(r["target"]), None, float(r["fee"]),
                                      float(r["contract_cap"]))
             for r in f["missions"].iter_rows(named=True)}
    o = f["outcomes"].join(a.select("assignment_id", "mission_id", "assigned_at"),
                           on="assignment_id").sort("mission_id", "measured_at", "outcome_id")
    paid: dict[str, float] = collections.defaultdict(float)
    for r in o.iter_rows(named=True):
        rule, value = rules[r["mission_id"]], float(r["value"])
        assert r["success"] == ("true" if success_for(rule, value) else "false")
        expected = payout_for(rule, value, paid[r["mission_id"]])
        assert float(r["payout"]) == expected, r["outcome_id"]
        paid[r["mission_id"]] += expected
        assert r["measured_at"] >= r["assigned_at"]
    assert max(paid.values()) == 1.0

    d = f["missions"]["description"].drop_nulls()
    assert (d.str.len_chars() <= se.DESCRIPTION_CHARS).all()
    assert not d.str.contains(r"<[a-zA-Z/][^>]*>").any()


def _scramble(src: Path, dst: Path) -> None:
    """Copy the dump with every dump-time attribute replaced by noise or removed."""
    rng = random.Random(0)
    for xml in src.glob("*.xml"):
        name = xml.stem
        if name not in DUMP_TIME:
            (dst / xml.name).symlink_to(xml)
            continue
        tree = ET.parse(xml)
        for row in tree.getroot():
            for attr in DUMP_TIME[name]:
                if rng.random() < 0.3:
                    row.attrib.pop(attr, None)
                elif attr.endswith("Date"):
                    day = datetime(2014, 1, 1) + timedelta(days=rng.randrange(2000))
                    row.set(attr, day.strftime("%Y-%m-%dT%H:%M:%S.000"))
                else:
                    row.set(attr, str(rng.randrange(-50, 10_000)))
        tree.write(dst / xml.name, encoding="utf-8", xml_declaration=True)


def test_no_dump_time_attribute_is_used(built, tmp_path):
    out, _, _ = built
    forbidden = {a for attrs in DUMP_TIME.values() for a in attrs}
    assert not forbidden & {a for attrs in se.READ_ATTRIBUTES.values() for a in attrs}
    noisy = tmp_path / "dump"
    noisy.mkdir()
    _scramble(DATA, noisy)
    again = tmp_path / "bundle"
    se.build_bundle(again, noisy, "csv")
    for path in sorted(out.glob("*.csv")):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_fit_until_keeps_the_test_period_out(built):
    _, frames, _ = built
    split = se.split_date(frames["missions"]["created_at"])
    late = frames["ties"].filter(pl.col("created_at") >= split)
    assert late.height > 0
    assert late["weight"].n_unique() == 1  # one known interaction each
    everything = se.build_frames(DATA, fit_until=None)
    assert everything["ties"]["weight"].max() > frames["ties"]["weight"].max()
    # Same ties and dates either way: only the weights and the vocabulary may differ.
    assert everything["ties"].select("person_a", "person_b", "created_at").equals(
        frames["ties"].select("person_a", "person_b", "created_at"))


def test_cli_prints_the_figures(tmp_path, capsys):
    assert se.main([str(tmp_path / "b"), "--source", str(DATA), "--format", "parquet"]) == 0
    text = capsys.readouterr().out
    assert "missions                   591" in text
    assert "split (80% of question dates): 2016-02-19" in text
    assert "accepted answerer answered before the split: 34, cold start: 26" in text
    assert pl.read_parquet(tmp_path / "b" / "outcomes.parquet")["success"].sum() == 358


def test_bundle_imports_and_round_trips(built, store, tmp_path):
    from graph import export_bundle, import_bundle

    out, _, _ = built
    report = import_bundle(store, out, show_progress=False)
    counts = store.counts()
    assert counts["missions"] == 591
    assert counts["assignments"] == counts["outcomes"] == counts["payout_ledger"] == 1393
    assert counts["ties"] == 2306 and counts["persons"] == 853
    assert report.changed
    again = import_bundle(store, out, show_progress=False)
    assert not again.changed
    export_bundle(store, tmp_path / "export", "csv")
    for path in sorted(out.glob("*.csv")):
        assert (tmp_path / "export" / path.name).read_bytes() == path.read_bytes(), path.name
