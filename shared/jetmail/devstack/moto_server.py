"""moto in server mode for the local stack, with every request applied in isolation.

moto's own server handles requests on concurrent threads without isolating them, so two
conditional updates of one item can interleave (a lost ADD, a condition checked against a stale
item, "dictionary changed size during iteration" in a transaction). DynamoDB applies each request
atomically; serialising requests here gives the local stack the same guarantee, which jetmail's
exactly-once counters and claims rely on.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class Serialized:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
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
