"""Raw extracted data: every value as text, with where each row came from."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.domain.contract import CONTRACT, Entity


class SourceError(Exception):
    """A source cannot be used at all: nothing may be sent until it is fixed."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self) -> tuple[type[SourceError], tuple[str, str]]:
        # The ingest may run in a child process: the error must cross back with its own arguments.
        return (SourceError, (self.source, self.problem))


@dataclass(frozen=True)
class RawFrame:
    """One entity's rows as text; `lines` gives each row's line (CSV) or row number (Parquet, SQL)."""

    entity: Entity
    source: str
    frame: pd.DataFrame
    lines: pd.Series
    line_label: str = "line"

    def __post_init__(self) -> None:
        if len(self.frame) != len(self.lines):
            raise ValueError("one line number per row is required")


def check_columns(entity: Entity, source: str, columns: list[str]) -> None:
    """Raise SourceError naming the source and every required column it lacks."""
    spec = CONTRACT[entity]
    missing = [c for c in spec.required_columns if c not in columns]
    if missing:
        raise SourceError(
            source,
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"for {entity.value} (see docs/data-contract.md)",
        )


_TEXT = pd.Series([], dtype=str).dtype


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the contract columns as stripped text, empty string for missing values."""
    out = pd.DataFrame(index=frame.index)
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series):
            text = series.dt.strftime("%Y-%m-%d").where(series.notna(), "")
        elif series.dtype == _TEXT:
            # Already text (a CSV read): the round trip through objects below gives the same, slower.
            text = series.fillna("")
        else:
            text = series.astype("object").where(series.notna(), "").astype(str)
        out[name] = text.str.strip()
    return out
