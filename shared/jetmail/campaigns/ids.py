"""The message id of one campaign recipient: ``cm_<campaign>_<run>_<batch>_<position>``.

Feedback (SES events, tracking) finds the campaign, batch and recipient from it without a read.
"""

from __future__ import annotations


def campaign_message_id(campaign_id: str, run: str, batch: int, pos: int) -> str:
    # only [A-Za-z0-9_-]: the id travels as an SES message tag, which allows nothing else
    return f"cm_{campaign_id}_{run}_{batch}_{pos}"


def parse_campaign_message_id(message_id: str) -> tuple[str, str, int, int] | None:
    if not message_id.startswith("cm_"):
        return None
    parts = message_id[3:].rsplit("_", 3)
    if len(parts) != 4 or not parts[0] or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]), int(parts[3])
