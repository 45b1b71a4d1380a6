"""A campaign's render made once, with holes where each recipient's values go.

Every recipient of a campaign gets the same template version with the same context apart from a few names:
``recipient``, the standard links, ``now`` and ``today``, and the contact's ``attributes``. When a template
uses those names only as plain output (``{{ recipient.name }}``) or as the test of an ``if``, one recipient's
render is any other's with the values put in, escaped as Jinja escapes them. A stencil is that render, made
once per version and per pattern of what the tests found (which tested values were empty), with the HTML
safety walk, the click-link rewriting and the tracking pixel done on it: filling it in is joining strings.

A stencil is made only where it can show that filling it in gives what the full render gives, safety checks
included; otherwise there is none (``build`` returns None) and every recipient's mail is rendered in full:

- the values a recipient fills in are escaped text, so they cannot add an element or leave a quoted attribute;
  a second render, with other markers and a probe after each, shows that the template wrote no marker of its own
  and that no hole stands in an unquoted attribute; the first shows that none stands in a tag or attribute name,
  a comment or a ``<style>`` block;
- no hole stands where the safety walk reads a value (a URL before its scheme is settled, ``style``, ``srcset``,
  ``http-equiv``, an event handler), except a standard link standing alone as a URL attribute's value, which is
  checked to be http(s) as each recipient's is filled in;
- with click tracking, no hole stands inside an ``<a href>`` (the tracked URL would differ per recipient), except
  such a standard link, which the renderer never rewrites.

``Renderer.render(varying=...)`` uses it, and renders in full whenever the template, the context or a recipient's
values are outside it (a filter on a recipient value, a value tested in a way other than truth, a value that is
not there, output longer than the render limit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Undefined, nodes
from markupsafe import escape

from jetmail.messaging.templating.links import anchor_hrefs, href_url, rewrite_links, tracked
from jetmail.messaging.templating.markup import token_prefix
from jetmail.messaging.templating.safety import URL_ATTRIBUTES, html_problems, markup_nodes, url_scheme

#: Names every render fills in per recipient (``StandardContext.variables``); ``company`` is the same for all.
STANDARD_VARYING = frozenset({"recipient", "unsubscribe_url", "preferences_url", "view_in_browser_url", "now",
                              "today"})
#: Standard links made by the platform: a hole that is a whole URL attribute's value needs no safety walk.
TRUSTED_LINKS = frozenset({"unsubscribe_url", "preferences_url", "view_in_browser_url"})
#: Attributes whose whole value the safety walk reads, whatever comes before a hole.
_READ_WHOLE = frozenset({"style", "srcset", "http-equiv"})

#: ``(is_item, key)``: ``.key`` (Jinja's getattr) or ``[key]`` (getitem).
Step = tuple[bool, str | int]


@dataclass(frozen=True, slots=True, order=True)
class Path:
    """A recipient value as the template reaches it: ``attributes.plan`` is ``("attributes", ((False, "plan"),))``."""

    root: str
    steps: tuple[Step, ...] = ()

    @property
    def keys(self) -> tuple[str | int, ...]:
        return (self.root, *(key for _, key in self.steps))

    def value(self, variables: Mapping[str, Any], env: Any) -> Any:
        """What the template gets, looked up as the compiled template does (the sandbox's getattr/getitem)."""
        value = variables[self.root]
        for is_item, key in self.steps:
            value = env.getitem(value, key) if is_item else env.getattr(value, key)
        return value


@dataclass(frozen=True, slots=True)
class Uses:
    """Where a template uses the recipient's values: written out, and tested for truth."""

    outputs: tuple[Path, ...]
    tests: tuple[Path, ...]


def recipient_uses(trees: list[nodes.Template], varying: frozenset[str]) -> Uses | None:
    """The recipient paths of ``trees`` (subject, HTML, text), or None when one is used in another way."""
    outputs: set[Path] = set()
    tests: set[Path] = set()
    for tree in trees:
        parents: dict[int, nodes.Node] = {}
        stack: list[nodes.Node] = [tree]
        while stack:
            node = stack.pop()
            for child in node.iter_child_nodes():
                parents[id(child)] = node
                stack.append(child)
        for name in tree.find_all(nodes.Name):
            if name.name not in varying:
                continue
            if name.ctx != "load":
                return None  # the template assigns the name: its value is no longer the recipient's
            top: nodes.Node = name
            steps: list[Step] = []
            parent = parents.get(id(top))
            while True:
                if isinstance(parent, nodes.Getattr) and parent.node is top:
                    steps.append((False, parent.attr))
                elif (isinstance(parent, nodes.Getitem) and parent.node is top and isinstance(parent.arg, nodes.Const)
                      and type(parent.arg.value) in (str, int)):
                    steps.append((True, parent.arg.value))
                else:
                    break
                top, parent = parent, parents.get(id(parent))
            path = Path(name.name, tuple(steps))
            if isinstance(parent, nodes.Output) and any(child is top for child in parent.nodes):
                outputs.add(path)
                continue
            while isinstance(parent, nodes.Not) and parent.node is top:
                top, parent = parent, parents.get(id(parent))
            if isinstance(parent, (nodes.If, nodes.CondExpr)) and parent.test is top:
                tests.add(path)
                continue
            return None
    every = outputs | tests
    if len({path.keys for path in every}) < len(every):
        return None  # one value reached both as ``.key`` and as ``[key]``
    # a value written out whole cannot also be reached into: it has to be the recipient's own value
    for path in outputs:
        keys = path.keys
        if any(len(other.keys) > len(keys) and other.keys[:len(keys)] == keys for other in every):
            return None
    return Uses(tuple(sorted(outputs)), tuple(sorted(tests)))


class NoStencil(Exception):
    """A render asked only of a stencil (``Renderer.render(stencil_only=True)``) that needs Jinja."""


class Unfit(Exception):
    """This recipient's values (or the template) are outside what a stencil vouches for: render in full."""


def truth_key(value: Any) -> Any:
    """What a tested value decides: True, or the empty value itself (which the stencil renders as it is)."""
    if isinstance(value, Undefined):
        raise Unfit("undefined")
    if value:
        return True
    if value is None or type(value) in (str, int, float, bool):
        return (type(value).__name__, value)
    return (type(value).__name__, repr(value))


@dataclass(frozen=True, slots=True)
class Field:
    """A rendered field: ``literals[0]``, then each hole's text followed by the next literal."""

    literals: tuple[str, ...]
    holes: tuple[int, ...]

    def length(self, values: list[str]) -> int:
        """How long ``fill(values)`` is."""
        return sum(map(len, self.literals)) + sum(len(values[hole]) for hole in self.holes)

    def fill(self, values: list[str]) -> str:
        if not self.holes:
            return self.literals[0]
        out = [self.literals[0]]
        for hole, literal in zip(self.holes, self.literals[1:], strict=True):
            out.append(values[hole])
            out.append(literal)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Stencil:
    """One render with holes: value holes first (``uses.outputs`` by index), then link holes, then the pixel."""

    subject: Field
    html: Field
    text: Field
    #: the click-tracked URLs by index, their holes after the value holes
    links: tuple[str, ...]
    #: holes standing alone in a URL attribute: a standard link, to be checked as one (http, https or empty)
    trusted: frozenset[int]
    #: the text tidied with its markers (``tidy``): as good as tidying each recipient's text while every value
    #: in it is ``tidy_safe``; None when the text is not tidied
    tidied: Field | None = None

    def text_for(self, values: list[str], tidy: Callable[[str], str] | None) -> str:
        """The text part for these values, tidied when ``tidy`` is given."""
        if tidy is None:
            return self.text.fill(values)
        if self.tidied is not None and all(tidy_safe(values[hole]) for hole in self.text.holes):
            return self.tidied.fill(values)
        return tidy(self.text.fill(values))


def tidy_safe(value: str) -> bool:
    """A value that cannot change what tidying a text does around it: not empty, no line break, no white space at
    either end. Tidying only trims spaces and tabs around line breaks, shortens runs of blank lines and strips the
    ends, so such a value in a marker's place leaves every one of those where it was."""
    return bool(value) and "\n" not in value and value == value.strip()


Render = Callable[[Mapping[str, Any]], tuple[str, str, str]]


def build(render: Render, variables: Mapping[str, Any], uses: Uses, tested: Mapping[Path, Any], *,
          shared_text: str, rewrite: bool, pixel: Callable[[str, str], str] | None,
          tidy: Callable[[str], str] | None = None) -> Stencil | None:
    """Render with a marker for each written-out path and the ``tested`` values (a truthy one as a stand-in),
    check the result, and cut it at the markers. ``shared_text``: the sources and everything else the render
    may write, so that no marker can be mistaken for text. ``rewrite``: track the links; ``pixel``: how the
    tracking pixel is appended; ``tidy``: how the text is tidied, when it is. None: the template or the values are
    outside what a stencil vouches for.
    Raises what the render raises."""
    prefix = token_prefix(shared_text)
    probe = token_prefix(f"{shared_text}\n{prefix}")
    first = _marked(render, variables, uses, tested, lambda i: f"{prefix}{i}z", truthy=f"{prefix}t")
    second = _marked(render, variables, uses, tested, lambda i: f"{probe}{i}z {probe}x=1", truthy=f"{probe}t")
    if first is None or second is None:
        return None
    pattern = re.compile(rf"{prefix}(\d+)z")
    fields = [_cut(text, pattern) for text in first]
    # the same cuts under other markers, with a probe after each: the template wrote no marker of its own
    if fields != [_cut(text, re.compile(rf"{probe}(\d+)z {probe}x=1")) for text in second]:
        return None
    body = first[1]
    if html_problems(body):
        return None  # the full render reports them
    positions = _hole_positions(body, second[1], prefix, probe)
    if positions is None:
        return None
    risky, alone = positions
    if risky or any(uses.outputs[hole].steps or uses.outputs[hole].root not in TRUSTED_LINKS for hole in alone):
        return None  # each recipient's HTML would need the safety walk
    count = len(uses.outputs)
    links: tuple[str, ...] = ()
    if rewrite:
        found = _tracked_links(body, prefix)
        if found is None:
            return None
        marks = iter(range(count, count + len(found)))
        body, links = rewrite_links(body, lambda _index, _url: f"{prefix}{next(marks)}z")
        assert links == found
    if pixel is not None:
        body = pixel(body, f"{prefix}{count + len(links)}z")
    subject, _, text = fields
    return Stencil(subject=subject, html=_cut(body, pattern), text=text, links=links, trusted=frozenset(alone),
                   tidied=_cut(tidy(first[2]), pattern) if tidy is not None else None)


def _marked(render: Render, variables: Mapping[str, Any], uses: Uses, tested: Mapping[Path, Any],
            marker: Callable[[int], str], *, truthy: str) -> tuple[str, str, str] | None:
    placed: dict[Any, Any] = {}
    values: dict[Path, Any] = {path: marker(i) for i, path in enumerate(uses.outputs)}
    for path, value in tested.items():
        if not value:
            values[path] = value  # the same for every recipient of this stencil, written out as it is
        elif path not in values:
            values[path] = truthy
    # the longest paths first: the values a template reaches into become dicts of what it reaches
    for path, value in sorted(values.items(), key=lambda item: -len(item[0].steps)):
        node = placed
        keys = path.keys
        for key in keys[:-1]:
            node = node.setdefault(key, {})  # only longer paths came before: what is there is a dict of them
        if keys[-1] in node:
            if value:
                continue  # a truthy test of a value the template reaches into: the dict stands for it
            return None  # an empty value the template also reaches into
        node[keys[-1]] = value
    return render({**variables, **placed})


def _cut(text: str, pattern: re.Pattern[str]) -> Field:
    parts = pattern.split(text)
    return Field(tuple(parts[0::2]), tuple(int(hole) for hole in parts[1::2]))


def _hole_positions(body: str, probed: str, prefix: str, probe: str) -> tuple[bool, set[int]] | None:
    """Whether a hole stands where the safety walk reads a value (True), and the holes that stand alone as a
    URL attribute's value (trusted when they are standard links); None for a hole no stencil may have."""
    for element in markup_nodes(probed):
        if any((name or "").lower().startswith(probe) for name in element.attributes):
            return None  # the probe became an attribute: a hole in an unquoted attribute value
    risky = False
    alone: set[int] = set()
    whole = re.compile(rf"{prefix}(\d+)z")
    for element in markup_nodes(body):
        tag = (element.tag or "").lower()
        if tag == "-comment":
            if prefix in (element.comment_content or "").lower():
                return None
            continue
        if prefix in tag or (tag == "style" and prefix in element.text(deep=True).lower()):
            return None
        for raw_name, raw_value in element.attributes.items():
            name = (raw_name or "").lower()
            value = raw_value or ""
            if prefix in name:
                return None
            if prefix not in value:
                continue
            local = name.rpartition(":")[2]
            if local in _READ_WHOLE or local.startswith("on"):
                risky = True
            elif local in URL_ATTRIBUTES:
                match = whole.fullmatch(value.strip())
                if match:
                    alone.add(int(match.group(1)))
                elif url_scheme(value.partition(prefix)[0]) is None:
                    risky = True  # the hole comes before the URL's scheme is settled
    return risky, alone


def _tracked_links(body: str, prefix: str) -> tuple[str, ...] | None:
    """The URLs link rewriting tracks in ``body``, or None when an ``<a href>`` holds a recipient value other than
    a standard link alone (a URL that differs per recipient)."""
    links: list[str] = []
    for match, group in anchor_hrefs(body):
        raw = match.group(group)
        if prefix in raw:
            if re.fullmatch(rf"{prefix}\d+z", raw.strip()) is None:
                return None
            continue  # a standard link alone: kept as it is, as the renderer keeps it
        url = href_url(raw)
        if tracked(url):
            links.append(url)
    return tuple(links)


def fill_values(values: list[Any]) -> tuple[list[str], list[str]]:
    """Each written-out value as an HTML template writes it (escaped) and as a text one does."""
    html_values: list[str] = []
    text_values: list[str] = []
    for value in values:
        if isinstance(value, Undefined) or hasattr(value, "__html__"):
            raise Unfit("an undefined value, or markup")
        html_values.append(str(escape(value)))
        text_values.append(str(value))
    return html_values, text_values
