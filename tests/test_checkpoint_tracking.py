"""tf.train.Checkpoint (resume, fine-tuning init, export) must save every model weight."""

import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf import GroupBertPretrainer


@pytest.mark.parametrize("preset", ["groupbert-tiny", "bert-tiny"])
def test_checkpoint_holds_every_weight_and_restores_them(tmp_path, preset):
    model = GroupBertPretrainer(preset)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    # One entry per weight plus the checkpoint's own save counter.
    assert len(tf.train.list_variables(path)) == len(model.weights) + 1

    restored = GroupBertPretrainer(preset)
    tf.train.Checkpoint(model=restored).read(path).assert_consumed()
    for original, loaded in zip(model.weights, restored.weights):
        assert original.path == loaded.path
        np.testing.assert_array_equal(original.numpy(), loaded.numpy())
