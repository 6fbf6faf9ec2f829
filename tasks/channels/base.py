"""The one small interface every channel adapter implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class Outbound:
    """A rendered message ready to leave: address, content and the key that identifies it."""

    message_key: str
    channel: str
    to: str
    body: str
    purpose: str
    category: str
    subject: str | None = None
    html: str | None = None
    template: str | None = None
    locale: str | None = None
    variables: Mapping[str, str] | None = None


class SendStatus(StrEnum):
    """How a send attempt ended."""

    SENT = "sent"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"


@dataclass(frozen=True)
class SendResult:
    """The outcome of sending one message."""

    message_key: str
    status: SendStatus
    provider: str
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


class SendInterrupted(Exception):
    """A send stopped part way because no more calls could start: the messages without a result never left."""

    def __init__(self, results: Sequence[SendResult], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.results = list(results)
        self.cause = cause


class Sender(Protocol):
    """Sends batches of messages on one channel."""

    provider: str

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Send every message; return one result per message, never raise for a per-message error.

        Raises SendInterrupted, carrying the results so far, when calls can no longer start at all.
        """
        ...

    def reconcile(self, message_keys: Sequence[str]) -> dict[str, SendResult]:
        """Return what the provider knows of messages whose outcome was lost (absent = never arrived)."""
        ...
