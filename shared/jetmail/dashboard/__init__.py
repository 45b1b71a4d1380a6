"""The server-rendered operator dashboard (``/dashboard``)."""

from __future__ import annotations

from jetmail.dashboard.router import router

__all__ = ["router"]
