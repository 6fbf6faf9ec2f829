"""The rewards ledger on SQLite and PostgreSQL: grant once within budget, fulfil, claw back, expire, tell."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from alembic import command
from sqlalchemy import Engine, func, select, update

from config.rewards_loader import RewardConfig
from tasks.channels.rendering import Renderer, format_long_date, format_money
from tasks.domain.messaging import sms_segments
from tasks.domain.rewards import (
    EarlyRenewal,
    Fulfilment,
    FxRates,
    NotEnoughPoints,
    OnTimeStreak,
    Reactivation,
    RewardKind,
    RewardRule,
    When,
)
from tasks.fulfilment import Grant, Outcome, Result
from tasks.fulfilment.points import PointsFulfiller
from tasks.fulfilment.vouchers import VoucherFileError, VoucherFulfiller
from tasks.rewards import (
    RewardsContext,
    SqlPointsLedger,
    SqlVoucherPool,
    import_vouchers,
    points_balance,
    redeem_points,
    reward_context,
    run_rewards,
)
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.migrate import alembic_config, upgrade
from tests.fakes.senders import FakeSender
from tests.support.factories import ROOT, markets, raw_set
from tests.support.pipeline import HASH_KEY, Pipeline

AS_OF = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
FX = FxRates({"EUR": Decimal(1), "GBP": Decimal("1.17")})
MARKETS = ["DE", "GB"]


def config(early_budget: int = 100, holdout_share: float = 0.0, streak_lookback: int = 45) -> RewardConfig:
    early = RewardRule(
        id="early",
        name="Early renewal voucher",
        version=1,
        when=When(early_renewal=EarlyRenewal(30)),
        reward=RewardKind.VOUCHER,
        value={"EUR": Decimal(10), "GBP": Decimal(8)},
        budget={"DE": Decimal(early_budget), "GB": Decimal(100)},
        fulfilment=Fulfilment.VOUCHER,
        holdout_share=holdout_share,
        expires_after_days=60,
    )
    streak = RewardRule(
        id="streak",
        name="On-time streak",
        version=1,
        when=When(on_time_streak=OnTimeStreak(3)),
        reward=RewardKind.POINTS,
        points=500,
        value={"EUR": Decimal(5), "GBP": Decimal(4)},
        budget={"DE": Decimal(100), "GB": Decimal(100)},
        fulfilment=Fulfilment.POINTS,
        expires_after_days=365,
        lookback_days=streak_lookback,
    )
    back = RewardRule(
        id="back",
        name="Welcome back",
        version=1,
        when=When(reactivation=Reactivation()),
        reward=RewardKind.CASHBACK,
        value={"EUR": Decimal(15), "GBP": Decimal(12)},
        budget={"DE": Decimal(100), "GB": Decimal(100)},
        fulfilment=Fulfilment.WEBHOOK,
    )
    return RewardConfig((early, streak, back), FX)


class RecordingPlatform:
    """Stands in for the rewards platform: accepts every grant and remembers it."""

    def __init__(self) -> None:
        self.grants: list[Grant] = []

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        self.grants.extend(grants)
        return [Result(g.reward_key, Outcome.FULFILLED, f"RP-{g.reward_key}") for g in grants]


def context(engine: Engine, cfg: RewardConfig | None = None, platform: Any = None) -> RewardsContext:
    clock = lambda: NOW  # noqa: E731
    return RewardsContext(
        engine=engine,
        config=cfg or config(),
        markets=markets(),
        fulfillers={
            Fulfilment.POINTS: PointsFulfiller(SqlPointsLedger(engine, clock)),
            Fulfilment.VOUCHER: VoucherFulfiller(SqlVoucherPool(engine, clock)),
            Fulfilment.WEBHOOK: platform or RecordingPlatform(),
        },
        hash_key=HASH_KEY,
        renderer=Renderer(ROOT / "templates"),
        senders={c: FakeSender() for c in ("email", "sms", "whatsapp")},
        company="Test Bank",
    )


def seed(engine: Engine, **extra: list[dict[str, str]]) -> None:
    """C1 renewed early, C2 paid 3 instalments on time, C3 came back (GB, phone only), C4 renewed late."""
    rows: dict[str, list[dict[str, str]]] = {
        "customers": [
            {"customer_key": "C1"},
            {"customer_key": "C2", "email": "c2@example.com"},
            {
                "customer_key": "C3",
                "market": "GB",
                "locale": "en-GB",
                "email": "",
                "phone": "+447911123456",
            },
            {"customer_key": "C4", "email": "c4@example.com"},
        ],
        "contracts": [
            {"contract_key": "K1", "customer_key": "C1", "renewed_at": "2026-11-10"},
            {"contract_key": "K2", "customer_key": "C2"},
            {"contract_key": "K3", "customer_key": "C3", "currency": "GBP"},
            {
                "contract_key": "K4",
                "customer_key": "C4",
                "term_end": "2026-12-01",
                "renewed_at": "2026-11-15",
            },
        ],
        "instalments": [
            {
                "instalment_key": "I1",
                "contract_key": "K2",
                "due_date": "2026-09-01",
                "paid_date": "2026-08-30",
            },
            {
                "instalment_key": "I2",
                "contract_key": "K2",
                "due_date": "2026-10-01",
                "paid_date": "2026-10-01",
            },
            {
                "instalment_key": "I3",
                "contract_key": "K2",
                "due_date": "2026-11-01",
                "paid_date": "2026-10-29",
            },
        ],
        "activity": [
            {"customer_key": "C3", "month": "2026-07", "transactions": "12", "last_active": "2026-07-30"},
            {"customer_key": "C3", "month": "2026-09", "transactions": "1", "last_active": "2026-09-03"},
            {"customer_key": "C3", "month": "2026-11", "transactions": "4", "last_active": "2026-11-20"},
        ],
    }
    for name, more in extra.items():
        rows[name] = rows.get(name, []) + more
    stats = Pipeline(engine).load(raw_set(**rows))
    assert stats is not None


def vouchers(
    tmp_path: Path, *codes: str, rule: str = "early", market: str = "DE", name: str = "codes.csv"
) -> Path:
    path = tmp_path / name
    lines = ["code,rule,market,valid_until", *(f"{c},{rule},{market},2027-06-30" for c in codes)]
    path.write_text("\n".join(lines) + "\n")
    return path


def rewards(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return read_frame(conn, select(s.rewards)).set_index("reward_key").sort_index()


def messages(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return read_frame(conn, select(s.messages).where(s.messages.c.playbook == "rewards")).set_index(
            "message_key"
        )


def sent(ctx: RewardsContext) -> dict[str, list[Any]]:
    return {channel: list(sender.sent) for channel, sender in ctx.senders.items()}  # type: ignore[attr-defined]


class TestGrant:
    def test_a_run_grants_fulfils_and_notifies_each_qualifying_event_once(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        seed(engine)
        import_vouchers(vouchers(tmp_path, "VOUCH-0001", "VOUCH-0002"), engine, NOW)
        platform = RecordingPlatform()
        ctx = context(engine, platform=platform)

        stats = run_rewards(ctx, AS_OF, MARKETS, NOW)

        got = rewards(engine)
        assert got["status"].to_dict() == {
            "back:C3:2026-11": "fulfilled",
            "early:C1:K1:20261110": "fulfilled",
            "streak:C2:I3": "fulfilled",
        }
        assert got.loc["early:C1:K1:20261110", "currency"] == "EUR"
        assert got.loc["back:C3:2026-11", ["value", "currency", "cost_eur"]].tolist() == [12.0, "GBP", 14.04]
        assert got.loc["streak:C2:I3", "evidence"] == ["I1", "I2", "I3"]
        assert [g.reward_key for g in platform.grants] == ["back:C3:2026-11"]
        with engine.connect() as conn:
            assert points_balance(conn, "C2", AS_OF) == 500
            issued = conn.execute(select(s.voucher_codes.c.code, s.voucher_codes.c.reward_key)).all()
            spent = conn.execute(
                select(s.reward_budgets.c.spent).where(
                    s.reward_budgets.c.rule == "early", s.reward_budgets.c.market == "DE"
                )
            ).scalar_one()
        assert sorted((c, k) for c, k in issued if k) == [("VOUCH-0001", "early:C1:K1:20261110")]
        assert float(spent) == 10.0
        assert stats["grant"]["granted"] == 3

        out = sent(ctx)
        assert sorted(m.message_key for m in out["email"]) == [
            "rewards:early:C1:K1:20261110",
            "rewards:streak:C2:I3",
        ]
        assert [m.message_key for m in out["sms"]] == ["rewards:back:C3:2026-11"]
        body = {m.message_key: m.body for m in out["email"] + out["sms"]}
        assert "VOUCH-0001" in body["rewards:early:C1:K1:20261110"]
        assert "500 Punkte" in body["rewards:streak:C2:I3"]
        assert "£12.00" in body["rewards:back:C3:2026-11"]
        assert (messages(engine)["status"] == "sent").all()

        again = run_rewards(ctx, AS_OF, MARKETS, NOW)

        # Streak instalments already counted are not counted again, so that event does not even qualify.
        assert again["grant"]["qualifying"] == again["grant"]["already_decided"] == 2
        assert "granted" not in again["grant"] and "new" not in again["grant"]
        assert sum(len(v) for v in sent(ctx).values()) == 3
        assert len(platform.grants) == 1
        assert len(messages(engine)) == 3
        with engine.connect() as conn:
            assert points_balance(conn, "C2", AS_OF) == 500

    def test_the_notification_passes_the_consent_gate_with_a_decision_per_message(
        self, engine: Engine
    ) -> None:
        withdrawn = {
            "customer_key": "C2",
            "channel": "email",
            "purpose": "service",
            "status": "withdrawn",
            "captured_at": "2024-03-05T10:12:00Z",
            "withdrawn_at": "2025-01-05T10:12:00Z",
            "withdrawal_method": "unsubscribe link",
        }
        seed(engine, consents=[withdrawn])
        ctx = context(engine)

        run_rewards(ctx, AS_OF, MARKETS, NOW)

        with engine.connect() as conn:
            decisions = read_frame(
                conn, select(s.decisions.c.message_key, s.decisions.c.outcome, s.decisions.c.reason)
            ).set_index("message_key")
        assert decisions.loc["rewards:streak:C2:I3", ["outcome", "reason"]].tolist() == [
            "blocked",
            "CONSENT_WITHDRAWN",
        ]
        assert decisions.loc["rewards:back:C3:2026-11", "reason"] == "CONTRACT_BASIS"
        assert messages(engine).loc["rewards:streak:C2:I3", "status"] == "blocked"
        assert rewards(engine).loc["streak:C2:I3", "status"] == "fulfilled"
        assert "rewards:streak:C2:I3" not in {m.message_key for m in sent(ctx)["email"]}

    def test_holdout_and_budget_decide_once_and_never_overspend(self, engine: Engine) -> None:
        people = [{"customer_key": f"B{i:02d}", "email": f"b{i}@example.com"} for i in range(12)]
        renewals = [
            {"contract_key": f"BK{i:02d}", "customer_key": f"B{i:02d}", "renewed_at": f"2026-11-{10 + i:02d}"}
            for i in range(12)
        ]
        Pipeline(engine).load(raw_set(customers=people, contracts=renewals))
        ctx = context(engine, config(early_budget=30, holdout_share=0.3))

        run_rewards(ctx, AS_OF, ["DE"], NOW)
        run_rewards(ctx, AS_OF + timedelta(days=1), ["DE"], NOW)

        got = rewards(engine).sort_values("event_date")
        held = got.loc[got["status"] == "holdout"]
        treated = got.loc[got["status"] != "holdout"]
        assert 0 < len(held) < 12
        # Oldest renewals first: the first three treated ones fit the 30 EUR budget, the rest are recorded.
        assert treated["status"].tolist() == ["granted"] * 3 + ["over_budget"] * (len(treated) - 3)
        assert (got.loc[got["status"] != "granted", "cost_eur"] == 0.0).all()
        assert held["message_key"].isna().all()
        with engine.connect() as conn:
            budget = conn.execute(select(s.reward_budgets).where(s.reward_budgets.c.rule == "early")).one()
        assert (float(budget.spent), float(budget.limit_amount), budget.granted, budget.over_budget) == (
            30.0,
            30.0,
            3,
            len(treated) - 3,
        )
        # No voucher codes were imported: the granted ones wait for codes, and so do their notifications.
        assert set(messages(engine)["status"]) == {"queued"} and len(messages(engine)) == 3

    def test_a_dry_run_writes_nothing(self, sqlite_engine: Engine) -> None:
        seed(sqlite_engine)
        ctx = context(sqlite_engine)

        stats = run_rewards(ctx, AS_OF, MARKETS, NOW, dry_run=True)

        assert stats["grant"]["granted"] == 3
        assert rewards(sqlite_engine).empty and messages(sqlite_engine).empty
        with sqlite_engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(s.reward_budgets)).scalar_one() == 0


class TestVouchers:
    def test_codes_are_never_issued_twice_an_empty_pool_waits_and_unused_ones_expire(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        people = [{"customer_key": f"V{i}", "email": f"v{i}@example.com"} for i in range(3)]
        renewals = [
            {"contract_key": f"VK{i}", "customer_key": f"V{i}", "renewed_at": "2026-11-10"} for i in range(3)
        ]
        Pipeline(engine).load(raw_set(customers=people, contracts=renewals))
        first = import_vouchers(vouchers(tmp_path, "CODE-A", "CODE-B"), engine, NOW)
        ctx = context(engine)

        run_rewards(ctx, AS_OF, ["DE"], NOW)

        got = rewards(engine)
        assert first == {"read": 2, "imported": 2, "already_known": 0}
        assert sorted(got["status"]) == ["fulfilled", "fulfilled", "granted"]
        waiting = got.loc[got["status"] == "granted"].index[0]
        assert "pool early/DE is empty" in got.loc[waiting, "fulfil_error"]
        assert messages(engine).loc[f"rewards:{waiting}", "status"] == "queued"

        assert import_vouchers(vouchers(tmp_path, "CODE-A", "CODE-C", name="more.csv"), engine, NOW) == {
            "read": 2,
            "imported": 1,
            "already_known": 1,
        }
        run_rewards(ctx, AS_OF, ["DE"], NOW)

        with engine.connect() as conn:
            codes = conn.execute(select(s.voucher_codes.c.code, s.voucher_codes.c.reward_key)).all()
        holders = [k for _, k in codes]
        assert sorted(holders) == sorted(got.index) and len(set(holders)) == 3
        assert (rewards(engine)["status"] == "fulfilled").all()
        assert (messages(engine)["status"] == "sent").all()
        bodies = {m.message_key: m.body for m in sent(ctx)["email"]}
        assert sorted(re.findall(r"CODE-[ABC]", " ".join(bodies.values()))) == ["CODE-A", "CODE-B", "CODE-C"]

        run_rewards(ctx, AS_OF + timedelta(days=61), ["DE"], NOW)

        assert (rewards(engine)["status"] == "expired").all()

    def test_a_bad_voucher_file_names_the_line_and_field_and_imports_nothing(
        self, sqlite_engine: Engine, tmp_path: Path
    ) -> None:
        path = tmp_path / "bad.csv"
        path.write_text(
            "code,rule,market\nGOOD-1,early,DE\nx,early,DE\nGOOD-2,early,Germany\nGOOD-1,early,DE\n"
        )

        with pytest.raises(VoucherFileError) as err:
            import_vouchers(path, sqlite_engine, NOW)

        assert "line 3, code" in str(err.value)
        assert "line 4, market: 'Germany'" in str(err.value)
        assert "line 5, code: repeats line 2" in str(err.value)
        with sqlite_engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(s.voucher_codes)).scalar_one() == 0

    def test_a_reward_keeps_its_code_and_expired_codes_are_never_issued(
        self, sqlite_engine: Engine, tmp_path: Path
    ) -> None:
        import_vouchers(vouchers(tmp_path, "ONE-1", "TWO-2"), sqlite_engine, NOW)
        pool = SqlVoucherPool(sqlite_engine)

        expired = pool.issue("early:C0:x", "early", "DE", date(2027, 7, 1))
        first = pool.issue("early:C1:x", "early", "DE", AS_OF)
        again = pool.issue("early:C1:x", "early", "DE", AS_OF)
        other = pool.issue("early:C2:x", "early", "DE", AS_OF)
        none_left = pool.issue("early:C3:x", "early", "DE", AS_OF)

        assert expired is None
        assert first == again == "ONE-1" and other == "TWO-2" and none_left is None


class TestClawback:
    def test_reversed_payments_and_undone_renewals_are_clawed_back(self, engine: Engine) -> None:
        seed(engine)
        ctx = context(engine)
        run_rewards(ctx, AS_OF, MARKETS, NOW)  # no voucher codes: C1's reward waits, its notice stays queued
        assert messages(engine).loc["rewards:early:C1:K1:20261110", "status"] == "queued"
        assert messages(engine).loc["rewards:streak:C2:I3", "status"] == "sent"

        # The next billing sync: I2 was never paid after all (a returned direct debit), K1's renewal undone.
        Pipeline(engine).load(
            raw_set(
                contracts=[{"contract_key": "K1", "customer_key": "C1", "renewed_at": ""}],
                instalments=[
                    {"instalment_key": "I2", "contract_key": "K2", "due_date": "2026-10-01", "paid_date": ""}
                ],
            )
        )
        stats = run_rewards(ctx, AS_OF + timedelta(days=1), MARKETS, NOW + timedelta(days=1))

        got = rewards(engine)
        assert got.loc["streak:C2:I3", ["status", "clawback_reason"]].tolist() == [
            "clawed_back",
            "payment_reversed",
        ]
        assert got.loc["early:C1:K1:20261110", ["status", "clawback_reason"]].tolist() == [
            "clawed_back",
            "renewal_undone",
        ]
        assert got.loc["back:C3:2026-11", "status"] == "fulfilled"
        assert stats["claw-back"]["points_reversed"] == 500
        assert "granted" not in stats["grant"]
        with engine.connect() as conn:
            assert points_balance(conn, "C2", AS_OF) == 0
        note = messages(engine).loc["rewards:early:C1:K1:20261110"]
        assert (note["status"], note["error_code"]) == ("expired", "REWARD_VOID")
        assert "rewards:early:C1:K1:20261110" not in {m.message_key for m in sent(ctx)["email"]}


class TestPoints:
    def test_points_are_redeemed_and_expire_oldest_first(self, engine: Engine) -> None:
        seed(
            engine,
            instalments=[
                {"instalment_key": f"I{n}", "contract_key": "K2", "due_date": due, "paid_date": due}
                for n, due in ((4, "2026-06-01"), (5, "2026-07-01"), (6, "2026-08-01"))
            ],
        )
        ctx = context(engine, config(streak_lookback=400))
        run_rewards(ctx, AS_OF, ["DE"], NOW)
        with engine.begin() as conn:
            conn.execute(
                update(s.rewards)
                .where(s.rewards.c.reward_key == "streak:C2:I3")
                .values(expires_on=AS_OF + timedelta(days=10))
            )

        taken = redeem_points(engine, "C2", 200, "order-1", AS_OF, NOW)
        again = redeem_points(engine, "C2", 200, "order-1", AS_OF, NOW)
        on_last_day = run_rewards(ctx, AS_OF + timedelta(days=10), ["DE"], NOW)
        after = run_rewards(ctx, AS_OF + timedelta(days=11), ["DE"], NOW)

        assert taken == again == {"streak:C2:I3": 200}
        assert on_last_day["expire"]["expired"] == 0
        assert after["expire"] == {"expired": 1, "points_expired": 300}
        with engine.connect() as conn:
            assert points_balance(conn, "C2", AS_OF + timedelta(days=11)) == 500
        with pytest.raises(NotEnoughPoints):
            redeem_points(engine, "C2", 501, "order-2", AS_OF + timedelta(days=11), NOW)
        assert redeem_points(engine, "C2", 500, "order-3", AS_OF + timedelta(days=11), NOW) == {
            "streak:C2:I6": 500
        }
        got = rewards(engine)["status"]
        assert (got["streak:C2:I3"], got["streak:C2:I6"]) == ("redeemed", "redeemed")
        with engine.connect() as conn:
            moves = read_frame(
                conn, select(s.points_ledger.c.lot_key, s.points_ledger.c.kind, s.points_ledger.c.points)
            )
        assert sorted(map(tuple, moves.to_numpy().tolist())) == [
            ("streak:C2:I3", "earn", 500),
            ("streak:C2:I3", "expire", -300),
            ("streak:C2:I3", "redeem", -200),
            ("streak:C2:I6", "earn", 500),
            ("streak:C2:I6", "redeem", -500),
        ]


def test_the_migration_downgrades_and_upgrades_again(engine: Engine) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    with engine.connect() as conn:
        assert "rewards" not in engine.dialect.get_table_names(conn)

    upgrade(engine)

    with engine.connect() as conn:
        assert {"rewards", "reward_budgets", "voucher_codes", "points_ledger"} <= set(
            engine.dialect.get_table_names(conn)
        )


# --- the notification templates ---------------------------------------------------------------------

LANGUAGES = ("en", "de", "fr", "es", "id", "vi")
CURRENCY = {"en": "GBP", "de": "EUR", "fr": "EUR", "es": "EUR", "id": "IDR", "vi": "VND"}
PROMOTION_WORDS = {
    "en": ("offer", "discount", "save ", "cashback", "special", "promotion", "deal", "% off"),
    "de": ("angebot", "rabatt", "sparen", "aktion", "cashback", "gratis", "vorteil"),
    "fr": ("offre", "remise", "réduction", "économis", "promotion", "cashback", "gratuit"),
    "es": ("oferta", "descuento", "promoción", "cashback", "gratis", "ahorre"),
    "id": ("penawaran", "diskon", "potongan", "hemat", "promo", "cashback", "gratis"),
    "vi": ("ưu đãi", "giảm", "khuyến mãi", "khuyến mại", "quà tặng", "cashback", "miễn phí"),
}
KINDS = ("points", "voucher", "cashback")
TRIGGERS = ("early_renewal", "on_time_streak", "reactivation")


def notification_row(lang: str, kind: str, trigger: str, **changes: Any) -> dict[str, Any]:
    row = {
        "message_key": "rewards:streak:C1:I3",
        "locale": lang,
        "kind": kind,
        "trigger": trigger,
        "points": 1500 if kind == "points" else None,
        "value": {"GBP": 8, "EUR": 10, "IDR": 150000, "VND": 400000}[CURRENCY[lang]],
        "currency": CURRENCY[lang],
        "expires_on": None if kind == "cashback" else date(2027, 12, 31),
        "voucher_code": "WB-7KQ2-ZP4X-93" if kind == "voucher" else None,
        "first_name": "Anna",
        "last_name": "Huber",
    }
    return row | changes


def render(lang: str, kind: str, trigger: str, channel: str, **changes: Any) -> Any:
    ctx = reward_context(
        notification_row(lang, kind, trigger, **changes),
        company="Finora Bank",
        link_secret=HASH_KEY,
        link_base="https://go.finora.example/renew",
        unsubscribe_base="https://go.finora.example/u",
    )
    return Renderer(ROOT / "templates").render(channel, "reward_earned", lang, ctx)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_reward_notice_renders_in_every_language_without_promotion(lang: str, kind: str) -> None:
    for trigger in TRIGGERS:
        email = render(lang, kind, trigger, "email")
        sms = render(lang, kind, trigger, "sms")

        assert email.locale == sms.locale == lang
        assert email.subject and len(email.subject) <= 78
        assert "Anna" in email.body and "/rewards/" in email.body and "/rewards/" in sms.body
        assert (sms.segments or 0) <= 3
        if lang in ("en", "de"):
            assert sms.encoding == "GSM-7", sms.body
        for text in (email.subject, email.body, email.html or "", sms.body):
            assert not re.search(r"\{\{|\}\}|\{%|%\}|None", text)
            assert not re.search(r"\bSTOP\b", text) and "/u/" not in text
            assert not any(word in text.lower() for word in PROMOTION_WORDS[lang]), (lang, kind, text)
    voucher = render(lang, "voucher", "reactivation", "sms")
    assert kind != "voucher" or "WB-7KQ2-ZP4X-93" in voucher.body


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_reward_value_and_expiry_are_formatted_for_the_locale(lang: str) -> None:
    money = render(lang, "voucher", "reactivation", "email")

    amount = notification_row(lang, "voucher", "reactivation")["value"]
    assert format_money(amount, CURRENCY[lang], lang) in money.body
    assert format_long_date(date(2027, 12, 31), lang) in money.body
    assert sms_segments(render(lang, "points", "on_time_streak", "sms").body).segments <= 3


def test_the_greeting_falls_back_without_a_name_and_html_escapes_it() -> None:
    generic = render("en", "points", "on_time_streak", "email", first_name=None, last_name=None)
    hostile = render("en", "points", "on_time_streak", "email", first_name="<script>x</script>")

    assert "Dear customer" in generic.body
    assert "<script>x" not in (hostile.html or "") and "&lt;script&gt;" in (hostile.html or "")


def test_one_point_is_singular() -> None:
    one = render("en", "points", "on_time_streak", "email", points=1)
    many = render("en", "points", "on_time_streak", "email", points=2)

    assert "1 point to" in one.body and "2 points to" in many.body


def test_the_flow_takes_only_primitive_parameters() -> None:
    from flows.grant_rewards import grant_rewards

    params = grant_rewards.validate_parameters({"as_of": "2026-11-22", "markets": ["DE"], "dry_run": True})

    assert params == {"as_of": date(2026, 11, 22), "markets": ["DE"], "dry_run": True}
