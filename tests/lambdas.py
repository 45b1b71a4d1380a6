"""Lambda's side of a handler test: a context, the sample events in ``events/``, a handler loaded by file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class LambdaContext:
    function_name = "jetmail-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jetmail-test"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def load_handler(function: str) -> ModuleType:
    """Load functions/<function>/app.py the way the Lambda runtime does: by file, not as a package."""
    spec = importlib.util.spec_from_file_location(f"lambda_{function}", ROOT / "functions" / function / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(name: str, **replace: str) -> dict[str, Any]:
    text = (ROOT / "events" / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    loaded: dict[str, Any] = json.loads(text)
    return loaded
