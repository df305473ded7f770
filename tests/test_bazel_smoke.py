"""Cheap GroupBertConfig checks; also the default `make bazel-test` target."""

import pytest

from groupbert_tf.config import GroupBertConfig


def test_base_preset_sizes():
    config = GroupBertConfig.from_preset("groupbert-base")
    assert config.hidden_size == 768
    assert config.num_layers == 12
    assert config.head_size == 64


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        GroupBertConfig(hidden_size=768, num_heads=0)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        GroupBertConfig(conv_kernel_size=4)


def test_json_round_trip():
    config = GroupBertConfig.from_preset("bert-mini", hidden_dropout=0.1)
    assert GroupBertConfig.from_json(config.to_json()) == config
