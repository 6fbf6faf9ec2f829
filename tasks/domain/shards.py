"""Shards of a cycle: a stable split of the customers by a hash of their key, and merging shard stats."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the customers whose key hashes to `index` modulo `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need count >= 1 and 0 <= index < count")

    @property
    def label(self) -> str:
        """Return "k/n" with k counted from 1, as run names and the audit log show it."""
        return f"{self.index + 1}/{self.count}"


def shards(count: int) -> list[Shard]:
    """Return every shard of a `count`-way split."""
    return [Shard(i, count) for i in range(count)]


def shard_of(key: str, count: int) -> int:
    """Return the shard of one customer key: the first 32 bits of its MD5, modulo `count`."""
    # MD5 because PostgreSQL has it built in: the store filters by the same hash in SQL.
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % count


def shard_of_keys(keys: pd.Series, count: int) -> pd.Series:
    """Return the shard of every key in `keys`."""
    return pd.Series(
        np.fromiter((shard_of(str(k), count) for k in keys), dtype=np.int64, count=len(keys)),
        index=keys.index,
    )


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge the stage stats of several shards: counts add up, nested counts merge, equal labels stay.

    Two shards disagreeing on a label (a policy or model version) is kept visible as "a | b".
    """
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = value if key not in out else _merge(out[key], value)
    return out


def _merge(first: Any, second: Any) -> Any:
    if isinstance(first, bool) or isinstance(second, bool):
        return bool(first) or bool(second)
    if isinstance(first, int | float) and isinstance(second, int | float):
        return first + second
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        merged = merge_stats([first, second])
        return (
            dict(sorted(merged.items()))
            if all(isinstance(v, int | float) for v in merged.values())
            else merged
        )
    if first == second or second in ("", None):
        return first
    if first in ("", None):
        return second
    seen = str(first).split(" | ")
    return first if str(second) in seen else f"{first} | {second}"
