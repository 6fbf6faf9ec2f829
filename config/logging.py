"""A logging filter that masks personal data in every record, installed through Prefect's logging config."""

from __future__ import annotations

import logging

from tasks.domain.pii import mask_pii


class PiiMaskingFilter(logging.Filter):
    """Mask emails, phone numbers and IBAN-like strings in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        masked = mask_pii(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = mask_pii(record.exc_text)
        return True


def install_pii_filter() -> None:
    """Attach the filter to every configured handler (for runs not started with config/logging.yml)."""
    names = [name for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")]
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in names)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, PiiMaskingFilter) for f in handler.filters):
                handler.addFilter(PiiMaskingFilter())
