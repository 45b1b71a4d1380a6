"""Reports: a campaign's report (JSON or CSV) and account statistics over a range of days or hours."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from jetmail.api.auth import require, services
from jetmail.campaigns.model import build_models
from jetmail.compliance.apikeys import ApiKey
from jetmail.reporting.reports import AccountStats, CampaignReport, report_csv
from jetmail.services import Services

build_models()  # the reports declare the campaign progress and A/B models, which build on first use elsewhere
router = APIRouter(prefix="/v1", tags=["reports"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]


@router.get("/campaigns/{campaign_id}/report", response_model=CampaignReport,
            responses={404: {"description": "no such campaign"},
                       200: {"content": {"text/csv": {}}, "description": "the report (JSON, or CSV with format=csv)"}})
def campaign_report(campaign_id: str, key: Admin, svc: Svc,
                    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
                    ) -> CampaignReport | Response:
    """Counts, rates, hourly timeline, links, countries, mail clients and A/B variants of a campaign."""
    report = svc.reports.campaign_report(campaign_id)
    if format == "csv":
        return Response(report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{report.id}-report.csv"'})
    return report


@router.get("/stats", response_model=AccountStats, responses={422: {"description": "bad range or granularity"}})
def account_stats(key: Admin, svc: Svc,
                  start: Annotated[str | None, Query(max_length=40, description="a date, an hour (2026-11-28T15) "
                                                                                "or an ISO time; UTC")] = None,
                  end: Annotated[str | None, Query(max_length=40, description="included; default now")] = None,
                  granularity: Literal["day", "hour"] = "day") -> AccountStats:
    """Account-wide sends and events per day or hour (default: the last 30 days, or the last 24 hours)."""
    return svc.reports.account_stats(start=start, end=end, granularity=granularity)
