"""Campaigns: create, inspect, send, schedule, pause, resume, cancel, and pick an A/B winner."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.campaigns.model import (
    CampaignCreate,
    CampaignFailure,
    CampaignPublic,
    CampaignUpdate,
    ScheduleRequest,
    WinnerPick,
    build_models,
)
from jetmail.compliance.apikeys import ApiKey
from jetmail.services import Services

build_models()  # declared below; they build on first use elsewhere
router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "the campaign's state does not allow this"},
                                             404: {"description": "not found"}}


@router.post("", status_code=201, response_model=CampaignPublic, response_model_by_alias=True)
def create_campaign(body: CampaignCreate, key: Admin, svc: Svc) -> CampaignPublic:
    """Create a draft: template, audience (lists and segments with priorities), exclusions, optional A/B test."""
    return svc.campaigns.create(body)


@router.get("", response_model=Page[CampaignPublic], response_model_by_alias=True)
def list_campaigns(key: Admin, svc: Svc) -> Page[CampaignPublic]:
    """Newest first, with state and progress; all of them in one page."""
    return Page(data=svc.campaigns.list(), next_cursor=None)


@router.get("/{campaign_id}", response_model=CampaignPublic, response_model_by_alias=True, responses=CONFLICT)
def get_campaign(campaign_id: str, key: Admin, svc: Svc) -> CampaignPublic:
    """State and progress (total, queued, sent, failed, skipped), the A/B test's standing, and when a
    scheduled or recurring campaign starts next (``next_run_at``)."""
    return svc.campaigns.get(campaign_id)


@router.patch("/{campaign_id}", response_model=CampaignPublic, response_model_by_alias=True,
              responses={404: {"description": "not found"}})
def update_campaign(campaign_id: str, body: CampaignUpdate, key: Admin, svc: Svc) -> CampaignPublic:
    """Change what may change in any state: ``archive`` (show it, once sent, in the public archive of its
    public lists) and ``archive_context`` (the values the archived copy renders with)."""
    return svc.campaigns.update(campaign_id, body)


@router.get("/{campaign_id}/failures", response_model=Page[CampaignFailure],
            responses={404: {"description": "not found"}, 422: {"description": "invalid limit or cursor"}})
def campaign_failures(campaign_id: str, key: Admin, svc: Svc,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      cursor: Annotated[str | None, Query(max_length=1024)] = None) -> Page[CampaignFailure]:
    """Recipients the campaign failed for good (a provider's 5xx, gave up after the last retry, cannot
    render), with the reason, in batch order; follow ``next_cursor`` until it is null."""
    page = svc.campaigns.failures(campaign_id, limit=limit, cursor=cursor)
    return Page(data=page.failures, next_cursor=page.next_cursor)


@router.post("/{campaign_id}/send", response_model=CampaignPublic, response_model_by_alias=True, responses=CONFLICT)
def send_campaign(campaign_id: str, key: Admin, svc: Svc) -> CampaignPublic:
    """Start now."""
    return svc.campaigns.send(campaign_id)


@router.post("/{campaign_id}/schedule", response_model=CampaignPublic, response_model_by_alias=True,
             responses=CONFLICT)
def schedule_campaign(campaign_id: str, body: ScheduleRequest, key: Admin, svc: Svc) -> CampaignPublic:
    """Start at a time (``at``, local to ``timezone`` when it has no offset) or on a 5-field ``cron``.
    Scheduling again moves it: the earlier time (or cron and time zone) is replaced, not added to."""
    return svc.campaigns.schedule(campaign_id, body)


@router.post("/{campaign_id}/pause", response_model=CampaignPublic, response_model_by_alias=True, responses=CONFLICT)
def pause_campaign(campaign_id: str, key: Admin, svc: Svc) -> CampaignPublic:
    """Stop sending within a second (queued batches are parked); a recurring campaign stops firing."""
    return svc.campaigns.pause(campaign_id)


@router.post("/{campaign_id}/resume", response_model=CampaignPublic, response_model_by_alias=True,
             responses=CONFLICT)
def resume_campaign(campaign_id: str, key: Admin, svc: Svc) -> CampaignPublic:
    """Continue where it stopped (nobody is mailed twice); a recurring campaign fires on its cron again."""
    return svc.campaigns.resume(campaign_id)


@router.post("/{campaign_id}/cancel", response_model=CampaignPublic, response_model_by_alias=True,
             responses=CONFLICT)
def cancel_campaign(campaign_id: str, key: Admin, svc: Svc) -> CampaignPublic:
    """Stop for good (also a scheduled or recurring campaign)."""
    return svc.campaigns.cancel(campaign_id)


@router.post("/{campaign_id}/ab/winner", response_model=CampaignPublic, response_model_by_alias=True,
             responses=CONFLICT)
def pick_winner(campaign_id: str, body: WinnerPick, key: Admin, svc: Svc) -> CampaignPublic:
    """Pick the A/B winner by hand; it goes to the rest of the audience."""
    return svc.campaigns.pick_winner(campaign_id, body.variant)
