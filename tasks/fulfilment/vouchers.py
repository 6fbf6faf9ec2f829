"""Voucher fulfilment: hand each reward one code from a pool imported from CSV, never a code twice."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

from tasks.fulfilment import Event, Grant, Outcome, Result

CSV_COLUMNS = ("code", "rule", "market")
OPTIONAL_COLUMNS = ("valid_until",)
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{3,63}$")
_MARKET = re.compile(r"^[A-Z]{2}$")


class VoucherFileError(ValueError):
    """A voucher file is unreadable or holds a bad row; names the file, line and field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))


@dataclass(frozen=True)
class VoucherCode:
    """One code for the rewards of one rule in one market, optionally valid until a day."""

    code: str
    rule: str
    market: str
    valid_until: date | None = None


class VoucherPool(Protocol):
    """The imported codes (rows in the store)."""

    def issue(self, reward_key: str, rule: str, market: str, today: date) -> str | None:
        """Return the code held by `reward_key`, taking a free valid one if it has none; None if none is left.

        Safe under concurrency: two callers never get the same code, and one reward never gets two.
        """
        ...


class VoucherFulfiller:
    """Fulfils voucher rewards from the pool of their rule and market."""

    def __init__(self, pool: VoucherPool) -> None:
        self.pool = pool

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        """Issue one code per grant; an empty pool is a retry (import more codes), not a failure."""
        results = []
        for grant in grants:
            if grant.event is not Event.GRANTED:
                # The code stays with its reward (a code is never reissued); the reward's status says void.
                results.append(Result(grant.reward_key, Outcome.FULFILLED, "voucher"))
                continue
            code = self.pool.issue(grant.reward_key, grant.rule, grant.market, grant.granted_on)
            if code is None:
                error = f"voucher pool {grant.rule}/{grant.market} is empty"
                results.append(Result(grant.reward_key, Outcome.RETRY, error=error))
            else:
                # The code is a bearer secret: it stays in the pool table, never in references or logs.
                results.append(Result(grant.reward_key, Outcome.FULFILLED, "voucher"))
        return results


def read_voucher_csv(path: Path) -> list[VoucherCode]:
    """Return the codes of a CSV file (code, rule, market[, valid_until]); every bad row is reported."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise VoucherFileError(path, [f"line 1: missing column(s) {', '.join(missing)}"])
            unknown = [c for c in header if c not in CSV_COLUMNS + OPTIONAL_COLUMNS]
            if unknown:
                raise VoucherFileError(path, [f"line 1: unknown column(s) {', '.join(unknown)}"])
            rows = [
                ({(k or "").strip(): (v or "").strip() for k, v in row.items()}, reader.line_num)
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VoucherFileError(path, [f"cannot read file: {exc}"]) from exc
    codes: list[VoucherCode] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for row, line in rows:
        code, rule, market = row["code"], row["rule"], row["market"]
        if not _CODE.match(code):
            problems.append(f"line {line}, code: not a code of 4-64 letters, digits, '_' or '-'")
            continue
        if code in seen:
            problems.append(f"line {line}, code: repeats line {seen[code]}")
            continue
        seen[code] = line
        if not rule:
            problems.append(f"line {line}, rule: required")
        if not _MARKET.match(market):
            problems.append(f"line {line}, market: {market!r} is not a two-letter upper-case market code")
        until = None
        if row.get("valid_until"):
            try:
                until = date.fromisoformat(row["valid_until"])
            except ValueError:
                problems.append(
                    f"line {line}, valid_until: {row['valid_until']!r} is not a date (YYYY-MM-DD)"
                )
        codes.append(VoucherCode(code, rule, market, until))
    if problems:
        raise VoucherFileError(path, problems)
    return codes
