"""DKIM signatures (RFC 6376) on the mail the SMTP provider sends, with dkimpy.

SES signs the mail it sends; a Postfix relay or another SMTP service may not, and mailbox providers
reject or junk unsigned bulk mail. One ``DkimSigner`` per process (the SMTP provider's), made from the
settings: ``dkim_domain`` (the ``d=`` tag), ``dkim_selector`` (``s=``, the DNS name
``<selector>._domainkey.<domain>`` holds the public key) and ``dkim_private_key`` (an RSA key in PEM; in
AWS from the secret ``JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN`` names). rsa-sha256, relaxed/relaxed.
"""

from __future__ import annotations

import re

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from jetmail.config import ConfigError, Settings

# The headers a reader sees or a client acts on, each signed when the message has it. A signed header
# cannot be changed or added to on the way without breaking the signature; Received and the like are
# added by every hop and never signed.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"list-unsubscribe", b"list-unsubscribe-post",
)

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


class DkimSigningError(ValueError):
    """This message cannot be signed as it is (e.g. its header block does not parse)."""


class DkimSigner:
    def __init__(self, *, domain: str, selector: str, private_key_pem: str) -> None:
        key = private_key_pem.strip().encode("ascii", "replace")
        try:
            parse_pem_private_key(key)
        except (UnparsableKeyError, ValueError, IndexError) as exc:
            raise ConfigError(f"JETMAIL_DKIM_PRIVATE_KEY: not an RSA private key in PEM ({exc})") from None
        self.domain = domain
        self.selector = selector
        self._key = key
        self._domain = domain.encode("idna")
        self._selector = selector.encode("ascii")

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer the settings ask for, or None when ``dkim_domain`` is unset (no signing)."""
        if not settings.dkim_domain:
            return None
        if settings.dkim_private_key is None:
            raise ConfigError("JETMAIL_DKIM_PRIVATE_KEY (or JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN) is required "
                              "when JETMAIL_DKIM_DOMAIN is set")
        return cls(domain=settings.dkim_domain, selector=settings.dkim_selector,
                   private_key_pem=settings.dkim_private_key.get_secret_value())

    def sign(self, raw: bytes) -> bytes:
        """``raw`` with a DKIM-Signature header in front of it."""
        end = raw.find(b"\r\n\r\n")
        linesep = b"\r\n"
        if end < 0:
            end, linesep = raw.find(b"\n\n"), b"\n"
        head = raw if end < 0 else raw[:end]
        present = {name.lower() for name in _FIELD_NAME.findall(head)}
        if b"from" not in present:
            raise DkimSigningError("the message has no From header, which DKIM must sign")
        try:
            signature: bytes = dkim.sign(raw, self._selector, self._domain, self._key,
                                  canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"rsa-sha256",
                                  include_headers=[name for name in SIGNED_HEADERS if name in present],
                                  linesep=linesep)
        except dkim.DKIMException as exc:
            raise DkimSigningError(f"cannot DKIM-sign the message: {exc}") from None
        return signature + raw
