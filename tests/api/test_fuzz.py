"""Schema-driven fuzzing of the whole API with schemathesis, in process (ASGI, no server), as an admin.

Every operation in the app's own OpenAPI document gets a bounded number of generated requests; each answer
must not be a 5xx, must use a status code the operation declares, and must match the declared schema.
The app runs on a private stack with no worker: fuzzed sends and campaigns only enqueue jobs that nobody
delivers, and deleted or created records never touch the data other tests share.
Raise ``JETMAIL_FUZZ_EXAMPLES`` (default 6 per operation) for a deeper local run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from jetmail.api.app import create_app
from jetmail.devstack.stack import StackState
from stacktools import Isolated

EXAMPLES = int(os.environ.get("JETMAIL_FUZZ_EXAMPLES", "6"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# invalid requests: a 4xx the operation declares, never a 5xx and never a 2xx
NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, negative_data_rejection]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# a too large body (413) and a refused limit (429) are rejections too
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]}}})


@pytest.fixture(scope="module")
def own(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    iso = Isolated(stack, tmp_path_factory.mktemp("fuzz"))
    yield iso
    iso.close()


def test_every_operation_survives_generated_requests(own: Isolated, tmp_path: Path) -> None:
    # GIVEN the app (no request limit, so the fuzzer's pace is not answered with 429) and its OpenAPI document
    app = create_app(own.settings.model_copy(update={"api_rate_per_minute": 0}), services=own.services)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    auth = {"Authorization": f"Bearer {own.token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    failures: list[str] = []
    counted: list[int] = []

    for operation, mode in product(operations, MODES):
        run = _runner(auth, CHECKS if mode == GenerationMode.POSITIVE else NEGATIVE_CHECKS, counted)
        test = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                        )(given(case=operation.as_strategy(generation_mode=mode))(run))
        # WHEN each operation gets its generated requests, valid ones and invalid ones
        try:
            test()
        except Unsatisfiable:
            # nothing about this operation can be made invalid (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # one report for all operations, not the first only
            failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}"[:2000])
    # THEN no answer was a server error or broke its declared contract
    assert failures == [], "\n\n".join(failures)
    assert sum(counted) >= len(operations)


def _runner(auth: dict[str, str], checks: list[Any], counted: list[int]) -> Callable[[Any], None]:
    def run(case: Any) -> None:
        counted.append(1)
        case.call_and_validate(headers=auth, checks=checks)

    return run
