"""GroupBertConfig: presets, JSON round trips and every validation rule (the message must name
the offending field)."""

import dataclasses
import json

import pytest

from groupbert_tf.config import PRESETS, GroupBertConfig

SIZES = {"tiny": (2, 128), "mini": (4, 256), "medium": (8, 512), "base": (12, 768),
         "large": (24, 1024)}
ALL_PRESETS = [f"{family}-{size}" for family in ("groupbert", "bert") for size in SIZES]


def test_there_are_exactly_ten_presets():
    assert sorted(PRESETS) == sorted(ALL_PRESETS)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_from_preset(name):
    family, size = name.split("-")
    layers, hidden = SIZES[size]
    config = GroupBertConfig.from_preset(name)
    assert (config.num_layers, config.hidden_size) == (layers, hidden)
    assert config.num_heads == hidden // 64 and config.head_size == 64
    assert config.intermediate_size == 4 * hidden
    assert config.vocab_size == 30522 and config.max_position_embeddings == 512
    assert config.type_vocab_size == 2 and config.conv_kernel_size == 7
    assert config.conv_group_size == 16 and config.gelu_form == "tanh"
    assert config.initializer_range == 0.02
    if family == "groupbert":
        assert config.layer_structure == "groupbert" and config.ffn_groups == 4
        assert config.use_conv_module and config.norm_placement == "pre"
        assert config.layer_norm_epsilon == 1e-3
        assert config.hidden_dropout == config.attention_dropout == 0.0
    else:
        assert config.layer_structure == "bert" and config.ffn_groups == 1
        assert not config.use_conv_module and config.norm_placement == "post"
        assert config.layer_norm_epsilon == 1e-12
        assert config.hidden_dropout == config.attention_dropout == 0.1


def test_groupbert_base_conv_groups_and_defaults():
    config = GroupBertConfig.from_preset("groupbert-base")
    assert config.hidden_size // config.conv_group_size == 48
    # The dataclass defaults are GroupBERT-Base.
    assert GroupBertConfig() == config


def test_from_preset_with_overrides():
    config = GroupBertConfig.from_preset("groupbert-base", hidden_dropout=0.1, vocab_size=100)
    assert config.hidden_dropout == 0.1 and config.vocab_size == 100
    assert config.hidden_size == 768
    with pytest.raises(ValueError, match="Unknown GroupBertConfig key"):
        GroupBertConfig.from_preset("groupbert-base", hiden_size=1)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_json_round_trip(name):
    config = GroupBertConfig.from_preset(name)
    text = config.to_json()
    assert json.loads(text) == dataclasses.asdict(config)
    again = GroupBertConfig.from_json(text)
    assert again == config
    assert again.to_json() == text
    assert GroupBertConfig.from_dict(config.to_dict()) == config


def test_json_keeps_types():
    config = GroupBertConfig.from_json(GroupBertConfig.from_preset("bert-tiny").to_json())
    assert isinstance(config.layer_norm_epsilon, float) and config.layer_norm_epsilon == 1e-12
    assert isinstance(config.use_conv_module, bool)
    # A float field may be written as an integer in JSON.
    assert GroupBertConfig.from_json('{"initializer_range": 1}').initializer_range == 1


def test_replace_validates_again():
    config = GroupBertConfig.from_preset("groupbert-tiny")
    assert config.replace(num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match="num_heads"):
        config.replace(num_heads=3)
    with pytest.raises(ValueError, match="Unknown GroupBertConfig field.*nonsense"):
        config.replace(nonsense=1)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GroupBertConfig().hidden_size = 8


# Each case: overrides on GroupBERT-tiny, and the field the message must name.
BAD = {
    "hidden-not-divisible-by-heads": (dict(num_heads=3), "hidden_size",
                                      r"hidden_size \(128\) must be divisible by num_heads \(3\)"),
    "hidden-not-divisible-by-conv-group": (dict(conv_group_size=24), "hidden_size",
                                           r"divisible by conv_group_size \(24\)"),
    "intermediate-not-divisible-by-ffn-groups": (dict(intermediate_size=514), "intermediate_size",
                                                 r"divisible by ffn_groups \(4\)"),
    "hidden-not-divisible-by-ffn-groups": (dict(hidden_size=132, num_heads=2, ffn_groups=8,
                                                use_conv_module=False), "hidden_size",
                                           r"hidden_size \(132\).*ffn_groups \(8\)"),
    "even-conv-kernel": (dict(conv_kernel_size=6), "conv_kernel_size", "odd"),
    "hidden-dropout-negative": (dict(hidden_dropout=-0.1), "hidden_dropout", r"\[0, 1\)"),
    "hidden-dropout-one": (dict(hidden_dropout=1.0), "hidden_dropout", r"\[0, 1\)"),
    "attention-dropout-above-one": (dict(attention_dropout=1.5), "attention_dropout",
                                    r"\[0, 1\)"),
    "bad-layer-structure": (dict(layer_structure="conformer"), "layer_structure",
                            "'conformer'"),
    "bad-norm-placement": (dict(norm_placement="sandwich"), "norm_placement", "'sandwich'"),
    "bad-gelu-form": (dict(gelu_form="relu"), "gelu_form", "'relu'"),
    "epsilon-zero": (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon", "> 0"),
    "initializer-negative": (dict(initializer_range=-0.02), "initializer_range", "> 0"),
    "str-for-int": (dict(hidden_size="128"), "hidden_size", "must be of type"),
    "float-for-int": (dict(num_layers=2.0), "num_layers", "must be of type"),
    "bool-for-int": (dict(num_heads=True), "num_heads", "must be a number"),
    "bool-for-float": (dict(hidden_dropout=False), "hidden_dropout", "must be a number"),
    "int-for-bool": (dict(use_conv_module=1), "use_conv_module", "must be of type"),
    "int-for-str": (dict(gelu_form=1), "gelu_form", "must be of type"),
    "none-for-int": (dict(vocab_size=None), "vocab_size", "must be of type"),
    **{f"non-positive-{name}": (dict({name: 0}), name, ">= 1")
       for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "ffn_groups",
                    "conv_kernel_size", "conv_group_size")},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_the_field(case):
    overrides, field, detail = BAD[case]
    with pytest.raises(ValueError, match=detail) as error:
        GroupBertConfig.from_preset("groupbert-tiny", **overrides)
    assert f"GroupBertConfig.{field}" in str(error.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_from_json_names_the_field(case):
    overrides, field, _ = BAD[case]
    values = {**GroupBertConfig.from_preset("groupbert-tiny").to_dict(), **overrides}
    with pytest.raises(ValueError) as error:
        GroupBertConfig.from_json(json.dumps(values))
    assert f"GroupBertConfig.{field}" in str(error.value)


def test_conv_group_size_is_only_checked_with_the_conv_module():
    config = GroupBertConfig.from_preset("bert-tiny", conv_group_size=24, conv_kernel_size=4)
    assert not config.use_conv_module


def test_unknown_json_key():
    with pytest.raises(ValueError, match=r"Unknown GroupBertConfig key\(s\): \['hiden_size'\]"):
        GroupBertConfig.from_json('{"hiden_size": 768}')


@pytest.mark.parametrize("text", ['{"hidden_size": 768', "not json", ""])
def test_invalid_json(text):
    with pytest.raises(ValueError, match="not valid JSON"):
        GroupBertConfig.from_json(text)


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"groupbert-base"', "null"])
def test_json_that_is_not_an_object(text):
    with pytest.raises(ValueError, match="expects a JSON object"):
        GroupBertConfig.from_json(text)


@pytest.mark.parametrize("name", ["groupbert-huge", "GroupBERT-base", "base", ""])
def test_unknown_preset(name):
    with pytest.raises(ValueError, match="Unknown preset") as error:
        GroupBertConfig.from_preset(name)
    assert "groupbert-base" in str(error.value)  # lists the choices
