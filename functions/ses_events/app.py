"""SES events: SNS → Lambda records, and ``POST /sns/ses`` from an SNS HTTPS subscription.

Both event sources in template.yaml point at this one function. An SNS event carries ``Records`` and goes
straight to the core intake; anything else is an HTTP API request, answered by the API's FastAPI app built
with its SNS route alone (the only route routed here). FastAPI is loaded on the first HTTP request, not at
init: the SNS-triggered path, the one SES uses, never imports it. Built once per container, reused warm.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from jetmail.aws.snapstart import install as install_snapstart
from jetmail.config import get_settings
from jetmail.observability import CORRELATION_SES_EVENTS, count_api_response, count_ses_events, observed
from jetmail.services import Services

if TYPE_CHECKING:
    from mangum import Mangum

services = Services(get_settings())
# SnapStart loads the HTTP path ahead too, so neither kind of event pays for it after a restore
install_snapstart(services, properties=("ses_events",), modules=("mangum", "jetmail.api.app"))
_http: Mangum | None = None
_http_lock = threading.Lock()


def http_app() -> Mangum:
    """The SNS route's app, made on first use and kept for the container's life."""
    global _http
    with _http_lock:
        if _http is None:
            from mangum import Mangum

            from jetmail.api.app import create_app

            _http = Mangum(create_app(services.settings, services=services, routers=("sns",), dashboard=False),
                           lifespan="off")
    return _http


@observed(correlation_id_path=CORRELATION_SES_EVENTS)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Records" in event:
        count_ses_events(event)
        return services.ses_events.lambda_event(event).model_dump()
    answer: dict[str, Any] = http_app()(event, context)
    count_api_response(answer)
    return answer
