"""benchmarks/fast_path.py times a real gradient step (every trainable variable gets one)."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import fast_path, throughput
from groupbert_tf.config import GroupBertConfig


@pytest.mark.parametrize("compile_mode", ["graph", "xla"])
def test_gradient_step_returns_a_gradient_for_every_variable(compile_mode):
    config = GroupBertConfig.from_preset("groupbert-tiny", num_layers=1)
    inputs, labels = throughput.make_batch(config.vocab_size, 2, 16, 3)
    inputs = {k: tf.constant(v) for k, v in inputs.items()}
    labels = {k: tf.constant(v) for k, v in labels.items()}
    model = throughput.build_model("ours", config, inputs)
    loss, gradients = fast_path.gradient_step(model, inputs, labels, compile_mode)()
    assert len(gradients) == len(model.trainable_variables)
    assert all(g is not None for g in gradients)
    assert all(np.any(tf.convert_to_tensor(g).numpy() != 0) for g in gradients)
    assert np.isfinite(loss.numpy())
