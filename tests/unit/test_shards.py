"""Shards: a stable, even split of customer keys, and shard stats that add up to the whole."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tasks.domain.shards import Shard, merge_stats, shard_of, shard_of_keys, shards


def test_a_key_always_lands_in_the_same_shard() -> None:
    assert shard_of("C0000042", 8) == shard_of("C0000042", 8)
    assert shard_of("C0000042", 8) == int(hashlib.md5(b"C0000042").hexdigest()[:8], 16) % 8


def test_every_key_is_in_exactly_one_shard() -> None:
    keys = [f"C{i:07d}" for i in range(5000)]
    owners = [[s.index for s in shards(4) if shard_of(k, s.count) == s.index] for k in keys]
    assert all(len(o) == 1 for o in owners)


def test_shards_are_roughly_even() -> None:
    keys = pd.Series([f"C{i:07d}" for i in range(20000)])
    sizes = shard_of_keys(keys, 4).value_counts()
    assert len(sizes) == 4
    assert sizes.min() > 0.9 * 5000 and sizes.max() < 1.1 * 5000


def test_non_ascii_keys_hash_by_their_utf8_bytes() -> None:
    assert shard_of("kündé", 1000) == int(hashlib.md5("kündé".encode()).hexdigest()[:8], 16) % 1000


def test_one_shard_holds_everyone() -> None:
    assert {shard_of(f"K{i}", 1) for i in range(100)} == {0}


@pytest.mark.parametrize(("index", "count"), [(0, 0), (4, 4), (-1, 3)])
def test_a_shard_outside_its_split_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard(index, count)


def test_a_shard_is_labelled_from_one() -> None:
    assert [s.label for s in shards(3)] == ["1/3", "2/3", "3/3"]


def test_merged_stats_add_counts_and_nested_counts() -> None:
    first = {"sent": 3, "by_channel": {"sms:sent": 2, "email:sent": 1}, "cost": 0.5}
    second = {"sent": 4, "by_channel": {"sms:sent": 1, "whatsapp:sent": 3}, "cost": 0.25}
    assert merge_stats([first, second]) == {
        "sent": 7,
        "by_channel": {"email:sent": 1, "sms:sent": 3, "whatsapp:sent": 3},
        "cost": 0.75,
    }


def test_merged_stats_keep_a_label_the_shards_agree_on() -> None:
    merged = merge_stats([{"policy_version": "p1", "n": 1}, {"policy_version": "p1", "n": 2}])
    assert merged == {"policy_version": "p1", "n": 3}


def test_merged_stats_show_labels_the_shards_disagree_on() -> None:
    merged = merge_stats([{"model_version": "m1"}, {"model_version": "m2"}, {"model_version": "m1"}])
    assert merged == {"model_version": "m1 | m2"}


def test_an_empty_shard_takes_the_label_of_the_others() -> None:
    assert merge_stats([{"policy_version": ""}, {"policy_version": "p1"}]) == {"policy_version": "p1"}


def test_merged_flags_are_true_when_any_shard_says_so() -> None:
    assert merge_stats([{"skipped": False}, {"skipped": True}]) == {"skipped": True}


def test_merged_playbook_stats_merge_per_playbook() -> None:
    a = {"by_playbook": {"renewal": {"new": 2, "by_step": {"T-30": 2}}}}
    b = {"by_playbook": {"renewal": {"new": 1, "by_step": {"T-14": 1}}, "ladder": {"new": 5, "by_step": {}}}}
    assert merge_stats([a, b]) == {
        "by_playbook": {
            "renewal": {"new": 3, "by_step": {"T-14": 1, "T-30": 2}},
            "ladder": {"new": 5, "by_step": {}},
        }
    }
