"""Bounds on one render: output size, time, loop iterations and nesting.

A template is code: an admin saves it, but any ``send`` key makes it run, once per recipient of a
campaign. Without bounds ``{{ 'a' * 10**9 }}`` takes a gigabyte and nested loops take the worker
for minutes. Python cannot stop a thread from outside, so the bounds are enforced from inside the
sandbox (:mod:`jetmail.messaging.templating.environment`): every place where a template can build a large
value (operators, ``~``, calls, filters, captured blocks) checks the size *before* building it where
the size can be known, and after otherwise; every loop iteration, call, filter and output piece
ticks a per-render budget that also checks the clock. A template therefore fails with
:class:`RenderLimitExceeded` instead of taking memory or time that other renders need.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from jinja2 import nodes

#: Integers beyond this many bits are refused: ``10**10**8`` would keep a CPU busy for minutes.
MAX_INT_BITS = 65_536
#: Filters that make this many pieces from one value (``slice``) are refused beyond it.
MAX_PIECES = 100_000
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
#: Statements whose nesting counts against ``max_depth`` (expressions are bounded by the parser).
_NESTING = (nodes.For, nodes.If, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.With,
            nodes.AssignBlock, nodes.Scope, nodes.ScopedEvalContextModifier)


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What one render may use; :class:`jetmail.config.Settings` holds the configured values."""

    #: characters per part (subject, HTML, text), and per value built on the way
    max_output: int = 2_000_000
    #: seconds for all parts of one render
    timeout_s: float = 2.0
    #: loop iterations, calls and filters per render
    max_iterations: int = 1_000_000
    #: nested blocks in the source, and nested macro or function calls while rendering
    max_depth: int = 32


class RenderLimitExceeded(Exception):
    """Raised inside a template when it would exceed a limit; the renderer names field and line."""


class RenderTimedOut(RenderLimitExceeded):
    """The render ran past its time budget: the one limit a faster or less busy machine might meet."""


@dataclass(slots=True)
class _Budget:
    limits: RenderLimits
    deadline: float
    iterations: int = 0
    depth: int = 0
    started: float = field(default_factory=time.monotonic)

    def spend(self) -> None:
        """One unit of work: counted, and the clock checked."""
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise RenderLimitExceeded(f"more than {self.limits.max_iterations:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise RenderTimedOut(f"rendering took longer than {self.limits.timeout_s:g} s")


_active: ContextVar[_Budget | None] = ContextVar("jetmail_render_budget", default=None)


@contextmanager
def render_budget(limits: RenderLimits) -> Iterator[None]:
    """Time and iterations of the renders inside count against one budget (one message's parts)."""
    token = _active.set(_Budget(limits, time.monotonic() + limits.timeout_s))
    try:
        yield
    finally:
        _active.reset(token)


def tick() -> None:
    """One unit of work (a loop iteration, a call, a filter, an output piece); checks the clock too."""
    budget = _active.get()
    if budget is not None:
        budget.spend()


@contextmanager
def call_depth() -> Iterator[None]:
    """Bounds recursion of macros (``{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}``)."""
    budget = _active.get()
    if budget is None:
        yield
        return
    budget.depth += 1
    try:
        if budget.depth > budget.limits.max_depth:
            raise RenderLimitExceeded(f"calls nested deeper than {budget.limits.max_depth}")
        yield
    finally:
        budget.depth -= 1


def counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps the iterable of every ``{% for %}``: each iteration ticks the budget."""
    for item in iterable:
        tick()
        yield item


def size_of(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def _refuse_size(size: int, limits: RenderLimits, what: str) -> None:
    if size > limits.max_output:
        raise RenderLimitExceeded(f"{what} would be {size:,} long, more than the {limits.max_output:,} allowed")


def check_value(value: Any, limits: RenderLimits, what: str = "a value") -> Any:
    """``value`` unchanged if it is within the limits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise RenderLimitExceeded(f"{what} is a number with more than {MAX_INT_BITS:,} bits")
    _refuse_size(size_of(value), limits, what)
    return value


def bounded_concat(limits: RenderLimits) -> Callable[[Iterable[str]], str]:
    """``environment.concat``: joins captured output (macros, ``{% set %}`` blocks, filter blocks)."""

    def concat(pieces: Iterable[str]) -> str:
        if not isinstance(pieces, list):
            pieces = list(pieces)
        _refuse_size(sum(len(p) for p in pieces), limits, "captured output")
        return "".join(pieces)

    return concat


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any, limits: RenderLimits) -> None:
    """Before ``left <operator> right`` runs: refuse results that would be too large to build."""
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderLimitExceeded(f"a product with more than {MAX_INT_BITS:,} bits")
        elif _is_int(right) and isinstance(left, _SIZED):
            _refuse_size(size_of(left) * right, limits, "a repeated value")
        elif _is_int(left) and isinstance(right, _SIZED):
            _refuse_size(size_of(right) * left, limits, "a repeated value")
    elif operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if right * left.bit_length() > MAX_INT_BITS:
                raise RenderLimitExceeded(f"a power with more than {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            _refuse_size(size_of(left) + size_of(right), limits, "a sum of values")
    elif operator == "%" and isinstance(left, str | bytes):
        values = right if isinstance(right, tuple) else (right,)
        _refuse_size(_percent_estimate(left, values), limits, "a formatted string")


def _widest(values: Iterable[Any], widths: Iterable[int]) -> int:
    sizes = [*widths, 0]
    for value in values:
        sizes.append(len(value) if isinstance(value, str | bytes) else len(str(value)))
    return max(sizes)


def _percent_estimate(fmt: str | bytes, values: tuple[Any, ...]) -> int:
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    widths: list[int] = []
    placeholders = 0
    dynamic = False
    for m in _PERCENT_SPEC.finditer(text):
        placeholders += 1
        for group in m.groups():
            if group == "*":
                dynamic = True
            elif group:
                widths.append(int(group))
    flat: list[Any] = []
    for value in values:
        flat.extend(value.values() if isinstance(value, Mapping) else (value,))
    if dynamic:
        widths.extend(abs(v) for v in flat if _is_int(v))
    return len(text) + placeholders * _widest(flat, widths)


def _format_estimate(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    widths: list[int] = []
    placeholders = 0
    dynamic = False
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return len(fmt)  # str.format refuses it anyway
    for _, field_name, spec, _ in parsed:
        if field_name is None:
            continue
        placeholders += 1
        if spec:
            dynamic = dynamic or "{" in spec
            widths.extend(int(d) for d in _DIGITS.findall(spec))
    values = [*args, *kwargs.values()]
    if dynamic:
        widths.extend(abs(v) for v in values if _is_int(v))
    return len(fmt) + placeholders * _widest(values, widths)


def _replace_estimate(text: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)
    hits = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if _is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _join_estimate(separator: str | bytes, items: Any) -> int:
    if not isinstance(items, _SIZED):
        return 0
    return len(separator) * len(items) + sum(size_of(i) for i in items)


def check_method_call(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], limits: RenderLimits) -> None:
    """Before a string method runs: the ones whose result can be far larger than their input."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(target, "__self__", None)
    if not isinstance(owner, str | bytes):
        return
    name = getattr(target, "__name__", "")
    what = f"the result of {name}()"
    if name in ("ljust", "rjust", "center", "zfill") and args and _is_int(args[0]):
        _refuse_size(args[0], limits, what)
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(tab):
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            _refuse_size(len(owner) + tabs * tab, limits, what)
    elif name == "replace" and len(args) >= 2:
        _refuse_size(_replace_estimate(owner, *args[:3]), limits, what)
    elif name == "join" and args:
        _refuse_size(_join_estimate(owner, args[0]), limits, what)
    elif name == "format" and isinstance(owner, str):
        _refuse_size(_format_estimate(owner, args, kwargs), limits, what)
    elif name == "format_map" and isinstance(owner, str) and args and isinstance(args[0], Mapping):
        _refuse_size(_format_estimate(owner, (), args[0]), limits, what)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((size_of(v) for v in args[0].values()), default=1)
        _refuse_size(len(owner) * max(longest, 1), limits, what)


def _check_filter_args(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                       limits: RenderLimits) -> None:
    what = f"the result of the {name} filter"

    def arg(index: int, key: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    text = value if isinstance(value, str) else str(value) if name in ("indent", "wordwrap", "center") else ""
    if name == "center" and _is_int(arg(0, "width")):
        _refuse_size(arg(0, "width"), limits, what)
    elif name == "indent":
        width = arg(0, "width", 4)
        pad = width if _is_int(width) else size_of(width)
        _refuse_size(len(text) + (text.count("\n") + 1) * pad, limits, what)
    elif name == "replace" and isinstance(value, str):
        _refuse_size(_replace_estimate(value, arg(0, "old"), arg(1, "new"), arg(2, "count", -1)), limits, what)
    elif name == "join":
        _refuse_size(_join_estimate(arg(0, "d", ""), value), limits, what)
    elif name == "wordwrap":
        width = arg(0, "width", 79)
        lines = len(text) // max(width if _is_int(width) else 1, 1) + text.count("\n") + 1
        _refuse_size(len(text) + lines * max(size_of(arg(2, "wrapstring")), 1), limits, what)
    elif name == "format" and isinstance(value, str):
        _refuse_size(_percent_estimate(value, tuple(args) or (dict(kwargs),)), limits, what)
    elif name == "batch" and _is_int(arg(0, "linecount")):
        _refuse_size(arg(0, "linecount"), limits, what)
    elif name == "slice" and _is_int(arg(0, "slices")) and arg(0, "slices") > MAX_PIECES:
        raise RenderLimitExceeded(f"slice into more than {MAX_PIECES:,} pieces")
    elif name == "sum" and not isinstance(arg(1, "start", 0), int | float):
        raise RenderLimitExceeded("sum adds numbers only")
    elif name == "tojson" and _is_int(arg(0, "indent")) and arg(0, "indent") > 16:
        raise RenderLimitExceeded("tojson indents by 16 at most")
    elif name == "urlize":
        _refuse_size(len(text) * (1 + size_of(arg(3, "target")) + size_of(arg(4, "rel"))), limits, what)


def bounded_filter(name: str, func: Callable[..., Any], limits: RenderLimits) -> Callable[..., Any]:
    """The filter with its result bounded; ``wraps`` keeps Jinja's pass_context/environment marker."""
    offset = 1 if hasattr(func, "jinja_pass_arg") else 0

    @wraps(func)
    def filtered(*args: Any, **kwargs: Any) -> Any:
        tick()
        if len(args) > offset:
            value, rest = args[offset], args[offset + 1 :]
            if name == "join" and not isinstance(value, _SIZED):
                value = list(counted(value))  # a lazy map() or select(): count what it yields
                args = (*args[:offset], value, *rest)
            _check_filter_args(name, value, rest, kwargs, limits)
        return check_value(func(*args, **kwargs), limits, f"the result of the {name} filter")

    return filtered


def nesting_depth(tree: nodes.Node) -> tuple[int, int | None]:
    """The deepest nesting of blocks in ``tree`` and the line where it happens."""
    deepest, line = 0, None
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, _NESTING):
            depth += 1
            if depth > deepest:
                deepest, line = depth, node.lineno
        stack.extend((child, depth) for child in node.iter_child_nodes())
    return deepest, line


def bounded_output(pieces: Iterable[str], limits: RenderLimits) -> str:
    """Joins a template's output as it is produced, refusing it as soon as it gets too long."""
    out: list[str] = []
    size = 0
    budget = _active.get()  # each piece ticks it, as tick() would, without looking it up per piece
    for piece in pieces:
        size += len(piece)
        if size > limits.max_output:
            raise RenderLimitExceeded(f"output is longer than {limits.max_output:,} characters")
        if budget is not None:
            budget.spend()
        out.append(piece)
    return "".join(out)
