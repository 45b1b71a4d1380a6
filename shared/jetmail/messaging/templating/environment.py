"""The one Jinja configuration used to parse, check and render templates."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from jetmail.messaging.templating.limits import (
    RenderLimits,
    bounded_concat,
    bounded_filter,
    call_depth,
    check_binop,
    check_method_call,
    check_value,
    counted,
    tick,
)

#: Globals left available to templates; lipsum, cycler and joiner are dropped because
#: they are the usual first hop of sandbox-escape payloads and no email needs them.
SAFE_GLOBALS = ("range", "dict", "namespace")


def _autoescape(template_name: str | None) -> bool:
    return template_name is not None and template_name.endswith(".html")


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` so that the joined value is checked against the output limit."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Contexts are JSON objects, so ``order.items`` means the key, not ``dict.items``.

    Jinja looks attributes up before keys; for plain dicts that turns natural field names
    (``items``, ``values``, ``keys``, ``copy``) into methods. A key present in the dict wins.
    The immutable sandbox also stops a template from mutating the caller's context (a
    campaign reuses one context for every recipient).

    It also enforces :class:`~jetmail.messaging.templating.limits.RenderLimits`: operators that can build
    large values are intercepted (which also stops Jinja from folding them at compile time), every
    call and filter is checked and ticks the render budget, and every ``{% for %}`` iterates
    through :func:`~jetmail.messaging.templating.limits.counted`.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, *, limits: RenderLimits, **options: Any) -> None:
        super().__init__(**options)
        self.limits = limits
        self.concat = bounded_concat(limits)  # type: ignore[method-assign]
        self.filters = {name: bounded_filter(name, func, limits) for name, func in self.filters.items()}
        #: reached from compiled templates as ``environment.counted`` (see ``_parse``)
        self.counted = counted

    def checked(self, value: Any) -> Any:
        """Reached from compiled templates for every ``~`` (see :class:`_BoundedCodeGenerator`)."""
        return check_value(value, self.limits, "a joined value")

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("counted"), [loop.iter], [], None, None, lineno=loop.iter.lineno
            )
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right, self.limits)
        return check_value(super().call_binop(context, operator, left, right), self.limits)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        check_method_call(__obj, args, kwargs, __self.limits)
        with call_depth():
            result = super().call(__context, __obj, *args, **kwargs)
        return check_value(result, __self.limits, "the result of a call")

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def new_environment(limits: RenderLimits | None = None) -> TemplateSandbox:
    """A sandbox where HTML sources autoescape, a missing variable is an error and renders are bounded."""
    env = TemplateSandbox(
        limits=limits or RenderLimits(),
        autoescape=_autoescape,
        undefined=StrictUndefined,
        auto_reload=False,
        cache_size=0,
    )
    env.globals = {"range": env.globals["range"], "dict": dict, "namespace": Namespace}
    return env
