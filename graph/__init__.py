"""The community: domain vocabulary, store, bundle import/export, the community graph and
the synthetic community generator."""

from graph._bundle import ImportReport, export_bundle, import_bundle
from graph._bundle_schema import BUNDLE_FILES, FILES_BY_NAME, write_bundle
from graph._errors import BundleError, CrunchError, NotFoundError, Problem, ValidationError
from graph._models import (
    Area,
    AreaLink,
    Assignment,
    Client,
    GroupMember,
    LedgerEntry,
    Mission,
    Outcome,
    PeerGroup,
    Person,
    Shortlist,
    ShortlistCandidate,
    Tie,
    Truth,
    VettingRecord,
    VocabularyEntry,
)
from graph._payout import PayRule, payout_for, success_for
from graph._simulate import simulate_bundle, simulate_community
from graph._store import Store, open_store, sqlite_url
from graph._vocabulary import Vocabulary, builtin_vocabulary

__all__ = [
    "BundleError",
    "CrunchError",
    "ImportReport",
    "NotFoundError",
    "Problem",
    "ValidationError",
    "export_bundle",
    "import_bundle",
    "simulate_bundle",
    "simulate_community",
    "Area",
    "AreaLink",
    "Assignment",
    "BUNDLE_FILES",
    "Client",
    "FILES_BY_NAME",
    "GroupMember",
    "LedgerEntry",
    "Mission",
    "Outcome",
    "PayRule",
    "PeerGroup",
    "Person",
    "Shortlist",
    "ShortlistCandidate",
    "Store",
    "Tie",
    "Truth",
    "VettingRecord",
    "Vocabulary",
    "VocabularyEntry",
    "builtin_vocabulary",
    "open_store",
    "payout_for",
    "sqlite_url",
    "success_for",
    "write_bundle",
]
