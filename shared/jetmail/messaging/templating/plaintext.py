"""A plain-text template derived from an HTML template, placeholders kept.

The conversion runs once per template version on the Jinja source, not per recipient: the
constructs are swapped for word tokens, the HTML becomes text, and the tokens are swapped back,
so ``<a href="{{ reset_url }}">Reset</a>`` becomes ``Reset ({{ reset_url }})``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser

from jetmail.messaging.templating.markup import LineMap, Segment, restore, token_prefix

# Line breaks an element forces before and after itself: 1 ends the line, 2 leaves a blank line.
_BREAKS = {
    "p": 2, "h1": 2, "h2": 2, "h3": 2, "h4": 2, "h5": 2, "h6": 2, "table": 2, "ul": 2, "ol": 2,
    "blockquote": 2, "pre": 2, "dl": 2, "hr": 2,
    "div": 1, "tr": 1, "li": 1, "br": 1, "section": 1, "article": 1, "header": 1, "footer": 1,
    "center": 1, "dt": 1, "dd": 1, "address": 1, "main": 1, "nav": 1, "aside": 1, "figure": 1,
}  # fmt: skip
_SKIPPED = frozenset({"head", "style", "script", "title", "template", "noscript"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "source", "wbr"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\n\r\f\v\xa0]+")
_LINE_EDGES = re.compile(r"[ \t]*\n[ \t]*")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """HTML to text; ``counter`` (when given) turns ``<ol>`` numbering into template code.

    ``counter(list_id, item)`` returns text that starts a counter (``item`` false) or advances it
    and prints it (``item`` true); without it, items are numbered as they appear.
    """

    def __init__(self, counter: Callable[[int, bool], str] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.counter = counter
        self.lists_seen = 0
        self.out: list[str] = []
        self.pending_breaks = 0
        self.pending_space = False
        self.suppressed: str | None = None
        self.suppressed_depth = 0
        self.links: list[tuple[str | None, int]] = []
        # Per open list: None for <ul>, the item count so far or a counter id for <ol>.
        self.list_counters: list[int | None] = []
        self.cell_in_row = 0

    def _break(self, count: int) -> None:
        self.pending_breaks = max(self.pending_breaks, count)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.out and self.pending_breaks:
            self.out.append("\n" * self.pending_breaks)
        elif self.pending_space and self.out and not self.out[-1].endswith((" ", "\n")):
            self.out.append(" ")
        self.pending_breaks = 0
        self.pending_space = False
        if not self.out or self.out[-1].endswith("\n"):
            text = text.lstrip(" ")
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.suppressed is not None:
            if tag == self.suppressed and tag not in _VOID:
                self.suppressed_depth += 1
            return
        attributes = dict(attrs)
        if tag in _SKIPPED or _HIDDEN_STYLE.search(attributes.get("style") or ""):
            if tag not in _VOID:
                self.suppressed, self.suppressed_depth = tag, 1
            return
        if tag in _BREAKS:
            self._break(_BREAKS[tag])
        if tag == "ul":
            self.list_counters.append(None)
        elif tag == "ol":
            self.lists_seen += 1
            if self.counter is not None:
                self._emit(self.counter(self.lists_seen, False))
            self.list_counters.append(self.lists_seen if self.counter is not None else 0)
        elif tag == "li":
            counter = self.list_counters[-1] if self.list_counters else None
            if counter is None:
                self._emit("- ")
            elif self.counter is not None:
                self._emit(self.counter(counter, True))
            else:
                self.list_counters[-1] = counter + 1
                self._emit(f"{counter + 1}. ")
        elif tag == "tr":
            self.cell_in_row = 0
        elif tag in ("td", "th"):
            if self.cell_in_row:
                self.pending_space = True
            self.cell_in_row += 1
        elif tag == "a":
            self.links.append((attributes.get("href"), len(self.out)))
        elif tag == "img" and self.links:
            self._emit(attributes.get("alt") or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.suppressed is not None:
            if tag == self.suppressed:
                self.suppressed_depth -= 1
                if self.suppressed_depth == 0:
                    self.suppressed = None
            return
        if tag in _BREAKS:
            self._break(_BREAKS[tag])
        if tag in ("ul", "ol") and self.list_counters:
            self.list_counters.pop()
        elif tag in ("td", "th"):
            self.pending_space = True
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            self._close_link(href, start)

    def _close_link(self, href: str | None, start: int) -> None:
        url = (href or "").strip()
        if not url or url.startswith("#"):
            return
        if url.lower().startswith("mailto:"):
            url = url[7:].split("?", 1)[0]
        label = "".join(self.out[start:]).strip()
        if not label:
            self._emit(url)
        elif label != url:
            self.pending_space = True
            self._emit(f"({url})")

    def handle_data(self, data: str) -> None:
        if self.suppressed is not None:
            return
        text = _SPACES.sub(" ", data)
        if text == " ":
            self.pending_space = True
            return
        if text.startswith(" "):
            self.pending_space = True
            text = text[1:]
        trailing = text.endswith(" ")
        self._emit(text.rstrip(" "))
        if trailing:
            self.pending_space = True

    def text(self) -> str:
        self.close()
        joined = _LINE_EDGES.sub("\n", "".join(self.out))
        return _BLANK_RUNS.sub("\n\n", joined).strip()


def html_to_text(html: str) -> str:
    """Readable plain text for an HTML document: links as ``text (url)``, entities decoded."""
    extractor = _TextExtractor()
    extractor.feed(html)
    return extractor.text()


def tidy_text(text: str) -> str:
    """Whitespace cleanup after rendering a derived text body (empty branches leave blank lines)."""
    return _BLANK_RUNS.sub("\n\n", _LINE_EDGES.sub("\n", text)).strip() + "\n"


def derive_text_template(segments: list[Segment]) -> tuple[str, LineMap]:
    """A plain-text Jinja source with the same placeholders and logic as the HTML source.

    Constructs in attributes other than ``href`` and ``alt`` vanish with their attribute, so
    the caller must parse the result: a lost half of an ``if`` shows up there.
    """
    prefix = token_prefix("".join(s.text for s in segments))
    constructs: list[Segment] = []
    parts: list[str] = []

    def tokenize(segment: Segment) -> str:
        constructs.append(segment)
        return f"{prefix}{len(constructs) - 1}z"

    for segment in segments:
        if segment.kind == "html":
            parts.append(segment.text)
        elif segment.kind != "comment":
            parts.append(tokenize(segment))

    def counter(list_id: int, item: bool) -> str:
        # Items of an <ol> are often produced by a loop, so the number is counted when the
        # text renders; the prefix cannot clash with names in the source.
        name = f"{prefix}_ol{list_id}"
        line = extractor.getpos()[0]
        if not item:
            return tokenize(Segment("block", f"{{% set {name} = namespace(n=0) %}}", line))
        return tokenize(Segment("variable", f"{{% set {name}.n = {name}.n + 1 %}}{{{{ {name}.n }}}}. ", line))

    extractor = _TextExtractor(counter)
    extractor.feed("".join(parts))
    text = extractor.text()
    token = re.compile(rf"{re.escape(prefix)}(\d+)z")
    text = _join_statement_lines(text, token, constructs)
    return restore(text, token, constructs, allow_dropped=True)


def _join_statement_lines(text: str, token: re.Pattern[str], constructs: list[Segment]) -> str:
    """Lines holding only ``{% ... %}`` tags lose their newline, as ``trim_blocks`` would do.

    Otherwise every loop iteration and every ``if`` in the HTML adds a blank line to the text.
    """
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        only_statements = (
            bool(stripped)
            and not token.sub("", stripped).strip()
            and all(constructs[int(m.group(1))].kind == "block" for m in token.finditer(stripped))
        )
        if only_statements:
            out.append(stripped)
        else:
            out.append(line + ("\n" if i < len(lines) - 1 else ""))
    return "".join(out)
