"""Dynamic MLM masking: statistics, special tokens, static slots."""

import numpy as np
import pytest
import tensorflow as tf

from training.data import masking

PAD, CLS, SEP, MASK = 0, 101, 102, 103
VOCAB = 30522
N, S, P = 3000, 64, 8


def _batch(seed=0):
    """Random packed pairs: [CLS] a [SEP] b [SEP] [PAD]..., ids >= 1000."""
    rng = np.random.default_rng(seed)
    token_ids = np.zeros((N, S), np.int32)
    segment_ids = np.zeros((N, S), np.int32)
    for i in range(N):
        n = rng.integers(8, S + 1)
        a = rng.integers(1, n - 3)
        token_ids[i, :n] = rng.integers(1000, VOCAB, n)
        token_ids[i, [0, a + 1, n - 1]] = [CLS, SEP, SEP]
        segment_ids[i, a + 2 : n] = 1
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": (token_ids != PAD).astype(np.int32),
        "next_sentence_labels": rng.integers(0, 2, N).astype(np.int32),
    }


@pytest.fixture(scope="module")
def masked():
    batch = _batch()
    masker = masking.MlmMasker(VOCAB, MASK, (CLS, SEP, PAD), max_predictions_per_seq=P, seed=1)
    features, labels = tf.function(masker)(batch)  # Eager map_fn is slow.
    return batch, {k: v.numpy() for k, v in {**features, **labels}.items()}


def test_output_format(masked):
    _, out = masked
    expected = {
        "token_ids": (np.int32, (N, S)),
        "segment_ids": (np.int32, (N, S)),
        "padding_mask": (np.int32, (N, S)),
        "masked_lm_positions": (np.int32, (N, P)),
        "masked_lm_ids": (np.int32, (N, P)),
        "masked_lm_weights": (np.float32, (N, P)),
        "next_sentence_labels": (np.int32, (N,)),
    }
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == expected


def test_number_of_predictions_per_sequence(masked):
    batch, out = masked
    maskable = (
        (batch["padding_mask"] == 1) & (batch["token_ids"] != CLS) & (batch["token_ids"] != SEP)
    ).sum(axis=1)
    expected = np.minimum(P, np.ceil(0.15 * maskable)).astype(int)
    np.testing.assert_array_equal(out["masked_lm_weights"].sum(axis=1), expected)
    # Weights are a prefix of ones; unused slots are all zero.
    slots = np.arange(P)[None, :]
    np.testing.assert_array_equal(
        out["masked_lm_weights"], (slots < expected[:, None]).astype(np.float32)
    )
    unused = out["masked_lm_weights"] == 0
    assert unused.sum() > 1000
    assert (out["masked_lm_positions"][unused] == 0).all()
    assert (out["masked_lm_ids"][unused] == 0).all()


def test_positions_ids_and_replacement_rates(masked):
    batch, out = masked
    used = out["masked_lm_weights"] == 1
    rows = np.nonzero(used)[0]
    pos = out["masked_lm_positions"][used]
    original = batch["token_ids"][rows, pos]
    np.testing.assert_array_equal(out["masked_lm_ids"][used], original)
    assert not np.isin(original, [CLS, SEP, PAD]).any()
    assert (batch["padding_mask"][rows, pos] == 1).all()
    # Positions are distinct within a row.
    for r in range(50):
        p = out["masked_lm_positions"][r][used[r]]
        assert len(set(p)) == len(p)

    now = out["token_ids"][rows, pos]
    n = len(now)
    assert n > 15_000
    as_mask = np.mean(now == MASK)
    unchanged = np.mean(now == original)
    random = np.mean((now != MASK) & (now != original))
    assert abs(as_mask - 0.8) < 0.015, as_mask
    assert abs(unchanged - 0.1) < 0.01, unchanged
    assert abs(random - 0.1) < 0.01, random


def test_unselected_tokens_and_other_features_unchanged(masked):
    batch, out = masked
    selected = np.zeros((N, S), bool)
    rows, slots = np.nonzero(out["masked_lm_weights"] == 1)
    selected[rows, out["masked_lm_positions"][rows, slots]] = True
    np.testing.assert_array_equal(out["token_ids"][~selected], batch["token_ids"][~selected])
    # Specials and padding stay in place.
    special = np.isin(batch["token_ids"], [CLS, SEP, PAD])
    np.testing.assert_array_equal(out["token_ids"][special], batch["token_ids"][special])
    for key in ("segment_ids", "padding_mask", "next_sentence_labels"):
        np.testing.assert_array_equal(out[key], batch[key])
    # The overall rate over maskable tokens is 15% (ceil adds a little).
    maskable = ~special
    rate = selected.sum() / maskable.sum()
    assert 0.15 <= rate < 0.17, rate


def test_masking_is_dynamic_in_tf_data():
    batch = _batch(seed=3)
    masker = masking.MlmMasker(VOCAB, MASK, (CLS, SEP, PAD), max_predictions_per_seq=P, seed=5)
    ds = (
        tf.data.Dataset.from_tensor_slices(batch)
        .take(64)
        .batch(32, drop_remainder=True)
        .repeat(2)
        .map(masker)
    )
    spec_f, spec_l = ds.element_spec
    assert spec_f["masked_lm_positions"].shape.as_list() == [32, P]
    assert spec_l["masked_lm_weights"].shape.as_list() == [32, P]
    assert spec_f["token_ids"].shape.as_list() == [32, S]
    epochs = [f["masked_lm_positions"].numpy() for f, _ in ds]
    assert len(epochs) == 4
    # Same sequences, different draws in the second epoch.
    assert (epochs[0] != epochs[2]).any() and (epochs[1] != epochs[3]).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"masked_lm_prob": 0.0}, "masked_lm_prob must be in"),
        ({"max_predictions_per_seq": 0}, "max_predictions_per_seq must be >= 1"),
        (
            {"mask_token_rate": 0.95, "random_token_rate": 0.1},
            "mask_token_rate=0.95 and random_token_rate=0.1",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masking.MlmMasker(VOCAB, MASK, (CLS, SEP, PAD), **kwargs)
