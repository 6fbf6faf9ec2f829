"""Phone numbers to E.164 for whole columns, with exactly the answers phonenumbers gives one by one.

Parsing and typing one number with phonenumbers costs ~60 µs, most of a customer file's validation.
Here the common shapes (digits with spacing punctuation, optionally after a "+") are handled for a
whole column at once: the same metadata patterns, matched by Arrow's vectorised RE2 kernels, and the
same decisions phonenumbers.parse and number_type make. Anything else (letters, extensions, IDD or
trunk prefixes with capture rules, shared country codes a pattern cannot settle) goes through
phonenumbers itself, once per distinct value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS, PhoneMetadata, PhoneNumberType
from phonenumbers.phonemetadata import PhoneNumberDesc
from phonenumbers.phonenumberutil import ValidationResult, _test_number_length

SMS_CAPABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
NOT_MOBILE = "not a mobile number (cannot receive SMS)"

# Outcomes of one number; READY = country code and NSN settled, type still to check.
_OK, _UNPARSABLE, _INVALID, _NOT_MOBILE, _UNDECIDED, _READY = 0, 1, 2, 3, 4, 5

# What the vectorised path accepts: digits, at most one leading "+", and the spacing punctuation that
# phonenumbers ignores. Letters, other symbols or a second "+" take the reference path.
_SHAPE = r"[ ()./\-]*\+?[ ()./\-]*[0-9][0-9 ()./\-]*"
_SPACING = r"[ ()./\-]"
_MIN_DIGITS, _MAX_DIGITS, _MAX_NSN = 3, 20, 17
_OTHER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
_SHORT_LENGTHS = (
    ValidationResult.TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ValidationResult.INVALID_LENGTH,
)


def unparsable(region: str) -> str:
    """Return the detail for text that is not a phone number at all."""
    return f"not a phone number (region {region})"


def invalid(region: str) -> str:
    """Return the detail for a number no numbering plan allows."""
    return f"not a valid number for its country (region {region})"


def normalise_phone(raw: str, region: str) -> tuple[str | None, str]:
    """Return (E.164 number, "") for a valid SMS-capable number, else (None, why)."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None, unparsable(region)
    # number_type does the full metadata match that is_valid_number would repeat; UNKNOWN = invalid.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        return None, invalid(region)
    if kind not in SMS_CAPABLE:
        return None, NOT_MOBILE
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), ""


@dataclass
class _Numbers:
    """Candidate numbers: country code and national significant number, with an outcome each."""

    cc: np.ndarray
    nsn: pa.Array
    status: np.ndarray


def _strings(values: np.ndarray | list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _bools(array: pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def _fullmatch(values: pa.Array, pattern: str) -> np.ndarray:
    return _bools(pc.fill_null(pc.match_substring_regex(values, f"^(?:{pattern})$"), False))


def _prefix_match(values: pa.Array, pattern: str) -> np.ndarray:
    return _bools(pc.fill_null(pc.match_substring_regex(values, f"^(?:{pattern})"), False))


def _lengths(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.utf8_length(values).to_numpy(zero_copy_only=False), dtype=np.int64)


def _matches_desc(values: pa.Array, lengths: np.ndarray, desc: PhoneNumberDesc | None) -> np.ndarray:
    """Vectorised phonenumbers._is_number_matching_desc."""
    if desc is None or not desc.national_number_pattern:
        return np.zeros(len(values), dtype=bool)
    ok = np.ones(len(values), dtype=bool)
    if desc.possible_length:
        ok = np.asarray(np.isin(lengths, list(desc.possible_length)), dtype=bool)
    if not ok.any():
        return ok
    matched: np.ndarray = ok & _fullmatch(values, desc.national_number_pattern)
    return matched


def _type_outcome(nsn: pa.Array, metadata: PhoneMetadata) -> np.ndarray:
    """Vectorised phonenumbers._number_type_helper, reduced to OK, NOT_MOBILE or INVALID."""
    lengths = _lengths(nsn)
    general = _matches_desc(nsn, lengths, metadata.general_desc)
    out = np.full(len(nsn), _INVALID, dtype=np.int8)
    if not general.any():
        return out
    other = np.zeros(len(nsn), dtype=bool)
    for name in _OTHER_TYPES:
        other |= _matches_desc(nsn, lengths, getattr(metadata, name))
    fixed = _matches_desc(nsn, lengths, metadata.fixed_line)
    mobile = _matches_desc(nsn, lengths, metadata.mobile)
    same = bool(metadata.same_mobile_and_fixed_line_pattern)
    sms = (fixed & (same | mobile)) | (~fixed & (not same) & mobile)
    not_mobile = other | (fixed & ~sms)
    out[general & sms] = _OK
    out[general & not_mobile] = _NOT_MOBILE
    return out


def _number_outcome(cc: int, nsn: pa.Array) -> np.ndarray:
    """Vectorised phonenumbers.number_type for numbers of one country calling code."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(cc)
    out = np.full(len(nsn), _INVALID, dtype=np.int8)
    if not regions:
        return out
    if len(regions) == 1:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, regions[0])
        return out if metadata is None else _type_outcome(nsn, metadata)
    # A shared code (+1, +44, +7...): the first region whose leading digits or patterns fit owns it.
    owner = np.full(len(nsn), -1, dtype=np.int64)
    for index, region in enumerate(regions):
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        todo = np.flatnonzero(owner == -1)
        if metadata is None or not len(todo):
            continue
        subset = nsn.take(pa.array(todo))
        if metadata.leading_digits is not None:
            hit = _prefix_match(subset, metadata.leading_digits)
        else:
            hit = _type_outcome(subset, metadata) != _INVALID
        owner[todo[hit]] = index
    for index in np.unique(owner[owner >= 0]):
        rows = np.flatnonzero(owner == index)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, regions[index])
        if metadata is not None:
            out[rows] = _type_outcome(nsn.take(pa.array(rows)), metadata)
    return out


@cache
def _groupless(pattern: str) -> bool:
    return re.compile(pattern).groups == 0


@cache
def _length_is_short(metadata_key: tuple[int, str], length: int) -> bool:
    metadata = _metadata_by_key(metadata_key)
    return _test_number_length("9" * length, metadata) in _SHORT_LENGTHS


@cache
def _metadata_by_key(key: tuple[int, str]) -> PhoneMetadata:
    cc, region = key
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, region)
    assert metadata is not None
    return metadata


def _strip_national_prefix(
    numbers: pa.Array, metadata: PhoneMetadata, key: tuple[int, str]
) -> tuple[pa.Array, np.ndarray]:
    """Vectorised prefix stripping of phonenumbers.parse; returns (numbers, rows left undecided).

    Only prefix rules without capture groups or transformations are applied here; numbers another
    rule matches are left for phonenumbers.
    """
    prefix = metadata.national_prefix_for_parsing
    undecided = np.zeros(len(numbers), dtype=bool)
    if not prefix or not len(numbers):
        return numbers, undecided
    if not _groupless(prefix) or metadata.national_prefix_transform_rule:
        return numbers, _prefix_match(numbers, prefix)
    found = pc.extract_regex(numbers, f"^(?P<p>(?:{prefix}))")
    matched = _bools(pc.is_valid(found))
    if not matched.any():
        return numbers, undecided
    rows = np.flatnonzero(matched)
    original = numbers.take(pa.array(rows))
    cut = _lengths(pc.struct_field(found.take(pa.array(rows)), [0]))
    stripped = _strings([value[n:] for value, n in zip(original.to_pylist(), cut.tolist(), strict=True)])
    general = metadata.general_desc
    viable = _matches_desc_pattern(original, general)
    still = _matches_desc_pattern(stripped, general)
    keep_original = viable & ~still
    short = np.array([_length_is_short(key, n) for n in _lengths(stripped).tolist()], dtype=bool)
    keep_original |= short
    result = np.asarray(numbers.to_numpy(zero_copy_only=False), dtype=object).copy()
    result[rows[~keep_original]] = np.asarray(stripped.to_pylist(), dtype=object)[~keep_original]
    return _strings(result), undecided


def _matches_desc_pattern(values: pa.Array, desc: PhoneNumberDesc | None) -> np.ndarray:
    """Vectorised phonenumbers._match_national_number (the pattern alone, no lengths)."""
    if desc is None or not desc.national_number_pattern:
        return np.zeros(len(values), dtype=bool)
    return _fullmatch(values, desc.national_number_pattern)


def _international(digits: pa.Array) -> _Numbers:
    """Decide numbers written "+<digits>" (any region): country code, prefix stripping, length."""
    n = len(digits)
    status = np.full(n, _UNDECIDED, dtype=np.int8)
    cc = np.zeros(n, dtype=np.int64)
    nsn = np.full(n, "", dtype=object)
    if not n:
        return _Numbers(cc, _strings(nsn), status)
    head = np.asarray(pc.utf8_slice_codeunits(digits, 0, 3).to_numpy(zero_copy_only=False), dtype="S3")
    d = head.view(np.uint8).reshape(n, 3).astype(np.int64) - 48
    known = np.zeros(1000, dtype=bool)
    known[[c for c in COUNTRY_CODE_TO_REGION_CODE if 0 < c < 1000]] = True
    c1, c2 = d[:, 0], d[:, 0] * 10 + d[:, 1]
    c3 = c2 * 10 + d[:, 2]
    width = np.where(known[c1], 1, np.where(known[c2], 2, np.where(known[c3], 3, 0)))
    # A leading 0 or an unknown code makes phonenumbers retry the digits as a national number.
    width[d[:, 0] == 0] = 0
    cc = np.select([width == 1, width == 2, width == 3], [c1, c2, c3], 0)
    for w in (1, 2, 3):
        rows = np.flatnonzero(width == w)
        if len(rows):
            nsn[rows] = pc.utf8_slice_codeunits(digits.take(pa.array(rows)), w).to_numpy(zero_copy_only=False)
    decided = width > 0
    lengths = np.array([len(v) for v in nsn.tolist()], dtype=np.int64)
    status[decided & (lengths < 2)] = _UNPARSABLE
    todo = decided & (status == _UNDECIDED)
    for code in np.unique(cc[todo]):
        rows = np.flatnonzero(todo & (cc == code))
        region = phonenumbers.region_code_for_country_code(int(code))
        key = (int(code), region)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(int(code), region)
        if metadata is None:
            continue
        stripped, undecided = _strip_national_prefix(_strings(nsn[rows]), metadata, key)
        nsn[rows] = stripped.to_numpy(zero_copy_only=False)
        status[rows[~undecided]] = _READY
    return _Numbers(cc, _strings(nsn), status)


def _national(digits: pa.Array, region: str) -> _Numbers:
    """Decide numbers written without "+" for one default region."""
    n = len(digits)
    status = np.full(n, _UNDECIDED, dtype=np.int8)
    cc = np.zeros(n, dtype=np.int64)
    metadata = PhoneMetadata.metadata_for_region(region, None) if region in SUPPORTED_REGIONS else None
    if metadata is None or metadata.country_code is None or not n:
        return _Numbers(cc, digits, status)
    cc[:] = int(metadata.country_code)
    # An international dialling prefix, or the region's own country code written without "+", needs
    # phonenumbers' heuristics.
    odd = np.zeros(n, dtype=bool)
    if metadata.international_prefix:
        odd |= _prefix_match(digits, metadata.international_prefix)
    odd |= _bools(pc.starts_with(digits, str(metadata.country_code)))
    key = (int(metadata.country_code), region)
    stripped, undecided = _strip_national_prefix(digits, metadata, key)
    status[~(odd | undecided)] = _READY
    return _Numbers(cc, stripped, status)


def _decide(numbers: _Numbers) -> tuple[np.ndarray, np.ndarray]:
    """Return (outcome, E.164 text) for numbers whose country code and NSN are settled."""
    status = numbers.status.copy()
    e164 = np.full(len(status), None, dtype=object)
    ready = status == _READY
    nsn = numbers.nsn
    lengths = _lengths(nsn)
    status[ready & (lengths > _MAX_NSN)] = _UNPARSABLE
    ready &= lengths <= _MAX_NSN
    for code in np.unique(numbers.cc[ready]):
        rows = np.flatnonzero(ready & (numbers.cc == code))
        subset = nsn.take(pa.array(rows))
        try:
            outcome = _number_outcome(int(code), subset)
        except pa.ArrowInvalid:
            # A metadata pattern RE2 cannot compile: let phonenumbers decide these.
            status[rows] = _UNDECIDED
            continue
        status[rows] = outcome
        good = rows[outcome == _OK]
        texts = nsn.take(pa.array(good)).to_pylist()
        e164[good] = [f"+{int(code)}{t}" for t in texts]
    return status, e164


def _distinct(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    codes, uniques = pd.factorize(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object))
    return np.asarray(codes), _strings(np.asarray(uniques, dtype=object))


def _outcomes(raw: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (E.164 or None, detail or None) for distinct (raw, region) pairs."""
    n = len(raw)
    status = np.full(n, _UNDECIDED, dtype=np.int8)
    e164 = np.full(n, None, dtype=object)
    text = _strings(raw)
    shaped = _fullmatch(text, _SHAPE) & (_lengths(text) <= 250)
    keys = pc.replace_substring_regex(text, _SPACING, "")
    plus = _bools(pc.starts_with(keys, "+"))
    digits = np.where(plus, _lengths(keys) - 1, _lengths(keys))
    fast = shaped & (digits >= _MIN_DIGITS) & (digits <= _MAX_DIGITS)

    # "+<digits>" does not depend on the region, so each distinct number is decided once.
    rows = np.flatnonzero(fast & plus)
    if len(rows):
        key_codes, distinct = _distinct(keys.take(pa.array(rows)))
        got, text_e164 = _decide(_international(pc.utf8_slice_codeunits(distinct, 1)))
        status[rows], e164[rows] = got[key_codes], text_e164[key_codes]
    national = fast & ~plus
    for region in pd.unique(regions[national]):
        rows = np.flatnonzero(national & (regions == region))
        key_codes, distinct = _distinct(keys.take(pa.array(rows)))
        got, text_e164 = _decide(_national(distinct, str(region)))
        status[rows], e164[rows] = got[key_codes], text_e164[key_codes]

    details = np.full(n, None, dtype=object)
    for pos in np.flatnonzero(status != _OK):
        region = str(regions[pos])
        if status[pos] == _UNDECIDED:
            e164[pos], why = normalise_phone(str(raw[pos]), region)
            details[pos] = why or None
        else:
            details[pos] = {_NOT_MOBILE: NOT_MOBILE, _INVALID: invalid(region)}.get(
                int(status[pos]), unparsable(region)
            )
    return e164, details


def normalise_phones(raw: pd.Series, regions: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return (E.164 or None, problem detail or None) per row, exactly as `normalise_phone` row by row.

    Empty values are neither numbers nor problems; `regions` holds each row's default region ("" = none).
    """
    values = raw.astype("object").where(raw.notna(), "").astype(str).to_numpy(dtype=object)
    region = regions.astype("object").where(regions.notna(), "").astype(str).to_numpy(dtype=object)
    region[region == ""] = "ZZ"
    present = values != ""
    e164_out = np.full(len(raw), None, dtype=object)
    detail_out = np.full(len(raw), None, dtype=object)
    if present.any():
        raw_codes, raw_uniques = pd.factorize(values[present])
        region_codes, region_uniques = pd.factorize(region[present])
        pair = raw_codes.astype(np.int64) * len(region_uniques) + region_codes
        codes, pairs = pd.factorize(pair)
        e164, details = _outcomes(
            np.asarray(raw_uniques, dtype=object)[pairs // len(region_uniques)],
            np.asarray(region_uniques, dtype=object)[pairs % len(region_uniques)],
        )
        e164_out[present] = e164[codes]
        detail_out[present] = details[codes]
    return (
        pd.Series(e164_out, index=raw.index, dtype="object"),
        pd.Series(detail_out, index=raw.index, dtype="object"),
    )
