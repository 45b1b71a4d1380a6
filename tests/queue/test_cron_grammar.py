"""jetmail's cron check and nats-server's own: the same patterns pass, the same fail."""

from __future__ import annotations

import nats
import nats.js.errors
import pytest
from nats.js import api

from jetmail.queue.patterns import cron_pattern

# the four, then one of each rule of the server's grammar, either way
PATTERNS = [
    "0 0 30 2 *", "0 0 0 31 2 *", "0 0 * * 5-1", "0 0 L * *",
    "0 0 0 31 4,6 *", "0 0 0 31 2 1", "0 0 0 29 2 *", "0 0 0 * * 7", "0 0 0 * * 1#2", "0 0 0 15W * *",
    "0 0 0 * * 5L", "0 */0 * * * *", "0 0 0 ? * *", "0 0 0 ?/2 * *", "0 0 0 * * mon-FRI", "0 0 0 * Jan *",
    "0 0 0 +1 * *", "0 0 0 01 * *", "0 0 0 * * -1", "0 0 0 1-3-5 * *", "0 0 0 */2/3 * *", "0 0 0 1,,2 * *",
    "0 0 0 , * *", "0 0 0 1, * *", "0 0 0 0 * *", "0 0 0 * 13 *", "60 * * * * *", "0 0 0 * * 0-6/2",
    "0 0 0 5/10 * *", "*/2 * * * * *", "@daily", "@weekly", "@monthly", "@yearly", "@hourly",
]


def _ours(pattern: str) -> bool:
    try:
        cron_pattern(pattern)
    except ValueError:
        return False
    return True


async def test_jetmail_accepts_exactly_the_crons_nats_server_accepts(nats_url: str, unique: str) -> None:
    # GIVEN a stream with message schedules on the real server
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = f"CRON_{unique}"
        await js.add_stream(api.StreamConfig(name=stream, subjects=[f"cron_{unique}.>"],
                                             allow_msg_schedules=True))
        disagreements = []
        for i, pattern in enumerate(PATTERNS):
            # WHEN each pattern, as jetmail would send it, is published as a schedule
            sent = cron_pattern(pattern) if _ours(pattern) else " ".join(["0", *pattern.split()][-6:])
            try:
                await js.publish(f"cron_{unique}.s.{i}", b"",
                                 headers={"Nats-Schedule": sent, "Nats-Schedule-Target": f"cron_{unique}.t"})
                server = True
            except nats.js.errors.APIError as exc:
                assert exc.err_code == 10189, exc
                server = False
            # THEN jetmail's check said the same before anything was sent
            if server != _ours(pattern):
                disagreements.append((pattern, {"server": server, "jetmail": _ours(pattern)}))
        assert disagreements == []
        await js.delete_stream(stream)
    finally:
        await nc.close()


@pytest.mark.parametrize("pattern", ["0 0 30 2 *", "0 0 0 31 2 *", "0 0 * * 5-1", "0 0 L * *"])
def test_the_reported_crons_are_refused_with_the_reason(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid cron"):
        cron_pattern(pattern)
