"""Validation: raw text frames in, canonical typed frames and quarantined rows (with reasons) out."""

from __future__ import annotations

import re
import threading
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache, partial
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies
from pandas.api.extensions import ExtensionArray
from pandas.arrays import NumpyExtensionArray

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Column, Entity, EntitySpec, Kind
from tasks.domain.markets import Market
from tasks.domain.messaging import normalise_locale
from tasks.sources.overlap import BackgroundWrites, prefetch
from tasks.sources.phones import normalise_phones
from tasks.sources.raw import RawFrame, SourceError
from tasks.sources.staging import (
    LINE,
    StagedEntity,
    raw_chunks,
    read_clean,
    write_clean,
    write_quarantine,
)


class Reason(StrEnum):
    """Why a row was quarantined."""

    MISSING_VALUE = "MISSING_VALUE"
    BAD_KEY = "BAD_KEY"
    BAD_CHOICE = "BAD_CHOICE"
    BAD_DATE = "BAD_DATE"
    BAD_BOOL = "BAD_BOOL"
    BAD_NUMBER = "BAD_NUMBER"
    NEGATIVE_AMOUNT = "NEGATIVE_AMOUNT"
    ZERO_AMOUNT = "ZERO_AMOUNT"
    BAD_EMAIL = "BAD_EMAIL"
    BAD_PHONE = "BAD_PHONE"
    UNKNOWN_LOCALE = "UNKNOWN_LOCALE"
    UNKNOWN_MARKET = "UNKNOWN_MARKET"
    BAD_CURRENCY = "BAD_CURRENCY"
    BAD_TIMEZONE = "BAD_TIMEZONE"
    BAD_REGION = "BAD_REGION"
    UNSAFE_TEXT = "UNSAFE_TEXT"
    TOO_LONG = "TOO_LONG"
    DUPLICATE_KEY = "DUPLICATE_KEY"
    UNKNOWN_PARENT = "UNKNOWN_PARENT"


QUARANTINE_COLUMNS = ("entity", "source", "line", "record_key", "field", "reason", "detail", "raw")

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)+$")
# Markup or template syntax in a name is either an injection attempt or a data-entry accident;
# either way it must not reach a rendered message.
_UNSAFE = re.compile(r"[<>]|\{\{|\}\}|\{%|%\}|\{#|#\}|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}
_MAX_TEXT = {Kind.NAME: 200, Kind.TEXT: 200, Kind.EMAIL: 320}


@dataclass
class Problems:
    """Problems found in one entity, as parallel lists of row position, field, reason and detail."""

    rows: list[np.ndarray]
    fields: list[str]
    reasons: list[Reason]
    details: list[str]

    def add(self, mask: np.ndarray | pd.Series, field: str, reason: Reason, detail: str) -> None:
        """Record `reason` for every row where `mask` is true."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(positions):
            self.rows.append(positions)
            self.fields.append(field)
            self.reasons.append(reason)
            self.details.append(detail)

    def add_positions(self, positions: np.ndarray, field: str, reason: Reason, detail: str) -> None:
        """Record `reason` for the given row positions."""
        if len(positions):
            self.rows.append(positions)
            self.fields.append(field)
            self.reasons.append(reason)
            self.details.append(detail)

    def bad_rows(self, n: int) -> np.ndarray:
        """Return a boolean mask of rows with at least one problem."""
        mask = np.zeros(n, dtype=bool)
        for positions in self.rows:
            mask[positions] = True
        return mask


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@lru_cache(maxsize=1)
def _territories() -> frozenset[str]:
    return frozenset(str(k) for k in Locale("en").territories if str(k).isalpha())


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=4096)
def canonical_locale(tag: str) -> str | None:
    """Return the normalised tag when Babel knows the locale, else None."""
    norm = normalise_locale(tag)
    if not norm or not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", norm):
        return None
    try:
        Locale.parse(norm, sep="-")
    except (UnknownLocaleError, ValueError):
        # A valid language in a valid territory is a real tag even when CLDR has no data for the
        # pair (tr-DE, en-VN); rendering then falls back along the chain.
        parts = norm.split("-")
        if len(parts) != 2 or parts[1] not in _territories():
            return None
        try:
            Locale.parse(parts[0])
        except (UnknownLocaleError, ValueError):
            return None
    return norm


def _arrow_text(text: pd.Series) -> bool:
    return isinstance(text.dtype, pd.StringDtype) and text.dtype.storage == "pyarrow"


def _is_empty(text: pd.Series, raw: pd.Series) -> pd.Series:
    """Return whether each value is empty text (compared in Arrow when the column is Arrow text)."""
    if _arrow_text(text):
        return pd.Series((text == "").to_numpy(dtype=bool, na_value=False), index=raw.index)
    return raw == ""


def _matches_key(text: pd.Series) -> pd.Series:
    """Return whether each value is a well-formed key."""
    if _arrow_text(text):
        # Arrow's RE2 kernel, ~6x faster; values are stripped, so "$" means the same in both engines.
        values = pa.array(text.array)
        matched = pc.fill_null(pc.match_substring_regex(values, _KEY.pattern), False)
        return pd.Series(np.asarray(matched.to_numpy(zero_copy_only=False), dtype=bool), index=text.index)
    return text.astype("object").str.match(_KEY).fillna(False).astype(bool)


def _arrow_strings(values: pd.Series) -> pa.Array:
    if _arrow_text(values):
        strings = pa.array(values.array).cast(pa.string())
        # A column pieced together from several frames arrives in chunks.
        return strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    return pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)


# Masks keeping the first 0 to 8 bytes of a little-endian word.
_WORD_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)


def text_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a 64-bit hash of each text (a null hashes as the empty text), eight bytes at a time.

    For lookups only, never stored. Read straight from Arrow's buffers: pandas' siphash of the
    same keys first turns each into a Python string and costs about four times as much.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.large_string()).fill_null("")
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=len(values) + 1, offset=values.offset * 8)
    first, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    # Eight zero bytes after the text, so a word read at its last byte stays inside the copy.
    data = np.zeros(size + 8, dtype=np.uint8)
    if data_buffer is not None and size:
        data[:size] = np.frombuffer(data_buffer, dtype=np.uint8, count=size, offset=first)
    # The 64-bit word starting at every byte, overlapping views of `data`, not copies.
    words = np.ndarray(shape=(size + 1,), dtype="<u8", buffer=data, strides=(1,))
    starts = offsets[:-1] - first
    lengths = (offsets[1:] - offsets[:-1]).astype(np.uint64)
    hashes = lengths * np.uint64(0x9E3779B97F4A7C15)
    for word in range(int(lengths.max(initial=0) + 7) // 8):
        left = np.minimum(lengths - np.minimum(lengths, np.uint64(8 * word)), np.uint64(8))
        mixed = (hashes ^ (words[np.minimum(starts + 8 * word, size)] & _WORD_MASKS[left])) * np.uint64(
            0xBF58476D1CE4E5B9
        )
        # A text shorter than this word keeps its hash, so the hash never depends on its neighbours.
        hashes = np.where(left > 0, mixed ^ (mixed >> np.uint64(31)), hashes)
    hashes ^= hashes >> np.uint64(30)
    hashes *= np.uint64(0x94D049BB133111EB)
    hashes ^= hashes >> np.uint64(31)
    return hashes


class KeySet:
    """Text keys built once into sorted 64-bit hashes, then probed chunk after chunk.

    Arrow's `is_in` builds its hash table on every call: at 1M customers 2.6M contract keys, about
    a second for each chunk of instalments. A hash that matches is confirmed against the key itself,
    so a collision never finds a key that is not there.
    """

    _BUILD_SLICE = 1 << 18

    def __init__(self, keys: pa.Array) -> None:
        self.keys = keys.cast(pa.string())
        # Hashed in slices, so the hash's working arrays stay a few MiB however many keys there are.
        hashes = np.concatenate(
            [np.empty(0, dtype=np.uint64)]
            + [
                self.hash(self.keys.slice(start, self._BUILD_SLICE))
                for start in range(0, len(self.keys), self._BUILD_SLICE)
            ]
        )
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]

    def __len__(self) -> int:
        return len(self.keys)

    def hash(self, values: pa.Array) -> np.ndarray:
        """Return a 64-bit hash of each value."""
        return text_hashes(values)

    def _positions(self, hashes: np.ndarray) -> np.ndarray:
        """Return where each hash is or would be in the sorted hashes (`np.searchsorted`, found faster)."""
        # A binary search in millions of keys misses the cache at nearly every step: at 1M customers
        # it was a ninth of validate. Child rows come grouped by parent (a contract's instalments, a
        # customer's months), so one search per run of equal hashes; and the runs are searched in hash
        # order, where numpy starts each search from the last one's place (4x less in all).
        heads = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
        distinct = hashes[heads]
        order = np.argsort(distinct)
        found = np.empty(len(distinct), dtype=np.intp)
        found[order] = np.searchsorted(self.hashes, distinct[order])
        return np.repeat(found, np.diff(np.append(heads, len(hashes))))

    def contains(self, values: pd.Series) -> np.ndarray:
        """Return whether each value is one of the keys (a missing value never is)."""
        found = np.zeros(len(values), dtype=bool)
        if not len(self.hashes) or not len(values):
            return found
        strings = _arrow_strings(values)
        hashes = self.hash(strings)
        at = np.minimum(self._positions(hashes), len(self.hashes) - 1)
        rows = np.flatnonzero(self.hashes[at] == hashes)
        if not len(rows):
            return found
        probe = strings.take(pa.array(rows))
        same = pc.fill_null(pc.equal(self.keys.take(pa.array(self.order[at[rows]])), probe), False)
        same_rows = np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
        found[rows[same_rows]] = True
        unsure = ~same_rows
        if unsure.any():
            # Another key with the same hash: look these few up the slow way.
            slow = pc.fill_null(pc.is_in(probe.filter(pa.array(unsure)), value_set=self.keys), False)
            found[rows[unsure]] = np.asarray(slow.to_numpy(zero_copy_only=False), dtype=bool)
        return found


def _is_in(values: pd.Series, keys: pd.Index | KeySet) -> pd.Series:
    """Return whether each value is one of `keys`."""
    if isinstance(keys, pd.Index):
        return values.isin(keys)
    return pd.Series(keys.contains(values), index=values.index)


# Kinds whose values are mostly distinct: hashing them value by value skips factorizing them first.
_MOSTLY_DISTINCT = frozenset({Kind.KEY, Kind.NAME, Kind.TEXT, Kind.EMAIL, Kind.PHONE, Kind.DATETIME})


def _row_hash(frame: pd.DataFrame, spec: EntitySpec) -> np.ndarray:
    """Return each row's hash as `pd.util.hash_pandas_object(frame, index=False)` gives it.

    The hashes are stored and tell changed rows from unchanged ones on the next run, so they must
    never change; a test pins them to pandas' own.
    """
    distinct = {c.name for c in spec.columns if c.kind in _MOSTLY_DISTINCT}
    hashes = [
        # Either way gives the same hash per value; a column with nulls keeps pandas' default.
        pd.util.hash_array(_array(values), categorize=name not in distinct or values.hasnans)
        for name, values in frame.items()
    ]
    return _combine_hashes(hashes, len(frame))


def _hash_text(hashes: np.ndarray) -> ExtensionArray:
    """Return hashes as the decimal text the store keeps."""
    # Kept in Arrow: as Python strings, pandas turned them back into Arrow text when the column was
    # set, and the two conversions cost five times the cast (a second of validate at 1M customers).
    return cast(ExtensionArray, pa.array(hashes).cast(pa.string()).to_pandas().array)


def _array(values: pd.Series) -> np.ndarray | ExtensionArray:
    array = values.array
    return array.to_numpy() if isinstance(array, NumpyExtensionArray) else array


def _combine_hashes(hashes: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """Combine per-column hashes into row hashes the way pandas does (CPython's tuple hash)."""
    out = np.full(rows, 0x345678, dtype=np.uint64)
    mult = np.uint64(1000003)
    for i, h in enumerate(hashes):
        inverse = len(hashes) - i
        out ^= h
        out *= mult
        mult += np.uint64(82520 + inverse + inverse)
    out += np.uint64(97531)
    return out


# Kinds whose verdict depends on the value alone. A column of them holds few distinct values (dates,
# amounts, codes), so each is parsed once: per-row parsing was a third of validate's time.
_BY_VALUE = frozenset(
    {
        Kind.CHOICE,
        Kind.DATE,
        Kind.DATETIME,
        Kind.MONTH,
        Kind.BOOL,
        Kind.DECIMAL,
        Kind.INT,
        Kind.LOCALE,
        Kind.MARKET,
        Kind.CURRENCY,
        Kind.REGION,
        Kind.TIMEZONE,
    }
)


def _parse_column(
    col: Column,
    raw: pd.Series,
    problems: Problems,
    markets: Mapping[str, Market],
    regions: pd.Series | None,
) -> pd.Series:
    """Return the parsed column, recording a problem for each value that does not fit its kind."""
    if col.kind not in _BY_VALUE or raw.hasnans:
        return _parse_rows(col, raw, problems, markets, regions)
    codes, distinct = pd.factorize(raw)
    found = Problems([], [], [], [])
    parsed = _parse_rows(col, pd.Series(distinct), found, markets, None)
    for positions, field, reason, detail in zip(
        found.rows, found.fields, found.reasons, found.details, strict=True
    ):
        hit = np.zeros(len(distinct), dtype=bool)
        hit[positions] = True
        problems.add(hit[codes], field, reason, detail)
    value = parsed.take(codes)
    value.index = raw.index
    return value


def _parse_rows(
    col: Column,
    raw: pd.Series,
    problems: Problems,
    markets: Mapping[str, Market],
    regions: pd.Series | None,
) -> pd.Series:
    """Return the parsed column value by value, recording a problem for each that does not fit its kind."""
    kind = col.kind
    text = raw
    # Keys stay as they came (Arrow text from files): they are most of the values (two a row of
    # instalments), and as Python strings they cost a conversion here and another when written.
    raw = raw if kind is Kind.KEY else raw.astype("object")
    empty = _is_empty(text, raw)
    if col.required:
        problems.add(empty, col.name, Reason.MISSING_VALUE, f"{col.name} is required")
    present = ~empty
    if kind is Kind.KEY:
        bad = present & ~_matches_key(text)
        problems.add(bad, col.name, Reason.BAD_KEY, "keys are 1-64 letters, digits, '_', '.', ':' or '-'")
        return raw.where(present, None)
    if kind in (Kind.TEXT, Kind.NAME):
        limit = _MAX_TEXT[kind]
        # Measured and searched on the text as it came: on Arrow text both run in Arrow's kernels
        # (RE2 takes the pattern as Python does), a tenth of the time on Python strings.
        problems.add(present & (text.str.len() > limit), col.name, Reason.TOO_LONG, f"longer than {limit}")
        if kind is Kind.NAME:
            unsafe = present & text.str.contains(_UNSAFE.pattern, regex=True, na=False)
            problems.add(unsafe, col.name, Reason.UNSAFE_TEXT, "contains markup or template syntax")
        return raw.where(present, None)
    if kind is Kind.CHOICE:
        value = raw.str.lower()
        if col.default is not None:
            value = value.mask(~present, col.default)
        bad = (value != "") & ~value.isin(col.choices)
        problems.add(bad, col.name, Reason.BAD_CHOICE, f"must be one of {', '.join(col.choices)}")
        return value.where(value != "", None)
    if kind in (Kind.DATE, Kind.DATETIME, Kind.MONTH):
        if kind is Kind.DATE:
            parsed = pd.to_datetime(raw.where(present), format="%Y-%m-%d", errors="coerce")
            expected = "YYYY-MM-DD"
        elif kind is Kind.MONTH:
            parsed = pd.to_datetime(raw.where(present), format="%Y-%m", errors="coerce")
            expected = "YYYY-MM"
        else:
            parsed = pd.to_datetime(raw.where(present), format="ISO8601", errors="coerce", utc=True)
            expected = "ISO 8601 date-time"
        problems.add(present & parsed.isna(), col.name, Reason.BAD_DATE, f"not a date ({expected})")
        return parsed
    if kind is Kind.BOOL:
        lowered = raw.str.lower()
        if col.default is not None:
            lowered = lowered.mask(~present, col.default)
        bad = ~lowered.isin(_TRUE | _FALSE)
        problems.add(bad, col.name, Reason.BAD_BOOL, "must be true or false")
        return lowered.isin(_TRUE)
    if kind in (Kind.DECIMAL, Kind.INT):
        number = pd.to_numeric(raw.where(present), errors="coerce")
        number = number.where(np.isfinite(number.astype("float64")))
        bad = present & number.isna()
        if kind is Kind.DECIMAL:
            bad |= present & number.notna() & ((number * 100).round(6) % 1 != 0)
        if kind is Kind.INT:
            bad |= present & number.notna() & (number % 1 != 0)
        problems.add(
            bad, col.name, Reason.BAD_NUMBER, "not a number" if kind is Kind.DECIMAL else "not a whole number"
        )
        if col.non_negative or col.positive:
            problems.add(number < 0, col.name, Reason.NEGATIVE_AMOUNT, "must not be negative")
        if col.positive:
            problems.add(number == 0, col.name, Reason.ZERO_AMOUNT, "must be greater than zero")
        if kind is Kind.DECIMAL:
            return number.round(2)
        return number.where(number % 1 == 0).astype("Int64")
    if kind is Kind.EMAIL:
        value = raw.str.strip()
        problems.add(present & ~value.str.match(_EMAIL), col.name, Reason.BAD_EMAIL, "not an email address")
        problems.add(present & (value.str.len() > 320), col.name, Reason.TOO_LONG, "longer than 320")
        return _lower_domain(value).where(present, None)
    if kind is Kind.PHONE:
        region_values = regions if regions is not None else pd.Series("", index=raw.index)
        e164, detail = normalise_phones(raw.where(present, ""), region_values)
        bad = detail.notna()
        for why in sorted(set(detail[bad])):
            problems.add(bad & (detail == why), col.name, Reason.BAD_PHONE, why)
        return e164
    if kind is Kind.LOCALE:
        uniques = {v: canonical_locale(v) for v in raw[present].unique()}
        value = raw.map(uniques)
        problems.add(present & value.isna(), col.name, Reason.UNKNOWN_LOCALE, "not a known BCP 47 locale")
        return value
    if kind is Kind.MARKET:
        value = raw.str.upper()
        problems.add(
            present & ~value.isin(list(markets)),
            col.name,
            Reason.UNKNOWN_MARKET,
            f"not a configured market ({', '.join(sorted(markets))})",
        )
        return value.where(present, None)
    if kind is Kind.CURRENCY:
        value = raw.str.upper()
        problems.add(
            present & ~value.isin(_currencies()), col.name, Reason.BAD_CURRENCY, "not an ISO 4217 code"
        )
        return value.where(present, None)
    if kind is Kind.REGION:
        value = raw.str.upper()
        bad = present & ~value.str.match(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")
        problems.add(bad, col.name, Reason.BAD_REGION, "not an ISO 3166-2 code like US-FL")
        return value.where(present, None)
    if kind is Kind.TIMEZONE:
        problems.add(
            present & ~raw.isin(_timezones()), col.name, Reason.BAD_TIMEZONE, "not an IANA time zone"
        )
        return raw.where(present, None)
    raise AssertionError(f"unhandled kind {kind}")


def _lower_domain(emails: pd.Series) -> pd.Series:
    """Return each address with the part after its last '@' in lower case (None where there is no '@')."""
    # In Arrow: splitting a million addresses into Python lists took four seconds. Domains that pass
    # the address check are ASCII, so ASCII lower case is the whole of it.
    parts = pc.extract_regex(_arrow_strings(emails), r"(?s)^(?P<local>.*)@(?P<domain>[^@]*)$")
    joined = pc.binary_join_element_wise(
        pc.struct_field(parts, [0]), pc.ascii_lower(pc.struct_field(parts, [1])), "@"
    )
    return pd.Series(joined.to_numpy(zero_copy_only=False), index=emails.index, dtype=object)


def _duplicates(raw: RawFrame, spec: EntitySpec, problems: Problems) -> None:
    """Quarantine repeated keys: later identical copies, or every copy when the copies disagree."""
    key = list(spec.key)
    frame = raw.frame
    if any(k not in frame.columns for k in key):
        return
    required = [k for k in key if spec.column(k).required]
    has_key = (frame[required] != "").all(axis=1).to_numpy()
    dup = frame.duplicated(subset=key, keep=False).to_numpy() & has_key
    if not dup.any():
        return
    rows = frame.loc[dup]
    groups = pd.DataFrame(
        {
            "group": rows.groupby(key, sort=False).ngroup().to_numpy(),
            "content": _row_hash(rows, spec),
            "line": raw.lines.to_numpy()[dup],
            "position": np.flatnonzero(dup),
        }
    )
    for _, group in groups.groupby("group", sort=False):
        first_line = int(group["line"].iloc[0])
        positions = group["position"].to_numpy()
        if group["content"].nunique() == 1:
            problems.add_positions(
                positions[1:],
                spec.key[-1],
                Reason.DUPLICATE_KEY,
                f"identical copy of {raw.line_label} {first_line}",
            )
        else:
            lines = ", ".join(str(int(v)) for v in group["line"])
            problems.add_positions(
                positions,
                spec.key[-1],
                Reason.DUPLICATE_KEY,
                f"conflicting rows at {raw.line_label}s {lines}",
            )


@dataclass(frozen=True)
class Validated:
    """The outcome of validating one entity."""

    entity: Entity
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int


def validate_entity(
    raw: RawFrame,
    markets: Mapping[str, Market],
    parent_keys: pd.Index | KeySet | None = None,
    parent_regions: Mapping[str, str] | None = None,
    parent_found: np.ndarray | None = None,
    keys_unique: bool = False,
) -> Validated:
    """Validate one entity; rows with any problem are quarantined whole, with one entry per problem.

    `parent_found`, when given, says for each row whether its parent key is in `parent_keys`;
    `keys_unique` says the caller knows that no key occurs twice among the rows.
    """
    spec = CONTRACT[raw.entity]
    frame = raw.frame.reset_index(drop=True)
    problems = Problems([], [], [], [])
    if not keys_unique:
        _duplicates(
            RawFrame(raw.entity, raw.source, frame, raw.lines.reset_index(drop=True), raw.line_label),
            spec,
            problems,
        )

    regions = None
    if "market" in frame.columns:
        regions = frame["market"].str.upper().map({c: m.phone_region for c, m in markets.items()}).fillna("")
    elif parent_regions is not None and "customer_key" in frame.columns:
        regions = frame["customer_key"].map(parent_regions).fillna("")

    parsed: dict[str, pd.Series] = {}
    for col in spec.columns:
        source = frame[col.name] if col.name in frame.columns else pd.Series("", index=frame.index)
        parsed[col.name] = _parse_column(col, source, problems, markets, regions)

    if spec.parent is not None and parent_keys is not None:
        _, fk = spec.parent
        found = _is_in(parsed[fk], parent_keys) if parent_found is None else parent_found
        orphan = parsed[fk].notna() & ~found
        problems.add(orphan, fk, Reason.UNKNOWN_PARENT, f"no valid {spec.parent[0].value} row with this {fk}")

    clean = pd.DataFrame(parsed)
    if raw.entity is Entity.CUSTOMERS:
        zones = clean["market"].map({c: m.timezone for c, m in markets.items()})
        clean["timezone"] = clean["timezone"].fillna(zones)
    bad = problems.bad_rows(len(frame))
    clean = clean.loc[~bad].reset_index(drop=True)
    # Hashed whole and then picked: a row's hash is its own, and picking the text columns first copied them.
    clean["row_hash"] = _hash_text(_row_hash(frame, spec)[~bad])
    return Validated(raw.entity, clean, _quarantine_frame(raw, frame, spec, problems), len(frame))


def _quarantine_frame(
    raw: RawFrame, frame: pd.DataFrame, spec: EntitySpec, problems: Problems
) -> pd.DataFrame:
    if not problems.rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in QUARANTINE_COLUMNS})
    # One problem per duplicate group makes thousands of entries: repeated as arrays, not one frame each.
    sizes = [len(positions) for positions in problems.rows]
    out = pd.DataFrame(
        {
            "position": np.concatenate(problems.rows),
            "field": np.repeat(np.array(problems.fields, dtype=object), sizes),
            "reason": np.repeat(np.array([r.value for r in problems.reasons], dtype=object), sizes),
            "detail": np.repeat(np.array(problems.details, dtype=object), sizes),
        }
    )
    positions = out["position"].to_numpy()
    bad = frame.iloc[np.unique(positions)]
    parts = [bad[k].astype(str) for k in spec.key]
    keys = parts[0].str.cat(pd.concat(parts[1:], axis=1), sep="|") if len(parts) > 1 else parts[0]
    records = dict(zip(bad.index, bad.to_dict("records"), strict=True))
    out["line"] = raw.lines.to_numpy()[positions].astype("int64")
    out["record_key"] = keys.reindex(positions).to_numpy()
    out["raw"] = [records[p] for p in positions]
    out["entity"] = raw.entity.value
    out["source"] = raw.source
    out = out.sort_values(["line", "field"], kind="stable")
    return out[list(QUARANTINE_COLUMNS)].reset_index(drop=True)


@dataclass(frozen=True)
class ValidationResult:
    """Canonical frames for every entity, the quarantine and the per-entity counts."""

    clean: dict[Entity, pd.DataFrame]
    quarantine: pd.DataFrame
    rows_read: dict[Entity, int]

    @property
    def quarantined_rows(self) -> dict[str, int]:
        """Return how many distinct rows were quarantined per entity."""
        if self.quarantine.empty:
            return {}
        distinct = self.quarantine.drop_duplicates(["entity", "source", "line"])
        return {str(k): int(v) for k, v in distinct.groupby("entity").size().items()}

    @property
    def problems_by_reason(self) -> dict[str, int]:
        """Return how many problems of each reason were found."""
        if self.quarantine.empty:
            return {}
        return {str(k): int(v) for k, v in self.quarantine.groupby("reason").size().items()}


def validate_all(
    raws: Mapping[Entity, RawFrame],
    markets: Mapping[str, Market],
    known_keys: Callable[[Entity], pd.Index] | None = None,
) -> ValidationResult:
    """Validate every entity in dependency order so children of quarantined parents are caught too.

    `known_keys(entity)` returns keys already in the store, which also count as valid parents.
    """
    clean: dict[Entity, pd.DataFrame] = {}
    quarantined: list[pd.DataFrame] = []
    rows_read: dict[Entity, int] = {}
    regions: dict[str, str] = {}
    for entity in ENTITY_ORDER:
        spec = CONTRACT[entity]
        parent_keys = None
        if spec.parent is not None:
            parent_entity, _ = spec.parent
            parent_key = CONTRACT[parent_entity].key[0]
            parent_keys = pd.Index(clean[parent_entity][parent_key])
            if known_keys is not None:
                parent_keys = parent_keys.union(known_keys(parent_entity))
        result = validate_entity(raws[entity], markets, parent_keys, regions or None)
        clean[entity] = result.clean
        quarantined.append(result.quarantine)
        rows_read[entity] = result.rows_read
        if entity is Entity.CUSTOMERS:
            regions = dict(
                zip(
                    result.clean["customer_key"],
                    result.clean["market"].map({c: m.phone_region for c, m in markets.items()}),
                    strict=True,
                )
            )
    non_empty = [q for q in quarantined if not q.empty]
    quarantine = (
        pd.concat(non_empty, ignore_index=True)
        if non_empty
        else pd.DataFrame({c: pd.Series(dtype="object") for c in QUARANTINE_COLUMNS})
    )
    return ValidationResult(clean, quarantine, rows_read)


# Joins the parts of a composite key; a raw value holding it can only cause a needless hold-back.
_KEY_SEPARATOR = "\x1f"


def joined_keys(frame: pd.DataFrame, entity: Entity) -> pd.Series | None:
    """Return each raw row's key as one text, "" when a required part is empty; None without key columns."""
    spec = CONTRACT[entity]
    key = list(spec.key)
    if any(k not in frame.columns for k in key):
        return None
    parts = [frame[k] for k in key]
    if len(parts) == 1:
        joined = parts[0]
    elif all(_arrow_text(p) for p in parts):
        # Arrow joins the columns in one pass; `str.cat` built a Python string per row (20x slower).
        separator = pa.scalar(_KEY_SEPARATOR, pa.array(parts[0].array).type)
        arrays = [pa.array(p.array) for p in parts]
        joined = pd.Series(
            pd.array(pc.binary_join_element_wise(*arrays, separator), dtype=parts[0].dtype),
            index=frame.index,
            name=parts[0].name,
        )
    else:
        joined = parts[0].str.cat(frame[key[1:]], sep=_KEY_SEPARATOR)
    complete = (frame[[k for k in key if spec.column(k).required]] != "").all(axis=1)
    return joined.where(complete, "")


def _hashes(keys: pd.Series) -> np.ndarray:
    return text_hashes(_arrow_strings(keys))


def repeated_keys(entity: StagedEntity, hash_keys: Callable[[pd.Series], np.ndarray] = _hashes) -> pd.Index:
    """Return the keys that occur more than once in an entity's staged raw rows (reads key columns only).

    Keys are compared as 64-bit hashes first, so memory stays at 8 bytes a row; the few keys whose
    hash repeats are then counted as text, so a hash collision never holds back a row.
    """
    columns = list(CONTRACT[entity.entity].key)

    def hashed() -> Iterator[tuple[pd.Series, np.ndarray]]:
        for raw in prefetch(raw_chunks(entity, columns)):
            keys = joined_keys(raw.frame, entity.entity)
            if keys is None:
                return
            # Rows without a complete key are never repeats; dropping them keeps every hash value a key's.
            keys = keys[(keys != "").to_numpy(dtype=bool)]
            yield keys, np.asarray(hash_keys(keys)).view(np.int64)

    # Filled in place: gathering the chunks' hashes and concatenating them held every hash twice.
    every = np.empty(entity.rows, dtype=np.int64)
    filled = 0
    for _, h in hashed():
        every[filled : filled + len(h)] = h
        filled += len(h)
    every = every[:filled]
    every.sort()
    candidates = np.unique(every[1:][every[1:] == every[:-1]])
    del every
    if not len(candidates):
        return pd.Index([], dtype=object)
    found = [keys[np.isin(h, candidates)] for keys, h in hashed()]
    counts = pd.concat(found, ignore_index=True).value_counts()
    repeated: pd.Index = counts.index[counts.to_numpy() > 1]
    return repeated


@dataclass(frozen=True)
class StagedValidation:
    """Validated chunks and each entity's quarantine on disk, with the counts the summary shows."""

    directory: str
    clean: dict[Entity, tuple[str, ...]]
    quarantine: dict[Entity, str]
    rows_read: dict[Entity, int]
    rows_valid: dict[Entity, int]
    quarantined_rows: dict[str, int]
    problems_by_reason: dict[str, int]


class EntityChunks:
    """One entity's validated chunks, handed over one by one as each is written and final."""

    def __init__(self, handoff: Handoff, entity: Entity) -> None:
        self.handoff = handoff
        self.entity = entity
        self._paths: list[str] = []
        self._closed = False

    def add(self, path: str) -> None:
        """Hand over one more chunk; it will not be written again."""
        with self.handoff.changed:
            self._paths.append(path)
            self.handoff.changed.notify_all()

    def close(self, paths: Sequence[str]) -> None:
        """Say that the entity is validated; `paths` are all its chunks, those handed over first."""
        with self.handoff.changed:
            self._paths, self._closed = list(paths), True
            self.handoff.changed.notify_all()

    def indices(self) -> Iterator[int]:
        """Yield each chunk's position as it is handed over, until the entity is validated."""
        i = 0
        while self.handoff.wait(partial(self._beyond, i)) and i < len(self._paths):
            yield i
            i += 1

    def _beyond(self, i: int) -> bool:
        return i < len(self._paths) or self._closed

    def __getitem__(self, i: int) -> str:
        return self._paths[i]

    def all(self) -> tuple[str, ...]:
        """Return every chunk's path once the entity is validated."""
        self.handoff.wait(lambda: self._closed)
        return tuple(self._paths)


class Handoff:
    """Validated chunks handed to a load as each is written, so the load works while validation goes on.

    Replayable: a retried load goes through the entities from the first again (their chunks stay on
    disk until the load has committed).
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self._entities: list[EntityChunks] = []
        self._result: StagedValidation | None = None
        self._failed = False

    @classmethod
    def of(cls, result: StagedValidation) -> Handoff:
        """Return a handoff that already holds every entity of a finished validation."""
        done = cls()
        for entity in ENTITY_ORDER:
            if entity in result.clean:
                done.start(entity).close(result.clean[entity])
        done.finish(result)
        return done

    def start(self, entity: Entity) -> EntityChunks:
        """Begin handing over an entity's chunks."""
        chunks = EntityChunks(self, entity)
        with self.changed:
            self._entities.append(chunks)
            self.changed.notify_all()
        return chunks

    def finish(self, result: StagedValidation) -> None:
        """Say that every entity is validated; `result` holds the quarantines and the counts."""
        with self.changed:
            self._result = result
            self.changed.notify_all()

    def fail(self) -> None:
        """Say that validation stopped: the load must write nothing."""
        with self.changed:
            self._failed = True
            self.changed.notify_all()

    def wait(self, ready: Callable[[], bool]) -> bool:
        """Wait until `ready()` holds; raise if validation stopped meanwhile."""
        with self.changed:
            self.changed.wait_for(lambda: ready() or self._failed)
            if self._failed:
                raise SourceError("validate", "stopped before every entity was validated; nothing was loaded")
            return True

    def entities(self) -> Iterator[EntityChunks]:
        """Yield each entity's chunks in dependency order, as soon as its validation begins."""
        i = 0
        while self.wait(partial(self._beyond, i)) and i < len(self._entities):
            yield self._entities[i]
            i += 1

    def _beyond(self, i: int) -> bool:
        return i < len(self._entities) or self._result is not None

    def result(self) -> StagedValidation:
        """Return the finished validation, waiting for it."""
        self.wait(lambda: self._result is not None)
        assert self._result is not None
        return self._result


def _sorted_quarantine(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Return an entity's quarantine in the order validating it whole gives: by line, then field."""
    non_empty = [q for q in parts if not q.empty]
    if not non_empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in QUARANTINE_COLUMNS})
    out = pd.concat(non_empty, ignore_index=True)
    return out.sort_values(["line", "field"], kind="stable").reset_index(drop=True)


def _take(raw: RawFrame, rows: np.ndarray | slice) -> RawFrame:
    """Return the rows of `raw` picked by a boolean mask or a slice of positions."""
    return RawFrame(
        raw.entity,
        raw.source,
        raw.frame.iloc[rows].reset_index(drop=True),
        raw.lines.iloc[rows].reset_index(drop=True),
        raw.line_label,
    )


# Validating turns each text value (~10 bytes as Arrow) into a Python string (~60), several times
# over, so a staged chunk is validated in slices of about this much Arrow text: at 1M customers a
# 500k-row chunk of consents took ~1 GB at its peak.
_SLICE_BYTES = 24 << 20


def _slices(raw: RawFrame) -> list[slice]:
    """Return the row ranges that cut `raw` into slices of about `_SLICE_BYTES` each."""
    size = int(raw.frame.memory_usage(index=False).sum())
    rows = max(1, len(raw.frame) * _SLICE_BYTES // max(size, 1))
    return [slice(start, start + rows) for start in range(0, max(len(raw.frame), 1), rows)]


class _ParentKeys:
    """The keys a child row may point at: valid parents of this run plus those already in the store.

    Held as Arrow strings (~15 bytes a key instead of ~70 as Python objects): 2.6M contract keys at
    1M customers.
    """

    def __init__(self, known_keys: Callable[[Entity], pd.Index] | None, entities: Iterable[Entity]) -> None:
        # Read before any entity is handed to a load running beside: its first write into an empty
        # table drops the indexes in its transaction, and a read after that would wait for its commit.
        wanted = {spec.parent[0] for e in entities if (spec := CONTRACT[e]).parent is not None}
        self.known: dict[Entity, pa.Array] = {
            parent: pa.array(known_keys(parent).to_numpy(dtype=object), type=pa.string(), from_pandas=True)
            for parent in sorted(wanted)
            if known_keys is not None
        }
        self.clean: dict[Entity, list[pa.Array]] = {}
        self.ready: dict[Entity, KeySet] = {}

    def collect(self, entity: Entity, clean: pd.DataFrame) -> None:
        """Remember the keys of validated rows of a parent entity."""
        if entity in _PARENTS:
            self.clean.setdefault(entity, []).append(_arrow_strings(clean[CONTRACT[entity].key[0]]))

    def of(self, entity: Entity) -> KeySet | None:
        """Return the keys valid as parents of `entity`'s rows, or None when it has no parent."""
        spec = CONTRACT[entity]
        if spec.parent is None:
            return None
        parent = spec.parent[0]
        if parent not in self.ready:
            parts = self.clean.pop(parent, [])
            if parent in self.known:
                parts.append(self.known.pop(parent))
            keys = pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())
            self.ready[parent] = KeySet(pc.unique(keys))
        return self.ready[parent]


_PARENTS = {spec.parent[0] for spec in CONTRACT.values() if spec.parent is not None}


class _EntityRun:
    """One entity validated chunk by chunk, rows with a repeated key held back to its end.

    Each chunk is handed over once written. Held-back rows that are valid follow as a last chunk of
    their own, except consents: there they are put back in file order into the chunks (handed over
    together at the end), so consent ids, which break ties between records, follow the file.
    """

    def __init__(
        self,
        entity: Entity,
        markets: Mapping[str, Market],
        parents: _ParentKeys,
        out: Path,
        chunks: EntityChunks,
    ) -> None:
        if any(c.kind is Kind.PHONE for c in CONTRACT[entity].columns) and entity is not Entity.CUSTOMERS:
            # validate_all would take the phone region from the customer; no child entity has a phone.
            raise NotImplementedError(f"{entity.value}: phone numbers outside customers")
        self.entity = entity
        self.markets = markets
        self.parents = parents
        self.parent_keys = parents.of(entity)
        self.out = out
        self.chunks = chunks
        self.in_file_order = entity is Entity.CONSENTS
        self.paths: list[str] = []
        self.first_lines: list[int] = []
        self.problems: list[pd.DataFrame] = []
        self.read = 0
        self.valid = 0
        self.handed = 0

    def validate(self, chunks: Iterable[RawFrame], repeated: pd.Index) -> None:
        """Validate every chunk; rows whose key is in `repeated` are checked together at the end."""
        writes = BackgroundWrites()
        try:
            self._validate(chunks, repeated, writes)
        finally:
            writes.close()

    def _validate(self, chunks: Iterable[RawFrame], repeated: pd.Index, writes: BackgroundWrites) -> None:
        held: list[RawFrame] = []
        for raw in chunks:
            self.read += len(raw.frame)
            keys = joined_keys(raw.frame, self.entity) if len(repeated) else None
            if keys is not None:
                maybe = keys.isin(repeated).to_numpy(dtype=bool)
                if maybe.any():
                    held.append(_take(raw, maybe))
                    raw = _take(raw, ~maybe)
            # One lookup a chunk: building the set of millions of parent keys costs more than probing it.
            found = self._parents_found(raw)
            for part in _slices(raw):
                # Every key repeated anywhere in the entity was held back above.
                clean = self._check(
                    _take(raw, part), None if found is None else found[part], keys_unique=True
                )
                if len(clean):
                    self.paths.append(write_clean(self.out, self.entity, len(self.paths), clean, writes))
                    self.first_lines.append(int(clean[LINE].iloc[0]))
                    # Writes go one at a time: the chunk before this one is on disk now.
                    self._hand_over(len(self.paths) - 1)
        writes.wait()
        self._hand_over(len(self.paths))
        if held:
            frame = pd.concat([h.frame for h in held], ignore_index=True)
            lines = pd.concat([h.lines for h in held], ignore_index=True)
            clean = self._check(RawFrame(self.entity, held[0].source, frame, lines, held[0].line_label))
            if self.in_file_order:
                self._put_back(clean)
            elif len(clean):
                self.paths.append(write_clean(self.out, self.entity, len(self.paths), clean))
        self.chunks.close(self.paths)

    def _hand_over(self, upto: int) -> None:
        """Hand over the chunks before position `upto` not handed over yet (none for consents)."""
        if self.in_file_order:
            return
        for i in range(self.handed, upto):
            self.chunks.add(self.paths[i])
        self.handed = max(self.handed, upto)

    def _parents_found(self, raw: RawFrame) -> np.ndarray | None:
        """Return whether each row's parent key is a valid parent (None: nothing to look up)."""
        parent = CONTRACT[self.entity].parent
        if parent is None or self.parent_keys is None or parent[1] not in raw.frame.columns:
            return None
        return _is_in(raw.frame[parent[1]], self.parent_keys).to_numpy(dtype=bool)

    def _check(
        self, raw: RawFrame, parent_found: np.ndarray | None = None, keys_unique: bool = False
    ) -> pd.DataFrame:
        """Return the valid rows of `raw` with their lines, recording its quarantine."""
        result = validate_entity(
            raw, self.markets, self.parent_keys, parent_found=parent_found, keys_unique=keys_unique
        )
        self.problems.append(result.quarantine)
        clean = result.clean
        clean[LINE] = raw.lines[~raw.lines.isin(result.quarantine["line"])].to_numpy(dtype=np.int64)
        self.parents.collect(self.entity, clean)
        self.valid += len(clean)
        return clean

    def _put_back(self, clean: pd.DataFrame) -> None:
        """Put held-back valid rows into the chunks where their lines belong, so order is file order."""
        if clean.empty:
            return
        if not self.paths:
            self.paths.append(write_clean(self.out, self.entity, 0, clean))
            return
        target = np.maximum(np.searchsorted(self.first_lines, clean[LINE].to_numpy(), side="right") - 1, 0)
        for index in np.unique(target):
            rows = clean.loc[target == index]
            chunk = pd.concat([read_clean(self.paths[index], lines=True), rows], ignore_index=True)
            chunk = chunk.sort_values(LINE, kind="stable").reset_index(drop=True)
            self.paths[index] = write_clean(self.out, self.entity, int(index), chunk)


def validate_staged(
    staged: Sequence[StagedEntity],
    markets: Mapping[str, Market],
    out: Path,
    known_keys: Callable[[Entity], pd.Index] | None = None,
    handoff: Handoff | None = None,
) -> StagedValidation:
    """Validate every entity chunk by chunk, writing clean chunks and quarantines under `out`.

    `staged` gives each entity's raw chunks, in dependency order. A first pass over the key columns
    finds the keys that occur more than once; rows with such a key are held back until the entity's
    last chunk and then checked together, so duplicates anywhere in a file are caught exactly as
    when the file is validated whole; every other rule looks at one row at a time. Quarantines come out
    in the same order and the counts are the same as `validate_all` gives. Each finished entity is
    put into `handoff`, when given, for a load running beside.
    """
    handoff = handoff or Handoff()
    try:
        result = _validate_staged(staged, markets, out, known_keys, handoff)
    except BaseException:
        handoff.fail()
        raise
    handoff.finish(result)
    return result


def _validate_staged(
    staged: Sequence[StagedEntity],
    markets: Mapping[str, Market],
    out: Path,
    known_keys: Callable[[Entity], pd.Index] | None,
    handoff: Handoff,
) -> StagedValidation:
    parents = _ParentKeys(known_keys, [e.entity for e in staged])
    clean_paths: dict[Entity, tuple[str, ...]] = {}
    quarantine_paths: dict[Entity, str] = {}
    rows_read: dict[Entity, int] = {}
    rows_valid: dict[Entity, int] = {}
    quarantined_rows: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for staged_entity in staged:
        entity = staged_entity.entity
        run = _EntityRun(entity, markets, parents, out, handoff.start(entity))
        run.validate(prefetch(raw_chunks(staged_entity)), repeated_keys(staged_entity))
        quarantine = _sorted_quarantine(run.problems)
        clean_paths[entity], rows_read[entity], rows_valid[entity] = tuple(run.paths), run.read, run.valid
        if not quarantine.empty:
            quarantine_paths[entity] = write_quarantine(out, entity, quarantine)
            quarantined_rows[entity.value] = int(quarantine.drop_duplicates(["source", "line"]).shape[0])
            for reason, count in quarantine.groupby("reason").size().items():
                reasons[str(reason)] = reasons.get(str(reason), 0) + int(count)
    return StagedValidation(
        str(out),
        clean_paths,
        quarantine_paths,
        rows_read,
        rows_valid,
        dict(sorted(quarantined_rows.items())),
        dict(sorted(reasons.items())),
    )
