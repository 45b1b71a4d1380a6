"""The links of rendered HTML: click tracking rewrites each ``<a href>``, marketing mail gets an open pixel."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator

#: ``(index, original_url) -> tracked_url``; index counts rewritten links in document order.
LinkRewriter = Callable[[int, str], str]

# An <a> start tag up to its href value; quoted attribute values may contain ">".
_ANCHOR_HREF = re.compile(
    r"""<a\b(?:[^>"']|"[^"]*"|'[^']*')*?\shref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
    re.IGNORECASE,
)


def anchor_hrefs(body: str) -> Iterator[tuple[re.Match[str], int]]:
    """Each ``<a href>`` of ``body``: the match and the group holding the value as written (1-3 by quoting)."""
    for m in _ANCHOR_HREF.finditer(body):
        yield m, 1 if m.start(1) >= 0 else 2 if m.start(2) >= 0 else 3


def href_url(raw: str) -> str:
    """The URL an ``href`` value as written points to."""
    return (html.unescape(raw) if "&" in raw else raw).strip()


def tracked(url: str) -> bool:
    """Whether click tracking rewrites a link to ``url``: http and https only."""
    scheme = url[:8].lower()
    return scheme.startswith("https://") or scheme.startswith("http://")


def rewrite_links(
    body: str, rewriter: LinkRewriter, *, keep: str | frozenset[str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """Replace each http(s) ``<a href>`` (except ``keep``: a URL or a set of them) by ``rewriter(index, url)``.

    Returns the new HTML and the original URLs, position ``i`` holding link ``i``.
    """
    kept = frozenset({keep}) if isinstance(keep, str) else keep or frozenset()
    pieces: list[str] = []
    links: list[str] = []
    last = 0
    for m, group in anchor_hrefs(body):
        url = href_url(m.group(group))
        if not tracked(url) or url in kept:
            continue
        replacement = html.escape(rewriter(len(links), url), quote=True)
        links.append(url)
        pieces.append(body[last : m.start(group)])
        pieces.append(replacement if group != 3 else f'"{replacement}"')
        last = m.end(group)
    if not links:
        return body, ()
    pieces.append(body[last:])
    return "".join(pieces), tuple(links)


def append_pixel(body: str, url: str) -> str:
    """``body`` with a 1x1 image of ``url`` before ``</body>`` (at the end without one)."""
    pixel = f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="">'
    end = body.rfind("</body>")
    if end < 0:
        return body + pixel
    return f"{body[:end]}{pixel}{body[end:]}"
