"""Task models and `training.finetune`: a tiny classification and span run end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf import GroupBertClassifier, GroupBertSpanLabeler
from groupbert_tf.models.encoder import GroupBertEncoder
from groupbert_tf.models.span_labeler import PADDING_LOGIT
from tests.conftest import CLASS_VOCAB, make_inputs, sentiment_settings, tiny_config
from tests.test_squad import SQUAD_TINY, squad_vocab
from training import finetune


def test_classifier_outputs_and_loss_terms():
    model = GroupBertClassifier(tiny_config(), num_labels=3)
    inputs = make_inputs(batch=4, seq=10)
    logits = model(inputs)["logits"]
    assert tuple(logits.shape) == (4, 3)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    y = {"labels": np.array([0, 1, 2, 1], "int32")}
    counts, sums = model.loss_counts(y), model.loss_sums(y, {"logits": logits})
    expected = keras.losses.sparse_categorical_crossentropy(y["labels"], logits, from_logits=True)
    assert float(counts["classification"]) == 4.0
    np.testing.assert_allclose(float(sums["classification"]), float(np.sum(expected)), rtol=1e-5)
    # The loss divides by the counts it is given (global counts in a distributed step).
    loss = model.compute_loss(y=y, y_pred={"logits": logits}, counts={"classification": 8.0})
    np.testing.assert_allclose(float(loss), float(np.sum(expected)) / 8, rtol=1e-5)


def test_span_labeler_masks_padding():
    model = GroupBertSpanLabeler(tiny_config())
    inputs = make_inputs(batch=2, seq=10, lengths=[10, 6])
    outputs = model(inputs)
    for name in ("start_logits", "end_logits"):
        logits = keras.ops.convert_to_numpy(outputs[name])
        assert logits.shape == (2, 10)
        assert (logits[1, 6:] < PADDING_LOGIT / 2).all()
        assert (np.abs(logits[:, :6]) < 100).all()
    y = {"start_positions": np.array([1, 2], "int32"), "end_positions": np.array([3, 5], "int32")}
    loss = float(model.compute_loss(y=y, y_pred=outputs))
    start = keras.losses.sparse_categorical_crossentropy(y["start_positions"],
                                                         outputs["start_logits"], from_logits=True)
    end = keras.losses.sparse_categorical_crossentropy(y["end_positions"],
                                                       outputs["end_logits"], from_logits=True)
    np.testing.assert_allclose(loss, float(np.mean(start) + np.mean(end)) / 2, rtol=1e-5)


def test_task_model_config_round_trip():
    model = GroupBertClassifier(tiny_config(), num_labels=5, dropout=0.2)
    clone = GroupBertClassifier.from_config(model.get_config())
    assert clone.num_labels == 5 and clone.dropout_rate == 0.2 and clone.config == model.config
    span = GroupBertSpanLabeler.from_config(GroupBertSpanLabeler(tiny_config()).get_config())
    assert span.config == tiny_config()


def test_init_checkpoint_restores_encoder_and_sets_dropout(tmp_path):
    from groupbert_tf.models import GroupBertPretrainer
    config = tiny_config(vocab_size=len(CLASS_VOCAB))
    pretrainer = GroupBertPretrainer(config=config)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=pretrainer),
                                         str(tmp_path / "run" / "checkpoints"), max_to_keep=1)
    manager.save(checkpoint_number=7)
    settings = finetune.FinetuneSettings(
        task="classification", train_file="", eval_file="", model_dir=str(tmp_path / "ft"),
        config=config, init_checkpoint=str(tmp_path / "run"))
    encoder, _, how = finetune.build_encoder(settings)
    assert "ckpt-7" in how and "weights only" in how
    assert encoder.config.hidden_dropout == 0.1 and encoder.config.attention_dropout == 0.1
    for ours, theirs in zip(encoder.weights, pretrainer.encoder.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_with_dropout_keeps_weights():
    encoder = GroupBertEncoder(tiny_config())
    rebuilt = finetune._with_dropout(encoder, 0.1)
    assert rebuilt.config.hidden_dropout == 0.1
    inputs = make_inputs(batch=2, seq=8)
    np.testing.assert_allclose(rebuilt(inputs)["pooled_output"],
                               encoder(inputs)["pooled_output"], atol=1e-6)


@pytest.mark.slow
def test_tiny_classification_learns_a_separable_task(tmp_path):
    settings = sentiment_settings(tmp_path, export_dir=str(tmp_path / "export"))
    summary = finetune.run(settings)
    assert summary["labels"] == ["neg", "pos"]
    assert summary["best"] == 1.0, summary["history"]
    assert summary["history"][0]["loss"] > summary["history"][-1]["loss"]
    with open(os.path.join(settings.model_dir, "results.json")) as f:
        assert json.load(f)["best_epoch"] == summary["best_epoch"]
    # The export serves raw text with the best weights.
    import tensorflow_text  # noqa: F401  (registers the ops the SavedModel uses)
    loaded = tf.saved_model.load(summary["export"])
    outputs = loaded.signatures["serve_text"](text_a=tf.constant(["the plot was great good .",
                                                                  "a film was awful bad ."]))
    assert list(np.argmax(outputs["logits"].numpy(), axis=-1)) == [1, 0]
    assert open(os.path.join(summary["export"], "labels.txt")).read() == "neg\npos\n"


@pytest.mark.slow
def test_span_pipeline_trains_and_evaluates_end_to_end(tmp_path):
    """The hand-made 15-question file: train and evaluate on it (not a SQuAD result)."""
    vocab_tokens = squad_vocab()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(vocab_tokens) + "\n")
    config = tiny_config(vocab_size=len(vocab_tokens), max_position_embeddings=64)
    settings = finetune.FinetuneSettings(
        task="span", train_file=SQUAD_TINY, eval_file=SQUAD_TINY, model_dir=str(tmp_path / "run"),
        config=config, vocab=str(vocab), epochs=12, batch_size=8, eval_batch_size=16,
        seq_length=48, doc_stride=16, max_query_length=16, max_answer_length=10,
        learning_rate=3e-3, warmup_proportion=0.1, precision="float32",
        compile_mode="xla", verbose=0)
    summary = finetune.run(settings)
    history = summary["history"]
    assert len(history) == 12
    assert all(0 <= h["val_f1"] <= 100 and 0 <= h["val_exact_match"] <= h["val_f1"] + 1e-9
               for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    # Memorising 15 questions: well above the first epoch.
    assert summary["best"] >= 40.0, history
    assert summary["best"] == max(h["val_f1"] for h in history)
    assert os.path.exists(os.path.join(settings.model_dir, "best", "best.json"))
