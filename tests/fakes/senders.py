"""An in-memory channel that records what it sent and can be told to die part way through a batch."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.channels.base import Outbound, SendResult, SendStatus


class ProcessKilled(BaseException):
    """Stands in for kill -9: nothing after it runs, not even the settle step."""


class FakeSender:
    """Records every message it accepts; `die_after` simulates a crash after that many sends."""

    provider = "fake"

    def __init__(self, die_after: int | None = None) -> None:
        self.sent: list[Outbound] = []
        self.die_after = die_after

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Accept each message unless the simulated crash point is reached."""
        results = []
        for msg in batch:
            if self.die_after is not None and len(self.sent) >= self.die_after:
                raise ProcessKilled
            self.sent.append(msg)
            results.append(SendResult(msg.message_key, SendStatus.SENT, self.provider, f"F{len(self.sent)}"))
        return results

    def reconcile(self, message_keys: Sequence[str]) -> dict[str, SendResult]:
        """Report the messages among `message_keys` this fake accepted."""
        have = {m.message_key for m in self.sent}
        return {
            k: SendResult(k, SendStatus.SENT, self.provider, "reconciled") for k in message_keys if k in have
        }
