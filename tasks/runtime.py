"""The composition root: settings, engine, configuration and channel adapters for one process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import Engine

from config.loader import (
    load_cycle,
    load_markets,
    load_playbook,
    load_retention,
    load_segmentation,
    load_worklist,
)
from config.rewards_loader import load_fx
from config.settings import SendMode, Settings, get_settings
from tasks.channels.base import Sender
from tasks.channels.outbox import OutboxSender
from tasks.channels.ratelimit import Limiter, SlidingWindowLimiter
from tasks.channels.rendering import Renderer
from tasks.channels.results import PendingMessage
from tasks.channels.retry import RetryPolicy
from tasks.channels.sendgrid_email import SendGridEmailSender
from tasks.channels.shared_limit import SharedRateLimiter
from tasks.channels.twilio_sms import TwilioSmsSender
from tasks.channels.twilio_whatsapp import TwilioWhatsAppSender
from tasks.channels.whatsapp_registry import WhatsAppRegistry, load_whatsapp_registry
from tasks.domain.frames import records
from tasks.domain.markets import Market
from tasks.domain.playbook import CycleConfig, Playbook
from tasks.domain.rewards import FxRates
from tasks.domain.rules import RetentionPolicy
from tasks.domain.segmentation import SegmentationConfig
from tasks.domain.worklist import WorklistConfig
from tasks.rate_limits import PrefectSlots, shared_limit
from tasks.store.engine import make_engine
from tasks.store.repository import pending_messages


@dataclass
class Runtime:
    """Everything a pipeline step needs, built once per process from settings."""

    settings: Settings
    _senders: dict[str, Sender] = field(default_factory=dict)
    _playbooks: dict[str, Playbook] = field(default_factory=dict)

    @cached_property
    def engine(self) -> Engine:
        """Return the store's engine."""
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def markets(self) -> dict[str, Market]:
        """Return the configured markets."""
        return load_markets(self.settings.config_dir)

    @cached_property
    def segmentation(self) -> SegmentationConfig:
        """Return the segmentation thresholds and scorecard."""
        return load_segmentation(self.settings.config_dir)

    @cached_property
    def cycle(self) -> CycleConfig:
        """Return the default playbooks of a cycle, in priority order."""
        return load_cycle(self.settings.config_dir)

    @cached_property
    def worklist(self) -> WorklistConfig:
        """Return the worklist's owners and thresholds."""
        return load_worklist(self.settings.config_dir)

    @cached_property
    def fx(self) -> FxRates:
        """Return the fixed EUR reporting rates."""
        return load_fx(self.settings.config_dir)

    @cached_property
    def retention(self) -> RetentionPolicy:
        """Return the retention periods per data category."""
        return load_retention(self.settings.config_dir)

    @cached_property
    def renderer(self) -> Renderer:
        """Return the template renderer."""
        return Renderer(self.settings.templates_dir)

    def playbook(self, playbook_id: str) -> Playbook:
        """Return a validated playbook (read once per process)."""
        if playbook_id not in self._playbooks:
            self._playbooks[playbook_id] = load_playbook(self.settings.config_dir, playbook_id)
        return self._playbooks[playbook_id]

    @cached_property
    def whatsapp_registry(self) -> WhatsAppRegistry:
        """Return the approved WhatsApp templates (template key and locale to ContentSid and variables)."""
        return load_whatsapp_registry(self.settings.whatsapp_templates_path)

    def sender(self, channel: str) -> Sender:
        """Return the sender for a channel under the configured send mode."""
        if channel not in self._senders:
            if self.settings.send_mode is SendMode.OUTBOX:
                self._senders[channel] = OutboxSender(self.settings.resolved_outbox_dir, channel)
            else:
                self.settings.check_live_secrets()
                self._senders[channel] = self._live_sender(channel)
        return self._senders[channel]

    def _pending(self, keys: Sequence[str]) -> dict[str, PendingMessage]:
        with self.engine.connect() as conn:
            frame = pending_messages(conn, keys)
        return {
            r["message_key"]: PendingMessage(r["message_key"], r["to"], r["body"] or "", r["claimed_at"])
            for r in records(frame)
        }

    def _limiter(self, channel: str, rate: float, concurrency: int) -> Limiter:
        """Return a sender's limiter: its own sliding window, then the shared ceiling when that is on."""
        local = SlidingWindowLimiter(rate, max_concurrency=concurrency)
        if not self.settings.shared_rate_limits:
            return local
        planned = shared_limit(self.settings, channel)
        # The limit is checked now, before dispatch claims anything: a missing one stops it with nothing sent.
        return SharedRateLimiter(local, planned, PrefectSlots(planned))

    def _live_sender(self, channel: str) -> Sender:
        st = self.settings
        retry = RetryPolicy(
            max_attempts=st.retry_max_attempts, base_delay=st.retry_base_delay, max_delay=st.retry_max_delay
        )
        callbacks = st.webhook_public_base_url.rstrip("/") or None
        if channel == "email":
            return SendGridEmailSender(
                st.sendgrid_api_key.get_secret_value(),
                from_email=st.sendgrid_from_email,
                from_name=st.sendgrid_from_name or None,
                base_url=st.sendgrid_host,
                limiter=self._limiter("email", st.sendgrid_rate_per_second, st.sendgrid_concurrency),
                retry=retry,
                concurrency=st.sendgrid_concurrency,
                timeout=st.sendgrid_timeout_seconds,
                dynamic_templates=st.sendgrid_dynamic_templates,
                asm_group_id=st.sendgrid_asm_group_id,
                unsubscribe_url=str(st.unsubscribe_base_url),
                unsubscribe_mailto=st.sendgrid_unsubscribe_mailto or None,
            )
        common: dict[str, Any] = {
            "base_url": st.twilio_base_url,
            "status_callback_base": callbacks,
            "retry": retry,
            "concurrency": st.twilio_concurrency,
            "timeout": st.twilio_timeout_seconds,
            "currency": st.channel_price_currency,
            "pending_lookup": self._pending,
        }
        token = st.twilio_auth_token.get_secret_value()
        if channel == "whatsapp":
            return TwilioWhatsAppSender(
                st.twilio_account_sid,
                token,
                registry=self.whatsapp_registry,
                messaging_service_sid=st.twilio_whatsapp_messaging_service_sid
                or st.twilio_messaging_service_sid,
                validity_period=st.twilio_whatsapp_validity_period,
                limiter=self._limiter("whatsapp", st.whatsapp_rate_per_second, st.twilio_concurrency),
                default_price=st.whatsapp_default_price,
                **common,
            )
        return TwilioSmsSender(
            st.twilio_account_sid,
            token,
            messaging_service_sid=st.twilio_messaging_service_sid or None,
            from_=st.twilio_sms_from or None,
            validity_period=st.twilio_sms_validity_period,
            segment_ceiling=st.sms_segment_ceiling,
            count_segments=st.sms_rate_counts_segments,
            limiter=self._limiter("sms", st.sms_rate_per_second, st.twilio_concurrency),
            prices=st.sms_price_per_segment,
            default_price=st.sms_default_price_per_segment,
            **common,
        )

    def close(self) -> None:
        """Release the engine's connections."""
        if "engine" in self.__dict__:
            self.engine.dispose()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """Return the process-wide runtime, building it from settings on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def reset_runtime(runtime: Runtime | None = None) -> None:
    """Replace (or drop) the process-wide runtime; settings are re-read on next use."""
    global _runtime
    if _runtime is not None and _runtime is not runtime:
        _runtime.close()
    get_settings.cache_clear()
    _runtime = runtime
