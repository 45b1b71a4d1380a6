"""SyncClient: blocking calls for Lambda handlers and sync routes, whatever loop the caller runs on."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tasks_for_tests  # noqa: F401 - registers the test tasks in the default registry
from queue_helpers import done

from jetmail.queue import JobValidationError, QueueConfig, SyncClient, Worker, get_sync_client


def test_sync_client_works_twice_in_a_row_and_inside_running_loops(qconfig: QueueConfig, qname: str,
                                                                   joblog: Path) -> None:
    # GIVEN two private clients, one after the other, like two cold invocations
    for i in range(2):
        with SyncClient(qconfig) as q:
            q.ensure_streams([qname])
            q.enqueue("test_record", queue=qname, log=str(joblog), label=f"private{i}")

    # AND the process-wide client, called from code running inside an event loop (Mangum runs the ASGI app
    # on a loop; a fresh asyncio.run per invocation would break a connection bound to the previous loop)
    shared = get_sync_client(qconfig)
    assert SyncClient.shared(qconfig) is shared

    def invocation(label: str) -> str:
        async def handler() -> str:
            return shared.enqueue("test_record", queue=qname, log=str(joblog), label=label).job_id

        return asyncio.run(handler())

    ids = [invocation("warm1"), invocation("warm2")]
    worker_thread_ids: list[str] = []
    thread = threading.Thread(target=lambda: worker_thread_ids.append(invocation("other-thread")))
    thread.start()
    thread.join()
    # AND from many threads at once over the one connection
    with ThreadPoolExecutor(max_workers=8) as pool:
        refs = list(pool.map(lambda i: shared.enqueue("test_record", queue=qname, log=str(joblog),
                                                      label=f"t{i}"), range(20)))
    with pytest.raises(JobValidationError, match="log: Input should be a valid string"):
        shared.enqueue("test_record", queue=qname, log=1.5)

    # THEN every job was enqueued once and runs
    assert len(set(ids + worker_thread_ids + [r.job_id for r in refs])) == 23
    assert shared.pending(qname)["normal"] == 25
    asyncio.run(Worker(qconfig, [qname], burst=True, handle_signals=False).run())
    assert len(done(joblog)) == 25
    assert shared.dlq_list(queue=qname) == []
    # AND a closed shared client reconnects on its next call (what a forked or long-idle process needs)
    shared.close()
    assert shared.pending(qname)["normal"] == 0
    shared.close()
