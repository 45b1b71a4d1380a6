"""The HTTPS API: FastAPI routers over the core package (Lambda via Mangum, or uvicorn locally)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _import_fastapi() -> None:
    """Import FastAPI with pydantic's ``defer_build`` on while it loads.

    FastAPI defines some fifty pydantic models for the OpenAPI document at import (``fastapi.openapi.models``):
    ~40 ms of every API cold start on a 2-core machine (docs/PERFORMANCE.md), for models used only when
    ``/openapi.json`` is built. Deferred, each builds on its first use, which pydantic does by itself. pydantic
    has no public switch for its default, so this sets its private default for the time of the import only and
    falls back to a plain import when that default is not where it was.
    """
    if "fastapi" in sys.modules:
        return
    try:
        from pydantic._internal._config import config_defaults
    except ImportError:  # pragma: no cover - another pydantic layout
        config_defaults = {}
    if config_defaults.get("defer_build") is not False:  # pragma: no cover - not the layout this was measured on
        import fastapi
        return
    config_defaults["defer_build"] = True
    try:
        import fastapi
        import fastapi.applications  # noqa: F401
    finally:
        config_defaults["defer_build"] = False


def _skip_pydantic_v1_checks() -> None:
    """Let FastAPI skip loading ``pydantic.v1`` while it builds routes and encodes answers.

    For each parameter of a route it builds, and each value it encodes, FastAPI asks whether it is a pydantic v1
    model, and to ask it imports ``pydantic.v1`` (~60 ms of an API cold start, docs/PERFORMANCE.md). Nothing can
    be a v1 model before ``pydantic.v1`` is loaded, and jetmail defines none; so the check answers False until
    then and is FastAPI's own afterwards. A FastAPI without these private helpers is left as it is.
    """
    names = ("is_pydantic_v1_model_class", "is_pydantic_v1_model_instance")
    try:
        from fastapi import _compat, encoders
        from fastapi._compat import shared
    except ImportError:  # pragma: no cover - another FastAPI layout
        return
    for name in names:
        original = getattr(shared, name, None)
        if not callable(original):  # pragma: no cover - another FastAPI layout
            continue
        guarded = _unless_v1_unloaded(original)
        # the helper is also imported by name into these modules
        for module in (shared, _compat, encoders):
            if getattr(module, name, None) is original:
                setattr(module, name, guarded)


def _unless_v1_unloaded(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def guarded(value: Any) -> bool:
        return "pydantic.v1" in sys.modules and check(value)

    return guarded


_import_fastapi()
_skip_pydantic_v1_checks()
