"""CSS inlining of an HTML template that still contains Jinja syntax.

``css_inline`` parses with a real HTML5 parser, which would mangle ``{% if a > b %}`` and move
text that sits between table rows, so every construct is swapped for a token first: an HTML
comment in text (comments stay put, even inside ``<table>``) and a bare word inside attribute
values and ``<style>``/``<title>`` text. The tokens are swapped back after inlining.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import css_inline

from jetmail.messaging.templating.markup import Context, LineMap, Segment, restore, token_prefix

Inliner = Callable[[str], str]


def default_inliner() -> Inliner:
    """Inline ``<style>`` rules, keep ``@media`` rules for responsive layouts, never fetch."""
    inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    return inliner.inline


def inline_template(
    segments: list[Segment], contexts: list[Context | None], *, inline: Inliner
) -> tuple[str, LineMap]:
    """The template source with styles inlined and every construct intact.

    Raises :class:`~jetmail.messaging.templating.markup.TokenLostError` when the HTML parser dropped or
    duplicated a construct (template logic inside ``<style>`` rules, for example).
    """
    prefix = token_prefix("".join(s.text for s in segments))
    constructs: list[Segment] = []
    parts: list[str] = []
    for segment, context in zip(segments, contexts, strict=True):
        if segment.kind == "html":
            parts.append(segment.text)
        elif segment.kind != "comment":
            token = f"{prefix}{len(constructs)}z"
            constructs.append(segment)
            parts.append(f"<!--{token}-->" if context == "data" else token)
    source = "".join(parts)
    inlined = inline(source)
    if source.isascii() and not inlined.isascii():
        # the parser decoded the template's character references (``&middot;``): they go back as numeric ones, so
        # the HTML stays 7-bit as written, and a mail is sent without quoted-printable. Only references can have
        # become non-ASCII here, in text and attribute values, where ``&#183;`` means what ``&middot;`` did.
        inlined = inlined.encode("ascii", "xmlcharrefreplace").decode("ascii")
    p = re.escape(prefix)
    pattern = re.compile(rf'<!--{p}(\d+)z-->|{p}(\d+)z(?:="")?')
    return restore(inlined, pattern, constructs)
