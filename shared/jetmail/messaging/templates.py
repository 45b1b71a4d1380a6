"""Templates in DynamoDB: immutable versions plus one head item per (name, locale).

Saving writes the new version and moves the head in one transaction conditioned on the head's
previous version, so two concurrent saves can never both become version N. Rendering reads only
heads (one GetItem per locale tried), and each process keeps what it read, a missing head included,
for ``head_ttl_s`` (``JETMAIL_TEMPLATE_CACHE_S``, 0: no cache): the API's submit and the worker's
render resolve a template without a request, and a template saved elsewhere takes effect within
that time (at once in the process that saved it). A head carries its whole version, and a version
never changes, so only the head's age matters. The layout a template extends or includes is read the
same way: all heads of its name in one Query, the translation for the template's locale kept as long.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

from jetmail.messaging.templating import (
    RenderLimits,
    TemplateContent,
    TemplateVersion,
    check_template,
    locale_chain,
    pick_layout,
)
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table

if TYPE_CHECKING:
    from jetmail.compliance.audit import AuditLog

_K = TypeVar("_K", bound=Hashable)
_T = TypeVar("_T")


class TemplateNotFound(LookupError):
    def __init__(self, name: str, locale: str | None = None) -> None:
        self.name = name
        self.locale = locale
        super().__init__(f"template {name!r}" + (f" has no locale {locale!r}" if locale else " not found"))


class TemplateConflict(RuntimeError):
    """Another save moved the head first; the caller may retry."""


def _version_from(item: dict[str, Any]) -> TemplateVersion:
    fields = {k: item.get(k) for k in ("name", "locale", "subject", "html", "text", "category", "description",
                                       "sample_context", "version")}
    return TemplateVersion.model_validate({k: v for k, v in fields.items() if v is not None})


class TemplateStore:
    def __init__(self, table: Table, *, default_locale: str, head_ttl_s: float = 5.0,
                 limits: RenderLimits | None = None) -> None:
        self.table = table
        # the limits sending renders with: saving test-renders the sample context under them
        self.limits = limits or RenderLimits()
        self.default_locale = default_locale
        self.head_ttl_s = head_ttl_s
        self._heads: dict[tuple[str, str], tuple[float, TemplateVersion | None]] = {}
        self._layouts: dict[tuple[str, str], tuple[float, TemplateVersion | None]] = {}
        self._lock = threading.Lock()

    def save(self, content: TemplateContent) -> TemplateVersion:
        # the layouts it names are read afresh (one saved a moment ago in another process counts), once
        check_template(content, limits=self.limits, layouts=cache(partial(self.layout, cached=False)))
        head_key = keys.template_head(content.name, content.locale)
        head = self.table.get(*head_key, consistent=True)
        previous = int(head["version"]) if head else 0
        version = TemplateVersion(**content.model_dump(), version=previous + 1)
        now = datetime.now(UTC).isoformat()
        body = {**version.model_dump(), "updated_at": now}
        version_key = keys.template_version(content.name, content.locale, version.version)
        head_condition = "attribute_not_exists(pk)" if previous == 0 else "version = :prev"
        head_item = head_key.item(gsi1pk=keys.TEMPLATES, gsi1sk=f"{content.name}#{content.locale}", **body)
        try:
            self.table.transact([
                self.table.put_op(version_key.item(**body), condition="attribute_not_exists(pk)"),
                self.table.put_op(head_item, condition=head_condition,
                                  params={":prev": previous} if previous else None),
            ])
        except ConditionFailed:
            raise TemplateConflict(f"template {content.name!r} ({content.locale}) changed concurrently") from None
        with self._lock:
            self._heads[(content.name, content.locale)] = (time.monotonic(), version)
            self._forget_layout(content.name)
        return version

    def _kept(self, cache: dict[_K, tuple[float, _T]], key: _K, read: Callable[[], _T], *, cached: bool) -> _T:
        """``read()``, or what it returned less than ``head_ttl_s`` ago."""
        if cached:
            with self._lock:
                hit = cache.get(key)
            if hit and time.monotonic() - hit[0] < self.head_ttl_s:
                return hit[1]
        found = read()
        with self._lock:
            cache[key] = (time.monotonic(), found)
        return found

    def head(self, name: str, locale: str, *, cached: bool = True) -> TemplateVersion | None:
        def read() -> TemplateVersion | None:
            item = self.table.get(*keys.template_head(name, locale))
            return _version_from(item) if item else None

        return self._kept(self._heads, (name, locale), read, cached=cached)

    def layout(self, name: str, locale: str, *, cached: bool = True) -> TemplateVersion | None:
        """The translation of ``name`` that a template in ``locale`` extends or includes (see
        :func:`~jetmail.messaging.templating.pick_layout`), the renderer's
        :data:`~jetmail.messaging.templating.LayoutLoader`:
        one Query for the heads of ``name``, kept for ``head_ttl_s`` like a head."""
        def read() -> TemplateVersion | None:
            return pick_layout(self._heads_of(name), locale, self.default_locale)

        return self._kept(self._layouts, (name, locale), read, cached=cached)

    def _forget_layout(self, name: str) -> None:
        """Call with the lock held."""
        for key in [k for k in self._layouts if k[0] == name]:
            del self._layouts[key]

    def resolve(self, name: str, locale: str | None) -> TemplateVersion:
        """The latest version for the best locale: ``de-AT`` → ``de`` → the default locale."""
        for candidate in locale_chain(locale, self.default_locale):
            found = self.head(name, candidate)
            if found is not None:
                return found
        raise TemplateNotFound(name)

    def get(self, name: str, *, locale: str, version: int | None = None) -> TemplateVersion:
        if version is None:
            found = self.head(name, locale, cached=False)
            if found is None:
                raise TemplateNotFound(name, locale)
            return found
        item = self.table.get(*keys.template_version(name, locale, version))
        if item is None:
            raise TemplateNotFound(name, locale)
        return _version_from(item)

    def versions(self, name: str, *, locale: str) -> list[TemplateVersion]:
        return [_version_from(i) for i in self.table.query_all(pk=keys.template_partition(name),
                                                               sk_prefix=keys.template_versions_prefix(locale))]

    def list(self) -> list[TemplateVersion]:
        return [_version_from(i) for i in self.table.query_all(pk=keys.TEMPLATES, index="gsi1")]

    def locales(self, name: str) -> builtins.list[str]:
        return builtins.list(self._heads_of(name))

    def _heads_of(self, name: str) -> dict[str, TemplateVersion]:
        """The latest version of each locale of ``name``: one Query."""
        items = self.table.query_all(pk=keys.template_partition(name), sk_prefix=keys.HEAD_PREFIX)
        return {i["locale"]: _version_from(i) for i in items}

    def delete(self, name: str, *, locale: str | None = None) -> int:
        rows = [
            (i["pk"], i["sk"])
            for i in self.table.query_all(pk=keys.template_partition(name))
            if locale is None or i["sk"] == keys.template_head(name, locale).sk
            or i["sk"].startswith(keys.template_versions_prefix(locale))
        ]
        if not rows:
            raise TemplateNotFound(name, locale)
        self.table.batch_delete(rows)
        with self._lock:
            for key in [k for k in self._heads if k[0] == name and (locale is None or k[1] == locale)]:
                del self._heads[key]
            self._forget_layout(name)
        return len(rows)


class AuditedTemplateStore(TemplateStore):
    """The template store, recording each save and delete (whoever calls it: API, CLI, bootstrap)."""

    def __init__(self, table: Table, *, audit: AuditLog, default_locale: str, head_ttl_s: float = 5.0,
                 limits: RenderLimits | None = None) -> None:
        super().__init__(table, default_locale=default_locale, head_ttl_s=head_ttl_s, limits=limits)
        self.audit = audit

    def save(self, content: TemplateContent) -> TemplateVersion:
        version = super().save(content)
        self.audit.record("template.saved", target=f"{content.name}/{content.locale}",
                          changes={"version": version.version, "category": content.category,
                                   "subject": content.subject})
        return version

    def delete(self, name: str, *, locale: str | None = None) -> int:
        removed = super().delete(name, locale=locale)
        self.audit.record("template.deleted", target=f"{name}/{locale}" if locale else name,
                          changes={"items": removed})
        return removed


__all__ = ["AuditedTemplateStore", "ConditionFailed", "TemplateConflict", "TemplateNotFound", "TemplateStore"]
