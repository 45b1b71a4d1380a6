"""A campaign's renders filled in from a stencil are the renders in full, byte for byte, or are not made that way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from jetmail.messaging.templating import (
    EXAMPLE_TEMPLATES_DIR,
    Company,
    InMemoryTemplates,
    Recipient,
    RenderedEmail,
    Renderer,
    StandardContext,
    TemplateVersion,
    load_template_dir,
)
from jetmail.messaging.templating.errors import TemplateLimitError, TemplateRenderError, UnsafeHtmlError
from jetmail.messaging.templating.limits import RenderLimits
from jetmail.messaging.templating.stencil import NoStencil

CAMPAIGN = frozenset({"attributes"})
LAYOUTS = {"layout", "marketing_layout"}

PEOPLE: list[tuple[str | None, dict[str, Any]]] = [
    ("Ann", {"first_name": "Ann", "plan": "pro", "vip": True}),
    ('Bob <"&\'> O\'Neil', {"first_name": "<b>Bob</b>", "plan": "", "vip": False}),
    (None, {"first_name": None, "plan": None, "vip": None}),
    ("", {"first_name": "", "plan": 0, "vip": []}),
    ("Zoë", {"first_name": "Zoë", "plan": "free", "vip": [1]}),
    (" Zed\t", {"first_name": "two\n\n\nlines ", "plan": "\u00a0pro", "vip": True}),  # what tidying would trim
]


def standard(index: int, name: str | None, *, tracked: bool = True) -> StandardContext:
    token = f"tok{index}-{'x' * index}"
    return StandardContext(
        now=datetime(2026, 3, 14, 9, index, tzinfo=UTC),
        company=Company(name="Example & Co", address="Musterstraße 1, 10115 Berlin"),
        recipient=Recipient(email=f"p{index}+tag@example.com", name=name, language="en", timezone="Europe/Berlin"),
        unsubscribe_url=f"https://mail.example.com/u/{token}",
        preferences_url=f"https://mail.example.com/p/{token}",
        view_in_browser_url=f"https://mail.example.com/v/{token}" if index % 2 else None,
        tracking_pixel_url=f"https://mail.example.com/t/o/{token}" if tracked else None,
    )


def rewriter(index: int) -> Any:
    return lambda link, url: f"https://mail.example.com/t/c/{index}.{link}?u={url}&x=1"


def both(version: TemplateVersion, context: dict[str, Any], *, layouts: Any = None,
         tracked: bool = True, limits: RenderLimits | None = None) -> list[tuple[RenderedEmail, RenderedEmail, int]]:
    """Each of PEOPLE rendered in full by one renderer and from stencils by another: (full, stencilled, stencil
    renders so far)."""
    full, stencilled = (Renderer(layouts=layouts, limits=limits) for _ in range(2))
    out = []
    for index, (name, attributes) in enumerate(PEOPLE):
        values = {**context, "attributes": attributes}
        kwargs: dict[str, Any] = {"standard": standard(index, name, tracked=tracked),
                                  "link_rewriter": rewriter(index) if tracked else None}
        out.append((full.render(version, values, **kwargs),
                    stencilled.render(version, values, varying=CAMPAIGN, **kwargs),
                    stencilled.stencil_renders))
    return out


def test_shipped_templates_from_stencils_are_their_renders_in_full() -> None:
    examples = load_template_dir(EXAMPLE_TEMPLATES_DIR)
    store = InMemoryTemplates(examples)
    checked = 0
    for content in examples:
        if content.name in LAYOUTS:
            continue
        version = TemplateVersion(**content.model_dump(), version=1)
        for tracked in (True, False):
            results = both(version, dict(content.sample_context), layouts=store.layout, tracked=tracked)
            for full, stencilled, _ in results:
                assert stencilled == full
                checked += 1
            # every recipient's mail came from a stencil
            assert results[-1][2] == len(PEOPLE), content.name
    assert checked == 14 * 2 * len(PEOPLE)


def version(html: str, *, subject: str = "Hello {{ recipient.name }}", text: str | None = None,
            category: str = "marketing", name: str = "t") -> TemplateVersion:
    return TemplateVersion(name=name, locale="en", version=1, subject=subject, html=html, text=text,
                           category=category)  # type: ignore[arg-type]


FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ company.address }}</p>'


@pytest.mark.parametrize("html", [
    # written out, in text and in quoted attributes, tested by if, not and else
    '<p title="{{ attributes.first_name }}">Hi {{ recipient.name }}, {{ attributes["plan"] }}</p>'
    '{% if attributes.vip %}<b>VIP {{ attributes.first_name }}</b>{% elif not recipient.name %}anon{% else %}'
    '-{% endif %}<p>{{ "x" if attributes["plan"] else "y" }} {{ today }} {{ now }} {{ recipient.email }}</p>',
    # tracked links, with and without a recipient value after the scheme
    '<a href="https://example.com/a?b=1&amp;c=2">a</a><a href=\'https://example.com/{{ recipient.email }}\'>b</a>'
    '<a href="{{ preferences_url }}">prefs</a><a href="{{ view_in_browser_url }}">view</a>',
    # a value the template tests and also reaches into
    '{% if attributes.vip %}{{ attributes.vip }}{% endif %}',
])
def test_recipient_values_where_a_stencil_holds_them(html: str) -> None:
    results = both(version(html + FOOTER), {})
    for full, stencilled, _ in results:
        assert stencilled == full
    assert results[-1][2] == len(PEOPLE) or "recipient.email }}'" in html


@pytest.mark.parametrize("html", [
    "<p>{{ recipient.name|upper }}</p>",  # a filter
    "{% for key in attributes %}<i>{{ key }}</i>{% endfor %}",  # a loop over them
    "{% set who = recipient %}<p>{{ who.name }}</p>",  # assigned
    "<p>{{ attributes }} {{ attributes.plan }}</p>",  # written out whole and reached into
    '<p style="color: {{ attributes.plan }}">a style</p>',  # a value the safety walk reads
    '<a href="{{ attributes.plan }}">a link</a>',  # a whole link from the contact
    "<!-- {{ recipient.name }} --><p>a comment</p>",
    "<p>{{ 'jm' ~ 'ph0z' }} {{ recipient.name }}</p>",  # the template writes what a marker looks like
    "{% if attributes.plan == 'pro' %}pro{% endif %}",  # a test other than truth
    "{% if attributes.plan %}a{% endif %}{% if attributes['plan'] %}b{% endif %}",  # one value reached two ways
])
def test_templates_outside_a_stencil_render_in_full(html: str) -> None:
    results = both(version(html + FOOTER), {})
    for full, stencilled, _ in results:
        assert stencilled == full
    assert results[-1][2] == 0


def test_an_unsafe_recipient_value_is_refused_as_in_full() -> None:
    template = version('<p><a href="{{ attributes.site }}">site</a></p>' + FOOTER)
    renderer = Renderer()
    safe = renderer.render(template, {"attributes": {"site": "https://example.com"}},
                           standard=standard(1, "Ann"), varying=CAMPAIGN)
    assert 'href="https://example.com"' in safe.html
    with pytest.raises(UnsafeHtmlError):
        renderer.render(template, {"attributes": {"site": "javascript:alert(1)"}},
                        standard=standard(2, "Bob"), varying=CAMPAIGN)


def test_a_missing_value_and_an_overlong_one_fail_as_in_full() -> None:
    template = version("<p>{{ attributes.first_name }}</p>" + FOOTER)
    limits = RenderLimits(max_output=5_000)
    renderer = Renderer(limits=limits)
    renderer.render(template, {"attributes": {"first_name": "Ann"}}, standard=standard(1, "Ann"), varying=CAMPAIGN)
    assert renderer.stencil_renders == 1
    with pytest.raises(TemplateRenderError, match="first_name"):
        renderer.render(template, {"attributes": {}}, standard=standard(2, "Bob"), varying=CAMPAIGN)
    with pytest.raises(TemplateLimitError):
        renderer.render(template, {"attributes": {"first_name": "x" * 6_000}}, standard=standard(3, "Cy"),
                        varying=CAMPAIGN)
    assert renderer.stencil_renders == 1


def test_the_shared_context_is_the_stencils_own() -> None:
    """A stencil holds the context's other names as they were: a campaign's copy of a version has one context."""
    template = version("<p>{{ offer }} for {{ recipient.name }}</p>" + FOOTER)
    renderer = Renderer()
    first = renderer.render(template, {"offer": "10 % off", "attributes": {}}, standard=standard(1, "Ann"),
                            varying=CAMPAIGN)
    second = renderer.render(template, {"offer": "10 % off", "attributes": {}}, standard=standard(2, "Bob"),
                             varying=CAMPAIGN)
    assert "10 % off for Ann" in first.html and "10 % off for Bob" in second.html
    assert renderer.stencil_renders == 2
    assert renderer.cache_info()["stencils"] == 1


def test_stencil_only_fills_in_a_stencil_made_before_and_never_runs_jinja() -> None:
    template = version("<p>Hi{% if recipient.name %} {{ recipient.name }}{% endif %}</p>" + FOOTER,
                       subject="Hello")
    outside = version("<p>Hi {{ recipient.name|upper }}</p>" + FOOTER, name="u")
    renderer, full = Renderer(), Renderer()
    values = {"attributes": {}}
    for candidate in (template, outside):  # neither compiled yet
        with pytest.raises(NoStencil):
            renderer.render(candidate, values, standard=standard(1, "Ann"), varying=CAMPAIGN, fixed_layouts=True,
                            stencil_only=True)
    assert renderer.cache_info()["prepared"] == 0
    renderer.render(template, values, standard=standard(1, "Ann"), varying=CAMPAIGN, fixed_layouts=True)
    renderer.render(outside, values, standard=standard(1, "Ann"), varying=CAMPAIGN, fixed_layouts=True)
    filled = renderer.render(template, values, standard=standard(2, "Bob"), varying=CAMPAIGN, fixed_layouts=True,
                             stencil_only=True)
    assert filled == full.render(template, values, standard=standard(2, "Bob"))
    with pytest.raises(NoStencil):  # a pattern of tested values without a stencil yet
        renderer.render(template, values, standard=standard(3, None), varying=CAMPAIGN, fixed_layouts=True,
                        stencil_only=True)
    with pytest.raises(NoStencil):  # outside what a stencil holds
        renderer.render(outside, values, standard=standard(2, "Bob"), varying=CAMPAIGN, fixed_layouts=True,
                        stencil_only=True)
    assert renderer.stencil_renders == 2
