"""The composition root: settings, engine, configuration and channel adapters for one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine

from config.loader import load_markets, load_playbook, load_retention, load_segmentation
from config.settings import SendMode, Settings, get_settings
from tasks.channels.base import Sender
from tasks.channels.outbox import OutboxSender
from tasks.channels.rendering import Renderer
from tasks.domain.markets import Market
from tasks.domain.playbook import Playbook
from tasks.domain.rules import RetentionPolicy
from tasks.domain.segmentation import SegmentationConfig
from tasks.store.engine import make_engine


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

    def sender(self, channel: str) -> Sender:
        """Return the sender for a channel under the configured send mode."""
        if channel not in self._senders:
            if self.settings.send_mode is SendMode.OUTBOX:
                self._senders[channel] = OutboxSender(self.settings.resolved_outbox_dir, channel)
            else:
                raise NotImplementedError("send_mode=live arrives with the Twilio and SendGrid channels")
        return self._senders[channel]

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
