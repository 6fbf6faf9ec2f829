"""The Prefect global concurrency limits that carry each sender's rate ceiling across dispatch processes.

`renewals limits ensure` creates them up front; with RENEWALS_SHARED_RATE_LIMITS=true every live sender
checks its limit before anything is claimed and then takes permits from it (tasks/channels/shared_limit.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from config.settings import Settings
from tasks.channels.ratelimit import PermitUnavailable
from tasks.channels.shared_limit import SharedLimit, plan_shared_limit

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

CHANNELS = ("sms", "whatsapp", "email")
ENSURE_HINT = "create it with `renewals limits ensure`"


def limit_name(prefix: str, channel: str, sender: str) -> str:
    """Return the limit's name: prefix, channel and the sender's id (a Messaging Service SID, no customer)."""
    return f"{prefix}-{channel}-{re.sub(r'[^A-Za-z0-9_.-]', '', sender) or 'default'}"


def shared_limit(settings: Settings, channel: str) -> SharedLimit:
    """Return the global limit the channel's sender draws on, computed from the settings."""
    prefix, api = settings.shared_rate_limit_prefix, settings.shared_rate_limit_api_seconds
    if channel == "sms":
        units = settings.sms_segment_ceiling if settings.sms_rate_counts_segments else 1
        sender = settings.twilio_messaging_service_sid or settings.twilio_sms_from
        name, rate = limit_name(prefix, "sms", sender), settings.sms_rate_per_second
        return plan_shared_limit(name, rate, units, api_seconds=api)
    if channel == "whatsapp":
        sender = settings.twilio_whatsapp_messaging_service_sid or settings.twilio_messaging_service_sid
        name, rate = limit_name(prefix, "whatsapp", sender), settings.whatsapp_rate_per_second
        return plan_shared_limit(name, rate, api_seconds=api)
    if channel == "email":
        name, rate = limit_name(prefix, "email", "sendgrid"), settings.sendgrid_rate_per_second
        return plan_shared_limit(name, rate, api_seconds=api)
    raise ValueError(f"no shared rate limit for channel {channel!r}")


def api_url() -> str:
    """Return the Prefect API the limits live on, or a note that none is set (an in-process one is used)."""
    return get_current_settings().api.url or "in-process (PREFECT_API_URL not set)"


def require_api() -> None:
    """Refuse to work on a process's own in-process Prefect API: the dispatchers would share nothing."""
    if not get_current_settings().api.url:
        raise PermitUnavailable(
            "shared rate limits need the Prefect server every dispatcher talks to: set PREFECT_API_URL"
        )


@dataclass(frozen=True)
class Ensured:
    """A limit after `ensure_limits`, and what was done to it: created, updated or unchanged."""

    channel: str
    limit: SharedLimit
    action: str


def _matches(found: GlobalConcurrencyLimitResponse, planned: SharedLimit) -> bool:
    return (
        found.active
        and found.limit == planned.limit
        and math.isclose(found.slot_decay_per_second, planned.slot_decay_per_second)
    )


def ensure_limits(settings: Settings, channels: Sequence[str] = CHANNELS) -> list[Ensured]:
    """Create or update one active global concurrency limit with slot decay per channel's sender."""
    require_api()
    done: list[Ensured] = []
    with get_client(sync_client=True) as client:
        for channel in channels:
            planned = shared_limit(settings, channel)
            update = GlobalConcurrencyLimitUpdate(
                limit=planned.limit, slot_decay_per_second=planned.slot_decay_per_second, active=True
            )
            try:
                found = client.read_global_concurrency_limit_by_name(planned.name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(
                            name=planned.name,
                            limit=planned.limit,
                            slot_decay_per_second=planned.slot_decay_per_second,
                            active=True,
                        )
                    )
                    done.append(Ensured(channel, planned, "created"))
                    continue
                except ObjectAlreadyExists:
                    found = None  # another `ensure` got there first
            if found is not None and _matches(found, planned):
                done.append(Ensured(channel, planned, "unchanged"))
            else:
                client.update_global_concurrency_limit(planned.name, update)
                done.append(Ensured(channel, planned, "updated"))
    return done


def check_limit(planned: SharedLimit, client: SyncPrefectClient) -> None:
    """Refuse to send unless the limit exists, is active and has the parameters the settings give."""
    try:
        found = client.read_global_concurrency_limit_by_name(planned.name)
    except ObjectNotFound:
        raise PermitUnavailable(
            f"the Prefect global concurrency limit {planned.name!r} does not exist: {ENSURE_HINT} "
            f"(on {api_url()}) before dispatching with RENEWALS_SHARED_RATE_LIMITS=true"
        ) from None
    except httpx.HTTPError as exc:
        raise PermitUnavailable(
            f"the Prefect API at {api_url()} did not answer for {planned.name!r} ({type(exc).__name__})"
        ) from exc
    if not _matches(found, planned):
        # An inactive limit grants everything, and other parameters break the bound the permits rely on.
        raise PermitUnavailable(
            f"the Prefect global concurrency limit {planned.name!r} is "
            f"{'active' if found.active else 'inactive'} with limit {found.limit} and slot decay "
            f"{found.slot_decay_per_second:g}/s, but the settings need an active limit {planned.limit} "
            f"with decay {planned.slot_decay_per_second:g}/s: {ENSURE_HINT.replace('create', 'update')}"
        )


class PrefectSlots:
    """Takes slots of one global concurrency limit, one request per call: a SharedRateLimiter's `take`.

    Made only for a limit that exists with the planned parameters (checked first, before any claim).

    This is the request `prefect.concurrency.sync.rate_limit(name, occupy=n, strict=True)` makes, but
    without its retry loop: after a wait there, the caller cannot tell when its slots were granted, and
    a permit's lifetime must count from a moment known to come before the grant.
    """

    def __init__(self, planned: SharedLimit) -> None:
        require_api()
        self.name = planned.name
        # Made here, so the sender threads use the API this thread's settings name (threads start without
        # Prefect's settings context), and kept open: a client per request would cost a connection each.
        self.client = get_client(sync_client=True)
        self.client.__enter__()
        try:
            check_limit(planned, self.client)
        except BaseException:
            self.close()
            raise

    def __call__(self, slots: int) -> float | None:
        """Try once to take `slots`: None when granted, else the seconds the server asks to wait."""
        try:
            response = self.client.increment_concurrency_slots([self.name], slots, "rate_limit")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                return float(exc.response.headers.get("Retry-After", 0.05))
            raise PermitUnavailable(
                f"the Prefect API refused slots of {self.name!r} "
                f"({exc.response.status_code}: {exc.response.text[:200]})"
            ) from exc
        except httpx.HTTPError as exc:
            raise PermitUnavailable(
                f"the Prefect API at {api_url()} did not answer for {self.name!r} ({type(exc).__name__})"
            ) from exc
        if not response.json():
            # What strict=True turns into an error: a missing limit would otherwise grant everything.
            raise PermitUnavailable(
                f"the Prefect global concurrency limit {self.name!r} does not exist: {ENSURE_HINT}"
            )
        return None

    def close(self) -> None:
        """Close the API client."""
        self.client.__exit__(None, None, None)
