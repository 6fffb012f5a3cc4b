"""The community bundle: one spec for its files and columns, and its canonical writer.

Every producer of bundles (the exporter, the simulator, the Stack Exchange adapter) writes
through :func:`write_bundle`, so that the same data always gives the same bytes, and every
consumer reads the columns declared here. ``docs/bundle.md`` documents this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

__all__ = [
    "BUNDLE_FILES",
    "BundleFile",
    "Column",
    "DATETIME_FORMAT",
    "FILES_BY_NAME",
    "TAG_SEP",
    "canonical_frame",
    "write_bundle",
]

TAG_SEP = ";"
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
COLUMN_TYPES = ("str", "int", "float", "bool", "datetime", "tags")


@dataclass(frozen=True)
class Column:
    """One column of a bundle file.

    ``nullable``: the value may be empty. ``optional``: the column may be absent from the
    file altogether (it is then read as empty). ``vocab``: the vocabulary kind its values
    (or tags) must belong to. ``ref``: ``"file.column"`` its values must exist in, in the
    bundle or already in the store.
    """

    name: str
    type: str = "str"
    nullable: bool = False
    optional: bool = False
    vocab: str | None = None
    ref: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type}")

    @property
    def polars_dtype(self) -> pl.DataType:
        return {
            "str": pl.String(),
            "int": pl.Int64(),
            "float": pl.Float64(),
            "bool": pl.Boolean(),
            "datetime": pl.Datetime("us", "UTC"),
            "tags": pl.String(),
        }[self.type]


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: its columns, its key and whether it must be present."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    required: bool = True
    doc: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name}")


C = Column
_PERSON_OR_GROUP = (
    C("person_id", nullable=True, ref="persons.person_id", doc="the person (or empty for a group)"),
    C("group_id", nullable=True, ref="groups.group_id", doc="the peer group (or empty)"),
)

BUNDLE_FILES: tuple[BundleFile, ...] = (
    BundleFile(
        "vocabulary",
        (
            C("kind", doc="an open vocabulary kind"),
            C("value", doc="the new value"),
            C("description", doc="plain-language meaning"),
            C("parent", nullable=True, optional=True, doc="for a need_type: its family"),
        ),
        key=("kind", "value"),
        required=False,
        doc="Values a bundle adds to the open vocabularies.",
    ),
    BundleFile(
        "areas",
        (
            C("area_id"),
            C("name"),
            C("lat", "float", doc="centroid latitude, degrees"),
            C("lon", "float", doc="centroid longitude, degrees"),
        ),
        key=("area_id",),
        doc="Neighbourhoods.",
    ),
    BundleFile(
        "area_links",
        (
            C("area_a", ref="areas.area_id"),
            C("area_b", ref="areas.area_id"),
        ),
        key=("area_a", "area_b"),
        doc="Neighbouring areas (undirected; each pair once, area_a < area_b).",
    ),
    BundleFile(
        "persons",
        (
            C("person_id"),
            C("area_id", ref="areas.area_id", doc="where the person lives"),
            C("joined_at", "datetime"),
            C("availability_min_per_week", "int", doc="minutes per week, >= 0"),
            C("max_concurrent", "int", doc="missions at once, >= 1"),
            C("skills", "tags", nullable=True, vocab="skill"),
            C("lived_experience", "tags", nullable=True, vocab="lived_experience",
              doc="special-category data; must be empty without consent_lived_experience"),
            C("consent_matching", "bool", doc="may be proposed for missions at all"),
            C("consent_lived_experience", "bool", doc="may their lived experience be used"),
        ),
        key=("person_id",),
        doc="People who take missions.",
    ),
    BundleFile(
        "vetting",
        (
            C("person_id", ref="persons.person_id"),
            C("regime", vocab="vetting_regime"),
            C("status", vocab="vetting_status"),
            C("valid_from", "datetime"),
            C("expires_at", "datetime", nullable=True),
            C("reference", nullable=True, doc="the reference of the check, never its content"),
        ),
        key=("person_id", "regime", "valid_from"),
        doc="Background checks (vetting): status and validity only.",
    ),
    BundleFile(
        "ties",
        (
            C("person_a", ref="persons.person_id"),
            C("person_b", ref="persons.person_id"),
            C("kind", vocab="tie_kind"),
            C("weight", "float", doc="strength in (0, 1]"),
            C("created_at", "datetime"),
        ),
        key=("person_a", "person_b", "kind"),
        doc="Undirected, dated person-to-person links (person_a < person_b).",
    ),
    BundleFile(
        "groups",
        (
            C("group_id"),
            C("kind", vocab="group_kind"),
            C("created_at", "datetime"),
        ),
        key=("group_id",),
        doc="Peer groups of 2 to 6 persons.",
    ),
    BundleFile(
        "group_members",
        (
            C("group_id", ref="groups.group_id"),
            C("person_id", ref="persons.person_id"),
            C("joined_at", "datetime"),
        ),
        key=("group_id", "person_id"),
        doc="Who belongs to which peer group, since when.",
    ),
    BundleFile(
        "clients",
        (
            C("client_id"),
            C("kind", vocab="client_kind"),
            C("name"),
        ),
        key=("client_id",),
        doc="Who commissions and pays.",
    ),
    BundleFile(
        "missions",
        (
            C("mission_id"),
            C("client_id", ref="clients.client_id"),
            C("need_type", vocab="need_type"),
            C("area_id", ref="areas.area_id"),
            C("created_at", "datetime"),
            C("starts_at", "datetime", doc="start of the measurement window"),
            C("ends_at", "datetime", doc="end of the measurement window"),
            C("status", vocab="mission_status"),
            C("title"),
            C("description", nullable=True),
            C("metric", doc="what is measured, e.g. 'absence rate'"),
            C("direction", vocab="direction"),
            C("baseline", "float", doc="measured before the start"),
            C("target", "float"),
            C("pay_rule", vocab="pay_rule"),
            C("unit_price", "float", nullable=True, doc="per_unit: paid per unit"),
            C("fee", "float", nullable=True, doc="threshold and linear: the fee"),
            C("contract_cap", "float", nullable=True, doc="most that may be paid in total"),
            C("team_min", "int"),
            C("team_max", "int"),
            C("minutes_per_day", "int"),
            C("days_per_week", "int"),
            C("vetting_regime", nullable=True, vocab="vetting_regime",
              doc="empty: no check needed"),
            C("radius_km", "float", nullable=True, doc="empty: no distance limit"),
        ),
        key=("mission_id",),
        doc="Paid micro-missions with a measured outcome.",
    ),
    BundleFile(
        "shortlists",
        (
            C("shortlist_id"),
            C("mission_id", ref="missions.mission_id"),
            C("served_at", "datetime"),
            C("model_version"),
            C("policy"),
            C("requested_by"),
            C("filters", nullable=True, optional=True, doc="JSON of the filters applied"),
        ),
        key=("shortlist_id",),
        doc="Every list the engine served: the decision log.",
    ),
    BundleFile(
        "shortlist_candidates",
        (
            C("shortlist_id", ref="shortlists.shortlist_id"),
            C("rank", "int", doc="1 is the top"),
            *_PERSON_OR_GROUP,
            C("score", "float"),
            C("propensity", "float", nullable=True, doc="in (0, 1]"),
        ),
        key=("shortlist_id", "rank"),
        doc="The candidates of each served list.",
    ),
    BundleFile(
        "assignments",
        (
            C("assignment_id"),
            C("mission_id", ref="missions.mission_id"),
            *_PERSON_OR_GROUP,
            C("shortlist_id", nullable=True, ref="shortlists.shortlist_id",
              doc="empty: a pick made by hand or before the engine"),
            C("assigned_at", "datetime"),
            C("status", vocab="assignment_status"),
            C("propensity", "float", nullable=True, doc="in (0, 1]; empty: unusable off-policy"),
        ),
        key=("assignment_id",),
        doc="Candidates proposed for missions, and what became of it.",
    ),
    BundleFile(
        "outcomes",
        (
            C("outcome_id"),
            C("assignment_id", ref="assignments.assignment_id"),
            C("measured_at", "datetime"),
            C("value", "float", doc="the measured value (units for per_unit)"),
            C("success", "bool", doc="must equal what the pay rule says of value"),
            C("status", vocab="outcome_status"),
            C("payout", "float", nullable=True, doc="verified only: must equal the pay rule"),
        ),
        key=("outcome_id",),
        doc="Measured results of assignments.",
    ),
    BundleFile(
        "truth",
        (
            C("mission_id", ref="missions.mission_id"),
            *_PERSON_OR_GROUP,
            C("p_success", "float", doc="true probability of success, in [0, 1]"),
        ),
        key=("mission_id", "person_id", "group_id"),
        required=False,
        doc="Synthetic only: the ground truth the simulator drew outcomes from.",
    ),
)

FILES_BY_NAME: dict[str, BundleFile] = {f.name: f for f in BUNDLE_FILES}


def canonical_frame(spec: BundleFile, frame: pl.DataFrame, for_csv: bool) -> pl.DataFrame:
    """Order, type and (for CSV) format ``frame``'s columns as the bundle spec says.

    Typed input (datetimes, booleans, numbers, tag lists) and string input are both
    accepted. For CSV every column becomes a string in its canonical form; for Parquet the
    columns keep their types (tags stay ``;``-joined strings).
    """
    exprs = []
    for col in spec.columns:
        if col.name not in frame.columns:
            if col.optional:
                continue
            raise KeyError(f"{spec.name}: missing column {col.name}")
        e = pl.col(col.name)
        dtype = frame.schema[col.name]
        if col.type == "tags" and isinstance(dtype, pl.List):
            e = e.list.sort().list.join(TAG_SEP)
            e = pl.when(e == "").then(None).otherwise(e)
        elif dtype != col.polars_dtype and not (col.type == "datetime" and dtype == pl.String):
            e = e.cast(col.polars_dtype)
        if for_csv:
            if col.type == "datetime":
                if dtype == pl.String:
                    e = e.str.to_datetime(time_zone="UTC")
                e = e.dt.convert_time_zone("UTC").dt.strftime(DATETIME_FORMAT)
            elif col.type == "bool":
                e = pl.when(e).then(pl.lit("true")).otherwise(pl.lit("false"))
                e = pl.when(pl.col(col.name).is_null()).then(None).otherwise(e)
            else:
                e = e.cast(pl.String)
        exprs.append(e.alias(col.name))
    out = frame.select(exprs)
    sort_keys = [k for k in spec.key if k in out.columns]
    return out.sort(sort_keys, nulls_last=False, maintain_order=True)


def write_bundle(
    frames: dict[str, pl.DataFrame], out_dir: str | os.PathLike[str], fmt: str = "csv"
) -> list[Path]:
    """Write ``frames`` (file name -> frame) as a bundle in ``out_dir``.

    Required files missing from ``frames`` are written empty (header only), so that every
    bundle has the same shape. Rows are sorted by the file's key: the same data always
    gives the same bytes. Each file is written to a temporary name and renamed, so a
    reader never sees half a file.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(frames) - set(FILES_BY_NAME)
    if unknown:
        raise KeyError(f"not bundle files: {sorted(unknown)}")
    written = []
    for spec in BUNDLE_FILES:
        frame = frames.get(spec.name)
        if frame is None:
            if not spec.required:
                continue
            frame = pl.DataFrame(
                schema={c.name: c.polars_dtype for c in spec.columns if not c.optional}
            )
        data = canonical_frame(spec, frame, for_csv=fmt == "csv")
        path = out / f"{spec.name}.{fmt}"
        tmp = out / f".{spec.name}.{fmt}.tmp"
        if fmt == "csv":
            data.write_csv(tmp, null_value="")
        else:
            data.write_parquet(tmp)
        os.replace(tmp, path)
        written.append(path)
    return written
