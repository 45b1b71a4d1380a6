"""Template management: versioned, per locale, validated on save."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.compliance.apikeys import ApiKey
from jetmail.messaging.templating import TemplateContent, TemplateVersion
from jetmail.messaging.templating.model import Category
from jetmail.services import Services

router = APIRouter(prefix="/v1/templates", tags=["templates"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]
LocaleQuery = Annotated[str | None, Query(max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


class TemplateUpdate(BaseModel):
    """Body of ``PUT /v1/templates/{name}``: the new content for one locale (a new version)."""

    model_config = ConfigDict(extra="forbid")
    locale: str = Field(default="en", max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    subject: str = Field(min_length=1, max_length=998)
    html: str = Field(min_length=1, max_length=200_000)
    text: str | None = Field(default=None, max_length=200_000)
    category: Category = "transactional"


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    locale: str | None = Field(default=None, max_length=35)
    version: int | None = Field(default=None, ge=1)
    context: dict[str, Any] = Field(default_factory=dict)
    to: str = Field(default="preview@example.com", max_length=320)
    name: str | None = Field(default="Preview Recipient", max_length=200)


class PreviewResponse(BaseModel):
    name: str
    locale: str
    version: int
    subject: str
    html: str
    text: str


@router.post("", status_code=201, response_model=TemplateVersion)
def create_template(body: TemplateContent, key: Admin, svc: Svc) -> TemplateVersion:
    """Save a template for one locale; saving an existing (name, locale) creates a new version."""
    return svc.templates.save(body)


@router.get("", response_model=Page[TemplateVersion])
def list_templates(key: Admin, svc: Svc) -> Page[TemplateVersion]:
    """Latest version of every (template, locale), all in one page."""
    return Page(data=svc.templates.list(), next_cursor=None)


@router.get("/{name}", response_model=TemplateVersion, responses={404: {"description": "unknown template"}})
def get_template(name: str, key: Admin, svc: Svc, locale: LocaleQuery = None,
                 version: Annotated[int | None, Query(ge=1)] = None) -> TemplateVersion:
    """One version (latest by default) of a template; without ``locale`` the fallback chain applies."""
    if locale is None and version is None:
        return svc.templates.resolve(name, None)
    return svc.templates.get(name, locale=locale or svc.settings.default_locale, version=version)


@router.get("/{name}/versions", response_model=Page[TemplateVersion],
            responses={404: {"description": "unknown template"}})
def template_versions(name: str, key: Admin, svc: Svc, locale: LocaleQuery = None) -> Page[TemplateVersion]:
    """Every version of the template in one locale, oldest first, all in one page."""
    found = svc.templates.versions(name, locale=locale or svc.settings.default_locale)
    if not found:
        from jetmail.messaging.templates import TemplateNotFound

        raise TemplateNotFound(name, locale)
    return Page(data=found, next_cursor=None)


@router.put("/{name}", response_model=TemplateVersion)
def update_template(name: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")], body: TemplateUpdate,
                    key: Admin, svc: Svc) -> TemplateVersion:
    """Store new content as the next version."""
    return svc.templates.save(TemplateContent(name=name, **body.model_dump()))


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_template(name: str, key: Admin, svc: Svc, locale: LocaleQuery = None) -> Response:
    """Delete every version of a template (or of one locale)."""
    svc.templates.delete(name, locale=locale)
    return Response(status_code=204)


@router.post("/{name}/preview", response_model=PreviewResponse)
def preview_template(name: str, body: PreviewRequest, key: Admin, svc: Svc) -> PreviewResponse:
    """Render with sample context, exactly as a recipient would receive it (links not tracked)."""
    version = (svc.templates.resolve(name, body.locale) if body.version is None
               else svc.templates.get(name, locale=body.locale or svc.settings.default_locale, version=body.version))
    rendered = svc.composer.preview(version, body.context, to=body.to, name=body.name)
    return PreviewResponse(name=version.name, locale=version.locale, version=version.version,
                           subject=rendered.subject, html=rendered.html, text=rendered.text)
