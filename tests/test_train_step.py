"""The train step (groupbert_tf/tensorflow_train_step.py): gradient accumulation, where N
exactly the optimizer step of one batch N times as large, and float16 loss scaling."""

import dataclasses

import numpy as np
import tensorflow as tf

from training import performance, trainer
from groupbert_tf.tensorflow_train_step import group_micro_batches
from tests.test_trainer import small_config

SEQ, PREDS, BATCH = 16, 3, 4


def _batches(count, seed=0):
    """`count` pre-training batches of BATCH random examples (some padding, some unused MLM
    slots), as one tf.data stream."""
    rng = np.random.default_rng(seed)
    n = count * BATCH
    lengths = rng.integers(SEQ // 2, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
    x = {"token_ids": (rng.integers(1000, 30522, (n, SEQ)) * mask).astype(np.int32),
         "segment_ids": ((np.arange(SEQ)[None] >= (lengths // 2)[:, None]) * mask)
         .astype(np.int32),
         "padding_mask": mask,
         "masked_lm_positions": np.sort(rng.integers(1, SEQ // 2, (n, PREDS)), 1)
         .astype(np.int32)}
    weights = (rng.random((n, PREDS)) > 0.3).astype(np.float32)
    y = {"masked_lm_ids": rng.integers(1000, 30522, (n, PREDS)).astype(np.int32),
         "masked_lm_weights": weights,
         "next_sentence_labels": rng.integers(0, 2, n).astype(np.int32)}
    return tf.data.Dataset.from_tensor_slices((x, y))


def _settings(accumulation, steps):
    return trainer.TrainingSettings(
        model_dir="", train_steps=steps, global_batch_size=BATCH * accumulation,
        seq_length=SEQ, max_predictions_per_seq=PREDS, learning_rate=1e-2, warmup_steps=0,
        gradient_accumulation_steps=accumulation, precision="float32", compile_mode="graph")


def _train(dataset, accumulation, steps, initial):
    with performance.dtype_policy("float32"):
        model = trainer.build_model(small_config(), _settings(accumulation, steps))
    model.set_weights(initial)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == steps
    return model.get_weights()


def test_group_micro_batches_keeps_the_batch_axis_first():
    grouped = group_micro_batches(_batches(6).batch(BATCH), 3)
    x, y = next(iter(grouped))
    assert x["token_ids"].shape == (BATCH, 3, SEQ)
    assert y["next_sentence_labels"].shape == (BATCH, 3)
    flat = next(iter(_batches(6).batch(3 * BATCH)))[0]["token_ids"].numpy()
    # Micro-batch k of the group is the k-th batch of the stream.
    np.testing.assert_array_equal(x["token_ids"][:, 1].numpy(), flat[BATCH:2 * BATCH])
    assert len(list(grouped)) == 2


def test_accumulated_micro_batches_equal_one_large_batch():
    """Two optimizer steps of 3 accumulated micro-batches of 4 examples equal two steps on
    batches of 12: the loss terms are sums divided by the counts of all micro-batches (with
    unused MLM slots, so the counts differ between micro-batches). Two replicas: see
    tests/test_distributed.py (accumulation under MultiWorkerMirroredStrategy)."""
    with performance.dtype_policy("float32"):
        initial = trainer.build_model(small_config(), _settings(1, 2)).get_weights()
    large = _train(_batches(6).batch(3 * BATCH), 1, 2, initial)
    accumulated = _train(group_micro_batches(_batches(6).batch(BATCH), 3), 3, 2, initial)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(large, initial))
    assert moved > 1e-3
    for got, expected in zip(accumulated, large):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mixed_float16_trains_with_dynamic_loss_scaling():
    """--precision=mixed_float16: compile wraps the optimizer in Keras' LossScaleOptimizer,
    the train step scales the loss and the update unscales it: finite weights that moved, and
    the same first step as float32 to within float16 rounding."""
    import keras

    settings = _settings(1, 2)
    with performance.dtype_policy("float32"):
        initial = trainer.build_model(small_config(), settings).get_weights()
    expected = _train(_batches(2).batch(BATCH), 1, 2, initial)
    half = dataclasses.replace(settings, precision="mixed_float16")
    with performance.dtype_policy("mixed_float16"):
        model = trainer.build_model(small_config(), half)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.set_weights(initial)
    model.fit(_batches(2).batch(BATCH), epochs=1, steps_per_epoch=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    got = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in got)
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(expected, initial)]
    differences = [float(np.max(np.abs(a - b))) for a, b in zip(got, expected)]
    # LAMB moves each weight by at most ~lr per step; float16 may flip near-zero gradient
    # signs (a difference of up to 2 lr), never more.
    assert max(moved) > 1e-3 and max(differences) <= 2 * 2 * 1e-2 + 1e-6
