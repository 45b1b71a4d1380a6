"""Dashboard sessions and CSRF tokens, signed with the project's HMAC ``Signer``.

The session cookie holds ``{"kid": key id, "rot": when the key was last rotated, "exp": unix time,
"csrf": nonce}`` signed for the purpose ``dashboard-session``: the key id, never the key. Every request
checks the signature, the expiry, and that the key is still active with the admin scope and has not been
rotated since, so revoking or rotating a key ends its sessions at once.

CSRF: every state-changing form carries the session's ``csrf`` nonce (a synchronizer token tied to
the session; a cross-site page can neither read the HttpOnly cookie nor the page), and the login
form, which has no session yet, carries a signed ``dashboard-login`` token that must equal the
short-lived login cookie set with the form (double submit with a signed value). On top of that a
POST whose ``Sec-Fetch-Site`` says it came from another site, or whose ``Origin`` names another host,
is refused, and the cookies are ``SameSite=Strict``.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jetmail.compliance.apikeys import ApiKey, ApiKeys
from jetmail.messaging.tokens import Signer

SESSION_COOKIE = "jetmail_dashboard"
LOGIN_COOKIE = "jetmail_dashboard_login"
COOKIE_PATH = "/dashboard"
SESSION_TTL_S = 8 * 3600
LOGIN_TTL_S = 15 * 60
_SESSION = "dashboard-session"
_LOGIN = "dashboard-login"


@dataclass(frozen=True)
class Session:
    key_id: str
    csrf: str
    expires: int
    rotated_at: str = ""


class Sessions:
    def __init__(self, signer: Signer, *, ttl_s: int = SESSION_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.signer = signer
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, key: ApiKey) -> tuple[str, Session]:
        """A new session (and its cookie value) for a key that just proved itself."""
        session = Session(key_id=key.key_id, csrf=secrets.token_urlsafe(18), expires=int(self.clock()) + self.ttl_s,
                          rotated_at=key.rotated_at or "")
        token = self.signer.sign(_SESSION, {"kid": session.key_id, "csrf": session.csrf, "exp": session.expires,
                                            "rot": session.rotated_at})
        return token, session

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie value; None when missing, tampered with, malformed or expired."""
        payload = self.signer.verify(_SESSION, cookie) if cookie else None
        if payload is None:
            return None
        kid, csrf, exp, rot = payload.get("kid"), payload.get("csrf"), payload.get("exp"), payload.get("rot")
        if not all(isinstance(v, str) for v in (kid, csrf, rot)) or not isinstance(exp, int):
            return None
        if exp <= self.clock():
            return None
        return Session(key_id=str(kid), csrf=str(csrf), expires=exp, rotated_at=str(rot))

    def login_token(self) -> str:
        """A signed token for the login form and its cookie."""
        return self.signer.sign(_LOGIN, {"n": secrets.token_urlsafe(12), "exp": int(self.clock()) + LOGIN_TTL_S})

    def login_token_ok(self, cookie: str | None, form: str | None) -> bool:
        if not cookie or not form or not hmac.compare_digest(cookie, form):
            return False
        payload = self.signer.verify(_LOGIN, form)
        return payload is not None and isinstance(payload.get("exp"), int) and payload["exp"] > self.clock()


def csrf_ok(session: Session, form: str | None) -> bool:
    return bool(form) and hmac.compare_digest(session.csrf, form or "")


def same_origin(*, origin: str | None, fetch_site: str | None, host: str | None) -> bool:
    """False when the browser says the request came from another site (``Sec-Fetch-Site``) or another origin.

    ``Origin: null`` passes: under the dashboard's own ``Referrer-Policy: no-referrer`` browsers send exactly
    that on every form POST. A request with neither header (curl, an old browser) passes too; the CSRF token
    still applies to all of them.
    """
    if fetch_site in ("cross-site", "same-site"):
        return False
    if origin is None or origin == "null":
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


def session_key(keys: ApiKeys, session: Session) -> ApiKey | None:
    """The key behind a session, if it is still active, may administer, and was not rotated since login."""
    key = keys.get(session.key_id)
    if key is None:
        return None
    fresh = (key.rotated_at or "") == session.rotated_at
    return key if key.active and key.allows("admin") and fresh else None
