from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jetmail.messaging.templating import (
    EXAMPLE_TEMPLATES_DIR,
    Company,
    InMemoryTemplates,
    Recipient,
    Renderer,
    ReservedContextKeyError,
    StandardContext,
    TemplateContent,
    TemplateLoadError,
    TemplateNotFoundError,
    TemplateRenderError,
    TemplateValidationError,
    TemplateVersion,
    html_to_text,
    load_template_dir,
    locale_chain,
    pick_locale,
    resolve_template,
    rewrite_links,
    template_variables,
    validate_template,
)
from jetmail.messaging.templating.inlining import default_inliner

UNSUBSCRIBE = "https://mail.example.com/u/abc?sig=1&x=2"


def standard(
    *, name: str | None = "Ann", email: str = "ann@example.com", pixel: str | None = None
) -> StandardContext:
    return StandardContext(
        now=datetime(2025, 3, 14, 9, 30, tzinfo=UTC),
        company=Company(name="Example GmbH", address="Musterstraße 1, 10115 Berlin"),
        recipient=Recipient(email=email, name=name, language="de", timezone="Europe/Berlin"),
        unsubscribe_url=UNSUBSCRIBE,
        tracking_pixel_url=pixel,
    )


def version(html: str, *, subject: str = "Hello", text: str | None = None, **fields: Any) -> TemplateVersion:
    defaults: dict[str, Any] = {"name": "t", "locale": "en", "version": 1}
    return TemplateVersion(subject=subject, html=html, text=text, **{**defaults, **fields})


def problems_of(content: TemplateContent) -> list[tuple[str, int | None, str]]:
    with pytest.raises(TemplateValidationError) as caught:
        validate_template(content)
    return [(p.field, p.line, p.message) for p in caught.value.problems]


class CountingInliner:
    """The real inliner, counted: shows how often the renderer inlines CSS."""

    def __init__(self) -> None:
        self.calls = 0
        self._inline: Callable[[str], str] = default_inliner()

    def __call__(self, html: str) -> str:
        self.calls += 1
        return self._inline(html)


# --- locales


@pytest.mark.parametrize(
    ("requested", "default", "expected"),
    [
        ("de-AT", "en", ["de-AT", "de", "en"]),
        ("de_at", "en", ["de-AT", "de", "en"]),
        ("DE", "en", ["de", "en"]),
        ("en-GB", "en", ["en-GB", "en"]),
        ("zh-hant-tw", "en-US", ["zh-Hant-TW", "zh-Hant", "zh", "en-US", "en"]),
        (None, "en", ["en"]),
        ("not a locale!", "de", ["de"]),
    ],
)
def test_locale_chain(requested: str | None, default: str, expected: list[str]) -> None:
    assert locale_chain(requested, default) == expected


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        (["en", "de"], "de-AT", "de"),
        (["en", "de-AT", "de"], "de-at", "de-AT"),
        (["en", "de-DE"], "de-AT", "de-DE"),
        (["en", "fr"], "de-AT", "en"),
        (["fr"], "de", None),
        ([], "de", None),
    ],
)
def test_pick_locale(available: list[str], requested: str, expected: str | None) -> None:
    assert pick_locale(available, requested, "en") == expected


def test_template_locale_is_normalised() -> None:
    assert version("<p>x</p>", locale="de_at").locale == "de-AT"


# --- rendering


def test_render_falls_back_from_regional_locale_to_language() -> None:
    # GIVEN the shipped examples, which have welcome in en and de only
    store = InMemoryTemplates(load_template_dir(EXAMPLE_TEMPLATES_DIR))
    # WHEN a recipient in de-AT gets the welcome mail
    chosen = resolve_template(store, "welcome", locale="de-AT", default_locale="en")
    rendered = Renderer(layouts=store.layout).render(
        chosen, {"login_url": "https://app.example.com/login"}, standard=standard()
    )
    # THEN the German translation is used
    assert chosen.locale == "de"
    assert rendered.subject == "Willkommen bei Example GmbH, Ann!"
    assert "Dein Konto ist eingerichtet" in rendered.html
    assert "Dein Konto ist eingerichtet" in rendered.text


def test_resolve_falls_back_to_default_locale_and_reports_missing_templates() -> None:
    store = InMemoryTemplates(load_template_dir(EXAMPLE_TEMPLATES_DIR))
    assert resolve_template(store, "welcome", locale="fr-CA", default_locale="en").locale == "en"
    with pytest.raises(TemplateNotFoundError):
        resolve_template(store, "no_such_template", locale="en", default_locale="en")


def test_autoescape_blocks_html_injected_through_context_values() -> None:
    # GIVEN a context value carrying markup
    evil = '<script>alert(1)</script><a href="x">'
    tpl = version("<p>Hi {{ name }}</p>", subject="For {{ name }}", text="Hi {{ name }}")
    # WHEN it is rendered
    out = Renderer().render(tpl, {"name": evil}, standard=standard())
    # THEN the HTML carries it escaped, while subject and text are plain text
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;a href=&#34;x&#34;&gt;" in out.html
    assert out.subject == f"For {evil}"
    assert out.text == f"Hi {evil}"


def test_missing_variable_is_a_clear_render_error_with_field_and_line() -> None:
    tpl = version("<html><body>\n<p>Hello</p>\n<p>{{ order.number }}</p>\n</body></html>", name="receipt")
    with pytest.raises(TemplateRenderError) as caught:
        Renderer().render(tpl, {}, standard=standard())
    assert caught.value.field == "html"
    assert caught.value.line == 3
    assert "'order' is undefined" in str(caught.value)
    assert "receipt v1 (en)" in str(caught.value)


def test_missing_attribute_is_an_error_too() -> None:
    tpl = version("<p>{{ order.number }}</p>")
    with pytest.raises(TemplateRenderError, match="number"):
        Renderer().render(tpl, {"order": {}}, standard=standard())


def test_caller_context_cannot_override_standard_names() -> None:
    tpl = version("<p>{{ unsubscribe_url }}</p>")
    with pytest.raises(ReservedContextKeyError) as caught:
        Renderer().render(tpl, {"unsubscribe_url": "https://evil.example", "x": 1}, standard=standard())
    assert caught.value.keys == ("unsubscribe_url",)


def test_standard_names_are_available() -> None:
    tpl = version(
        "<p>{{ recipient.name }} {{ recipient.email }} {{ company.name }} {{ company.address }} "
        "{{ today }} {{ now.strftime('%H:%M') }} {{ unsubscribe_url }}</p>"
    )
    out = Renderer().render(tpl, {}, standard=standard())
    assert (
        "Ann ann@example.com Example GmbH Musterstraße 1, 10115 Berlin 2025-03-14 09:30 "
        "https://mail.example.com/u/abc?sig=1&amp;x=2" in out.html
    )


def test_subject_never_contains_line_breaks() -> None:
    tpl = version("<p>x</p>", subject="Order {{ number }}\n  shipped")
    out = Renderer().render(tpl, {"number": "1\r\nBcc: victim@example.com\x00"}, standard=standard())
    assert out.subject == "Order 1 Bcc: victim@example.com shipped"


def test_dict_keys_win_over_dict_methods() -> None:
    # ``order.items`` is the key of a JSON object, not ``dict.items``.
    tpl = version("<ul>{% for item in order.items %}<li>{{ item }}</li>{% endfor %}</ul>")
    out = Renderer().render(tpl, {"order": {"items": ["pen", "ink"]}}, standard=standard())
    assert "<li>pen</li><li>ink</li>" in out.html


def test_templates_cannot_mutate_the_shared_context() -> None:
    # GIVEN one context object reused for every recipient of a campaign
    shared = {"items": ["a"]}
    tpl = version("<p>{{ items.append('b') }}</p>")
    # WHEN a template tries to change it
    with pytest.raises(TemplateRenderError):
        Renderer().render(tpl, shared, standard=standard())
    # THEN the context is unchanged
    assert shared == {"items": ["a"]}


def test_namespace_counters_still_work() -> None:
    tpl = version(
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
    )
    assert "3" in Renderer().render(tpl, {}, standard=standard()).html


# --- CSS inlining and text derivation, once per version


STYLED = """<!DOCTYPE html>
<html>
<head>
<style>
  p { color: #333333; }
  .brand { color: {{ brand_color }}; }
  @media (max-width: 600px) { .wrap { width: 100% !important; } }
</style>
</head>
<body>
<div class="wrap">
<p>Hello {{ recipient.name }}{% if visits > 1 %}, welcome back{% endif %}!</p>
<p class="brand">{{ "a<b" if visits > 100 else "plain" }}</p>
<table><tbody>
{% for row in rows %}
<tr><td>{{ row.name }}</td><td>{{ row.qty }}</td></tr>
{% endfor %}
</tbody></table>
<p><a href="{{ reset_url }}">Reset your password</a></p>
</div>
</body>
</html>
"""


def test_character_references_of_a_7bit_template_stay_references_after_inlining() -> None:
    # GIVEN a template written in ASCII with character references in text and an attribute, styles to inline,
    # and one written with the characters themselves
    referenced = version('<html><head><style>p { color: #333333; }</style></head><body>'
                         '<p title="&copy; 2026">Example &middot; {{ recipient.name }} &rarr; next</p></body></html>')
    literal = version('<html><head><style>p { color: #333333; }</style></head><body>'
                      '<p>Example \u00b7 {{ recipient.name }}</p></body></html>')
    renderer = Renderer()
    # WHEN both are rendered for an ASCII name and a non-ASCII one
    ann = renderer.render(referenced, {}, standard=standard(name="Ann"))
    jorg = renderer.render(referenced, {}, standard=standard(name="J\u00f6rg"))
    kept = renderer.render(literal, {}, standard=standard(name="Ann"))
    # THEN the referenced template's HTML is ASCII, its references numeric and the styles inlined
    assert ann.html.isascii(), ann.html
    assert '<p title="&#169; 2026" style="color: #333333;">Example &#183; Ann &#8594; next</p>' in ann.html
    # and a value is written as it was (escaped, not turned into a reference)
    assert "Example &#183; J\u00f6rg &#8594; next" in jorg.html
    # and the text part reads the characters
    assert "Example \u00b7 Ann \u2192 next" in ann.text
    # and a template written with the characters keeps them
    assert "Example \u00b7 Ann" in kept.html


def test_css_is_inlined_once_per_version_and_placeholders_survive() -> None:
    # GIVEN a renderer that counts inliner calls and a template with a <style> block
    inliner = CountingInliner()
    renderer = Renderer(inliner=inliner)
    tpl = version(STYLED)
    rows = [{"name": "Pen", "qty": 2}, {"name": "Ink", "qty": 1}]
    # WHEN three recipients are rendered
    outs = [
        renderer.render(
            tpl,
            {"brand_color": color, "visits": visits, "rows": rows, "reset_url": f"https://x.example/r/{n}"},
            standard=standard(name=n),
        )
        for n, color, visits in (("Ann", "#ff0000", 1), ("Bob", "#00ff00", 2), ("Cy", "#0000ff", 3))
    ]
    # THEN CSS was inlined once, and every placeholder still rendered per recipient
    assert inliner.calls == 1
    assert renderer.prepared_count == 1
    ann, bob, _ = outs
    assert '<p style="color: #333333;">Hello Ann!</p>' in ann.html
    assert '<p style="color: #333333;">Hello Bob, welcome back!</p>' in bob.html
    assert 'style="color: #ff0000;">plain</p>' in ann.html
    assert 'style="color: #00ff00;">plain</p>' in bob.html
    assert "<style>" in ann.html and "@media (max-width: 600px)" in ann.html
    assert "p { color" not in ann.html
    # the row loop stayed inside the table (no foster-parenting of template text)
    assert (
        "<tbody>\n\n<tr><td>Pen</td><td>2</td></tr>\n\n<tr><td>Ink</td><td>1</td></tr>\n\n</tbody>"
        in ann.html
    )


def test_new_version_or_changed_content_is_prepared_again() -> None:
    inliner = CountingInliner()
    renderer = Renderer(inliner=inliner)
    v1 = version("<p>one</p>")
    renderer.render(v1, {}, standard=standard())
    renderer.render(v1, {}, standard=standard())
    renderer.render(version("<p>two</p>", version=2), {}, standard=standard())
    # same key, different content: an unsaved preview must not see the cached version
    preview = renderer.render(version("<p>draft</p>"), {}, standard=standard())
    assert inliner.calls == 3
    assert "draft" in preview.html


def test_cache_is_bounded() -> None:
    renderer = Renderer(cache_size=2)
    for n in range(1, 5):
        renderer.render(version("<p>x</p>", version=n), {}, standard=standard())
    assert renderer.cache_info() == {"size": 2, "max_size": 2, "prepared": 4, "stencils": 0, "stencil_renders": 0}


def test_text_body_is_derived_once_and_rendered_per_recipient() -> None:
    inliner = CountingInliner()
    renderer = Renderer(inliner=inliner)
    tpl = version(STYLED)
    context = {"brand_color": "#000", "visits": 5, "rows": [{"name": "Pen", "qty": 2}]}
    ann = renderer.render(tpl, {**context, "reset_url": "https://x.example/r/1?a=1&b=2"}, standard=standard())
    bob = renderer.render(
        tpl, {**context, "reset_url": "https://x.example/r/2"}, standard=standard(name="Bob")
    )
    assert renderer.prepared_count == 1
    assert ann.text == (
        "Hello Ann, welcome back!\n\nplain\n\nPen 2\n\nReset your password (https://x.example/r/1?a=1&b=2)\n"
    )
    assert bob.text.startswith("Hello Bob, welcome back!")
    assert "Reset your password (https://x.example/r/2)" in bob.text


def test_authored_text_body_is_used_as_is() -> None:
    tpl = version("<p>{{ code }}</p>", text="Your code: {{ code }}")
    assert Renderer().render(tpl, {"code": "<7>"}, standard=standard()).text == "Your code: <7>"


def test_derived_text_numbers_looped_list_items_and_skips_hidden_preheader() -> None:
    html = (
        '<div style="display:none">Preview line</div>'
        "<h1>Steps</h1><ol>{% for s in steps %}<li>{{ s }}</li>{% endfor %}</ol>"
        "<p>&#123;&#123; not a placeholder &#125;&#125; &amp; "
        '<a href="mailto:help@example.com">mail us</a></p>'
    )
    out = Renderer().render(version(html), {"steps": ["Sign up", "Verify"]}, standard=standard())
    assert (
        out.text == "Steps\n\n1. Sign up\n2. Verify\n\n{{ not a placeholder }} & mail us (help@example.com)\n"
    )


def test_raw_blocks_stay_literal_and_are_still_checked() -> None:
    html = "<p>{% raw %}{{ not_a_variable }} {% if %}{% endraw %}</p><!--[if mso]><b>{{ x }}</b><![endif]-->"
    out = Renderer().render(version(html), {"x": "X"}, standard=standard())
    assert "<p>{{ not_a_variable }} {% if %}</p><!--[if mso]><b>X</b><![endif]-->" in out.html
    assert out.text == "{{ not_a_variable }} {% if %}\n"
    assert (
        problems_of(version("{% raw %}<script>x</script>{% endraw %}"))[0][2]
        == "<script> tags are not allowed"
    )


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body>"
        "<p>Caf&eacute;&nbsp;au   lait</p><ul><li>One</li><li>Two</li></ul>"
        '<p><a href="https://example.com/a?b=1&amp;c=2">Docs</a> '
        '<a href="https://example.com/">https://example.com/</a> <a href="#top">top</a></p></body></html>'
    )
    assert html_to_text(html) == (
        "Café au lait\n\n- One\n- Two\n\nDocs (https://example.com/a?b=1&c=2) https://example.com/ top"
    )


# --- link rewriting and tracking


LINKS = """<html><body>
<p><a href="https://shop.example.com/a?x=1&amp;y=2">Shop</a></p>
<p><a class="btn" title="a > b" href='http://example.org/b'>B</a></p>
<p><a href="mailto:help@example.com">Mail</a> <a href="#top">Top</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
<p><a href="{{ product_url }}">Product</a></p>
</body></html>"""


def test_link_rewriting_counts_links_and_leaves_unsubscribe_and_mailto() -> None:
    # GIVEN a template with tracked and untracked links
    seen: list[tuple[int, str]] = []

    def rewriter(index: int, url: str) -> str:
        seen.append((index, url))
        return f"https://t.example/c/{index}?u=1&v=2"

    # WHEN rendering with a link rewriter
    out = Renderer().render(
        version(LINKS),
        {"product_url": "https://shop.example.com/p/1"},
        standard=standard(),
        link_rewriter=rewriter,
    )
    # THEN http(s) links are replaced in document order, the originals returned by index
    assert out.links == (
        "https://shop.example.com/a?x=1&y=2",
        "http://example.org/b",
        "https://shop.example.com/p/1",
    )
    assert seen == list(enumerate(out.links))
    assert 'href="https://t.example/c/0?u=1&amp;v=2">Shop' in out.html
    assert '<a class="btn" href="https://t.example/c/1?u=1&amp;v=2" title="a > b">B' in out.html
    assert 'href="https://t.example/c/2?u=1&amp;v=2">Product' in out.html
    # AND mailto, fragment and unsubscribe links are untouched
    assert 'href="mailto:help@example.com"' in out.html
    assert 'href="#top"' in out.html
    assert 'href="https://mail.example.com/u/abc?sig=1&amp;x=2">Unsubscribe' in out.html


def test_rewrite_links_handles_any_attribute_quoting() -> None:
    html = (
        '<a title="x > y" href="https://a.example/1">1</a> <A HREF=\'https://a.example/2\'>2</A> '
        "<a href=https://a.example/3>3</a> <abbr href='https://a.example/no'>no</abbr> "
        '<a data-x="1" href="HTTPS://a.example/4?q=&quot;x&quot;">4</a> <a name="x">no href</a>'
    )
    rewritten, links = rewrite_links(html, lambda i, url: f"https://t.example/{i}")
    assert links == (
        "https://a.example/1",
        "https://a.example/2",
        "https://a.example/3",
        'HTTPS://a.example/4?q="x"',
    )
    assert rewritten == (
        '<a title="x > y" href="https://t.example/0">1</a> <A HREF=\'https://t.example/1\'>2</A> '
        "<a href=\"https://t.example/2\">3</a> <abbr href='https://a.example/no'>no</abbr> "
        '<a data-x="1" href="https://t.example/3">4</a> <a name="x">no href</a>'
    )


def test_without_rewriter_links_are_left_alone() -> None:
    out = Renderer().render(version(LINKS), {"product_url": "https://p.example/1"}, standard=standard())
    assert out.links == ()
    assert 'href="https://p.example/1"' in out.html


def test_tracking_pixel_only_for_marketing_mail() -> None:
    pixel = "https://t.example/o/abc?x=1&y=2"
    marketing = version('<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>', category="marketing")
    transactional = version("<p>Receipt</p>")
    tracked = Renderer().render(marketing, {}, standard=standard(pixel=pixel))
    untracked = Renderer().render(transactional, {}, standard=standard(pixel=pixel))
    assert tracked.html.endswith(
        '<img src="https://t.example/o/abc?x=1&amp;y=2" width="1" height="1" alt=""></body></html>'
    )
    assert "t.example/o" not in untracked.html


def test_marketing_mail_needs_an_unsubscribe_url() -> None:
    marketing = version('<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>', category="marketing")
    no_link = standard().model_copy(update={"unsubscribe_url": None})
    with pytest.raises(TemplateRenderError, match="unsubscribe_url"):
        Renderer().render(marketing, {}, standard=no_link)


# --- validation


@pytest.mark.parametrize(
    ("html", "line", "message"),
    [
        ("<p>hi</p>\n<script>alert(1)</script>", 2, "<script> tags are not allowed"),
        ("<p>hi</p>\n\n<SCRIPT src='x.js'></SCRIPT>", 3, "<script> tags are not allowed"),
        ('<p>\n<a href="#" onclick="steal()">x</a></p>', 2, 'event handler attribute "onclick"'),
        ('<body ONLOAD="steal()">', 1, 'event handler attribute "onload"'),
        ("<img src=x onerror=steal()>", 1, 'event handler attribute "onerror"'),
        ('<a href="javascript:alert(1)">x</a>', 1, "script URL in href"),
        ('<a href=" JavaScript:alert(1)">x</a>', 1, "script URL in href"),
        ('<a href="java&#115;cript:alert(1)">x</a>', 1, "script URL in href"),
        ('<a href="&#x6A;avascript&colon;alert(1)">x</a>', 1, "script URL in href"),
        ('<a href="java\tscript:alert(1)">x</a>', 1, "script URL in href"),
        ("<img src='vbscript:msgbox(1)'>", 1, "script URL in src"),
        ('<img srcset="/a.png 1x, javascript:alert(1) 2x">', 1, "script URL in srcset"),
        ('<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', 1, "script URL in href"),
        ('<div style="background: url(javascript:alert(1))">x</div>', 1, "script in a style attribute"),
        ("<style>\np { width: expression(alert(1)); }\n</style>", 1, "script in a <style> block"),
        ('<iframe src="https://example.com"></iframe>', 1, "<iframe> tags are not allowed"),
        ('<link rel="stylesheet" href="/etc/app.css">', 1, "linked stylesheets are never fetched"),
        ("<p>\n{{ ''.__class__.__mro__ }}</p>", 2, 'access to attribute "__class__"'),
        ("<p>{{ x|attr('__class__') }}</p>", 1, 'access to attribute "__class__"'),
        ("<p>{{ x|attr(name) }}</p>", 1, "the attr filter needs a literal attribute name"),
        ("<p>{{ cycler.__init__.__globals__ }}</p>", 1, '"cycler" is not available'),
        ("<p>{{ self._TemplateReference__context }}</p>", 1, '"self" is not available'),
        (
            "<p>{{ self._TemplateReference__context }}</p>",
            1,
            'access to attribute "_TemplateReference__context"',
        ),
        ("<p>{{ x['__globals__'] }}</p>", 1, 'access to item "__globals__"'),
        ("<p>{{ users|map(attribute='__class__')|list }}</p>", 1, 'access to attribute "__class__"'),
        ("<p>{{ users|sort(attribute='profile._secret') }}</p>", 1, 'access to attribute "profile._secret"'),
        ("<p>{{ lipsum.__globals__ }}</p>", 1, '"lipsum" is not available'),
        ("<p>{{ x.mro() }}</p>", 1, 'access to attribute "mro"'),
        ("<p>{{ gen.gi_frame }}</p>", 1, 'access to attribute "gi_frame"'),
        ("{% include 'other.html' %}", 1, 'no template "other.html" (locale en) to extend or include'),
        ("<p>x</p>\n{% import 'macros' as m %}", 2, "import is not supported"),
        ('<p>x</p>\n<a {{ attrs }} href="/">x</a>', 2, "a placeholder inside an HTML tag"),
        ("<a href={{ url }}>x</a>", 1, "a placeholder in an unquoted attribute value"),
        ('<td {% if wide %}width="100%"{% endif %}>x</td>', 1, "template logic inside an HTML tag"),
    ],
)
def test_validation_rejects_unsafe_html_constructs(html: str, line: int, message: str) -> None:
    found = problems_of(version(html))
    assert any(field == "html" and at == line and message in text for field, at, text in found), found


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("subject", "Hi {{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("text", "Hi {{ x|attr('__class__') }}"),
    ],
)
def test_validation_checks_subject_and_text_too(field: str, source: str) -> None:
    tpl = version("<p>x</p>", **{field: source})
    assert next((f, line) for f, line, _ in problems_of(tpl)) == (field, 1)


def test_syntax_error_reports_field_and_line() -> None:
    tpl = version("<p>one</p>\n<p>two</p>\n<p>{% if x %}three</p>\n", subject="Hi {{ name")
    found = problems_of(tpl)
    assert [(f, line) for f, line, _ in found] == [("subject", 1), ("html", 3)]
    assert all(message.startswith("syntax error") for _, _, message in found)


def test_marketing_template_must_link_unsubscribe() -> None:
    found = problems_of(version("<p>Buy now</p>", category="marketing"))
    assert found == [("html", None, "a marketing template must link {{ unsubscribe_url }}")]


def test_validation_lists_every_problem() -> None:
    tpl = version("<script>x</script>\n<a onclick='x' href='javascript:y'>{{ a.__dict__ }}</a>")
    lines = [line for _, line, _ in problems_of(tpl)]
    assert lines == [1, 2, 2, 2]


def test_safe_templates_pass_validation() -> None:
    html = """<html><head><style>a { color: red; }</style></head><body>
    <p title="{{ name }}">{{ name|replace('_', ' ')|title }} {{ user|attr('name') }}</p>
    <p>{{ items|map(attribute='price')|sum }}</p>
    <a href="https://example.com/?q={{ q|urlencode }}" class="{% if vip %}vip{% else %}std{% endif %}">Go</a>
    <p>Tip: onboarding is easy. Enable javascript: it is fine to mention it.</p>
    <img src="data:image/png;base64,iVBORw0KGgo=" alt="">
    <a href="https://example.com/search?q=a,javascript:b">commas are fine</a>
    {# a note for editors #}
    </body></html>"""
    validate_template(version(html, subject="Hi {{ name }}", text="Hi {{ name }}"))


def test_template_variables_lists_what_the_caller_must_provide() -> None:
    tpl = version(
        "<p>{{ recipient.name }} {{ order.number }}</p>{% for i in items %}{{ i }}{% endfor %}",
        subject="{{ company.name }}: {{ title }}",
    )
    assert template_variables(tpl) == {"order", "items", "title"}


# --- example templates and the folder loader


EXAMPLE_LAYOUTS = {"layout", "marketing_layout"}


def test_example_templates_load_validate_and_render_with_their_samples() -> None:
    loaded = load_template_dir(EXAMPLE_TEMPLATES_DIR)
    # layouts come before the templates that extend them, so saving in order always works
    layouts = [t for t in loaded if t.name in EXAMPLE_LAYOUTS]
    assert [t.name for t in layouts] == ["layout", "marketing_layout", "marketing_layout"]
    names_in_order = [t.name for t in loaded]
    assert names_in_order.index("layout") == 0
    assert all(names_in_order.index("marketing_layout") < i for i, t in enumerate(loaded)
               if t.category == "marketing" and t.name not in EXAMPLE_LAYOUTS)
    store = InMemoryTemplates(loaded)
    for layout in layouts:
        validate_template(layout, layouts=store.layout)
    templates = [t for t in loaded if t.name not in EXAMPLE_LAYOUTS]
    names = {t.name for t in templates}
    assert names == {
        "welcome",
        "getting_started",
        "tips_and_tricks",
        "password_reset",
        "order_confirmation",
        "shipping_notification",
        "confirm_subscription",
    }
    assert {(t.name, t.locale) for t in templates} == {(n, loc) for n in names for loc in ("en", "de")}
    renderer = Renderer(layouts=store.layout)
    for content in templates:
        validate_template(content, layouts=store.layout)
        meta = json.loads((EXAMPLE_TEMPLATES_DIR / content.name / "meta.json").read_text(encoding="utf-8"))
        # the documented variables are exactly those the template uses, and the sample has them all
        assert template_variables(content, layouts=store.layout) == set(meta["variables"]) == set(
            content.sample_context
        )
        stored = TemplateVersion(**content.model_dump(), version=1)
        out = renderer.render(
            stored, content.sample_context, standard=standard(pixel="https://t.example/o/1")
        )
        assert out.subject and "\n" not in out.subject
        assert "Example GmbH" in out.html and "Musterstraße 1, 10115 Berlin" in out.html
        assert "Ann" in out.text
        assert "{{" not in out.html and "{%" not in out.text
        assert 'style="' in out.html and "<style>" in out.html  # inlined, media queries kept
        if content.category == "marketing":
            assert content.name in {"welcome", "getting_started", "tips_and_tricks"}
            assert UNSUBSCRIBE.replace("&", "&amp;") in out.html
            assert 'width="1" height="1"' in out.html


def test_example_templates_render_without_a_recipient_name() -> None:
    examples = load_template_dir(EXAMPLE_TEMPLATES_DIR)
    renderer = Renderer(layouts=InMemoryTemplates(examples).layout)
    for content in examples:
        stored = TemplateVersion(**content.model_dump(), version=1)
        out = renderer.render(stored, content.sample_context, standard=standard(name=None))
        assert "None" not in out.subject and "None" not in out.text


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_load_template_dir_reads_layout(tmp_path: Path) -> None:
    write(tmp_path / "promo" / "meta.json", '{"category": "marketing", "sample_context": {"code": "X1"}}')
    write(tmp_path / "promo" / "en" / "subject.txt", "Your code {{ code }}\n")
    write(tmp_path / "promo" / "en" / "body.html", '<p>{{ code }} <a href="{{ unsubscribe_url }}">u</a></p>')
    write(tmp_path / "promo" / "de_at" / "subject.txt", "Dein Code {{ code }}")
    write(
        tmp_path / "promo" / "de_at" / "body.html", '<p>{{ code }} <a href="{{ unsubscribe_url }}">u</a></p>'
    )
    write(tmp_path / "promo" / "de_at" / "body.txt", "Code: {{ code }}")
    write(tmp_path / "README.md", "ignored")
    de, en = load_template_dir(tmp_path)
    assert (de.locale, de.text, de.category) == ("de-AT", "Code: {{ code }}", "marketing")
    assert (en.subject, en.text, en.sample_context) == ("Your code {{ code }}", None, {"code": "X1"})


def test_load_template_dir_puts_layouts_before_the_templates_that_use_them(tmp_path: Path) -> None:
    write(tmp_path / "a_mail" / "en" / "subject.txt", "Hi")
    write(tmp_path / "a_mail" / "en" / "body.html", '{% extends "z_frame" %}{% block c %}x{% endblock %}')
    write(tmp_path / "m_plain" / "en" / "subject.txt", "Hi")
    write(tmp_path / "m_plain" / "en" / "body.html", "<p>plain</p>")
    write(tmp_path / "z_frame" / "en" / "subject.txt", "Hi")
    write(tmp_path / "z_frame" / "en" / "body.html", '<div>{% block c %}{% endblock %}{% include "z_sign" %}</div>')
    write(tmp_path / "z_sign" / "en" / "subject.txt", "Hi")
    write(tmp_path / "z_sign" / "en" / "body.html", "<p>sign</p>")
    assert [t.name for t in load_template_dir(tmp_path)] == ["z_sign", "z_frame", "a_mail", "m_plain"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"x/en/subject.txt": "s"}, "body.html: missing"),
        ({"x/meta.json": "{nope", "x/en/subject.txt": "s", "x/en/body.html": "h"}, "meta.json"),
        ({"x/meta.json": '{"colour": "red"}', "x/en/subject.txt": "s", "x/en/body.html": "h"}, "meta.json"),
        ({"Bad Name/en/subject.txt": "s", "Bad Name/en/body.html": "h"}, "name"),
        ({"x/english!/subject.txt": "s", "x/english!/body.html": "h"}, "locale"),
    ],
)
def test_load_template_dir_names_the_broken_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for relative, text in files.items():
        write(tmp_path / relative, text)
    with pytest.raises(TemplateLoadError, match=message):
        load_template_dir(tmp_path)


def test_in_memory_store_versions() -> None:
    store = InMemoryTemplates()
    first = store.add(TemplateContent(name="a", locale="en", subject="s", html="<p>1</p>"))
    second = store.add(TemplateContent(name="a", locale="en", subject="s", html="<p>2</p>"))
    assert (first.version, second.version) == (1, 2)
    assert store.get("a", locale="en") == second
    assert store.get("a", locale="en", version=1) == first
    assert store.get("a", locale="en", version=3) is None
    assert store.locales("a") == ["en"]
