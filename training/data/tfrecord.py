"""The standard BERT pre-training TFRecord format, read and written.

Google's `create_pretraining_data.py` (and NVIDIA's and Graphcore's BERT
pipelines) store statically masked examples as `tf.train.Example`s with
int64 features `input_ids`, `input_mask`, `segment_ids` [S],
`masked_lm_positions`, `masked_lm_ids` [P], `next_sentence_labels` [1] and the
float feature `masked_lm_weights` [P]. This module maps them to and from the
(features, labels) format of `training.data.masking`, so such datasets plug into
the same training loop.

Packed rows (training/data/packing.py, docs/packing.md) are stored in the layout of
Graphcore's packed BERT data: `input_mask` holds each token's sequence index
(1..k, 0 = padding), `positions` restart at each sequence, `masked_lm_weights`
holds each prediction's sequence index, and [k] features
`next_sentence_positions` ([CLS] of each sequence), `next_sentence_labels`
and `next_sentence_weights` (1 on slots with a sequence).
"""

import os

import numpy as np
import tensorflow as tf

from training.data import masking, packing

# Files read at once, in a fixed interleave order.
READ_PARALLELISM = 16

# Our name -> the TFRecord feature name.
_NAMES = {
    "token_ids": "input_ids",
    "padding_mask": "input_mask",
    "segment_ids": "segment_ids",
    "masked_lm_positions": "masked_lm_positions",
    "masked_lm_ids": "masked_lm_ids",
    "masked_lm_weights": "masked_lm_weights",
    "next_sentence_labels": "next_sentence_labels",
}


# Packed rows: our name -> the TFRecord feature name (Graphcore's packed layout).
_PACKED_NAMES = {
    "token_ids": "input_ids",
    "sequence_ids": "input_mask",
    "segment_ids": "segment_ids",
    "masked_lm_positions": "masked_lm_positions",
    "masked_lm_ids": "masked_lm_ids",
    "masked_lm_weights": "masked_lm_weights",
    "cls_positions": "next_sentence_positions",
    "next_sentence_labels": "next_sentence_labels",
    "sequence_weights": "next_sentence_weights",
}
_FLOAT_FEATURES = ("masked_lm_weights", "next_sentence_weights")


def _feature(name, value):
    value = np.reshape(value, [-1])
    if name in _FLOAT_FEATURES:
        return tf.train.Feature(float_list=tf.train.FloatList(value=value.astype(np.float32)))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=value.astype(np.int64)))


def serialize_packed_examples(flat):
    """Yields serialized packed rows (Graphcore's packed layout, see the module docstring).

    Args:
      flat: a flat batch-major dict of packed rows: the `training.data.masking`
        format plus `sequence_ids`, `cls_positions` and `sequence_weights`.
    """
    flat = {k: np.asarray(v) for k, v in flat.items()}
    missing = sorted(set(_PACKED_NAMES) - set(flat))
    if missing:
        raise ValueError(f"Cannot serialize packed rows: missing features {missing}")
    for i in range(len(flat["token_ids"])):
        values = {theirs: flat[ours][i] for ours, theirs in _PACKED_NAMES.items()}
        sequence_ids = flat["sequence_ids"][i]
        starts = np.concatenate([[0], flat["cls_positions"][i]])[sequence_ids]
        values["positions"] = np.where(sequence_ids > 0, np.arange(len(sequence_ids)) - starts, 0)
        predicted = sequence_ids[flat["masked_lm_positions"][i]]
        values["masked_lm_weights"] = np.where(flat["masked_lm_weights"][i] > 0, predicted, 0)
        feature = {name: _feature(name, value) for name, value in values.items()}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        yield example.SerializeToString(deterministic=True)


def _flatten(features, labels):
    return {**features, **labels}


def serialize_examples(flat):
    """Yields serialized `tf.train.Example`s (deterministic bytes) of a flat batch-major dict.

    Args:
      flat: every feature and label of the `training.data.masking` format, numpy
        arrays or eager tensors with a leading example axis.
    """
    flat = {k: np.asarray(v) for k, v in flat.items()}
    missing = sorted(set(_NAMES) - set(flat))
    if missing:
        raise ValueError(f"Cannot serialize examples: missing features {missing}")
    n = len(flat["token_ids"])
    # Python lists fill the protos twice as fast as numpy scalars (same bytes).
    rows = {ours: np.reshape(flat[ours], [n, -1]).tolist() for ours in _NAMES}
    for i in range(n):
        example = tf.train.Example()
        feature = example.features.feature
        for ours, theirs in _NAMES.items():
            if ours == "masked_lm_weights":
                feature[theirs].float_list.value.extend(rows[ours][i])
            else:
                feature[theirs].int64_list.value.extend(rows[ours][i])
        # Sorted map keys: the same example gives the same bytes in every process.
        yield example.SerializeToString(deterministic=True)


def write_examples(path, features, labels):
    """Writes a batch-major (features, labels) pair of arrays to a TFRecord.

    Args:
      path: output file, written atomically (temp file then rename).
      features, labels: dicts in the `training.data.masking` format, numpy or eager
        tensors with a leading example axis.

    Returns:
      The number of examples written.
    """
    flat = _flatten(features, labels)
    serialize = serialize_packed_examples if "sequence_ids" in flat else serialize_examples
    try:
        records = list(serialize(flat))
    except ValueError as e:
        raise ValueError(f"Cannot write {path}: {e}") from None
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(record)
    os.replace(tmp, path)
    return len(records)


def shard_policy(num_files, num_workers):
    """FILE sharding when every worker gets a file, else DATA (all read all, keep 1/N)."""
    if num_workers > 1 and num_files >= num_workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def training_dataset(paths, seq_length, max_predictions_per_seq, global_batch_size, *,
                     num_workers=1, start_batch=0, shuffle=True, seed=0, shuffle_buffer=10_000,
                     max_sequences_per_pack=None, check=True):
    """The endless training stream from TFRecord shards, for `tf.distribute`.

    With FILE sharding each of the `num_workers` reads its own files and
    consumes `global_batch_size / num_workers` records per step; with DATA
    sharding every worker reads every record. A run resumed at `start_batch`
    skips exactly the records the stopped run consumed, so it continues the
    same stream instead of starting a new shuffle. `check`: see `read_dataset`.
    """
    files = expand_patterns(paths)
    policy = shard_policy(len(files), num_workers)
    per_stream = global_batch_size
    if policy == tf.data.experimental.AutoShardPolicy.FILE:
        per_stream //= num_workers
    dataset = read_dataset(files, seq_length, max_predictions_per_seq, global_batch_size,
                           shuffle=shuffle, repeat=True, seed=seed,
                           shuffle_buffer=shuffle_buffer,
                           max_sequences_per_pack=max_sequences_per_pack,
                           skip=start_batch * per_stream, check=check)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def _feature_spec(seq_length, max_predictions_per_seq):
    s, p = seq_length, max_predictions_per_seq
    return {
        "input_ids": tf.io.FixedLenFeature([s], tf.int64),
        "input_mask": tf.io.FixedLenFeature([s], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([s], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([p], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([p], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([p], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }


def _packed_feature_spec(seq_length, max_predictions_per_seq, max_sequences_per_pack):
    s, p, k = seq_length, max_predictions_per_seq, max_sequences_per_pack
    spec = _feature_spec(s, p)
    spec.update({
        "next_sentence_positions": tf.io.FixedLenFeature([k], tf.int64),
        "next_sentence_labels": tf.io.FixedLenFeature([k], tf.int64),
        "next_sentence_weights": tf.io.FixedLenFeature([k], tf.float32),
    })
    return spec


def _decode_packed(serialized, spec):
    parsed = tf.io.parse_single_example(serialized, spec)
    out = {ours: parsed[theirs] for ours, theirs in _PACKED_NAMES.items()}
    out["padding_mask"] = out["sequence_ids"] > 0
    out["masked_lm_weights"] = out["masked_lm_weights"] > 0
    out = {k: tf.cast(v, tf.float32 if k in ("masked_lm_weights", "sequence_weights")
                      else tf.int32) for k, v in out.items()}
    return masking.split_features_labels(out)


def check_packed_records(paths, spec):
    """Checks every packed row of each file (`training.data.packing.check_packed_rows`).

    Raises:
      ValueError: naming the file and the first malformed row.
    """
    for path in paths:
        rows = tf.data.TFRecordDataset(path).map(lambda x: _decode_packed(x, spec)).batch(4096)
        offset = 0
        for features, _ in rows:
            try:
                packing.check_packed_rows(features["sequence_ids"].numpy(),
                                          features["cls_positions"].numpy())
            except ValueError as e:
                raise ValueError(f"{path} (rows counted from {offset}): {e}") from None
            offset += len(features["sequence_ids"])


def _decode(serialized, spec):
    parsed = tf.io.parse_single_example(serialized, spec)
    out = {}
    for ours, theirs in _NAMES.items():
        value = parsed[theirs]
        if ours == "next_sentence_labels":
            value = value[0]
        out[ours] = value if value.dtype == tf.float32 else tf.cast(value, tf.int32)
    return masking.split_features_labels(out)


def check_records(paths):
    """Reads every record of each file once; names the first bad file.

    TFRecord corruption otherwise surfaces mid-training as a bare
    `DataLossError`. Cost: one sequential read of the files.
    """
    for path in paths:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"TFRecord file not found: {path}")
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.OpError as e:
            raise ValueError(f"Corrupt TFRecord file {path}: {e.message}") from None


def expand_patterns(paths):
    """File paths, glob patterns or a list of them -> the matching files, each glob sorted."""
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(str(pattern)))
        if not matched:
            raise FileNotFoundError(f"No TFRecord file matches {pattern}")
        files.extend(matched)
    return files


def read_dataset(
    paths,
    seq_length,
    max_predictions_per_seq,
    batch_size=None,
    *,
    shuffle=False,
    repeat=False,
    seed=None,
    check=True,
    shuffle_buffer=10_000,
    max_sequences_per_pack=None,
    skip=0,
):
    """A dataset of (features, labels) from BERT pre-training TFRecords.

    The order is a function of the files and `seed` only (deterministic
    interleave of a fixed number of files), so a resumed run that skips what
    was read continues the same stream.

    Args:
      paths: file path, glob pattern, or list of them.
      seq_length, max_predictions_per_seq: the lengths the files were written
        with (a mismatch fails on the first record and names the feature).
      batch_size: if set, batches with `drop_remainder=True`.
      shuffle, repeat, seed, shuffle_buffer: file order and example shuffling.
      check: read the files once upfront so corruption names the file (and,
        for packed rows, a malformed row).
      max_sequences_per_pack: if set, the files hold packed rows with this
        many slots (Graphcore's packed layout, see the module docstring).
      skip: records to drop from the start of the (shuffled, repeated) stream,
        before decoding.
    """
    files = expand_patterns(paths)
    if check:
        check_records(files)
    if max_sequences_per_pack:
        spec = _packed_feature_spec(seq_length, max_predictions_per_seq, max_sequences_per_pack)
        decode = _decode_packed
        if check:
            check_packed_records(files, spec)
    else:
        spec, decode = _feature_spec(seq_length, max_predictions_per_seq), _decode
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    # A fixed cycle length: AUTOTUNE would pick one per machine, and with it the order.
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), READ_PARALLELISM),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(lambda x: decode(x, spec), num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)
