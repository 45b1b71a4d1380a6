"""Bounded rendering: output size, time, iterations and nesting, in the renderer, the API process and the worker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import free_port, http_ready, stop_process, wait_until
from jetmail.messaging.templating import (
    Company,
    Recipient,
    Renderer,
    RenderLimits,
    StandardContext,
    TemplateContent,
    TemplateLimitError,
    TemplateValidationError,
    TemplateVersion,
    check_template,
)
from jetmail.services import Services
from stacktools import api_client

STANDARD = StandardContext(now=datetime(2025, 3, 14, tzinfo=UTC), company=Company(name="Ex", address="1 Road"),
                           recipient=Recipient(email="ann@example.com", name="Ann"),
                           unsubscribe_url="https://example.com/u")
NESTED_LOOPS = "{% for i in range(n) %}{% for j in range(4000) %}{% endfor %}{% endfor %}done"
# each iteration sorts 100,000 numbers in C: few iterations, much time; only the clock stops it
SLOW_LOOP = "{% for i in range(n) %}{% set x = range(100000)|list|sort %}{% endfor %}done"

BOMBS = {
    "string repetition": "{{ 'a' * 10**9 }}",
    "list repetition": "{{ ([1] * 10**9)|length }}",
    "nested loops": NESTED_LOOPS.replace("range(n)", "range(100000)"),
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "center filter": "{{ 'x'|center(10**9) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "percent width": "{{ '%999999999s' % 'a' }}",
    "format filter": "{{ '%*s'|format(999999999, 'a') }}",
    "replace": "{{ ('a' * 1000000)|replace('', 'bbbbbb') }}",
    "join": "{{ range(1000)|join('x' * 1000000) }}",
    "indent": "{{ ('a\\n' * 500000)|indent(1000) }}",
    "doubling with ~": ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s|length }}"),
    "doubling with +": ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}{{ ns.s|length }}"),
    "doubling in a set block": ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s %}{{ ns.s }}"
                                "{{ ns.s }}{% endset %}{% endfor %}{{ ns.s|length }}"),
    "doubling macro": ("{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='a') %}"
                       "{% for i in range(40) %}{% set ns.s = d(ns.s) %}{% endfor %}{{ ns.s|length }}"),
    "macro fan-out": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "macro recursion": "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
    "huge power": "{{ (10 ** 100000) % 7 }}",
    "squaring": "{% set ns = namespace(x=10) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "output of a loop": "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "slow loop": SLOW_LOOP.replace("range(n)", "range(100000)"),
    "batch filler": "{{ (range(2)|batch(10**9, 'x')|list)|length }}",
    "sum of lists": "{{ range(100000)|map('string')|map('list')|sum(start=[]) }}",
}


def version(html: str, **fields: Any) -> TemplateVersion:
    return TemplateVersion(**{"name": "bomb", "locale": "en", "version": 1, "subject": "Hi", "html": html, **fields})


@pytest.mark.parametrize("source", list(BOMBS.values()), ids=list(BOMBS))
def test_a_render_over_a_limit_fails_fast_with_a_clear_reason(source: str) -> None:
    # GIVEN a renderer with a one-second budget
    renderer = Renderer(limits=RenderLimits(timeout_s=1.0))
    started = time.monotonic()
    # WHEN a template that would take gigabytes or minutes renders
    with pytest.raises(TemplateLimitError) as caught:
        renderer.render(version(f"<p>{source}</p>"), {}, standard=STANDARD)
    # THEN it fails within the budget (plus one slow step), naming the part
    assert time.monotonic() - started < 3.0
    assert caught.value.field == "html"
    assert any(word in caught.value.reason for word in ("allowed", "longer than", "iterations", "nested", "bits",
                                                        "sum adds", "slice"))


def test_ordinary_templates_render_within_the_limits() -> None:
    html = """<p>{% for item in items %}{{ loop.index }}. {{ item.name|title }} {{ '%.2f'|format(item.price) }}
    {% endfor %}{{ 'ab' * 3 }} {{ ('x' ~ 1) }} {{ '{:>5}'.format(7) }} {{ items|map(attribute='price')|sum }}
    {{ 'a,b'.split(',')|join(' / ') }} {{ 'hi'|center(6) }}</p>"""
    items = [{"name": f"item {i}", "price": i} for i in range(500)]
    out = Renderer().render(version(html), {"items": items}, standard=STANDARD)
    assert "500. Item 499 499.00" in out.html and "ababab" in out.html and "a / b" in out.html


def test_output_size_is_a_setting(settings: Any) -> None:
    small = Renderer(limits=RenderLimits(max_output=1000))
    with pytest.raises(TemplateLimitError, match="1,000"):
        small.render(version("{% for i in range(100) %}<p>{{ i }} and some text</p>{% endfor %}"), {},
                     standard=STANDARD)
    assert settings.render_limits.max_output == settings.render_max_output_chars == 2_000_000


def test_deeply_nested_blocks_are_refused_on_save() -> None:
    html = "{% if x %}" * 40 + "deep" + "{% endif %}" * 40
    with pytest.raises(TemplateValidationError) as caught:
        check_template(TemplateContent(name="deep", locale="en", subject="Hi", html=html))
    assert "nested 40 deep; at most 32 allowed" in str(caught.value)


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def save(client: TestClient, name: str, html: str, sample: dict[str, Any] | None = None) -> httpx.Response:
    return client.post("/v1/templates", json={"name": name, "locale": "en", "subject": "Hi", "html": html,
                                              "sample_context": sample or {}})


def test_saving_test_renders_the_sample_context_under_the_limits(client: TestClient, unique: str) -> None:
    # WHEN templates that blow a limit with their own sample context are saved
    repeated = save(client, f"bomb-{unique}", "<p>{{ 'a' * 10**9 }}</p>")
    looped = save(client, f"loops-{unique}", NESTED_LOOPS, {"n": 100000})
    # THEN both are refused with the part and the limit, and nothing is stored
    assert repeated.status_code == 422, repeated.text
    assert repeated.json()["errors"][0]["field"] == "html"
    assert "exceeds a render limit" in repeated.json()["errors"][0]["message"]
    assert looped.status_code == 422 and "iterations" in looped.text
    assert client.get(f"/v1/templates/bomb-{unique}").status_code == 404
    # AND a name the sample leaves out still gets tried (it renders empty), so a bomb behind it is found
    hidden = save(client, f"hidden-{unique}", "<p>{{ name }}{{ 'a' * 10**9 }}</p>")
    assert hidden.status_code == 422, hidden.text


def test_preview_over_budget_is_a_422(client: TestClient, unique: str) -> None:
    assert save(client, f"loops-{unique}", NESTED_LOOPS, {"n": 1}).status_code == 201
    started = time.monotonic()
    resp = client.post(f"/v1/templates/loops-{unique}/preview", json={"context": {"n": 100000}})
    assert resp.status_code == 422, resp.text
    assert "iterations" in resp.json()["detail"]
    assert time.monotonic() - started < 10


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def api_process(app_env: dict[str, str], services: Services,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The API under uvicorn, as the local stack serves it: its memory is what the test measures."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "jetmail.api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                env=app_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ready(f"http://127.0.0.1:{port}/health"), timeout=60, what="uvicorn", proc=proc, log=log)
    yield f"http://127.0.0.1:{port}", proc.pid
    stop_process(proc.pid)


def test_gigabyte_render_is_refused_and_api_memory_stays_flat(api_process: tuple[str, int], api_token: str,
                                                              unique: str) -> None:
    url, pid = api_process
    headers = {"Authorization": f"Bearer {api_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        # GIVEN a warm API process (a template saved and previewed once) and its resident memory then
        body = {"name": f"rep-{unique}", "locale": "en", "subject": "Hi", "html": "<p>{{ 'a' * n }}</p>",
                "sample_context": {"n": 3}}
        assert http.post("/v1/templates", json=body).status_code == 201
        assert http.post(f"/v1/templates/rep-{unique}/preview", json={"context": {"n": 3}}).status_code == 200
        idle = _rss_kib(pid, "VmRSS")
        # WHEN a gigabyte template is saved, and a saved one is previewed with a gigabyte context
        started = time.monotonic()
        saved = http.post("/v1/templates", json={**body, "name": f"gb-{unique}",
                                                 "html": "<p>{{ 'a' * 10**9 }}</p>"})
        preview = http.post(f"/v1/templates/rep-{unique}/preview", json={"context": {"n": 10**9}})
        elapsed = time.monotonic() - started
        # THEN both are refused within the render budget, /health answers, and the process's peak memory
        # (VmHWM: the high-water mark, so a spike between two samples counts too) stays near idle
        assert saved.status_code == 422 and "exceeds a render limit" in saved.text
        assert preview.status_code == 422 and "allowed" in preview.text
        assert elapsed < 5
        assert http.get("/health").status_code == 200
        peak = _rss_kib(pid, "VmHWM")
        assert peak - idle < 100 * 1024, f"peak {peak} KiB vs idle {idle} KiB"


@pytest.fixture(scope="module")
def sending(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def _message(client: TestClient, message_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/messages/{message_id}").json())


def _at(record: dict[str, Any], status: str) -> str:
    return next(str(h["at"]) for h in record["history"] if h["status"] == status)


def test_worker_fails_an_over_budget_render_without_delaying_a_password_reset(
        sending: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a template whose loop takes seconds of CPU for a large n
    assert save(sending, f"slow-{unique}", SLOW_LOOP, {"n": 1}).status_code == 201
    slow = sending.post("/v1/messages", json={"template": f"slow-{unique}", "to": f"slow-{unique}@example.com",
                                               "context": {"n": 100000}})
    assert slow.status_code == 202, slow.text
    slow_id = slow.json()["id"]
    # WHEN, while the worker renders it, a password reset is sent
    wait_until(lambda: _message(sending, slow_id)["status"] != "queued", timeout=15, what="slow render started")
    to = f"reset-{unique}@example.com"
    reset = sending.post("/v1/messages", json={"template": "password_reset", "to": to,
                                                "context": {"reset_url": "https://example.com/r",
                                                            "expires_in_minutes": 30}})
    assert reset.status_code == 202
    # THEN the slow message fails with the reason, and the reset was sent before that render was given up
    wait_until(lambda: _message(sending, slow_id)["status"] == "failed", timeout=30, what="slow message failed")
    wait_until(lambda: _message(sending, reset.json()["id"])["status"] == "sent", timeout=15, what="reset sent")
    failed = _message(sending, slow_id)
    assert "longer than" in (failed.get("error") or str(failed["history"]))
    assert _at(_message(sending, reset.json()["id"]), "sent") < _at(failed, "failed")
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="reset email")
