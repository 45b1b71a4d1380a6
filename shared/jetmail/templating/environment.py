"""The one Jinja configuration used to parse, check and render templates."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

#: Globals left available to templates; lipsum, cycler and joiner are dropped because
#: they are the usual first hop of sandbox-escape payloads and no email needs them.
SAFE_GLOBALS = ("range", "dict", "namespace")


def _autoescape(template_name: str | None) -> bool:
    return template_name is not None and template_name.endswith(".html")


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Contexts are JSON objects, so ``order.items`` means the key, not ``dict.items``.

    Jinja looks attributes up before keys; for plain dicts that turns natural field names
    (``items``, ``values``, ``keys``, ``copy``) into methods. A key present in the dict wins.
    The immutable sandbox also stops a template from mutating the caller's context (a
    campaign reuses one context for every recipient).
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def new_environment() -> TemplateSandbox:
    """A sandbox where HTML sources autoescape and a missing variable is an error."""
    env = TemplateSandbox(
        autoescape=_autoescape,
        undefined=StrictUndefined,
        auto_reload=False,
        cache_size=0,
    )
    env.globals = {"range": env.globals["range"], "dict": dict, "namespace": Namespace}
    return env
