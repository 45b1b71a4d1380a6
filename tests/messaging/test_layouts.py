"""Layouts: ``{% extends %}`` and ``{% include %}`` resolved through the template store, in the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.messaging.templates import TemplateStore
from jetmail.messaging.templating import (
    Company,
    InMemoryTemplates,
    Recipient,
    Renderer,
    StandardContext,
    TemplateContent,
    TemplateRenderError,
    TemplateValidationError,
    TemplateVersion,
    validate_template,
)
from jetmail.messaging.templating.environment import new_environment
from jetmail.services import Services
from jetmail.storage.table import Table
from stacktools import api_client

UNSUBSCRIBE = "https://mail.example.com/u/abc"

LAYOUT = """<!DOCTYPE html>
<html lang="{% block lang %}en{% endblock %}">
<head><title>{% block title %}{{ company.name }}{% endblock %}</title>
<style>.card { color: #111111; } .note { color: #999999; }</style></head>
<body>
<div class="card">
{% block content %}<p>nothing yet</p>{% endblock %}
</div>
<p class="note">{{ company.name }}, {{ company.address }}{% block footer %}{% endblock %}</p>
</body>
</html>
"""

CHILD = """{% extends "frame" %}
{% block title %}Hello {{ recipient.name }}{% endblock %}
{% block content %}
<h1>Hi {{ recipient.name }}</h1>
<p class="note">Your code is {{ code }}.</p>
{{ super() }}
{% endblock %}
"""


def standard(name: str = "Ann") -> StandardContext:
    return StandardContext(
        now=datetime(2025, 3, 14, 9, 30, tzinfo=UTC),
        company=Company(name="Example GmbH", address="Musterstraße 1"),
        recipient=Recipient(email="ann@example.com", name=name),
        unsubscribe_url=UNSUBSCRIBE,
    )


def template(name: str, html: str, *, locale: str = "en", **fields: Any) -> TemplateContent:
    return TemplateContent(name=name, locale=locale, subject=fields.pop("subject", "Hi"), html=html, **fields)


def version(html: str, *, name: str = "t", **fields: Any) -> TemplateVersion:
    return TemplateVersion(**template(name, html, **fields).model_dump(), version=1)


def problems(content: TemplateContent, store: InMemoryTemplates) -> list[tuple[str, int | None, str]]:
    with pytest.raises(TemplateValidationError) as caught:
        validate_template(content, layouts=store.layout)
    return [(p.field, p.line, p.message) for p in caught.value.problems]


# --- expanding a template into its layout


def test_a_template_extending_a_stored_layout_renders_inside_it_styled_by_it() -> None:
    # GIVEN a stored layout with a <style> block, and a template that extends it
    store = InMemoryTemplates([template("frame", LAYOUT)])
    renderer = Renderer(layouts=store.layout)
    # WHEN the template is rendered
    out = renderer.render(version(CHILD), {"code": "X1"}, standard=standard())
    # THEN its blocks stand in the layout, super() kept the layout's own block, and the layout's
    # CSS was inlined into the template's markup as well as its own
    assert "<title>Hello Ann</title>" in out.html
    assert '<div class="card" style="color: #111111;">' in out.html
    assert '<h1>Hi Ann</h1>\n<p class="note" style="color: #999999;">Your code is X1.</p>' in out.html
    assert "<p>nothing yet</p>" in out.html
    assert "Example GmbH, Musterstraße 1</p>" in out.html
    assert out.text.startswith("Hi Ann\n\nYour code is X1.\n\nnothing yet")
    assert "{%" not in out.html and "{{" not in out.html


def test_blocks_follow_the_chain_and_the_most_derived_definition_wins() -> None:
    # GIVEN a marketing layout that extends the frame, and a template that extends it
    marketing = '{% extends "frame" %}{% block footer %} <a href="{{ unsubscribe_url }}">Unsubscribe</a>{% endblock %}'
    store = InMemoryTemplates([template("frame", LAYOUT), template("marketing", marketing, category="marketing")])
    child = version('{% extends "marketing" %}{% block content %}<p>News</p>{% endblock %}', category="marketing")
    # WHEN it is rendered
    out = Renderer(layouts=store.layout).render(child, {}, standard=standard())
    # THEN each block comes from the nearest template defining it, and the unsubscribe link in the
    # middle layout satisfies the marketing check
    assert "<p>News</p>" in out.html and "nothing yet" not in out.html
    assert f'Musterstraße 1 <a href="{UNSUBSCRIBE}">Unsubscribe</a></p>' in out.html


def test_include_inserts_a_stored_template_where_it_stands() -> None:
    signature = "<p>Yours, {{ company.name }}</p>{% raw %}{{ kept }}{% endraw %}"
    store = InMemoryTemplates([template("signature", signature)])
    html = '<p>Hi</p>{% for n in range(2) %}{% include "signature" %}{% endfor %}{% include "gone" ignore missing %}'
    out = Renderer(layouts=store.layout).render(version(html), {}, standard=standard())
    assert "<body><p>Hi</p>" + "<p>Yours, Example GmbH</p>{{ kept }}" * 2 + "</body>" in out.html


def test_the_layout_translation_follows_the_template_locale() -> None:
    # GIVEN a layout in English and German, and one that exists in English only
    store = InMemoryTemplates([
        template("frame", '<p lang="en">{% block content %}{% endblock %}</p>'),
        template("frame", '<p lang="de">{% block content %}{% endblock %}</p>', locale="de"),
        template("plain", "<div>{% block content %}{% endblock %}</div>"),
    ])
    renderer = Renderer(layouts=store.layout)

    def render(parent: str, locale: str) -> str:
        html = f'{{% extends "{parent}" %}}{{% block content %}}x{{% endblock %}}'
        out = renderer.render(version(html, locale=locale, name=f"t-{parent}"), {}, standard=standard())
        return out.html.removeprefix("<html><head></head><body>").removesuffix("</body></html>")

    # THEN a template gets the translation a recipient of its locale would get
    assert render("frame", "de-AT") == '<p lang="de">x</p>'
    assert render("frame", "fr") == '<p lang="en">x</p>'
    # AND a layout with a single translation serves every locale
    assert render("plain", "de") == "<div>x</div>"
    assert store.layout("plain", "ja") is not None and store.layout("frame", "ja") is not None


def test_a_layout_saved_again_reaches_the_templates_that_extend_it() -> None:
    # GIVEN a template rendered once with its layout
    store = InMemoryTemplates([template("frame", LAYOUT)])
    renderer = Renderer(layouts=store.layout)
    child = version(CHILD)
    renderer.render(child, {"code": "1"}, standard=standard())
    renderer.render(child, {"code": "2"}, standard=standard())
    assert renderer.prepared_count == 1
    # WHEN the layout is saved again
    store.add(template("frame", LAYOUT.replace("#111111", "#222222")))
    out = renderer.render(child, {"code": "3"}, standard=standard())
    # THEN the template is prepared afresh with the new layout
    assert renderer.prepared_count == 2
    assert 'style="color: #222222;"' in out.html


def test_a_campaign_copy_keeps_the_layouts_it_was_compiled_with_and_stops_looking_them_up() -> None:
    # GIVEN a campaign's copy of a template, rendered once with fixed layouts
    store = InMemoryTemplates([template("frame", LAYOUT)])
    looked_up: list[str] = []

    def layouts(name: str, locale: str) -> TemplateVersion | None:
        looked_up.append(name)
        return store.layout(name, locale)

    renderer = Renderer(layouts=layouts)
    campaign_copy = version(CHILD).model_copy(update={"name": "child~cmp_1.campaign"})
    renderer.render(campaign_copy, {"code": "1"}, standard=standard(), fixed_layouts=True)
    compiled_lookups = len(looked_up)
    # WHEN the layout is saved again and the campaign renders on
    store.add(template("frame", LAYOUT.replace("#111111", "#222222")))
    out = renderer.render(campaign_copy, {"code": "2"}, standard=standard(), fixed_layouts=True)
    # THEN it keeps the layout it was compiled with, without a single lookup more
    assert 'style="color: #111111;"' in out.html
    assert renderer.prepared_count == 1
    assert len(looked_up) == compiled_lookups
    # AND a render of the stored version itself gets the new layout
    assert 'style="color: #222222;"' in renderer.render(version(CHILD), {"code": "3"}, standard=standard()).html


def test_a_template_refused_for_a_missing_layout_renders_once_the_layout_is_saved() -> None:
    store = InMemoryTemplates()
    renderer = Renderer(layouts=store.layout)
    child = version(CHILD)
    with pytest.raises(TemplateValidationError, match='html:1: no template "frame"'):
        renderer.render(child, {"code": "1"}, standard=standard())
    store.add(template("frame", LAYOUT))
    assert "Hi Ann" in renderer.render(child, {"code": "1"}, standard=standard()).html


def test_a_render_error_names_the_line_it_was_written_on() -> None:
    store = InMemoryTemplates([template("frame", LAYOUT.replace("{{ company.address }}", "{{ missing_in_layout }}"))])
    renderer = Renderer(layouts=store.layout)
    # a name missing in the template's own block: its own line
    with pytest.raises(TemplateRenderError) as own:
        renderer.render(version(CHILD), {}, standard=standard())
    assert (own.value.line, own.value.reason) == (5, "'code' is undefined")
    # a name missing in the layout: the layout and its line
    with pytest.raises(TemplateRenderError) as layout:
        renderer.render(version(CHILD, name="other"), {"code": "1"}, standard=standard())
    assert layout.value.line is None
    assert layout.value.reason == "'missing_in_layout' is undefined (in layout \"frame\", line 9)"


# --- what validation refuses, with a clear reason


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('{% extends "nope" %}{% block content %}x{% endblock %}',
         ("html", 1, 'no template "nope" (locale en) to extend or include')),
        ('{% extends layout_name %}', ("html", 1, 'extends takes a template name in quotes')),
        ('{% extends "frame" %}\n\n<p>lost</p>\n{% block content %}x{% endblock %}',
         ("html", 3, "a template that extends a layout renders only its blocks")),
        ('{% extends "frame" %}\n{% block contnet %}x{% endblock %}',
         ("html", 2, 'block "contnet" is never rendered: no layout that "frame" builds on places it')),
        ('{% extends "frame" %}{% block content %}{{ super()|upper }}{% endblock %}',
         ("html", 1, "super() can only stand alone: {{ super() }}")),
        ('{% include "frame" %}{% block x %}{{ super() }}{% endblock %}',
         ("html", 1, "super() needs a block that overrides a layout's block")),
        ('{% extends "frame" %}{% block content %}{% extends "frame" %}{% endblock %}',
         ("html", 1, "a template extends one layout, once, outside any block")),
        ('{% include "frame" without context %}', ("html", 1, "include takes a template name in quotes")),
        ('{% extends "loop_a" %}', ("html", None, '"loop_a" takes part in a loop: t -> loop_a -> loop_b -> loop_a')),
        ('{% extends "strict" %}', ("html", None, 'layout "strict" requires block "content"')),
        ('{% extends "nested" %}{% block b %}({% block a %}{{ super() }}{% endblock %}){% endblock %}',
         ("html", None, 'block "a" contains itself (through super())')),
    ],
)
def test_validation_explains_what_is_wrong_with_extends_and_include(
    html: str, expected: tuple[str, int | None, str]
) -> None:
    store = InMemoryTemplates([
        template("frame", LAYOUT),
        template("loop_a", '{% extends "loop_b" %}'),
        template("loop_b", '{% extends "loop_a" %}'),
        template("strict", "<div>{% block content required %}{% endblock %}</div>"),
        template("nested", "{% block a %}[{% block b %}{% endblock %}]{% endblock %}"),
    ])
    found = problems(template("t", html), store)
    field, line, message = expected
    assert any(f == field and at == line and message in text for f, at, text in found), found


def test_expansion_is_bounded() -> None:
    # GIVEN partials that include each other a hundred times at each of three levels
    store = InMemoryTemplates([
        template("p1", '{% include "p2" %}' * 100),
        template("p2", '{% include "p3" %}' * 100),
        template("p3", "<b>x</b>"),
    ])
    found = problems(template("t", '{% include "p1" %}'), store)
    assert found == [("html", None, "with its layouts the html fills in more than 10,000 blocks and includes")]
    # AND so are sources that grow too long
    store.add(template("p3", "<b>x</b>" * 2000))
    found = problems(template("t", '{% include "p2" %}{% include "p2" %}'), store)
    assert found == [("html", None, "with its layouts the html grows past 1,000,000 characters")]


def test_a_template_without_layouts_cannot_extend_or_include() -> None:
    # no store: a template must be self-contained, and nothing is read from anywhere else
    with pytest.raises(TemplateValidationError, match='no template "/etc/passwd"'):
        validate_template(template("t", '{% include "/etc/passwd" %}'))
    with pytest.raises(TemplateValidationError, match='no template "frame"'):
        Renderer().render(version(CHILD), {"code": "1"}, standard=standard())


# --- the sandbox holds across layouts


def test_the_sandbox_refuses_unsafe_access_wherever_it_is_written() -> None:
    store = InMemoryTemplates([
        template("frame", LAYOUT),
        # stored without checks, as if written before they existed
        template("evil", "<p>{{ cycler.__init__.__globals__ }}</p>\n{% block content %}{% endblock %}"),
    ])
    # in the template's own block: its line
    own = problems(template("t", '{% extends "frame" %}\n{% block content %}\n{{ "".__class__.__mro__ }}'
                                 "{% endblock %}"), store)
    assert ("html", 3, 'access to attribute "__class__" is not allowed') in own
    # in a layout: the layout and its line
    inherited = problems(template("t", '{% extends "evil" %}{% block content %}x{% endblock %}'), store)
    assert ("html", None, '"cycler" is not available in templates (in layout "evil", line 1)') in inherited
    # a path is just a name the store does not hold
    escape = problems(template("t", '{% extends "../../../../etc/passwd" %}'), store)
    assert escape == [("html", 1, 'no template "../../../../etc/passwd" (locale en) to extend or include')]
    # Jinja itself is never given a loader: expansion happens before it sees a template
    assert new_environment().loader is None


def test_html_checks_see_where_a_block_lands_in_the_layout() -> None:
    links = '<a href="{% block url %}#top{% endblock %}">go</a><td {% block attrs %}{% endblock %}>x</td>'
    store = InMemoryTemplates([template("links", links)])  # stored without checks
    # a block whose content is harmless alone but lands in an href or inside a tag is refused
    found = problems(template("t", '{% extends "links" %}\n{% block url %}javascript:alert(1){% endblock %}\n'
                                   "{% block attrs %}{{ attrs }}{% endblock %}"), store)
    messages = {message for _, _, message in found}
    assert any(m.startswith("script URL in href") for m in messages), found
    assert any(m.startswith("a placeholder inside an HTML tag") for m in messages), found


# --- through the template store and the API


def test_the_template_store_serves_layouts_and_a_new_version_takes_effect(table: Table, unique: str) -> None:
    # GIVEN a layout and a template extending it, saved in DynamoDB
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    frame, child = f"frame-{unique}", f"child-{unique}"
    store.save(template(frame, LAYOUT))
    store.save(template(child, CHILD.replace('"frame"', f'"{frame}"'), sample_context={"code": "X"}))
    renderer = Renderer(layouts=store.layout)
    first = renderer.render(store.resolve(child, "de"), {"code": "1"}, standard=standard())
    # WHEN the layout is saved again
    store.save(template(frame, LAYOUT.replace("#111111", "#222222")))
    second = renderer.render(store.resolve(child, "de"), {"code": "1"}, standard=standard())
    # THEN the next render uses it; the template itself kept its version and its source
    assert 'style="color: #111111;"' in first.html and 'style="color: #222222;"' in second.html
    assert store.resolve(child, "en").version == 1
    assert store.resolve(child, "en").html.startswith(f'{{% extends "{frame}" %}}')


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def test_a_user_uploads_a_layout_and_a_template_extending_it(client: TestClient, unique: str) -> None:
    frame, child = f"frame-{unique}", f"child-{unique}"
    # GIVEN a layout uploaded like any template
    assert client.put(f"/v1/templates/{frame}", json={"subject": "x", "html": LAYOUT}).status_code == 200
    # WHEN a template extending it is uploaded and previewed
    saved = client.put(f"/v1/templates/{child}",
                       json={"subject": "Hi", "html": CHILD.replace('"frame"', f'"{frame}"')})
    assert saved.status_code == 200, saved.text
    preview = client.post(f"/v1/templates/{child}/preview", json={"context": {"code": "X1"}, "name": "Ann"})
    # THEN the preview is the template inside the layout
    assert preview.status_code == 200, preview.text
    assert '<p class="note" style="color: #999999;">Your code is X1.</p>' in preview.json()["html"]
    assert "Example" not in CHILD and "<!DOCTYPE html>" in preview.json()["html"]


def test_extending_a_missing_layout_is_refused_with_a_422(client: TestClient, unique: str) -> None:
    html = '{% extends "no-such-layout" %}{% block content %}x{% endblock %}'
    resp = client.put(f"/v1/templates/orphan-{unique}", json={"subject": "Hi", "html": html})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"] == [
        {"field": "html", "line": 1, "message": 'no template "no-such-layout" (locale en) to extend or include'}
    ]
    assert client.get(f"/v1/templates/orphan-{unique}").status_code == 404
