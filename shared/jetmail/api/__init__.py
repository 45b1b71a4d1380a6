"""The HTTPS API: FastAPI routers over the core package (Lambda via Mangum, or uvicorn locally)."""

from __future__ import annotations

import sys


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


_import_fastapi()
