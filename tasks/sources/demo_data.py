"""Demo portfolio: a deterministic, multi-market data set that follows the contract, plus a few dirty rows."""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
from pandas.api.extensions import ExtensionArray
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, ContractStatus, Entity, Product
from tasks.domain.markets import Market
from tasks.sources.validation import canonical_locale

Array = np.ndarray[Any, Any]
Text = ExtensionArray

_MARKET_WEIGHTS = {"DE": 0.30, "FR": 0.20, "ES": 0.15, "GB": 0.15, "ID": 0.08, "VN": 0.07, "SG": 0.05}
_OTHER_MARKET_WEIGHT = 0.05

_PRODUCTS = tuple(p.value for p in Product)
_SUB, _LOAN, _INS, _SAV = range(4)
_PRODUCT_MIX = {
    "DE": (0.30, 0.20, 0.30, 0.20),
    "FR": (0.30, 0.25, 0.30, 0.15),
    "ES": (0.30, 0.30, 0.25, 0.15),
    "GB": (0.35, 0.25, 0.25, 0.15),
    "ID": (0.25, 0.45, 0.20, 0.10),
    "VN": (0.25, 0.45, 0.20, 0.10),
    "SG": (0.30, 0.20, 0.30, 0.20),
}
_OTHER_PRODUCT_MIX = (0.30, 0.25, 0.30, 0.15)
# Rough units per euro, so a loan or a premium has the same real size in every market.
_UNITS_PER_EUR = {"EUR": 1.0, "GBP": 0.86, "SGD": 1.45, "IDR": 17_000.0, "VND": 27_000.0}
_SUBSCRIPTION_PRICES = np.array([59.9, 79.9, 99.9, 119.9, 149.9, 199.9, 249.9])
_SAVINGS_MONTHLY = np.array([25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0])
_LOAN_MONTHS = np.array([12, 24, 36, 48, 60])
# History depth: enough for the decision points of the past terms that ended in the last year or so.
_INSTALMENT_MONTHS = 15
_ACTIVITY_MONTHS = 15
# How much likelier a term is to lapse, in log-odds, by product (sub, loan, ins, sav) and market.
_LAPSE_BY_PRODUCT = np.array([0.4, 0.8, -0.6, -0.3])
_LAPSE_BY_MARKET = {"DE": -0.4, "FR": 0.0, "ES": 0.2, "GB": 0.5, "ID": 0.4, "VN": 0.4, "SG": 0.1}
_TYPICAL_EUR = np.array([110.0, 8_000.0, 380.0, 1_200.0])
_FADE_DAYS = 150
_STATUSES = tuple(s.value for s in ContractStatus)
_ACTIVE = _STATUSES.index(ContractStatus.ACTIVE.value)
_RENEWED = _STATUSES.index(ContractStatus.RENEWED.value)
_LAPSED = _STATUSES.index(ContractStatus.LAPSED.value)
_CANCELLED = _STATUSES.index(ContractStatus.CANCELLED.value)

_EXTRA_ZONES = {"ES": ("Atlantic/Canary",), "ID": ("Asia/Makassar", "Asia/Jayapura")}
_SOFT_OPT_IN_MARKETS = ("DE", "ES", "FR", "GB")
_DOI_MARKETS = ("DE",)
_EMAIL_DOMAINS = ("@example.com", "@example.net", "@example.org")

# Consent slots in key order (channel, purpose), so a customer-by-slot grid flattens to sorted rows.
_SLOTS = (("email", "marketing"), ("sms", "marketing"), ("sms", "service"), ("whatsapp", "marketing"))
_SLOT_SOURCES = (
    ("web:signup", "app:settings", "branch:paper", "web:newsletter"),
    ("web:signup", "app:settings", "branch:paper", "sms:keyword"),
    ("branch:paper", "app:settings", "branch:paper", "web:contact"),
    ("app:settings", "whatsapp:optin", "web:signup", "app:settings"),
)
_SLOT_METHODS = (("link", "letter"), ("STOP", "letter"), ("letter", "STOP"), ("STOP", "letter"))

_PHONE_STEMS = 128
# NANP regions cannot tell mobile from fixed line, so there a mobile number has the combined type.
_SMS_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
_PHONE_FORMAT_SHARES = (0.45, 0.25, 0.15, 0.15)

_DIRTY_KINDS = (
    "phone_short",
    "phone_landline",
    "phone_letters",
    "locale",
    "unsafe_name",
    "dup_customer_same",
    "dup_customer_conflict",
    "missing_term_end",
    "negative_price",
    "dup_contract_same",
    "dup_contract_conflict",
    "negative_instalment",
)
_BAD_LOCALES = ("xx-XX", "klingon", "de_DE_old", "tlh")
_UNSAFE_NAMES = ("<b>Anna</b>", "<script>x</script>", "{{ 7*7 }}", "{% raw %}")
_LETTER_PHONES = ("call me later", "n/a", "unknown")

_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "DE": (
        (
            "Anna", "Lukas", "Sophie", "Jonas", "Marie", "Felix", "Lena", "Maximilian", "Katharina", "Jürgen",
            "Sabine", "Thomas", "Jörg", "Björn", "Sören", "Günther", "Uwe", "Käthe", "Stefan", "Andrea",
            "Matthias", "Birgit", "Leonie", "Tobias", "Julia", "Paul", "Michael", "Jana", "Hannes", "Özlem",
            "Mehmet", "Ayşe", "Emre", "Frauke", "Dörte",
        ),
        (
            "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
            "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
            "Schwarz", "Zimmermann", "Braun", "Krüger", "Hartmann", "Lange", "Werner", "Krause", "Lehmann",
            "Köhler", "Jäger", "Groß", "Weiß", "Yılmaz", "Kaya", "Öztürk", "Böhm", "Vogel",
        ),
    ),
    "FR": (
        (
            "Camille", "Louis", "Léa", "Hugo", "Chloé", "Lucas", "Manon", "Théo", "Émilie", "Jérôme",
            "Hélène", "Clément", "Zoé", "Françoise", "Noémie", "Gaëlle", "Anaïs", "Loïc", "Benoît", "Cédric",
            "Jean-Luc", "Marie-Claire", "Julien", "Nicolas", "Sophie", "Pierre", "Élodie", "Mélanie",
            "Raphaël", "Inès", "Amélie", "Céline",
        ),
        (
            "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
            "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
            "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert", "Bonnet",
            "François", "Legrand", "Garnier", "Faure", "Rousseau", "Guérin", "Chevalier", "Lévêque",
            "Le Gall",
        ),
    ),
    "ES": (
        (
            "María", "José", "Lucía", "Javier", "Carmen", "Ángel", "Sofía", "Jesús", "Íñigo", "Begoña",
            "Nuria", "Raúl", "Martín", "Andrés", "Inés", "Álvaro", "Rubén", "Mónica", "Pilar", "Joaquín",
            "Iñaki", "Noelia", "Óscar", "Elena", "Pablo", "Marta", "Laura", "Alejandro", "Cristina", "Jordi",
            "Montserrat", "Núria",
        ),
        (
            "García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez",
            "Martín", "Jiménez", "Ruiz", "Hernández", "Díaz", "Moreno", "Muñoz", "Álvarez", "Romero",
            "Alonso", "Gutiérrez", "Navarro", "Torres", "Domínguez", "Vázquez", "Ramos", "Serrano", "Blanco",
            "Molina", "Ortiz", "Núñez", "Iglesias", "Puig", "Ferrer", "Peña",
        ),
    ),
    "GB": (
        (
            "Oliver", "Amelia", "Harry", "Isla", "George", "Ava", "Jack", "Emily", "Charlie", "Sophie",
            "Thomas", "Grace", "James", "Lily", "William", "Freya", "Daniel", "Chloe", "Mohammed", "Aisha",
            "Siobhan", "Niamh", "Rhys", "Eilidh", "Callum", "Priya", "Zoë", "Seán", "Bethan", "Hamish",
        ),
        (
            "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson",
            "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green",
            "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Cooper", "Morgan",
            "O'Brien", "O'Connor", "McDonald", "Khan", "Singh", "Ahmed",
        ),
    ),
    "ID": (
        (
            "Budi", "Siti", "Agus", "Dewi", "Rina", "Eko", "Sri", "Putri", "Ahmad", "Nur", "Wahyu", "Andi",
            "Fitri", "Hendra", "Indah", "Joko", "Kartika", "Made", "Nyoman", "Rizky", "Dian", "Yusuf", "Ayu",
            "Bayu", "Citra", "Dimas", "Gita", "Intan", "Reza", "Teguh", "Wulan", "Fajar",
        ),
        (
            "Santoso", "Wijaya", "Saputra", "Hidayat", "Kurniawan", "Pratama", "Setiawan", "Susanto",
            "Gunawan", "Nugroho", "Siregar", "Nasution", "Lubis", "Harahap", "Simanjuntak", "Halim", "Wibowo",
            "Purnomo", "Rahman", "Hakim", "Putra", "Permana", "Utomo", "Lestari", "Firmansyah", "Ramadhan",
        ),
    ),
    "VN": (
        (
            "Anh", "Minh", "Hương", "Thảo", "Linh", "Tuấn", "Dũng", "Hùng", "Lan", "Mai", "Ngọc", "Quang",
            "Trang", "Hải", "Phương", "Long", "Thu Hà", "Bảo", "Khánh", "Đức", "Huy", "Nam", "Thị Hồng",
            "Văn Thành", "Hiếu", "Yến", "Nhung", "Tâm", "Sơn", "Thị Mai",
        ),
        (
            "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ",
            "Ngô", "Dương", "Lý", "Đinh", "Trịnh", "Mai", "Tô",
        ),
    ),
    "SG": (
        (
            "Wei Ling", "Jun Jie", "Mei Ling", "Hui Min", "Kai Wen", "Siew Mei", "Xin Yi", "Zhi Hao", "Nurul",
            "Siti", "Muhammad", "Aisyah", "Farid", "Priya", "Arjun", "Ravi", "Kavitha", "Rajesh", "Daniel",
            "Rachel", "Jonathan", "Sarah", "Ryan", "Chloe", "Marcus", "Joanne", "Benjamin", "Grace",
        ),
        (
            "Tan", "Lim", "Lee", "Ng", "Ong", "Wong", "Goh", "Chua", "Chan", "Koh", "Teo", "Ang", "Yeo",
            "Tay", "Ho", "Low", "Toh", "Sim", "Chong", "Abdullah", "Rahman", "Ismail", "Hassan", "Yusof",
            "Kumar", "Pillai", "Nair", "Singh", "Krishnan",
        ),
    ),
}  # fmt: skip
_SINGLE_NAME_SHARE = {"ID": 0.30}
_DOUBLE_SURNAME_SHARE = {"ES": 0.60}

_ASCII_FOLD = str.maketrans(
    {"ß": "ss", "đ": "d", "Đ": "D", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "ł": "l", "ı": "i"}
)
_GERMAN_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
_SINGLE_NAME_SHARE = {"ID": 0.30}
_DOUBLE_SURNAME_SHARE = {"ES": 0.60}


@dataclass(frozen=True)
class _People:
    market: Array
    risk: Array
    since: Array
    first: Array
    last: Array
    second: Array
    has_email: Array
    has_phone: Array
    drift: Array


@dataclass(frozen=True)
class _Book:
    customer: Array
    product: Array
    status: Array
    start: Array
    term_end: Array
    auto_renew: Array
    price: Array
    renewed_at: Array
    months: Array
    current: Array
    primary: Array


@dataclass(frozen=True)
class _Plan:
    contract: Array
    due: Array
    paid: Array
    amount: Array
    count: Array


def generate_portfolio(
    customers: int,
    seed: int,
    as_of: date,
    markets: Mapping[str, Market],
    dirty_share: float = 0.01,
) -> dict[Entity, pd.DataFrame]:
    """Return one text DataFrame per entity (columns in contract order, every value a str, "" for empty)."""
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if not markets:
        raise ValueError("at least one market is required")
    if not 0.0 <= dirty_share <= 0.5:
        raise ValueError("dirty_share must be between 0 and 0.5")
    rng = np.random.default_rng(seed)
    today = int(np.datetime64(as_of, "D").astype(np.int64))
    world = [markets[code] for code in sorted(markets)]

    people = _people(rng, customers, today, world)
    book = _book(rng, people, today, world)
    since = _settle_since(rng, people, book)
    plan = _instalments(rng, people, book, world, today)
    dirty = _pick_dirty(rng, customers, dirty_share, plan.count[book.primary] > 0)
    customer_keys = _keys("C", customers, 7)
    contract_keys = _keys("K", len(book.customer), 7)

    # Biggest first, while little else is alive, to keep the peak memory down.
    instalments = _instalment_frame(plan, book, people, contract_keys, world, dirty)
    del plan
    contracts = _contract_frame(rng, book, people, contract_keys, customer_keys, world, dirty)
    primary = book.primary
    lapse = _last_lapse(book, customers)
    del book
    customer_frame = _customer_frame(rng, people, since, customer_keys, world, dirty)
    activity = _activity_frame(rng, people, since, lapse, customer_keys, today)
    consents = _consent_frame(rng, people, since, primary, customer_keys, contract_keys, world, today)
    return {
        Entity.CUSTOMERS: customer_frame,
        Entity.CONTRACTS: contracts,
        Entity.INSTALMENTS: instalments,
        Entity.ACTIVITY: activity,
        Entity.CONSENTS: consents,
    }


def write_portfolio(
    frames: Mapping[Entity, pd.DataFrame], out_dir: Path, fmt: str = "csv"
) -> dict[Entity, Path]:
    """Write customers.csv, contracts.csv, ... (or .parquet) into out_dir; return the paths."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[Entity, Path] = {}
    for entity in ENTITY_ORDER:
        if entity not in frames:
            continue
        path = out_dir / f"{entity.value}.{fmt}"
        if fmt == "csv":
            frames[entity].to_csv(path, index=False, lineterminator="\n", encoding="utf-8")
        else:
            frames[entity].to_parquet(path, index=False)
        paths[entity] = path
    return paths


# Text is built as small tables of distinct strings plus integer codes, then expanded with Arrow-backed
# takes: numpy unicode arrays would cost 4 bytes a character and millions of Python strings far more.


def _take(table: Sequence[str], codes: Array) -> Text:
    """Return table[codes] as a pandas string array."""
    return pd.array(np.asarray(table, dtype=object), dtype="str").take(np.asarray(codes, dtype=np.int64))


def _join(*parts: Text) -> Text:
    out = pd.Series(parts[0], copy=False)
    for part in parts[1:]:
        out = out + pd.Series(part, copy=False)
    joined: Text = out.array
    return joined


def _blank(values: Text, keep: Array) -> Text:
    """Return `values` with "" wherever `keep` is false."""
    kept: Text = pd.Series(values, copy=False).where(keep, "").array
    return kept


def _overwrite(values: Text, positions: Array, new: Sequence[str] | Array) -> Text:
    if not len(positions):
        return values
    out = values.copy()
    out[np.asarray(positions)] = list(new)
    return out


def _empty(length: int) -> Text:
    return _take([""], np.zeros(length, dtype=np.int64))


def _cycle(options: Sequence[str], count: int) -> list[str]:
    return [options[i % len(options)] for i in range(count)]


@lru_cache(maxsize=1)
def _four_digits() -> tuple[str, ...]:
    return tuple(f"{i:04d}" for i in range(10_000))


def _keys(prefix: str, count: int, width: int) -> Text:
    """Return prefix + zero-padded 1..count, built from two small tables so millions of keys stay cheap."""
    width = max(width, len(str(count)), 5)
    numbers = np.arange(1, count + 1, dtype=np.int64)
    high = [f"{prefix}{h:0{width - 4}d}" for h in range(count // 10_000 + 1)]
    return _join(_take(high, numbers // 10_000), _take(_four_digits(), numbers % 10_000))


def _dates(days: Array, present: Array | None = None) -> Text:
    """Return YYYY-MM-DD for each day number (days since 1970-01-01), "" where not present."""
    if present is None:
        present = np.ones(len(days), dtype=bool)
    if not present.any():
        return _empty(len(days))
    low, high = int(days[present].min()), int(days[present].max())
    table = ["", *np.arange(low, high + 1).astype("datetime64[D]").astype(str).tolist()]
    return _take(table, np.where(present, days - low + 1, 0))


@lru_cache(maxsize=1)
def _clock() -> tuple[str, ...]:
    return ("",) + tuple(f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86_400))


def _datetimes(seconds: Array, present: Array) -> Text:
    """Return ISO 8601 UTC date-times ("2024-03-05T10:12:00Z") for epoch seconds, "" where not present."""
    day = seconds // 86_400
    return _join(_dates(day, present), _take(_clock(), np.where(present, seconds - day * 86_400 + 1, 0)))


def _money_codes(cents: Array) -> tuple[list[str], Array]:
    """Return the distinct amounts written with two decimals ("119.90", "-5.00") and each value's code."""
    distinct, codes = np.unique(np.asarray(cents, dtype=np.int64), return_inverse=True)
    return [_amount(c) for c in distinct.tolist()], codes.ravel()


def _amount(cents: int) -> str:
    return f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _money(cents: Array) -> Text:
    table, codes = _money_codes(cents)
    return _take(table, codes)


def _frame(entity: Entity, columns: Mapping[str, Text]) -> pd.DataFrame:
    """Return the entity's columns in contract order; columns not given are all empty."""
    length = len(next(iter(columns.values())))
    data = {
        name: columns[name] if name in columns else _empty(length) for name in CONTRACT[entity].column_names
    }
    return pd.DataFrame(data, copy=False)


def _with_copies(rng: np.random.Generator, n: int, same: Array, conflict: Array) -> tuple[Array, Array]:
    """Return each output row's source row and where the conflicting copies landed.

    Copies of the `same` and `conflict` rows are slipped in at random (seeded) positions.
    """
    extra = np.concatenate([same, conflict]).astype(np.int64)
    slots = rng.integers(0, n + 1, size=len(extra))
    order = np.argsort(np.concatenate([np.arange(n) * 2 + 1, slots * 2]), kind="stable")
    source = np.concatenate([np.arange(n), extra])[order]
    conflicting = np.concatenate([np.zeros(n + len(same), dtype=bool), np.ones(len(conflict), dtype=bool)])
    return source, np.flatnonzero(conflicting[order])


def _month_of(days: Array) -> Array:
    return np.asarray(days).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def _month_start(months: Array) -> Array:
    return np.asarray(months).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


def _shift_months(days: Array, months: Array | int) -> Array:
    """Return the same day of the month `months` later, clipped to that month's last day."""
    month = _month_of(days)
    target = month + months
    length = _month_start(target + 1) - _month_start(target)
    return np.asarray(_month_start(target) + np.minimum(days - _month_start(month), length - 1))


def _sigmoid(x: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _offsets(sizes: Sequence[int]) -> Array:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _within(rng: np.random.Generator, groups: Array, sizes: Array, skew: float = 1.0) -> Array:
    """Return a random index below each row's group size, favouring low indices when skew > 1."""
    picked = (rng.random(len(groups)) ** skew * sizes[groups]).astype(np.int64)
    return np.asarray(np.minimum(picked, sizes[groups] - 1))


def _fold(name: str, german: bool) -> str:
    """Return the lower-case ASCII form of a name, as people type it into an email address."""
    if german:
        name = name.translate(_GERMAN_FOLD)
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(ch for ch in decomposed.lower() if ch.isascii() and ch.isalnum())


def _phone_number(country_code: int, national: str) -> PhoneNumber:
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    zeros = len(national) - len(national.lstrip("0"))
    if zeros:
        number.italian_leading_zero = True
        number.number_of_leading_zeros = zeros
    return number


def _is_mobile(number: PhoneNumber, region: str) -> bool:
    """Return whether the number is a valid mobile of `region` itself, not of a region sharing its code."""
    return bool(
        phonenumbers.number_type(number) in _SMS_TYPES
        and phonenumbers.is_valid_number(number)
        and phonenumbers.region_code_for_number(number) == region
    )


def _phone_forms(number: PhoneNumber) -> tuple[str, ...]:
    national = str(phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL))
    return (
        national,
        str(phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)),
        str(phonenumbers.format_number(number, PhoneNumberFormat.E164)),
        "".join(ch for ch in national if ch.isdigit()),
    )


def _last_two_digits(text: str) -> tuple[int, int]:
    where = [i for i, ch in enumerate(text) if ch.isdigit()]
    return where[-2], where[-1]


def _with_tail(text: str, tail: str) -> str:
    first, second = _last_two_digits(text)
    return text[:first] + tail[0] + text[first + 1 : second] + tail[1] + text[second + 1 :]


@cache
def _phone_pool(region: str) -> tuple[tuple[str, ...], ...]:
    """Return the written forms of mobile stems whose 100 two-digit endings are all valid mobile numbers.

    Every ending of every stem is checked here, so filling in the last two digits at random later
    can never produce an invalid or non-mobile number.
    """
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if example is None:
        return ()
    country_code = int(example.country_code or 0)
    national = str(phonenumbers.national_significant_number(example))
    if len(national) < 5:
        return ()
    # Seeded by the region, not the portfolio seed, so the expensive check runs once per process.
    rng = np.random.default_rng(zlib.crc32(region.encode()))
    pool: list[tuple[str, ...]] = []
    tried: set[str] = set()
    for _ in range(_PHONE_STEMS * 200):
        if len(pool) == _PHONE_STEMS:
            break
        stem = national[0] + "".join(str(d) for d in rng.integers(0, 10, size=len(national) - 3))
        if stem in tried:
            continue
        tried.add(stem)
        if not _is_mobile(_phone_number(country_code, stem + "00"), region):
            continue
        if not all(_is_mobile(_phone_number(country_code, f"{stem}{k:02d}"), region) for k in range(1, 100)):
            continue
        forms = _phone_forms(_phone_number(country_code, stem + "00"))
        if _phone_forms(_phone_number(country_code, stem + "57")) != tuple(
            _with_tail(f, "57") for f in forms
        ):
            continue
        pool.append(forms)
    return tuple(pool)


@cache
def _landline(region: str) -> str:
    """Return a valid fixed-line (so not SMS-capable) number in national format."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.FIXED_LINE)
    if example is None or phonenumbers.number_type(example) != PhoneNumberType.FIXED_LINE:
        return "12345"
    return str(phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL))


def _phones(rng: np.random.Generator, market: Array, world: Sequence[Market]) -> Text:
    """Return one mobile number per customer, written in a mix of national and international formats."""
    n = len(market)
    pools = [_phone_pool(m.phone_region) for m in world]
    sizes = np.array([len(p) for p in pools])
    flat = [form for pool in pools for stem in pool for form in stem]
    if not flat:
        return _empty(n)
    width = max(len(f) for f in flat)
    templates = (
        np.array([f.encode() for f in flat], dtype=f"S{width}").view(np.uint8).reshape(len(flat), width)
    )
    places = np.array([_last_two_digits(f) for f in flat], dtype=np.int64)
    stem = _offsets(sizes.tolist())[market] + _within(rng, market, np.maximum(sizes, 1))
    form = rng.choice(len(_PHONE_FORMAT_SHARES), size=n, p=_PHONE_FORMAT_SHARES)
    row = np.minimum(stem, len(flat) // len(_PHONE_FORMAT_SHARES) - 1) * len(_PHONE_FORMAT_SHARES) + form
    tail = rng.integers(0, 100, size=n)
    grid = templates[row]
    everyone = np.arange(n)
    grid[everyone, places[row, 0]] = 48 + tail // 10
    grid[everyone, places[row, 1]] = 48 + tail % 10
    text = pd.array(grid.view(f"S{width}").ravel().astype(str), dtype="str")
    return _blank(text, sizes[market] > 0)


def _market_counts(n: int, world: Sequence[Market]) -> Array:
    """Return how many customers each market gets: by weight, and every market once n allows it."""
    weights = np.array([_MARKET_WEIGHTS.get(m.code, _OTHER_MARKET_WEIGHT) for m in world])
    share = weights / weights.sum() * n
    counts = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    if n >= len(world):
        for i in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return np.asarray(counts)


def _name_tables(world: Sequence[Market]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    firsts = [_NAMES.get(m.code, _NAMES["GB"])[0] for m in world]
    lasts = [_NAMES.get(m.code, _NAMES["GB"])[1] for m in world]
    return firsts, lasts


def _people(rng: np.random.Generator, n: int, today: int, world: Sequence[Market]) -> _People:
    """Return each customer's market, latent risk, tenure and name, drawn per market."""
    codes = [m.code for m in world]
    market = rng.permutation(np.repeat(np.arange(len(world)), _market_counts(n, world)))
    risk = rng.standard_normal(n)
    years = rng.exponential(3.2, size=n) * np.exp(-0.2 * risk)
    since = today - np.clip(np.round(years * 365.25), 30, 12 * 365).astype(np.int64)

    firsts, lasts = _name_tables(world)
    first_sizes = np.array([len(t) for t in firsts])
    last_sizes = np.array([len(t) for t in lasts])
    first = _offsets(first_sizes.tolist())[market] + _within(rng, market, first_sizes, 1.4)
    last = _offsets(last_sizes.tolist())[market] + _within(rng, market, last_sizes, 1.4)
    second = _offsets(last_sizes.tolist())[market] + _within(rng, market, last_sizes, 1.4)
    single = rng.random(n) < np.array([_SINGLE_NAME_SHARE.get(c, 0.0) for c in codes])[market]
    double = rng.random(n) < np.array([_DOUBLE_SURNAME_SHARE.get(c, 0.0) for c in codes])[market]
    return _People(
        market=market,
        risk=risk,
        since=since,
        first=first,
        last=np.where(single, -1, last),
        second=np.where(double & ~single & (second != last), second, -1),
        has_email=rng.random(n) >= 0.05,
        has_phone=rng.random(n) >= 0.08,
        # How fast the customer is drifting away: their activity fades and their terms lapse more.
        drift=rng.standard_normal(n),
    )


def _customer_frame(
    rng: np.random.Generator,
    people: _People,
    since: Array,
    keys: Text,
    world: Sequence[Market],
    dirty: Mapping[str, Array],
) -> pd.DataFrame:
    firsts, lasts = _name_tables(world)
    first_all = [s for t in firsts for s in t]
    last_all = ["", *(s for t in lasts for s in t)]
    last = _join(
        _take(last_all, people.last + 1),
        _take(["", " "], (people.second >= 0).astype(np.int64)),
        _take(last_all, people.second + 1),
    )
    unsafe = dirty["unsafe_name"]
    on_last = rng.random(len(unsafe)) < 0.3
    names = np.array(_cycle(_UNSAFE_NAMES, len(unsafe)), dtype=object)

    landlines = np.array([_landline(m.phone_region) for m in world], dtype=object)
    phone = _blank(_phones(rng, people.market, world), people.has_phone)
    phone = _overwrite(phone, dirty["phone_short"], ["12345"] * len(dirty["phone_short"]))
    phone = _overwrite(phone, dirty["phone_landline"], landlines[people.market[dirty["phone_landline"]]])
    phone = _overwrite(phone, dirty["phone_letters"], _cycle(_LETTER_PHONES, len(dirty["phone_letters"])))

    frame = _frame(
        Entity.CUSTOMERS,
        {
            "customer_key": keys,
            "market": _take([m.code for m in world], people.market),
            "locale": _overwrite(
                _locales(rng, people.market, world),
                dirty["locale"],
                _cycle(_BAD_LOCALES, len(dirty["locale"])),
            ),
            "timezone": _zones(rng, people.market, world),
            "first_name": _overwrite(_take(first_all, people.first), unsafe[~on_last], names[~on_last]),
            "last_name": _overwrite(last, unsafe[on_last], names[on_last]),
            "email": _blank(_emails(rng, people, world), people.has_email),
            "phone": phone,
            "customer_since": _dates(since),
        },
    )
    source, conflicts = _with_copies(
        rng, len(frame), dirty["dup_customer_same"], dirty["dup_customer_conflict"]
    )
    frame = frame.take(source).reset_index(drop=True)
    # A second CRM record for the same key that disagrees on the address: every copy is suspect.
    email = frame["email"].array
    changed = [f"new.{email[i]}" if email[i] else "changed@example.com" for i in conflicts]
    frame["email"] = _overwrite(email, conflicts, changed)
    return frame


def _emails(rng: np.random.Generator, people: _People, world: Sequence[Market]) -> Text:
    """Return addresses on reserved domains, built from the folded names plus a number."""
    n = len(people.market)
    firsts, lasts = _name_tables(world)
    codes = [m.code for m in world]
    first_fold = [_fold(s, c == "DE") for c, t in zip(codes, firsts, strict=True) for s in t]
    last_fold = [_fold(s, c == "DE") for c, t in zip(codes, lasts, strict=True) for s in t]
    table = ["", ".", "_", *first_fold, *last_fold, *(s[:1] for s in first_fold)]
    dot, underscore, first_at = 1, 2, 3
    last_at = first_at + len(first_fold)
    initial_at = last_at + len(last_fold)

    first = first_at + people.first
    initial = initial_at + people.first
    last = np.where(people.last >= 0, last_at + people.last, 0)
    second = np.where(people.second >= 0, last_at + people.second, 0)
    pattern = np.where(people.last >= 0, rng.integers(0, 4, size=n), 4)
    head = np.choose(pattern, [first, initial, first, last, first])
    head_more = np.where(pattern == 3, second, 0)
    sep = np.choose(pattern, [dot, 0, underscore, dot, 0])
    tail = np.choose(pattern, [last, last, last, first, 0])
    tail_more = np.where(pattern < 3, second, 0)

    numbers = [str(i) for i in range(2006)]
    number = np.where(rng.random(n) < 0.4, rng.integers(1950, 2006, size=n), rng.integers(1, 1000, size=n))
    domain = rng.choice(len(_EMAIL_DOMAINS), size=n, p=[0.6, 0.25, 0.15])
    return _join(
        _take(table, head),
        _take(table, head_more),
        _take(table, sep),
        _take(table, tail),
        _take(table, tail_more),
        _take(numbers, number),
        _take(_EMAIL_DOMAINS, domain),
    )


def _locales(rng: np.random.Generator, market: Array, world: Sequence[Market]) -> Text:
    """Return mostly each market's default locale, some of its others, a few written non-canonically."""
    table: list[str] = []
    offsets, sizes = [], []
    for m in world:
        # Only tags the validator accepts: a market may list one Babel lacks (tr-DE, en-VN).
        tags = dict.fromkeys((m.default_locale, *m.locales))
        known = [tag for tag in tags if canonical_locale(tag)] or ["en"]
        offsets.append(len(table))
        sizes.append(len(known))
        table.extend(known)
        table.extend(tag.lower().replace("-", "_") for tag in known)
    size = np.array(sizes)[market]
    other = rng.random(len(market)) < 0.14
    choice = np.where(other & (size > 1), 1 + _within(rng, market, np.maximum(np.array(sizes) - 1, 1)), 0)
    sloppy = rng.random(len(market)) < 0.03
    return _take(table, np.array(offsets)[market] + choice + sloppy * size)


def _zones(rng: np.random.Generator, market: Array, world: Sequence[Market]) -> Text:
    """Return an explicit zone for a few customers; the validator defaults the rest from the market."""
    tables = [(m.timezone, *_EXTRA_ZONES.get(m.code, ())) for m in world]
    sizes = np.array([len(t) for t in tables])
    table = ["", *(z for t in tables for z in t)]
    regional = (rng.random(len(market)) < 0.3) & (sizes[market] > 1)
    pick = np.where(regional, 1 + _within(rng, market, np.maximum(sizes - 1, 1)), 0)
    filled = rng.random(len(market)) < 0.04
    return _take(table, np.where(filled, 1 + _offsets(sizes.tolist())[market] + pick, 0))


def _products(rng: np.random.Generator, market: Array, world: Sequence[Market]) -> Array:
    cdf = np.cumsum([_PRODUCT_MIX.get(m.code, _OTHER_PRODUCT_MIX) for m in world], axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(market))
    return np.asarray(np.minimum((u[:, None] > cdf[market]).sum(axis=1), len(_PRODUCTS) - 1))


def _prices(rng: np.random.Generator, product: Array, units_per_eur: Array) -> Array:
    """Return a price in cents whose size fits the product and the currency."""
    n = len(product)
    eur = np.select(
        [product == _SUB, product == _LOAN, product == _INS],
        [
            _SUBSCRIPTION_PRICES[rng.integers(0, len(_SUBSCRIPTION_PRICES), size=n)],
            np.exp(rng.normal(np.log(8_000), 0.8, size=n)).clip(500, 60_000),
            np.exp(rng.normal(np.log(380), 0.6, size=n)).clip(60, 3_000),
        ],
        12 * _SAVINGS_MONTHLY[rng.integers(0, len(_SAVINGS_MONTHLY), size=n)],
    )
    local = eur * units_per_eur
    cents = np.select(
        [units_per_eur >= 1_000, product == _LOAN, product == _SAV],
        [np.round(local / 1_000) * 100_000, np.round(local / 100) * 10_000, np.round(local) * 100],
        np.maximum(np.round(local), 1) * 100 - 10,
    )
    return np.maximum(cents, 100).astype(np.int64)


def _book(rng: np.random.Generator, people: _People, today: int, world: Sequence[Market]) -> _Book:
    """Return every contract row: 1-3 current terms per customer and up to three past ones before them."""
    n = len(people.market)
    risk = people.risk
    units = np.array([_UNITS_PER_EUR.get(m.currency, 1.0) for m in world])[people.market]

    current_count = rng.choice(3, size=n, p=[0.68, 0.24, 0.08]) + 1
    product = np.stack([_products(rng, people.market, world) for _ in range(3)], axis=1)
    soon = rng.random((n, 3)) < 0.35
    term_end = today + np.where(soon, rng.integers(-5, 46, size=(n, 3)), rng.integers(46, 401, size=(n, 3)))
    loan_months = _LOAN_MONTHS[rng.choice(len(_LOAN_MONTHS), size=(n, 3), p=[0.2, 0.3, 0.25, 0.1, 0.15])]
    months = np.select(
        [product == _LOAN, product == _SAV], [loan_months, 12 + 12 * (rng.random((n, 3)) < 0.3)], 12
    )
    # A term ending more than a year out started last year only if it is longer than a year.
    months = np.where(_shift_months(term_end, -months) > today, months + 12, months)
    start = _shift_months(term_end, -months)
    propensity = -0.25 - 0.8 * risk + 0.6 * rng.standard_normal(n)
    product_lean = np.array([0.2, -1.2, 0.4, 0.6])
    auto = rng.random((n, 3)) < _sigmoid(propensity[:, None] + product_lean[product])
    status = np.where(rng.random((n, 3)) < 0.03, _CANCELLED, _ACTIVE)
    price = _prices(rng, product.ravel(), np.repeat(units, 3)).reshape(n, 3)

    ago = np.arange(3, 0, -1)
    # Past terms ended 1 to 37 months ago, so the newest ones fall inside the payment and activity history.
    past_end = today - 30 - 365 * (ago[None, :] - 1) - rng.integers(0, 365, size=(n, 3))
    past_start = _shift_months(past_end, -12)
    past_present = (past_start >= people.since[:, None]) & (rng.random((n, 3)) < 0.9)
    # A past term is mostly an earlier term of the main contract, otherwise some other product.
    past_product = np.where(
        rng.random((n, 3)) < 0.6, product[:, :1], _products(rng, people.market, world)[:, None]
    )
    past_auto = rng.random((n, 3)) < _sigmoid(propensity[:, None] + product_lean[past_product])
    fresh = _prices(rng, past_product.ravel(), np.repeat(units, 3)).reshape(n, 3)
    past_price = np.where(past_product == product[:, :1], price[:, :1], fresh) * (0.97 ** ago[None, :])
    past_price = np.maximum(np.round(past_price / 100) * 100, 100).astype(np.int64)
    # Whether a term lapsed: the customer's latent risk, loyalty and drift, the term's auto-renewal, product,
    # price and market, and tenure, all with noise. The scorecard sees only some of these, and coarsely;
    # loyalty shows only in how the customer's earlier terms ended.
    loyalty = rng.standard_normal(n)
    market_lean = np.array([_LAPSE_BY_MARKET.get(m.code, 0.0) for m in world])
    relative_price = np.log(past_price / 100 / units[:, None] / _TYPICAL_EUR[past_product])
    tenure = np.clip((past_end - people.since[:, None]) / 365.25, 0, 10)
    lapse_odds = (
        -0.7
        + 0.7 * risk[:, None]
        - 0.9 * loyalty[:, None]
        + 0.5 * people.drift[:, None]
        - 1.1 * past_auto
        + _LAPSE_BY_PRODUCT[past_product]
        + market_lean[people.market][:, None]
        + 0.4 * relative_price
        - 0.05 * tenure
        + 0.8 * rng.standard_normal((n, 3))
    )
    lapsed = rng.random((n, 3)) < _sigmoid(lapse_odds)
    # Automatic renewals happen on the term end, others in the weeks before it; a few come in after the
    # term has ended: the contract was renewed, but not in time.
    overdue = rng.random((n, 3)) < _sigmoid(-3.2 + 0.6 * risk[:, None])
    renewed_at = np.where(past_auto, past_end, past_end - rng.integers(1, 46, size=(n, 3)))
    renewed_at = np.where(overdue, past_end + rng.integers(1, 29, size=(n, 3)), renewed_at)
    renewed_at = np.where(lapsed, -1, renewed_at)

    rows = np.concatenate([past_present, np.arange(3)[None, :] < current_count[:, None]], axis=1).ravel()

    def flat(past: Array, now: Array) -> Array:
        return np.asarray(np.concatenate([past, now], axis=1).ravel()[rows])

    slot = np.tile(np.arange(6), n)[rows]
    return _Book(
        customer=np.repeat(np.arange(n), 6)[rows],
        product=flat(past_product, product),
        status=flat(np.where(lapsed, _LAPSED, _RENEWED), status),
        start=flat(past_start, start),
        term_end=flat(past_end, term_end),
        auto_renew=flat(past_auto, auto),
        price=flat(past_price, price),
        renewed_at=flat(renewed_at, np.full((n, 3), -1)),
        months=flat(np.full((n, 3), 12), months),
        current=slot >= 3,
        primary=np.flatnonzero(slot == 3),
    )


def _settle_since(rng: np.random.Generator, people: _People, book: _Book) -> Array:
    """Return customer_since, moved back where needed to precede every contract the customer holds."""
    earliest = np.full(len(people.since), np.iinfo(np.int64).max)
    np.minimum.at(earliest, book.customer, book.start)
    return np.minimum(people.since, earliest - rng.integers(0, 31, size=len(earliest)))


def _contract_frame(
    rng: np.random.Generator,
    book: _Book,
    people: _People,
    keys: Text,
    customer_keys: Text,
    world: Sequence[Market],
    dirty: Mapping[str, Array],
) -> pd.DataFrame:
    primary = book.primary
    row, conflicts = _with_copies(
        rng, len(book.customer), primary[dirty["dup_contract_same"]], primary[dirty["dup_contract_conflict"]]
    )
    present = np.ones(len(book.customer), dtype=bool)
    present[primary[dirty["missing_term_end"]]] = False
    price = book.price.copy()
    price[primary[dirty["negative_price"]]] *= -1
    price = price[row]
    # The conflicting copy disagrees on the price, so neither row can be trusted.
    price[conflicts] = np.round(price[conflicts] * 1.1)
    customer = book.customer[row]
    return _frame(
        Entity.CONTRACTS,
        {
            "contract_key": keys.take(row),
            "customer_key": customer_keys.take(customer),
            "product": _take(_PRODUCTS, book.product[row]),
            "status": _take(_STATUSES, book.status[row]),
            "start_date": _dates(book.start[row]),
            "term_end": _dates(book.term_end[row], present[row]),
            "auto_renew": _take(["false", "true"], book.auto_renew[row].astype(np.int64)),
            "price": _money(price),
            "currency": _take([m.currency for m in world], people.market[customer]),
            "renewed_at": _dates(book.renewed_at[row], book.renewed_at[row] >= 0),
        },
    )


def _instalments(
    rng: np.random.Generator, people: _People, book: _Book, world: Sequence[Market], today: int
) -> _Plan:
    """Return monthly instalments over the last 15 months and the next month or two of each paying contract.

    Riskier customers pay late more often and fall behind more often, each with noise. A current contract
    that fell behind still owes its latest instalments; a past term caught up, 30 or more days late, and
    one that lapsed often fell behind near its end.
    """
    n_contracts = len(book.customer)
    monthly = (book.product == _SUB) | (book.product == _LOAN)
    monthly |= (book.product == _INS) & (rng.random(n_contracts) < 0.35)
    this_month = int(_month_of(np.array([today]))[0])
    history_from = _month_start(np.array([this_month - _INSTALMENT_MONTHS]))[0]
    rows = np.flatnonzero(monthly & (book.current | (book.term_end >= history_from)))
    start, term_end = book.start[rows], book.term_end[rows]
    current = book.current[rows]
    start_month = _month_of(start)
    start_day = start - _month_start(start_month) + 1
    due_day = np.minimum(start_day, 28)
    first = np.maximum(start_month + (start_day > 28), this_month - _INSTALMENT_MONTHS)
    cancelled = book.status[rows] == _CANCELLED
    last = this_month + np.where(cancelled | ~current, 0, rng.integers(1, 3, size=len(rows)))
    end_month = _month_of(term_end)
    last = np.minimum(last, end_month - (due_day > term_end - _month_start(end_month) + 1))
    last = np.where(cancelled & (_month_start(last) + due_day - 1 > today), last - 1, last)
    count = np.maximum(last - first + 1, 0)

    group = np.repeat(np.arange(len(rows)), count)
    offset = np.arange(len(group)) - (np.cumsum(count) - count)[group]
    due = _month_start(first[group] + offset) + due_day[group] - 1
    past = due <= today

    risk = people.risk[book.customer[rows]]
    late_rate = _sigmoid(-2.9 + 1.1 * risk + 0.5 * rng.standard_normal(len(rows)))
    # Payment trouble often comes before a term is let lapse.
    lapsing = book.status[rows] == _LAPSED
    behind = rng.random(len(rows)) < _sigmoid(np.where(lapsing, -2.4, -3.8) + 1.3 * risk)
    arrears = np.where(behind, np.minimum(rng.geometric(0.5, len(rows)), 4), 0)
    late = rng.random(len(group)) < late_rate[group]
    delay = 1 + np.minimum(rng.exponential(7.0, len(group)).astype(np.int64), 39)
    paid = np.where(late, due + delay, due - rng.integers(0, 4, len(group)))
    past_count = np.bincount(group, weights=past, minlength=len(rows)).astype(np.int64)
    # A current contract is behind on its latest instalments; a past term was behind somewhere in its term.
    anywhere = (rng.random(len(rows)) * np.maximum(past_count - arrears + 1, 1)).astype(np.int64)
    near_end = past_count - arrears - rng.integers(0, 3, size=len(rows))
    spell_from = np.where(current, past_count - arrears, np.where(lapsing, near_end, anywhere))
    in_spell = past & (offset >= spell_from[group]) & (offset < (spell_from + arrears)[group])
    owing = in_spell & current[group]
    caught_up = due + 30 + np.minimum(rng.exponential(20.0, len(group)).astype(np.int64), 150)
    paid = np.where(in_spell & ~owing, caught_up, paid)
    paid = np.where(past & ~owing & (paid <= today), paid, -1)

    price, months, product = book.price[rows], book.months[rows], book.product[rows]
    raw = np.select(
        [product == _LOAN, product == _INS],
        [price * (1 + 0.065 * months / 12) / months, price * 1.03 / 12],
        price / 12,
    )
    # Currencies with thousands of units to the euro do not bill in cents.
    units = np.array([_UNITS_PER_EUR.get(m.currency, 1.0) for m in world])[people.market[book.customer[rows]]]
    big = units >= 1_000
    amount = np.zeros(n_contracts, dtype=np.int64)
    amount[rows] = np.maximum(np.where(big, np.round(raw / 10_000) * 10_000, np.round(raw)), 1)
    counts = np.zeros(n_contracts, dtype=np.int64)
    counts[rows] = count
    return _Plan(contract=rows[group], due=due, paid=paid, amount=amount, count=counts)


def _instalment_frame(
    plan: _Plan,
    book: _Book,
    people: _People,
    contract_keys: Text,
    world: Sequence[Market],
    dirty: Mapping[str, Array],
) -> pd.DataFrame:
    table, codes = _money_codes(plan.amount)
    amount_codes = codes[plan.contract]
    targets = book.primary[dirty["negative_instalment"]]
    amount_codes[np.searchsorted(plan.contract, targets)] = len(table) + np.arange(len(targets))
    table += [_amount(-c) for c in plan.amount[targets].tolist()]
    return _frame(
        Entity.INSTALMENTS,
        {
            "instalment_key": _keys("I", len(plan.contract), 8),
            "contract_key": contract_keys.take(plan.contract),
            "due_date": _dates(plan.due),
            "amount": _take(table, amount_codes),
            "currency": _take([m.currency for m in world], people.market[book.customer[plan.contract]]),
            "paid_date": _dates(plan.paid, plan.paid >= 0),
        },
    )


def _pick_dirty(rng: np.random.Generator, n: int, share: float, has_instalments: Array) -> dict[str, Array]:
    """Return the customers given each kind of dirt; every kind appears once there are 1,000 customers."""
    total = round(share * n)
    if share > 0 and n >= 1_000:
        total = max(total, len(_DIRTY_KINDS))
    kinds = len(_DIRTY_KINDS)
    order = rng.permutation(n)
    used = np.zeros(n, dtype=bool)
    picked: dict[str, Array] = {}
    for i, kind in enumerate(_DIRTY_KINDS):
        eligible = ~used[order]
        if kind == "negative_instalment":
            eligible &= has_instalments[order]
        chosen = np.sort(order[eligible][: total // kinds + (i < total % kinds)])
        used[chosen] = True
        picked[kind] = chosen
    return picked


def _last_lapse(book: _Book, n: int) -> Array:
    """Return the end of each customer's latest lapsed term (a far-past day when none lapsed)."""
    lapse = np.full(n, -(10**6), dtype=np.int64)
    lapsed = book.status == _LAPSED
    np.maximum.at(lapse, book.customer[lapsed], book.term_end[lapsed])
    return lapse


def _activity_frame(
    rng: np.random.Generator, people: _People, since: Array, lapse: Array, keys: Text, today: int
) -> pd.DataFrame:
    """Return the last full months of activity per customer; riskier or drifting ones are quieter, fading."""
    n = len(since)
    this_month = int(_month_of(np.array([today]))[0])
    months = np.arange(this_month - _ACTIVITY_MONTHS, this_month)
    first_day = _month_start(months)
    last_day = _month_start(months + 1) - 1
    level = np.exp(1.5 - 0.8 * people.risk + 0.5 * rng.standard_normal(n)).astype(np.float32)
    slope = (-0.04 * people.risk - 0.05 * people.drift).astype(np.float32)
    # Built on the kept rows only, in small dtypes, so 15 months of a million customers stay small.
    row = np.flatnonzero((last_day[None, :] >= since[:, None]).ravel())
    who = (row // _ACTIVITY_MONTHS).astype(np.int32)
    month = (row % _ACTIVITY_MONTHS).astype(np.int8)
    del row
    centred = np.arange(_ACTIVITY_MONTHS, dtype=np.float32) - np.float32((_ACTIVITY_MONTHS - 1) / 2)
    rate = np.exp(slope[who] * centred[month])
    rate *= level[who]
    rate *= np.exp(np.float32(0.35) * rng.standard_normal(len(who), dtype=np.float32) - np.float32(0.06))
    # Customers who are about to let a contract lapse use their account less in the months before.
    to_lapse = lapse[who] - first_day[month]
    rate[(to_lapse > 0) & (to_lapse <= _FADE_DAYS)] *= np.float32(0.7)
    del to_lapse
    count = rng.poisson(rate).astype(np.int32)
    del rate
    low = np.maximum(first_day[month], since[who]).astype(np.int32)
    span = (last_day[month] - low + 1).astype(np.int32)
    # The last active day is the latest of that month's transactions: the max of `count` uniform days.
    ahead = rng.random(len(who), dtype=np.float32) ** (np.float32(1) / np.maximum(count, 1))
    ahead *= span
    latest = low + np.minimum(ahead.astype(np.int32), span - 1)
    del low, span, ahead
    # One column at a time, dropping its codes as soon as the text exists, to keep the peak down.
    columns: dict[str, Text] = {"last_active": _dates(latest, count > 0)}
    del latest
    columns["transactions"] = _take([str(i) for i in range(int(count.max(initial=0)) + 1)], count)
    del count
    columns["month"] = _take(months.astype("datetime64[M]").astype(str).tolist(), month)
    del month
    columns["customer_key"] = keys.take(who)
    del who
    return _frame(Entity.ACTIVITY, columns)


def _consent_frame(
    rng: np.random.Generator,
    people: _People,
    since: Array,
    primary: Array,
    keys: Text,
    contract_keys: Text,
    world: Sequence[Market],
    today: int,
) -> pd.DataFrame:
    """Return marketing consents per channel with their evidence, and a few objections to service SMS."""
    n = len(since)
    base = np.array([0.72, 0.62, 0.012, 0.50])
    reachable = np.stack([people.has_email, people.has_phone, people.has_phone, people.has_phone], axis=1)
    likely = np.clip(base[None, :] - 0.05 * people.risk[:, None] * (base > 0.1), 0, 1)
    rows = (reachable & (rng.random((n, 4)) < likely)).ravel()
    customer = np.repeat(np.arange(n), 4)[rows]
    slot = np.tile(np.arange(4), n)[rows]
    del reachable, likely
    m = len(slot)

    withdrawn = rng.random(m) < np.array([0.12, 0.14, 1.0, 0.10])[slot]
    signup = rng.random(m) < 0.45
    room = np.maximum(today - 1 - since[customer], 0)
    day = since[customer] + np.where(signup, 0, (rng.random(m) ** 1.5 * room).astype(np.int64))
    captured = day * 86_400 + rng.integers(6 * 3_600, 23 * 3_600, size=m)
    withdrawn_at = captured + 600 + (rng.random(m) * (today * 86_400 - captured - 600)).astype(np.int64)

    market = people.market[customer]
    codes = np.array([mk.code for mk in world])
    soft = (slot == 0) & np.isin(codes, _SOFT_OPT_IN_MARKETS)[market] & (rng.random(m) < 0.15)
    basis = np.where(slot == 2, 2, soft.astype(np.int64))
    doi_slot = (slot == 0) | (slot == 3)
    has_doi = np.isin(codes, _DOI_MARKETS)[market] & doi_slot & (basis == 0) & (rng.random(m) < 0.9)
    doi = np.minimum(
        captured + 60 + np.minimum(rng.exponential(2_400, m), 172_800).astype(np.int64), today * 86_400 - 1
    )

    source_table = [s for options in _SLOT_SOURCES for s in options] + ["web:checkout"]
    pick = rng.choice(4, size=m, p=[0.45, 0.3, 0.1, 0.15])
    source = np.where(soft, len(source_table) - 1, slot * 4 + pick)
    channels = [c for c, _ in _SLOTS]
    versions = ["", *(f"mkt-{c}-v{v}" for c in channels for v in range(1, 5))]
    version = np.where((slot == 2) | soft, 0, 1 + slot * 4 + rng.integers(0, 4, size=m))
    method_table = ["", *(s for options in _SLOT_METHODS for s in options)]
    method = np.where(withdrawn, 1 + slot * 2 + (rng.random(m) < 0.15), 0)
    notice = np.where(soft, 1 + (rng.random(m) < 0.5), 0)
    sale = _blank(contract_keys.take(primary[customer]), soft)
    return _frame(
        Entity.CONSENTS,
        {
            "customer_key": keys.take(customer),
            "channel": _take(channels, slot),
            "purpose": _take([p for _, p in _SLOTS], slot),
            "status": _take(["granted", "withdrawn"], withdrawn.astype(np.int64)),
            "captured_at": _datetimes(captured, np.ones(m, dtype=bool)),
            "lawful_basis": _take(["consent", "soft_opt_in", "contract"], basis),
            "source": _take(source_table, source),
            "text_version": _take(versions, version),
            "doi_confirmed_at": _datetimes(doi, has_doi),
            "withdrawn_at": _datetimes(withdrawn_at, withdrawn),
            "withdrawal_method": _take(method_table, method),
            "sale_reference": sale,
            "notice_version": _take(["", "optout-notice-v2", "optout-notice-v3"], notice),
        },
    )
