"""SQLAlchemy Core schema; Alembic migrations in migrations/ are generated from and checked against it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)

from tasks.store.sharding import key_hash_column

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


def key_type(length: int = 64) -> String:
    """Return the type of a key column: text compared byte by byte on PostgreSQL (collation "C").

    Keys are identifiers, compared for equality and walked in some fixed order, never shown sorted;
    under a libc collation such as C.UTF-8 PostgreSQL sorts text through strcoll, without
    abbreviated keys: an index on 14.7M instalment keys took 9.5 s to build, 6.1 s with "C". Every
    key column has it, since a join of a "C" column to a default one could not use the other's index.
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")


UtcTime = DateTime(timezone=True)

customers = Table(
    "customers",
    metadata,
    Column("customer_key", key_type(), primary_key=True),
    Column("market", String(2), nullable=False),
    Column("locale", String(35), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("first_name", String(200)),
    Column("last_name", String(200)),
    Column("email", String(320)),
    Column("phone_e164", String(20)),
    Column("customer_since", Date),
    Column("region", String(8)),
    Column("erased_at", UtcTime),
    Column("row_hash", String(32), nullable=False),
    Column("loaded_at", UtcTime, nullable=False),
    key_hash_column(),
)

contracts = Table(
    "contracts",
    metadata,
    Column("contract_key", key_type(), primary_key=True),
    Column("customer_key", key_type(), nullable=False, index=True),
    Column("product", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("start_date", Date),
    Column("term_end", Date, nullable=False),
    Column("auto_renew", Boolean, nullable=False),
    Column("price", Numeric(14, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("renewed_at", Date),
    Column("retention_basis", String(100)),
    Column("row_hash", String(32), nullable=False),
    Column("loaded_at", UtcTime, nullable=False),
)

instalments = Table(
    "instalments",
    metadata,
    Column("instalment_key", key_type(), primary_key=True),
    Column("contract_key", key_type(), nullable=False, index=True),
    Column("due_date", Date, nullable=False),
    Column("amount", Numeric(14, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("paid_date", Date),
    Column("retention_basis", String(100)),
    Column("row_hash", String(32), nullable=False),
    Column("loaded_at", UtcTime, nullable=False),
)

activity = Table(
    "activity",
    metadata,
    Column("customer_key", key_type(), primary_key=True),
    Column("month", Date, primary_key=True),
    Column("transactions", Integer, nullable=False),
    Column("last_active", Date),
    Column("row_hash", String(32), nullable=False),
    Column("loaded_at", UtcTime, nullable=False),
)

# History, never overwritten: a changed CRM record or a STOP/unsubscribe event adds a row; the
# current state per (customer, channel, purpose, controller) is the latest effective one.
consents = Table(
    "consents",
    metadata,
    Column("consent_id", Id, primary_key=True, autoincrement=True),
    Column("customer_key", key_type(), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("controller", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("lawful_basis", String(16), nullable=False),
    Column("captured_at", UtcTime, nullable=False),
    Column("source", String(200)),
    Column("text_version", String(100)),
    Column("doi_confirmed_at", UtcTime),
    Column("withdrawn_at", UtcTime),
    Column("withdrawal_method", String(100)),
    Column("sale_reference", String(100)),
    Column("notice_version", String(100)),
    Column("expires_at", UtcTime),
    Column("bundled", Boolean, nullable=False, server_default="0"),
    Column("written", Boolean, nullable=False, server_default="0"),
    Column("origin", String(32), nullable=False),
    Column("retention_basis", String(100)),
    Column("row_hash", String(32), nullable=False),
    Column("recorded_at", UtcTime, nullable=False),
    Index("ix_consents_current", "customer_key", "channel", "purpose", "controller"),
)

# Keyed hashes of addresses that must never be contacted again (survive erasure, block re-imports).
suppressions = Table(
    "suppressions",
    metadata,
    Column("identifier_hash", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("retention_basis", String(100)),
    Column("created_at", UtcTime, nullable=False),
)

cycles = Table(
    "cycles",
    metadata,
    Column("cycle_id", Id, primary_key=True, autoincrement=True),
    Column("flow_run_id", String(64)),
    Column("as_of", Date, nullable=False),
    Column("markets", String(200), nullable=False),
    Column("playbook", String(64), nullable=False),
    Column("playbook_version", Integer, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UtcTime, nullable=False),
    Column("finished_at", UtcTime),
    Column("summary", JSON),
)

segment_assignments = Table(
    "segment_assignments",
    metadata,
    Column("cycle_id", BigInteger, primary_key=True),
    Column("contract_key", key_type(), primary_key=True),
    Column("customer_key", key_type(), nullable=False),
    Column("market", String(2), nullable=False),
    Column("product", String(32), nullable=False),
    Column("days_to_term_end", Integer, nullable=False),
    Column("renewal_window", String(16), nullable=False),
    Column("dpd", Integer, nullable=False),
    Column("dpd_bucket", String(16), nullable=False),
    Column("inactive", Boolean, nullable=False),
    Column("tenure_years", Float, nullable=False),
    Column("late_payments_12m", Integer, nullable=False),
    Column("transactions_per_month", Float, nullable=False),
    Column("risk_score", Integer, nullable=False),
    Column("risk_band", String(8), nullable=False),
    Column("risk_factors", String(200), nullable=False),
    Column("segment", String(32), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("profiling_objection", Boolean, nullable=False, server_default="0"),
    # The score's top reasons in plain words (a model's or the scorecard's); empty on rows before 0005.
    Column("risk_reasons", Text),
    key_hash_column(),
)

holdouts = Table(
    "holdouts",
    metadata,
    Column("cycle_id", BigInteger, primary_key=True),
    Column("playbook", String(64), primary_key=True),
    Column("contract_key", key_type(), primary_key=True),
    Column("step", String(32), primary_key=True),
    Column("customer_key", key_type(), nullable=False),
    Column("anchor_date", Date, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("message_key", key_type(200), primary_key=True),
    Column("cycle_id", BigInteger, nullable=False, index=True),
    Column("playbook", String(64), nullable=False),
    Column("contract_key", key_type(), nullable=False),
    Column("customer_key", key_type(), nullable=False, index=True),
    Column("market", String(2), nullable=False),
    Column("step", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("send_rule", String(8), nullable=False),
    Column("template", String(64), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("anchor_date", Date, nullable=False),
    Column("has_offer", Boolean, nullable=False, server_default="0"),
    Column("recipient", String(24), nullable=False, server_default="customer"),
    Column("status", String(16), nullable=False, index=True),
    Column("deferred_until", UtcTime),
    Column("offer_removed", Boolean, nullable=False, server_default="0"),
    Column("locale", String(35)),
    Column("subject", Text),
    Column("body", Text),
    Column("body_html", Text),
    Column("encoding", String(8)),
    Column("segments", Integer),
    Column("template_variables", JSON),
    Column("provider", String(32)),
    Column("provider_message_id", String(100)),
    Column("error_code", String(32)),
    Column("error_class", String(16)),
    Column("error_detail", String(500)),
    Column("cost", Numeric(12, 5)),
    Column("cost_currency", String(3)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("planned_at", UtcTime, nullable=False),
    Column("rendered_at", UtcTime),
    Column("claimed_at", UtcTime),
    Column("claimed_by", BigInteger),
    Column("delivered_at", UtcTime),
    Column("sent_at", UtcTime),
    Column("retention_basis", String(100)),
    Column("updated_at", UtcTime, nullable=False),
    key_hash_column(),
    # Dispatch claims the cycle's rendered messages in customer order, a batch at a time: walking
    # this index finds a batch in a few milliseconds, where the status and cycle indexes made each
    # claim collect and sort every rendered message of the cycle (migration 0009).
    Index(
        "ix_messages_claim",
        "cycle_id",
        "customer_key",
        postgresql_where=text("status = 'rendered'"),
        sqlite_where=text("status = 'rendered'"),
    ),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", Id, primary_key=True, autoincrement=True),
    Column("message_key", key_type(200), nullable=False, index=True),
    Column("cycle_id", BigInteger, nullable=False, index=True),
    Column("customer_key", key_type(), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("stage", String(8), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("rule_ids", String(200), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("consent_id", BigInteger),
    Column("deferred_until", UtcTime),
    Column("offer_removed", Boolean, nullable=False, server_default="0"),
    Column("effective_purpose", String(16)),
    Column("notes", String(500)),
    Column("decided_at", UtcTime, nullable=False),
)

# Delivery events from provider webhooks (Twilio status callbacks, SendGrid events), deduplicated by
# the provider's event id; they carry no contact data.
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("event_id", String(120), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("message_key", key_type(200), index=True),
    Column("provider_message_id", String(100)),
    Column("event", String(32), nullable=False),
    Column("error_code", String(32)),
    Column("applied", Boolean, nullable=False),
    Column("occurred_at", UtcTime),
    Column("received_at", UtcTime, nullable=False),
)

# Every distinct set of gate rules gets a version; decisions cite it, so any decision can be replayed
# against exactly the rules that produced it.
policy_versions = Table(
    "policy_versions",
    metadata,
    Column("policy_version", String(64), primary_key=True),
    Column("gate_version", String(32), nullable=False),
    Column("rules", JSON, nullable=False),
    Column("first_used_at", UtcTime, nullable=False),
)

# Data-subject requests (GDPR Art. 15 access, Art. 17 erasure) with their legal deadline.
dsr_requests = Table(
    "dsr_requests",
    metadata,
    Column("request_id", Id, primary_key=True, autoincrement=True),
    Column("customer_key", key_type(), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("received_at", UtcTime, nullable=False),
    Column("deadline", Date, nullable=False),
    Column("completed_at", UtcTime),
    Column("status", String(16), nullable=False),
    Column("result", JSON),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("quarantine_id", Id, primary_key=True, autoincrement=True),
    Column("cycle_id", BigInteger, index=True),
    Column("entity", String(32), nullable=False),
    Column("source", String(500), nullable=False),
    Column("line", Integer, nullable=False),
    Column("record_key", key_type(200)),
    Column("field", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", String(500), nullable=False),
    Column("raw", JSON),
    Column("created_at", UtcTime, nullable=False),
)

# Append-only: triggers created by the migration refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", Id, primary_key=True, autoincrement=True),
    Column("at", UtcTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(64), nullable=False),
    Column("cycle_id", BigInteger),
    Column("subject_type", String(32)),
    Column("subject_key", key_type(200)),
    Column("details", JSON),
)

# --- rewards (grant-rewards flow) ---

# The reward ledger: one row per (customer, rule, qualifying event), written before anything is fulfilled,
# so a rerun grants nothing twice. Holdout and over_budget rows record the decision and give nothing
# (cost_eur 0; value and currency say what it would have been).
rewards = Table(
    "rewards",
    metadata,
    Column("reward_key", key_type(200), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("customer_key", key_type(), nullable=False, index=True),
    Column("market", String(2), nullable=False),
    Column("contract_key", key_type()),
    Column("event_key", key_type(120), nullable=False),
    Column("event_date", Date, nullable=False),
    Column("evidence", JSON),
    Column("kind", String(16), nullable=False),
    Column("fulfilment", String(16), nullable=False),
    Column("points", Integer),
    Column("value", Numeric(18, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("cost_eur", Numeric(14, 2), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("budget_month", Date),
    Column("granted_at", UtcTime, nullable=False),
    Column("expires_on", Date),
    Column("fulfilled_at", UtcTime),
    Column("fulfilment_ref", String(120)),
    Column("fulfil_attempts", Integer, nullable=False, server_default="0"),
    Column("fulfil_error", String(500)),
    Column("redeemed_at", UtcTime),
    Column("expired_at", UtcTime),
    Column("clawed_back_at", UtcTime),
    Column("clawback_reason", String(64)),
    Column("clawback_synced_at", UtcTime),
    Column("message_key", key_type(200)),
    Column("cycle_id", BigInteger, index=True),
    Column("run_id", String(32), nullable=False, index=True),
    Column("updated_at", UtcTime, nullable=False),
)

# One row per rule, market and month: the grant transaction locks it (SELECT ... FOR UPDATE) and only
# raises `spent` when the new total stays within `limit_amount`, so concurrent runs never overspend.
reward_budgets = Table(
    "reward_budgets",
    metadata,
    Column("rule", String(64), primary_key=True),
    Column("market", String(2), primary_key=True),
    Column("month", Date, primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("limit_amount", Numeric(18, 2), nullable=False),
    Column("spent", Numeric(18, 2), nullable=False),
    Column("granted", Integer, nullable=False, server_default="0"),
    Column("over_budget", Integer, nullable=False, server_default="0"),
    Column("updated_at", UtcTime, nullable=False),
)

# Imported voucher codes; a code is issued by setting reward_key, which is unique, so no reward holds
# two codes and no code serves two rewards.
voucher_codes = Table(
    "voucher_codes",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("market", String(2), nullable=False),
    Column("valid_until", Date),
    Column("source", String(500), nullable=False),
    Column("imported_at", UtcTime, nullable=False),
    Column("reward_key", key_type(200), unique=True),
    Column("issued_at", UtcTime),
    Index("ix_voucher_codes_pool", "rule", "market"),
)

# Points movements per lot (the reward that earned them): earn +, redeem/expire/clawback -. A lot's
# balance is the sum of its rows; the unique entry key makes every movement idempotent.
points_ledger = Table(
    "points_ledger",
    metadata,
    Column("entry_id", Id, primary_key=True, autoincrement=True),
    Column("customer_key", key_type(), nullable=False, index=True),
    Column("lot_key", key_type(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("points", Integer, nullable=False),
    Column("reference", String(200), nullable=False),
    Column("created_at", UtcTime, nullable=False),
    Index("uq_points_ledger_entry", "lot_key", "kind", "reference", unique=True),
)

# --- risk models (train-risk-models flow) ---

# Every trained risk model with the evidence of how good it is and its pickled artifact. The cycle scores
# with the one `active` row of a kind; the partial unique index makes a second active row impossible even
# when two promotions race.
model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("algorithm", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("flow_run_id", String(64)),
    Column("as_of", Date, nullable=False),
    Column("trained_at", UtcTime, nullable=False),
    Column("train_from", Date, nullable=False),
    Column("train_to", Date, nullable=False),
    Column("validation_from", Date, nullable=False),
    Column("validation_to", Date, nullable=False),
    Column("n_train", Integer, nullable=False),
    Column("n_validation", Integer, nullable=False),
    Column("base_rate_train", Float, nullable=False),
    Column("base_rate_validation", Float, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("comparison", JSON),
    Column("calibration", JSON, nullable=False),
    Column("top_features", JSON, nullable=False),
    Column("features", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("report_md", Text, nullable=False),
    Column("artifact", LargeBinary, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("activated_at", UtcTime),
    Column("retired_at", UtcTime),
    Index(
        "uq_model_versions_active",
        "kind",
        unique=True,
        postgresql_where=text("status = 'active'"),
        sqlite_where=text("status = 'active'"),
    ),
)
