"""Concurrent grant runs and voucher issuers on PostgreSQL: no overspent budget, nothing given twice."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select

import tasks.rewards as rewards_module
from config.rewards_loader import RewardConfig
from tasks.rewards import SqlVoucherPool, grant_rewards, import_vouchers, open_rewards_cycle
from tasks.store import schema as s
from tests.integration.test_rewards import NOW, config, context, rewards, vouchers
from tests.support.factories import raw_set
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.postgres


def test_concurrent_grant_runs_never_overspend_or_grant_twice(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = [{"customer_key": f"R{i:02d}", "email": f"r{i}@example.com"} for i in range(40)]
    renewals = [
        {"contract_key": f"RK{i:02d}", "customer_key": f"R{i:02d}", "renewed_at": f"2026-11-{1 + i // 2:02d}"}
        for i in range(40)
    ]
    Pipeline(pg_engine).load(raw_set(customers=people, contracts=renewals))
    base = config(early_budget=70)
    # A 4-day lookback gives each run its own 10 renewals, all paid from one budget row (rule, DE, 2026-11):
    # alone, every run would grant 7.
    narrow = RewardConfig((replace(base.rules[0], lookback_days=4),), base.fx)
    ctx = context(pg_engine, narrow)
    with pg_engine.begin() as conn:
        cycle_id = open_rewards_cycle(conn, ctx.config, date(2026, 11, 20), ["DE"], False, None)
        # An earlier run opened the month's budget row, so the runs race on it rather than on creating it.
        conn.execute(
            insert(s.reward_budgets).values(
                rule="early",
                market="DE",
                month=date(2026, 11, 1),
                currency="EUR",
                limit_amount=70,
                spent=0,
                updated_at=NOW,
            )
        )
    decide = rewards_module.decide

    def slow_decide(*args: Any) -> pd.Series:
        # Widen the window between reading the budget and writing it, where a race would overspend.
        time.sleep(0.05)
        return decide(*args)

    monkeypatch.setattr(rewards_module, "decide", slow_decide)
    days = [date(2026, 11, 5), date(2026, 11, 10), date(2026, 11, 15), date(2026, 11, 20)] * 2
    start = threading.Barrier(len(days))

    def run(day: date) -> dict[str, Any]:
        start.wait()
        return grant_rewards(ctx, cycle_id, day, ["DE"], NOW, False)

    with ThreadPoolExecutor(len(days)) as pool:
        results = list(pool.map(run, days))

    got = rewards(pg_engine)
    granted = got.loc[got["status"] == "granted"]
    with pg_engine.connect() as conn:
        budget = conn.execute(select(s.reward_budgets).where(s.reward_budgets.c.rule == "early")).one()
        notes = conn.execute(select(s.messages.c.message_key).where(s.messages.c.playbook == "rewards")).all()
    assert len(got) == 40 and got["customer_key"].is_unique
    assert len(granted) == 7 and granted["value"].sum() == 70.0
    assert (float(budget.spent), budget.granted, budget.over_budget) == (70.0, 7, 33)
    assert sorted(n for (n,) in notes) == sorted(f"rewards:{k}" for k in granted.index)
    assert sum(r["by_rule"]["early"].get("new", 0) for r in results) == 40
    # Whichever run took the lock first granted 7 of its own 10; the others found the budget spent.
    assert granted["event_date"].map(lambda d: (d.day - 1) // 5).nunique() == 1


def test_concurrent_voucher_issuers_never_hand_out_a_code_twice(pg_engine: Engine, tmp_path: Path) -> None:
    import_vouchers(vouchers(tmp_path, *(f"RACE-{i:03d}" for i in range(60))), pg_engine, NOW)
    shared = [f"early:S{i}:x" for i in range(10)]
    plans = [shared + [f"early:{who}{i}:x" for i in range(40)] for who in ("A", "B", "C")]
    start = threading.Barrier(len(plans))
    pool = SqlVoucherPool(pg_engine)

    def issue(keys: list[str]) -> dict[str, str | None]:
        start.wait()
        return {key: pool.issue(key, "early", "DE", date(2026, 11, 22)) for key in keys}

    with ThreadPoolExecutor(len(plans)) as executor:
        answers = list(executor.map(issue, plans))

    holders: dict[str, set[str]] = defaultdict(set)
    for answer in answers:
        for key, code in answer.items():
            if code is not None:
                holders[code].add(key)
    assert all(len(keys) == 1 for keys in holders.values())
    assert len(holders) == 60
    for key in shared:
        codes = {answer[key] for answer in answers}
        assert len(codes) == 1 and None not in codes
    with pg_engine.connect() as conn:
        rows = conn.execute(select(s.voucher_codes.c.code, s.voucher_codes.c.reward_key)).all()
    issued = {code: key for code, key in rows if key is not None}
    assert len(issued) == 60 and len(set(issued.values())) == 60
    assert {code: next(iter(keys)) for code, keys in holders.items()} == issued
