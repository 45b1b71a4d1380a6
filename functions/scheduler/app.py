"""EventBridge rate(1 minute) → the core scheduler tick."""

from datetime import datetime
from typing import Any

from jetmail.aws.snapstart import install as install_snapstart
from jetmail.config import get_settings
from jetmail.observability import CORRELATION_SCHEDULER, count_tick, observed
from jetmail.scheduler import tick
from jetmail.services import Services

services = Services(get_settings())
install_snapstart(services, properties=("campaigns", "sequences"), modules=("jetmail.reporting.queue_lag",))


@observed(correlation_id_path=CORRELATION_SCHEDULER)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    when = event.get("time")
    now = datetime.fromisoformat(when.replace("Z", "+00:00")) if isinstance(when, str) else None
    summary = tick(services, now)
    count_tick(summary)
    return summary
