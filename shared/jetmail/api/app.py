"""FastAPI application factory: ``create_app()`` for uvicorn, ``Mangum(create_app())`` in Lambda."""

from __future__ import annotations

from fastapi import FastAPI

from jetmail.api import (
    campaigns,
    contacts,
    errors,
    messages,
    sending,
    sequences,
    sns,
    suppressions,
    templates,
    tracking,
)
from jetmail.api.limits import BodySizeLimit
from jetmail.config import Settings, get_settings
from jetmail.services import Services


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="jetmail",
        version="0.1.0",
        description="Transactional and campaign email over NATS JetStream. Every /v1 route needs "
                    "`Authorization: Bearer <api key>` (create one with `jetmail keys create --name N`).",
    )
    app.state.services = services or Services(settings)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: answers without touching any dependency."""
        return {"status": "ok"}

    app.include_router(messages.router)
    app.include_router(sns.router)
    app.include_router(templates.router)
    app.include_router(sequences.router)
    app.include_router(campaigns.router)
    app.include_router(tracking.router)
    app.include_router(suppressions.router)
    app.include_router(sending.router)
    app.include_router(contacts.router)
    return app
