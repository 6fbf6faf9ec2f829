"""Run the cycle's use cases directly (no Prefect) against a store, for fast integration tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from config.loader import load_cycle, load_playbook, load_segmentation
from tasks.channels.base import Sender
from tasks.channels.rendering import Renderer
from tasks.channels.whatsapp_registry import load_whatsapp_registry
from tasks.dispatch import dispatch_cycle
from tasks.domain.contract import Entity
from tasks.domain.markets import Market
from tasks.domain.playbook import Playbook
from tasks.gate import gate_cycle
from tasks.load import load_validated
from tasks.plan import plan_cycle
from tasks.render import render_cycle
from tasks.segment import segment_cycle
from tasks.sources.raw import RawFrame
from tasks.sources.validation import validate_all
from tasks.store.repository import create_cycle, known_keys
from tests.fakes.senders import FakeSender
from tests.support.factories import ROOT, markets

HASH_KEY = b"test-hash-key"


@cache
def _playbook(playbook_id: str) -> Playbook:
    """Return a playbook of the project config, read once per test process like the runtime does."""
    return load_playbook(ROOT / "config", playbook_id)


@dataclass
class Pipeline:
    """The cycle's steps wired to one store, with in-memory senders."""

    engine: Engine
    markets: Mapping[str, Market] = field(default_factory=markets)
    senders: dict[str, Sender] = field(
        default_factory=lambda: {c: FakeSender() for c in ("email", "sms", "whatsapp")}
    )
    playbook_id: str = "renewal-standard"
    dispatch_options: dict[str, Any] = field(default_factory=dict)

    def load(self, raws: Mapping[Entity, RawFrame], cycle_id: int = 0) -> dict[str, Any]:
        """Validate and load raw frames."""
        with self.engine.begin() as conn:
            result = validate_all(raws, self.markets, known_keys=lambda e: known_keys(conn, e))
            return load_validated(conn, result, cycle_id, "bank", HASH_KEY)

    def cycle(self, as_of: date, now: datetime | None = None, send: bool = True) -> dict[str, Any]:
        """Run segment, plan, gate, render and (optionally) dispatch for every market; return stage stats."""
        moment = now or datetime.combine(as_of, datetime.min.time(), tzinfo=UTC).replace(hour=10)
        codes = sorted(self.markets)
        ids = list(load_cycle(ROOT / "config").playbooks) if self.playbook_id == "all" else [self.playbook_id]
        books = [load_playbook(ROOT / "config", pid) for pid in ids]
        book = books[0]
        stats: dict[str, Any] = {}
        with self.engine.begin() as conn:
            cycle_id = create_cycle(
                conn,
                as_of=as_of,
                markets=codes,
                playbook=book.id,
                playbook_version=book.version,
                dry_run=False,
                flow_run_id=None,
            )
            stats["segment"] = segment_cycle(conn, cycle_id, as_of, codes, load_segmentation(ROOT / "config"))
            stats["plan"] = plan_cycle(conn, cycle_id, books, as_of, codes, False)
            stats["gate"] = gate_cycle(conn, cycle_id, self.markets, HASH_KEY, moment, codes)
        stats["render"] = self.render(cycle_id, as_of)
        if send:
            stats["dispatch"] = self.dispatch(cycle_id, moment)
        stats["cycle_id"] = cycle_id
        return stats

    def render(self, cycle_id: int, as_of: date) -> dict[str, Any]:
        """Render the cycle's queued messages."""
        with self.engine.begin() as conn:
            return render_cycle(
                conn,
                cycle_id,
                Renderer(ROOT / "templates"),
                _playbook,
                as_of,
                markets=self.markets,
                whatsapp=load_whatsapp_registry(ROOT / "config/whatsapp_templates.yaml"),
                company="Test Bank",
                link_secret=HASH_KEY,
                link_base="https://example.invalid/renew",
                unsubscribe_base="https://example.invalid/unsubscribe",
            )

    def dispatch(self, cycle_id: int, moment: datetime | None = None, **options: Any) -> dict[str, Any]:
        """Dispatch the cycle's rendered messages through the pipeline's senders."""
        when = moment or datetime.now(UTC)
        return dispatch_cycle(
            self.engine,
            cycle_id,
            self.senders,
            self.markets,
            HASH_KEY,
            500,
            clock=lambda: when,
            **{**self.dispatch_options, **options},
        )


def outbox_dir(tmp_path: Path) -> Path:
    """Return a fresh directory for outbox files."""
    path = tmp_path / "outbox"
    path.mkdir(exist_ok=True)
    return path
