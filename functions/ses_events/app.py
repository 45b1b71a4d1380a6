"""SES events: SNS → Lambda records, and ``POST /sns/ses`` from an SNS HTTPS subscription.

Both event sources in template.yaml point at this one function. An SNS event carries ``Records``;
anything else is an HTTP API request, answered by the API's FastAPI app built with its SNS route alone
(the only route routed here), so a cold start loads none of the other routes. Built once per container,
reused warm.
"""

from typing import Any

from mangum import Mangum

from jetmail.api.app import create_app
from jetmail.config import get_settings
from jetmail.observability import CORRELATION_SES_EVENTS, count_api_response, count_ses_events, observed
from jetmail.services import Services
from jetmail.snapstart import install as install_snapstart

services = Services(get_settings())
http = Mangum(create_app(services.settings, services=services, routers=("sns",), dashboard=False), lifespan="off")
install_snapstart(services, properties=("ses_events",))


@observed(correlation_id_path=CORRELATION_SES_EVENTS)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Records" in event:
        count_ses_events(event)
        return services.ses_events.lambda_event(event).model_dump()
    answer: dict[str, Any] = http(event, context)
    count_api_response(answer)
    return answer
