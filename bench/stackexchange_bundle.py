"""Turn the Stack Exchange "Beer, Wine & Spirits" dump into a community bundle.

A question is a mission, a user who answers is a candidate, the accepted answer is the
success. Users who interact (answer, comment on or edit each other's posts) are tied, and
each tie is dated by the pair's first interaction, so that a consumer can keep only the
ties that existed before a question. See ``docs/stackexchange.md`` for the mapping, the
choices and the leakage precautions.

Leakage guard: the reader extracts a fixed whitelist of attributes from the XML files
(:data:`READ_ATTRIBUTES`). Dump-time snapshots (reputation, views, votes, scores, counts,
last-activity dates) are never read, so nothing built here can depend on them.

Usage::

    python bench/stackexchange_bundle.py OUT_DIR [--source DIR] [--format csv|parquet]

Examples
--------
>>> frames = build_frames("../shared/data/stackexchange-beer")  # doctest: +SKIP
>>> frames["missions"].height  # doctest: +SKIP
591
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

# bench/ is not a package: make the project importable when run as a script.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from graph._bundle_schema import write_bundle  # noqa: E402
from graph._payout import PayRule, payout_for, success_for  # noqa: E402

__all__ = [
    "CLIENT_ID",
    "DEFAULT_SOURCE",
    "READ_ATTRIBUTES",
    "SITE",
    "Dump",
    "build_bundle",
    "build_frames",
    "candidate_pool",
    "interactions",
    "main",
    "plain_text",
    "read_dump",
    "split_date",
    "summarize",
    "tie_weight",
]

DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "data" / "stackexchange-beer"
SITE = "beer.stackexchange.com"
CLIENT_ID = "SE-beer"
AREA_ID = "online"

WINDOW_DAYS = 60  # acceptance horizon (SOURCE.md: 90th percentile of time to accept is 57 d)
N_NEED_TYPES = 30
SPLIT_QUANTILE = 0.8
DESCRIPTION_CHARS = 500
AVAILABILITY_MIN_PER_WEEK = 10_080  # a whole week: the site sets no availability limit
MAX_CONCURRENT = 1_000
MINUTES_PER_DAY = 30
DAYS_PER_WEEK = 1

# The only attributes ever read. Anything else in the XML (Score, ViewCount, Reputation,
# Views, UpVotes, DownVotes, AnswerCount, CommentCount, FavoriteCount, LastActivityDate,
# LastEditDate, LastAccessDate, ClosedDate, ...) is a dump-time snapshot and is ignored.
READ_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    # Title/Body/Tags only as a fallback when a question has no initial revision.
    "Posts": ("Id", "PostTypeId", "ParentId", "AcceptedAnswerId", "CreationDate",
              "OwnerUserId", "Title", "Body", "Tags"),
    "Users": ("Id", "CreationDate"),
    "Comments": ("Id", "PostId", "CreationDate", "UserId"),
    "Votes": ("Id", "PostId", "VoteTypeId", "CreationDate"),
    "PostHistory": ("Id", "PostHistoryTypeId", "PostId", "CreationDate", "UserId", "Text"),
}

QUESTION, ANSWER = "1", "2"
ACCEPT_VOTE = "1"
INITIAL_TITLE, INITIAL_BODY, INITIAL_TAGS = "1", "2", "3"
# Edits and rollbacks of title, body and tags: an editor touching someone else's post.
EDIT_TYPES = ("4", "5", "6", "7", "8", "9")
DELETED_USER = "-1"  # the "Community" bot account

# Coarse families for the site's frequent tags: skills are expected to transfer within a
# family. Domain grouping made by hand (no data involved); a tag not listed here is its
# own family.
TAG_FAMILIES: dict[str, str] = {
    **dict.fromkeys(
        ["specialty-beers", "style", "ipa", "stout", "trappist", "3.2-beer", "ale", "lager",
         "german-beers", "foreign-beer", "pilsener", "porter", "craft-beers", "sour"],
        "beer_styles",
    ),
    **dict.fromkeys(
        ["brewing", "ingredients", "hops", "yeast", "bottling", "carbonation",
         "alcohol-level", "homebrewing"],
        "brewing",
    ),
    **dict.fromkeys(
        ["taste", "flavor", "tasting", "pairing", "drinking", "serving", "temperature",
         "glassware", "pouring", "draught"],
        "tasting_serving",
    ),
    **dict.fromkeys(
        ["breweries", "storage", "bottles", "local", "growlers", "freshness", "aging",
         "recommendations", "buying", "distribution", "retail-availiability"],
        "buying_storage",
    ),
    **dict.fromkeys(["history", "health", "laws", "terminology", "science"], "culture_law"),
    **dict.fromkeys(["wine", "whiskey", "spirits", "cider", "mead", "vodka", "rum"],
                    "wine_spirits"),
}
OTHER = "other"
UNTAGGED = "untagged"  # the site's placeholder for a question asked without tags

_SECOND = timedelta(seconds=1)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Dump:
    """The whitelisted content of a dump, as polars frames with UTC datetimes.

    ``dump_end`` is the latest event (post, comment, vote or revision) of the dump.
    """

    posts: pl.DataFrame
    users: pl.DataFrame
    comments: pl.DataFrame
    votes: pl.DataFrame
    history: pl.DataFrame
    dump_end: datetime


def _read_xml(path: Path, attributes: tuple[str, ...]) -> pl.DataFrame:
    columns: dict[str, list[str | None]] = {a: [] for a in attributes}
    for _, elem in ET.iterparse(path, events=("end",)):
        if elem.tag != "row":
            continue
        get = elem.attrib.get
        for a in attributes:
            columns[a].append(get(a))
        elem.clear()
    return pl.DataFrame(columns, schema=dict.fromkeys(attributes, pl.String))


def _to_utc(col: str) -> pl.Expr:
    # The dump's times are UTC with milliseconds; the bundle keeps whole seconds, so
    # truncate here and every comparison below sees what the bundle will hold.
    return (
        pl.col(col).str.slice(0, 19)
        .str.to_datetime("%Y-%m-%dT%H:%M:%S", time_zone="UTC", time_unit="us")
    )


def read_dump(source: str | Path = DEFAULT_SOURCE) -> Dump:
    """Read the whitelisted attributes of a Stack Exchange site dump.

    Parameters
    ----------
    source : path
        The folder holding ``Posts.xml``, ``Users.xml``, ``Comments.xml``, ``Votes.xml``
        and ``PostHistory.xml``.

    Examples
    --------
    >>> dump = read_dump("../shared/data/stackexchange-beer")  # doctest: +SKIP
    >>> dump.posts.filter(pl.col("PostTypeId") == "1").height  # doctest: +SKIP
    591
    """
    src = Path(source)
    if not (src / "Posts.xml").is_file():
        raise FileNotFoundError(f"no Stack Exchange dump in {src} (Posts.xml missing)")
    frames = {
        name: _read_xml(src / f"{name}.xml", attrs).with_columns(_to_utc("CreationDate"))
        for name, attrs in READ_ATTRIBUTES.items()
    }
    dump_end = max(
        frames[n]["CreationDate"].max() for n in ("Posts", "Comments", "Votes", "PostHistory")
    )
    return Dump(
        posts=frames["Posts"],
        users=frames["Users"],
        comments=frames["Comments"],
        votes=frames["Votes"],
        history=frames["PostHistory"],
        dump_end=dump_end,
    )


# --------------------------------------------------------------------------- helpers


def _person(col: str) -> pl.Expr:
    return pl.concat_str(pl.lit("U"), pl.col(col))


def _known_user(col: str) -> pl.Expr:
    return pl.col(col).is_not_null() & (pl.col(col) != DELETED_USER)


def split_date(created_at: pl.Series, quantile: float = SPLIT_QUANTILE) -> datetime:
    """The time-split date: the ``quantile`` of the questions' creation dates.

    The lower order statistic (no interpolation), so the split is a real question's date:
    questions created before it are the training set, the others the test set.

    Examples
    --------
    >>> from datetime import datetime as d
    >>> split_date(pl.Series([d(2014, 1, 1), d(2015, 1, 1), d(2016, 1, 1)]), 0.5)
    datetime.datetime(2015, 1, 1, 0, 0)
    """
    ordered = created_at.drop_nulls().sort()
    return ordered[math.floor(quantile * (ordered.len() - 1))]


def tie_weight(n: int | pl.Expr) -> float | pl.Expr:
    """Weight of a tie seen ``n`` >= 1 times: ``1 - exp(-n / 3)``, in (0, 1).

    Examples
    --------
    >>> round(tie_weight(1), 3), round(tie_weight(3), 3), round(tie_weight(10), 3)
    (0.283, 0.632, 0.964)
    """
    if isinstance(n, pl.Expr):
        return 1.0 - (-n.cast(pl.Float64) / 3.0).exp()
    return 1.0 - math.exp(-n / 3.0)


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_REF_LINK = re.compile(r"\[([^\]]+)\]\s?\[[^\]]*\]")
_MD_REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.MULTILINE)
_HTML_TAG = re.compile(r"<[^>]+>")
_MD_LINE_MARKS = re.compile(r"^[ \t]*(?:#{1,6}|>+|[*+-]|\d+\.)[ \t]+|^[ \t]*>+", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"[*_`]{1,3}")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([?.,!;:)])")


def plain_text(text: str | None, limit: int = DESCRIPTION_CHARS) -> str | None:
    """Plain text of a post (Markdown source or HTML), whitespace collapsed, cut to ``limit``.

    Examples
    --------
    >>> plain_text("Is **this** [hop](http://x.org) <em>bitter</em>?\\n\\n  [1]: http://y")
    'Is this hop bitter?'
    """
    if not text:
        return None
    t = _MD_REF_DEF.sub(" ", text)
    t = _MD_IMAGE.sub(r"\1", t)
    t = _MD_LINK.sub(r"\1", t)
    t = _MD_REF_LINK.sub(r"\1", t)
    t = _HTML_TAG.sub(" ", t)
    t = _MD_LINE_MARKS.sub("", t)
    t = _MD_EMPHASIS.sub("", t)
    t = _SPACES.sub(" ", html.unescape(t)).strip()
    t = _SPACE_BEFORE_PUNCT.sub(r"\1", t)
    if len(t) > limit:
        t = t[: limit - 1].rstrip() + "\u2026"
    return t or None


def _tags(raw: str | None) -> list[str]:
    if not raw:
        return []
    return [t for t in raw.strip("<>").split("><") if t]


# --------------------------------------------------------------------------- the parts


def _questions(dump: Dump) -> pl.DataFrame:
    """Questions with their INITIAL title, body and tags (as asked, before any edit)."""
    initial = (
        dump.history.filter(
            pl.col("PostHistoryTypeId").is_in([INITIAL_TITLE, INITIAL_BODY, INITIAL_TAGS])
        )
        .sort("Id")
        .group_by("PostId", "PostHistoryTypeId")
        .agg(pl.col("Text").first())
        .pivot(on="PostHistoryTypeId", index="PostId", values="Text")
    )
    for t in (INITIAL_TITLE, INITIAL_BODY, INITIAL_TAGS):
        if t not in initial.columns:
            initial = initial.with_columns(pl.lit(None, pl.String).alias(t))
    q = dump.posts.filter(pl.col("PostTypeId") == QUESTION).join(
        initial.rename({"PostId": "Id"}), on="Id", how="left"
    )
    # The final Title/Body/Tags are a dump-time state; used only if a revision is missing.
    return q.select(
        "Id",
        "CreationDate",
        "AcceptedAnswerId",
        "OwnerUserId",
        pl.coalesce(INITIAL_TITLE, "Title").alias("title"),
        pl.coalesce(INITIAL_BODY, "Body").alias("body"),
        pl.coalesce(INITIAL_TAGS, "Tags").alias("tags"),
        pl.col(INITIAL_TAGS).is_null().alias("tags_from_final_state"),
    )


def _answers(dump: Dump, questions: pl.DataFrame) -> pl.DataFrame:
    """Answers by a known user, with their question and whether they are the accepted one."""
    return (
        dump.posts.filter((pl.col("PostTypeId") == ANSWER) & _known_user("OwnerUserId"))
        .select("Id", pl.col("ParentId").alias("question_id"), "CreationDate", "OwnerUserId")
        .join(
            questions.select(
                pl.col("Id").alias("question_id"),
                pl.col("CreationDate").alias("question_at"),
                "AcceptedAnswerId",
            ),
            on="question_id",
            how="inner",
        )
        .with_columns(accepted=pl.col("Id") == pl.col("AcceptedAnswerId").fill_null(""))
    )


def interactions(dump: Dump) -> pl.DataFrame:
    """Every dated user-to-user interaction: ``source, target, at, via``.

    - ``answer``: the answerer to the asker, at the answer's date;
    - ``comment``: the commenter to the owner of the question or answer, at the comment;
    - ``edit``: an editor of someone else's question or answer (title, body, tags,
      rollbacks) to its owner, at the edit.

    Self-interactions, unknown users and the Community bot are left out. Votes are not
    used: they carry no voter (except favourites, which are bookmarks, not interactions).
    """
    posts = dump.posts.filter(pl.col("PostTypeId").is_in([QUESTION, ANSWER]))
    owner = posts.select(pl.col("Id").alias("post_id"), pl.col("OwnerUserId").alias("target"))
    answers = (
        posts.filter(pl.col("PostTypeId") == ANSWER)
        .select(pl.col("OwnerUserId").alias("source"), pl.col("ParentId").alias("post_id"),
                pl.col("CreationDate").alias("at"))
        .join(owner, on="post_id")
        .with_columns(via=pl.lit("answer"))
    )
    comments = (
        dump.comments.select(pl.col("UserId").alias("source"), pl.col("PostId").alias("post_id"),
                             pl.col("CreationDate").alias("at"))
        .join(owner, on="post_id")
        .with_columns(via=pl.lit("comment"))
    )
    edits = (
        dump.history.filter(pl.col("PostHistoryTypeId").is_in(EDIT_TYPES))
        .select(pl.col("UserId").alias("source"), pl.col("PostId").alias("post_id"),
                pl.col("CreationDate").alias("at"))
        .join(owner, on="post_id")
        .with_columns(via=pl.lit("edit"))
    )
    users = dump.users.filter(_known_user("Id")).select(pl.col("Id"))
    return (
        pl.concat([answers, comments, edits])
        .filter(_known_user("source") & _known_user("target")
                & (pl.col("source") != pl.col("target")))
        .join(users, left_on="source", right_on="Id", how="semi")
        .join(users, left_on="target", right_on="Id", how="semi")
        .select("source", "target", "at", "via")
        .sort("at", "source", "target", "via")
    )


def _ties(inter: pl.DataFrame, fit_until: datetime | None) -> pl.DataFrame:
    a, b = _person("source"), _person("target")
    pairs = inter.with_columns(
        person_a=pl.min_horizontal(a, b), person_b=pl.max_horizontal(a, b)
    )
    # The weight counts only interactions before ``fit_until``: an all-time count is a
    # dump-time figure and would tell a training question about interactions to come. A
    # tie first seen later gets the weight of its one known interaction.
    counted = pl.col("at") < fit_until if fit_until is not None else pl.col("at").is_not_null()
    return (
        pairs.group_by("person_a", "person_b")
        .agg(created_at=pl.col("at").min(), n=counted.sum())
        .with_columns(n=pl.max_horizontal(pl.col("n"), pl.lit(1, pl.UInt32)))
        .select(
            "person_a",
            "person_b",
            kind=pl.lit("peer"),
            weight=tie_weight(pl.col("n")),
            created_at="created_at",
        )
        .sort("person_a", "person_b")
    )


def _need_types(
    questions: pl.DataFrame, fit_until: datetime | None, n_types: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Vocabulary of need types (top tags before ``fit_until`` + other) and each question's."""
    tags = questions.select(
        "Id", "CreationDate", pl.col("tags").map_elements(_tags, return_dtype=pl.List(pl.String))
    )
    seen = tags if fit_until is None else tags.filter(pl.col("CreationDate") < fit_until)
    counts = (
        seen.explode("tags")
        .filter(pl.col("tags").is_not_null() & (pl.col("tags") != UNTAGGED))
        .group_by("tags")
        .len()
        .sort(["len", "tags"], descending=[True, False])
        .head(n_types)
    )
    top = counts["tags"].to_list()
    rank = {t: i for i, t in enumerate(top)}

    # The asker's first tag that is in the vocabulary (the asker orders tags by intent).
    def pick(ts: list[str]) -> str:
        return next((t for t in ts if t in rank), OTHER)

    need = tags.select(
        "Id", need_type=pl.col("tags").map_elements(pick, return_dtype=pl.String)
    )
    vocab = pl.DataFrame(
        {
            "kind": ["need_type"] * (len(top) + 1),
            "value": [*top, OTHER],
            "description": [f"Questions tagged '{t}' on {SITE}" for t in top]
            + [f"Questions on {SITE} with none of the {len(top)} most frequent tags"],
            "parent": [TAG_FAMILIES.get(t, t) for t in top] + [OTHER],
        }
    )
    return vocab, need


def _payouts(outcomes: pl.DataFrame, rule: PayRule) -> pl.DataFrame:
    """Payout of each verified outcome, the contract cap applied per mission in order."""
    ordered = outcomes.sort("mission_id", "measured_at", "outcome_id")
    paid: dict[str, float] = {}
    payouts = []
    for mission, value in zip(ordered["mission_id"], ordered["value"], strict=True):
        p = payout_for(rule, value, paid.get(mission, 0.0))
        paid[mission] = paid.get(mission, 0.0) + p
        payouts.append(p)
    return ordered.with_columns(payout=pl.Series(payouts, dtype=pl.Float64))


RULE = PayRule("threshold", "increase", baseline=0.0, target=1.0, fee=1.0, contract_cap=1.0)


def build_frames(
    source: str | Path = DEFAULT_SOURCE,
    *,
    fit_until: datetime | str | None = "split",
    split_quantile: float = SPLIT_QUANTILE,
    n_need_types: int = N_NEED_TYPES,
    window_days: int = WINDOW_DAYS,
) -> dict[str, pl.DataFrame]:
    """Build the bundle's frames from a dump.

    Parameters
    ----------
    source : path
        The dump's folder.
    fit_until : datetime, "split" or None
        Only data before this date chooses the need-type vocabulary and counts towards tie
        weights. ``"split"`` (default): the time-split date; ``None``: the whole dump
        (leaks the test period into both; for demos only).
    split_quantile : float
        Quantile of question dates used as the time split.
    n_need_types : int
        Number of tags kept as need types (plus ``other``).
    window_days : int
        Length of a mission's measurement window (acceptance horizon).

    Returns
    -------
    dict of str to polars.DataFrame
        Bundle file name -> frame, ready for :func:`graph._bundle_schema.write_bundle`.
    """
    dump = read_dump(source)
    questions = _questions(dump)
    split = split_date(questions["CreationDate"], split_quantile)
    if fit_until == "split":
        fit_until = split
    elif isinstance(fit_until, str):
        fit_until = datetime.fromisoformat(fit_until.replace("Z", "+00:00"))
    window = timedelta(days=window_days)
    dump_end = dump.dump_end

    vocabulary, need = _need_types(questions, fit_until, n_need_types)

    missions = (
        questions.join(need, on="Id")
        .select(
            mission_id=pl.concat_str(pl.lit("Q"), pl.col("Id")),
            client_id=pl.lit(CLIENT_ID),
            need_type="need_type",
            area_id=pl.lit(AREA_ID),
            created_at="CreationDate",
            starts_at="CreationDate",
            ends_at=pl.col("CreationDate") + window,
            status=pl.when(pl.col("CreationDate") + window <= dump_end)
            .then(pl.lit("closed"))
            .otherwise(pl.lit("open")),
            title=pl.col("title").fill_null("(untitled)"),
            description=pl.col("body").map_elements(plain_text, return_dtype=pl.String),
            metric=pl.lit("accepted answer"),
            direction=pl.lit(RULE.direction),
            baseline=pl.lit(RULE.baseline),
            target=pl.lit(RULE.target),
            pay_rule=pl.lit(RULE.pay_rule),
            unit_price=pl.lit(None, pl.Float64),
            fee=pl.lit(RULE.fee),
            contract_cap=pl.lit(RULE.contract_cap),
            team_min=pl.lit(1),
            team_max=pl.lit(1),
            minutes_per_day=pl.lit(MINUTES_PER_DAY),
            days_per_week=pl.lit(DAYS_PER_WEEK),
            vetting_regime=pl.lit(None, pl.String),
            radius_km=pl.lit(None, pl.Float64),
        )
    )

    answers = _answers(dump, questions)
    # Acceptance time: the accept vote's day (votes are dated to the day, 00:00). Take the
    # end of that day: the label is never claimed before it could be known, and it is
    # never before the answer itself. Capped at the dump's end.
    accept = (
        dump.votes.filter(pl.col("VoteTypeId") == ACCEPT_VOTE)
        .group_by("PostId")
        .agg(voted_on=pl.col("CreationDate").max())
        .rename({"PostId": "Id"})
    )
    end = pl.lit(dump_end, pl.Datetime("us", "UTC"))
    answers = answers.join(accept, on="Id", how="left").with_columns(
        measured_at=pl.when(pl.col("accepted") & pl.col("voted_on").is_not_null())
        .then(pl.max_horizontal(
            pl.min_horizontal(pl.col("voted_on") + timedelta(days=1) - _SECOND, end),
            pl.col("CreationDate"),
        ))
        .otherwise(pl.min_horizontal(pl.col("CreationDate") + window, end))
    )

    assignments = answers.select(
        assignment_id=pl.concat_str(pl.lit("A"), pl.col("Id")),
        mission_id=pl.concat_str(pl.lit("Q"), pl.col("question_id")),
        person_id=_person("OwnerUserId"),
        group_id=pl.lit(None, pl.String),
        shortlist_id=pl.lit(None, pl.String),
        assigned_at="CreationDate",
        status=pl.lit("completed"),
        propensity=pl.lit(None, pl.Float64),
    )
    outcomes = answers.select(
        outcome_id=pl.concat_str(pl.lit("O"), pl.col("Id")),
        assignment_id=pl.concat_str(pl.lit("A"), pl.col("Id")),
        mission_id=pl.concat_str(pl.lit("Q"), pl.col("question_id")),
        measured_at="measured_at",
        value=pl.col("accepted").cast(pl.Float64),
    ).with_columns(
        success=pl.col("value").map_elements(
            lambda v: success_for(RULE, v), return_dtype=pl.Boolean
        ),
        status=pl.lit("verified"),
    )
    outcomes = _payouts(outcomes, RULE).drop("mission_id")

    ties = _ties(interactions(dump), fit_until)

    # A few users asked before registering (the account was created days later): a
    # person has joined by their first answer or interaction at the latest. Many accounts
    # were created by their first post (same second): the person has joined one second
    # before it, so that a snapshot taken at that answer (rows at or after it ignored)
    # holds the person who gives it.
    people = (
        pl.concat(
            [assignments.select("person_id", at="assigned_at"),
             ties.select(person_id="person_a", at="created_at"),
             ties.select(person_id="person_b", at="created_at")]
        )
        .group_by("person_id")
        .agg(first_seen=pl.col("at").min())
    )
    persons = (
        dump.users.filter(_known_user("Id"))
        .select(person_id=_person("Id"), registered_at="CreationDate")
        .join(people, on="person_id", how="inner")
        .select(
            "person_id",
            area_id=pl.lit(AREA_ID),
            joined_at=pl.min_horizontal("registered_at", pl.col("first_seen") - _SECOND),
            availability_min_per_week=pl.lit(AVAILABILITY_MIN_PER_WEEK),
            max_concurrent=pl.lit(MAX_CONCURRENT),
            # Static skills would have to come from all-time activity (a leak) or from the
            # profile (a dump-time snapshot): left empty, history is in the outcomes.
            skills=pl.lit(None, pl.String),
            lived_experience=pl.lit(None, pl.String),
            consent_matching=pl.lit(True),
            consent_lived_experience=pl.lit(False),
        )
    )
    missing = people.join(persons, on="person_id", how="anti")
    if missing.height:
        raise ValueError(f"{missing.height} interacting users are absent from Users.xml")

    return {
        "vocabulary": vocabulary,
        "areas": pl.DataFrame(
            {"area_id": [AREA_ID], "name": [f"{SITE} (online)"], "lat": [0.0], "lon": [0.0]}
        ),
        "area_links": pl.DataFrame(schema={"area_a": pl.String, "area_b": pl.String}),
        "persons": persons,
        "ties": ties,
        "clients": pl.DataFrame(
            {"client_id": [CLIENT_ID], "kind": ["association"], "name": [SITE]}
        ),
        "missions": missions,
        "assignments": assignments,
        "outcomes": outcomes,
    }


def candidate_pool(assignments: pl.DataFrame, at: datetime) -> set[str]:
    """The candidate pool at ``at``: persons who answered at least once before ``at``.

    Examples
    --------
    >>> from datetime import datetime as d
    >>> a = pl.DataFrame({"person_id": ["U1", "U2"], "assigned_at": [d(2015, 1, 1), d(2016, 1, 1)]})
    >>> sorted(candidate_pool(a, d(2015, 6, 1)))
    ['U1']
    """
    return set(assignments.filter(pl.col("assigned_at") < at)["person_id"].to_list())


def summarize(
    frames: dict[str, pl.DataFrame], split_quantile: float = SPLIT_QUANTILE
) -> dict[str, object]:
    """Figures to check against SOURCE.md: split date, accepted test questions, cold start.

    Test questions are those created on or after the split. The accepted answerer of a
    test question is "warm" if they answered any question before the split.
    """
    missions, assignments, outcomes = frames["missions"], frames["assignments"], frames["outcomes"]
    split = split_date(missions["created_at"], split_quantile)
    wins = (
        outcomes.filter(pl.col("success"))
        .join(assignments, on="assignment_id")
        .join(missions.select("mission_id", "created_at"), on="mission_id")
    )
    test_wins = wins.filter(pl.col("created_at") >= split)
    pool = candidate_pool(assignments, split)
    warm = test_wins.filter(pl.col("person_id").is_in(list(pool))).height
    return {
        "split_quantile": split_quantile,
        "split_date": split,
        "train_questions": missions.filter(pl.col("created_at") < split).height,
        "test_questions": missions.filter(pl.col("created_at") >= split).height,
        "test_questions_accepted": test_wins["mission_id"].n_unique(),
        "accepted_answerer_answered_before_split": warm,
        "cold_start": test_wins.height - warm,
        "pool_at_split": len(pool),
        "successes": outcomes["success"].sum(),
        "need_type_other": missions.filter(pl.col("need_type") == OTHER).height,
    }


def build_bundle(
    out_dir: str | Path,
    source: str | Path = DEFAULT_SOURCE,
    fmt: str = "csv",
    **kwargs: object,
) -> dict[str, pl.DataFrame]:
    """Build the frames (see :func:`build_frames`) and write them as a bundle in ``out_dir``."""
    frames = build_frames(source, **kwargs)
    write_bundle(frames, out_dir, fmt)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Turn the Stack Exchange {SITE} dump into a community bundle."
    )
    parser.add_argument("out_dir", help="folder to write the bundle to")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="the dump's folder")
    parser.add_argument("--format", default="csv", choices=["csv", "parquet"])
    parser.add_argument(
        "--fit-until",
        default="split",
        help="'split' (default), 'all', or an ISO date: only data before it picks the "
        "need types and counts in tie weights",
    )
    parser.add_argument("--split-quantile", type=float, default=SPLIT_QUANTILE)
    args = parser.parse_args(argv)
    fit_until = None if args.fit_until == "all" else args.fit_until

    t0 = time.perf_counter()
    frames = build_bundle(
        args.out_dir, args.source, args.format,
        fit_until=fit_until, split_quantile=args.split_quantile,
    )
    elapsed = time.perf_counter() - t0
    for name, frame in frames.items():
        print(f"{name:22s}{frame.height:8d}")
    s = summarize(frames, args.split_quantile)
    print(
        f"split ({s['split_quantile']:.0%} of question dates): "
        f"{s['split_date']:%Y-%m-%d %H:%M:%S}Z"
    )
    print(f"train / test questions: {s['train_questions']} / {s['test_questions']}")
    print(f"verified successes (accepted answers with an owner): {s['successes']}")
    print(f"test questions with an accepted answer: {s['test_questions_accepted']}")
    print(
        f"  accepted answerer answered before the split: "
        f"{s['accepted_answerer_answered_before_split']}, cold start: {s['cold_start']}"
    )
    print(f"candidate pool at the split (answered before it): {s['pool_at_split']}")
    print(f"missions with need type 'other': {s['need_type_other']}")
    print(f"built in {elapsed:.2f} s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
