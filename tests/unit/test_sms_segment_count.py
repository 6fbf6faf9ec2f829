"""The set-based segment count gives what counting every character's cost gives, for any body."""

from __future__ import annotations

import random

import pytest

from tasks.domain.messaging import GSM7_BASIC, GSM7_EXTENSION, SmsSegments, sms_segments


def _per_character(body: str) -> SmsSegments:
    """Count segments the way the first version did: one cost per character, parts filled greedily."""
    gsm = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)
    if gsm:
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
        single, multi, encoding = 70, 67, "UCS-2"
    total = sum(costs)
    if total <= single:
        return SmsSegments(encoding, 1, total)
    parts, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            parts, used = parts + 1, 0
        used += cost
    return SmsSegments(encoding, parts, total)


ALPHABETS = {
    "plain": "abcdefghij ,.!?0123456789\n",
    "escapes": "abc €[]{}^~|\\",
    "accents": "abcé ščž",
    "astral": "ab 😀👍",
}


@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
def test_segments_match_a_per_character_count(alphabet: str) -> None:
    rng = random.Random(alphabet)
    for length in [0, 1, 66, 67, 68, 69, 70, 71, 134, 135, 152, 153, 154, 159, 160, 161, 306, 307, 500]:
        for _ in range(20):
            body = "".join(rng.choice(ALPHABETS[alphabet]) for _ in range(length))
            assert sms_segments(body) == _per_character(body), body
