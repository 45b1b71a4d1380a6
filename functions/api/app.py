"""API Gateway (HTTP API, payload v2) → the FastAPI app. Built once per container, reused warm."""

from typing import Any

from mangum import Mangum

from jetmail.api.app import create_app
from jetmail.aws.snapstart import install as install_snapstart
from jetmail.observability import CORRELATION_API, count_api_response, observed

asgi = create_app()
app = Mangum(asgi, lifespan="off")
# SnapStart: no NATS connection in the snapshot; what requests load on first use (the services, every route
# module and the dashboard) is loaded before it
install_snapstart(asgi.state.services, properties=("api_keys", "messages", "sequences", "campaigns", "contacts",
                                                   "segments", "reports", "tracker", "privacy"),
                  calls=(asgi.include_all,))


@observed(correlation_id_path=CORRELATION_API)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    response: dict[str, Any] = app(event, context)
    count_api_response(response)
    return response
