"""The data contract: the canonical entities and columns every source must deliver."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Entity(StrEnum):
    """A canonical input entity; each comes from its own file or table."""

    CUSTOMERS = "customers"
    CONTRACTS = "contracts"
    INSTALMENTS = "instalments"
    ACTIVITY = "activity"
    CONSENTS = "consents"


class Product(StrEnum):
    """The kinds of contract Renewals reminds about."""

    SUBSCRIPTION = "subscription"
    LOAN = "loan"
    INSURANCE_POLICY = "insurance_policy"
    SAVINGS_PLAN = "savings_plan"


class ContractStatus(StrEnum):
    """Where a contract stands in its life."""

    ACTIVE = "active"
    RENEWED = "renewed"
    LAPSED = "lapsed"
    CANCELLED = "cancelled"


class Channel(StrEnum):
    """A contact channel."""

    EMAIL = "email"
    SMS = "sms"
    WHATSAPP = "whatsapp"


class Purpose(StrEnum):
    """Why a message is sent; it decides which lawful basis it needs."""

    SERVICE = "service"
    DUNNING = "dunning"
    MARKETING = "marketing"


class ConsentStatus(StrEnum):
    """Whether a consent record grants or withdraws permission."""

    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class LawfulBasis(StrEnum):
    """The GDPR/ePrivacy basis a consent record rests on."""

    CONSENT = "consent"
    SOFT_OPT_IN = "soft_opt_in"
    CONTRACT = "contract"
    IMPLIED = "implied"


class Kind(StrEnum):
    """How a column's raw text is parsed and checked."""

    KEY = "key"
    TEXT = "text"
    NAME = "name"
    CHOICE = "choice"
    DATE = "date"
    DATETIME = "datetime"
    MONTH = "month"
    BOOL = "bool"
    DECIMAL = "decimal"
    INT = "int"
    EMAIL = "email"
    PHONE = "phone"
    LOCALE = "locale"
    MARKET = "market"
    CURRENCY = "currency"
    TIMEZONE = "timezone"
    REGION = "region"


@dataclass(frozen=True)
class Column:
    """One column of an entity."""

    name: str
    kind: Kind
    required: bool
    description: str
    example: str
    choices: tuple[str, ...] = ()
    personal: bool = False
    non_negative: bool = False
    positive: bool = False
    default: str | None = None


@dataclass(frozen=True)
class EntitySpec:
    """The columns, key and parent of one entity."""

    entity: Entity
    description: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    parent: tuple[Entity, str] | None = None

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Return the names of the columns a source must provide."""
        return tuple(c.name for c in self.columns if c.required)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Return every column name in contract order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """Return the column called `name`."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def _choices(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


CONTRACT: dict[Entity, EntitySpec] = {
    Entity.CUSTOMERS: EntitySpec(
        Entity.CUSTOMERS,
        "One row per customer (the data subject).",
        key=("customer_key",),
        columns=(
            Column("customer_key", Kind.KEY, True, "Stable pseudonymous id from the CRM.", "C0001234"),
            Column("market", Kind.MARKET, True, "ISO 3166-1 alpha-2 market the customer is served in.", "DE"),
            Column("locale", Kind.LOCALE, True, "BCP 47 language tag for messages.", "de-AT"),
            Column(
                "timezone",
                Kind.TIMEZONE,
                False,
                "IANA time zone; defaults to the market's zone.",
                "Europe/Berlin",
            ),
            Column("first_name", Kind.NAME, False, "Given name used in salutations.", "Anna", personal=True),
            Column("last_name", Kind.NAME, False, "Family name.", "Schmidt", personal=True),
            Column("email", Kind.EMAIL, False, "Email address.", "anna@example.com", personal=True),
            Column(
                "phone",
                Kind.PHONE,
                False,
                "Mobile number, any format; normalised to E.164 with the market as region.",
                "0151 23456789",
                personal=True,
            ),
            Column("customer_since", Kind.DATE, False, "Date the relationship began.", "2019-04-01"),
            Column(
                "region",
                Kind.REGION,
                False,
                "ISO 3166-2 subdivision (state) when local rules differ, e.g. US-FL.",
                "US-FL",
            ),
        ),
    ),
    Entity.CONTRACTS: EntitySpec(
        Entity.CONTRACTS,
        "One row per contract whose term can end and be renewed.",
        key=("contract_key",),
        parent=(Entity.CUSTOMERS, "customer_key"),
        columns=(
            Column("contract_key", Kind.KEY, True, "Stable id from billing.", "K0004321"),
            Column("customer_key", Kind.KEY, True, "The customer who holds the contract.", "C0001234"),
            Column("product", Kind.CHOICE, True, "Kind of contract.", "loan", choices=_choices(Product)),
            Column(
                "status",
                Kind.CHOICE,
                False,
                "Lifecycle status.",
                "active",
                choices=_choices(ContractStatus),
                default=ContractStatus.ACTIVE.value,
            ),
            Column("start_date", Kind.DATE, False, "Start of the current term.", "2025-12-01"),
            Column("term_end", Kind.DATE, True, "Last day of the current term.", "2026-12-01"),
            Column(
                "auto_renew",
                Kind.BOOL,
                False,
                "Renews automatically unless cancelled.",
                "true",
                default="false",
            ),
            Column("price", Kind.DECIMAL, True, "Price of the next term.", "119.90", non_negative=True),
            Column("currency", Kind.CURRENCY, True, "ISO 4217 currency of price.", "EUR"),
            Column("renewed_at", Kind.DATE, False, "When the customer renewed, if they did.", ""),
        ),
    ),
    Entity.INSTALMENTS: EntitySpec(
        Entity.INSTALMENTS,
        "One row per scheduled payment on a contract.",
        key=("instalment_key",),
        parent=(Entity.CONTRACTS, "contract_key"),
        columns=(
            Column("instalment_key", Kind.KEY, True, "Stable id from billing.", "I00098765"),
            Column("contract_key", Kind.KEY, True, "The contract the payment belongs to.", "K0004321"),
            Column("due_date", Kind.DATE, True, "Date the payment is due.", "2026-11-01"),
            Column("amount", Kind.DECIMAL, True, "Amount due.", "250.00", positive=True),
            Column("currency", Kind.CURRENCY, True, "ISO 4217 currency of amount.", "EUR"),
            Column("paid_date", Kind.DATE, False, "Date it was paid in full; empty while unpaid.", ""),
        ),
    ),
    Entity.ACTIVITY: EntitySpec(
        Entity.ACTIVITY,
        "One row per customer and calendar month of account activity.",
        key=("customer_key", "month"),
        parent=(Entity.CUSTOMERS, "customer_key"),
        columns=(
            Column("customer_key", Kind.KEY, True, "The customer.", "C0001234"),
            Column("month", Kind.MONTH, True, "Calendar month, YYYY-MM.", "2026-10"),
            Column("transactions", Kind.INT, True, "Transactions in that month.", "7", non_negative=True),
            Column(
                "last_active", Kind.DATE, False, "Last day with any activity, as of that month.", "2026-10-28"
            ),
        ),
    ),
    Entity.CONSENTS: EntitySpec(
        Entity.CONSENTS,
        "One row per consent or objection the CRM holds, with its evidence (GDPR Art. 7(1)).",
        key=("customer_key", "channel", "purpose", "controller"),
        parent=(Entity.CUSTOMERS, "customer_key"),
        columns=(
            Column("customer_key", Kind.KEY, True, "The customer.", "C0001234"),
            Column(
                "channel", Kind.CHOICE, True, "Channel the record covers.", "email", choices=_choices(Channel)
            ),
            Column(
                "purpose",
                Kind.CHOICE,
                True,
                "Purpose the record covers.",
                "marketing",
                choices=_choices(Purpose),
            ),
            Column(
                "status",
                Kind.CHOICE,
                True,
                "granted, or withdrawn (objection / opt-out).",
                "granted",
                choices=_choices(ConsentStatus),
            ),
            Column(
                "captured_at",
                Kind.DATETIME,
                True,
                "When it was given (UTC, ISO 8601).",
                "2024-03-05T10:12:00Z",
            ),
            Column(
                "lawful_basis",
                Kind.CHOICE,
                False,
                "Basis the record evidences.",
                "consent",
                choices=_choices(LawfulBasis),
                default=LawfulBasis.CONSENT.value,
            ),
            Column(
                "source",
                Kind.TEXT,
                False,
                "Where it was captured (form id, app screen, keyword).",
                "web:signup",
            ),
            Column("text_version", Kind.TEXT, False, "Version of the consent text shown.", "mkt-email-v3"),
            Column("doi_confirmed_at", Kind.DATETIME, False, "Double opt-in confirmation time.", ""),
            Column("withdrawn_at", Kind.DATETIME, False, "When it was withdrawn.", ""),
            Column("withdrawal_method", Kind.TEXT, False, "How it was withdrawn (link, STOP, letter).", ""),
            Column("sale_reference", Kind.TEXT, False, "Sale or contract id a soft opt-in rests on.", ""),
            Column(
                "notice_version", Kind.TEXT, False, "Opt-out notice shown at collection (soft opt-in).", ""
            ),
            Column("expires_at", Kind.DATETIME, False, "Expiry where a market sets one (CASL implied).", ""),
            Column("controller", Kind.TEXT, False, "Legal entity the consent was given to.", "", default=""),
            Column(
                "bundled",
                Kind.BOOL,
                False,
                "Captured only by accepting terms and conditions (not freely given).",
                "false",
                default="false",
            ),
            Column(
                "written",
                Kind.BOOL,
                False,
                "Prior express written consent (US TCPA) with a signature on record.",
                "false",
                default="false",
            ),
        ),
    ),
}

ENTITY_ORDER: tuple[Entity, ...] = (
    Entity.CUSTOMERS,
    Entity.CONTRACTS,
    Entity.INSTALMENTS,
    Entity.ACTIVITY,
    Entity.CONSENTS,
)


def contract_tables_markdown() -> str:
    """Return the column tables of docs/data-contract.md, generated from CONTRACT."""
    out: list[str] = []
    for entity in ENTITY_ORDER:
        spec = CONTRACT[entity]
        out.append(f"### `{entity.value}`\n")
        out.append(f"{spec.description} Key: {', '.join(f'`{k}`' for k in spec.key)}.")
        if spec.parent is not None:
            out.append(f" Each row belongs to a row of `{spec.parent[0].value}` through `{spec.parent[1]}`.")
        out.append("\n\n| column | required | kind | meaning | example |\n|---|---|---|---|---|\n")
        for col in spec.columns:
            kind = col.kind.value + (f": {' / '.join(col.choices)}" if col.choices else "")
            if col.non_negative:
                kind += ", >= 0"
            if col.positive:
                kind += ", > 0"
            if col.default is not None:
                kind += f", default `{col.default or '(empty)'}`"
            meaning = col.description + (" Personal data." if col.personal else "")
            example = f"`{col.example}`" if col.example else ""
            out.append(
                f"| `{col.name}` | {'yes' if col.required else 'no'} | {kind} | {meaning} | {example} |\n"
            )
        out.append("\n")
    return "".join(out).rstrip() + "\n"
