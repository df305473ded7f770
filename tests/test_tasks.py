"""The tasks (groupbert_tf/models: pre-trainer, classifier, span labeler) through the shared
`run_task_test`, raw-text fitting with a preprocessor, and presets."""

import numpy as np
import pytest

import keras

from groupbert_tf.checkpoints import load_hf_bert
from groupbert_tf.models import GroupBertClassifier, GroupBertPretrainer, GroupBertSpanLabeler
from groupbert_tf.preprocessing import TextPreprocessor
from groupbert_tf.tokenization import BertTokenizer
from tests.conftest import TINY, minilm_folder

WORDS = ["a", "fine", "film", "dull", "one", "great", "acting", "boring", "plot", "the", "is",
         "not", "very", "good", "bad", "movie", "story", "and", "but", "it"]
# A vocabulary of exactly TINY's vocab_size: special tokens, words, and filler pieces.
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
         + [f"##{i}" for i in range(TINY["vocab_size"] - 5 - len(WORDS))])
TEXTS = ["a fine film", "a dull one", "great acting", "boring plot", "the story is good",
         "it is not very good"]
LABELS = [1, 0, 1, 0, 1, 0]


def test_classifier(run_task_test, tiny_config, make_inputs, tmp_path):
    preprocessor = TextPreprocessor(VOCAB, sequence_length=12)
    x = make_inputs(batch=4, seq=12)
    run_task_test(GroupBertClassifier,
                  dict(config=tiny_config(), num_labels=3, preprocessor=preprocessor),
                  x, np.array([0, 2, 1, 0]), expected_output_shapes={"logits": (4, 3)},
                  tmp_path=tmp_path, raw_text=(TEXTS, LABELS))


def test_span_labeler(run_task_test, tiny_config, make_inputs, tmp_path):
    x = make_inputs(batch=4, seq=12)
    y = {"start_positions": np.array([1, 2, 0, 3]), "end_positions": np.array([2, 2, 0, 5])}
    run_task_test(GroupBertSpanLabeler, dict(config=tiny_config("bert")), x, y,
                  expected_output_shapes={"start_logits": (4, 12), "end_logits": (4, 12)},
                  tmp_path=tmp_path)


def test_pretrainer(run_task_test, tiny_config, make_inputs, tmp_path):
    x = {**make_inputs(batch=4, seq=12), "masked_lm_positions": np.tile([[1, 2, 0]], (4, 1))}
    y = {"masked_lm_ids": np.tile([[5, 6, 0]], (4, 1)).astype("int32"),
         "masked_lm_weights": np.tile([[1.0, 1.0, 0.0]], (4, 1)).astype("float32"),
         "next_sentence_labels": np.array([0, 1, 1, 0], "int32")}
    run_task_test(GroupBertPretrainer, dict(config=tiny_config()), x, y,
                  expected_output_shapes={"mlm_logits": (4, 3, TINY["vocab_size"]),
                                          "nsp_logits": (4, 2)},
                  tmp_path=tmp_path)


def test_get_config_keeps_the_dtype_policy(tiny_config):
    for task in (GroupBertClassifier(config=tiny_config(), dtype="mixed_bfloat16"),
                 GroupBertSpanLabeler(config=tiny_config(), dtype="mixed_bfloat16")):
        rebuilt = type(task).from_config(task.get_config())
        assert rebuilt.dtype_policy.name == "mixed_bfloat16"
        assert rebuilt.encoder.dtype_policy.name == "mixed_bfloat16"


def test_preprocessor_packs_like_the_tokenizer():
    """Pairs and single texts: the same ids as the in-graph tokenizer it wraps."""
    preprocessor = TextPreprocessor(VOCAB, sequence_length=10)
    tokenizer = BertTokenizer(VOCAB)
    for texts in ((TEXTS[:3],), (TEXTS[:3], TEXTS[3:])):
        packed = preprocessor(texts[0] if len(texts) == 1 else texts)
        expected = tokenizer(*texts, seq_length=10)
        for name in expected:
            np.testing.assert_array_equal(np.asarray(packed[name]), np.asarray(expected[name]))
    x, y = preprocessor(TEXTS[:2], np.array([1, 0]))
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"} and list(y) == [1, 0]


def test_classifier_fits_a_dataset_of_text_pairs(tiny_config):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    classifier = GroupBertClassifier(config=tiny_config(), num_labels=2,
                                     preprocessor=TextPreprocessor(VOCAB, sequence_length=12))
    classifier.compile()
    dataset = tf.data.Dataset.from_tensor_slices(((TEXTS, TEXTS[::-1]), LABELS)).batch(3)
    history = classifier.fit(dataset, epochs=1, verbose=0,
                             validation_data=((TEXTS[:2], TEXTS[2:4]), LABELS[:2]))
    assert np.isfinite(history.history["loss"][0])
    # The validation pairs were tokenized too: the same accuracy as evaluating them.
    evaluated = classifier.evaluate((TEXTS[:2], TEXTS[2:4]), LABELS[:2], return_dict=True,
                                    verbose=0)
    assert history.history["val_accuracy"][0] == evaluated["accuracy"]
    logits = classifier.predict((TEXTS, TEXTS[::-1]), verbose=0)["logits"]
    assert logits.shape == (len(TEXTS), 2)


def test_preset_round_trip_keeps_heads_or_replaces_them(tiny_config, tmp_path):
    classifier = GroupBertClassifier(config=tiny_config(), num_labels=3,
                                     preprocessor=TextPreprocessor(VOCAB, sequence_length=12))
    classifier.save_to_preset(str(tmp_path / "preset"))
    same = GroupBertClassifier.from_preset(str(tmp_path / "preset"), sequence_length=12)
    np.testing.assert_array_equal(same.predict(TEXTS, verbose=0)["logits"],
                                  classifier.predict(TEXTS, verbose=0)["logits"])
    # Another head count, or another task class: the preset's encoder under new heads.
    for other in (GroupBertClassifier.from_preset(str(tmp_path / "preset"), num_labels=5),
                  GroupBertSpanLabeler.from_preset(str(tmp_path / "preset"))):
        for a, b in zip(other.encoder.weights, classifier.encoder.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert GroupBertClassifier.from_preset(str(tmp_path / "preset"),
                                           num_labels=5).classifier.kernel.shape[-1] == 5
    with pytest.raises(FileNotFoundError, match="neither a folder nor one of"):
        GroupBertClassifier.from_preset(str(tmp_path / "missing"))


def test_hugging_face_folder_is_a_preset():
    folder = str(minilm_folder())
    classifier = GroupBertClassifier.from_preset(folder, num_labels=2, sequence_length=16)
    reference = load_hf_bert(folder)
    for a, b in zip(classifier.encoder.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = BertTokenizer(f"{folder}/vocab.txt")(["Hello, world!"], seq_length=16)
    packed = classifier.preprocessor(["Hello, world!"])
    np.testing.assert_array_equal(np.asarray(packed["token_ids"]),
                                  np.asarray(expected["token_ids"]))
    assert classifier.predict(["Hello, world!"], verbose=0)["logits"].shape == (1, 2)
    keras.backend.clear_session()
