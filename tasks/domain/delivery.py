"""Message delivery states: how provider events map onto them, and the rule that they only move forward."""

from __future__ import annotations

# Pre-send states rank below 10; a message's status only ever moves to a higher rank, so a late or
# duplicated callback can never turn "delivered" back into "sent".
RANK: dict[str, int] = {
    "planned": 0,
    "queued": 1,
    "deferred": 1,
    "standby": 1,
    "rendered": 2,
    "sending": 10,
    "in_doubt": 15,
    "sent": 20,
    "delivered": 40,
    "undelivered": 40,
    "failed": 40,
    "bounced": 40,
    "dropped": 40,
    "cancelled": 40,
    "read": 50,
}

TWILIO_STATUS: dict[str, str] = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "cancelled",
    "partially_delivered": "delivered",
}

SENDGRID_STATUS: dict[str, str] = {
    "processed": "sent",
    "deferred": "sent",
    "delivered": "delivered",
    "bounce": "bounced",
    "blocked": "bounced",
    "dropped": "dropped",
    "open": "read",
    "click": "read",
}

# SendGrid events that change consent rather than delivery.
SENDGRID_CONSENT_EVENTS = frozenset({"unsubscribe", "group_unsubscribe", "group_resubscribe", "spamreport"})


def advances(current: str | None, new: str) -> bool:
    """Return whether moving from `current` to `new` is a step forward."""
    return RANK.get(new, -1) > RANK.get(current or "", -1)


def is_failure(status: str) -> bool:
    """Return whether a final status means the message did not reach the customer."""
    return status in {"undelivered", "failed", "bounced", "dropped", "cancelled"}
