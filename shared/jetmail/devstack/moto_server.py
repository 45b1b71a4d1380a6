"""moto in server mode for the local stack, with every request applied in isolation.

moto's own server handles requests on concurrent threads without isolating them, so two
conditional updates of one item can interleave (a lost ADD, a condition checked against a stale
item, "dictionary changed size during iteration" in a transaction). DynamoDB applies each request
atomically; serialising requests here gives the local stack the same guarantee, which jetmail's
exactly-once counters and claims rely on.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class Serialized:
    """Applies one request at a time, and counts DynamoDB requests by operation for the cost
    benchmarks (``GET /_jetmail/requests``)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == "/_jetmail/requests":
            body = json.dumps(dict(self.counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            self.counts[target.split(".", 1)[-1]] += 1
        with self.lock:
            return list(self.app(environ, start_response))


def main() -> None:
    parser = argparse.ArgumentParser(description="moto server with isolated requests (jetmail local stack)")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5055)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    try:
        from moto.server import MotoRequestHandler
    except ImportError:  # older moto
        MotoRequestHandler = None  # type: ignore[assignment,misc]
    app = DomainDispatcherApplication(create_backend_app)
    options: dict[str, Any] = {"threaded": True}
    if MotoRequestHandler is not None:
        options["request_handler"] = MotoRequestHandler
    run_simple(args.host, args.port, Serialized(app), **options)


if __name__ == "__main__":
    main()
