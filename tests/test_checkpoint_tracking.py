"""tf.train.Checkpoint (resume, fine-tuning init, export) must save every model weight."""

import json
import os

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


@pytest.mark.parametrize("preset", ["groupbert-tiny", "bert-tiny"])
def test_first_release_checkpoint_keys_reach_the_same_variables(preset):
    """A checkpoint of the first release (commit f6b9eea) restores into this code: every key
    it wrote, followed edge by edge through the object graph (as tf.train.Checkpoint
    restores), reaches a variable of the right shape, and together they reach every weight.
    The reference file was written by that release's code. (Adding the optional sequence_ids
    input had shifted every layer's `_operations` index by one.)"""
    with open(os.path.join(os.path.dirname(__file__), "data",
                           "first_release_checkpoint_keys.json")) as f:
        expected = json.load(f)[preset]
    model = GroupBertPretrainer(preset)
    root = tf.train.Checkpoint(model=model)
    reached = []
    for key, shape in expected.items():
        node = root
        for name in key.split("/.ATTRIBUTES/")[0].split("/"):
            node = node._trackable_children("checkpoint")[name]
        assert list(node.shape) == shape, key
        reached.append(node)
    assert len({id(v) for v in reached}) == len(reached) == len(model.weights)
