"""The one send pipeline: render → MIME → rate slot → provider → outcome hooks.

Transactional mail, sequence steps and campaign batches all send through ``SendPipeline``; what differs
per kind wraps it: the message claim and status record for transactional mail (``jetmail.messaging.delivery``),
claims, tally and batch bookkeeping for a campaign (``jetmail.campaigns.sender``). Whether the address
may be mailed at all is ``jetmail.deliverability.policy``'s answer, asked by the wrapper before it claims.

Each lane has its own way through a worker: the transactional lane's blocking work (its claim, render
and outcome) runs on threads of its own (``blocking``), and the SMTP provider keeps connections apart
per lane, so a password reset never queues behind a campaign's renders or sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from jetmail.deliverability.events import DeliveryEvent
from jetmail.deliverability.ratelimit import RateLimiter
from jetmail.deliverability.reputation import count_sent
from jetmail.kv import Kv
from jetmail.messaging.compose import Composer, Recipient
from jetmail.messaging.mime import MimeAttachment, parse_address
from jetmail.messaging.providers import OutboundMessage, PermanentDeliveryError, Provider, SendResult
from jetmail.messaging.simulator import Simulator
from jetmail.messaging.templating import TemplateVersion
from jetmail.messaging.templating.stencil import NoStencil


@dataclass(frozen=True, slots=True)
class Draft:
    """One message to one recipient, before rendering."""

    message_id: str
    recipient: Recipient
    version: TemplateVersion | None  # None with ``raw``
    context: Mapping[str, Any]
    from_addr: str
    category: str = "transactional"
    reply_to: str | None = None
    list_id: str | None = None  # the list a campaign reached them through: its one-click unsubscribe
    track: bool | None = None  # None: marketing mail is tracked, transactional is not
    tags: Mapping[str, str] = field(default_factory=dict)  # provider tags beyond message id and category
    # whose share of the send rate it takes: a campaign's, or the transactional lane's (any message sent
    # through the messages API, marketing-category or not, so a campaign never delays it)
    lane: str = "transactional"
    # complete MIME submitted over SMTP (jetmail.messaging.submission): sent as is, no render; from_addr is the envelope
    raw: bytes | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()  # envelope only
    headers: Mapping[str, str] = field(default_factory=dict)  # the caller's, checked at submit
    attachments: tuple[MimeAttachment, ...] = ()
    text_only: bool = False  # inline text without HTML: the rendered HTML is dropped
    fixed_layouts: bool = False  # a campaign's copy of a version: its layouts as first compiled
    # the context's names that differ between the drafts of this version (a campaign's ``attributes``; every
    # other name the same in each): the renderer may fill in a stencil of the version instead of rendering it
    varying: frozenset[str] | None = None

    @property
    def envelope_from(self) -> str:
        return parse_address(self.from_addr)[1]


T = TypeVar("T")


class FeedbackSink(Protocol):
    """The feedback processor (``jetmail.deliverability.feedback.FeedbackProcessor``)."""

    def process(self, event: DeliveryEvent) -> str: ...


#: threads for the transactional lane's blocking calls: enough for a burst of resets to render and record
#: side by side, few enough that they cannot crowd out the event loop
LANE_THREADS = 4


@dataclass(frozen=True, slots=True)
class Sent:
    draft: Draft
    result: SendResult


class SendPipeline:
    def __init__(self, *, composer: Composer, provider: Provider, limiter: RateLimiter | None = None,
                 simulator: Simulator | None = None, kv: Kv | None = None,
                 feedback: FeedbackSink | None = None) -> None:
        self.feedback = feedback
        self.composer = composer
        self.provider = provider
        self.limiter = limiter
        self.simulator = simulator
        self.kv = kv
        self._lane_threads = ThreadPoolExecutor(max_workers=LANE_THREADS, thread_name_prefix="jetmail-transactional")

    async def blocking(self, lane: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn`` on a thread: the transactional lane's own threads, or the default executor for campaigns."""
        if lane == "marketing":
            return await asyncio.to_thread(fn, *args, **kwargs)
        context = contextvars.copy_context()  # as asyncio.to_thread does
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._lane_threads, call)

    def build(self, draft: Draft, *, stencil_only: bool = False) -> OutboundMessage:
        """Render and build the MIME message. Raises TemplateRenderError or ValueError when it cannot be.
        ``stencil_only``: only by filling in a stencil of the draft's version (raises NoStencil otherwise)."""
        to = draft.recipient
        if draft.raw is not None:
            return self._build_raw(draft)
        if draft.version is None:
            raise ValueError("a draft needs a template version or raw MIME")
        link = self.composer.unsubscribe_url(message_id=draft.message_id, email=to.email, list_id=draft.list_id)
        rendered = self.composer.render(draft.version, dict(draft.context), recipient=to,
                                        message_id=draft.message_id, list_id=draft.list_id, track=draft.track,
                                        unsubscribe_url=link, fixed_layouts=draft.fixed_layouts,
                                        varying=draft.varying, stencil_only=stencil_only)
        # marketing mail carries RFC 8058 one-click List-Unsubscribe headers on every path
        built = self.composer.build(rendered, message_id=draft.message_id, recipient=to, from_addr=draft.from_addr,
                                    reply_to=draft.reply_to,
                                    list_unsubscribe=link if draft.category == "marketing" else None,
                                    headers=dict(draft.headers), cc=draft.cc, bcc=draft.bcc,
                                    attachments=draft.attachments, text_only=draft.text_only)
        # the envelope takes the built recipient: its domain in ASCII (punycode) form, which an ASCII local
        # part at an IDN domain needs to go without SMTPUTF8
        return OutboundMessage(mail_from=draft.envelope_from, recipients=list(built.recipients), raw=built.data,
                               smtputf8=built.smtputf8, message_id=draft.message_id, lane=draft.lane, crlf=True,
                               tags={"message_id": draft.message_id, "category": draft.category, **draft.tags})

    def _build_raw(self, draft: Draft) -> OutboundMessage:
        """Submitted MIME as sent, with jetmail's own headers in front: the message id and, for marketing
        mail, the RFC 8058 one-click unsubscribe pair (the submitter's own List-Unsubscribe was stripped)."""
        assert draft.raw is not None
        to = parse_address(draft.recipient.email)
        lines = [f"X-Jetmail-Message-Id: {draft.message_id}"]
        if draft.category == "marketing":
            link = self.composer.unsubscribe_url(message_id=draft.message_id, email=draft.recipient.email,
                                                 list_id=draft.list_id)
            lines += [f"List-Unsubscribe: <{link}>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
        raw = "".join(f"{line}\r\n" for line in lines).encode("ascii") + draft.raw
        header_block = draft.raw.split(b"\r\n\r\n", 1)[0]
        return OutboundMessage(mail_from=draft.envelope_from, recipients=[to.addr_spec], raw=raw,
                               smtputf8=to.smtputf8 or not draft.envelope_from.isascii() or not header_block.isascii(),
                               message_id=draft.message_id, lane=draft.lane,
                               tags={"message_id": draft.message_id, "category": draft.category, **draft.tags})

    async def send(self, draft: Draft) -> Sent:
        """Build, wait for a rate slot, hand to the provider. Raises what ``build`` and the provider raise
        (PermanentDeliveryError, TemporaryDeliveryError)."""
        outbound = None
        if draft.varying is not None:
            # a campaign's mail filled in from its stencil: string joins and signatures, no Jinja, cheaper here
            # than the hand-off to a thread and back
            with contextlib.suppress(NoStencil):
                outbound = self.build(draft, stencil_only=True)
        if outbound is None:
            # in a thread: a render may run up to its time limit (JETMAIL_RENDER_TIMEOUT_S), and the other
            # jobs of this worker share its event loop
            outbound = await self.blocking(draft.lane, self.build, draft)
        async with sending_slot(self.limiter, category=draft.lane, email=draft.recipient.email):
            result = await self.provider.send(outbound)
        return Sent(draft=draft, result=result)

    async def sent(self, outcomes: Sequence[Sent], *, count: bool = True) -> None:
        """Outcome hooks once the wrapper has recorded the sends: the reputation counter (``count``: False
        for sends recorded before, so a redelivered batch is counted once) and the local SES simulator."""
        if count and self.kv is not None:
            await count_sent(self.kv, len(outcomes))
        if self.simulator is None or not self.simulator.enabled:
            return
        for sent in outcomes:
            draft = sent.draft
            if not self.simulator.simulates(draft.recipient.email):
                continue  # decided here: a thread hand-off per ordinary address would cost more than the answer
            await asyncio.to_thread(self.simulator.after_send, recipient=draft.recipient.email,
                                    source=draft.envelope_from, message_id=draft.message_id,
                                    provider_message_id=sent.result.provider_message_id, category=draft.category,
                                    campaign_id=draft.tags.get("campaign_id"), variant=draft.tags.get("variant"))


    async def refused(self, error: PermanentDeliveryError, *, lane: str) -> None:
        """Outcome hook once the wrapper has recorded a permanent failure: a recipient the SMTP server refused
        with a 5xx is a bounce (``error.bounce``), handed to the feedback processor as a DSN's would be
        (suppression for 5.1.1, a reputation count for a 5.7.x policy refusal)."""
        if error.bounce is not None and self.feedback is not None:
            await self.blocking(lane, self.feedback.process, error.bounce)


def sending_slot(limiter: RateLimiter | None, *, category: str, email: str) -> AbstractAsyncContextManager[None]:
    """The rate limiter's slot for one send (waits for a token; reports throttling), or no limit."""
    if limiter is None:
        return nullcontext()
    return limiter.sending(category=category, domain=email.rpartition("@")[2])  # type: ignore[arg-type]
