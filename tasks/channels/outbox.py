"""The outbox channel: messages are recorded in a JSONL file per channel instead of being sent."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tasks.channels.base import Outbound, SendResult, SendStatus

# One encoder for every line: json.dumps with options builds a new one per call.
_LINE = json.JSONEncoder(ensure_ascii=False)


class OutboxSender:
    """Appends each message as one JSON line to `<dir>/<channel>.jsonl`, fsynced before it counts as sent."""

    provider = "outbox"

    def __init__(self, directory: Path, channel: str) -> None:
        self.path = directory / f"{channel}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def provider_id(message_key: str) -> str:
        """Return the stable outbox id of a message."""
        return "OB" + hashlib.sha1(message_key.encode()).hexdigest()[:24]

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Append the batch and fsync; every message in it is then sent."""
        if not batch:
            return []
        now = datetime.now(UTC).isoformat()
        lines = []
        for msg in batch:
            record = {
                "message_key": msg.message_key,
                "id": self.provider_id(msg.message_key),
                "at": now,
                "channel": msg.channel,
                "to": msg.to,
                "subject": msg.subject,
                "body": msg.body,
                "html": msg.html,
                "purpose": msg.purpose,
                "category": msg.category,
            }
            lines.append(_LINE.encode(record))
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return [
            SendResult(m.message_key, SendStatus.SENT, self.provider, self.provider_id(m.message_key))
            for m in batch
        ]

    def reconcile(self, message_keys: Sequence[str]) -> dict[str, SendResult]:
        """Return the messages among `message_keys` that reached the outbox file."""
        wanted = set(message_keys)
        found: dict[str, SendResult] = {}
        if not self.path.exists() or not wanted:
            return found
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    key = json.loads(line)["message_key"]
                except (ValueError, KeyError):
                    # A torn last line from a killed writer never counted as sent.
                    continue
                if key in wanted:
                    found[key] = SendResult(key, SendStatus.SENT, self.provider, self.provider_id(key))
        return found
