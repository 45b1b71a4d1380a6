"""``{% extends %}`` and ``{% include %}``: templates built from layouts kept in the template store.

A template names a layout by the name it is stored under, in quotes; the translation used is the one
:func:`~jetmail.messaging.templating.library.pick_layout` chooses for the template's own locale. Before any
check, CSS inlining or compilation, the names are looked up and the template is expanded into one
self-contained source, its blocks filled into the layout's: a layout's ``<style>`` then styles the
blocks a template fills in, and the HTML checks see the markup each block lands in. Jinja itself never
loads a template, so a template reaches nothing but the store it is saved in.

Blocks follow Jinja's rules (the most derived definition wins, ``{{ super() }}`` renders the one it
overrides, ``required`` blocks must be filled), except that a block sees the variables around it, as
if every block were ``scoped``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from jinja2 import Environment, TemplateSyntaxError
from jinja2.lexer import Token

from jetmail.messaging.templating.errors import TemplateField, TemplateProblem
from jetmail.messaging.templating.markup import Segment, split_segments
from jetmail.messaging.templating.model import TemplateContent, TemplateVersion

#: ``(name, locale) -> version``: the translation of ``name`` that a template in ``locale`` extends or
#: includes, or ``None`` when there is none (see :func:`~jetmail.messaging.templating.library.pick_layout`).
LayoutLoader = Callable[[str, str], TemplateVersion | None]
#: The names an expansion looked up, each with the version found (``None``: there was none).
LayoutsUsed = tuple[tuple[str, TemplateVersion | None], ...]

#: How many templates an extends and include chain may hold, the template itself included.
MAX_LAYOUT_DEPTH = 8
#: An expanded source may be as long as one stored source.
MAX_EXPANDED_CHARS = 1_000_000
#: Blocks and includes filled in for one source; far more than any email needs, few enough to be quick.
MAX_EXPANSION_STEPS = 10_000
#: Blocks filled in within one another; only blocks that contain each other through super() get there.
MAX_BLOCK_DEPTH = 64

# A cheap test that a source may name a layout; the lexer decides.
_NAMES_LAYOUT = re.compile(r"\{%[-+]?\s*(?:extends|include)\b")
_CONSTRUCT_ENDS = frozenset({"block_begin", "block_end", "variable_begin", "variable_end"})
_CHILD_ONLY_BLOCKS = (
    "a template that extends a layout renders only its blocks; move this into a {% block %}"
)


@dataclass(frozen=True, slots=True)
class Origins:
    """Where each line of an expanded source was written: in the template itself or in a layout.

    ``pieces`` holds ``(first expanded line, last expanded line, layout name or None for the
    template itself, line there)`` for each piece of the expanded source, in order.
    """

    pieces: tuple[tuple[int, int, str | None, int], ...] = ()

    def locate(self, line: int | None) -> tuple[str | None, int | None]:
        """The layout (``None``: the template itself) and line that expanded ``line`` came from.

        A line that holds pieces of both is the template's own: its layouts were checked when
        they were saved.
        """
        if line is None:
            return None, line
        found: tuple[str | None, int | None] = (None, line)
        for first, last, origin, source_line in self.pieces:
            if first > line:
                break
            if last >= line:
                found = (origin, source_line + line - first)
                if origin is None:
                    break
        return found

    def relocate(self, problem: TemplateProblem) -> TemplateProblem:
        """``problem``, found in the expanded source, placed where its line was written."""
        origin, line = self.locate(problem.line)
        return _problem(problem.field, origin, line, problem.message)


def _problem(field: TemplateField, origin: str | None, line: int | None, message: str) -> TemplateProblem:
    if origin is None:
        return TemplateProblem(field, line, message)
    where = f", line {line}" if line is not None else ""
    return TemplateProblem(field, None, f'{message} (in layout "{origin}"{where})')


@dataclass(frozen=True, slots=True)
class Expansion:
    """A template with the layouts it names expanded in; a field that names none is left as it is."""

    content: TemplateContent
    origins: Mapping[TemplateField, Origins]
    problems: list[TemplateProblem]
    #: The expansion holds while looking these names up again finds the same versions.
    layouts: LayoutsUsed


def expand(content: TemplateContent, *, env: Environment, layouts: LayoutLoader | None) -> Expansion:
    """Expand every field that extends or includes a layout; ``layouts`` finds them (none: no layouts).

    A field that does not parse is left as it is, for the syntax checks to report. Costs one
    ``layouts`` call per distinct name, and a parse of each layout used.
    """
    found: dict[str, TemplateVersion | None] = {}
    sources: dict[str, str | None] = {"subject": content.subject, "html": content.html, "text": content.text}
    origins: dict[TemplateField, Origins] = {}
    problems: list[TemplateProblem] = []
    parts: tuple[TemplateField, ...] = ("subject", "html", "text")
    for part in parts:
        source = sources[part]
        if source is None or not _NAMES_LAYOUT.search(source) or not _parses(env, source):
            continue
        expander = _Expander(env, layouts, found, template=content.name, locale=content.locale, field=part)
        expanded = expander.expand(source)
        problems.extend(expander.problems)
        if expanded is not None:
            sources[part], origins[part] = expanded
    if problems:
        return Expansion(content, {}, problems, tuple(found.items()))
    expanded_content = content.model_copy(update=sources) if origins else content
    return Expansion(expanded_content, origins, [], tuple(found.items()))


def layout_names(content: TemplateContent, *, env: Environment) -> set[str]:
    """The names the template's ``{% extends %}`` and ``{% include %}`` tags give; no lookups."""
    names: set[str] = set()
    for source in (content.subject, content.html, content.text):
        if source is None or not _NAMES_LAYOUT.search(source) or not _parses(env, source):
            continue
        for segment in split_segments(env, source):
            tokens = _tokens(env, segment) if segment.kind == "block" else []
            if len(tokens) > 1 and tokens[0].value in ("extends", "include") and tokens[1].type == "string":
                names.add(tokens[1].value)
    return names


def _parses(env: Environment, source: str) -> bool:
    try:
        env.parse(source)
    except (TemplateSyntaxError, RecursionError):  # reported by the checks
        return False
    return True


def _tokens(env: Environment, segment: Segment) -> list[Token]:
    """The tokens inside a ``{% ... %}`` or ``{{ ... }}`` construct; none for text and comments."""
    if segment.kind not in ("block", "variable"):
        return []
    return [t for t in env.lexer.tokenize(segment.text) if t.type not in _CONSTRUCT_ENDS]


@dataclass(slots=True)
class _Text:
    text: str
    line: int


@dataclass(slots=True)
class _Block:
    name: str
    line: int
    #: ``None``: the template being expanded; otherwise the layout it is written in
    origin: str | None
    required: bool
    body: list[_Node] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Include:
    """``{% include "name" %}``: the named template, expanded where the tag stands."""

    name: str
    line: int
    ignore_missing: bool


@dataclass(frozen=True, slots=True)
class _Super:
    """``{{ super() }}``: the definition that the enclosing block overrides."""

    line: int


_Node = _Text | _Block | _Include | _Super


@dataclass(slots=True)
class _Parsed:
    origin: str | None
    body: list[_Node] = field(default_factory=list)
    parent: str | None = None
    parent_line: int = 0
    #: every block the template defines, nested ones included
    blocks: dict[str, _Block] = field(default_factory=dict)


class _Overflow(Exception):
    """The expansion outgrew a bound; the message says which."""


# (most derived first) the definitions of one block name along an extends chain
_Chain = list[_Block]


class _Expander:
    """Expands one field of one template."""

    def __init__(
        self,
        env: Environment,
        layouts: LayoutLoader | None,
        found: dict[str, TemplateVersion | None],
        *,
        template: str,
        locale: str,
        field: TemplateField,
    ) -> None:
        self.env = env
        self.layouts = layouts
        self.found = found
        self.template = template
        self.locale = locale
        self.field: TemplateField = field
        self.problems: list[TemplateProblem] = []
        self.parts: list[str] = []
        self.pieces: list[tuple[int, int, str | None, int]] = []
        self.line = 1
        self.size = 0
        self.steps = 0
        self.depth = 0
        self.rendered: set[int] = set()

    def expand(self, source: str) -> tuple[str, Origins] | None:
        parsed = self._parse(source, None)
        try:
            self._template(parsed, {}, (self.template,))
        except _Overflow as exc:
            self._report(None, None, str(exc))
        if parsed.parent is not None and not self.problems:
            for block in parsed.blocks.values():
                if id(block) not in self.rendered:
                    self._report(None, block.line, f'block "{block.name}" is never rendered: no layout that '
                                                   f'"{parsed.parent}" builds on places it')
        if self.problems:
            return None
        return "".join(self.parts), Origins(tuple(self.pieces))

    def _report(self, origin: str | None, line: int | None, message: str) -> None:
        self.problems.append(_problem(self.field, origin, line, message))

    # --- reading a source into blocks

    def _parse(self, source: str, origin: str | None) -> _Parsed:
        parsed = _Parsed(origin)
        open_blocks: list[_Block] = []
        for segment in split_segments(self.env, source, keep_raw=True):
            body = open_blocks[-1].body if open_blocks else parsed.body
            if segment.kind == "comment":
                continue
            tokens = _tokens(self.env, segment)
            tag = tokens[0].value if tokens and segment.kind == "block" else None
            if tag == "block":
                block = _Block(tokens[1].value, segment.line, origin, any(t.value == "required" for t in tokens[2:]))
                body.append(block)
                open_blocks.append(block)
                parsed.blocks[block.name] = block
            elif tag == "endblock":
                open_blocks.pop()
            elif tag == "extends":
                self._extends(parsed, tokens, segment.line, nested=bool(open_blocks))
            elif tag == "include":
                include = self._include_tag(tokens, origin, segment.line)
                if include is not None:
                    body.append(include)
            elif segment.kind == "variable" and [t.value for t in tokens] == ["super", "(", ")"]:
                body.append(_Super(segment.line))
            else:
                if any(t.type == "name" and t.value == "super" and (i == 0 or tokens[i - 1].type != "dot")
                       for i, t in enumerate(tokens)):
                    self._report(origin, segment.line, "super() can only stand alone: {{ super() }}")
                body.append(_Text(segment.text, segment.line))
        return parsed

    def _extends(self, parsed: _Parsed, tokens: list[Token], line: int, *, nested: bool) -> None:
        if nested or parsed.parent is not None:
            self._report(parsed.origin, line, "a template extends one layout, once, outside any block")
        elif len(tokens) != 2 or tokens[1].type != "string":
            self._report(parsed.origin, line, 'extends takes a template name in quotes: {% extends "layout" %}')
        else:
            parsed.parent, parsed.parent_line = tokens[1].value, line

    def _include_tag(self, tokens: list[Token], origin: str | None, line: int) -> _Include | None:
        words = [t.value for t in tokens[2:]]
        if len(tokens) < 2 or tokens[1].type != "string" or words not in (
            [], ["ignore", "missing"], ["with", "context"], ["ignore", "missing", "with", "context"]
        ):
            self._report(origin, line, 'include takes a template name in quotes: {% include "footer" %}, '
                                       "optionally followed by ignore missing")
            return None
        return _Include(tokens[1].value, line, ignore_missing=words[:2] == ["ignore", "missing"])

    # --- writing the expanded source

    def _emit(self, text: str, origin: str | None, line: int) -> None:
        if not text:
            return
        self.size += len(text)
        if self.size > MAX_EXPANDED_CHARS:
            raise _Overflow(f"with its layouts the {self.field} grows past {MAX_EXPANDED_CHARS:,} characters")
        first = self.line
        self.line += text.count("\n")
        self.pieces.append((first, self.line, origin, line))
        self.parts.append(text)

    def _step(self) -> None:
        self.steps += 1
        if self.steps > MAX_EXPANSION_STEPS:
            raise _Overflow(f"with its layouts the {self.field} fills in more than {MAX_EXPANSION_STEPS:,} "
                            "blocks and includes")

    def _template(self, parsed: _Parsed, overrides: dict[str, _Chain], trail: tuple[str, ...]) -> None:
        self._step()
        chains = {**overrides, **{name: [*overrides.get(name, []), b] for name, b in parsed.blocks.items()}}
        if parsed.parent is None:
            self._body(parsed.body, parsed.origin, chains, trail, None)
            return
        for node in parsed.body:
            if isinstance(node, _Text) and node.text.strip():
                blank = node.text[: len(node.text) - len(node.text.lstrip())]
                self._report(parsed.origin, node.line + blank.count("\n"), _CHILD_ONLY_BLOCKS)
            elif isinstance(node, _Include | _Super):
                self._report(parsed.origin, node.line, _CHILD_ONLY_BLOCKS)
        source = self._layout_source(parsed.parent, parsed.origin, parsed.parent_line, trail)
        if source is not None:
            self._template(self._parse(source, parsed.parent), chains, (*trail, parsed.parent))

    def _body(
        self,
        nodes: list[_Node],
        origin: str | None,
        chains: dict[str, _Chain],
        trail: tuple[str, ...],
        overriding: tuple[_Chain, int] | None,
    ) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self._emit(node.text, origin, node.line)
            elif isinstance(node, _Block):
                self._block(chains[node.name], 0, chains, trail)
            elif isinstance(node, _Include):
                self._include(node, origin, trail)
            elif overriding is not None and overriding[1] + 1 < len(overriding[0]):
                self._block(overriding[0], overriding[1] + 1, chains, trail)
            else:
                self._report(origin, node.line, "super() needs a block that overrides a layout's block")

    def _block(self, chain: _Chain, index: int, chains: dict[str, _Chain], trail: tuple[str, ...]) -> None:
        self._step()
        block = chain[index]
        self.rendered.add(id(block))
        if block.required and index == len(chain) - 1:
            self._report(None, None, f'layout "{block.origin}" requires block "{block.name}"'
                         if block.origin is not None else f'block "{block.name}" is required')
            return
        if self.depth >= MAX_BLOCK_DEPTH:
            raise _Overflow(f'block "{block.name}" contains itself (through super())')
        self.depth += 1
        self._body(block.body, block.origin, chains, trail, (chain, index))
        self.depth -= 1

    def _include(self, node: _Include, origin: str | None, trail: tuple[str, ...]) -> None:
        source = self._layout_source(node.name, origin, node.line, trail, ignore_missing=node.ignore_missing)
        if source is not None:
            self._template(self._parse(source, node.name), {}, (*trail, node.name))

    def _layout_source(
        self, name: str, origin: str | None, line: int, trail: tuple[str, ...], *, ignore_missing: bool = False
    ) -> str | None:
        if name in trail:
            self._report(origin, line, f'"{name}" takes part in a loop: {" -> ".join((*trail, name))}')
            return None
        if len(trail) >= MAX_LAYOUT_DEPTH:
            self._report(origin, line, f"more than {MAX_LAYOUT_DEPTH} templates extend or include one another here")
            return None
        if name not in self.found:
            self.found[name] = self.layouts(name, self.locale) if self.layouts is not None else None
        layout = self.found[name]
        if layout is None:
            if not ignore_missing:
                self._report(origin, line, f'no template "{name}" (locale {self.locale}) to extend or include')
            return None
        source = getattr(layout, self.field)
        if source is None:
            self._report(origin, line, f'"{name}" has no {self.field} body to extend or include')
            return None
        try:
            self.env.parse(source)
        except TemplateSyntaxError as exc:
            self._report(name, exc.lineno, f"syntax error: {exc.message}")
            return None
        except RecursionError:
            self._report(name, None, "expressions or blocks are nested too deeply")
            return None
        return str(source)
