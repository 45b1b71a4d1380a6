"""Named things of one kind (contact lists, segments): one row each, found by id, listed in time order.

A row is ``<KIND>#<id>`` / ``META`` with gsi1 ``<KINDS>`` / ``<created>#<id>``, so listing them all is
one Query per ~1 MB of that one gsi1 partition, oldest first. An id that cannot be one of them (it does
not match the kind's pattern) is refused without a request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table


class Catalogue:
    """The rows of one kind; every method is one request (``all``: one per ~1 MB page)."""

    def __init__(self, table: Table, *, row: Callable[[str], keys.Key], partition: str, ids: re.Pattern[str],
                 missing: Callable[[str], LookupError]) -> None:
        self.table = table
        self.row = row  # the key of the row of an id
        self.partition = partition  # the gsi1 partition that lists them
        self.ids = ids
        self.missing = missing  # the error for an id that names none of them

    def add(self, item_id: str, created: str, **values: Any) -> dict[str, Any]:
        """Store a new one (conditional PutItem); returns the row as stored."""
        item = self.row(item_id).item(gsi1pk=self.partition, gsi1sk=keys.by_time(created, item_id), **values)
        self.table.put(item, condition="attribute_not_exists(pk)")
        return item

    def get(self, item_id: str) -> dict[str, Any]:
        """One GetItem (none for an id that cannot be one); raises ``missing`` when there is no such row."""
        item = self.table.get(*self.row(item_id)) if self.ids.match(item_id) else None
        if item is None:
            raise self.missing(item_id)
        return item

    def all(self) -> Iterator[dict[str, Any]]:
        """Oldest first, lazily."""
        return self.table.query_all(pk=self.partition, index="gsi1")

    def remove(self, item_id: str) -> None:
        """One conditional DeleteItem (none for an id that cannot be one); raises ``missing`` when there is
        no such row."""
        if not self.ids.match(item_id):
            raise self.missing(item_id)
        try:
            self.table.delete(*self.row(item_id), condition="attribute_exists(pk)")
        except ConditionFailed:
            raise self.missing(item_id) from None
