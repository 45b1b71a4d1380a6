"""Bearer API-key authentication for every /v1 route, then the key's request limit; scopes decide what a
key may do. Public routes (/health, tracking, unsubscribe, the SNS endpoint) take no key."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request

from jetmail.api.throttle import ApiThrottle
from jetmail.compliance.apikeys import ApiKey, Scope
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
    # cached for a few seconds per process (JETMAIL_API_KEY_CACHE_S): no DynamoDB read per request
    key = services(request).api_keys.authenticate(token.strip(), cached=True)
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    request.state.api_key = key
    throttle: ApiThrottle = request.app.state.throttle
    retry_after = throttle.check(key)
    if retry_after:
        raise HTTPException(429, f"rate limit of {throttle.limit_for(key)} requests per minute for this key "
                                 f"reached; retry in {retry_after}s", headers={"Retry-After": str(retry_after)})
    return key


def require(scope: Scope) -> Callable[[ApiKey], ApiKey]:
    def check(key: ApiKey = Depends(authenticate)) -> ApiKey:
        if not key.allows(scope):
            raise HTTPException(403, f"this API key lacks the {scope!r} scope")
        return key

    return check
