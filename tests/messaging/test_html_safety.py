"""The rendered HTML is checked as a mail client parses it: known validator bypasses and filter-evasion payloads."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.messaging.templating import TemplateContent, TemplateValidationError, check_template
from jetmail.services import Services
from stacktools import api_client

BYPASSES = {
    "svg style": "<p><svg><style><img src=x onerror=alert(1)></style></svg></p>",
    "noscript attribute": '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "split scheme": "<a href=\"{{ 'javas' }}cript:alert(1)\">x</a>",
}

# Written from the descriptions in public XSS filter-evasion lists.
PAYLOADS = {
    "entity-encoded scheme": '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    "hex entities without semicolons": '<a href="&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A;a()">x</a>',
    "named colon entity": '<a href="javascript&colon;alert(1)">x</a>',
    "embedded tab": '<a href="jav\tascript:alert(1)">x</a>',
    "embedded newline entity": '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    "leading spaces and control": '<a href=" &#14;  javascript:alert(1)">x</a>',
    "mixed case": '<a href="JaVaScRiPt:alert(1)">x</a>',
    "vbscript": '<a href="vbscript:msgbox(1)">x</a>',
    "data html": '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "image src scheme": '<img src="javascript:alert(1)">',
    "form action": '<form action="javascript:alert(1)"><input type=submit></form>',
    "formaction": '<button formaction="javascript:alert(1)">x</button>',
    "svg xlink href": '<svg><a xlink:href="javascript:alert(1)"><text y="20">x</text></a></svg>',
    "svg href": '<svg><a href="javascript:alert(1)"><text y="20">x</text></a></svg>',
    "math href": '<math><mi href="javascript:alert(1)">x</mi></math>',
    "svg animate": '<svg><a><animate attributeName="href" values="javascript:alert(1)"/><text>x</text></a></svg>',
    "svg set": '<svg><set attributeName="onmouseover" to="alert(1)"/></svg>',
    "svg onload": "<svg onload=alert(1)>",
    "img onerror unquoted": "<img src=x onerror=alert(1)>",
    "body onload": "<body onload=alert(1)>",
    "slash separator": '<img/src="x"/onerror=alert(1)>',
    "uppercase handler": '<IMG SRC=x ONERROR="alert(1)">',
    "handler after junk": '<img """><script>alert(1)</script>">',
    "script in title": "<title><script>alert(1)</script></title><script>alert(2)</script>",
    "script in math": "<math><style><img src=x onerror=alert(1)></style></math>",
    "iframe srcdoc": '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>',
    "object data": '<object data="javascript:alert(1)"></object>',
    "embed": '<embed src="https://example.com/x.swf">',
    "base href": '<base href="javascript:alert(1)//">',
    "meta refresh": '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    "style expression": '<div style="width: expression(alert(1))">x</div>',
    "style url scheme": '<div style="background:url(&#106;avascript:alert(1))">x</div>',
    "style block": "<style>@import 'https://evil.example/x.css'; body { background: url(javascript:alert(1)) }</style>",
    "moz binding": '<div style="-moz-binding: url(https://evil.example/xss.xml#x)">x</div>',
    "table background": '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
    "srcset": '<img srcset="https://example.com/a.png 1x, javascript:alert(1) 2x">',
    "outlook conditional comment": "<!--[if mso]><img src=x onerror=alert(1)><![endif]-->",
    "comment-closing in attribute": '<!-- <img title="--><img src=x onerror=alert(1)>"> -->',
    "foreignObject": '<svg><foreignObject><iframe src="https://evil.example"></iframe></foreignObject></svg>',
    "noembed": '<noembed><img title="</noembed><img src=x onerror=alert(1)>"></noembed>',
    "noframes": '<noframes><img title="</noframes><img src=x onerror=alert(1)>"></noframes>',
    "unknown scheme": '<a href="livescript:alert(1)">x</a>',
}

SAFE = """<!DOCTYPE html><html><head><style>@media (max-width: 600px) { p { margin: 0 } }</style></head>
<body><p><a href="https://example.com/?q=javascript:x">web</a> <a href="mailto:help@example.com">mail</a>
<a href="tel:+4930123">call</a> <a href="#top">top</a> <img src="cid:logo" alt="">
<a href="/relative/path">relative</a></p><!--[if mso]><table><tr><td>Outlook</td></tr></table><![endif]-->
<svg width="10" height="10"><circle cx="5" cy="5" r="4"/></svg>
<p>Mention javascript: in text, or onerror=, freely.</p></body></html>"""


def content(html: str, **fields: Any) -> TemplateContent:
    return TemplateContent(**{"name": "probe", "locale": "en", "subject": "Hi", "html": html, **fields})


@pytest.mark.parametrize("html", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_filter_evasion_payloads_are_refused(html: str) -> None:
    with pytest.raises(TemplateValidationError):
        check_template(content(html))


def test_safe_mail_markup_passes() -> None:
    check_template(content(SAFE))


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


@pytest.mark.parametrize("html", list(BYPASSES.values()), ids=list(BYPASSES))
def test_known_bypasses_are_refused_on_save(client: TestClient, unique: str, html: str) -> None:
    resp = client.post("/v1/templates", json={"name": f"bypass-{unique}", "locale": "en", "subject": "Hi",
                                               "html": html})
    assert resp.status_code == 422, resp.text
    assert client.get(f"/v1/templates/bypass-{unique}").status_code == 404


def test_a_script_url_from_the_context_is_refused_by_preview_and_send(client: TestClient, unique: str) -> None:
    # GIVEN a template whose link comes from the context, saved with a harmless sample
    name = f"link-{unique}"
    saved = client.post("/v1/templates", json={"name": name, "locale": "en", "subject": "Hi",
                                                "html": '<p><a href="{{ url }}">Open</a></p>',
                                                "sample_context": {"url": "https://example.com/"}})
    assert saved.status_code == 201, saved.text
    evil = {"url": " JavaScript:alert(1)"}
    # WHEN it is previewed or sent with a script URL
    preview = client.post(f"/v1/templates/{name}/preview", json={"context": evil})
    sent = client.post("/v1/messages", json={"template": name, "to": f"link-{unique}@example.com", "context": evil})
    # THEN both are a 422 naming the attribute, and no message was recorded
    assert preview.status_code == 422 and 'href=" JavaScript:alert(1)"' in preview.json()["detail"]
    assert sent.status_code == 422 and "only http, https, mailto, tel and cid" in sent.json()["detail"]
    assert client.get("/v1/messages", params={"to": f"link-{unique}@example.com"}).json()["data"] == []
    # AND a mailto link from the context renders as usual
    ok = client.post(f"/v1/templates/{name}/preview", json={"context": {"url": "mailto:ann@example.com"}})
    assert ok.status_code == 200 and 'href="mailto:ann@example.com"' in ok.json()["html"]
