"""WhatsApp through Twilio: business-initiated messages as approved Content templates only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tasks.channels.base import Outbound
from tasks.channels.results import ChannelResult, PendingMessage, failed, refusal, template_fields
from tasks.channels.twilio_sms import Prepared, ReconcileAmbiguous, TwilioMessagesSender
from tasks.channels.whatsapp_registry import (
    WhatsAppRegistry,
    WhatsAppTemplateMissing,
    WhatsAppVariablesInvalid,
)

# Twilio keeps a WhatsApp message queued at most 4 h; a shorter validity than the SMS default matches that.
DEFAULT_WHATSAPP_VALIDITY = 14400


class TwilioWhatsAppSender(TwilioMessagesSender):
    """Sends approved templates (ContentSid + ContentVariables) through a Messaging Service.

    A plain Body outside the customer's 24-hour session fails with 63016 since 2025-04-01, so a message
    without a registered template is refused before any call, with `fallback` set for the next channel.
    The message must carry `template`, `locale` and `variables` (see results.TemplatedOutbound).
    """

    channel = "whatsapp"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        registry: WhatsAppRegistry,
        messaging_service_sid: str,
        validity_period: int = DEFAULT_WHATSAPP_VALIDITY,
        **options: Any,
    ) -> None:
        if not messaging_service_sid:
            raise ValueError("the Content API needs a Messaging Service SID")
        super().__init__(
            account_sid,
            auth_token,
            messaging_service_sid=messaging_service_sid,
            validity_period=validity_period,
            **options,
        )
        self.registry = registry

    def address(self, to: str) -> str:
        """Return the WhatsApp channel address of an E.164 number."""
        return to if to.startswith("whatsapp:") else f"whatsapp:{to}"

    def _sender_params(self) -> dict[str, Any]:
        params = super()._sender_params()
        if self.from_:
            params["from_"] = self.address(self.from_)
        return params

    def prepare(self, msg: Outbound) -> Prepared | ChannelResult:
        """Return the create arguments of a template message, or FAILED (with fallback) when it has none."""
        template, locale, variables = template_fields(msg)
        if template is None or variables is None:
            refused = refusal("TEMPLATE_REQUIRED", "no template key or variables on the message", True)
            return failed(msg.message_key, self.provider, refused, 0)
        try:
            content_sid, _ = self.registry.lookup(template, locale or "en")
            values = self.registry.content_variables(template, locale or "en", variables)
        except WhatsAppTemplateMissing:
            refused = refusal("TEMPLATE_NOT_REGISTERED", f"no ContentSid for {template}", True)
            return failed(msg.message_key, self.provider, refused, 0)
        except WhatsAppVariablesInvalid:
            refused = refusal("TEMPLATE_VARIABLES", f"missing or invalid variables for {template}", True)
            return failed(msg.message_key, self.provider, refused, 0)
        params = self._sender_params() | {
            "to": self.address(msg.to),
            "content_sid": content_sid,
            # The SDK types ContentVariables as str: Twilio wants a JSON object serialised into the field.
            "content_variables": json.dumps(values, ensure_ascii=False),
        }
        callback = self.status_callback(msg.message_key)
        if callback:
            params["status_callback"] = callback
        return Prepared(params, 1, None, self.price(msg.to, 1))

    def match(
        self, messages: Sequence[Any], item: PendingMessage, since: datetime, taken: set[str]
    ) -> str | None:
        """Return the SID of `item` among `messages`: same text, else the only outbound one since the claim.

        Twilio stores the approved template's rendering as the body, which need not equal our preview text;
        with several candidates and none of the same text, the message stays in doubt.
        """
        found = super().match(messages, item, since, taken)
        if found is not None:
            return found
        outbound = [
            m
            for m in messages
            if str(getattr(m, "direction", "")).startswith("outbound")
            and str(m.sid) not in taken
            and m.date_created is not None
            and m.date_created >= since
        ]
        if len(outbound) > 1:
            raise ReconcileAmbiguous(item.message_key)
        return str(outbound[0].sid) if outbound else None
