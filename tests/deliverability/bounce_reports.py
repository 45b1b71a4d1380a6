"""The sample reports of ``bounce_samples/``, filled in for one message (see its README)."""

from __future__ import annotations

from pathlib import Path
from string import Template

from jetmail.deliverability.bounces import verp_address
from jetmail.messaging.tokens import Signer

SAMPLES = Path(__file__).parent / "bounce_samples"
SIGNER = Signer("a-test-signing-secret-0123456789")
DOMAIN = "bounces.example.com"
MESSAGE_ID = "msg_0193a2b4c5d6e3f2a1b0c9d8e7f6a"


def sample(name: str, *, message_id: str = MESSAGE_ID, rcpt: str = "user@example.org",
           verp: str | None = None) -> bytes:
    """A sample report about ``message_id``, with CRLF line ends as it arrives over SMTP."""
    verp = verp or verp_address(message_id, signer=SIGNER, domain=DOMAIN)
    text = Template((SAMPLES / name).read_text()).substitute(
        verp=verp, rcpt=rcpt, msgid=f"{message_id}@jetmail.example", jetmail_id=message_id, bounce_domain=DOMAIN)
    return text.replace("\n", "\r\n").encode()
