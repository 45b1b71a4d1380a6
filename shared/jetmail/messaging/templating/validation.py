"""Static checks of a template before it is stored, and the sources the renderer compiles.

The sandbox already refuses unsafe attribute access while rendering; checking the syntax tree
up front turns such a template into a clear error for its author instead of a failed send.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from functools import lru_cache

import css_inline
from jinja2 import Environment, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
)

from jetmail.messaging.templating.environment import SAFE_GLOBALS, new_environment
from jetmail.messaging.templating.errors import TemplateField, TemplateProblem, TemplateValidationError
from jetmail.messaging.templating.inlining import Inliner, default_inliner, inline_template
from jetmail.messaging.templating.layouts import LayoutLoader, LayoutsUsed, Origins, expand
from jetmail.messaging.templating.limits import RenderLimits, nesting_depth
from jetmail.messaging.templating.markup import DYNAMIC, LineMap, Scan, Segment, TokenLostError, scan, split_segments
from jetmail.messaging.templating.model import STANDARD_NAMES, TemplateContent
from jetmail.messaging.templating.plaintext import derive_text_template

_UNSAFE_ATTRIBUTES = frozenset(
    {"mro", "func_globals", "func_code", "im_func", "im_self", "f_globals", "f_locals", "f_builtins"}
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)
#: Names used by template-injection payloads; none of them is offered to templates, so a
#: reference is either a mistake or a probe.
_DANGEROUS_NAMES = frozenset(
    (
        "self cycler joiner lipsum config request getattr setattr eval exec compile open globals "
        "locals vars os sys builtins importlib subprocess "
    ).split()
)
#: Filters that look attributes up by a string argument.
_ATTRIBUTE_FILTERS = frozenset(
    {"attr", "map", "selectattr", "rejectattr", "sort", "groupby", "sum", "unique", "min", "max"}
)
_FORBIDDEN_TAGS = frozenset({"script", "iframe", "object", "embed"})
_URL_ATTRIBUTES = frozenset(
    (
        "href src action formaction background poster cite data xlink:href lowsrc dynsrc longdesc "
        "usemap srcset ping codebase manifest icon "
    ).split()
)
# Browsers ignore control characters and whitespace around and inside a URL scheme.
_URL_NOISE = re.compile(r"[\x00-\x20\x7f-\x9f\xa0\u1680\u2000-\u200f\u2028\u2029\u202f\u205f\u3000\ufeff]")
_SCRIPT_URL = re.compile(r"(?:javascript|vbscript|livescript):|data:(?!image/)")
_SCRIPT_CSS = re.compile(r"javascript:|vbscript:|expression\(|-moz-binding|behavior:")
_FIELD_ORDER = {"subject": 0, "html": 1, "text": 2}
_AS_WRITTEN = Origins()
#: What a Jinja construct may not be, by where it stands in the markup and what it is.
_CONSTRUCT_PROBLEMS: dict[tuple[str | None, str], str] = {
    ("tag", "variable"): "a placeholder inside an HTML tag lets a value add attributes; "
    "use it inside a quoted attribute value",
    ("tag", "block"): "template logic inside an HTML tag is not supported (CSS inlining reorders "
    "attributes); choose the attribute value conditionally instead",
    ("unquoted", "variable"): "a placeholder in an unquoted attribute value lets a value add attributes; "
    "quote the value",
}


@dataclass(frozen=True, slots=True)
class PreparedSources:
    """What the renderer compiles: HTML with styles inlined and a text body (derived or authored).

    The line maps lead from the compiled HTML and derived text back to the expanded sources, and
    ``origins`` from there to the template or layout each line was written in.
    """

    subject: str
    html: str
    html_lines: LineMap
    text: str
    text_lines: LineMap | None
    text_derived: bool
    origins: Mapping[TemplateField, Origins] = dataclass_field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Analysis:
    """Every problem found, and the sources to compile when there is none."""

    problems: list[TemplateProblem]
    sources: PreparedSources | None
    #: The analysis holds while looking these layouts up again finds the same versions.
    layouts: LayoutsUsed = ()


def _sources(content: TemplateContent) -> list[tuple[TemplateField, str]]:
    fields: list[tuple[TemplateField, str | None]] = [
        ("subject", content.subject),
        ("html", content.html),
        ("text", content.text),
    ]
    return [(field, source) for field, source in fields if source is not None]


def _unsafe_name(name: str) -> bool:
    return name.startswith("_") or name in _UNSAFE_ATTRIBUTES


def _tree_problems(field: TemplateField, tree: nodes.Template) -> Iterator[TemplateProblem]:
    for node in tree.find_all(nodes.Node):
        line = node.lineno
        if isinstance(node, nodes.Getattr) and _unsafe_name(node.attr):
            yield TemplateProblem(field, line, f'access to attribute "{node.attr}" is not allowed')
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and _unsafe_name(arg.value):
                yield TemplateProblem(field, line, f'access to item "{arg.value}" is not allowed')
        elif isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
            yield from _filter_problems(field, node)
        elif isinstance(node, nodes.Name) and (node.name.startswith("_") or node.name in _DANGEROUS_NAMES):
            yield TemplateProblem(field, line, f'"{node.name}" is not available in templates')
        elif isinstance(node, nodes.Import | nodes.FromImport):
            yield TemplateProblem(
                field, line, "import is not supported: extend or include a layout, or define the macro here"
            )
        elif isinstance(node, nodes.Extends | nodes.Include):
            # left by an expansion that failed, which reports why
            continue


def _filter_problems(field: TemplateField, node: nodes.Filter) -> Iterator[TemplateProblem]:
    line = node.lineno
    if node.name == "attr" and (
        node.dyn_args is not None
        or node.dyn_kwargs is not None
        or not node.args
        or not isinstance(node.args[0], nodes.Const)
    ):
        yield TemplateProblem(field, line, "the attr filter needs a literal attribute name")
        return
    values = [*node.args, *(kw.value for kw in node.kwargs)]
    for value in values:
        if not (isinstance(value, nodes.Const) and isinstance(value.value, str)):
            continue
        if any(_unsafe_name(part) for part in value.value.split(".")):
            yield TemplateProblem(field, line, f'access to attribute "{value.value}" is not allowed')


def _script_url(name: str, value: str) -> bool:
    # srcset lists several URLs; everywhere else a comma is part of the one URL.
    candidates = value.split(",") if name == "srcset" else (value,)
    return any(_SCRIPT_URL.match(_URL_NOISE.sub("", html.unescape(c)).lower()) for c in candidates)


def _script_css(css: str) -> bool:
    return _SCRIPT_CSS.search(_URL_NOISE.sub("", html.unescape(css)).lower()) is not None


def _markup_problems(segments: list[Segment], scanned: Scan) -> Iterator[TemplateProblem]:
    for segment, context in zip(segments, scanned.contexts, strict=True):
        message = _CONSTRUCT_PROBLEMS.get((context, segment.kind))
        if message is not None:
            yield TemplateProblem("html", segment.line, message)
    for tag in scanned.tags:
        if tag.name in _FORBIDDEN_TAGS:
            yield TemplateProblem("html", tag.line, f"<{tag.name}> tags are not allowed")
        elif tag.name == "link" and any(
            a.name == "rel" and "stylesheet" in (a.value or "").lower() for a in tag.attributes
        ):
            yield TemplateProblem(
                "html", tag.line, "linked stylesheets are never fetched; put the CSS in a <style> block"
            )
        for attribute in tag.attributes:
            name, value = attribute.name, attribute.value
            if name.startswith("on") and len(name) > 2:
                shown = name.replace(DYNAMIC, "{{...}}")
                yield TemplateProblem(
                    "html", attribute.line, f'event handler attribute "{shown}" is not allowed'
                )
            elif value is None:
                continue
            elif name in _URL_ATTRIBUTES and _script_url(name, value):
                yield TemplateProblem("html", attribute.line, f"script URL in {name} is not allowed")
            elif name == "style" and _script_css(value):
                yield TemplateProblem("html", attribute.line, "script in a style attribute is not allowed")
    for raw in scanned.raw_texts:
        if raw.tag == "style" and _script_css(raw.text):
            yield TemplateProblem("html", raw.line, "script in a <style> block is not allowed")


def _references(tree: nodes.Template, name: str) -> bool:
    return any(n.name == name for n in tree.find_all(nodes.Name))


def analyse_template(
    content: TemplateContent, *, env: Environment, inline: Inliner, layouts: LayoutLoader | None = None
) -> Analysis:
    """Expand the layouts ``content`` names (found through ``layouts``), then check the result.

    Problems are reported where their line was written: in ``content``, or in a layout, named.
    """
    expansion = expand(content, env=env, layouts=layouts)
    content = expansion.content
    problems: list[TemplateProblem] = []
    trees: dict[TemplateField, nodes.Template] = {}
    for field, source in _sources(content):
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as exc:
            problems.append(TemplateProblem(field, exc.lineno, f"syntax error: {exc.message}"))
            continue
        except RecursionError:
            problems.append(TemplateProblem(field, None, "expressions or blocks are nested too deeply"))
            continue
        trees[field] = tree
        problems.extend(_tree_problems(field, tree))
        limit = getattr(env, "limits", RenderLimits()).max_depth
        depth, line = nesting_depth(tree)
        if depth > limit:
            problems.append(TemplateProblem(field, line, f"blocks are nested {depth} deep; at most {limit} allowed"))
    html_tree = trees.get("html")
    if html_tree is not None:
        if (content.category == "marketing" and not expansion.problems
                and not _references(html_tree, "unsubscribe_url")):
            problems.append(
                TemplateProblem("html", None, "a marketing template must link {{ unsubscribe_url }}")
            )
        segments = split_segments(env, content.html)
        scanned = scan(segments)
        problems.extend(_markup_problems(segments, scanned))
    sources = None
    if not problems and not expansion.problems and html_tree is not None:
        sources = _prepare(content, segments, scanned, env=env, inline=inline, problems=problems)
    placed = [expansion.origins.get(p.field, _AS_WRITTEN).relocate(p) for p in problems]
    if sources is not None:
        sources = replace(sources, origins=expansion.origins)
    return Analysis(_ordered([*expansion.problems, *placed]), sources, expansion.layouts)


def _prepare(
    content: TemplateContent,
    segments: list[Segment],
    scanned: Scan,
    *,
    env: Environment,
    inline: Inliner,
    problems: list[TemplateProblem],
) -> PreparedSources | None:
    try:
        html_source, html_lines = inline_template(segments, scanned.contexts, inline=inline)
        env.parse(html_source)
    except css_inline.InlineError as exc:
        problems.append(TemplateProblem("html", None, f"CSS inlining failed: {exc}"))
        return None
    except TokenLostError as exc:
        problems.append(
            TemplateProblem(
                "html",
                exc.line,
                "this template tag does not survive CSS inlining; keep template "
                "logic out of <style> rules and HTML tags",
            )
        )
        return None
    except TemplateSyntaxError as exc:
        problems.append(
            TemplateProblem("html", exc.lineno, f"CSS inlining broke the template: {exc.message}")
        )
        return None
    if content.text is not None:
        return PreparedSources(content.subject, html_source, html_lines, content.text, None, False)
    try:
        text_source, text_lines = derive_text_template(segments)
        env.parse(text_source)
    except TemplateSyntaxError:
        problems.append(
            TemplateProblem(
                "html",
                None,
                "no text body can be derived from this HTML (template logic spans "
                "attributes); add a text body",
            )
        )
        return None
    return PreparedSources(content.subject, html_source, html_lines, text_source, text_lines, True)


def _ordered(problems: list[TemplateProblem]) -> list[TemplateProblem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (_FIELD_ORDER[p.field], p.line or 0))


@lru_cache(maxsize=1)
def _checker() -> tuple[Environment, Inliner]:
    return new_environment(), default_inliner()


def validate_template(content: TemplateContent, *, layouts: LayoutLoader | None = None) -> None:
    """Raise :class:`TemplateValidationError` listing every problem.

    Pure but for one ``layouts`` call per layout the template names; without ``layouts`` it may name none.
    """
    env, inline = _checker()
    problems = analyse_template(content, env=env, inline=inline, layouts=layouts).problems
    if problems:
        raise TemplateValidationError(problems)


def template_variables(content: TemplateContent, *, layouts: LayoutLoader | None = None) -> frozenset[str]:
    """Caller context names the template and the layouts it names use (standard names and globals
    excluded); one ``layouts`` call per layout.

    Raises :class:`TemplateValidationError` on a syntax error.
    """
    env, _ = _checker()
    content = expand(content, env=env, layouts=layouts).content
    names: set[str] = set()
    for field, source in _sources(content):
        try:
            names |= meta.find_undeclared_variables(env.parse(source))
        except TemplateSyntaxError as exc:
            raise TemplateValidationError(
                [TemplateProblem(field, exc.lineno, f"syntax error: {exc.message}")]
            ) from None
    return frozenset(names - STANDARD_NAMES - set(SAFE_GLOBALS))
