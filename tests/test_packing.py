"""Sequence packing: the packing algorithm, the packed row layout and its checks."""

import numpy as np
import pytest

from training import packing


def _unpacked(lengths, seq, seed=0):
    """Left-aligned unpacked sequences with random ids; segment 1 on the second half."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    mask = (np.arange(seq)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return {
        "token_ids": (rng.integers(1, 50, (n, seq)) * mask).astype(np.int32),
        "segment_ids": ((np.arange(seq)[None] >= np.asarray(lengths)[:, None] // 2)
                        * mask).astype(np.int32),
        "padding_mask": mask,
        "labels": np.arange(n, dtype=np.int32) + 100,
    }


# --- the algorithm -------------------------------------------------------------------------


def test_spfhp_hand_example():
    # Longest first; all sequences of one length are placed together, each into the open
    # pack with the most space left that fits it (equal lengths never pair in their own
    # pass): 100 -> new (28 left); both 60s -> new (68, 68); 30 -> (60, 30) (38);
    # 20 -> the other 60 (68): (60, 20) (48); 10 -> (60, 20, 10), closed at 3 sequences.
    histogram = np.bincount([100, 60, 60, 30, 20, 10], minlength=129)
    assert packing.pack_histogram(histogram, 128, 3) == {
        (100,): 1, (60, 30): 1, (60, 20, 10): 1}
    # At most 2 per pack: (60, 30) and (60, 20) close, so 10 joins 100 (28 left).
    assert packing.pack_histogram(histogram, 128, 2) == {
        (100, 10): 1, (60, 30): 1, (60, 20): 1}


def test_pack_sequences_is_a_valid_deterministic_partition():
    lengths = np.random.default_rng(0).integers(5, 129, size=3000)
    rows = packing.pack_sequences(lengths, 128, 3, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(1 <= len(row) <= 3 and lengths[list(row)].sum() <= 128 for row in rows)
    assert rows == packing.pack_sequences(lengths, 128, 3, seed=1)
    assert rows != packing.pack_sequences(lengths, 128, 3, seed=2)
    # Lengths uniform in [5, 128] fill 52% of unpacked rows; SPFHP fills over 97%.
    efficiency = packing.packing_efficiency(lengths, rows, 128)
    assert efficiency == pytest.approx(lengths.sum() / (len(rows) * 128))
    assert efficiency > 0.97
    assert len(rows) >= np.ceil(lengths.sum() / 128)


def test_one_sequence_per_pack_is_no_packing():
    lengths = [5, 128, 7]
    rows = packing.pack_sequences(lengths, 128, 1)
    assert sorted(rows) == [(0,), (1,), (2,)]


@pytest.mark.parametrize("lengths, message", [
    ([10, 129], "Sequence 1 has 129 tokens, longer than the row"),
    ([10, 0], "Sequence 1 has 0 tokens"),
])
def test_pack_sequences_rejects_bad_lengths(lengths, message):
    with pytest.raises(ValueError, match=message):
        packing.pack_sequences(lengths, 128, 3)


def test_pack_sequences_rejects_bad_slots():
    with pytest.raises(ValueError, match="max_sequences_per_pack must be >= 1"):
        packing.pack_sequences([10], 128, 0)


# --- the layout ----------------------------------------------------------------------------


def test_layout_hand_example():
    examples = _unpacked([3, 2, 4], seq=6)
    out = packing.layout_packed_rows(examples, [(2, 1), (0,)], 7, 3, per_sequence=("labels",))
    t = examples["token_ids"]
    np.testing.assert_array_equal(out["token_ids"], [
        [*t[2, :4], *t[1, :2], 0], [*t[0, :3], 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[0, 0, 1, 1, 0, 1, 0],
                                                       [0, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["sequence_ids"], [[1, 1, 1, 1, 2, 2, 0],
                                                        [1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["padding_mask"], out["sequence_ids"] > 0)
    np.testing.assert_array_equal(out["cls_positions"], [[0, 4, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out["sequence_weights"], [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(out["labels"], [[102, 101, 0], [100, 0, 0]])
    packing.check_packed_rows(out["sequence_ids"], out["cls_positions"], out["padding_mask"])


def test_layout_rejects_overfull_rows_and_unaligned_input():
    examples = _unpacked([3, 4], seq=6)
    with pytest.raises(ValueError, match="Row 0 holds 2 sequences, more than "
                                         "max_sequences_per_pack=1"):
        packing.layout_packed_rows(examples, [(0, 1)], 8, 1)
    with pytest.raises(ValueError, match="Row 0 holds 7 tokens, more than seq_length=6"):
        packing.layout_packed_rows(examples, [(0, 1)], 6, 2)
    examples["padding_mask"][1] = [0, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="padding_mask of sequence 1 has padding before"):
        packing.layout_packed_rows(examples, [(0, 1)], 8, 2)


@pytest.mark.parametrize("sequence_ids, cls_positions, message", [
    ([[1, 1, 2, 1, 0]], [[0, 2, 3]], "not contiguous runs"),
    ([[1, 1, 3, 3, 0]], [[0, 2, 0]], "not contiguous runs"),
    ([[2, 2, 1, 1, 0]], [[0, 2, 0]], "not contiguous runs"),
    ([[1, 0, 2, 2, 0]], [[0, 2, 0]], "padding \\(0\\) must only come after"),
    ([[1, 2, 3, 4, 0]], [[0, 1, 2]], "holds 4 sequences, more than the 3 cls_positions"),
    ([[1, 1, 2, 2, 0]], [[0, 3, 0]], "its sequences start at \\[0, 2\\]"),
])
def test_check_packed_rows_names_the_problem(sequence_ids, cls_positions, message):
    with pytest.raises(ValueError, match=message):
        packing.check_packed_rows(sequence_ids, cls_positions)
