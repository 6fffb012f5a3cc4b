"""Import and export of the community bundle: validation, refusals, merge, round trips."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from graph import BundleError, LedgerEntry, Tie, open_store, sqlite_url, write_bundle
from graph._bundle import (
    export_bundle,
    export_frames,
    import_bundle,
    read_bundle,
    validate_bundle,
)

FIXTURES = Path(__file__).with_name("bundles")


def t(day: int, hour: int = 9, month: int = 1, year: int = 2025) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def tiny_frames() -> dict[str, pl.DataFrame]:
    """A tiny, made-up community that uses every file and every pay rule."""
    f = {}
    f["vocabulary"] = pl.DataFrame({
        "kind": ["skill", "need_type"],
        "value": ["gardening", "green_spaces"],
        "description": ["Gardens and green spaces", "Look after shared gardens"],
        "parent": [None, "social"],
    })
    f["areas"] = pl.DataFrame({
        "area_id": ["A1", "A2", "A3"], "name": ["Nord", "Centre", "Sud"],
        "lat": [48.9, 48.85, 48.8], "lon": [2.35, 2.34, 2.33],
    })
    # The second link is given in the other orientation on purpose.
    f["area_links"] = pl.DataFrame({"area_a": ["A1", "A3"], "area_b": ["A2", "A2"]})
    f["persons"] = pl.DataFrame({
        "person_id": [f"P{i}" for i in range(1, 7)],
        "area_id": ["A1", "A1", "A2", "A2", "A3", "A3"],
        "joined_at": [t(1), t(2), t(3), t(4), t(5), t(6)],
        "availability_min_per_week": [300, 120, 0, 600, 240, 60],
        "max_concurrent": [2, 1, 1, 3, 1, 1],
        "skills": ["teaching;mediation", None, "gardening", "outreach", "coaching;digital", None],
        "lived_experience": ["school_dropout", None, None, "drug_use;homelessness", None, None],
        "consent_matching": [True, True, True, True, False, True],
        "consent_lived_experience": [True, False, False, True, True, False],
    })
    f["vetting"] = pl.DataFrame({
        "person_id": ["P1", "P4"], "regime": ["minors", "vulnerable_adults"],
        "status": ["valid", "pending"], "valid_from": [t(1), t(4)],
        "expires_at": [t(1, year=2028), None], "reference": ["CHK-1", None],
    })
    f["ties"] = pl.DataFrame({
        "person_a": ["P1", "P4"], "person_b": ["P2", "P3"],  # P4-P3: reversed on purpose
        "kind": ["peer", "family"], "weight": [0.8, 1.0], "created_at": [t(10), t(11)],
    })
    f["groups"] = pl.DataFrame({
        "group_id": ["G1", "G2"], "kind": ["peer", "neighbours"], "created_at": [t(12), t(12)],
    })
    f["group_members"] = pl.DataFrame({
        "group_id": ["G1", "G1", "G2", "G2", "G2"],
        "person_id": ["P1", "P2", "P3", "P4", "P5"],
        "joined_at": [t(12), t(13), t(12), t(12), t(14)],
    })
    f["clients"] = pl.DataFrame({
        "client_id": ["C1", "C2"], "kind": ["school", "city"],
        "name": ["Collège Jean Moulin", "Ville de Nulle-Part"],
    })
    f["missions"] = pl.DataFrame({
        "mission_id": ["M1", "M2", "M3"], "client_id": ["C2", "C1", "C2"],
        "need_type": ["youth_internships", "school_absenteeism", "green_spaces"],
        "area_id": ["A1", "A2", "A3"],
        "created_at": [t(1, month=2), t(2, month=2), t(3, month=2)],
        "starts_at": [t(10, month=2), t(10, month=2), t(10, month=2)],
        "ends_at": [t(10, month=5), t(10, month=6), t(10, month=6)],
        "status": ["closed", "measuring", "open"],
        "title": ["Internships, Nord", "Absences in 4e B", "Shared garden"],
        "description": ["Find internships\nfor 16-18 year olds", None,
                        'Weekly, with "neighbours"'],
        "metric": ["internships signed", "absence rate", "plots in use"],
        "direction": ["increase", "decrease", "increase"],
        "baseline": [0.0, 0.2, 2.0], "target": [5.0, 0.1, 10.0],
        "pay_rule": ["per_unit", "threshold", "linear"],
        "unit_price": [50.0, None, None], "fee": [None, 900.0, 1000.0],
        "contract_cap": [200.0, None, None],
        "team_min": [1, 1, 2], "team_max": [2, 1, 4],
        "minutes_per_day": [120, 60, 90], "days_per_week": [2, 5, 1],
        "vetting_regime": [None, "minors", None], "radius_km": [5.0, None, 2.5],
    })
    f["shortlists"] = pl.DataFrame({
        "shortlist_id": ["S1", "S2"], "mission_id": ["M1", "M2"],
        "served_at": [t(5, month=2), t(6, month=2)],
        "model_version": ["prior-1", "prior-1"], "policy": ["explore-0.2", "explore-0.1"],
        "requested_by": ["engineer:ana", "platform"],
    })
    f["shortlist_candidates"] = pl.DataFrame({
        "shortlist_id": ["S1", "S1", "S1", "S2", "S2"], "rank": [1, 2, 3, 1, 2],
        "person_id": ["P1", None, "P3", "P3", "P6"], "group_id": [None, "G1", None, None, None],
        "score": [0.9, 0.7, 0.4, 0.8, 0.5], "propensity": [0.95, 0.6, 0.25, 0.9, None],
    })
    f["assignments"] = pl.DataFrame({
        "assignment_id": ["X1", "X2", "X3", "X4"], "mission_id": ["M1", "M1", "M2", "M3"],
        "person_id": ["P1", None, "P3", "P5"], "group_id": [None, "G1", None, None],
        "shortlist_id": ["S1", "S1", "S2", None],
        "assigned_at": [t(6, month=2), t(6, month=2), t(7, month=2), t(8, month=2)],
        "status": ["completed", "completed", "active", "accepted"],
        "propensity": [0.95, 0.6, 0.9, None],
    })
    # M1 pays 50 per internship up to 200: O1 gets 150, O2 only the 50 left.
    f["outcomes"] = pl.DataFrame({
        "outcome_id": ["O1", "O2", "O3", "O4"], "assignment_id": ["X1", "X2", "X3", "X4"],
        "measured_at": [t(1, month=5), t(2, month=5), t(1, month=6), t(2, month=6)],
        "value": [3.0, 2.0, 0.12, 7.0], "success": [True, True, False, True],
        "status": ["verified", "verified", "claimed", "claimed"],
        "payout": [150.0, 50.0, None, None],
    })
    f["truth"] = pl.DataFrame({
        "mission_id": ["M1", "M1", "M2", "M3"], "person_id": ["P1", None, "P3", "P5"],
        "group_id": [None, "G1", None, None], "p_success": [0.7, 0.55, 0.2, 0.6],
    })
    return f


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    out = tmp_path / "tiny"
    write_bundle(tiny_frames(), out, "csv")
    return out


def snapshot(store) -> tuple:
    """Everything a refused import must leave alone: version, row counts, every row."""
    return store.version(), store.counts(), export_frames(store)


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert a[2][name].equals(b[2][name]), name


def edit(d: Path, file: str, fn) -> None:
    """Rewrite ``file``.csv of bundle ``d`` as strings, exactly as a person would by hand."""
    path = d / f"{file}.csv"
    fn(pl.read_csv(path, infer_schema=False)).write_csv(path, null_value="")


def set_cell(file: str, where: dict[str, str], col: str, value: str | None):
    def fn(df: pl.DataFrame) -> pl.DataFrame:
        hit = pl.all_horizontal(pl.col(k) == v for k, v in where.items())
        return df.with_columns(
            pl.when(hit).then(pl.lit(value, pl.String)).otherwise(pl.col(col)).alias(col)
        )
    return lambda d: edit(d, file, fn)


def add_rows(file: str, *rows: dict[str, str | None]):
    def fn(df: pl.DataFrame) -> pl.DataFrame:
        new = pl.DataFrame([{c: r.get(c) for c in df.columns} for r in rows],
                           schema={c: pl.String for c in df.columns})
        return pl.concat([df, new])
    return lambda d: edit(d, file, fn)


def both(*mutations):
    def run(d: Path) -> None:
        for m in mutations:
            m(d)
    return run


def problems_of(store, bundle: Path) -> list[str]:
    with pytest.raises(BundleError) as info:
        import_bundle(store, bundle, show_progress=False)
    return [str(p) for p in info.value.problems]


PERSON = dict(area_id="A1", joined_at="2025-03-01T00:00:00Z", availability_min_per_week="60",
              max_concurrent="1", consent_matching="true", consent_lived_experience="false")
OUTCOME = dict(measured_at="2025-06-20T00:00:00Z", status="claimed")
ASSIGNMENT = dict(mission_id="M3", assigned_at="2025-02-09T00:00:00Z", status="offered")
# missions.csv: M1's description holds a line break, so M2 starts on line 4 and M3 on line 5.

# Every refusal: (id, how the tiny bundle is broken, problems that must be reported). They
# run against an empty store: whatever the bundle names must come from the bundle itself.
REFUSALS = [
    ("missing_file", lambda d: (d / "persons.csv").unlink(),
     ["persons.csv:0: missing required file persons.csv"]),
    ("missing_column", lambda d: edit(d, "areas", lambda df: df.drop("name")),
     ["areas.csv:1: missing column 'name'"]),
    ("unknown_column",
     lambda d: edit(d, "areas", lambda df: df.with_columns(pl.lit("red").alias("colour"))),
     ["areas.csv:1: unknown column 'colour'"]),
    ("unknown_file", lambda d: (d / "people.csv").write_text("person_id\nP1\n"),
     ["people.csv:0: unknown file: not part of the bundle format"]),
    ("wrong_int", set_cell("persons", {"person_id": "P2"}, "availability_min_per_week", "lots"),
     ["persons.csv:3: availability_min_per_week: 'lots' is not an integer (person_id=P2)"]),
    ("wrong_int_decimal", set_cell("missions", {"mission_id": "M2"}, "team_max", "1.5"),
     ["missions.csv:4: team_max: '1.5' is not an integer (mission_id=M2)"]),
    ("wrong_float", set_cell("areas", {"area_id": "A1"}, "lat", "north"),
     ["areas.csv:2: lat: 'north' is not a finite number (area_id=A1)"]),
    ("wrong_float_nan", set_cell("ties", {"person_a": "P1"}, "weight", "nan"),
     ["ties.csv:2: weight: 'nan' is not a finite number (person_a=P1, person_b=P2, kind=peer)"]),
    ("wrong_bool", set_cell("persons", {"person_id": "P3"}, "consent_matching", "maybe"),
     ["persons.csv:4: consent_matching: 'maybe' is not true or false (person_id=P3)"]),
    ("bad_date", set_cell("persons", {"person_id": "P1"}, "joined_at", "2025-02-30"),
     ["persons.csv:2: joined_at: '2025-02-30' is not an ISO 8601 date or date-time "
      "(person_id=P1)"]),
    ("naive_date", set_cell("groups", {"group_id": "G2"}, "created_at", "2025-01-12T09:00:00"),
     ["groups.csv:3: created_at: '2025-01-12T09:00:00' has no time zone (add Z or an offset "
      "such as +02:00) (group_id=G2)"]),
    ("too_long", add_rows("persons", dict(PERSON, person_id="P" * 65)),
     ["persons.csv:8: person_id: '" + "P" * 40 + "...' is longer than 64 characters"]),
    ("empty_value", set_cell("clients", {"client_id": "C1"}, "name", None),
     ["clients.csv:2: name: empty value (client_id=C1)"]),
    ("empty_key", set_cell("areas", {"area_id": "A3"}, "area_id", None),
     ["areas.csv:4: area_id: empty value (area_id=)"]),
    ("unknown_area", set_cell("persons", {"person_id": "P2"}, "area_id", "A9"),
     ["persons.csv:3: area_id: unknown 'A9': not in areas nor in the store (person_id=P2)"]),
    ("unknown_area_link", add_rows("area_links", {"area_a": "A1", "area_b": "A9"}),
     ["area_links.csv:4: area_b: unknown 'A9': not in areas nor in the store "
      "(area_a=A1, area_b=A9)"]),
    ("unknown_client", set_cell("missions", {"mission_id": "M2"}, "client_id", "C9"),
     ["missions.csv:4: client_id: unknown 'C9': not in clients nor in the store "
      "(mission_id=M2)"]),
    ("unknown_person", add_rows("vetting", {"person_id": "P9", "regime": "minors",
                                            "status": "valid", "valid_from": "2025-01-01"}),
     ["vetting.csv:4: person_id: unknown 'P9': not in persons nor in the store "
      "(person_id=P9, regime=minors, valid_from=2025-01-01T00:00:00Z)"]),
    ("unknown_group",
     set_cell("shortlist_candidates", {"shortlist_id": "S1", "rank": "2"}, "group_id", "G9"),
     ["shortlist_candidates.csv:3: group_id: unknown 'G9': not in groups nor in the store "
      "(shortlist_id=S1, rank=2)"]),
    ("unknown_mission", set_cell("truth", {"person_id": "P5"}, "mission_id", "M9"),
     ["truth.csv:5: mission_id: unknown 'M9': not in missions nor in the store "
      "(mission_id=M9, person_id=P5, group_id=)"]),
    ("unknown_shortlist", set_cell("assignments", {"assignment_id": "X4"}, "shortlist_id", "S9"),
     ["assignments.csv:5: shortlist_id: unknown 'S9': not in shortlists nor in the store "
      "(assignment_id=X4)"]),
    ("unknown_assignment", add_rows("outcomes", dict(OUTCOME, outcome_id="O9",
                                                     assignment_id="X9", value="1",
                                                     success="true")),
     ["outcomes.csv:6: assignment_id: unknown 'X9': not in assignments nor in the store "
      "(outcome_id=O9)"]),
    ("duplicate_id", add_rows("persons", dict(PERSON, person_id="P1")),
     ["persons.csv:8: duplicate key person_id=P1 (first on line 2)"]),
    ("duplicate_tie_reversed",
     add_rows("ties", {"person_a": "P2", "person_b": "P1", "kind": "peer", "weight": "0.5",
                       "created_at": "2025-01-01"}),
     ["ties.csv:4: duplicate key person_a=P1, person_b=P2, kind=peer (first on line 2) "
      "(either orientation: the pair is undirected)"]),
    ("duplicate_area_link_reversed", add_rows("area_links", {"area_a": "A2", "area_b": "A1"}),
     ["area_links.csv:4: duplicate key area_a=A1, area_b=A2 (first on line 2) "
      "(either orientation: the pair is undirected)"]),
    ("duplicate_member", add_rows("group_members", {"group_id": "G1", "person_id": "P2",
                                                    "joined_at": "2025-01-20"}),
     ["group_members.csv:7: duplicate key group_id=G1, person_id=P2 (first on line 3)"]),
    ("unknown_need_type", set_cell("missions", {"mission_id": "M3"}, "need_type", "moon_base"),
     ["missions.csv:5: need_type: 'moon_base' is not in the need_type vocabulary (declare it "
      "in the vocabulary file) (mission_id=M3)"]),
    ("unknown_skill", set_cell("persons", {"person_id": "P1"}, "skills", "teaching;juggling"),
     ["persons.csv:2: skills: unknown tag 'juggling' is not in the skill vocabulary (declare "
      "it in the vocabulary file) (person_id=P1)"]),
    ("unknown_lived_experience", set_cell("persons", {"person_id": "P4"}, "lived_experience",
                                          "drug_use;zzz"),
     ["persons.csv:5: lived_experience: unknown tag 'zzz' is not in the lived_experience "
      "vocabulary (declare it in the vocabulary file)"]),
    ("unknown_tie_kind", set_cell("ties", {"person_a": "P1"}, "kind", "rival"),
     ["ties.csv:2: kind: 'rival' is not in the tie_kind vocabulary (declare it in the "
      "vocabulary file) (person_a=P1, person_b=P2, kind=rival)"]),
    ("unknown_group_kind", set_cell("groups", {"group_id": "G1"}, "kind", "band"),
     ["groups.csv:2: kind: 'band' is not in the group_kind vocabulary (declare it in the "
      "vocabulary file) (group_id=G1)"]),
    ("unknown_client_kind", set_cell("clients", {"client_id": "C2"}, "kind", "guild"),
     ["clients.csv:3: kind: 'guild' is not in the client_kind vocabulary (declare it in the "
      "vocabulary file) (client_id=C2)"]),
    ("closed_vetting_regime", set_cell("vetting", {"person_id": "P1"}, "regime", "pets"),
     ["vetting.csv:2: regime: 'pets' is not one of minors, vulnerable_adults (closed "
      "vocabulary vetting_regime) (person_id=P1, regime=pets, valid_from=2025-01-01T09:00:00Z)"]),
    ("closed_vetting_status", set_cell("vetting", {"person_id": "P4"}, "status", "maybe"),
     ["vetting.csv:3: status: 'maybe' is not one of expired, pending, refused, revoked, valid "
      "(closed vocabulary vetting_status) (person_id=P4, regime=vulnerable_adults, "
      "valid_from=2025-01-04T09:00:00Z)"]),
    ("closed_mission_status", set_cell("missions", {"mission_id": "M1"}, "status", "paused"),
     ["missions.csv:2: status: 'paused' is not one of closed, draft, measuring, open, staffed "
      "(closed vocabulary mission_status) (mission_id=M1)"]),
    ("closed_pay_rule", set_cell("missions", {"mission_id": "M3"}, "pay_rule", "bonus"),
     ["missions.csv:5: pay_rule: 'bonus' is not one of linear, per_unit, threshold (closed "
      "vocabulary pay_rule) (mission_id=M3)"]),
    ("closed_direction", set_cell("missions", {"mission_id": "M3"}, "direction", "up"),
     ["missions.csv:5: direction: 'up' is not one of decrease, increase (closed vocabulary "
      "direction) (mission_id=M3)"]),
    ("closed_assignment_status",
     set_cell("assignments", {"assignment_id": "X4"}, "status", "ghosted"),
     ["assignments.csv:5: status: 'ghosted' is not one of accepted, active, completed, "
      "declined, offered, withdrawn (closed vocabulary assignment_status) (assignment_id=X4)"]),
    ("closed_outcome_status", set_cell("outcomes", {"outcome_id": "O3"}, "status", "lost"),
     ["outcomes.csv:4: status: 'lost' is not one of claimed, disputed, rejected, verified "
      "(closed vocabulary outcome_status) (outcome_id=O3)"]),
    ("closed_vocabulary_extended",
     both(add_rows("vocabulary", {"kind": "mission_status", "value": "paused",
                                  "description": "On hold"}),
          set_cell("missions", {"mission_id": "M1"}, "status", "paused")),
     ["vocabulary.csv:4: kind: 'mission_status' is a closed vocabulary and cannot be extended "
      "(value 'paused')",
      "missions.csv:2: status: 'paused' is not one of closed, draft, measuring, open, staffed "
      "(closed vocabulary mission_status) (mission_id=M1)"]),
    ("vocabulary_builtin", add_rows("vocabulary", {"kind": "skill", "value": "teaching",
                                                   "description": "Teaching again"}),
     ["vocabulary.csv:4: value: 'teaching' is already built into skill"]),
    ("negative_availability",
     set_cell("persons", {"person_id": "P2"}, "availability_min_per_week", "-30"),
     ["persons.csv:3: availability_min_per_week: -30 is negative (person_id=P2)"]),
    ("max_concurrent_zero", set_cell("persons", {"person_id": "P6"}, "max_concurrent", "0"),
     ["persons.csv:7: max_concurrent: 0 is below 1 (person_id=P6)"]),
    ("group_of_one",
     both(add_rows("groups", {"group_id": "G3", "kind": "peer", "created_at": "2025-01-12"}),
          add_rows("group_members", {"group_id": "G3", "person_id": "P6",
                                     "joined_at": "2025-01-12"})),
     ["groups.csv:4: group_id=G3 has 1 member(s); a peer group has 2 to 6 persons"]),
    ("group_of_seven",
     both(add_rows("persons", dict(PERSON, person_id="P7")),
          add_rows("groups", {"group_id": "G3", "kind": "mixed", "created_at": "2025-01-12"}),
          add_rows("group_members", *({"group_id": "G3", "person_id": f"P{i}",
                                       "joined_at": "2025-03-02"} for i in range(1, 8)))),
     ["groups.csv:4: group_id=G3 has 7 member(s); a peer group has 2 to 6 persons"]),
    ("tie_to_oneself", add_rows("ties", {"person_a": "P5", "person_b": "P5", "kind": "peer",
                                         "weight": "0.5", "created_at": "2025-01-01"}),
     ["ties.csv:4: a tie to oneself (person_a=P5, person_b=P5, kind=peer)"]),
    ("tie_weight_zero", set_cell("ties", {"person_a": "P1"}, "weight", "0"),
     ["ties.csv:2: weight: 0.0 is outside (0, 1] (person_a=P1, person_b=P2, kind=peer)"]),
    ("tie_weight_above_one", set_cell("ties", {"person_a": "P4"}, "weight", "1.5"),
     ["ties.csv:3: weight: 1.5 is outside (0, 1] (person_a=P3, person_b=P4, kind=family)"]),
    ("area_linked_to_itself", add_rows("area_links", {"area_a": "A3", "area_b": "A3"}),
     ["area_links.csv:4: an area cannot be linked to itself (area_a=A3, area_b=A3)"]),
    ("success_differs", set_cell("outcomes", {"outcome_id": "O4"}, "success", "false"),
     ["outcomes.csv:5: success: false but the pay rule linear says true of value 7.0 "
      "(outcome_id=O4, mission M3)"]),
    ("payout_differs", set_cell("outcomes", {"outcome_id": "O1"}, "payout", "160"),
     ["outcomes.csv:2: payout: 160.0 differs from the pay rule's 150.0 "
      "(outcome_id=O1, mission M1)"]),
    ("payout_ignores_cap", set_cell("outcomes", {"outcome_id": "O2"}, "payout", "100"),
     ["outcomes.csv:3: payout: 100.0 differs from the pay rule's 50.0 "
      "(outcome_id=O2, mission M1)"]),
    ("payout_missing", set_cell("outcomes", {"outcome_id": "O2"}, "payout", None),
     ["outcomes.csv:3: payout: empty on a verified outcome; the pay rule gives 50.0 "
      "(outcome_id=O2, mission M1)"]),
    ("payout_not_verified", set_cell("outcomes", {"outcome_id": "O3"}, "payout", "900"),
     ["outcomes.csv:4: payout: 900.0 given on a claimed outcome; only verified outcomes are "
      "paid (outcome_id=O3, mission M2)"]),
    ("propensity_above_one", add_rows("assignments", dict(ASSIGNMENT, assignment_id="X5",
                                                          person_id="P6", propensity="1.5")),
     ["assignments.csv:6: propensity: 1.5 is outside (0, 1] (assignment_id=X5)"]),
    ("propensity_zero", set_cell("shortlist_candidates", {"rank": "3"}, "propensity", "0"),
     ["shortlist_candidates.csv:4: propensity: 0.0 is outside (0, 1] (shortlist_id=S1, rank=3)"]),
    ("lived_experience_without_consent",
     set_cell("persons", {"person_id": "P2"}, "lived_experience", "debt"),
     ["persons.csv:3: lived_experience: given without consent_lived_experience; such tags must "
      "not be stored at all (remove them) (person_id=P2)"]),
    ("person_and_group", add_rows("assignments", dict(ASSIGNMENT, assignment_id="X5",
                                                      person_id="P6", group_id="G2")),
     ["assignments.csv:6: person_id and group_id: both given; give exactly one "
      "(assignment_id=X5)"]),
    ("neither_person_nor_group", add_rows("truth", {"mission_id": "M2", "p_success": "0.5"}),
     ["truth.csv:6: person_id and group_id: both empty; give exactly one "
      "(mission_id=M2, person_id=, group_id=)"]),
    ("team_min_above_max", set_cell("missions", {"mission_id": "M3"}, "team_min", "5"),
     ["missions.csv:5: team_min: 5 is above team_max 4 (mission_id=M3)"]),
    ("team_min_zero", set_cell("missions", {"mission_id": "M2"}, "team_min", "0"),
     ["missions.csv:4: team_min: 0 is below 1 (mission_id=M2)"]),
    ("window_reversed", set_cell("missions", {"mission_id": "M3"}, "ends_at", "2025-02-01"),
     ["missions.csv:5: starts_at: 2025-02-10T09:00:00Z is after ends_at 2025-02-01T00:00:00Z "
      "(mission_id=M3)"]),
    ("per_unit_without_price", set_cell("missions", {"mission_id": "M1"}, "unit_price", None),
     ["missions.csv:2: unit_price: empty, but pay_rule per_unit needs it (mission_id=M1)"]),
    ("vetting_expires_before_valid",
     set_cell("vetting", {"person_id": "P1"}, "expires_at", "2024-12-31"),
     ["vetting.csv:2: expires_at: 2024-12-31T00:00:00Z is before valid_from (person_id=P1, "
      "regime=minors, valid_from=2025-01-01T09:00:00Z)"]),
    ("member_joined_before_group",
     set_cell("group_members", {"person_id": "P5"}, "joined_at", "2025-01-02"),
     ["group_members.csv:6: joined_at: 2025-01-02T00:00:00Z is before group G2 was created "
      "(2025-01-12T09:00:00Z) (person_id=P5)"]),
    ("p_success_above_one", set_cell("truth", {"person_id": "P3"}, "p_success", "1.2"),
     ["truth.csv:4: p_success: 1.2 is outside [0, 1] (mission_id=M2, person_id=P3, group_id=)"]),
    ("shortlist_of_other_mission",
     set_cell("assignments", {"assignment_id": "X3"}, "shortlist_id", "S1"),
     ["assignments.csv:4: shortlist_id: S1 was served for mission M1, not M2 "
      "(assignment_id=X3)"]),
]


# The refusal classes, each run as one test per backend (a fresh store costs more than a
# check): every case gets a fresh copy of the bundle and must leave the store as it was.
REFUSAL_CLASSES = {
    "files_and_columns": ["missing_file", "missing_column", "unknown_column", "unknown_file"],
    "types_and_dates": ["wrong_int", "wrong_int_decimal", "wrong_float", "wrong_float_nan",
                        "wrong_bool", "bad_date", "naive_date"],
    "empty_values_and_lengths": ["empty_value", "empty_key", "too_long"],
    "references": ["unknown_area", "unknown_area_link", "unknown_client", "unknown_person",
                   "unknown_group", "unknown_mission", "unknown_shortlist", "unknown_assignment",
                   "shortlist_of_other_mission"],
    "duplicates": ["duplicate_id", "duplicate_tie_reversed", "duplicate_area_link_reversed",
                   "duplicate_member"],
    "vocabularies": ["unknown_need_type", "unknown_skill", "unknown_lived_experience",
                     "unknown_tie_kind", "unknown_group_kind", "unknown_client_kind",
                     "closed_vetting_regime", "closed_vetting_status", "closed_mission_status",
                     "closed_pay_rule", "closed_direction", "closed_assignment_status",
                     "closed_outcome_status", "closed_vocabulary_extended",
                     "vocabulary_builtin"],
    "persons_ties_groups": ["negative_availability", "max_concurrent_zero",
                            "lived_experience_without_consent", "group_of_one",
                            "group_of_seven", "member_joined_before_group", "tie_to_oneself",
                            "tie_weight_zero", "tie_weight_above_one", "area_linked_to_itself",
                            "vetting_expires_before_valid"],
    "missions_and_candidates": ["team_min_above_max", "team_min_zero", "window_reversed",
                                "per_unit_without_price", "propensity_above_one",
                                "propensity_zero", "person_and_group",
                                "neither_person_nor_group", "p_success_above_one"],
    "outcomes_and_payouts": ["success_differs", "payout_differs", "payout_ignores_cap",
                             "payout_missing", "payout_not_verified"],
}


def test_every_refusal_case_is_run():
    listed = [c for cases in REFUSAL_CLASSES.values() for c in cases]
    assert sorted(listed) == sorted(c[0] for c in REFUSALS)


def fresh_tiny(where: Path) -> Path:
    shutil.copytree(FIXTURES / "tiny", where)
    return where


def check_refusals(store, tmp_path, subtests, cases) -> None:
    before = snapshot(store)
    for case, mutate, expected in cases:
        with subtests.test(case):
            bundle = fresh_tiny(tmp_path / case)
            mutate(bundle)
            problems = problems_of(store, bundle)
            for text in expected:
                assert text in problems, "\n".join(problems)
            assert (store.version(), store.counts()) == before[:2]
    assert_same(before, snapshot(store))  # every row, after every case of the class


@pytest.mark.parametrize("refusal_class", list(REFUSAL_CLASSES))
def test_refusals(store, tmp_path, subtests, refusal_class):
    by_id = {c[0]: c for c in REFUSALS}
    check_refusals(store, tmp_path, subtests,
                   [by_id[c] for c in REFUSAL_CLASSES[refusal_class]])


def without_outcomes(*ids: str):
    return lambda d: edit(d, "outcomes", lambda df: df.filter(~pl.col("outcome_id").is_in(ids)))


# Refusals that depend on what the store already holds: the tiny bundle is imported first.
STORED_REFUSALS = [
    ("shortlist_changed", set_cell("shortlists", {"shortlist_id": "S1"}, "model_version", "v2"),
     ["shortlists.csv:2: shortlists is the decision log: a stored row cannot change "
      "(model_version differ) (shortlist_id=S1)"]),
    ("shortlist_candidate_changed",
     set_cell("shortlist_candidates", {"shortlist_id": "S2", "rank": "2"}, "score", "0.55"),
     ["shortlist_candidates.csv:6: shortlist_candidates is the decision log: a stored row "
      "cannot change (score differ) (shortlist_id=S2, rank=2)"]),
    ("verified_outcome_changed",
     set_cell("outcomes", {"outcome_id": "O1"}, "measured_at", "2025-04-30"),
     ["outcomes.csv:2: outcome is verified (paid) in the store and cannot change (measured_at "
      "differ) (outcome_id=O1)"]),
    ("assignment_candidate_changed",
     set_cell("assignments", {"assignment_id": "X3"}, "person_id", "P4"),
     ["assignments.csv:4: person_id: cannot change once stored (assignment_id=X3)"]),
    ("mission_client_changed", set_cell("missions", {"mission_id": "M2"}, "client_id", "C2"),
     ["missions.csv:4: client_id: cannot change once stored (mission_id=M2)"]),
    ("pay_terms_frozen", set_cell("missions", {"mission_id": "M1"}, "contract_cap", "500"),
     ["missions.csv:2: contract_cap: the pay terms cannot change once an outcome is verified "
      "(mission_id=M1)"]),
    ("cap_counts_stored_payouts",
     both(without_outcomes("O1", "O2"),
          add_rows("outcomes", dict(OUTCOME, outcome_id="O5", assignment_id="X1", value="1",
                                    success="true", status="verified", payout="50"))),
     ["outcomes.csv:4: payout: 50.0 differs from the pay rule's 0.0 (outcome_id=O5, "
      "mission M1)"]),
    ("backdated_verified_outcome",
     both(without_outcomes("O1", "O2"),
          add_rows("outcomes", dict(OUTCOME, outcome_id="O0", assignment_id="X1", value="1",
                                    success="true", status="verified", payout="50",
                                    measured_at="2025-04-01"))),
     ["outcomes.csv:4: measured_at: this verified outcome comes before outcome O2, verified "
      "and paid 50.0 in the store, and would change its payout under the contract cap "
      "(mission M1)"]),
]


def test_refusals_against_the_store(store, tmp_path, subtests):
    import_bundle(store, FIXTURES / "tiny", show_progress=False)
    check_refusals(store, tmp_path, subtests, STORED_REFUSALS)


def test_every_problem_is_collected(sqlite_store, tiny_dir):
    both(
        set_cell("persons", {"person_id": "P2"}, "max_concurrent", "0"),
        set_cell("areas", {"area_id": "A2"}, "lon", "east"),
        set_cell("outcomes", {"outcome_id": "O3"}, "payout", "1"),
        add_rows("persons", dict(PERSON, person_id="P1")),
    )(tiny_dir)
    problems = problems_of(sqlite_store, tiny_dir)
    assert problems == [
        "areas.csv:3: lon: 'east' is not a finite number (area_id=A2)",
        "outcomes.csv:4: payout: 1.0 given on a claimed outcome; only verified outcomes are "
        "paid (outcome_id=O3, mission M2)",
        "persons.csv:3: max_concurrent: 0 is below 1 (person_id=P2)",
        "persons.csv:8: duplicate key person_id=P1 (first on line 2)",
    ]


def test_a_check_failing_on_many_rows_is_summarised(sqlite_store, tiny_dir, monkeypatch):
    monkeypatch.setattr("graph._bundle.MAX_PROBLEMS_PER_CHECK", 2)
    edit(tiny_dir, "persons", lambda df: df.with_columns(pl.lit("0").alias("max_concurrent")))
    assert problems_of(sqlite_store, tiny_dir) == [
        "persons.csv:2: max_concurrent: 0 is below 1 (person_id=P1)",
        "persons.csv:3: max_concurrent: 0 is below 1 (person_id=P2)",
        "persons.csv:4: ... and 4 more rows with the same problem",
    ]


def test_lived_experience_problems_do_not_name_tags_of_a_person(sqlite_store, tiny_dir):
    set_cell("persons", {"person_id": "P2"}, "lived_experience", "debt;incarceration")(tiny_dir)
    problems = problems_of(sqlite_store, tiny_dir)
    assert len(problems) == 1
    assert "debt" not in problems[0] and "incarceration" not in problems[0]


# --------------------------------------------------------------------------- merge


def test_import_counts_and_normalises(store, tiny_dir):
    report = import_bundle(store, tiny_dir, show_progress=False)
    assert report.files["persons"].inserted == 6
    assert report.totals().inserted == sum(df.height for df in tiny_frames().values())
    assert report.ledger_entries == 2
    assert report.version == store.version() == 1
    frames = export_frames(store)
    assert frames["ties"].select("person_a", "person_b").rows() == [("P1", "P2"), ("P3", "P4")]
    assert frames["area_links"].rows() == [("A1", "A2"), ("A2", "A3")]
    p1 = frames["persons"].row(by_predicate=pl.col("person_id") == "P1", named=True)
    assert p1["skills"] == "mediation;teaching"  # tags are stored sorted
    with store.reader() as s:
        ledger = {e.outcome_id: e.amount for e in s.query(LedgerEntry)}
    assert ledger == {"O1": 150.0, "O2": 50.0}
    assert "48 inserted" in report.summary()


def test_importing_twice_changes_nothing(store, tiny_dir):
    import_bundle(store, tiny_dir, show_progress=False)
    before = snapshot(store)
    report = import_bundle(store, tiny_dir, show_progress=False)
    assert not report.changed
    assert report.totals().inserted == report.totals().updated == 0
    assert report.version == 1
    assert "nothing changed" in report.summary()
    assert_same(before, snapshot(store))


def test_changed_rows_are_updated(store, tiny_dir):
    import_bundle(store, tiny_dir, show_progress=False)
    both(
        set_cell("persons", {"person_id": "P2"}, "availability_min_per_week", "180"),
        add_rows("persons", dict(PERSON, person_id="P7", skills="gardening")),
        set_cell("ties", {"person_a": "P4"}, "weight", "0.9"),
        set_cell("assignments", {"assignment_id": "X3"}, "status", "completed"),
        # O3 (threshold, decrease to 0.1, fee 900) is verified now: paid, and in the ledger.
        set_cell("outcomes", {"outcome_id": "O3"}, "value", "0.09"),
        set_cell("outcomes", {"outcome_id": "O3"}, "success", "true"),
        set_cell("outcomes", {"outcome_id": "O3"}, "status", "verified"),
        set_cell("outcomes", {"outcome_id": "O3"}, "payout", "900"),
        set_cell("truth", {"person_id": "P3"}, "p_success", "0.3"),
        set_cell("vocabulary", {"value": "gardening"}, "description", "Gardening"),
        set_cell("group_members", {"person_id": "P5"}, "joined_at", "2025-01-15T09:00:00Z"),
    )(tiny_dir)
    report = import_bundle(store, tiny_dir, show_progress=False)
    c = report.files
    assert (c["persons"].inserted, c["persons"].updated, c["persons"].unchanged) == (1, 1, 5)
    assert (c["ties"].updated, c["assignments"].updated, c["outcomes"].updated) == (1, 1, 1)
    assert c["truth"].updated == 1 and c["areas"].unchanged == 3
    assert c["vocabulary"].updated == 1 and c["group_members"].updated == 1
    assert report.ledger_entries == 1
    assert store.version() == 2
    frames = export_frames(store)
    tie = frames["ties"].row(by_predicate=pl.col("person_a") == "P3", named=True)
    assert tie["weight"] == 0.9
    member = frames["group_members"].row(by_predicate=pl.col("person_id") == "P5", named=True)
    assert member["joined_at"] == t(15)
    assert "Gardening" in frames["vocabulary"]["description"].to_list()
    with store.reader() as s:
        entry = s.query(LedgerEntry).filter_by(outcome_id="O3").one()
        assert (entry.mission_id, entry.amount) == ("M2", 900.0)
        assert entry.recorded_at.tzinfo is not None
        assert s.query(Tie).count() == 2


def test_an_incremental_bundle_may_refer_to_the_store(store, tiny_dir, tmp_path):
    import_bundle(store, tiny_dir, show_progress=False)
    more = tmp_path / "more"
    # "gardening" is declared only by the vocabulary stored with the first bundle.
    write_bundle({
        "persons": pl.DataFrame({
            "person_id": ["P7"], "area_id": ["A2"], "joined_at": [t(1, month=3)],
            "availability_min_per_week": [90], "max_concurrent": [1], "skills": ["gardening"],
            "lived_experience": [None], "consent_matching": [True],
            "consent_lived_experience": [False],
        }),
        "ties": pl.DataFrame({"person_a": ["P7"], "person_b": ["P1"], "kind": ["neighbour"],
                              "weight": [0.3], "created_at": [t(2, month=3)]}),
        "group_members": pl.DataFrame({"group_id": ["G1"], "person_id": ["P7"],
                                       "joined_at": [t(3, month=3)]}),
    }, more, "csv")
    report = import_bundle(store, more, show_progress=False)
    assert report.files["persons"].inserted == 1 and report.files["ties"].inserted == 1
    assert report.files["group_members"].inserted == 1
    assert "truth" not in report.files  # absent optional file: not reported, not touched
    assert store.counts()["truth"] == 4


def test_cap_counts_payouts_already_in_the_store(store, tiny_dir):
    import_bundle(store, tiny_dir, show_progress=False)
    both(without_outcomes("O1", "O2"),
         add_rows("outcomes", dict(OUTCOME, outcome_id="O5", assignment_id="X1", value="1",
                                   success="true", status="verified", payout="0")))(tiny_dir)
    report = import_bundle(store, tiny_dir, show_progress=False)
    assert report.files["outcomes"].inserted == 1 and report.ledger_entries == 1


def test_withdrawn_consent_removes_lived_experience(store, tiny_dir):
    import_bundle(store, tiny_dir, show_progress=False)
    both(set_cell("persons", {"person_id": "P4"}, "consent_lived_experience", "false"),
         set_cell("persons", {"person_id": "P4"}, "lived_experience", None))(tiny_dir)
    assert import_bundle(store, tiny_dir, show_progress=False).files["persons"].updated == 1
    p4 = export_frames(store)["persons"].row(by_predicate=pl.col("person_id") == "P4",
                                             named=True)
    assert p4["lived_experience"] is None and p4["consent_lived_experience"] is False


def test_accepted_spellings(sqlite_store, tiny_dir):
    """Offsets, date-only, space separator, bool words, loose tags, CRLF and a BOM."""
    both(
        set_cell("persons", {"person_id": "P1"}, "joined_at", "2025-01-01T10:00:00+01:00"),
        set_cell("persons", {"person_id": "P2"}, "joined_at", "2025-01-02"),
        set_cell("persons", {"person_id": "P3"}, "joined_at", "2025-01-03 09:00:00.7Z"),
        set_cell("persons", {"person_id": "P4"}, "joined_at", "2025-01-04T04:00-05"),
        set_cell("persons", {"person_id": "P1"}, "consent_matching", "TRUE"),
        set_cell("persons", {"person_id": "P2"}, "consent_matching", "yes"),
        set_cell("persons", {"person_id": "P3"}, "consent_matching", " 0 "),
        set_cell("persons", {"person_id": "P5"}, "skills", " digital ; coaching;;digital"),
        set_cell("persons", {"person_id": "P6"}, "availability_min_per_week", " 60 "),
    )(tiny_dir)
    path = tiny_dir / "persons.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    import_bundle(sqlite_store, tiny_dir, show_progress=False)
    persons = {r["person_id"]: r for r in export_frames(sqlite_store)["persons"].to_dicts()}
    assert [persons[p]["joined_at"] for p in ("P1", "P2", "P3", "P4")] == [
        t(1, 9), t(2, 0), t(3, 9), t(4, 9)]
    assert [persons[p]["consent_matching"] for p in ("P1", "P2", "P3")] == [True, True, False]
    assert persons["P5"]["skills"] == "coaching;digital"
    assert persons["P6"]["availability_min_per_week"] == 60


def test_parquet_bundles_are_checked_the_same_way(sqlite_store, tmp_path):
    frames = tiny_frames()
    frames["areas"] = frames["areas"].with_columns(pl.col("lat").cast(pl.String))
    frames["areas"][1, "lat"] = "north"
    out = tmp_path / "pq"
    write_bundle({k: v for k, v in frames.items() if k != "areas"}, out, "parquet")
    frames["areas"].write_parquet(out / "areas.parquet")
    # A naive datetime column (no zone) is refused, as in CSV.
    groups = pl.read_parquet(out / "groups.parquet")
    groups.with_columns(pl.col("created_at").dt.replace_time_zone(None)).write_parquet(
        out / "groups.parquet")
    problems = problems_of(sqlite_store, out)
    assert "areas.parquet:3: lat: 'north' is not a finite number (area_id=A2)" in problems
    assert ("groups.parquet:2: created_at: '2025-01-12 09:00:00.000000' has no time zone "
            "(add Z or an offset such as +02:00) (group_id=G1)") in problems
    assert sqlite_store.counts()["areas"] == 0


def test_a_folder_with_both_formats_is_refused(sqlite_store, tiny_dir):
    write_bundle({"areas": tiny_frames()["areas"]}, tiny_dir / "pq", "parquet")
    (tiny_dir / "pq" / "areas.parquet").rename(tiny_dir / "areas.parquet")
    problems = problems_of(sqlite_store, tiny_dir)
    assert "areas.csv:0: both areas.csv and areas.parquet exist: keep one" in problems


def test_blank_lines_are_skipped_and_lines_still_counted(sqlite_store, tiny_dir):
    path = tiny_dir / "clients.csv"
    header, c1, c2 = path.read_text().splitlines()
    path.write_text(f"{header}\n{c1}\n\n{c2.replace('city', 'guild')}\n")
    problems = problems_of(sqlite_store, tiny_dir)
    assert problems[0].startswith("clients.csv:4: kind: 'guild'")


def test_read_and_validate_without_writing(sqlite_store, tiny_dir):
    frames = read_bundle(tiny_dir)
    assert frames["persons"].schema["joined_at"] == pl.Datetime("us", "UTC")
    assert frames["persons"].schema["consent_matching"] == pl.Boolean
    assert frames["ties"].select("person_a", "person_b").rows() == [("P1", "P2"), ("P3", "P4")]
    assert validate_bundle(tiny_dir, sqlite_store) == []
    set_cell("persons", {"person_id": "P6"}, "max_concurrent", "0")(tiny_dir)
    assert [str(p) for p in validate_bundle(tiny_dir)] == [
        "persons.csv:7: max_concurrent: 0 is below 1 (person_id=P6)"]
    with pytest.raises(BundleError):
        read_bundle(tiny_dir)
    assert sqlite_store.version() == 0 and sqlite_store.counts()["persons"] == 0


def test_a_missing_folder_is_refused(sqlite_store, tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        import_bundle(sqlite_store, tmp_path / "nowhere", show_progress=False)


def test_progress_bars_go_to_stderr(sqlite_store, tiny_dir, capsys):
    import_bundle(sqlite_store, tiny_dir, show_progress=True)
    captured = capsys.readouterr()
    assert "writing" in captured.err and captured.out == ""


# --------------------------------------------------------------------------- round trips


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(store, tmp_path, fmt):
    bundle = tmp_path / "in"
    write_bundle(tiny_frames(), bundle, fmt)
    import_bundle(store, bundle, show_progress=False)
    first = tmp_path / "first"
    paths = export_bundle(store, first, fmt=fmt)
    assert {p.name for p in paths} == {f"{name}.{fmt}" for name in tiny_frames()}
    fresh = open_store(sqlite_url(tmp_path / "fresh.db"))
    try:
        report = import_bundle(fresh, first, show_progress=False)
        assert report.totals().inserted == sum(df.height for df in tiny_frames().values())
        second = tmp_path / "second"
        export_bundle(fresh, second, fmt=fmt)
    finally:
        fresh.dispose()
    same_files(first, second)


def test_export_of_an_empty_store_and_stale_files(sqlite_store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "truth.csv").write_text("stale\n")
    (out / "areas.parquet").write_text("stale\n")
    paths = export_bundle(sqlite_store, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert "truth.csv" not in {p.name for p in paths}
    assert (out / "areas.csv").read_text() == "area_id,name,lat,lon\n"
    with pytest.raises(ValueError):
        export_bundle(sqlite_store, out, fmt="xlsx")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_simulated_round_trip(store, tmp_path, fmt):
    """The simulator and the exporter write the same bytes for the same community."""
    from graph import simulate_bundle

    sim = tmp_path / "sim"
    simulate_bundle(sim, n_persons=300, n_missions=120, seed=3, fmt=fmt)
    report = import_bundle(store, sim, show_progress=False)
    assert report.files["persons"].inserted == 300 and report.files["missions"].inserted == 120
    export_bundle(store, tmp_path / "first", fmt=fmt)
    same_files(sim, tmp_path / "first")
    fresh = open_store(sqlite_url(tmp_path / "fresh.db"))
    try:
        import_bundle(fresh, tmp_path / "first", show_progress=False)
        export_bundle(fresh, tmp_path / "second", fmt=fmt)
    finally:
        fresh.dispose()
    same_files(tmp_path / "first", tmp_path / "second")


# --------------------------------------------------------------------------- fixtures, docs


def test_fixture_bundle_is_the_tiny_community(tmp_path):
    write_bundle(tiny_frames(), tmp_path / "tiny", "csv")
    same_files(FIXTURES / "tiny", tmp_path / "tiny")


def test_docs_match_the_spec():
    from graph._bundle import DOC_BEGIN, DOC_END, reference_markdown
    from graph._bundle_schema import COLUMN_TYPES

    doc = (Path(__file__).parents[2] / "docs" / "bundle.md").read_text(encoding="utf-8")
    for column_type in COLUMN_TYPES:  # the hand-written table of accepted values
        assert f"| `{column_type}` |" in doc, column_type
    generated = doc.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0].strip("\n") + "\n"
    assert generated == reference_markdown(), (
        "docs/bundle.md is out of date: python -c \"import graph._bundle as b; "
        "b.update_docs('docs/bundle.md')\""
    )
