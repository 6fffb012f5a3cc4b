"""The community graph and the graph signals computed from it.

The graph holds six kinds of nodes (persons, peer groups, areas, need types, clients,
missions) and dated, weighted, undirected edges:

================  ======================  ==========================================
edge kind         between                 dated at (the graph as of t keeps at < t)
================  ======================  ==========================================
residence         person - area           the person's ``joined_at``
membership        person - group          the latest of member, person, group dates
tie               person - person         ``created_at`` (or a later ``joined_at``)
lived_experience  person - need type      the person's ``joined_at``; only with
                                          ``consent_lived_experience`` (special
                                          category); see :data:`LIVED_EXPERIENCE_NEEDS`
adjacency         area - area             undated: always present
mission_area      mission - area          the mission's ``created_at``
mission_need      mission - need type     the mission's ``created_at``
mission_client    mission - client        the mission's ``created_at``
outcome           person/group - mission  ``measured_at``; verified outcomes only,
                                          weighted by result (success 1.0, failure 0.1)
================  ======================  ==========================================

How it is built, and why. The store is read with SQLAlchemy core selects whose rows go
straight from the database cursor into polars frames (never ORM objects: a city has a
million ties), and becomes one dated edge table ``(src, dst, weight, kind, at)`` over an
explicit node index. Everything computed per request runs on a ``scipy.sparse`` CSR matrix
built directly from that table's arrays; building a networkx graph of a million edges per
build would take seconds, so networkx is only offered through
:meth:`CommunityGraph.to_networkx` for small analyses and tests. Every graph is tagged with
the store version it was built from and the time it stands at (``as_of``); an earlier
snapshot of a loaded graph filters the edge table and rebuilds only the CSR
(:meth:`CommunityGraph.snapshot`), which is what training needs for monthly snapshots.

The node index is stable: every node of the store is in it, in per-kind contiguous ranges
(persons first, so "all persons" is a slice), sorted by id inside a kind. A node that did
not exist yet at ``as_of`` (a person who joined later, a later mission or group) stays in
the index but has no edge: it is isolated, and :attr:`CommunityGraph.present` is False.

Personalised PageRank solves the PageRank equation as a linear system. On an undirected
graph, with ``x = D^{1/2} y`` it becomes ``(I - (1 - restart) D^{-1/2} A D^{-1/2}) y =
restart D^{-1/2} s``, symmetric positive definite with a condition number of at most
``(2 - restart) / restart``. Conjugate gradients, deflated by a coarse space of one column
per area (its residents and missions), per need type and per client, reach a relative
residual of 1e-4 in about six sparse products, where plain conjugate gradients need about
thirteen and power iteration at restart 0.15 about sixty. The coarse space is built once
per graph. The result equals ``networkx.pagerank(G, alpha=1 - restart,
personalization=s)`` (a walker on a node without edges restarts at the seeds).

PageRank is linear in its restart distribution, which makes a mission's first request cheap.
Let ``z(s) = restart (I - (1 - restart) P)^-1 s`` with the columns of nodes without edges
left empty (a walker there is lost). The networkx treatment returns such a walker to the
seeds, which only rescales: ``x(s) = z(s) / |z(s)|``. A walker from a node with edges never
reaches a node without, so ``|z(e_i)|`` is 1 for a seed with edges and ``restart`` for one
without. Hence for ``s = sum_i w_i e_i``, ``x(s) = sum_i w_i m_i x(e_i) / sum_i w_i m_i``
with ``m_i`` that mass: the solution of a mission (half its area, half its need type) is a
weighted sum of two single-seed solutions. :func:`personalized_pagerank` caches a solve per
single seed (:meth:`CommunityGraph.warm` solves them ahead of requests), and a mission's
vector costs a vector sum once its area and need type have been solved: areas and need
types are few, missions many.

Lived experience is special-category data. Proximity computed over a graph that contains
lived-experience edges (``lived_experience=True``, the signal ``proximity_le``) is derived
from it; :data:`SIGNALS` says which signal is.

Examples
--------
>>> graph = build_community_graph(store)                         # doctest: +SKIP
>>> scores = proximity(graph, "A01", "drug_outreach")            # doctest: +SKIP
>>> top = graph.nodes.ids("person")[np.argsort(-scores)[:10]]    # doctest: +SKIP
>>> ties_succeeded(graph, top, "drug_outreach")                  # doctest: +SKIP
>>> june = graph.snapshot(datetime(2025, 6, 1, tzinfo=UTC))      # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from graph._errors import NotFoundError
from graph._frames import CommunityFrames, load_frames
from graph._store import Store
from graph._vocabulary import NEED_TYPES, lived_experience_needs

__all__ = [
    "EDGE_KINDS",
    "LIVED_EXPERIENCE_NEEDS",
    "NODE_KINDS",
    "SIGNALS",
    "CommunityGraph",
    "EdgeWeights",
    "NodeIndex",
    "Signal",
    "build_community_graph",
    "group_cohesion",
    "group_members",
    "group_reach",
    "group_signals",
    "is_special_category",
    "mission_seeds",
    "personalized_pagerank",
    "proximity",
    "proximity_le",
    "ties_succeeded",
]

NodeKey = tuple[str, str]

NODE_KINDS: tuple[str, ...] = ("person", "group", "area", "need", "client", "mission")
EDGE_KINDS: tuple[str, ...] = (
    "residence",
    "membership",
    "tie",
    "lived_experience",
    "adjacency",
    "mission_area",
    "mission_need",
    "mission_client",
    "outcome",
)
_EDGE_KIND = pl.Enum(EDGE_KINDS)
_TIME = pl.Datetime("us", "UTC")
_NEVER = np.iinfo(np.int64).max
RESTART = 0.15
_TOL_FLOOR = 1e-6  # float32 arithmetic: a smaller relative residual is noise

# Which need types a lived experience speaks to: the documented prior table of DESIGN.md
# idea 2 ("a former user reaching current users"), shared with the features. A tag that is
# itself a need type also links to it.
LIVED_EXPERIENCE_NEEDS: dict[str, tuple[str, ...]] = lived_experience_needs()


@dataclass(frozen=True)
class EdgeWeights:
    """Weights of the edges that carry none of their own (ties carry theirs).

    A failed verified outcome still links the person to the mission (they know its
    people and place), but far less than a success.
    """

    residence: float = 1.0
    membership: float = 1.0
    lived_experience: float = 1.0
    adjacency: float = 1.0
    mission: float = 1.0
    outcome_success: float = 1.0
    outcome_failure: float = 0.1


@dataclass(frozen=True)
class Signal:
    """A graph signal, and whether it is derived from special-category data."""

    name: str
    special_category: bool
    description: str


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("proximity", False, "personalised PageRank from the mission's area and need "
               "type, over the graph without lived-experience edges"),
        Signal("proximity_le", True, "personalised PageRank from the mission's area and need "
               "type, over the graph with lived-experience edges"),
        Signal("ties_succeeded", False, "number of the candidate's ties with a verified "
               "success on the need type before t"),
        Signal("ties_succeeded_weight", False, "sum of the weights of those ties"),
        Signal("group_size", False, "members of the peer group at t"),
        Signal("group_cohesion", False, "weighted density of ties among the members, in [0, 1]"),
        Signal("group_reach", False, "persons tied to at least one member, members excluded"),
    )
}


def is_special_category(signal: str) -> bool:
    """True when the signal named ``signal`` is derived from lived-experience data.

    >>> is_special_category("proximity_le"), is_special_category("proximity")
    (True, False)
    """
    try:
        return SIGNALS[signal].special_category
    except KeyError:
        raise NotFoundError(f"no graph signal named {signal!r}") from None


# --------------------------------------------------------------------------- node index


class NodeIndex:
    """An explicit, stable index of nodes: one contiguous range per kind.

    Keys are ``(kind, id)`` tuples such as ``("person", "P000001")`` or
    ``("need", "drug_outreach")``. Persons come first, so the persons are the slice
    ``[0, size("person"))``.

    Examples
    --------
    >>> idx = NodeIndex({"person": ["P2", "P1"], "area": ["A1"]})
    >>> idx[("person", "P1")], idx[("area", "A1")], len(idx)
    (0, 2, 3)
    >>> idx.key(1)
    ('person', 'P2')
    """

    def __init__(self, ids: Mapping[str, Iterable[str]]) -> None:
        unknown = set(ids) - set(NODE_KINDS)
        if unknown:
            raise ValueError(f"unknown node kinds {sorted(unknown)}")
        self._ids: dict[str, np.ndarray] = {}
        self._start: dict[str, int] = {}
        start = 0
        for kind in NODE_KINDS:
            arr = np.array(sorted(set(ids.get(kind, ()))), dtype=object)
            self._ids[kind] = arr
            self._start[kind] = start
            start += len(arr)
        self._n = start
        self._lookup: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def size(self, kind: str) -> int:
        return len(self._ids[kind])

    def start(self, kind: str) -> int:
        return self._start[kind]

    def slice(self, kind: str) -> slice:
        """The index range of one kind of node."""
        return slice(self._start[kind], self._start[kind] + len(self._ids[kind]))

    def ids(self, kind: str) -> np.ndarray:
        """The ids of one kind, in index order (a read-only object array)."""
        out = self._ids[kind].view()
        out.flags.writeable = False
        return out

    def _map(self, kind: str) -> dict[str, int]:
        if kind not in self._lookup:
            with self._lock:
                self._lookup[kind] = {v: i for i, v in enumerate(self._ids[kind])}
        return self._lookup[kind]

    def local(self, kind: str, ids: Iterable[str]) -> np.ndarray:
        """Positions of ``ids`` inside their kind's range (0-based)."""
        lookup = self._map(kind)
        try:
            return np.fromiter((lookup[i] for i in ids), dtype=np.int64)
        except KeyError as exc:
            raise NotFoundError(f"no {kind} {exc.args[0]!r} in the graph") from None

    def positions(self, keys: Iterable[NodeKey]) -> np.ndarray:
        """Global positions of node keys."""
        return np.fromiter((self[k] for k in keys), dtype=np.int64)

    def __getitem__(self, key: NodeKey) -> int:
        kind, id_ = key
        if kind not in self._ids:
            raise NotFoundError(f"unknown node kind {kind!r}")
        pos = self._map(kind).get(id_)
        if pos is None:
            raise NotFoundError(f"no {kind} {id_!r} in the graph")
        return self._start[kind] + pos

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] in self._ids):
            return False
        return key[1] in self._map(key[0])

    def key(self, position: int) -> NodeKey:
        for kind in NODE_KINDS:
            sl = self.slice(kind)
            if sl.start <= position < sl.stop:
                return (kind, str(self._ids[kind][position - sl.start]))
        raise IndexError(position)

    def keys(self) -> list[NodeKey]:
        return [(kind, str(i)) for kind in NODE_KINDS for i in self._ids[kind]]

    def frame(self, kind: str) -> pl.DataFrame:
        """``(id, node)`` for one kind: global positions, for joins."""
        start = self._start[kind]
        return pl.DataFrame({
            "id": pl.Series(self._ids[kind].tolist(), dtype=pl.String),
            "node": pl.int_range(start, start + self.size(kind), dtype=pl.Int32, eager=True),
        })


# ------------------------------------------------------------------------------ graph


@dataclass
class _Coarse:
    """The deflation space of the PPR solver: one column per area (its residents, its
    missions and itself, weighted by the square root of their degrees), one per need type
    and one per client. Persons mostly tie within their area, so the slowest error
    components of conjugate gradients are nearly constant over an area; projecting them out
    each iteration cuts the iterations by half or more."""

    agg: np.ndarray  # per node: its column, or k (none)
    weight: np.ndarray  # per node: D^1/2 on its column, 0 for none (float32)
    mwt: sp.csr_array  # (M W)^T, k x n, float32
    e_inv: np.ndarray  # (W^T M W)^-1, k x k, float32

    @property
    def k(self) -> int:
        return self.e_inv.shape[0]

    def restrict(self, v: np.ndarray) -> np.ndarray:
        """W^T v."""
        return np.bincount(self.agg, weights=self.weight * v, minlength=self.k + 1)[: self.k]

    def prolong(self, mu: np.ndarray) -> np.ndarray:
        """W mu."""
        return self.weight * np.append(mu.astype(np.float32), np.float32(0))[self.agg]


@dataclass
class _Operator:
    """What PPR needs from one variant of the graph, in the solver's own node order.

    The solver orders nodes by area (residents, missions and the area node together, then
    the rest) so that the sparse product reads neighbours close in memory: most ties are
    local, and the product is about a quarter cheaper than in id order.
    ``order[i]`` is the node at solver position ``i``; ``position[node]`` the inverse.
    """

    order: np.ndarray
    position: np.ndarray
    normalised: sp.csr_array  # D^-1/2 A D^-1/2, float32, solver order
    inv_sqrt_degree: np.ndarray  # float32, 0 where the degree is 0, solver order
    dangling: np.ndarray  # bool: nodes without edges, solver order
    aggregates: np.ndarray  # coarse group per solver position, or -1
    _coarse: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def coarse(self, restart: float) -> _Coarse | None:
        """The deflation space for this restart (None when too large to invert densely)."""
        if restart not in self._coarse:
            with self._lock:
                if restart not in self._coarse:
                    self._coarse[restart] = _build_coarse(self, restart)
        return self._coarse[restart]


_COARSE_MAX = 3000  # a dense k x k inverse beyond this costs more than it saves


def _build_coarse(op: _Operator, restart: float) -> _Coarse | None:
    n = len(op.dangling)
    sqrt_deg = np.zeros(n, dtype=np.float32)
    live = ~op.dangling
    sqrt_deg[live] = 1.0 / op.inv_sqrt_degree[live]
    used = (op.aggregates >= 0) & live
    cols, agg = np.unique(op.aggregates[used], return_inverse=True)
    k = len(cols)
    if k == 0 or k > _COARSE_MAX:
        return None
    full_agg = np.full(n, k, dtype=np.int64)
    full_agg[used] = agg
    weight = np.where(used, sqrt_deg, np.float32(0)).astype(np.float32)
    # (M W)^T with M = I - (1 - restart) N: W^T minus (1 - restart) times (N W)^T, built
    # from N's entries (W has one entry per row, so N W needs no sparse product).
    norm = op.normalised
    row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(norm.indptr))
    col_agg = full_agg[norm.indices]
    keep = col_agg < k
    rows = np.concatenate([full_agg[used], col_agg[keep]])
    cols_ = np.concatenate([np.flatnonzero(used), row_of[keep]])
    data = np.concatenate([
        weight[used].astype(np.float64),
        -(1.0 - restart) * norm.data[keep].astype(np.float64) * weight[norm.indices[keep]],
    ])
    # E = W^T M W = (M W)^T W, dense k x k, symmetric positive definite.
    inside = full_agg[cols_] < k
    e = np.bincount(rows[inside] * k + full_agg[cols_[inside]],
                    weights=data[inside] * weight[cols_[inside]],
                    minlength=k * k).reshape(k, k)
    e = (e + e.T) / 2
    mwt = sp.csr_array((data.astype(np.float32), (rows, cols_)), shape=(k, n))
    mwt.indices = mwt.indices.astype(np.int32)  # int32 indices: a faster product
    mwt.indptr = mwt.indptr.astype(np.int32)
    return _Coarse(full_agg, weight, mwt, np.linalg.inv(e).astype(np.float32))


@dataclass
class _Ties:
    """Person-to-person ties in CSR form (both directions, person-local indices)."""

    indptr: np.ndarray
    neighbour: np.ndarray
    weight: np.ndarray
    at: np.ndarray  # int64 microseconds since the epoch


@dataclass(eq=False)
class CommunityGraph:
    """The community graph as of a time, tagged with the store version it was built from.

    Build it with :func:`build_community_graph`; do not fill the fields by hand.

    Attributes
    ----------
    nodes : NodeIndex
        The explicit node index (shared by every snapshot of the same load).
    edges : polars.DataFrame
        The dated edge table ``src, dst`` (global positions, Int32), ``weight`` (Float32),
        ``kind`` (Enum of :data:`EDGE_KINDS`), ``at`` (UTC, null for undated edges), one row
        per undirected edge, holding only edges dated before ``as_of``. It contains
        lived-experience edges: never log it.
    persons : polars.DataFrame
        ``person_id, area_id, joined_at, consent_matching`` in node order.
    groups, missions : polars.DataFrame
        ``group_id, created_at``; ``mission_id, client_id, need_type, area_id, created_at``,
        in node order.
    outcomes : polars.DataFrame
        Verified outcomes measured before ``as_of``, one row per person credited (a group's
        outcome credits each member who had joined before it was measured):
        ``person`` (person-local index), ``mission_id, need_type, success, measured_at``.
    version : int
        ``store.version()`` when the store was read.
    as_of : datetime or None
        Only what existed strictly before ``as_of`` is in the graph (None: everything).
    cache_size : int
        Most PPR results (one per seed set and variant) kept in the LRU cache.
    seed_cache_mb : float
        Memory bound of the single-seed solves kept to compose PPR results from (float32
        over every node: 0.4 MB each at 100k persons). 0 turns the decomposition off:
        every seed set is then solved on its own.
    """

    nodes: NodeIndex
    edges: pl.DataFrame
    persons: pl.DataFrame
    groups: pl.DataFrame
    missions: pl.DataFrame
    outcomes: pl.DataFrame
    version: int
    as_of: datetime | None = None
    cache_size: int = 64
    seed_cache_mb: float = 256.0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _operators: dict = field(default_factory=dict, repr=False)
    _ties: _Ties | None = field(default=None, repr=False)
    _members: tuple | None = field(default=None, repr=False)
    _ppr: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _seeds: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _stats: dict = field(
        default_factory=lambda: {"hits": 0, "misses": 0, "last_iterations": 0,
                                 "seed_hits": 0, "seed_misses": 0}, repr=False
    )

    def __repr__(self) -> str:
        return (f"CommunityGraph(nodes={len(self.nodes)}, edges={self.edges.height}, "
                f"version={self.version}, as_of={self.as_of})")

    # -- snapshots and tags

    def snapshot(self, as_of: datetime) -> CommunityGraph:
        """The graph as of an earlier time, from this one, without reading the store.

        Filters the dated edge table and the outcomes; the CSR matrices are rebuilt on
        first use. ``as_of`` may not be later than this graph's ``as_of``.
        """
        as_of = _utc(as_of)
        if self.as_of is not None and as_of > self.as_of:
            raise ValueError(f"a graph as of {self.as_of} cannot be seen as of {as_of}")
        edges = self.edges.filter(pl.col("at").is_null() | (pl.col("at") < as_of))
        outcomes = self.outcomes.filter(pl.col("measured_at") < as_of)
        return CommunityGraph(
            nodes=self.nodes, edges=edges, persons=self.persons, groups=self.groups,
            missions=self.missions, outcomes=outcomes, version=self.version, as_of=as_of,
            cache_size=self.cache_size, seed_cache_mb=self.seed_cache_mb,
        )

    def is_stale(self, store: Store) -> bool:
        """True when the store has been written to since this graph was built."""
        return store.version() != self.version

    @property
    def present(self) -> np.ndarray:
        """Boolean per node: did it exist before ``as_of``? (areas, needs, clients: always)."""
        out = np.ones(len(self.nodes), dtype=bool)
        if self.as_of is None:
            return out
        for kind, frame, col in (("person", self.persons, "joined_at"),
                                 ("group", self.groups, "created_at"),
                                 ("mission", self.missions, "created_at")):
            out[self.nodes.slice(kind)] = (frame[col] < self.as_of).to_numpy()
        return out

    def edge_counts(self) -> dict[str, int]:
        """Number of edges of each kind (every kind listed, zero included)."""
        counts = dict.fromkeys(EDGE_KINDS, 0)
        for kind, n in self.edges.group_by("kind").len().iter_rows():
            counts[kind] = n
        return counts

    def person_index(self, person_ids: Iterable[str]) -> np.ndarray:
        """Person-local positions (into a proximity vector) of ``person_ids``."""
        return self.nodes.local("person", person_ids)

    def mission(self, mission_id: str) -> dict:
        """The mission's ``area_id``, ``need_type`` and ``client_id``."""
        pos = self.nodes.local("mission", [mission_id])[0]
        row = self.missions.row(int(pos), named=True)
        return {k: row[k] for k in ("area_id", "need_type", "client_id")}

    # -- matrices

    def adjacency(self, lived_experience: bool = False) -> sp.csr_array:
        """Symmetric weighted adjacency (float32 CSR over :attr:`nodes`, cached).

        Parallel edges (two tie kinds, several outcomes) are summed. With
        ``lived_experience=True`` it holds special-category data.
        """
        key = ("adjacency", bool(lived_experience))
        if key not in self._operators:
            with self._lock:
                if key not in self._operators:
                    n = len(self.nodes)
                    self._operators[key] = self._csr(lived_experience, np.arange(n))
        return self._operators[key]

    def _csr(self, lived_experience: bool, position: np.ndarray) -> sp.csr_array:
        """The symmetric adjacency with node ``i`` at row ``position[i]``."""
        edges = self.edges
        if not lived_experience:
            edges = edges.filter(pl.col("kind") != "lived_experience")
        src = position[edges["src"].to_numpy()]
        dst = position[edges["dst"].to_numpy()]
        w = edges["weight"].to_numpy()
        n = len(self.nodes)
        adj = sp.csr_array((np.concatenate([w, w]),
                            (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                           shape=(n, n), dtype=np.float32)
        adj.sum_duplicates()
        adj.indices = adj.indices.astype(np.int32, copy=False)
        adj.indptr = adj.indptr.astype(np.int32, copy=False)
        return adj

    def operator(self, lived_experience: bool = False) -> _Operator:
        """The precomputed PPR operator of one variant (built once per graph)."""
        key = ("operator", bool(lived_experience))
        op = self._operators.get(key)
        if op is None:
            with self._lock:
                op = self._operators.get(key)
                if op is None:
                    op = self._operators[key] = self._build_operator(lived_experience)
        return op

    def _build_operator(self, lived_experience: bool) -> _Operator:
        n = len(self.nodes)
        aggregates = self._aggregates()
        order = np.argsort(np.where(aggregates >= 0, aggregates, n), kind="stable")
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        adj = self._csr(lived_experience, position)
        deg = np.asarray(adj.sum(axis=1)).ravel()
        dangling = deg <= 0
        inv_sqrt = np.zeros(n, dtype=np.float32)
        inv_sqrt[~dangling] = 1.0 / np.sqrt(deg[~dangling])
        row_of = np.repeat(np.arange(n, dtype=np.int32), np.diff(adj.indptr))
        adj.data *= inv_sqrt[row_of] * inv_sqrt[adj.indices]
        op = _Operator(order, position, adj, inv_sqrt, dangling, aggregates[order])
        op.coarse(RESTART)  # per graph, not per request
        return op

    def _aggregates(self) -> np.ndarray:
        """Coarse groups for the PPR solver: an area with its residents and missions; each
        need type and each client alone; groups in none (see :class:`_Coarse`)."""
        nodes = self.nodes
        agg = np.full(len(nodes), -1, dtype=np.int64)
        n_areas = nodes.size("area")
        agg[nodes.slice("area")] = np.arange(n_areas)
        if n_areas:
            agg[nodes.slice("person")] = nodes.local("area", self.persons["area_id"])
            agg[nodes.slice("mission")] = nodes.local("area", self.missions["area_id"])
        nxt = n_areas
        for kind in ("need", "client"):
            agg[nodes.slice(kind)] = np.arange(nxt, nxt + nodes.size(kind))
            nxt += nodes.size(kind)
        return agg

    def tie_table(self) -> _Ties:
        """Ties between persons in CSR form, with their weights and dates (cached)."""
        if self._ties is None:
            with self._lock:
                if self._ties is None:
                    self._ties = self._build_ties()
        return self._ties

    def _build_ties(self) -> _Ties:
        ties = self.edges.filter(pl.col("kind") == "tie")
        a = ties["src"].to_numpy().astype(np.int64)
        b = ties["dst"].to_numpy().astype(np.int64)
        w = ties["weight"].to_numpy()
        at = _micros(ties["at"])
        src = np.concatenate([a, b])
        order = np.argsort(src, kind="stable")
        n_persons = self.nodes.size("person")
        counts = np.bincount(src, minlength=n_persons)
        indptr = np.zeros(n_persons + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return _Ties(indptr, np.concatenate([b, a])[order], np.concatenate([w, w])[order],
                     np.concatenate([at, at])[order])

    def _membership(self) -> tuple[np.ndarray, np.ndarray]:
        """Members per group in CSR form: ``(indptr, person-local positions)`` (cached)."""
        if self._members is None:
            with self._lock:
                if self._members is None:
                    mem = self.edges.filter(pl.col("kind") == "membership")
                    g = mem["dst"].to_numpy().astype(np.int64) - self.nodes.start("group")
                    p = mem["src"].to_numpy().astype(np.int64)
                    order = np.lexsort((p, g))
                    counts = np.bincount(g, minlength=self.nodes.size("group"))
                    indptr = np.zeros(self.nodes.size("group") + 1, dtype=np.int64)
                    np.cumsum(counts, out=indptr[1:])
                    self._members = (indptr, p[order])
        return self._members

    def members(self, group_id: str) -> np.ndarray:
        """Person-local positions of the group's members as of ``as_of``."""
        indptr, persons = self._membership()
        pos = self.nodes.local("group", [group_id])[0]
        return persons[indptr[pos]: indptr[pos + 1]]

    # -- networkx, for small analyses and tests

    def to_networkx(self, lived_experience: bool = True):  # noqa: ANN201
        """A ``networkx.Graph`` of this graph, for small analyses and tests.

        Nodes are the :class:`NodeIndex` keys (with ``kind`` and ``present`` attributes);
        parallel edges are merged as in the CSR (weights summed, ``kinds`` listed). Builds
        Python objects per edge: do not call it on a city.
        """
        import networkx as nx

        g = nx.Graph()
        present = self.present
        for pos, key in enumerate(self.nodes.keys()):
            g.add_node(key, kind=key[0], present=bool(present[pos]))
        keys = self.nodes.keys()
        edges = self.edges
        if not lived_experience:
            edges = edges.filter(pl.col("kind") != "lived_experience")
        for src, dst, w, kind in edges.select("src", "dst", "weight", "kind").iter_rows():
            u, v = keys[src], keys[dst]
            if g.has_edge(u, v):
                g[u][v]["weight"] += float(w)
                g[u][v]["kinds"].append(kind)
            else:
                g.add_edge(u, v, weight=float(w), kinds=[kind])
        return g

    # -- the PPR cache

    def cache_info(self) -> dict:
        """PPR cache statistics.

        ``hits``, ``misses``, ``size`` and ``max_size`` are those of the results (one per
        seed set and variant); ``seed_hits``, ``seed_misses``, ``seed_size``,
        ``seed_max_size`` and ``seed_mb`` those of the single-seed solves they are composed
        from; ``last_iterations`` is the last solve's number of iterations.
        """
        with self._lock:
            return {**self._stats, "size": len(self._ppr), "max_size": self.cache_size,
                    "seed_size": len(self._seeds), "seed_max_size": self._seed_capacity(),
                    "seed_mb": round(sum(v.nbytes for v in self._seeds.values()) / 2**20, 1)}

    def clear_cache(self) -> None:
        with self._lock:
            self._ppr.clear()
            self._seeds.clear()

    def warm(
        self,
        seeds: Iterable[NodeKey],
        lived_experience: bool = False,
        *,
        restart: float = RESTART,
        tol: float = 1e-4,
        max_iter: int = 100,
    ) -> int:
        """Solve and cache the single-seed PPR of each of ``seeds`` ahead of requests.

        A later :func:`personalized_pagerank` (same ``lived_experience``, ``restart``,
        ``tol`` and ``max_iter``) whose seeds are all warm costs a vector sum instead of a
        solve. Seeds already cached are skipped, and no more seeds are solved than the
        single-seed cache holds (``seed_cache_mb``), the first ones given first, so that a
        warm-up never evicts what it warmed. Each seed is cached as soon as it is solved,
        and the solves run outside the graph's lock: safe to call from a background thread
        while requests are served.

        Parameters
        ----------
        seeds : iterable of node keys
            Such as ``("area", "A01")`` or ``("need", "drug_outreach")``, most useful first.
        lived_experience : bool, default False
            The variant to warm (call once per variant).
        restart, tol, max_iter
            As in :func:`personalized_pagerank`.

        Returns
        -------
        int
            The number of seeds solved (0 when all were warm).
        """
        if not 0 < restart < 1:
            raise ValueError("restart must be in (0, 1)")
        keys = list(dict.fromkeys(tuple(k) for k in seeds))
        for key in keys:
            self.nodes[key]  # NotFoundError on an unknown seed, before any solve
        variant = (bool(lived_experience), float(restart), float(tol), int(max_iter))
        with self._lock:
            missing = [k for k in keys if (k, *variant) not in self._seeds]
            missing = missing[: self._seed_capacity()]
        for key in missing:
            self._solve_seeds([key], *variant)
        return len(missing)

    def _seed_capacity(self) -> int:
        """How many single-seed vectors ``seed_cache_mb`` holds."""
        if self.seed_cache_mb <= 0 or len(self.nodes) == 0:
            return 0
        return int(self.seed_cache_mb * 2**20 // (4 * len(self.nodes)))

    def _seed_vectors(self, keys: Sequence[NodeKey], lived_experience: bool, restart: float,
                      tol: float, max_iter: int) -> list[np.ndarray]:
        """The single-seed solutions of ``keys`` (node order, read-only), from the cache or
        solved together in one call."""
        variant = (lived_experience, restart, tol, max_iter)
        found: dict[NodeKey, np.ndarray] = {}
        with self._lock:
            for key in keys:
                hit = self._seeds.get((key, *variant))
                if hit is not None:
                    self._seeds.move_to_end((key, *variant))
                    found[key] = hit
            self._stats["seed_hits"] += len(found)
        missing = [k for k in keys if k not in found]
        if missing:
            found.update(zip(missing, self._solve_seeds(missing, *variant), strict=True))
        return [found[k] for k in keys]

    def _solve_seeds(self, keys: Sequence[NodeKey], lived_experience: bool, restart: float,
                     tol: float, max_iter: int) -> list[np.ndarray]:
        """Solve the single-seed PPR of each key in one :func:`_solve_ppr` call, and cache."""
        op = self.operator(lived_experience)
        s = np.zeros((len(self.nodes), len(keys)), dtype=np.float32)
        s[op.position[self.nodes.positions(keys)], np.arange(len(keys))] = 1.0
        x, iterations = _solve_ppr(op, s, restart, tol, max_iter)
        vectors = []
        for j in range(len(keys)):
            v = np.ascontiguousarray(x[op.position, j])  # back to node order, one per seed
            v.flags.writeable = False
            vectors.append(v)
        with self._lock:
            self._stats["last_iterations"] = iterations
            self._stats["seed_misses"] += len(keys)
            capacity = self._seed_capacity()
            for key, v in zip(keys, vectors, strict=True):
                self._seeds[(key, lived_experience, restart, tol, max_iter)] = v
            while len(self._seeds) > capacity:
                self._seeds.popitem(last=False)
        return vectors


# --------------------------------------------------------------------------- building


def build_community_graph(
    store: Store,
    as_of: datetime | None = None,
    *,
    weights: EdgeWeights | None = None,
    lived_experience_needs: Mapping[str, Sequence[str]] | None = None,
) -> CommunityGraph:
    """Read the store and build the community graph as of ``as_of``.

    Parameters
    ----------
    store : Store
        The community store.
    as_of : datetime, optional
        Keep only what existed strictly before this aware time. None keeps everything. To
        get many snapshots, build once without ``as_of`` and call
        :meth:`CommunityGraph.snapshot`.
    weights : EdgeWeights, optional
        Weights of the edges other than ties.
    lived_experience_needs : mapping, optional
        Lived-experience tag -> need types it links to (default
        :data:`LIVED_EXPERIENCE_NEEDS`).

    Returns
    -------
    CommunityGraph
        Tagged with ``store.version()`` as read before the data (so that a write racing the
        build makes the graph look stale, never fresh).

    Examples
    --------
    >>> graph = build_community_graph(store)                    # doctest: +SKIP
    >>> graph.snapshot(datetime(2025, 1, 1, tzinfo=UTC))        # doctest: +SKIP
    """
    graph = community_graph_from_frames(load_frames(store), weights=weights,
                                        lived_experience_needs=lived_experience_needs)
    return graph if as_of is None else graph.snapshot(as_of)


def community_graph_from_frames(
    frames: CommunityFrames,
    *,
    weights: EdgeWeights | None = None,
    lived_experience_needs: Mapping[str, Sequence[str]] | None = None,
) -> CommunityGraph:
    """The community graph of already-loaded frames (everything in them, undated cut).

    The features and the serving path load the store once (:func:`graph.load_frames`) and
    build the graph from the same frames; call :meth:`CommunityGraph.snapshot` for a time.
    """
    weights = weights or EdgeWeights()
    le_needs = LIVED_EXPERIENCE_NEEDS if lived_experience_needs is None else lived_experience_needs
    verified = frames.outcomes.filter(pl.col("status") == "verified")
    tables = {
        "areas": frames.areas.select("area_id"),
        "links": frames.area_links.select("area_a", "area_b"),
        "persons": frames.persons.select("person_id", "area_id", "joined_at",
                                         "lived_experience", "consent_lived_experience",
                                         "consent_matching"),
        "ties": frames.ties.select("person_a", "person_b", "weight", "created_at"),
        "groups": frames.groups.select("group_id", "created_at"),
        "members": frames.group_members.select("group_id", "person_id", "joined_at"),
        "clients": frames.clients.select("client_id"),
        "missions": frames.missions.select("mission_id", "client_id", "need_type", "area_id",
                                           "created_at"),
        "needs": frames.vocabulary.filter(pl.col("kind") == "need_type").select("value"),
        "outcomes": verified.select("person_id", "group_id", "mission_id", "measured_at",
                                    "success"),
    }
    return _assemble(tables, frames.version, weights, le_needs)


def _edge_frame(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    return frame.select(
        pl.col("src").cast(pl.Int32), pl.col("dst").cast(pl.Int32),
        pl.col("weight").cast(pl.Float32), pl.lit(kind, dtype=_EDGE_KIND).alias("kind"),
        pl.col("at").cast(_TIME),
    )


def _assemble(t: dict[str, pl.DataFrame], version: int, w: EdgeWeights,
              le_needs: Mapping[str, Sequence[str]]) -> CommunityGraph:
    persons = t["persons"].sort("person_id")
    groups = t["groups"].sort("group_id")
    missions = t["missions"].sort("mission_id")
    needs = (set(NEED_TYPES) | set(t["needs"]["value"]) | set(missions["need_type"])
             | {n for ns in le_needs.values() for n in ns})
    nodes = NodeIndex({
        "person": persons["person_id"], "group": groups["group_id"],
        "area": t["areas"]["area_id"], "need": needs, "client": t["clients"]["client_id"],
        "mission": missions["mission_id"],
    })
    pidx = nodes.frame("person").rename({"id": "person_id", "node": "p"})
    pidx = pidx.join(persons.select("person_id", pl.col("joined_at").alias("p_at")),
                     on="person_id")
    gidx = nodes.frame("group").rename({"id": "group_id", "node": "g"}).join(
        groups.select("group_id", pl.col("created_at").alias("g_at")), on="group_id")
    aidx = nodes.frame("area").rename({"id": "area_id", "node": "a"})
    nidx = nodes.frame("need").rename({"id": "need_type", "node": "n"})
    cidx = nodes.frame("client").rename({"id": "client_id", "node": "c"})
    midx = nodes.frame("mission").rename({"id": "mission_id", "node": "m"})

    parts = []
    # residence
    res = persons.join(pidx, on="person_id").join(aidx, on="area_id")
    parts.append(_edge_frame(res.select(
        src="p", dst="a", weight=pl.lit(w.residence), at="joined_at"), "residence"))
    # ties: a tie cannot predate either person's arrival
    ties = (t["ties"]
            .join(pidx.rename({"person_id": "person_a", "p": "src", "p_at": "at_a"}),
                  on="person_a")
            .join(pidx.rename({"person_id": "person_b", "p": "dst", "p_at": "at_b"}),
                  on="person_b"))
    parts.append(_edge_frame(ties.select(
        "src", "dst", "weight", at=pl.max_horizontal("created_at", "at_a", "at_b")), "tie"))
    # membership
    mem = t["members"].join(pidx, on="person_id").join(gidx, on="group_id")
    parts.append(_edge_frame(mem.select(
        src="p", dst="g", weight=pl.lit(w.membership),
        at=pl.max_horizontal("joined_at", "p_at", "g_at")), "membership"))
    # lived experience -> need type: only with consent (the schema enforces it too)
    tag_map = pl.DataFrame(
        [(tag, need) for tag, ns in le_needs.items() for need in ns]
        + [(need, need) for need in needs],
        schema={"tag": pl.String, "need_type": pl.String}, orient="row").unique()
    le = (persons.filter(pl.col("consent_lived_experience").fill_null(False)
                         & pl.col("lived_experience").is_not_null())
          .select("person_id", "joined_at", tag=pl.col("lived_experience").str.split(";"))
          .explode("tag")
          .join(tag_map, on="tag")
          .unique(["person_id", "need_type"])
          .join(pidx, on="person_id").join(nidx, on="need_type"))
    parts.append(_edge_frame(le.select(
        src="p", dst="n", weight=pl.lit(w.lived_experience), at="joined_at"),
        "lived_experience"))
    # area adjacency: undated
    links = (t["links"].join(aidx.rename({"area_id": "area_a", "a": "src"}), on="area_a")
             .join(aidx.rename({"area_id": "area_b", "a": "dst"}), on="area_b"))
    parts.append(_edge_frame(links.select(
        "src", "dst", weight=pl.lit(w.adjacency), at=pl.lit(None, dtype=_TIME)), "adjacency"))
    # missions
    mis = missions.join(midx, on="mission_id")
    for kind, frame, col in (("mission_area", aidx, "a"), ("mission_need", nidx, "n"),
                             ("mission_client", cidx, "c")):
        m = mis.join(frame, on=frame.columns[0])
        parts.append(_edge_frame(m.select(
            src="m", dst=col, weight=pl.lit(w.mission), at="created_at"), kind))
    # verified outcomes, weighted by result
    out = t["outcomes"].join(midx, on="mission_id").join(
        missions.select("mission_id", "need_type"), on="mission_id")
    out = out.join(pidx.select("person_id", "p"), on="person_id", how="left").join(
        gidx.select("group_id", "g"), on="group_id", how="left")
    parts.append(_edge_frame(out.select(
        src=pl.coalesce("p", "g"), dst="m",
        weight=pl.when("success").then(w.outcome_success).otherwise(w.outcome_failure),
        at="measured_at").filter(pl.col("src").is_not_null()), "outcome"))
    edges = pl.concat(parts)

    # Outcomes credited to persons (a group's to each member who had joined before).
    person_out = out.filter(pl.col("p").is_not_null()).select(
        "p", "mission_id", "need_type", "success", "measured_at")
    group_out = (out.filter(pl.col("g").is_not_null())
                 .select("group_id", "mission_id", "need_type", "success", "measured_at")
                 .join(mem.select("group_id", "p", m_at=pl.max_horizontal(
                     "joined_at", "p_at", "g_at")), on="group_id")
                 .filter(pl.col("m_at") < pl.col("measured_at"))
                 .select("p", "mission_id", "need_type", "success", "measured_at"))
    outcomes = (pl.concat([person_out, group_out])
                .select(person=pl.col("p").cast(pl.Int32) - nodes.start("person"),
                        mission_id="mission_id", need_type="need_type",
                        success=pl.col("success").fill_null(False), measured_at="measured_at")
                .sort("person", "measured_at"))

    return CommunityGraph(
        nodes=nodes, edges=edges,
        persons=persons.select("person_id", "area_id", "joined_at", "consent_matching"),
        groups=groups.select("group_id", "created_at"),
        missions=missions.select("mission_id", "client_id", "need_type", "area_id",
                                 "created_at"),
        outcomes=outcomes, version=version, as_of=None,
    )


# ------------------------------------------------------------------------------ PPR


def mission_seeds(area_id: str, need_type: str) -> dict[NodeKey, float]:
    """The PPR seeds of a mission: its area and its need type, half each.

    >>> mission_seeds("A01", "drug_outreach")
    {('area', 'A01'): 0.5, ('need', 'drug_outreach'): 0.5}
    """
    return {("area", area_id): 0.5, ("need", need_type): 0.5}


def personalized_pagerank(
    graph: CommunityGraph,
    seeds: Mapping[NodeKey, float] | Iterable[NodeKey],
    *,
    lived_experience: bool = False,
    restart: float = RESTART,
    tol: float = 1e-4,
    max_iter: int = 100,
    use_cache: bool = True,
) -> np.ndarray:
    """Personalised PageRank from ``seeds``, over every node of the graph.

    Parameters
    ----------
    graph : CommunityGraph
    seeds : mapping of node key to weight, or iterable of node keys (equal weights)
        The restart distribution (normalised to sum to 1).
    lived_experience : bool, default False
        Walk over lived-experience edges too. The result is then derived from
        special-category data.
    restart : float, default 0.15
        Probability of jumping back to the seeds at each step (networkx's ``1 - alpha``).
    tol : float, default 1e-4
        Relative residual at which conjugate gradients stop.
    max_iter : int, default 100
    use_cache : bool, default True
        Look up and store the result in the graph's LRU cache, keyed on
        ``(seeds, version, as_of, variant, restart, tol, max_iter)``, and compose it from
        cached single-seed solves (solving the seeds not cached yet). False solves this
        seed distribution on its own and caches nothing.

    Returns
    -------
    numpy.ndarray
        float32 scores over :attr:`CommunityGraph.nodes`, summing to 1; read-only (it may
        be the cached array). ``scores[graph.nodes.slice("person")]`` are the persons'.

    Notes
    -----
    A composed result is as accurate as a joint solve: each single-seed solve stops at a
    relative residual of ``tol``, and single seeds have disjoint right-hand sides, so
    composing ``k`` seeds leaves a relative residual of at most about ``sqrt(k) * tol``. At
    100k persons, a mission's composed vector and its joint solve differ by at most 1.3e-5
    of the largest score (``bench/bench_graph.py``, 20 missions, both variants).
    """
    if not 0 < restart < 1:
        raise ValueError("restart must be in (0, 1)")
    items = seeds.items() if isinstance(seeds, Mapping) else ((k, 1.0) for k in seeds)
    merged: dict[NodeKey, float] = {}
    for key, weight in items:
        if weight < 0:
            raise ValueError("seed weights must be non-negative")
        merged[tuple(key)] = merged.get(tuple(key), 0.0) + float(weight)
    total = sum(merged.values())
    if not merged or total <= 0:
        raise ValueError("personalised PageRank needs at least one seed of positive weight")
    positions = {k: graph.nodes[k] for k in merged}  # NotFoundError on an unknown seed
    cache_key = (tuple(sorted(merged.items())), graph.version, graph.as_of,
                 bool(lived_experience), float(restart), float(tol), int(max_iter))
    if use_cache:
        with graph._lock:
            hit = graph._ppr.get(cache_key)
            if hit is not None:
                graph._ppr.move_to_end(cache_key)
                graph._stats["hits"] += 1
                return hit
    weights = {k: merged[k] / total for k in sorted(merged) if merged[k] > 0}
    variant = (bool(lived_experience), float(restart), float(tol), int(max_iter))
    if use_cache and graph._seed_capacity() > 0:
        x = _compose(graph, weights, graph._seed_vectors(list(weights), *variant),
                     bool(lived_experience), float(restart))
    else:
        op = graph.operator(lived_experience)
        s = np.zeros(len(graph.nodes), dtype=np.float32)
        for key, weight in weights.items():
            s[op.position[positions[key]]] += weight
        x, iterations = _solve_ppr(op, s, restart, tol, max_iter)
        x = x[op.position]  # back to node order
        x.flags.writeable = False
        with graph._lock:
            graph._stats["last_iterations"] = iterations
    if use_cache:
        with graph._lock:
            graph._stats["misses"] += 1
            graph._ppr[cache_key] = x
            while len(graph._ppr) > graph.cache_size:
                graph._ppr.popitem(last=False)
    return x


def _compose(graph: CommunityGraph, weights: Mapping[NodeKey, float],
             vectors: Sequence[np.ndarray], lived_experience: bool,
             restart: float) -> np.ndarray:
    """The PPR of a seed distribution from the single-seed solutions of its seeds.

    ``x(s) = sum_i w_i m_i x_i / sum_i w_i m_i``, where ``m_i`` is the mass the walk from
    seed ``i`` keeps before a walker on a node without edges is returned to the seeds: 1
    for a seed with edges, ``restart`` for one without (see the module's docstring).
    """
    if len(vectors) == 1:
        return vectors[0]  # already normalised: the cached array itself
    op = graph.operator(lived_experience)
    alone = op.dangling[op.position[graph.nodes.positions(weights)]]
    coef = np.array(list(weights.values())) * np.where(alone, restart, 1.0)
    coef /= coef.sum()
    x = vectors[0] * np.float32(coef[0])
    for c, v in zip(coef[1:], vectors[1:], strict=True):
        x += np.float32(c) * v
    x /= x.sum(dtype=np.float64)
    x.flags.writeable = False
    return x


def _solve_ppr(op: _Operator, s: np.ndarray, restart: float, tol: float,
               max_iter: int) -> tuple[np.ndarray, int]:
    """Deflated conjugate gradients on ``(I - (1-r) N) y = r D^-1/2 s``; ``x = D^1/2 y``
    (``s`` and the result in the operator's order).

    Deflated CG (Saad, Yeung, Erhel and Guyomarc'h, 2000) starts from the coarse solution
    and keeps every search direction M-orthogonal to the coarse space (:class:`_Coarse`).
    ``s`` is one restart distribution, or one per column (an ``n x k`` array), each solved
    on its own (one ``n x 16`` sparse product cost as much as 16 vector products on the
    simulated city of 100k persons: blocks bring nothing). Returns the scores (each column
    summing to 1) and the number of iterations (one sparse product each; the most of any
    column).
    """
    if s.ndim == 1:
        return _cg(op, s, restart, tol, max_iter)
    x = np.empty(s.shape, dtype=np.float32)
    iterations = 0
    for j in range(s.shape[1]):
        x[:, j], it = _cg(op, np.ascontiguousarray(s[:, j]), restart, tol, max_iter)
        iterations = max(iterations, it)
    return x, iterations


def _cg(op: _Operator, s: np.ndarray, restart: float, tol: float,
        max_iter: int) -> tuple[np.ndarray, int]:
    """:func:`_solve_ppr` of one restart distribution ``s`` (a vector)."""
    damp = np.float32(1.0 - restart)
    norm = op.normalised
    coarse = op.coarse(restart)
    b = np.float32(restart) * op.inv_sqrt_degree * s
    if coarse is None:
        y = np.zeros_like(b)
        r = b.copy()
        p = r.copy()
    else:
        mu = coarse.e_inv @ coarse.restrict(b).astype(np.float32)
        y = coarse.prolong(mu)
        r = b - coarse.mwt.T @ mu  # b - M W mu
        p = r - coarse.prolong(coarse.e_inv @ (coarse.mwt @ r))
    rs = float(r @ r)
    stop = (max(tol, _TOL_FLOOR) ** 2) * float(b @ b)
    best, best_y = rs, None  # None: the current iterate is the best
    it = 0
    while rs > stop and it < max_iter:
        it += 1
        ap = norm @ p
        ap *= -damp
        ap += p
        step = np.float32(rs / float(p @ ap))
        y += step * p
        r -= step * ap
        rs_new = float(r @ r)
        if rs_new < best:
            best, best_y = rs_new, None
        elif best_y is None:
            best_y = y - step * p  # the iterate before this step was the best so far
        if rs_new <= stop or rs_new > 1e4 * best:
            break  # converged, or float32 round-off took over: keep the best iterate
        p *= np.float32(rs_new / rs)
        p += r
        if coarse is not None:
            p -= coarse.prolong(coarse.e_inv @ (coarse.mwt @ r))
        rs = rs_new
    if best_y is not None:
        y = best_y
    x = np.zeros_like(y)
    live = ~op.dangling
    x[live] = y[live] / op.inv_sqrt_degree[live]
    # A walker on a node without edges restarts: its mass returns to the seeds, which
    # rescales the solution (networkx's treatment of dangling nodes).
    x[op.dangling] = np.float32(restart) * s[op.dangling]
    np.maximum(x, 0, out=x)
    x /= x.sum(dtype=np.float64)
    return x, it


def proximity(graph: CommunityGraph, area_id: str, need_type: str) -> np.ndarray:
    """The signal ``proximity``: PPR from the mission's area and need type over persons,
    on the graph without lived-experience edges (not special-category).

    Returns a read-only float32 array aligned with ``graph.nodes.ids("person")``.
    """
    x = personalized_pagerank(graph, mission_seeds(area_id, need_type))
    return x[graph.nodes.slice("person")]


def proximity_le(graph: CommunityGraph, area_id: str, need_type: str) -> np.ndarray:
    """The signal ``proximity_le``: as :func:`proximity`, over the graph with
    lived-experience edges. Derived from special-category data: use it only as an
    aggregate score, never print it with a person's id.
    """
    x = personalized_pagerank(graph, mission_seeds(area_id, need_type), lived_experience=True)
    return x[graph.nodes.slice("person")]


# ---------------------------------------------------------------------- tie signals


def _micros(times: pl.Series) -> np.ndarray:
    return times.dt.epoch("us").fill_null(np.iinfo(np.int64).min).to_numpy().astype(np.int64)


def _as_of_micros(graph: CommunityGraph, as_of: datetime | None) -> int:
    if as_of is None:
        as_of = graph.as_of
    else:
        as_of = _utc(as_of)
        if graph.as_of is not None and as_of > graph.as_of:
            raise ValueError(f"a graph as of {graph.as_of} cannot be seen as of {as_of}")
    if as_of is None:
        return _NEVER
    return int(pl.Series([as_of], dtype=_TIME).dt.epoch("us")[0])


def _gather(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the CSR entries of ``rows`` and the row (0..len(rows)) of each."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts[owner] + offsets, owner


def ties_succeeded(
    graph: CommunityGraph,
    person_ids: Sequence[str],
    need_type: str | Iterable[str],
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """For each candidate, how many of their ties succeeded on this need type before t.

    A tie counts when it existed before t and the tied person had a verified successful
    outcome on ``need_type`` (or any of several need types) measured before t. Two ties of
    different kinds with the same person count once, with the larger weight.

    Parameters
    ----------
    graph : CommunityGraph
    person_ids : sequence of str
        The candidates.
    need_type : str or iterable of str
    as_of : datetime, optional
        t; defaults to the graph's ``as_of``, and may not be later.

    Returns
    -------
    polars.DataFrame
        ``person_id``, ``ties_succeeded`` (UInt32), ``ties_succeeded_weight`` (Float64),
        one row per candidate in the order given.
    """
    needs = [need_type] if isinstance(need_type, str) else list(need_type)
    cutoff = _as_of_micros(graph, as_of)
    cands = graph.person_index(person_ids)
    first = _first_success(graph, needs)
    ties = graph.tie_table()
    pos, owner = _gather(ties.indptr, cands)
    nbr = ties.neighbour[pos]
    keep = (ties.at[pos] < cutoff) & (first[nbr] < cutoff)
    owner, nbr, w = owner[keep], nbr[keep], ties.weight[pos][keep]
    # one count per (candidate, tied person): the largest weight among tie kinds
    order = np.lexsort((-w, nbr, owner))
    owner, nbr, w = owner[order], nbr[order], w[order]
    first_of_pair = np.ones(len(owner), dtype=bool)
    first_of_pair[1:] = (owner[1:] != owner[:-1]) | (nbr[1:] != nbr[:-1])
    owner, w = owner[first_of_pair], w[first_of_pair]
    return pl.DataFrame({
        "person_id": pl.Series(list(person_ids), dtype=pl.String),
        "ties_succeeded": np.bincount(owner, minlength=len(cands)).astype(np.uint32),
        "ties_succeeded_weight": np.bincount(owner, weights=w.astype(np.float64),
                                             minlength=len(cands)),
    })


def _first_success(graph: CommunityGraph, needs: list[str]) -> np.ndarray:
    """Per person, the time (us) of their first verified success on ``needs``."""
    done = graph.outcomes.filter(pl.col("success") & pl.col("need_type").is_in(needs))
    first = done.group_by("person").agg(pl.col("measured_at").min())
    out = np.full(graph.nodes.size("person"), _NEVER, dtype=np.int64)
    out[first["person"].to_numpy()] = _micros(first["measured_at"])
    return out


# ---------------------------------------------------------------------- group signals


def group_members(graph: CommunityGraph, group_id: str) -> np.ndarray:
    """Person-local positions of the group's members as of the graph's ``as_of``.

    The members' combined proximity is ``proximity(graph, ...)[group_members(graph, g)]
    .sum()``.
    """
    return graph.members(group_id)


def _group_table(graph: CommunityGraph, groups: np.ndarray) -> tuple[np.ndarray, ...]:
    """Size, cohesion and reach of the groups at group-local positions ``groups``."""
    indptr, persons = graph._membership()
    n_persons = graph.nodes.size("person")
    pos, row = _gather(indptr, groups)
    member = persons[pos]  # row[i] is the group (0..len(groups)) of member[i]
    size = np.bincount(row, minlength=len(groups))
    ties = graph.tie_table()
    tpos, which = _gather(ties.indptr, member)
    g = row[which]
    a, b, w = member[which], ties.neighbour[tpos], ties.weight[tpos]
    # Is the tied person a member of the same group?
    inside = np.isin(g * n_persons + b, row * n_persons + member)
    out = np.unique(g[~inside] * n_persons + b[~inside])
    reach = np.bincount(out // n_persons, minlength=len(groups))
    # Weight of a pair = the largest weight among its tie kinds (ties weigh at most 1);
    # each pair is seen from both ends, which the unique pair key folds.
    g, lo, hi, w = g[inside], np.minimum(a, b)[inside], np.maximum(a, b)[inside], w[inside]
    order = np.lexsort((-w, hi, lo, g))
    g, lo, hi, w = g[order], lo[order], hi[order], w[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = (g[1:] != g[:-1]) | (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    total = np.bincount(g[first], weights=w[first], minlength=len(groups))
    pairs = size * (size - 1) / 2
    cohesion = np.divide(total, pairs, out=np.zeros(len(groups)), where=pairs > 0)
    return size, cohesion, reach


def group_cohesion(graph: CommunityGraph, group_id: str) -> float:
    """Weighted density of ties among the group's members, in [0, 1].

    The sum over member pairs of the pair's tie weight (the largest of its tie kinds, 0
    without a tie) divided by the number of pairs. 0 for a group of fewer than 2.
    """
    return float(_group_table(graph, graph.nodes.local("group", [group_id]))[1][0])


def group_reach(graph: CommunityGraph, group_id: str) -> int:
    """The members' combined reach: how many persons (members excluded) are tied to at
    least one member, i.e. the size of the union of their tie neighbourhoods."""
    return int(_group_table(graph, graph.nodes.local("group", [group_id]))[2][0])


def group_signals(graph: CommunityGraph, group_ids: Iterable[str] | None = None) -> pl.DataFrame:
    """``group_id, group_size, group_cohesion, group_reach`` for groups (default: all
    groups present at the graph's ``as_of``), computed for all of them at once."""
    if group_ids is None:
        present = graph.present[graph.nodes.slice("group")]
        group_ids = graph.nodes.ids("group")[present].tolist()
    group_ids = list(group_ids)
    size, cohesion, reach = _group_table(graph, graph.nodes.local("group", group_ids))
    return pl.DataFrame({
        "group_id": pl.Series(group_ids, dtype=pl.String),
        "group_size": pl.Series(size, dtype=pl.UInt32),
        "group_cohesion": pl.Series(cohesion, dtype=pl.Float64),
        "group_reach": pl.Series(reach, dtype=pl.UInt32),
    })


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: every time must carry a zone")
    return when.astimezone(UTC)
