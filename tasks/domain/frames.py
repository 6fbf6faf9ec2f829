"""Small DataFrame helpers shared by the steps."""

from __future__ import annotations

from typing import Any

import pandas as pd


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return rows as dicts with string keys and None for missing values."""
    clean = frame.astype("object").where(frame.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in clean.to_dict("records")]
