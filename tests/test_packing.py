"""Sequence packing: the packing algorithm, the packed row layout and its checks."""

import numpy as np
import pytest

from training.data import packing


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
    # Longest first, each into the open pack with the most space left that fits it:
    # 100 -> new (28 left); 60 -> new (68); 60 -> (60, 60) (8); 30 fits neither -> new (98);
    # 20 -> (30, 20) (78); 10 -> (30, 20, 10), closed at 3 sequences.
    histogram = np.bincount([100, 60, 60, 30, 20, 10], minlength=129)
    assert packing.pack_histogram(histogram, 128, 3) == {
        (100,): 1, (60, 60): 1, (30, 20, 10): 1}
    # At most 2 per pack: (30, 20) closes, so 10 goes to the pack with most space: (100,).
    assert packing.pack_histogram(histogram, 128, 2) == {
        (100, 10): 1, (60, 60): 1, (30, 20): 1}


def test_equal_lengths_fill_packs():
    # 7 sequences of 8 tokens, rows of 24, at most 3 per row: 2 full rows and one of 1.
    histogram = np.bincount([8] * 7, minlength=25)
    assert packing.pack_histogram(histogram, 24, 3) == {(8, 8, 8): 2, (8,): 1}
    assert packing.pack_histogram(histogram, 24, 2) == {(8, 8): 3, (8,): 1}


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


# --- the model: packed rows compute what their sequences compute unpacked --------------------

FAMILIES = ["groupbert", "bert"]
# Packed as (0, 1, 2), (3, 4, 5) into rows of 24: row 0 is full (its last sequence ends at the
# row's end), row 1 ends in padding; a sequence of 2 is shorter than the conv kernel's reach.
LENGTHS = [7, 9, 8, 5, 11, 2]


def _random_examples(seed, mlm_ids_per_sequence=0):
    """Unpacked sequences of LENGTHS (rows of 12), with random MLM label ids."""
    examples = _unpacked(LENGTHS, seq=12, seed=seed)
    examples["mlm_ids"] = np.random.default_rng(seed + 1).integers(
        0, 61, (len(LENGTHS), mlm_ids_per_sequence)).astype(np.int32)
    return examples


def _models(tiny_config, randomize_weights, family, **overrides):
    from groupbert_tf.models import GroupBertClassifier, GroupBertPretrainer

    config = tiny_config(family, hidden_dropout=0.0, attention_dropout=0.0, **overrides)
    pretrainer = randomize_weights(GroupBertPretrainer(config), seed=3)
    classifier = randomize_weights(GroupBertClassifier(encoder=pretrainer.encoder, num_labels=3),
                                   seed=4)
    return pretrainer, classifier


def _mlm_positions(lengths, per_sequence, seed=0):
    """`per_sequence` distinct positions inside each sequence, [CLS] excluded: [N, P]."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(np.arange(1, n), per_sequence, replace=False)
                     for n in lengths]).astype(np.int32)


def _pack_case(examples, rows, seq_length, slots, mlm_positions):
    """Packed model inputs and labels for `rows`, and each sequence's (row, slot, start)."""
    packed = packing.layout_packed_rows(examples, rows, seq_length, slots,
                                        per_sequence=("labels",))
    per_sequence = mlm_positions.shape[1]
    positions = np.zeros((len(rows), slots * per_sequence), np.int32)
    mlm_ids = np.zeros_like(positions)
    weights = np.zeros(positions.shape, np.float32)
    where = {}
    for r, row in enumerate(rows):
        for slot, index in enumerate(row):
            start = packed["cls_positions"][r, slot]
            where[index] = (r, slot, start)
            cols = slice(slot * per_sequence, (slot + 1) * per_sequence)
            positions[r, cols] = start + mlm_positions[index]
            mlm_ids[r, cols] = examples["mlm_ids"][index]
            weights[r, cols] = 1.0
    inputs = {name: packed[name] for name in (*packing.ROW_FEATURES, "cls_positions")}
    inputs["masked_lm_positions"] = positions
    labels = {"masked_lm_ids": mlm_ids, "masked_lm_weights": weights,
              "next_sentence_labels": packed["labels"] % 2,
              "sequence_weights": packed["sequence_weights"]}
    return inputs, labels, where


def _unpacked_case(examples, mlm_positions):
    inputs = {name: examples[name] for name in ("token_ids", "segment_ids", "padding_mask")}
    inputs["masked_lm_positions"] = mlm_positions
    labels = {"masked_lm_ids": examples["mlm_ids"],
              "masked_lm_weights": np.ones(mlm_positions.shape, np.float32),
              "next_sentence_labels": examples["labels"] % 2}
    return inputs, labels


def _assert_packed_equals_unpacked(pretrainer, classifier, examples, rows, seq_length, slots,
                                   mlm_positions):
    from keras import ops

    lengths = examples["padding_mask"].sum(axis=1)
    inputs, _, where = _pack_case(examples, rows, seq_length, slots, mlm_positions)
    unpacked, _ = _unpacked_case(examples, mlm_positions)
    encoder = pretrainer.encoder
    packed_out = encoder({k: inputs[k] for k in packing.ROW_FEATURES})
    packed_seq = ops.convert_to_numpy(packed_out["sequence_output"])
    packed_pooled = ops.convert_to_numpy(encoder.pool(packed_out["sequence_output"],
                                                      inputs["cls_positions"]))
    packed_heads = {k: ops.convert_to_numpy(v) for k, v in pretrainer(inputs).items()}
    packed_class = ops.convert_to_numpy(classifier(inputs)["logits"])
    ref_out = encoder({k: unpacked[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    ref_seq = ops.convert_to_numpy(ref_out["sequence_output"])
    ref_pooled = ops.convert_to_numpy(ref_out["pooled_output"])
    ref_heads = {k: ops.convert_to_numpy(v) for k, v in pretrainer(unpacked).items()}
    ref_class = ops.convert_to_numpy(classifier(unpacked)["logits"])
    p = mlm_positions.shape[1]
    for index, (r, slot, start) in where.items():
        n = lengths[index]
        pairs = [
            (packed_seq[r, start:start + n], ref_seq[index, :n]),
            (packed_pooled[r, slot], ref_pooled[index]),
            (packed_heads["mlm_logits"][r, slot * p:(slot + 1) * p],
             ref_heads["mlm_logits"][index]),
            (packed_heads["nsp_logits"][r, slot], ref_heads["nsp_logits"][index]),
            (packed_class[r, slot], ref_class[index]),
        ]
        for got, want in pairs:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_forward_equals_unpacked_random_lengths(family, tiny_config, randomize_weights):
    pretrainer, classifier = _models(tiny_config, randomize_weights, family)
    _assert_packed_equals_unpacked(pretrainer, classifier, _random_examples(1, 1),
                                   [(0, 1, 2), (3, 4, 5)], 24, 3, _mlm_positions(LENGTHS, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_do_not_depend_on_pack_mates(family, tiny_config, randomize_weights):
    from keras import ops

    lengths = [8, 6, 10, 9]
    examples = _unpacked(lengths, seq=12, seed=5)
    encoder = _models(tiny_config, randomize_weights, family)[0].encoder

    def sequence_0(rows, keep_apart=True):
        packed = packing.layout_packed_rows(examples, rows, 24, 3)
        names = packing.ROW_FEATURES if keep_apart else packing.ROW_FEATURES[:3]
        out = ops.convert_to_numpy(encoder({k: packed[k] for k in names})["sequence_output"])
        r = next(i for i, row in enumerate(rows) if 0 in row)
        start = packed["cls_positions"][r, rows[r].index(0)]
        return out[r, start:start + 8]

    alone = sequence_0([(0,)])
    np.testing.assert_allclose(sequence_0([(0, 1)]), alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sequence_0([(2, 0, 1)]), alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sequence_0([(3, 0)]), alone, rtol=1e-5, atol=1e-5)
    # Without sequence_ids the row is one long sequence and the mates leak in.
    assert np.abs(sequence_0([(3, 0)], keep_apart=False) - alone).max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_gradients_equal_unpacked(family, tiny_config, randomize_weights):
    import tensorflow as tf

    examples = _random_examples(7, 2)
    pretrainer, _ = _models(tiny_config, randomize_weights, family)
    mlm_positions = _mlm_positions(LENGTHS, 1, seed=9)
    mlm_positions = np.concatenate([mlm_positions, np.maximum(mlm_positions - 1, 1)], axis=1)
    mlm_positions[5] = [1, 1]  # a repeated position counts twice in both layouts
    packed_x, packed_y, _ = _pack_case(examples, [(4, 3, 5), (1, 0, 2)], 24, 3, mlm_positions)
    unpacked_x, unpacked_y = _unpacked_case(examples, mlm_positions)

    def loss_and_grads(x, y):
        with tf.GradientTape() as tape:
            loss = pretrainer.compute_loss(y=y, y_pred=pretrainer(x, training=True))
        return float(loss), tape.gradient(loss, pretrainer.trainable_variables)

    packed_loss, packed_grads = loss_and_grads(packed_x, packed_y)
    loss, grads = loss_and_grads(unpacked_x, unpacked_y)
    assert packed_loss == pytest.approx(loss, rel=1e-6)
    dense = [[np.asarray(tf.convert_to_tensor(g)) for g in gs] for gs in (packed_grads, grads)]
    total = np.sqrt(sum(np.sum(w ** 2) for w in dense[1]))
    total_error = np.sqrt(sum(np.sum((g - w) ** 2) for g, w in zip(*dense)))
    assert total_error <= 1e-5 * total
    # Per variable, relative to its own norm; the attention key bias has an exactly zero
    # gradient (softmax ignores a per-query constant), so its floor is 1e-3 of the total.
    for variable, got, want in zip(pretrainer.trainable_variables, *dense):
        scale = max(np.linalg.norm(want), 1e-3 * total)
        assert np.linalg.norm(got - want) <= 1e-5 * scale, variable.path


def test_conv_tap_mask_hand_example():
    from keras import ops

    from groupbert_tf.layers.convolution_module import conv_tap_mask

    # Kernel 3 (taps t-1, t, t+1); sequences [1, 1], [2, 2, 2], then padding.
    mask = ops.convert_to_numpy(conv_tap_mask(np.array([[1, 1, 2, 2, 2, 0]]), 3))[0]
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1],
                                         [1, 1, 0], [0, 1, 0]])


def test_packed_position_ids_restart_per_sequence():
    from keras import ops

    from groupbert_tf.layers.embeddings import packed_position_ids

    ids = ops.convert_to_numpy(packed_position_ids(np.array([[1, 1, 1, 2, 2, 3, 0, 0]])))
    np.testing.assert_array_equal(ids, [[0, 1, 2, 0, 1, 0, 6, 7]])


# --- real data: pairs of the default corpus ------------------------------------------------


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory):
    """Unmasked pre-training pairs (seq 128) from the first 60 documents of the real corpus,
    the corpus file and the vocab."""
    from groupbert_tf import tokenization
    from training.data import download
    from training.data import pretraining_data as pd

    download.fetch()
    with open(download.default_corpus_path(), encoding="utf-8") as f:
        blocks = f.read().split("\n\n")[:60]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    tokenizer = tokenization.BertTokenizer(download.default_vocab_path())
    documents = pd.tokenize_documents(pd.read_documents(str(path)), tokenizer)
    examples = pd.create_examples(documents, tokenizer, seq_length=128, dupe_factor=1, seed=0)
    return examples, str(path), download.default_vocab_path()


def test_pack_examples_keeps_every_real_pair(real_pairs):
    examples = real_pairs[0]
    packed, efficiency = packing.pack_examples(examples, 128, 3, seed=0,
                                               per_sequence=("next_sentence_labels",))
    packing.check_packed_rows(packed["sequence_ids"], packed["cls_positions"],
                              packed["padding_mask"])
    lengths = examples["padding_mask"].sum(axis=1)
    assert efficiency == pytest.approx(lengths.sum() / packed["padding_mask"].size)
    assert efficiency > lengths.mean() / 128 + 0.1  # packing removes padding
    unpacked = sorted((tuple(examples["token_ids"][i, :n]), tuple(examples["segment_ids"][i, :n]),
                       int(examples["next_sentence_labels"][i])) for i, n in enumerate(lengths))
    repacked = []
    for r in range(len(packed["token_ids"])):
        ids = packed["sequence_ids"][r]
        for slot in range(int(ids.max())):
            where = ids == slot + 1
            repacked.append((tuple(packed["token_ids"][r, where]),
                             tuple(packed["segment_ids"][r, where]),
                             int(packed["next_sentence_labels"][r, slot])))
    assert sorted(repacked) == unpacked


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_forward_equals_unpacked_real_lengths(family, real_pairs, tiny_config,
                                                     randomize_weights):
    examples = dict(real_pairs[0])
    examples = {k: v[:24] for k, v in examples.items()}
    lengths = examples["padding_mask"].sum(axis=1)
    examples["labels"] = examples["next_sentence_labels"]
    examples["mlm_ids"] = examples["token_ids"][:, 1:3]
    pretrainer, classifier = _models(tiny_config, randomize_weights, family,
                                     vocab_size=30522, max_position_embeddings=128)
    rows = packing.pack_sequences(lengths, 128, 3, seed=0)
    assert max(len(row) for row in rows) > 1
    _assert_packed_equals_unpacked(pretrainer, classifier, examples, rows, 128, 3,
                                   _mlm_positions(lengths, 2))


def test_packed_pretraining_dataset(real_pairs):
    import tensorflow as tf

    from training.data import pretraining_data as pd

    _, corpus, vocab = real_pairs
    ds = pd.pretraining_dataset(corpus, vocab, batch_size=8, seq_length=128,
                                max_predictions_per_seq=20, dupe_factor=1,
                                validation_fraction=0, seed=1, max_sequences_per_pack=3)
    features, labels = ds.element_spec
    assert {k: s.shape.as_list() for k, s in features.items()} == {
        "token_ids": [8, 128], "segment_ids": [8, 128], "padding_mask": [8, 128],
        "sequence_ids": [8, 128], "cls_positions": [8, 3], "masked_lm_positions": [8, 20]}
    assert {k: (s.shape.as_list(), s.dtype) for k, s in labels.items()} == {
        "masked_lm_ids": ([8, 20], tf.int32), "masked_lm_weights": ([8, 20], tf.float32),
        "next_sentence_labels": ([8, 3], tf.int32), "sequence_weights": ([8, 3], tf.float32)}
    masked, maskable = 0, 0
    for x, y in ds.take(6):
        x, y = {k: v.numpy() for k, v in x.items()}, {k: v.numpy() for k, v in y.items()}
        packing.check_packed_rows(x["sequence_ids"], x["cls_positions"], x["padding_mask"])
        # Every sequence starts with [CLS]; masked positions are real, never [CLS]/[SEP].
        starts = np.take_along_axis(x["token_ids"], x["cls_positions"], axis=1)
        assert (starts[y["sequence_weights"] > 0] == 101).all()
        used = y["masked_lm_weights"] > 0
        positions = x["masked_lm_positions"][used]
        rows = np.nonzero(used)[0]
        assert (x["padding_mask"][rows, positions] == 1).all()
        cls = [set(x["cls_positions"][r][y["sequence_weights"][r] > 0]) for r in range(8)]
        assert not any(p in cls[r] for r, p in zip(rows, positions))
        masked += used.sum()
        maskable += x["padding_mask"].sum() - 3 * y["sequence_weights"].sum()
    # 15% of the maskable tokens of the row, whichever sequence they are in.
    assert 0.13 < masked / maskable < 0.17


# --- the packed TFRecord format (Graphcore's packed layout) --------------------------------


def _graphcore_record(path):
    """Two packed rows written feature by feature as Graphcore's packing script lays them out
    (docs/packing.md): input_mask = sequence index, positions restart, masked_lm_weights =
    the sequence index of each prediction, [k] next_sentence_* features."""
    import tensorflow as tf

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    rows = [
        dict(input_ids=[101, 7, 102, 8, 102, 101, 9, 102, 0, 0],
             input_mask=[1, 1, 1, 1, 1, 2, 2, 2, 0, 0],
             segment_ids=[0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
             positions=[0, 1, 2, 3, 4, 0, 1, 2, 0, 0],
             masked_lm_positions=[1, 6, 0, 0], masked_lm_ids=[17, 19, 0, 0],
             masked_lm_weights=[1.0, 2.0, 0.0, 0.0], next_sentence_positions=[0, 5, 0],
             next_sentence_labels=[1, 0, 0], next_sentence_weights=[1.0, 1.0, 0.0]),
        dict(input_ids=[101, 5, 102, 101, 6, 102, 101, 4, 102, 0],
             input_mask=[1, 1, 1, 2, 2, 2, 3, 3, 3, 0],
             segment_ids=[0] * 10, positions=[0, 1, 2, 0, 1, 2, 0, 1, 2, 0],
             masked_lm_positions=[7, 0, 0, 0], masked_lm_ids=[14, 0, 0, 0],
             masked_lm_weights=[3.0, 0.0, 0.0, 0.0], next_sentence_positions=[0, 3, 6],
             next_sentence_labels=[0, 1, 1], next_sentence_weights=[1.0, 1.0, 1.0]),
    ]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = {k: floats(v) if isinstance(v[0], float) else ints(v)
                       for k, v in row.items()}
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())
    return rows


def test_reads_graphcore_packed_records(tmp_path):
    from training.data import tfrecord

    rows = _graphcore_record(tmp_path / "packed.tfrecord")
    (x, y), = tfrecord.read_dataset(str(tmp_path / "packed.tfrecord"), 10, 4, batch_size=2,
                                    max_sequences_per_pack=3)
    x, y = {k: v.numpy() for k, v in x.items()}, {k: v.numpy() for k, v in y.items()}
    np.testing.assert_array_equal(x["token_ids"], [r["input_ids"] for r in rows])
    np.testing.assert_array_equal(x["sequence_ids"], [r["input_mask"] for r in rows])
    np.testing.assert_array_equal(x["padding_mask"], [np.sign(r["input_mask"]) for r in rows])
    np.testing.assert_array_equal(x["cls_positions"], [[0, 5, 0], [0, 3, 6]])
    np.testing.assert_array_equal(x["masked_lm_positions"], [[1, 6, 0, 0], [7, 0, 0, 0]])
    np.testing.assert_array_equal(y["masked_lm_weights"], [[1, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(y["next_sentence_labels"], [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(y["sequence_weights"], [[1, 1, 0], [1, 1, 1]])


def test_packed_records_round_trip_in_graphcore_layout(tmp_path):
    import tensorflow as tf

    from training.data import tfrecord

    rows = _graphcore_record(tmp_path / "packed.tfrecord")
    (x, y), = tfrecord.read_dataset(str(tmp_path / "packed.tfrecord"), 10, 4, batch_size=2,
                                    max_sequences_per_pack=3)
    tfrecord.write_examples(str(tmp_path / "again.tfrecord"), x, y)
    for record, row in zip(tf.data.TFRecordDataset(str(tmp_path / "again.tfrecord")), rows):
        example = tf.train.Example.FromString(record.numpy()).features.feature
        for name, want in row.items():
            got = example[name].float_list.value or example[name].int64_list.value
            assert list(got) == want, name


def test_malformed_packed_records_name_file_and_row(tmp_path):
    import tensorflow as tf

    from training.data import tfrecord

    _graphcore_record(tmp_path / "packed.tfrecord")
    records = list(tf.data.TFRecordDataset(str(tmp_path / "packed.tfrecord")))
    example = tf.train.Example.FromString(records[1].numpy())
    example.features.feature["input_mask"].int64_list.value[:] = [1, 1, 1, 3, 3, 3, 2, 2, 2, 0]
    with tf.io.TFRecordWriter(str(tmp_path / "bad.tfrecord")) as writer:
        writer.write(records[0].numpy())
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match=r"bad.tfrecord .*: sequence_ids of row 1 are not "
                                         "contiguous"):
        tfrecord.read_dataset(str(tmp_path / "bad.tfrecord"), 10, 4, max_sequences_per_pack=3)


# --- fine-tuning on packed rows -------------------------------------------------------------


def test_packed_classification_loss_equals_unpacked(tiny_config, randomize_weights):
    from keras import ops

    examples = _random_examples(11)
    examples["labels"] = examples["labels"] % 3
    _, classifier = _models(tiny_config, randomize_weights, "groupbert")
    packed = packing.layout_packed_rows(examples, [(1, 4), (0, 2, 3), (5,)], 24, 3,
                                        per_sequence=("labels",))
    x = {k: packed[k] for k in (*packing.ROW_FEATURES, "cls_positions")}
    y = {"labels": packed["labels"], "sequence_weights": packed["sequence_weights"]}
    unpacked_x = {k: examples[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    loss = classifier.compute_loss(y=y, y_pred=classifier(x))
    reference = classifier.compute_loss(y={"labels": examples["labels"]},
                                        y_pred=classifier(unpacked_x))
    assert float(ops.convert_to_numpy(loss)) == pytest.approx(
        float(ops.convert_to_numpy(reference)), rel=1e-6)
    assert float(ops.convert_to_numpy(classifier.loss_counts(y)["classification"])) == 6


@pytest.mark.slow
def test_finetune_trains_classification_on_packed_rows(tmp_path):
    from tests.conftest import sentiment_settings
    from training import finetune

    summary = finetune.run(sentiment_settings(tmp_path, batch_size=4, seq_length=24,
                                              max_sequences_per_pack=3))
    # 256 examples of 8 tokens, 3 per row of 24: 86 rows, 21 steps of 4 rows per epoch.
    assert summary["steps_per_epoch"] == 21
    assert summary["best"] == 1.0, summary["history"]  # evaluated unpacked
    with pytest.raises(ValueError, match="--max_sequences_per_pack packs classification"):
        finetune.run(finetune.FinetuneSettings(
            task="span", train_file="", eval_file="", model_dir=str(tmp_path / "span"),
            max_sequences_per_pack=3))


def test_packed_forward_equals_unpacked_under_xla(tiny_config, randomize_weights):
    """XLA takes the portable convolution (tap mask), eager TensorFlow may take the native
    one (groupbert_tf/native_ops.py): both keep the sequences apart."""
    import tensorflow as tf

    examples = _random_examples(13)
    encoder = _models(tiny_config, randomize_weights, "groupbert")[0].encoder
    rows = [(0, 1, 2), (3, 4, 5)]
    packed = packing.layout_packed_rows(examples, rows, 24, 3)
    run = tf.function(lambda x: encoder(x)["sequence_output"], jit_compile=True)
    got = run({k: tf.constant(packed[k]) for k in packing.ROW_FEATURES}).numpy()
    want = run({k: tf.constant(examples[k])
                for k in ("token_ids", "segment_ids", "padding_mask")}).numpy()
    for r, row in enumerate(rows):
        for slot, index in enumerate(row):
            start, n = packed["cls_positions"][r, slot], LENGTHS[index]
            np.testing.assert_allclose(got[r, start:start + n], want[index, :n],
                                       rtol=1e-5, atol=1e-5)
