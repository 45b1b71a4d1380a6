"""Segments: named, saved criteria over contact fields, attributes and engagement, evaluated lazily.

Criteria are JSON trees::

    {"field": "attributes.plan", "op": "eq", "value": "pro"}      a condition
    {"and": [...]}   {"or": [...]}   {"not": {...}}                combinators
    {"opened_within_days": 30}   {"clicked_within_days": 7}   {"never_opened": true}

Fields are ``email``, ``name``, ``language``, ``timezone`` and ``attributes.<key>`` (nested keys
with dots). ``eq``/``ne``/``in``/``not_in`` compare exactly (``email`` ignoring case), ``contains``
finds a substring ignoring case, or an element of a list attribute; ``gt``/``gte``/``lt``/``lte``
compare numbers with numbers and ISO 8601 dates with dates (a value of another type never matches);
``exists`` tests presence. A missing field matches ``ne``, ``not_in`` and ``exists: false`` only.

Evaluation streams. A segment scoped to lists pages through their subscribed memberships and
decides on the snapshot; only when the criteria involve engagement and the snapshot alone cannot
decide (three-valued: an engagement condition is "unknown" there) are the contacts' engagement
fields read, one BatchGetItem per 100 undecided members. Requests per 100 members: ~0.03 Query
(1 MB pages of ~300-byte snapshots), plus at most 1 BatchGetItem with engagement criteria.
A segment without lists ranges over all contacts (16 shards, one Query per shard and ~1 MB page:
~0.05 per 100 contacts), whose items carry engagement themselves. ``record_engagement`` therefore
stays one UpdateItem on the contact; snapshots never hold engagement.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jetmail.audience.contacts import ContactStore, contact_key
from jetmail.audience.fields import OneLine
from jetmail.audience.model import AddressRange, AudienceMember, UnknownList, audience_member, now_iso
from jetmail.storage import keys
from jetmail.storage.catalogue import Catalogue
from jetmail.storage.table import Table

MAX_DEPTH = 8
MAX_NODES = 200
MAX_CHILDREN = 50
MAX_IN_VALUES = 500
MAX_LISTS = 20
ENGAGEMENT_BATCH = 100
SEGMENT_ID = re.compile(r"^seg_[0-9a-f]{16}$")
FIELDS = ("email", "name", "language", "timezone")
ATTRIBUTE_FIELD = re.compile(r"^attributes(\.[A-Za-z_][A-Za-z0-9_-]{0,63})+$")
OPS = ("eq", "ne", "in", "not_in", "contains", "gt", "gte", "lt", "lte", "exists")
_ORDER: dict[str, Callable[[Any, Any], bool]] = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt,
                                                 "lte": operator.le}
_MISSING: Any = object()


class SegmentNotFound(LookupError):
    pass


class CriteriaError(ValueError):
    """Criteria that cannot be saved; ``path`` names the bad condition (``criteria.and[1].op``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ---- operands
def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


def _as_datetime(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _operand(op: str, value: Any, *, fold: bool) -> Any:
    """The comparison-ready operand for ``op``; ValueError says what the op needs."""
    if op in ("eq", "ne", "contains"):
        if not _scalar(value):
            raise ValueError(f"{op} needs a string, number or boolean, got {json.dumps(value)}")
        return value.casefold() if fold and isinstance(value, str) else value
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
            raise ValueError(f"{op} needs a non-empty list of strings, numbers or booleans")
        if len(value) > MAX_IN_VALUES:
            raise ValueError(f"{op} takes at most {MAX_IN_VALUES} values")
        return [v.casefold() if fold and isinstance(v, str) else v for v in value]
    if op in _ORDER:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return ("number", value)
        when = _as_datetime(value) if isinstance(value, str) else None
        if when is None:
            raise ValueError(f"{op} needs a number or an ISO 8601 date (2026-01-31 or 2026-01-31T09:00:00Z), "
                             f"got {json.dumps(value)}")
        return ("date", when)
    if not isinstance(value, bool):
        raise ValueError(f"exists needs true or false, got {json.dumps(value)}")
    return value


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; in a segment a boolean only equals a boolean
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


@dataclass(slots=True)
class Candidate:
    """A member under evaluation; without known engagement, engagement conditions answer None."""

    member: AudienceMember
    opened: datetime | None = None
    clicked: datetime | None = None
    engagement_known: bool = True


# ---- criteria
class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field(max_length=400, description="email, name, language, timezone or attributes.<key>[.<key>…]")
    op: str = Field(description=" | ".join(OPS))
    value: Any = Field(description="a scalar; a list for in/not_in; a number or ISO date for gt/gte/lt/lte; "
                                   "a boolean for exists")

    _path: tuple[str, ...] = PrivateAttr(default=())
    _operand: Any = PrivateAttr(default=None)

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if value in FIELDS or ATTRIBUTE_FIELD.match(value):
            return value
        raise ValueError(f"unknown field {value!r}: use email, name, language, timezone or attributes.<key>")

    @field_validator("op")
    @classmethod
    def _known_op(cls, value: str) -> str:
        if value not in OPS:
            raise ValueError(f"unknown op {value!r}: use one of {', '.join(OPS)}")
        return value

    @field_validator("value")
    @classmethod
    def _fits_op(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op is not None:  # an unknown op is reported on its own
            _operand(op, value, fold=False)
        return value

    @model_validator(mode="after")
    def _prepare(self) -> Condition:
        self._path = tuple(self.field.split("."))
        self._operand = _operand(self.op, self.value, fold=self.field == "email")
        return self

    def _lookup(self, member: AudienceMember) -> Any:
        head = self._path[0]
        if head != "attributes":
            value = getattr(member, head)
            if value is None:
                return _MISSING
            return value.casefold() if head == "email" else value
        value = member.attributes
        for part in self._path[1:]:
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
        return _MISSING if value is None else value

    def matches(self, member: AudienceMember) -> bool:
        value = self._lookup(member)
        op, operand = self.op, self._operand
        if op == "exists":
            return bool((value is not _MISSING) == operand)
        if op in ("eq", "ne"):
            hit = value is not _MISSING and _same(value, operand)
            return hit if op == "eq" else not hit
        if op in ("in", "not_in"):
            values = value if isinstance(value, list) else [value]
            hit = value is not _MISSING and any(_same(v, o) for v in values for o in operand)
            return hit if op == "in" else not hit
        if op == "contains":
            if isinstance(value, list):
                return any(_same(v, operand) for v in value)
            return isinstance(value, str) and isinstance(operand, str) and operand.casefold() in value.casefold()
        kind, bound = operand
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            return _ORDER[op](value, bound)
        when = _as_datetime(value) if isinstance(value, str) else None
        return when is not None and _ORDER[op](when, bound)


class AllOf(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    all_of: list[Criteria] = Field(alias="and", min_length=1, max_length=MAX_CHILDREN)


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    any_of: list[Criteria] = Field(alias="or", min_length=1, max_length=MAX_CHILDREN)


class NoneOf(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    negated: Criteria = Field(alias="not")


class OpenedWithin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opened_within_days: StrictInt = Field(ge=1, le=3650)


class ClickedWithin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clicked_within_days: StrictInt = Field(ge=1, le=3650)


class NeverOpened(BaseModel):
    model_config = ConfigDict(extra="forbid")
    never_opened: StrictBool


_TAGS: dict[str, type[BaseModel]] = {"and": AllOf, "or": AnyOf, "not": NoneOf, "opened_within_days": OpenedWithin,
                                     "clicked_within_days": ClickedWithin, "never_opened": NeverOpened}
_TAG_OF = {model: tag for tag, model in _TAGS.items()} | {Condition: "condition"}
_SHAPES = ("a condition {field, op, value}, {and: [...]}, {or: [...]}, {not: {...}}, {opened_within_days: N}, "
           "{clicked_within_days: N} or {never_opened: true}")


def _tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _TAG_OF.get(type(value))
    if isinstance(value, dict):
        for tag in _TAGS:
            if tag in value:
                return tag
        if value.keys() & {"field", "op", "value"}:
            return "condition"
    return None


Criteria = Annotated[
    Annotated[Condition, Tag("condition")] | Annotated[AllOf, Tag("and")] | Annotated[AnyOf, Tag("or")]
    | Annotated[NoneOf, Tag("not")] | Annotated[OpenedWithin, Tag("opened_within_days")]
    | Annotated[ClickedWithin, Tag("clicked_within_days")] | Annotated[NeverOpened, Tag("never_opened")],
    Discriminator(_tag, custom_error_type="invalid_criteria", custom_error_message=f"expected {_SHAPES}"),
]
for _model in (AllOf, AnyOf, NoneOf):
    _model.model_rebuild()
_criteria: TypeAdapter[Criteria] = TypeAdapter(Criteria)
_TAG_NAMES = frozenset(_TAGS) | {"condition"}


def _path(loc: Sequence[int | str]) -> str:
    """``criteria.and[0].op`` from pydantic's location, which also names the union member chosen."""
    out = "criteria"
    expect_tag = True
    for part in loc:
        if expect_tag and part in _TAG_NAMES:
            expect_tag = False
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            expect_tag = True
        else:
            out += f".{part}"
            expect_tag = part == "not"
    return out


def _reason(error: Any) -> str:
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])


def _check_shape(raw: Any) -> None:
    """Depth and size limits, checked on the raw JSON before a recursive validator sees it."""
    stack: list[tuple[Any, int, str]] = [(raw, 1, "criteria")]
    seen = 0
    while stack:
        node, depth, path = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise CriteriaError("criteria", f"too many conditions: at most {MAX_NODES}")
        if depth > MAX_DEPTH:
            raise CriteriaError(path, f"nested too deeply: at most {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            continue
        for key in ("and", "or"):
            children = node.get(key)
            if isinstance(children, list):
                stack.extend((child, depth + 1, f"{path}.{key}[{i}]") for i, child in enumerate(children))
        if "not" in node:
            stack.append((node["not"], depth + 1, f"{path}.not"))


def parse_criteria(raw: Any) -> Criteria:
    """Validated criteria from JSON data; CriteriaError names the path and reason of each problem."""
    if isinstance(raw, BaseModel):
        return raw  # type: ignore[return-value]
    _check_shape(raw)
    try:
        return _criteria.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        problem = CriteriaError(_path(first["loc"]), _reason(first))
        if len(errors) > 1:
            more = "; ".join(f"{_path(e['loc'])}: {_reason(e)}" for e in errors[1:])
            problem = CriteriaError(problem.path, f"{problem.reason}; {more}")
        raise problem from None


def criteria_json(criteria: Criteria) -> dict[str, Any]:
    data: dict[str, Any] = _criteria.dump_python(criteria, mode="json", by_alias=True)
    return data


def uses_engagement(node: Criteria) -> bool:
    if isinstance(node, OpenedWithin | ClickedWithin | NeverOpened):
        return True
    if isinstance(node, AllOf | AnyOf):
        return any(uses_engagement(child) for child in (node.all_of if isinstance(node, AllOf) else node.any_of))
    if isinstance(node, NoneOf):
        return uses_engagement(node.negated)
    return False


def evaluate(node: Criteria, candidate: Candidate, now: datetime) -> bool | None:
    """True or False, or None when it depends on engagement the candidate does not carry."""
    if isinstance(node, Condition):
        return node.matches(candidate.member)
    if isinstance(node, AllOf | AnyOf):
        deciding = isinstance(node, AnyOf)  # the value that settles it: True for or, False for and
        unknown = False
        for child in node.any_of if isinstance(node, AnyOf) else node.all_of:
            verdict = evaluate(child, candidate, now)
            if verdict is deciding:
                return deciding
            unknown = unknown or verdict is None
        return None if unknown else not deciding
    if isinstance(node, NoneOf):
        verdict = evaluate(node.negated, candidate, now)
        return None if verdict is None else not verdict
    if not candidate.engagement_known:
        return None
    if isinstance(node, NeverOpened):
        return (candidate.opened is None) == node.never_opened
    if isinstance(node, OpenedWithin):
        return candidate.opened is not None and candidate.opened >= now - timedelta(days=node.opened_within_days)
    assert isinstance(node, ClickedWithin)
    return candidate.clicked is not None and candidate.clicked >= now - timedelta(days=node.clicked_within_days)


# ---- the API's models
class SegmentCreate(BaseModel):
    """Body of ``POST /v1/segments``."""

    model_config = ConfigDict(extra="forbid")
    name: OneLine = Field(min_length=1, max_length=200)
    criteria: Criteria
    list_ids: list[str] = Field(default_factory=list, max_length=MAX_LISTS,
                                description="only subscribed members of these lists; empty: all contacts")

    @field_validator("criteria", mode="before")
    @classmethod
    def _readable(cls, value: Any) -> Any:
        # parsed here so a bad condition is reported once, by its path, not per union member
        try:
            return parse_criteria(value)
        except CriteriaError as exc:
            raise PydanticCustomError("invalid_criteria", "{problem}", {"problem": str(exc)}) from None

    @field_validator("list_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

class SegmentPublic(BaseModel):
    id: str
    name: str
    criteria: dict[str, Any]
    list_ids: list[str]
    created_at: str


class SegmentPreview(BaseModel):
    count: int
    sample: list[AudienceMember]


def _digest(email: str) -> int:
    return int.from_bytes(hashlib.blake2b(email.lower().encode(), digest_size=8).digest(), "big")


def _public(item: dict[str, Any]) -> SegmentPublic:
    return SegmentPublic(id=item["id"], name=item["name"], criteria=json.loads(item["criteria"]),
                         list_ids=item.get("list_ids") or [], created_at=item["created_at"])


class SegmentStore:
    def __init__(self, table: Table, *, contacts: ContactStore) -> None:
        self.table = table
        self.contacts = contacts
        self._segments = Catalogue(table, row=keys.segment, partition=keys.SEGMENTS, ids=SEGMENT_ID,
                                   missing=lambda segment_id: SegmentNotFound(f"segment {segment_id!r} not found"))

    def create(self, body: SegmentCreate) -> SegmentPublic:
        """One BatchGetItem (the lists exist, else UnknownList) and one PutItem."""
        missing = sorted(set(body.list_ids) - self.contacts.existing_lists(body.list_ids)) if body.list_ids else []
        if missing:
            raise UnknownList(f"unknown list(s): {', '.join(missing)}")
        segment_id = f"seg_{secrets.token_hex(8)}"
        created = now_iso()
        return _public(self._segments.add(segment_id, created, id=segment_id, name=body.name,
                                          criteria=json.dumps(criteria_json(body.criteria)), list_ids=body.list_ids,
                                          created_at=created))

    def get(self, segment_id: str) -> SegmentPublic:
        """One GetItem (none for an id that cannot be a segment's)."""
        return _public(self._segments.get(segment_id))

    def list(self) -> list[SegmentPublic]:
        """Oldest first; one Query per 1 MB of segments."""
        return [_public(item) for item in self._segments.all()]

    def delete(self, segment_id: str) -> None:
        """One conditional DeleteItem (none for an id that cannot be a segment's)."""
        self._segments.remove(segment_id)

    def iter_members(self, segment_id: str, *, page_size: int | None = None,
                     first_page: int | None = None, within: AddressRange | None = None) -> Iterator[AudienceMember]:
        """The segment's members, lazily: one GetItem now (SegmentNotFound), the rest page by page as
        the iterator is consumed (see the module docstring for the cost). ``first_page`` caps the first
        Query of each list (``ContactStore.member_pages``); ``within`` reads only that range of each list's
        members (a segment of every contact is read whole: the caller keeps the range)."""
        segment = self.get(segment_id)
        return self.matching(parse_criteria(segment.criteria), segment.list_ids, page_size=page_size,
                             first_page=first_page, within=within)

    def preview(self, segment_id: str, *, sample_size: int = 10) -> SegmentPreview:
        """Count every member (a full evaluation) and keep the first ``sample_size``."""
        count = 0
        sample: list[AudienceMember] = []
        for member in self.iter_members(segment_id):
            count += 1
            if len(sample) < sample_size:
                sample.append(member)
        return SegmentPreview(count=count, sample=sample)

    def matching(self, criteria: Criteria, list_ids: Sequence[str], *, page_size: int | None = None,
                 first_page: int | None = None, within: AddressRange | None = None) -> Iterator[AudienceMember]:
        now = datetime.now(UTC)
        if not list_ids:
            for contact in self.contacts.iter_contacts():
                if contact.lists and all(status == "pending" for status in contact.lists.values()):
                    continue  # asked to join lists but confirmed none: not mailed until it does
                member = AudienceMember(email=contact.email, name=contact.name, language=contact.language,
                                        timezone=contact.timezone, attributes=contact.attributes)
                if evaluate(criteria, Candidate(member, contact.last_opened_at, contact.last_clicked_at), now):
                    yield member
            return
        # snapshots of one contact are the same in every list, so one verdict per address is enough
        seen: set[int] | None = set() if len(list_ids) > 1 else None
        for list_id in list_ids:
            for page in self.contacts.member_pages(list_id, status="subscribed", page_size=page_size,
                                                   first_page=first_page, within=within):
                undecided: list[AudienceMember] = []
                for item in page:
                    member = audience_member(item)
                    if seen is not None:
                        digest = _digest(member.email)
                        if digest in seen:
                            continue
                        seen.add(digest)
                    verdict = evaluate(criteria, Candidate(member, engagement_known=False), now)
                    if verdict:
                        yield member
                    elif verdict is None:
                        undecided.append(member)
                yield from self._with_engagement(criteria, undecided, now)

    def _with_engagement(self, criteria: Criteria, members: Iterable[AudienceMember],
                         now: datetime) -> Iterator[AudienceMember]:
        pending = list(members)
        for offset in range(0, len(pending), ENGAGEMENT_BATCH):
            part = pending[offset:offset + ENGAGEMENT_BATCH]
            known = self.contacts.engagement([contact_key(m.email) for m in part])
            for member in part:
                opened, clicked = known.get(contact_key(member.email), (None, None))
                if evaluate(criteria, Candidate(member, opened, clicked), now):
                    yield member
