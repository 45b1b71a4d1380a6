"""Contacts, lists and list memberships: the audience a campaign streams.

A membership row carries a snapshot of what sending needs (address, name, language, time zone,
attributes), packed in one JSON attribute, so a campaign reads its audience with one Query per page
(300 members in a plan) and no per-contact reads. The contact item keeps a ``lists`` map
{list id: status}; every write of a contact rewrites the snapshots of the lists it names, so they stay
in step with the contact.

Deleting a list removes its memberships and then the list itself; the ``lists`` maps of former
members are pruned lazily, the next time the contact is written or read (a list id whose list is
gone is dropped), so the delete costs one BatchWriteItem per 25 members rather than one write per
contact.

Imports stream: rows are parsed one at a time, validated whole (a bad row writes nothing), gathered
100 at a time, merged with the stored contacts (one BatchGetItem) and written with BatchWriteItem,
the items of one row always in the same request. Memory use does not depend on the file size.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from jetmail.audience.addresses import normalise_email
from jetmail.audience.imports import rows as import_rows
from jetmail.audience.model import (
    ADDRESS_TOP,
    LIST_ID,
    MAX_LISTS_PER_CONTACT,
    PUBLIC_ID,
    SNAPSHOT_FIELDS,
    STATUSES,
    AddressRange,
    AudienceMember,
    Consent,
    ConsentSource,
    Contact,
    ContactConflict,
    ContactFields,
    ContactNotFound,
    ContactUpsert,
    ErasedAddress,
    ImportFormat,
    ImportReport,
    ImportRow,
    InvalidContact,
    ListCreate,
    ListMember,
    ListNotFound,
    ListUpdate,
    MailingList,
    MemberPage,
    SubscriptionStatus,
    UnknownList,
    audience_member,
    check_attributes,
    member_fields,
    now_iso,
)
from jetmail.deliverability.stops import StopChange, StopFeed
from jetmail.storage import keys
from jetmail.storage.catalogue import Catalogue
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import (
    KEY_ATTRIBUTES,
    ConditionFailed,
    Table,
    item_fields,
    key_values,
    native,
    resume_after,
)

SubscribeOutcome = Literal["pending", "subscribed", "unchanged"]
LIST_FIELDS = ("public", "public_id", "title", "description", "opt_in", "form_fields")
IMPORT_CHUNK_ROWS = 100  # one BatchGetItem (its maximum) reads the stored contacts of a chunk
UPSERT_ATTEMPTS = 5


# ---- keys (spelled in jetmail.storage.keys)
def contact_key(address: str) -> str:
    return address.lower()


def contact_shard(key: str) -> int:
    """Which of the ``keys.CONTACT_SHARDS`` gsi1 shards holds the contact."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(), "big") % keys.CONTACT_SHARDS


def _address(email: str) -> str:
    return normalise_email(email.strip())


def _contact_item(state: Mapping[str, Any]) -> dict[str, Any]:
    key = contact_key(state["email"])
    return {**state, **keys.contact(key).item(gsi1pk=keys.contact_shard(contact_shard(key)), gsi1sk=key)}


def member_item(list_id: str, state: Mapping[str, Any], status: str, now: str) -> dict[str, Any]:
    # the snapshot is one JSON string, not five attributes and a map: a campaign's plan reads every
    # membership of its lists, and both DynamoDB's item size and the emulator's cost per item grow with
    # the attributes an item has (moto: ~0.9 ms per item as attributes, ~0.3 ms packed)
    snapshot = {f: state[f] for f in SNAPSHOT_FIELDS if state.get(f)}
    snapshot["updated_at"] = now
    return keys.list_member(list_id, contact_key(state["email"])).item(
        status=status, snap=json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False, default=native))


def _snapshot(state: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if state is None:
        return None
    return tuple(state.get(f) or ({} if f == "attributes" else None) for f in SNAPSHOT_FIELDS)


def _merged(current: Mapping[str, Any] | None, address: str, patch: ContactFields,
            lists: Mapping[str, str], now: str, consent: Mapping[str, Consent] | None = None) -> dict[str, Any]:
    """The contact state after applying ``patch`` and ``lists`` to what is stored (without keys)."""
    state: dict[str, Any] = {k: v for k, v in (current or {}).items() if k not in KEY_ATTRIBUTES}
    state.setdefault("created_at", now)
    state["email"] = address
    given = patch.model_fields_set
    for name in ("name", "language", "timezone"):
        if name in given:
            state[name] = getattr(patch, name)
    attributes = dict(state.get("attributes") or {})
    if "attributes" in given:
        for key, value in patch.attributes.items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        try:
            check_attributes(attributes)
        except ValueError as exc:
            raise InvalidContact(f"after merging with the stored contact: {exc}") from None
    state["attributes"] = attributes
    state["lists"] = {**(state.get("lists") or {}), **lists}
    if consent:
        state["consent"] = {**(state.get("consent") or {}),
                            **{k: c.model_dump(exclude_none=True) for k, c in consent.items()}}
    state["updated_at"] = now
    return state


def _new_consent(before: Mapping[str, str], after: Mapping[str, str], source: ConsentSource,
                 now: str) -> dict[str, Consent]:
    """A consent record for each list the contact has just joined by an admin's hand (API, import)."""
    return {list_id: Consent(source=source, requested_at=now, confirmed_at=now)
            for list_id, status in after.items() if status == "subscribed" and before.get(list_id) != "subscribed"}


def _check_list_count(state: Mapping[str, Any]) -> None:
    if len(state["lists"]) > MAX_LISTS_PER_CONTACT:
        raise InvalidContact(f"a contact may be in at most {MAX_LISTS_PER_CONTACT} lists")


def _contact(item: Mapping[str, Any]) -> Contact:
    return Contact.model_validate({k: v for k, v in item.items() if k in Contact.model_fields})


def _member(item: Mapping[str, Any]) -> ListMember:
    return ListMember.model_validate({k: v for k, v in member_fields(item).items() if k in ListMember.model_fields})


def _list(item: Mapping[str, Any]) -> MailingList:
    return MailingList.model_validate({k: v for k, v in item.items() if k in MailingList.model_fields})


def new_public_id() -> str:
    return f"pub_{secrets.token_urlsafe(16)}"


def pick_list(name: str, every: Sequence[MailingList]) -> MailingList:
    """The list called ``name`` among ``every`` (the exact name, else ignoring case); a name several
    lists share is refused with their ids, so no caller picks one of them silently."""
    for exact in (True, False):
        found = [lst for lst in every
                 if (lst.name == name if exact else lst.name.casefold() == name.casefold())]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(lst.id for lst in found)
            raise ListNotFound(f"{len(found)} lists are named {name!r} ({ids}); give the id")
    raise ListNotFound(f"no list with the id or name {name!r}")


# ---- cursors: the key of the last member returned, checked on the way back in
def encode_cursor(key: Mapping[str, Any]) -> str:
    plain = {"pk": key["pk"], "sk": key["sk"]} if isinstance(key["pk"], str) else key_values(key)
    return pack({"pk": plain["pk"], "sk": plain["sk"]})


def decode_cursor(cursor: str, *, list_id: str) -> dict[str, Any]:
    value = unpack(cursor)
    if (not isinstance(value, dict) or set(value) != {"pk", "sk"} or value["pk"] != keys.list_partition(list_id)
            or not isinstance(value["sk"], str) or not value["sk"].startswith(keys.MEMBER_PREFIX)):
        raise InvalidCursor("cursor does not belong to this list")
    return resume_after(value)


# ---- the store
class ContactStore:
    """Contacts, lists and memberships in the single table; method docstrings give request counts."""

    def __init__(self, table: Table, *, erased: Callable[[Iterable[str]], set[str]] | None = None,
                 stops: StopFeed | None = None) -> None:
        self.table = table
        self._lists = Catalogue(table, row=keys.list_meta, partition=keys.LISTS, ids=LIST_ID,
                                missing=lambda list_id: ListNotFound(f"list {list_id!r} not found"))
        # which of some addresses were erased (jetmail.compliance.gdpr): those are refused, never stored again
        self.erased = erased or (lambda emails: set())
        # list unsubscribes (and re-subscribes) are published before they are written: running campaigns
        # follow them (jetmail.deliverability.stops)
        self.stops = stops

    def _publish_changes(self, address: str, before: Mapping[str, str], after: Mapping[str, str]) -> list[StopChange]:
        return [StopChange(address, list_id, stop=status == "unsubscribed", reason="unsubscribed")
                for list_id, status in after.items()
                if (status == "unsubscribed") != (before.get(list_id) == "unsubscribed")]

    def _publish(self, changes: list[StopChange]) -> None:
        if self.stops is not None and changes:
            self.stops.publish(changes)

    @property
    def requests(self) -> int:
        """DynamoDB requests made through this store's table (shared with whoever else uses it)."""
        return self.table.requests

    # ---- lists
    def create_list(self, name: str | ListCreate) -> MailingList:
        """One PutItem. A name alone makes a private, double opt-in list."""
        body = ListCreate(name=name) if isinstance(name, str) else name
        list_id = f"lst_{secrets.token_hex(8)}"
        created = now_iso()
        return _list(self._lists.add(list_id, created, id=list_id, created_at=created, public_id=new_public_id(),
                                     **body.model_dump(exclude_none=True)))

    def update_list(self, list_id: str, body: ListUpdate) -> MailingList:
        """Change the given fields: one GetItem and one conditional PutItem. A list made before lists had
        public ids gets one now."""
        item = self._lists.get(list_id)
        item.update(body.model_dump(exclude_unset=True, exclude_none=True))
        for name in ("title", "description"):  # null clears these two
            if name in body.model_fields_set and getattr(body, name) is None:
                item.pop(name, None)
        item.setdefault("public_id", new_public_id())
        try:
            self.table.put(item, condition="attribute_exists(pk)")
        except ConditionFailed:
            raise ListNotFound(f"list {list_id!r} not found") from None
        return _list(item)

    def public_lists(self) -> list[MailingList]:
        """Every public list, oldest first: one Query per 1 MB of lists."""
        return [lst for lst in self.lists() if lst.public]

    def public_list(self, public_id: str) -> MailingList:
        """The public list with this public id: one Query of the lists (none for an id that cannot be one).
        A private list is not found, like an unknown one."""
        if PUBLIC_ID.match(public_id):
            for lst in self.lists():
                if lst.public and lst.public_id == public_id:
                    return lst
        raise ListNotFound("no such public list")

    def get_list(self, list_id: str) -> MailingList:
        """One GetItem (none for an id that cannot be a list's)."""
        return _list(self._lists.get(list_id))

    def lists(self) -> list[MailingList]:
        """Oldest first; one Query per 1 MB of lists."""
        return [_list(item) for item in self._lists.all()]

    def find_list(self, ref: str) -> MailingList:
        """A list by id, or else by its name (exact, then ignoring case); ambiguous names are refused."""
        if LIST_ID.match(ref):
            return self.get_list(ref)
        return pick_list(ref, self.lists())

    def delete_list(self, list_id: str) -> int:
        """Delete the memberships, then the list; returns how many members it had. One Query per
        ~1 MB page of member keys and one BatchWriteItem per 25 members. Memberships go first, so an
        interrupted delete leaves the list in place and calling again finishes it."""
        self.get_list(list_id)
        removed = 0
        start: dict[str, Any] | None = None
        while True:
            items, start = self._query_members(list_id, status=None, limit=None, start=start,
                                               projection=("pk", "sk"))
            self.table.batch_delete([(i["pk"], i["sk"]) for i in items])
            removed += len(items)
            if not start:
                break
        self.table.delete(*keys.list_meta(list_id))
        return removed

    def existing_lists(self, list_ids: Iterable[str]) -> set[str]:
        """Which of these lists exist: one BatchGetItem per 100 ids."""
        wanted = sorted({i for i in list_ids if LIST_ID.match(i)})
        if not wanted:
            return set()
        found = self.table.batch_get([keys.list_meta(i) for i in wanted], projection=("id",))
        return {item["id"] for item in found}

    # ---- contacts
    def get(self, email: str) -> Contact:
        """One GetItem, and one BatchGetItem to drop lists deleted since the contact was written."""
        item = self._stored(contact_key(_address(email)))
        if item is None:
            raise ContactNotFound(f"no contact {email!r}")
        lists = item.get("lists") or {}
        if lists:
            live = self.existing_lists(lists)
            item["lists"] = {k: v for k, v in lists.items() if k in live}
        return _contact(item)

    def _stored(self, key: str) -> dict[str, Any] | None:
        return self.table.get(*keys.contact(key), consistent=True)

    def upsert(self, email: str, body: ContactUpsert, *, consent: Mapping[str, Consent] | None = None,
               ) -> tuple[Contact, bool]:
        """Create or update one contact and the snapshots in its lists; returns (contact, created).

        One GetItem, one BatchGetItem (do its lists exist), one BatchWriteItem per 25 memberships
        that changed, and one PutItem of the contact conditioned on its version. Snapshots are
        written first and the contact last: a concurrent write (an engagement event included) makes
        the conditional put fail and the whole step start over from a fresh read, so the write that
        lands last leaves contact and snapshots in step. (No transaction: it would double the write
        cost, and the emulator copies the whole table per transaction item.)
        ``consent`` records how the contact joined lists; without it, each list the contact joins here
        gets a consent record of source ``api``.
        Raises UnknownList, InvalidContact, InvalidAddress, ContactConflict."""
        address = _address(email)
        if self.erased([address]):
            raise ErasedAddress(address)
        key = contact_key(address)
        for _ in range(UPSERT_ATTEMPTS):
            current = self._stored(key)
            now = now_iso()
            joined = consent if consent is not None else _new_consent(
                (current or {}).get("lists") or {}, body.lists, "api", now)
            state = _merged(current, address, body, body.lists, now, joined)
            live = self.existing_lists(state["lists"]) if state["lists"] else set()
            missing = sorted(set(body.lists) - live)
            if missing:
                raise UnknownList(f"unknown list(s): {', '.join(missing)}")
            state["lists"] = {k: v for k, v in state["lists"].items() if k in live}
            _check_list_count(state)
            version = int((current or {}).get("version", 0))
            state["version"] = version + 1
            before = (current or {}).get("lists") or {}
            resync = _snapshot(current) != _snapshot(state)
            changed = [member_item(list_id, state, status, now) for list_id, status in state["lists"].items()
                       if resync or before.get(list_id) != status]
            self._publish(self._publish_changes(address, before, state["lists"]))
            if changed:
                self.table.batch_put(changed)
            try:
                if current is None:
                    self.table.put(_contact_item(state), condition="attribute_not_exists(pk)")
                else:
                    self.table.put(_contact_item(state), condition="version = :v", params={":v": version})
            except ConditionFailed:
                continue
            return _contact(state), current is None
        raise ContactConflict(f"contact {address!r} changed during {UPSERT_ATTEMPTS} attempts to write it; retry")

    def delete(self, email: str) -> int:
        """The contact and its memberships: one GetItem and one BatchWriteItem per 25 items. Returns how many
        memberships it had; raises ContactNotFound."""
        key = contact_key(_address(email))
        item = self._stored(key)
        if item is None:
            raise ContactNotFound(f"no contact {email!r}")
        lists = item.get("lists") or {}
        self.table.batch_delete([keys.contact(key), *(keys.list_member(list_id, key) for list_id in lists)])
        return len(lists)

    # ---- subscriptions by the subscriber (jetmail.audience.intake)
    def subscribe(self, email: str, *, mailing_list: MailingList, fields: ContactFields, consent: Consent,
                  ) -> tuple[SubscribeOutcome, Consent]:
        """A subscriber asks to join ``mailing_list``; returns what became of it and the consent in force.

        ``pending`` (a confirmation is due: double opt-in, or a return after an unsubscribe, which is never
        taken on an unconfirmed request), ``subscribed`` (single opt-in) or ``unchanged`` (subscribed
        already). A repeat while pending changes nothing and returns the first request's consent, so
        its confirmation link stays the same. ``fields`` only fill what the contact lacks: a form never
        overwrites what is stored. One GetItem, then for a change the writes of ``upsert`` and, when
        pending, one PutItem of the pending row."""
        address = _address(email)
        key = contact_key(address)
        current = self._stored(key) or {}
        status = (current.get("lists") or {}).get(mailing_list.id)
        stored = (current.get("consent") or {}).get(mailing_list.id)
        if status == "subscribed":
            return "unchanged", Consent.model_validate(stored) if stored else consent
        if status == "pending" and stored:
            return "pending", Consent.model_validate(stored)
        double = mailing_list.opt_in == "double" or status == "unsubscribed"
        consent = consent.model_copy(update={"opt_in": "double" if double else "single",
                                             "confirmed_at": None if double else consent.requested_at})
        patch = ContactUpsert(lists={mailing_list.id: "pending" if double else "subscribed"},
                              **{name: value for name, value in _missing(current, fields).items()})
        self.upsert(address, patch, consent={mailing_list.id: consent})
        if double:
            self.table.put(keys.pending_subscription(consent.requested_at, mailing_list.id, key).item(
                email=address, list_id=mailing_list.id))
            return "pending", consent
        return "subscribed", consent

    def confirm(self, email: str, *, list_id: str, requested_at: str) -> Literal["confirmed", "already", "stale"]:
        """Confirm the pending subscription asked for at ``requested_at``: idempotent (``already`` when it is
        confirmed), and ``stale`` when that request is not the one in force (expired, unsubscribed since,
        superseded). One GetItem, then for a change the writes of ``upsert`` and one DeleteItem."""
        address = _address(email)
        key = contact_key(address)
        current = self._stored(key) or {}
        status = (current.get("lists") or {}).get(list_id)
        stored = (current.get("consent") or {}).get(list_id)
        if not stored or stored.get("requested_at") != requested_at:
            return "stale"
        if status == "subscribed":
            return "already"
        if status != "pending":
            return "stale"
        confirmed = Consent.model_validate(stored).model_copy(update={"confirmed_at": now_iso()})
        self.upsert(address, ContactUpsert(lists={list_id: "subscribed"}), consent={list_id: confirmed})
        self.table.delete(*keys.pending_subscription(requested_at, list_id, key))
        return "confirmed"

    def expire_pending(self, before: datetime, *, limit: int = 100) -> list[tuple[str, str]]:
        """Drop subscriptions asked for before ``before`` and never confirmed: the membership and its consent
        go, and a contact left in no list that the request made is deleted. Returns (address, list id) of
        each. One Query of the pending rows (at most ``limit``: the next tick takes the rest), and per
        expired one a GetItem, a PutItem and a BatchWriteItem."""
        rows, _ = self.table.query(pk=keys.PENDING, sk_between=("0", before.astimezone(UTC).isoformat()),
                                   limit=limit)
        expired: list[tuple[str, str]] = []
        for row in rows:
            address, list_id = row["email"], row["list_id"]
            requested_at = row["sk"].split("#", 1)[0]
            if self._drop_pending(address, list_id, requested_at):
                expired.append((address, list_id))
            self.table.delete(row["pk"], row["sk"])
        return expired

    def _drop_pending(self, address: str, list_id: str, requested_at: str) -> bool:
        key = contact_key(address)
        for _ in range(UPSERT_ATTEMPTS):
            item = self._stored(key)
            if item is None:
                return False
            lists = dict(item.get("lists") or {})
            consent = dict(item.get("consent") or {})
            if lists.get(list_id) != "pending" or (consent.get(list_id) or {}).get("requested_at") != requested_at:
                return False
            lists.pop(list_id)
            consent.pop(list_id, None)
            version = int(item.get("version", 0))
            member = keys.list_member(list_id, key)
            try:
                self.table.put({**item, "lists": lists, "consent": consent, "version": version + 1,
                                "updated_at": now_iso()}, condition="version = :v", params={":v": version})
            except ConditionFailed:
                continue
            gone = [member]
            if not lists and str(item.get("created_at", "")) >= requested_at:
                gone.append(keys.contact(key))  # made by the unconfirmed request alone
            self.table.batch_delete(gone)
            return True
        raise ContactConflict(f"contact {address!r} changed during {UPSERT_ATTEMPTS} attempts to write it; retry")

    def export_of(self, email: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """What is held about the contact of ``email`` (an export): the contact as stored (without its keys
        and version) and its memberships, each with its list's name; (None, []) without a contact. One
        GetItem and two BatchGetItem per 100 lists."""
        key = contact_key(email)
        item = self._stored(key)
        if item is None:
            return None, []
        lists = item.get("lists") or {}
        names = {keys.list_id_of(meta["pk"]): meta.get("name")
                 for meta in self.table.batch_get([keys.list_meta(i) for i in lists])}
        members = self.table.batch_get([keys.list_member(i, key) for i in lists], consistent=True)
        return (item_fields({k: v for k, v in item.items() if k != "version"}),
                [{**fields, "list_name": names.get(fields["list_id"])} for fields in map(member_fields, members)])

    def record_engagement(self, email: str, kind: Literal["open", "click"], at: datetime) -> bool:
        """Remember the latest open or click of a contact: one conditional UpdateItem. Returns False when
        the contact is unknown or a later event of the kind is already recorded (events arrive out of
        order). Bumps the version, so an upsert racing with it retries instead of undoing it."""
        if at.tzinfo is None:
            raise ValueError("engagement time needs a time zone")
        attribute = {"open": "last_opened_at", "click": "last_clicked_at"}[kind]
        # one fixed format keeps the stored strings comparable as text in the condition
        stamp = at.astimezone(UTC).isoformat(timespec="microseconds")
        key = contact_key(_address(email))
        try:
            self.table.update(*keys.contact(key), expression="SET #f = :at ADD version :one",
                              names={"#f": attribute}, params={":at": stamp, ":one": 1},
                              condition="attribute_exists(pk) AND (attribute_not_exists(#f) OR #f < :at)")
        except ConditionFailed:
            return False
        return True

    def engagement(self, contact_keys: Sequence[str]) -> dict[str, tuple[datetime | None, datetime | None]]:
        """{contact key: (last opened, last clicked)} for contacts that exist: one BatchGetItem per 100."""
        found: dict[str, tuple[datetime | None, datetime | None]] = {}
        items = self.table.batch_get([keys.contact(k) for k in contact_keys],
                                     projection=("gsi1sk", "last_opened_at", "last_clicked_at"))
        for item in items:
            found[item["gsi1sk"]] = (_when(item.get("last_opened_at")), _when(item.get("last_clicked_at")))
        return found

    def iter_contacts(self) -> Iterator[Contact]:
        """Every contact, shard by shard, lazily: one Query per shard and per ~1 MB page (16 at least)."""
        for shard in range(keys.CONTACT_SHARDS):
            for item in self.table.query_all(pk=keys.contact_shard(shard), index="gsi1"):
                yield _contact(item)

    # ---- memberships
    def _query_members(self, list_id: str, *, status: str | None, limit: int | None,
                       start: Mapping[str, Any] | None, projection: Sequence[str] = (),
                       within: AddressRange | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        # a filter, not a key: status changes stay one overwrite of the same item, at the price of
        # reading (and paying for) members of other statuses while paging
        bounds: dict[str, Any] = {"sk_prefix": keys.MEMBER_PREFIX}
        if within is not None:
            # BETWEEN includes its upper end: a member keyed exactly ``hi`` is read here and dropped below
            bounds = {"sk_between": (keys.list_member(list_id, within.lo).sk,
                                     keys.list_member(list_id, within.hi or ADDRESS_TOP).sk)}
        items, last = self.table.query(pk=keys.list_partition(list_id), limit=limit, start=start,
                                       projection=projection, filter=None if status is None else "#st = :st",
                                       names={"#st": "status"}, params={":st": status}, **bounds)
        if within is not None and within.hi is not None:
            items = [i for i in items if str(i["sk"]) < keys.list_member(list_id, within.hi).sk]
        return items, last

    def member_pages(self, list_id: str, *, status: str | None = "subscribed", page_size: int | None = None,
                     first_page: int | None = None, within: AddressRange | None = None,
                     ) -> Iterator[list[dict[str, Any]]]:
        """Membership items page by page, lazily: one Query per page (``page_size`` items evaluated, or
        ~1 MB when None). ``first_page`` caps only the first Query, so a caller that acts on the first
        members (a campaign's first batch) has them after a small read rather than a 1 MB one. ``within``:
        only the members whose address is in that range, as it is when each Query is made. Does not
        check that the list exists."""
        start: dict[str, Any] | None = None
        limit = first_page or page_size
        while True:
            if within is not None and within.hi is not None and within.hi <= within.lo:
                return  # the range was narrowed to nothing
            items, start = self._query_members(list_id, status=status, limit=limit, start=start, within=within)
            limit = page_size
            if items:
                yield items
            if not start:
                return

    def iter_list_members(self, list_id: str, *, status: str | None = "subscribed", page_size: int | None = None,
                          first_page: int | None = None, within: AddressRange | None = None,
                          ) -> Iterator[AudienceMember]:
        """A list's members with ``status`` (None: all), lazily: one GetItem now (ListNotFound), then
        one Query per page as the iterator is consumed — about 0.03 requests per 100 members with
        1 MB pages of ~300-byte snapshots."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        self.get_list(list_id)

        def members() -> Iterator[AudienceMember]:
            for page in self.member_pages(list_id, status=status, page_size=page_size, first_page=first_page,
                                          within=within):
                for item in page:
                    yield audience_member(item)

        return members()

    def list_members(self, list_id: str, *, status: SubscriptionStatus | None = None, limit: int = 100,
                     cursor: str | None = None, max_queries: int = 10) -> MemberPage:
        """One page for the API: up to ``limit`` members after ``cursor``. With a status filter a Query
        page may hold fewer matches, so up to ``max_queries`` Queries fill it; the cursor is the key of
        the last member read, so no member is skipped or repeated across pages."""
        self.get_list(list_id)
        start = decode_cursor(cursor, list_id=list_id) if cursor else None
        found: list[dict[str, Any]] = []
        for _ in range(max_queries):
            items, last = self._query_members(list_id, status=status, limit=limit, start=start)
            room = limit - len(found)
            if len(items) > room:
                found.extend(items[:room])
                return MemberPage(members=[_member(i) for i in found], next_cursor=encode_cursor(found[-1]))
            found.extend(items)
            if not last:
                return MemberPage(members=[_member(i) for i in found])
            start = last
            if len(found) == limit:
                break
        if start is None:
            raise ValueError(f"max_queries must be at least 1, not {max_queries}")
        return MemberPage(members=[_member(i) for i in found], next_cursor=encode_cursor(start))

    # ---- import
    def import_members(self, source: Iterable[bytes], *, list_id: str, fmt: ImportFormat = "csv",
                       status: SubscriptionStatus = "subscribed",
                       progress: Callable[[int], None] | None = None) -> ImportReport:
        """Import contacts into a list from a stream of bytes (a file read in chunks, a request body).

        CSV: a header row with ``email`` and optionally ``name``, ``language``, ``timezone`` and
        ``attributes`` (a JSON object); every other column is an attribute (numbers and true/false
        are typed). JSONL: one object per line with the same keys. Empty cells and omitted keys keep
        what is stored. A contact that unsubscribed from the list stays unsubscribed.

        Per 100 valid rows: one BatchGetItem (the stored contacts) and one BatchWriteItem per 12
        rows of new contacts (contact + membership, 24 items), plus snapshot rewrites of the other
        lists of contacts whose profile changed. ``progress`` is called with each chunk's size.
        Raises ListNotFound before reading, InvalidImport when the file cannot be read on."""
        self.get_list(list_id)
        rows = import_rows(source, fmt, progress)
        report = ImportReport()
        known_lists: dict[str, bool] = {list_id: True}
        pending: list[tuple[int, ImportRow]] = []
        for row_no, row in rows:
            if isinstance(row, str):
                report.fail(row_no, row)
                continue
            pending.append((row_no, row))
            if len(pending) == IMPORT_CHUNK_ROWS:
                self._import_chunk(pending, list_id=list_id, status=status, known_lists=known_lists, report=report)
                pending = []
        if pending:
            self._import_chunk(pending, list_id=list_id, status=status, known_lists=known_lists, report=report)
        return report

    def _import_chunk(self, rows: list[tuple[int, ImportRow]], *, list_id: str, status: SubscriptionStatus,
                      known_lists: dict[str, bool], report: ImportReport) -> None:
        erased = self.erased([row.email for _, row in rows])
        if erased:
            for row_no, row in rows:
                if row.email.lower() in erased:
                    report.fail(row_no, str(ErasedAddress(row.email)))
            rows = [(row_no, row) for row_no, row in rows if row.email.lower() not in erased]
        wanted = list(dict.fromkeys(contact_key(row.email) for _, row in rows))
        stored = {item["gsi1sk"]: item for item in
                  self.table.batch_get([keys.contact(k) for k in wanted], consistent=True)}
        unknown = {i for item in stored.values() for i in item.get("lists") or {} if i not in known_lists}
        if unknown:
            live = self.existing_lists(unknown)
            known_lists.update({i: i in live for i in unknown})
        now = now_iso()
        states: dict[str, dict[str, Any]] = {}
        imported = kept = 0
        # several rows of one address in a chunk merge in order into one state, written once
        for row_no, row in rows:
            key = contact_key(row.email)
            base = states.get(key) or stored.get(key)
            previous = ((base or {}).get("lists") or {}).get(list_id)
            keep = previous == "unsubscribed" and status != "unsubscribed"
            try:
                joined = {list_id: "unsubscribed" if keep else status}
                state = _merged(base, row.email, row, joined, now,
                                _new_consent((base or {}).get("lists") or {}, joined, "import", now))
                state["lists"] = {k: v for k, v in state["lists"].items() if known_lists.get(k)}
                _check_list_count(state)
            except InvalidContact as exc:
                report.fail(row_no, str(exc))
                continue
            states[key] = state
            imported += 1
            kept += keep
        groups = []
        stops: list[StopChange] = []
        for key, state in states.items():
            current = stored.get(key)
            state["version"] = int((current or {}).get("version", 0)) + 1
            resync = _snapshot(current) != _snapshot(state)
            before = (current or {}).get("lists") or {}
            stops += self._publish_changes(state["email"], before, {list_id: state["lists"].get(list_id, "")})
            items = [_contact_item(state)]
            items += [member_item(lid, state, st, now) for lid, st in state["lists"].items()
                      if resync or lid == list_id or before.get(lid) != st]
            groups.append(items)
        self._publish(stops)
        self.table.batch_put_groups(groups)
        report.imported += imported
        report.kept_unsubscribed += kept


def _missing(current: Mapping[str, Any], fields: ContactFields) -> dict[str, Any]:
    """The given profile fields the stored contact has no value for, attributes key by key."""
    out: dict[str, Any] = {}
    for name in ("name", "language", "timezone"):
        if name in fields.model_fields_set and getattr(fields, name) and not current.get(name):
            out[name] = getattr(fields, name)
    stored = current.get("attributes") or {}
    new = {k: v for k, v in fields.attributes.items() if v is not None and k not in stored}
    if new:
        out["attributes"] = new
    return out


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
