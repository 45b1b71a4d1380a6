"""Per-recipient rendering of stored template versions, with per-version work done once."""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError

from jetmail.messaging.templating import stencil as stencils
from jetmail.messaging.templating.environment import new_environment
from jetmail.messaging.templating.errors import (
    ReservedContextKeyError,
    TemplateField,
    TemplateLimitError,
    TemplateProblem,
    TemplateRenderError,
    TemplateTimeoutError,
    TemplateValidationError,
    UnsafeHtmlError,
)
from jetmail.messaging.templating.inlining import Inliner, default_inliner
from jetmail.messaging.templating.layouts import LayoutLoader, LayoutsUsed, Origins
from jetmail.messaging.templating.limits import (
    RenderLimitExceeded,
    RenderLimits,
    RenderTimedOut,
    bounded_output,
    render_budget,
)
from jetmail.messaging.templating.links import LinkRewriter, append_pixel, rewrite_links
from jetmail.messaging.templating.markup import LineMap
from jetmail.messaging.templating.model import (
    STANDARD_NAMES,
    Company,
    Recipient,
    RenderedEmail,
    StandardContext,
    TemplateContent,
    TemplateVersion,
)
from jetmail.messaging.templating.plaintext import tidy_text
from jetmail.messaging.templating.safety import html_problems
from jetmail.messaging.templating.stencil import (
    STANDARD_VARYING,
    NoStencil,
    Stencil,
    Unfit,
    Uses,
    recipient_uses,
    truth_key,
)
from jetmail.messaging.templating.validation import analyse_template, template_variables, validate_template

_CONTROL_CHARS = dict.fromkeys([*range(32), 127])


@dataclass(frozen=True, slots=True)
class _Compiled:
    version: TemplateVersion
    subject: Template
    html: Template
    text: Template
    text_derived: bool
    line_maps: Mapping[TemplateField, LineMap]
    origins: Mapping[TemplateField, Origins]
    layouts: LayoutsUsed
    sources: tuple[str, str, str]  # subject, HTML, text as compiled


@dataclass(frozen=True, slots=True)
class _Refused:
    version: TemplateVersion
    error: TemplateValidationError
    layouts: LayoutsUsed


class Renderer:
    """Renders template versions; make one per process and share it.

    Per version, once: expansion of the layouts it extends or includes (looked up through
    ``layouts``, the template store's :data:`~jetmail.messaging.templating.layouts.LayoutLoader`; without
    it a template must be self-contained), validation, CSS inlining, text derivation and
    compilation, kept in a bounded LRU keyed by ``(name, version, locale)``. Versions are
    immutable; if different content arrives under a cached key (an unsaved preview, say), or a
    layout it was expanded with is saved again, it is prepared afresh. That costs one
    ``layouts`` call per layout and render, which the template store answers from its cache.

    Caller context keys may not reuse the standard names (``unsubscribe_url``, ``company``,
    ``today``, ``now``, ``recipient``): that raises :class:`ReservedContextKeyError` rather
    than letting request data override what the platform vouches for, such as the
    unsubscribe link.
    """

    def __init__(
        self,
        *,
        cache_size: int = 256,
        inliner: Inliner | None = None,
        limits: RenderLimits | None = None,
        layouts: LayoutLoader | None = None,
    ) -> None:
        self.limits = limits or RenderLimits()
        self._layouts = layouts
        self._env = new_environment(self.limits)
        self._inline = inliner or default_inliner()
        # A version that fails the checks is cached as its error, so a campaign with a broken
        # template does not re-run the checks for every recipient.
        self._cache: OrderedDict[tuple[str, int, str], _Compiled | _Refused] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        #: Versions prepared so far (cache misses); a metric, and how tests see the cache work.
        self.prepared_count = 0
        # per compiled version and names that vary: where the template uses them (None: not stencillable)
        self._uses: dict[tuple[tuple[str, int, str], frozenset[str]], tuple[_Compiled, Uses | None]] = {}
        # per compiled version, names that vary and pattern of tested values: its stencil (None: render in full)
        self._stencils: OrderedDict[tuple[Any, ...], tuple[_Compiled, Stencil | None]] = OrderedDict()
        #: Renders made by filling in a stencil; a metric, and how tests see that stencils are used.
        self.stencil_renders = 0

    def prepare(self, version: TemplateVersion) -> None:
        """Validate and compile ``version`` now; raises :class:`TemplateValidationError`."""
        self._compiled(version)

    def _compiled(self, version: TemplateVersion, *, fixed_layouts: bool = False) -> _Compiled:
        key = version.key
        with self._lock:
            entry = self._cache.get(key)
        # looking layouts up may read the store: not under the lock every render takes; with fixed layouts
        # a version compiled once keeps the layouts it was compiled with
        stale = None
        if entry is not None and not (fixed_layouts and entry.version == version):
            stale = entry if not self._unchanged(entry.layouts, version.locale) else None
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or entry.version != version or entry is stale:
                entry = self._compile(version, self._layouts)
                self.prepared_count += 1
                self._cache[key] = entry
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        if isinstance(entry, _Refused):
            raise TemplateValidationError(entry.error.problems)
        return entry

    def _unchanged(self, layouts: LayoutsUsed, locale: str) -> bool:
        return all(
            (self._layouts(name, locale) if self._layouts is not None else None) == found
            for name, found in layouts
        )

    def _compile(self, version: TemplateVersion, layouts: LayoutLoader | None) -> _Compiled | _Refused:
        analysis = analyse_template(version, env=self._env, inline=self._inline, layouts=layouts)
        sources = analysis.sources
        if analysis.problems or sources is None:
            return _Refused(version, TemplateValidationError(analysis.problems), analysis.layouts)
        base = f"{version.name}@{version.version}/{version.locale}"
        templates: dict[TemplateField, Template] = {}
        fields: tuple[tuple[TemplateField, str, str], ...] = (
            ("subject", "subject.txt", sources.subject),
            ("html", "body.html", sources.html),
            ("text", "body.txt", sources.text),
        )
        for field, filename, source in fields:
            name = f"{base}/{filename}"
            try:
                code = self._env.compile(source, name=name, filename=name)
            except TemplateSyntaxError as exc:
                problem = TemplateProblem(field, exc.lineno, exc.message or "")
                return _Refused(version, TemplateValidationError([problem]), analysis.layouts)
            # the environment's globals as a plain dict: Jinja copies them into every render's context, which
            # is quicker from a dict than from its default ChainMap view of them
            templates[field] = self._env.template_class.from_code(self._env, code, dict(self._env.globals))
        line_maps: dict[TemplateField, LineMap] = {"html": sources.html_lines}
        if sources.text_lines is not None:
            line_maps["text"] = sources.text_lines
        return _Compiled(
            version=version,
            subject=templates["subject"],
            html=templates["html"],
            text=templates["text"],
            text_derived=sources.text_derived,
            line_maps=line_maps,
            origins=sources.origins,
            layouts=analysis.layouts,
            sources=(sources.subject, sources.html, sources.text),
        )

    def render(
        self,
        version: TemplateVersion,
        context: Mapping[str, Any],
        *,
        standard: StandardContext,
        link_rewriter: LinkRewriter | None = None,
        fixed_layouts: bool = False,
        timeout_s: float | None = None,
        varying: frozenset[str] | None = None,
        stencil_only: bool = False,
    ) -> RenderedEmail:
        """Subject, HTML and text for one recipient.

        ``fixed_layouts``: once ``version`` is compiled, keep the layouts it was compiled with rather than
        look them up again on every render (a campaign sends one mail to all its recipients; give each
        campaign its own copy of the version, so its cache entry is its own). ``timeout_s``: this render's time
        budget instead of ``limits.timeout_s``. ``varying``: the context's names that differ between the renders
        of this version (a campaign's ``attributes``); every other name must have the same value in each of
        them. The render then fills in a stencil of the version when it can
        (:mod:`~jetmail.messaging.templating.stencil`), with the same result as rendering in full.
        ``stencil_only``: fill in a stencil made before for a version compiled before with ``fixed_layouts``, or
        raise :class:`~jetmail.messaging.templating.stencil.NoStencil`; no Jinja runs, so the caller may do it on
        its event loop and leave the rest to a thread.

        Raises :class:`ReservedContextKeyError` for a context key that shadows a standard name,
        :class:`TemplateValidationError` for a version that fails the checks, and
        :class:`TemplateRenderError` when rendering fails (a missing variable, a sandbox
        violation, :class:`TemplateLimitError` past a render limit, :class:`UnsafeHtmlError` for
        HTML a mail client would run script from): retrying with the same context fails the same way.
        """
        reserved = STANDARD_NAMES.intersection(context)
        if reserved:
            raise ReservedContextKeyError(reserved)
        if stencil_only:
            with self._lock:
                cached = self._cache.get(version.key)
            if varying is None or not fixed_layouts or not isinstance(cached, _Compiled) or cached.version != version:
                raise NoStencil(version.key)
            compiled = cached
        else:
            compiled = self._compiled(version, fixed_layouts=fixed_layouts)
        marketing = version.category == "marketing"
        if marketing and not standard.unsubscribe_url:
            raise TemplateRenderError(
                "marketing mail needs standard.unsubscribe_url",
                template=_label(version),
                field="html",
                line=None,
            )
        variables = {**context, **standard.variables()}
        limits = self.limits if timeout_s is None else replace(self.limits, timeout_s=timeout_s)
        if varying is not None:
            stencilled = self._stencilled(compiled, variables, standard, varying | STANDARD_VARYING, link_rewriter,
                                          limits, make=not stencil_only)
            if stencilled is not None:
                return stencilled
        if stencil_only:
            raise NoStencil(version.key)
        with render_budget(limits):
            subject = self._run(compiled, "subject", compiled.subject, variables)
            body = self._run(compiled, "html", compiled.html, variables)
            text = self._run(compiled, "text", compiled.text, variables)
        unsafe = html_problems(body)
        if unsafe:
            raise UnsafeHtmlError(
                "; ".join(unsafe), template=_label(version), field="html", line=None
            )
        if compiled.text_derived:
            text = tidy_text(text)
        links: tuple[str, ...] = ()
        if link_rewriter is not None:
            # the recipient's own signed links stay as they are: a click redirect would only hide them
            kept = {standard.unsubscribe_url, standard.preferences_url, standard.view_in_browser_url}
            body, links = rewrite_links(body, link_rewriter, keep=frozenset(url for url in kept if url))
        if marketing and standard.tracking_pixel_url:
            body = append_pixel(body, standard.tracking_pixel_url)
        return RenderedEmail(subject=one_line(subject), html=body, text=text, links=links)

    def _stencilled(self, compiled: _Compiled, variables: dict[str, Any], standard: StandardContext,
                    varying: frozenset[str], link_rewriter: LinkRewriter | None,
                    limits: RenderLimits, *, make: bool) -> RenderedEmail | None:
        """The render filled in from the version's stencil (``make``: made now if there is none yet); None when
        there is none for these values."""
        uses = self._recipient_uses(compiled, varying, make=make)
        if uses is None:
            return None
        pixel = compiled.version.category == "marketing" and bool(standard.tracking_pixel_url)
        try:
            tested = {path: path.value(variables, self._env) for path in uses.tests}
            key = (compiled.version.key, varying, link_rewriter is not None, pixel,
                   tuple(truth_key(value) for value in tested.values()))
            values = [path.value(variables, self._env) for path in uses.outputs]
        except Exception:  # an undefined value, a lookup the sandbox refuses: the full render reports it
            return None
        with self._lock:
            entry = self._stencils.get(key)
            if entry is not None:
                self._stencils.move_to_end(key)
        if entry is None or entry[0] is not compiled:
            if not make:
                return None
            try:
                stencil = self._stencil(compiled, variables, uses, tested, varying, link_rewriter is not None, pixel,
                                        limits)
            except TemplateTimeoutError:
                return None  # a slow machine, not the template: try again with the next recipient
            except Exception:
                stencil = None  # the full render reports the failure
            with self._lock:
                self._stencils[key] = (compiled, stencil)
                while len(self._stencils) > self._cache_size:
                    self._stencils.popitem(last=False)
        else:
            stencil = entry[1]
        if stencil is None:
            return None
        try:
            html_values, text_values = stencils.fill_values(values)
        except Unfit:
            return None
        for hole in stencil.trusted:
            link = text_values[hole]
            if link and not link.startswith(("https://", "http://")):
                return None
        if stencil.links:
            assert link_rewriter is not None
            html_values += [html.escape(link_rewriter(index, url), quote=True)
                            for index, url in enumerate(stencil.links)]
        if pixel:
            assert standard.tracking_pixel_url
            html_values.append(html.escape(standard.tracking_pixel_url, quote=True))
        subject, body, text = (stencil.subject.fill(text_values), stencil.html.fill(html_values),
                               stencil.text_for(text_values, tidy_text if compiled.text_derived else None))
        if max(len(subject), len(body), stencil.text.length(text_values)) > limits.max_output:
            return None  # the full render refuses it (its bound is on the text before tidying)
        with self._lock:
            self.stencil_renders += 1
        return RenderedEmail(subject=one_line(subject), html=body, text=text, links=stencil.links)

    def _recipient_uses(self, compiled: _Compiled, varying: frozenset[str], *, make: bool) -> Uses | None:
        """Where the version uses the varying names (``make``: parse its sources now if that is not known yet)."""
        key = (compiled.version.key, varying)
        with self._lock:
            entry = self._uses.get(key)
        if entry is not None and entry[0] is compiled:
            return entry[1]
        if not make:
            return None
        uses = recipient_uses([self._env.parse(source) for source in compiled.sources], varying)
        with self._lock:
            self._uses[key] = (compiled, uses)
            while len(self._uses) > self._cache_size:
                del self._uses[next(iter(self._uses))]
        return uses

    def _stencil(self, compiled: _Compiled, variables: dict[str, Any], uses: Uses, tested: dict[Any, Any],
                 varying: frozenset[str], rewrite: bool, pixel: bool, limits: RenderLimits) -> Stencil | None:
        def render(values: Mapping[str, Any]) -> tuple[str, str, str]:
            with render_budget(limits):
                return (self._run(compiled, "subject", compiled.subject, dict(values)),
                        self._run(compiled, "html", compiled.html, dict(values)),
                        self._run(compiled, "text", compiled.text, dict(values)))

        shared = {name: value for name, value in variables.items() if name not in varying}
        return stencils.build(render, variables, uses, tested, shared_text="\n".join((*compiled.sources, repr(shared))),
                              rewrite=rewrite, pixel=append_pixel if pixel else None,
                              tidy=tidy_text if compiled.text_derived else None)

    def _run(
        self, compiled: _Compiled, field: TemplateField, template: Template, variables: dict[str, Any]
    ) -> str:
        try:
            return bounded_output(template.generate(variables), self.limits)
        except Exception as exc:
            # Any failure inside a template (undefined name, sandbox refusal, a bad operand)
            # is a property of this version and context, so it is reported as one error type.
            line = _template_line(exc.__traceback__, template.filename)
            line_map = compiled.line_maps.get(field)
            if line_map is not None:
                line = line_map.original(line)
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            origins = compiled.origins.get(field)
            if origins is not None:
                placed = origins.relocate(TemplateProblem(field, line, message))
                line, message = placed.line, placed.message
            error = (TemplateTimeoutError if isinstance(exc, RenderTimedOut) else
                     TemplateLimitError if isinstance(exc, RenderLimitExceeded) else TemplateRenderError)
            raise error(message, template=_label(compiled.version), field=field, line=line) from exc

    def sample_problems(
        self, content: TemplateContent, *, layouts: LayoutLoader | None = None
    ) -> list[TemplateProblem]:
        """What a test render with the template's ``sample_context`` finds: limits and unsafe HTML.

        Names the sample leaves out render as empty values, so a template saved without a
        complete sample is still tried. Other render failures (a value of the wrong type in the
        sample) are left to preview and sending, as before. Call after :func:`validate_template`
        with the same ``layouts``.
        """
        version = TemplateVersion(**content.model_dump(exclude={"version"}), version=1)
        compiled = self._compile(version, layouts)  # not cached: this content may never be saved
        if isinstance(compiled, _Refused):
            raise TemplateValidationError(compiled.error.problems)
        context: dict[str, Any] = {
            name: ChainableUndefined(name=name) for name in template_variables(content, layouts=layouts)
        }
        context.update((k, v) for k, v in content.sample_context.items() if k not in STANDARD_NAMES)
        variables = {**context, **_SAMPLE_STANDARD.variables()}
        problems: list[TemplateProblem] = []
        with render_budget(self.limits):
            fields: tuple[tuple[TemplateField, Template], ...] = (
                ("subject", compiled.subject), ("html", compiled.html), ("text", compiled.text))
            for field, template in fields:
                try:
                    out = self._run(compiled, field, template, variables)
                except TemplateLimitError as exc:
                    problems.append(TemplateProblem(exc.field, exc.line, f"exceeds a render limit: {exc.reason}"))
                    break
                except TemplateRenderError:
                    continue
                if field == "html":
                    problems.extend(
                        TemplateProblem("html", None, f"rendered with its sample_context: {p}")
                        for p in html_problems(out)
                    )
        return problems

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._cache), "max_size": self._cache_size, "prepared": self.prepared_count,
                    "stencils": sum(1 for _, stencil in self._stencils.values() if stencil is not None),
                    "stencil_renders": self.stencil_renders}


@lru_cache(maxsize=4)
def _checking_renderer(limits: RenderLimits) -> Renderer:
    return Renderer(cache_size=1, limits=limits)


def check_template(
    content: TemplateContent, *, limits: RenderLimits | None = None, layouts: LayoutLoader | None = None
) -> None:
    """The checks run on save: :func:`validate_template`, then a test render with the template's
    ``sample_context`` under the limits sending uses, with the layouts it names found through
    ``layouts``. Raises :class:`TemplateValidationError`."""
    validate_template(content, layouts=layouts)
    problems = _checking_renderer(limits or RenderLimits()).sample_problems(content, layouts=layouts)
    if problems:
        raise TemplateValidationError(problems)


_SAMPLE_STANDARD = StandardContext(
    now=datetime(2025, 1, 1, tzinfo=UTC),
    company=Company(name="Example", address="1 Example Street"),
    recipient=Recipient(email="recipient@example.com", name="Sample"),
    unsubscribe_url="https://example.com/unsubscribe",
    preferences_url="https://example.com/preferences",
    view_in_browser_url="https://example.com/view",
)


def _label(version: TemplateVersion) -> str:
    return f"{version.name} v{version.version} ({version.locale})"


def _template_line(tb: TracebackType | None, filename: str | None) -> int | None:
    """The line of the innermost frame in the template, from Jinja's rewritten traceback."""
    line = None
    while tb is not None:
        if filename is not None and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def one_line(subject: str) -> str:
    """A subject can never carry CR or LF: all whitespace runs collapse, control characters go."""
    return " ".join(subject.split()).translate(_CONTROL_CHARS)
