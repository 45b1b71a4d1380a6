"""Split a template into HTML text and Jinja constructs, and track the HTML context of each.

CSS inlining and HTML-to-text conversion both need to parse the HTML of a template that is
still full of Jinja syntax; the constructs are swapped for inert tokens first and swapped back
afterwards, and the security checks need to know where in the markup each construct sits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from jinja2 import Environment

SegmentKind = Literal["html", "variable", "block", "comment"]
Context = Literal["data", "tag", "attribute", "unquoted", "rawtext", "comment"]

#: Stands for a template construct inside a scanned attribute value or raw text.
DYNAMIC = "\ue000"

_BEGIN: dict[str, SegmentKind] = {
    "variable_begin": "variable",
    "block_begin": "block",
    "comment_begin": "comment",
}
_END = frozenset({"variable_end", "block_end", "comment_end"})


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    text: str
    line: int


def split_segments(env: Environment, source: str, *, keep_raw: bool = False) -> list[Segment]:
    """The source as alternating HTML text and whole Jinja constructs, with start lines.

    The content of ``{% raw %}`` blocks is HTML like any other: it is checked, styled and
    converted to text too (text is escaped again when constructs are restored). With
    ``keep_raw`` the ``{% raw %}`` tags stay in the HTML text, so that joining the segments
    gives a source that renders the same. Whitespace that a ``-`` marker strips is dropped by
    the lexer; it would not be output anyway.
    """
    segments: list[Segment] = []
    kind: SegmentKind | None = None
    parts: list[str] = []
    start = 1
    for lineno, token, value in env.lex(source):
        if kind is None:
            if token in _BEGIN:
                kind, parts, start = _BEGIN[token], [value], lineno
            elif keep_raw or token not in ("raw_begin", "raw_end"):
                segments.append(Segment("html", value, lineno))
            continue
        parts.append(value)
        if token in _END:
            segments.append(Segment(kind, "".join(parts), start))
            kind = None
    if kind is not None:
        segments.append(Segment(kind, "".join(parts), start))
    return segments


@dataclass(slots=True)
class Attribute:
    name: str
    value: str | None
    line: int


@dataclass(slots=True)
class Tag:
    name: str
    line: int
    attributes: list[Attribute] = field(default_factory=list)


@dataclass(slots=True)
class RawText:
    tag: str
    text: str
    line: int


@dataclass(slots=True)
class Scan:
    tags: list[Tag]
    raw_texts: list[RawText]
    #: For each segment: where in the markup a Jinja construct sits; ``None`` for HTML text.
    contexts: list[Context | None]


# Tokenizer states, a small subset of the HTML5 tokenizer that is enough to know whether a
# position is text, inside a tag, inside an attribute value, a comment or raw text.
_DATA, _TAG_NAME, _END_TAG, _BEFORE_ATTR, _ATTR_NAME, _AFTER_ATTR_NAME = range(6)
_BEFORE_VALUE, _VALUE_DQ, _VALUE_SQ, _VALUE_UNQ, _COMMENT, _BOGUS, _RAWTEXT = range(6, 13)

_CONTEXT_OF_STATE: dict[int, Context] = {
    _DATA: "data",
    _TAG_NAME: "tag",
    _END_TAG: "tag",
    _BEFORE_ATTR: "tag",
    _ATTR_NAME: "tag",
    _AFTER_ATTR_NAME: "tag",
    _BEFORE_VALUE: "unquoted",
    _VALUE_DQ: "attribute",
    _VALUE_SQ: "attribute",
    _VALUE_UNQ: "unquoted",
    _COMMENT: "comment",
    _BOGUS: "comment",
    _RAWTEXT: "rawtext",
}
_RAWTEXT_TAGS = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"})
_TAG_NAME_CHARS = re.compile(r"[^\s/>]*")
_ATTR_NAME_CHARS = re.compile(r"[^\s/>=]*")
_UNQUOTED_CHARS = re.compile(r"[^\s>]*")
_SPACE = re.compile(r"\s*")
_SPACE_OR_SLASH = re.compile(r"[\s/]*")
_RAWTEXT_END: dict[str, re.Pattern[str]] = {
    name: re.compile(rf"</{name}(?=[\s/>])", re.IGNORECASE) for name in _RAWTEXT_TAGS
}


class _Scanner:
    def __init__(self) -> None:
        self.state = _DATA
        self.tags: list[Tag] = []
        self.raw_texts: list[RawText] = []
        self.tag: Tag | None = None
        self.name: list[str] = []
        self.value: list[str] = []
        self.attr_line = 0
        self.raw_tag = ""
        self.raw: list[str] = []
        self.raw_line = 0
        self.line = 1
        self.text = ""
        self.counted = 0

    def _line_at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.counted, pos)
        self.counted = pos
        return self.line

    def construct(self) -> Context:
        context = _CONTEXT_OF_STATE[self.state]
        if self.state == _ATTR_NAME:
            self.name.append(DYNAMIC)
        elif self.state in (_VALUE_DQ, _VALUE_SQ, _VALUE_UNQ):
            self.value.append(DYNAMIC)
        elif self.state == _BEFORE_VALUE:
            self.value.append(DYNAMIC)
            self.state = _VALUE_UNQ
        elif self.state == _RAWTEXT:
            self.raw.append(DYNAMIC)
        return context

    def _finish_attribute(self, *, with_value: bool) -> None:
        if self.tag is not None and self.name:
            value = "".join(self.value) if with_value else None
            self.tag.attributes.append(Attribute("".join(self.name).lower(), value, self.attr_line))
        self.name = []
        self.value = []

    def _emit_tag(self) -> None:
        tag, self.tag = self.tag, None
        self.state = _DATA
        if tag is None:
            return
        self.tags.append(tag)
        if tag.name in _RAWTEXT_TAGS:
            self.state, self.raw_tag, self.raw, self.raw_line = _RAWTEXT, tag.name, [], self.line

    def feed(self, text: str, line: int) -> None:
        self.text, self.counted, self.line = text, 0, line
        i, n = 0, len(text)
        while i < n:
            state = self.state
            if state == _DATA:
                j = text.find("<", i)
                if j < 0 or j + 1 >= n:
                    return
                nxt = text[j + 1]
                if nxt.isascii() and nxt.isalpha():
                    self.tag = Tag("", self._line_at(j))
                    self.name = []
                    self.state, i = _TAG_NAME, j + 1
                elif nxt == "/":
                    self.state, i = _END_TAG, j + 2
                elif text.startswith("<!--", j):
                    self.state, i = _COMMENT, j + 4
                elif nxt in "!?":
                    self.state, i = _BOGUS, j + 2
                else:
                    i = j + 1
            elif state == _TAG_NAME:
                m = _TAG_NAME_CHARS.match(text, i)
                assert m is not None and self.tag is not None
                self.tag.name += m.group().lower()
                i = m.end()
                if i < n:
                    if text[i] == ">":
                        self._emit_tag()
                    else:
                        self.state = _BEFORE_ATTR
                    i += 1
            elif state in (_END_TAG, _BOGUS):
                j = text.find(">", i)
                if j < 0:
                    return
                self.state, i = _DATA, j + 1
            elif state == _COMMENT:
                j = text.find("-->", i)
                if j < 0:
                    return
                self.state, i = _DATA, j + 3
            elif state == _BEFORE_ATTR:
                m = _SPACE_OR_SLASH.match(text, i)
                assert m is not None
                i = m.end()
                if i < n:
                    if text[i] == ">":
                        self._emit_tag()
                        i += 1
                    else:
                        self.state, self.name, self.attr_line = _ATTR_NAME, [], self._line_at(i)
                        self.name.append(text[i])
                        i += 1
            elif state == _ATTR_NAME:
                m = _ATTR_NAME_CHARS.match(text, i)
                assert m is not None
                self.name.append(m.group())
                i = m.end()
                if i < n:
                    ch = text[i]
                    if ch == "=":
                        self.state = _BEFORE_VALUE
                    elif ch == ">":
                        self._finish_attribute(with_value=False)
                        self._emit_tag()
                    elif ch == "/":
                        self._finish_attribute(with_value=False)
                        self.state = _BEFORE_ATTR
                    else:
                        self.state = _AFTER_ATTR_NAME
                    i += 1
            elif state == _AFTER_ATTR_NAME:
                m = _SPACE.match(text, i)
                assert m is not None
                i = m.end()
                if i < n:
                    ch = text[i]
                    if ch == "=":
                        self.state, i = _BEFORE_VALUE, i + 1
                    else:
                        self._finish_attribute(with_value=False)
                        self.state = _BEFORE_ATTR
            elif state == _BEFORE_VALUE:
                m = _SPACE.match(text, i)
                assert m is not None
                i = m.end()
                if i < n:
                    ch = text[i]
                    if ch == '"':
                        self.state, i = _VALUE_DQ, i + 1
                    elif ch == "'":
                        self.state, i = _VALUE_SQ, i + 1
                    elif ch == ">":
                        self._finish_attribute(with_value=True)
                        self._emit_tag()
                        i += 1
                    else:
                        self.state = _VALUE_UNQ
            elif state in (_VALUE_DQ, _VALUE_SQ):
                quote = '"' if state == _VALUE_DQ else "'"
                j = text.find(quote, i)
                if j < 0:
                    self.value.append(text[i:])
                    return
                self.value.append(text[i:j])
                self._finish_attribute(with_value=True)
                self.state, i = _BEFORE_ATTR, j + 1
            elif state == _VALUE_UNQ:
                m = _UNQUOTED_CHARS.match(text, i)
                assert m is not None
                self.value.append(m.group())
                i = m.end()
                if i < n:
                    self._finish_attribute(with_value=True)
                    if text[i] == ">":
                        self._emit_tag()
                    else:
                        self.state = _BEFORE_ATTR
                    i += 1
            else:  # _RAWTEXT
                m = _RAWTEXT_END[self.raw_tag].search(text, i)
                if m is None:
                    self.raw.append(text[i:])
                    return
                self.raw.append(text[i : m.start()])
                self.raw_texts.append(RawText(self.raw_tag, "".join(self.raw), self.raw_line))
                self.state, i = _END_TAG, m.end()


def scan(segments: list[Segment]) -> Scan:
    """Tags with attribute values (constructs shown as :data:`DYNAMIC`) and each construct's context."""
    scanner = _Scanner()
    contexts: list[Context | None] = []
    for segment in segments:
        if segment.kind == "html":
            scanner.feed(segment.text, segment.line)
            contexts.append(None)
        else:
            contexts.append(scanner.construct())
    return Scan(scanner.tags, scanner.raw_texts, contexts)


# --- swapping constructs for tokens and back


def token_prefix(source: str) -> str:
    """A token prefix that cannot collide with text already in the source."""
    prefix = "jmph"
    # HTML parsers lowercase tag and attribute names, so compare without case.
    source = source.lower()
    while prefix in source:
        prefix += "q"
    return prefix


@dataclass(frozen=True, slots=True)
class LineMap:
    """Maps lines of a rewritten source back to the authored source, for error messages."""

    points: tuple[tuple[int, int], ...] = ()

    def original(self, line: int | None) -> int | None:
        if line is None:
            return None
        best: int | None = None
        for out_line, source_line in self.points:
            if out_line > line:
                break
            best = source_line
        return best


# A brace that could open Jinja syntax: before another opener, or at the end of a text run
# where a construct follows.
_OPENING_BRACE = re.compile(r"\{(?=[{%#]|\Z)")


def _escape_braces(text: str) -> str:
    return _OPENING_BRACE.sub('{{ "{" }}', text) if "{" in text else text


class TokenLostError(ValueError):
    """A construct did not survive an HTML round trip; ``line`` is where it was authored."""

    def __init__(self, line: int) -> None:
        self.line = line
        super().__init__(f"template construct at line {line} was dropped")


def restore(
    text: str,
    pattern: re.Pattern[str],
    constructs: list[Segment],
    *,
    allow_dropped: bool = False,
) -> tuple[str, LineMap]:
    """Put constructs back where ``pattern`` (one group per alternative: the index) matches.

    Every construct must come back exactly once (or at most once with ``allow_dropped``),
    otherwise the HTML round trip changed the template's logic and :class:`TokenLostError`
    names the first missing one. Text between constructs may hold braces decoded from
    entities (``&#123;&#123;``); they are escaped so they can never become Jinja syntax.
    """
    pieces: list[str] = []
    points: list[tuple[int, int]] = []
    seen = [0] * len(constructs)
    last = 0
    out_line = 1
    for m in pattern.finditer(text):
        index = int(next(g for g in m.groups() if g is not None))
        segment = constructs[index]
        seen[index] += 1
        before = text[last : m.start()]
        out_line += before.count("\n")
        pieces.append(_escape_braces(before))
        points.append((out_line, segment.line))
        pieces.append(segment.text)
        out_line += segment.text.count("\n")
        last = m.end()
    pieces.append(_escape_braces(text[last:]))
    for index, count in enumerate(seen):
        if count > 1 or (count == 0 and not allow_dropped):
            raise TokenLostError(constructs[index].line)
    return "".join(pieces), LineMap(tuple(points))
