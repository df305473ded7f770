"""BERT pre-training TFRecords: round trip, standard names, corrupt files."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from training.data import tfrecord

S, P = 16, 4


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    features = {
        "token_ids": rng.integers(0, 30522, (n, S)).astype(np.int32),
        "segment_ids": rng.integers(0, 2, (n, S)).astype(np.int32),
        "padding_mask": rng.integers(0, 2, (n, S)).astype(np.int32),
        "masked_lm_positions": rng.integers(0, S, (n, P)).astype(np.int32),
    }
    labels = {
        "masked_lm_ids": rng.integers(0, 30522, (n, P)).astype(np.int32),
        "masked_lm_weights": rng.integers(0, 2, (n, P)).astype(np.float32),
        "next_sentence_labels": rng.integers(0, 2, (n,)).astype(np.int32),
    }
    return features, labels


def test_round_trip(tmp_path):
    features, labels = _examples(10)
    path = str(tmp_path / "part-0.tfrecord")
    assert tfrecord.write_examples(path, features, labels) == 10
    ds = tfrecord.read_dataset(path, S, P, batch_size=4)
    got = list(ds)
    assert len(got) == 2  # 10 examples, drop_remainder
    f_spec, l_spec = ds.element_spec
    assert f_spec["token_ids"].shape.as_list() == [4, S]
    assert l_spec["next_sentence_labels"].shape.as_list() == [4]
    for key, value in {**features, **labels}.items():
        read = np.concatenate([{**f, **l}[key].numpy() for f, l in got])
        assert read.dtype == value.dtype, key
        np.testing.assert_array_equal(read, value[:8], err_msg=key)


def test_written_file_uses_google_bert_feature_names(tmp_path):
    features, labels = _examples(1)
    path = str(tmp_path / "x.tfrecord")
    tfrecord.write_examples(path, features, labels)
    raw = next(iter(tf.data.TFRecordDataset(path))).numpy()
    example = tf.train.Example.FromString(raw).features.feature
    assert sorted(example) == sorted(
        [
            "input_ids",
            "input_mask",
            "segment_ids",
            "masked_lm_positions",
            "masked_lm_ids",
            "masked_lm_weights",
            "next_sentence_labels",
        ]
    )
    assert list(example["input_ids"].int64_list.value) == (features["token_ids"][0].tolist())
    assert list(example["input_mask"].int64_list.value) == (features["padding_mask"][0].tolist())
    assert list(example["masked_lm_weights"].float_list.value) == (
        labels["masked_lm_weights"][0].tolist()
    )
    assert list(example["next_sentence_labels"].int64_list.value) == [
        labels["next_sentence_labels"][0]
    ]


def test_glob_and_several_files(tmp_path):
    for i in range(3):
        tfrecord.write_examples(str(tmp_path / f"part-{i}.tfrecord"), *_examples(5, seed=i))
    ds = tfrecord.read_dataset(str(tmp_path / "part-*.tfrecord"), S, P, shuffle=True, seed=1)
    assert sum(1 for _ in ds) == 15


def test_corrupt_file_error_names_the_file(tmp_path):
    good = str(tmp_path / "good.tfrecord")
    bad = str(tmp_path / "bad.tfrecord")
    tfrecord.write_examples(good, *_examples(5))
    tfrecord.write_examples(bad, *_examples(5))
    original = pathlib.Path(bad).read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 2] ^= 0xFF
    pathlib.Path(bad).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"Corrupt TFRecord file .*bad\.tfrecord"):
        tfrecord.read_dataset([good, bad], S, P)
    pathlib.Path(bad).write_bytes(original[:-7])  # truncated
    with pytest.raises(ValueError, match=r"bad\.tfrecord.*truncated"):
        tfrecord.read_dataset([good, bad], S, P)


def test_missing_file_and_wrong_lengths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-.*tfrecord"):
        tfrecord.read_dataset(str(tmp_path / "nothing-*.tfrecord"), S, P)
    path = str(tmp_path / "x.tfrecord")
    tfrecord.write_examples(path, *_examples(2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Key: \w+\.\s+Can't parse"):
        next(iter(tfrecord.read_dataset(path, S + 1, P)))
    features, labels = _examples(2)
    del labels["masked_lm_weights"]
    with pytest.raises(ValueError, match=r"missing features \['masked_lm_weights'\]"):
        tfrecord.write_examples(path, features, labels)
