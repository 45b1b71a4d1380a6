"""The one suppression policy: may this address get this category of mail from this list now?

The rule lives in ``refusal`` alone; only where its facts come from differs by path:

- every transactional message, sequence step and SMTP submission is checked against the suppression
  list when it is accepted (``at_submit``, one request; for an API message to one address, no request of
  its own: ``unlisted_checks`` in the message's write, ``at_submit`` only where they fail); a refused one
  is recorded ``suppressed`` and never enqueued;
- at send time, transactional mail and sequence steps read the stop events their worker follows
  (``at_send``), in memory: the stream keeps the latest event of every address and scope, and a replay
  from a margin before the message was accepted holds every change since the submit-time check, so a
  password reset honours a bounce from a second ago without a DynamoDB request;
- campaign batches read the same followed events (``ready`` then ``now``): every suppression, list
  unsubscribe, complaint and erasure since their plan began, whenever the worker started, and no
  DynamoDB request per recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from jetmail.deliverability.stops import PLAN_MARGIN, SCOPE_ALL, SCOPE_ERASED, LiveStops
from jetmail.deliverability.suppressions import SuppressionStore, blocks


def refusal(stops: Mapping[str, str], *, category: str, list_id: str | None = None) -> str | None:
    """Why the address may not get this mail (``suppressed: <reason>``), or None when it may. ``stops`` is
    {scope: reason} of the stops in force for it: ``erased``, ``all`` (the suppression list) or a list id."""
    if SCOPE_ERASED in stops:
        return "suppressed: erased"
    reason = stops.get(SCOPE_ALL)
    if reason is not None and blocks(reason, category=category):
        return f"suppressed: {reason}"
    if list_id is not None and category == "marketing" and list_id in stops:
        return "suppressed: unsubscribed"
    return None


def _listed(reason: str | None) -> dict[str, str]:
    """A suppression list entry's reason as the stops it stands for."""
    if reason is None:
        return {}
    return {SCOPE_ERASED if reason == "erased" else SCOPE_ALL: reason}


def replay_start(accepted_at: str | None) -> str | None:
    """Where a message's send-time check replays stop events from: a margin before it was accepted, as a
    campaign replays from before its plan began (a stop is published before its DynamoDB write, so one
    written just after the submit-time read was published before it). None (no time known): the whole stream."""
    if not accepted_at:
        return None
    return (datetime.fromisoformat(accepted_at) - PLAN_MARGIN).isoformat()


class SuppressionPolicy:
    def __init__(self, *, store: SuppressionStore, live: LiveStops | None = None) -> None:
        self.store = store
        self.live = live

    def at_submit(self, email: str, *, category: str) -> str | None:
        """A message being accepted: the suppression list as it is now (one request)."""
        entry = self.store.get(email)
        return refusal(_listed(entry.reason if entry else None), category=category)

    def unlisted_checks(self, email: str) -> list[dict[str, Any]]:
        """``at_submit`` made part of a message's own write: ConditionChecks that hold while the address is on
        no suppression list (no request of their own). Where one fails the address has an entry, and
        ``at_submit`` says whether it refuses the message's category."""
        return self.store.unlisted_checks(email)

    def at_submit_all(self, emails: Iterable[str], *, category: str) -> dict[str, str]:
        """{address: refusal} for the refused ones among ``emails`` (one SMTP submission's recipients): one
        BatchGetItem per 100 addresses."""
        wanted = list(emails)
        listed = self.store.suppressed_among(wanted)
        refused = {e: refusal(_listed(listed.get(e.lower())), category=category) for e in wanted}
        return {e: r for e, r in refused.items() if r is not None}

    async def at_send(self, email: str, *, category: str, accepted_at: str | None) -> str | None:
        """Transactional mail and sequence steps at send time: every stop event since a margin before the
        message was accepted (``accepted_at``, its ``created_at``), in memory. Together with ``at_submit``
        this is the suppression list as it is now, without reading it."""
        await self.ready(replay_start(accepted_at))
        assert self.live is not None
        return refusal(self.live.stops(email), category=category)

    async def ready(self, since: str | None) -> None:
        """Before a send: hold every stop event since ``since`` (a campaign: since its plan began) up to now."""
        assert self.live is not None, "sending needs the followed stop events (jetmail.deliverability.stops.LiveStops)"
        await self.live.catch_up(since)

    def now(self, email: str, *, category: str, list_id: str | None) -> str | None:
        """Campaign mail, per recipient: the followed stop events, in memory (after ``ready``)."""
        assert self.live is not None, "campaign sends need the followed stop events"
        return refusal(self.live.stops(email, list_id=list_id), category=category, list_id=list_id)
