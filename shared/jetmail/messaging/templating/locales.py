"""Locale tags and the fallback order used to pick a template translation."""

from __future__ import annotations

import re
from collections.abc import Iterable

_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")


def normalize_locale(tag: str) -> str:
    """Canonical case for a BCP 47 tag: ``de_at`` -> ``de-AT``, ``zh-hant-tw`` -> ``zh-Hant-TW``."""
    if not _TAG.match(tag):
        raise ValueError(f"not a locale tag: {tag!r}")
    language, *subtags = tag.replace("_", "-").split("-")
    parts = [language.lower()]
    for sub in subtags:
        if len(sub) == 2 and sub.isalpha():
            parts.append(sub.upper())
        elif len(sub) == 4 and sub.isalpha():
            parts.append(sub.title())
        else:
            parts.append(sub.lower())
    return "-".join(parts)


def _prefixes(tag: str) -> list[str]:
    parts = tag.split("-")
    # A trailing singleton ("-u", "-x") introduces an extension and is no locale by itself.
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1) if n == 1 or len(parts[n - 1]) > 1]


def locale_chain(requested: str | None, default: str) -> list[str]:
    """Locales to try in order: ``de-AT`` with default ``en`` -> ``["de-AT", "de", "en"]``.

    An unparsable ``requested`` tag is skipped (it usually comes from a recipient record);
    an unparsable ``default`` is a configuration error and raises ``ValueError``.
    """
    chain: list[str] = []
    if requested:
        try:
            chain.extend(_prefixes(normalize_locale(requested.strip())))
        except ValueError:
            pass
    chain.extend(_prefixes(normalize_locale(default)))
    return list(dict.fromkeys(chain))


def pick_locale(available: Iterable[str], requested: str | None, default: str) -> str | None:
    """The best of ``available`` (returned as spelled there) for a recipient, or ``None``.

    Walks :func:`locale_chain`; when a language has no exact match, a sibling region of the
    same language (``de-DE`` for ``de-AT``) is better than falling back to another language.
    """
    by_tag: dict[str, str] = {}
    for tag in available:
        try:
            by_tag.setdefault(normalize_locale(tag), tag)
        except ValueError:
            continue
    if not by_tag:
        return None
    for candidate in locale_chain(requested, default):
        if candidate in by_tag:
            return by_tag[candidate]
        if "-" in candidate:
            continue
        siblings = sorted(tag for tag in by_tag if tag.startswith(candidate + "-"))
        if siblings:
            return by_tag[siblings[0]]
    return None
