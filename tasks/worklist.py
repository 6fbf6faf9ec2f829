"""The specialist's worklist: customers the cycle escalates, sorted by value at risk, with reasons in words.

Sources: late ladder steps (from the playbooks' `escalate: true` steps), high-risk high-value renewals,
service or dunning messages that could not be delivered or are in doubt, and STOP replies. Rows carry
customer keys and reasons only; contact details appear only in the CSV a specialist exports.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, false, or_, select

from tasks.domain.playbook import Playbook
from tasks.domain.worklist import WorklistConfig
from tasks.explain import scorecard_in_words
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.columns import read_columns
from tasks.store.repository import utcnow

NOT_REACHED = ["failed", "undelivered", "bounced", "dropped", "in_doubt"]
COLUMNS = (
    "customer_key",
    "market",
    "owner",
    "reason",
    "detail",
    "contract_key",
    "value_at_risk_eur",
    "risk_score",
    "risk_band",
    "risk_in_words",
)


def _fx(rates: Mapping[str, Any], currency: pd.Series, amount: pd.Series) -> pd.Series:
    # Object first: an Arrow-string column of an empty cycle would map to strings, not rates.
    rate = currency.astype("object").map({k: float(v) for k, v in rates.items()}).astype("float64")
    return (amount.astype("float64") * rate).round(2)


def _segments(conn: Connection, cycle_id: int, eur_per_unit: Mapping[str, Any], where: Any) -> pd.DataFrame:
    """Return the cycle's segment rows that match `where`, with each contract's value in EUR."""
    sa_, ct = s.segment_assignments, s.contracts
    # Text as Arrow strings: the high-risk rows of a large portfolio are tens of thousands.
    frame = read_columns(
        conn,
        select(
            sa_.c.customer_key,
            sa_.c.contract_key,
            sa_.c.market,
            sa_.c.segment,
            sa_.c.risk_score,
            sa_.c.risk_band,
            ct.c.price,
            ct.c.currency,
        )
        .join(ct, ct.c.contract_key == sa_.c.contract_key)
        .where(sa_.c.cycle_id == cycle_id, where),
    )
    frame["value_eur"] = _fx(eur_per_unit, frame["currency"], frame["price"])
    return frame


def _segments_of(
    conn: Connection, cycle_id: int, eur_per_unit: Mapping[str, Any], column: Any, keys: Any
) -> pd.DataFrame:
    """Return the cycle's segment rows whose `column` is one of `keys`, read in chunks of keys."""
    wanted = pd.Series(keys, dtype="object").dropna().drop_duplicates().tolist()
    # Reading every segment row of the cycle (1.35M at 1M customers) cost the summary ~600 MB.
    frames = [
        _segments(conn, cycle_id, eur_per_unit, column.in_(wanted[start : start + 5000]))
        for start in range(0, len(wanted), 5000)
    ]
    return (
        pd.concat(frames, ignore_index=True) if frames else _segments(conn, cycle_id, eur_per_unit, false())
    )


def _risk_in_words(conn: Connection, cycle_id: int, contract_keys: list[str]) -> dict[str, str]:
    """Return the risk in words of the escalated contracts, read for those alone (not the whole cycle)."""
    sa_ = s.segment_assignments
    words: dict[str, str] = {}
    for start in range(0, len(contract_keys), 5000):
        rows = read_frame(
            conn,
            select(
                sa_.c.contract_key,
                sa_.c.risk_score,
                sa_.c.risk_band,
                sa_.c.risk_factors,
                sa_.c.risk_reasons,
                sa_.c.model_version,
                sa_.c.profiling_objection,
            ).where(sa_.c.cycle_id == cycle_id, sa_.c.contract_key.in_(contract_keys[start : start + 5000])),
        ).drop_duplicates("contract_key")
        for row in rows.to_dict("records"):
            words[str(row["contract_key"])] = scorecard_in_words({str(k): v for k, v in row.items()})
    return words


def build_worklist(
    conn: Connection,
    cycle_id: int,
    playbooks: Sequence[Playbook],
    config: WorklistConfig,
    eur_per_unit: Mapping[str, Any],
    since: datetime,
) -> pd.DataFrame:
    """Return the cycle's escalations, one row per customer and reason, highest value at risk first."""
    m, sa_, inst, cons = s.messages, s.segment_assignments, s.instalments, s.consents
    rows: list[pd.DataFrame] = []

    escalating = {(b.id, st.id) for b in playbooks for st in b.steps if st.escalate}
    msgs = read_frame(
        conn,
        select(
            m.c.customer_key,
            m.c.contract_key,
            m.c.market,
            m.c.playbook,
            m.c.step,
            m.c.channel,
            m.c.purpose,
            m.c.status,
            m.c.error_code,
            m.c.anchor_date,
            m.c.message_key,
        ).where(
            m.c.cycle_id == cycle_id,
            # Only the rows the worklist can escalate: the cycle has hundreds of thousands of messages.
            or_(
                *(and_(m.c.playbook == p, m.c.step == st) for p, st in sorted(escalating)),
                and_(m.c.status.in_(NOT_REACHED), m.c.purpose.in_(["service", "dunning"])),
            ),
        ),
    )
    if not msgs.empty:
        late = msgs.loc[[(p, st) in escalating for p, st in zip(msgs["playbook"], msgs["step"], strict=True)]]
        late = late.drop_duplicates(["customer_key", "contract_key", "step"])
        if not late.empty:
            keys = late["message_key"].str.split(":").str[-4]
            amounts = read_frame(
                conn,
                select(inst.c.instalment_key, inst.c.amount, inst.c.currency).where(
                    inst.c.instalment_key.in_(keys.unique().tolist())
                ),
            ).set_index("instalment_key")
            value = _fx(eur_per_unit, keys.map(amounts["currency"]), keys.map(amounts["amount"]))
            rows.append(
                pd.DataFrame(
                    {
                        "customer_key": late["customer_key"],
                        "contract_key": late["contract_key"],
                        "market": late["market"],
                        "reason": "late payment",
                        "detail": "instalment due "
                        + pd.to_datetime(late["anchor_date"]).dt.strftime("%Y-%m-%d")
                        + " reached step "
                        + late["step"],
                        "value_at_risk_eur": value.to_numpy(),
                    }
                )
            )
        failed = msgs.loc[msgs["status"].isin(NOT_REACHED) & msgs["purpose"].isin(["service", "dunning"])]
        if not failed.empty:
            rows.append(
                pd.DataFrame(
                    {
                        "customer_key": failed["customer_key"],
                        "contract_key": failed["contract_key"],
                        "market": failed["market"],
                        "reason": "not reached",
                        "detail": failed["channel"]
                        + " "
                        + failed["status"]
                        + failed["error_code"].fillna("").map(lambda c: f" ({c})" if c else ""),
                        "value_at_risk_eur": failed["contract_key"].map(
                            _segments_of(
                                conn, cycle_id, eur_per_unit, sa_.c.contract_key, failed["contract_key"]
                            ).set_index("contract_key")["value_eur"]
                        ),
                    }
                )
            )
    high = _segments(conn, cycle_id, eur_per_unit, sa_.c.segment == "renewal_due_high_risk")
    risky = high.loc[high["value_eur"] >= config.high_value_eur]
    if not risky.empty:
        rows.append(
            pd.DataFrame(
                {
                    "customer_key": risky["customer_key"],
                    "contract_key": risky["contract_key"],
                    "market": risky["market"],
                    "reason": "renewal at risk",
                    "detail": "high renewal risk, high value, renewal due",
                    "value_at_risk_eur": risky["value_eur"],
                }
            )
        )
    stops = read_frame(
        conn,
        select(cons.c.customer_key, cons.c.channel, cons.c.origin).where(
            cons.c.origin.in_(["sms_reply", "whatsapp_reply", "provider_optout"]),
            cons.c.status == "withdrawn",
            cons.c.recorded_at >= since,
            cons.c.customer_key.in_(select(sa_.c.customer_key).where(sa_.c.cycle_id == cycle_id)),
        ),
    ).drop_duplicates(["customer_key", "channel"])
    if not stops.empty:
        theirs = _segments_of(conn, cycle_id, eur_per_unit, sa_.c.customer_key, stops["customer_key"])
        # Contract key breaks a tie in value, so the same contract is named whatever order rows come in.
        best = theirs.sort_values(["value_eur", "contract_key"], ascending=[False, True]).drop_duplicates(
            "customer_key"
        )
        by_customer = best.set_index("customer_key")
        rows.append(
            pd.DataFrame(
                {
                    "customer_key": stops["customer_key"],
                    "contract_key": stops["customer_key"].map(by_customer["contract_key"]),
                    "market": stops["customer_key"].map(by_customer["market"]),
                    "reason": "replied STOP",
                    "detail": "opted out of " + stops["channel"],
                    "value_at_risk_eur": stops["customer_key"].map(by_customer["value_eur"]),
                }
            )
        )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    out = pd.concat(rows, ignore_index=True)
    escalated = out["contract_key"].dropna().unique()
    risk = _segments_of(conn, cycle_id, eur_per_unit, sa_.c.contract_key, escalated).set_index("contract_key")
    out["risk_score"] = out["contract_key"].map(risk["risk_score"])
    out["risk_band"] = out["contract_key"].map(risk["risk_band"])
    words = _risk_in_words(conn, cycle_id, out["contract_key"].dropna().unique().tolist())
    out["risk_in_words"] = out["contract_key"].map(words).fillna("")
    out["owner"] = out["market"].map(config.owners).fillna(config.default_owner)
    out = out.sort_values(["value_at_risk_eur", "customer_key"], ascending=[False, True], na_position="last")
    return out[list(COLUMNS)].reset_index(drop=True)


def filter_worklist(frame: pd.DataFrame, market: str | None, owner: str | None) -> pd.DataFrame:
    """Return the rows of one market and/or owner."""
    out = frame
    if market:
        out = out.loc[out["market"] == market.upper()]
    if owner:
        out = out.loc[out["owner"] == owner]
    return out.reset_index(drop=True)


def export_csv(conn: Connection, frame: pd.DataFrame, path: Path, with_contacts: bool) -> Path:
    """Write the worklist as CSV; contact details only when the specialist asks for them."""
    out = frame.copy()
    if with_contacts and not out.empty:
        c = s.customers
        contacts = read_frame(
            conn,
            select(c.c.customer_key, c.c.first_name, c.c.last_name, c.c.email, c.c.phone_e164).where(
                c.c.customer_key.in_(out["customer_key"].unique().tolist())
            ),
        ).set_index("customer_key")
        for column in ("first_name", "last_name", "email", "phone_e164"):
            out[column] = out["customer_key"].map(contacts[column])
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    if with_contacts:
        path.chmod(0o600)
    return path


def recent(days: int = 7) -> datetime:
    """Return the start of the look-back window for STOP replies."""
    return utcnow() - timedelta(days=days)
