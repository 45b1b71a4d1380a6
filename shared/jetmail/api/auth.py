"""Bearer API-key authentication for every route; scopes decide what a key may do."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request

from jetmail.apikeys import ApiKey, Scope
from jetmail.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def authenticate(request: Request) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    key = services(request).api_keys.authenticate(token.strip())
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    request.state.api_key = key
    return key


def require(scope: Scope) -> Callable[[ApiKey], ApiKey]:
    def check(key: ApiKey = Depends(authenticate)) -> ApiKey:
        if not key.allows(scope):
            raise HTTPException(403, f"this API key lacks the {scope!r} scope")
        return key

    return check
