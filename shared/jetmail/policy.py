"""The one suppression policy: may this address get this category of mail from this list now?

The rule lives in ``refusal`` alone; only where its facts come from differs by path:

- transactional mail and sequence steps read the suppression list at send time (one request), so a
  password reset honours a bounce from a second ago;
- campaign batches read the stop events their worker follows (``jetmail.stops.LiveStops``), in memory:
  every suppression, list unsubscribe, complaint and erasure since their plan began, whenever the worker
  started, and no DynamoDB request per recipient.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from jetmail.stops import SCOPE_ALL, SCOPE_ERASED, LiveStops
from jetmail.suppressions import SuppressionStore, blocks


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


class SuppressionPolicy:
    def __init__(self, *, store: SuppressionStore, live: LiveStops | None = None) -> None:
        self.store = store
        self.live = live

    async def at_send(self, email: str, *, category: str) -> str | None:
        """Transactional mail and sequence steps: the suppression list as it is now (one request)."""
        entry = await asyncio.to_thread(self.store.get, email)
        if entry is None:
            return None
        return refusal({SCOPE_ERASED if entry.reason == "erased" else SCOPE_ALL: entry.reason}, category=category)

    async def ready(self, since: str | None) -> None:
        """Before a campaign batch: hold every stop event since its plan began (``since``) up to now."""
        assert self.live is not None, "campaign sends need the followed stop events"
        await self.live.catch_up(since)

    def now(self, email: str, *, category: str, list_id: str | None) -> str | None:
        """Campaign mail, per recipient: the followed stop events, in memory (after ``ready``)."""
        assert self.live is not None, "campaign sends need the followed stop events"
        return refusal(self.live.stops(email, list_id=list_id), category=category, list_id=list_id)
