"""Role x endpoint matrix over every route of the app, found at test time.

:data:`EXPECTED` declares, for each route, which scopes may call it (``admin`` passes
everywhere) or that it is public. The test enumerates the app's routes: a route missing
from the table fails it, and so does a route of the table the app no longer has. Each route
is then called with every scope's key and with none:

- no key: 401 (public routes: 200);
- a scope not in the table: 403 (``admin`` too on the special-category reads of
  :data:`NOT_ADMIN`);
- a scope in the table: neither 401 nor 403;
- the ``client`` scope on a route about a mission (by mission, assignment, outcome or
  client id): its own mission's ids pass, another client's are 404 (ids are not probed).

Bodies are empty objects: a route that needs fields answers 422 to an allowed caller, which
is past the scope check (FastAPI resolves the key and scope before validating the body).
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.routing import Route

from graph import Tie, VettingRecord

pytest_plugins = ["support.api"]

PUBLIC = "public"
SCOPES = ("platform", "engineer", "client", "data", "admin")
ENG, PLAT, CLIENT, DATA = "engineer", "platform", "client", "data"

# (method, path) -> scopes allowed besides admin, or PUBLIC.
EXPECTED: dict[tuple[str, str], tuple[str, ...] | str] = {
    # health and documentation
    ("GET", "/livez"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # matching
    ("POST", "/v1/match"): (PLAT, ENG),
    ("POST", "/v1/missions/{mission_id}/shortlist"): (ENG,),
    ("POST", "/v1/persons/{person_id}/missions"): (ENG, PLAT),
    ("POST", "/v1/allocations"): (ENG,),
    ("POST", "/v1/model/reload"): (DATA,),
    # the community
    ("POST", "/v1/persons"): (ENG, DATA),
    ("GET", "/v1/persons"): (ENG, DATA),
    ("GET", "/v1/persons/{person_id}"): (ENG, DATA),
    ("PATCH", "/v1/persons/{person_id}"): (ENG, DATA),
    ("GET", "/v1/persons/{person_id}/vetting"): (ENG,),
    ("POST", "/v1/persons/{person_id}/vetting"): (ENG, DATA),
    ("GET", "/v1/vetting/{vetting_id}"): (ENG,),
    ("PATCH", "/v1/vetting/{vetting_id}"): (ENG, DATA),
    ("POST", "/v1/ties"): (ENG, DATA),
    ("GET", "/v1/ties/{tie_id}"): (ENG,),
    ("PATCH", "/v1/ties/{tie_id}"): (ENG, DATA),
    ("GET", "/v1/persons/{person_id}/ties"): (ENG,),
    ("POST", "/v1/groups"): (ENG, DATA),
    ("GET", "/v1/groups/{group_id}"): (ENG, DATA),
    ("PATCH", "/v1/groups/{group_id}"): (ENG, DATA),
    ("POST", "/v1/clients"): (ENG,),
    ("GET", "/v1/clients"): (ENG,),
    ("GET", "/v1/clients/{client_id}"): (ENG, CLIENT),
    ("PATCH", "/v1/clients/{client_id}"): (ENG,),
    ("POST", "/v1/missions"): (ENG,),
    ("GET", "/v1/missions"): (ENG, PLAT, CLIENT),
    ("GET", "/v1/missions/{mission_id}"): (ENG, PLAT, CLIENT),
    ("PATCH", "/v1/missions/{mission_id}"): (ENG,),
    ("POST", "/v1/bundles"): (DATA,),
    # assignments and outcomes
    ("POST", "/v1/assignments"): (ENG, PLAT),
    ("GET", "/v1/assignments/{assignment_id}"): (ENG, PLAT, CLIENT),
    ("PATCH", "/v1/assignments/{assignment_id}"): (ENG, PLAT),
    ("GET", "/v1/missions/{mission_id}/assignments"): (ENG, PLAT, CLIENT),
    ("POST", "/v1/assignments/{assignment_id}/outcomes"): (ENG,),
    ("POST", "/v1/outcomes/{outcome_id}/verify"): (CLIENT,),
    ("POST", "/v1/outcomes/{outcome_id}/reject"): (CLIENT,),
    ("POST", "/v1/outcomes/{outcome_id}/dispute"): (CLIENT,),
    ("GET", "/v1/outcomes/{outcome_id}"): (ENG, PLAT, CLIENT),
    ("GET", "/v1/missions/{mission_id}/outcomes"): (ENG, PLAT, CLIENT),
    ("GET", "/v1/missions/{mission_id}/ledger"): (ENG, CLIENT),
    # data rights
    ("GET", "/v1/persons/{person_id}/export"): (DATA,),
    ("PATCH", "/v1/persons/{person_id}/consent"): (DATA, ENG),
    ("DELETE", "/v1/persons/{person_id}"): (DATA,),
}

# Special-category reads: the engineer scope only, admin keys refused too.
NOT_ADMIN = {("GET", "/v1/persons/{person_id}/vetting"), ("GET", "/v1/vetting/{vetting_id}")}

# Path parameters that tie a route to one client's mission: values of client C1 (the
# `client` key) and of client C2 (the `client2` key), in the API city.
OWNED = {"mission_id": ("M21", "M20"), "assignment_id": ("AS5", None),
         "outcome_id": ("O5", None), "client_id": ("C1", "C2")}


def routes(app) -> set[tuple[str, str]]:  # noqa: ANN001
    """Every (method, path) the app answers, included routers flattened."""
    out: set[tuple[str, str]] = set()

    def add(path: str, methods) -> None:  # noqa: ANN001
        out.update((m, path) for m in (methods or ()) if m != "HEAD")

    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):  # FastAPI's included routers
            for ctx in route.effective_route_contexts():
                add(ctx.path, ctx.methods)
        elif isinstance(route, APIRoute | Route):
            add(route.path, route.methods)
        else:
            raise AssertionError(f"a route of unknown kind: {route!r}")
    return out


def test_every_route_is_in_the_table(api):
    found = routes(api.app)
    assert found, "no route found: the enumeration is broken"
    missing = sorted(found - set(EXPECTED))
    assert not missing, f"routes with no expected scopes in EXPECTED: {missing}"
    assert NOT_ADMIN <= set(EXPECTED)
    stale = sorted(set(EXPECTED) - found)
    assert not stale, f"routes of EXPECTED the app does not have: {stale}"
    assert {"/v1/match", "/v1/missions/{mission_id}/shortlist"} <= {p for _, p in found}


def _url(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def test_role_by_endpoint_matrix(api):
    with api.store.reader() as s:
        vetting_id = str(s.scalars(select(VettingRecord.id)).first())
        tie_id = str(s.scalars(select(Tie.id)).first())
    values = {"person_id": "P3", "group_id": "G1", "vetting_id": vetting_id, "tie_id": tie_id,
              **{k: own for k, (own, _) in OWNED.items()}}
    found = routes(api.app)
    # Erasure last: it removes the person the other routes read.
    order = sorted(found, key=lambda mp: (mp[0] == "DELETE", mp[1], mp[0]))
    problems = []
    with api.serving():  # a model is loaded: matching routes answer for real
        for method, path in order:
            expected = EXPECTED[(method, path)]
            url = _url(path, values)
            body = {} if method in ("POST", "PATCH") else None

            def call(scope, url=url, method=method, body=body):  # noqa: ANN001, ANN202
                return api.request(scope, method, url, json=body)

            if expected == PUBLIC:
                for scope in (None, *SCOPES):
                    r = call(scope)
                    if r.status_code != 200:
                        problems.append((method, path, scope, r.status_code, "public"))
                continue
            r = call(None)
            if r.status_code != 401:
                problems.append((method, path, None, r.status_code, "want 401"))
            for scope in SCOPES:
                r = call(scope)
                allowed = scope in expected or (
                    scope == "admin" and (method, path) not in NOT_ADMIN)
                if allowed and r.status_code in (401, 403):
                    problems.append((method, path, scope, r.status_code, "want allowed"))
                if not allowed and r.status_code != 403:
                    problems.append((method, path, scope, r.status_code, "want 403"))
            owned = [p for p in re.findall(r"\{(\w+)\}", path) if p in OWNED]
            if CLIENT in expected and owned:
                param = owned[0]
                own, other = OWNED[param]
                r = api.request("client", method, _url(path, {**values, param: own}), json=body)
                if r.status_code in (401, 403, 404):
                    problems.append((method, path, "client own", r.status_code, "want own"))
                # C1's ids seen by C2, and C2's (when the city has one) seen by C1.
                for scope, url_ in (("client2", _url(path, {**values, param: own})),
                                    ("client", _url(path, {**values, param: other}))
                                    if other else (None, None)):
                    if scope is None:
                        continue
                    r = api.request(scope, method, url_, json=body)
                    if r.status_code != 404:
                        problems.append((method, path, f"{scope} other's", r.status_code,
                                         "want 404"))
    assert not problems, "\n".join(map(str, problems))
