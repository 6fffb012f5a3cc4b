"""Typed dependencies of the API: settings, the store, the caller and their scope.

Every endpoint declares the scope it needs with ``Depends(require("engineer", ...))``; the
caller is identified by an API key (header ``X-API-Key`` or ``Authorization: Bearer``) that
names its holder, its scope and, for the ``client`` scope, which client it is.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from graph import Store
from service.settings import ApiKey, Settings

__all__ = [
    "SCOPES",
    "Principal",
    "SettingsDep",
    "StoreDep",
    "current_principal",
    "require",
]

SCOPES = ("platform", "engineer", "client", "data", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's holder, scope and (client scope) client id."""

    holder: str
    scope: str
    client_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


# The dependencies are ``async def``: they do no I/O, and FastAPI would run a plain ``def``
# in the thread pool, one thread hop (and GIL hand-over) each, per request.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]


def _match(keys: list[ApiKey], presented: str) -> ApiKey | None:
    found = None
    for k in keys:
        # Compare every key, in constant time, so timing tells nothing about near misses.
        if hmac.compare_digest(k.key.get_secret_value().encode(), presented.encode()):
            found = k
    return found


async def current_principal(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="API key")] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    presented = x_api_key
    if presented is None and authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    if not presented:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key (X-API-Key header)",
                            headers={"WWW-Authenticate": "Bearer"})
    key = _match(settings.api_keys, presented)
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return Principal(holder=key.holder, scope=key.scope, client_id=key.client_id)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(*scopes: str):  # noqa: ANN201
    """A dependency that lets through only the given scopes (admin always passes)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}")

    async def check(principal: PrincipalDep) -> Principal:
        if principal.scope not in scopes and not principal.is_admin:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"scope {principal.scope!r} may not call this endpoint "
                f"(needs {' or '.join(scopes)})")
        return principal

    return check
