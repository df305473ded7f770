"""GroupBertEncoder (GroupBERT and BERT) against a float64 numpy re-implementation, plus padding
invariance, config / `.keras` round trips, XLA vs eager and the attention-probabilities API."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf import GroupBertConfig, GroupBertEncoder, GroupBertPretrainer
from groupbert_tf.layers import BertLayer, GroupBertLayer

FAMILIES = ("groupbert", "bert")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _encoder(tiny_config, randomize_weights, family, seed=0, **overrides):
    encoder = GroupBertEncoder(tiny_config(family, **overrides))
    # Random values everywhere (biases, LayerNorm gamma/beta) so nothing cancels by accident.
    return randomize_weights(encoder, scale=0.1, seed=seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_preset_output_shapes_and_dtypes(family, make_inputs):
    encoder = GroupBertEncoder(f"{family}-tiny")
    assert encoder.config == GroupBertConfig.from_preset(f"{family}-tiny")
    inputs = make_inputs(3, 11, vocab=30522)
    outputs = encoder(inputs)
    assert set(outputs) == {"sequence_output", "pooled_output"}
    assert tuple(outputs["sequence_output"].shape) == (3, 11, 128)
    assert tuple(outputs["pooled_output"].shape) == (3, 128)
    assert all(v.dtype == "float32" for v in outputs.values())
    layer_class = GroupBertLayer if family == "groupbert" else BertLayer
    assert [type(layer) for layer in encoder.transformer_layers] == [layer_class] * 2
    # sequence_ids is the optional input of packed rows (tests/test_packing.py).
    assert set(encoder.input) == {"token_ids", "segment_ids", "padding_mask", "sequence_ids"}


def test_symbolic_output_shapes(tiny_config):
    encoder = GroupBertEncoder(tiny_config())
    assert tuple(encoder.output["sequence_output"].shape) == (None, None, 32)
    assert tuple(encoder.output["pooled_output"].shape) == (None, 32)
    # Any sequence length works with the same weights.
    for seq in (2, 24):
        out = encoder({name: np.ones((1, seq), "int32") for name in encoder.input})
        assert tuple(out["sequence_output"].shape) == (1, seq, 32)


@pytest.mark.parametrize("family, overrides", [
    ("groupbert", {}),
    ("groupbert", dict(gelu_form="exact", num_layers=1)),
    ("bert", {}),
    ("bert", dict(norm_placement="pre", ffn_groups=4, use_conv_module=True, num_layers=1)),
])
def test_encoder_equals_numpy(tiny_config, randomize_weights, make_inputs, np_ref, family,
                              overrides):
    encoder = _encoder(tiny_config, randomize_weights, family, **overrides)
    inputs = make_inputs(3, 10, seed=2)
    outputs = encoder(inputs)
    sequence, pooled = np_ref.encoder(inputs, encoder)
    np.testing.assert_allclose(_np(outputs["sequence_output"]), sequence, rtol=2e-4, atol=5e-5)
    np.testing.assert_allclose(_np(outputs["pooled_output"]), pooled, rtol=2e-4, atol=5e-5)


def test_gelu_form_reaches_every_ffn(tiny_config):
    for form, approximate in (("tanh", True), ("exact", False)):
        encoder = GroupBertEncoder(tiny_config(gelu_form=form))
        ffns = [module for layer in encoder.transformer_layers for module in layer.module_layers
                if module.name.startswith("feed_forward")]
        assert len(ffns) == 4
        assert all(ffn.gelu_approximate is approximate for ffn in ffns)


def test_final_layer_norm_only_for_pre_norm(tiny_config):
    names = {family: [layer.name for layer in GroupBertEncoder(tiny_config(family)).layers]
             for family in FAMILIES}
    assert names["groupbert"] == ["token_ids", "segment_ids", "sequence_ids", "embeddings",
                                  "padding_mask",
                                  "transformer_layer_0", "transformer_layer_1",
                                  "final_layer_norm", "pooler"]
    assert "final_layer_norm" not in names["bert"]


def test_weight_paths_are_stable(tiny_config):
    """The checkpoint converters are written against these names."""
    encoder = GroupBertEncoder(tiny_config(num_layers=1))
    paths = [w.path for w in encoder.weights]
    layer = "transformer_layer_0/"
    expected = [
        "embeddings/word_embeddings/embeddings", "embeddings/position_embeddings",
        "embeddings/segment_embeddings/embeddings", "embeddings/layer_norm/gamma",
        layer + "convolution/glu/kernel", layer + "convolution/conv_kernel",
        layer + "convolution/conv_norm/gamma", layer + "convolution/output/kernel",
        layer + "convolution_norm/gamma", layer + "feed_forward_1/intermediate/kernel",
        layer + "feed_forward_1/output/kernel", layer + "feed_forward_1/output/bias",
        layer + "feed_forward_1/mixer/kernel", layer + "feed_forward_1_norm/beta",
        layer + "attention/query/kernel", layer + "attention/key/bias",
        layer + "attention/value/kernel", layer + "attention/output/bias",
        layer + "attention_norm/gamma", layer + "feed_forward_2/mixer/bias",
        layer + "feed_forward_2_norm/gamma", "final_layer_norm/gamma", "pooler/kernel",
    ]
    assert not set(expected) - set(paths), sorted(set(expected) - set(paths))
    assert len(paths) == len(set(paths)) == 44
    bert = [w.path for w in GroupBertEncoder(tiny_config("bert", num_layers=1)).weights]
    assert layer + "feed_forward/output/kernel" in bert
    assert not any("mixer" in p or "convolution" in p or "final_layer_norm" in p for p in bert)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_invariance(tiny_config, randomize_weights, make_inputs, repad, family):
    """More padding, and other ids at padded positions, leave real positions unchanged."""
    encoder = _encoder(tiny_config, randomize_weights, family, seed=3)
    inputs = make_inputs(3, 10, lengths=[10, 6, 3], seed=4)
    base = encoder(inputs)
    longer = encoder(repad(inputs, extra=7, seed=5))
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(_np(longer["sequence_output"])[:, :10][real],
                               _np(base["sequence_output"])[real], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(_np(longer["pooled_output"]), _np(base["pooled_output"]),
                               rtol=1e-5, atol=2e-5)
    # A padded row equals the same sentence run alone without any padding.
    alone = encoder({name: value[1:2, :6] for name, value in inputs.items()})
    np.testing.assert_allclose(_np(alone["sequence_output"])[0],
                               _np(base["sequence_output"])[1, :6], rtol=1e-5, atol=2e-5)
    # Sanity: the mask matters (real tokens do see other real tokens).
    unmasked = encoder({**inputs, "padding_mask": np.ones_like(inputs["padding_mask"])})
    assert np.abs(_np(unmasked["sequence_output"])[1, :6]
                  - _np(base["sequence_output"])[1, :6]).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_get_config_round_trip(tiny_config, make_inputs, family):
    encoder = GroupBertEncoder(tiny_config(family), name=f"{family}_encoder")
    config = encoder.get_config()
    revived = GroupBertEncoder.from_config(config)
    assert revived.config == encoder.config
    assert revived.name == encoder.name
    assert revived.get_config() == config
    assert [w.path for w in revived.weights] == [w.path for w in encoder.weights]
    revived.set_weights(encoder.get_weights())
    inputs = make_inputs()
    np.testing.assert_array_equal(_np(revived(inputs)["sequence_output"]),
                                  _np(encoder(inputs)["sequence_output"]))
    # Also from a preset name and from a plain dict of fields.
    assert GroupBertEncoder(encoder.config.to_dict()).config == encoder.config
    serialized = keras.saving.serialize_keras_object(encoder)
    assert type(keras.saving.deserialize_keras_object(serialized)) is GroupBertEncoder


def test_bad_config_argument():
    with pytest.raises(ValueError, match="config must be"):
        GroupBertEncoder(42)
    with pytest.raises(ValueError, match="Unknown preset"):
        GroupBertEncoder("groupbert-gigantic")


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_save_and_load(tiny_config, randomize_weights, make_inputs, tmp_path, family):
    encoder = _encoder(tiny_config, randomize_weights, family, seed=6)
    inputs = make_inputs()
    expected = encoder(inputs)
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is GroupBertEncoder and loaded.config == encoder.config
    outputs = loaded(inputs)
    for name in expected:
        np.testing.assert_array_equal(_np(outputs[name]), _np(expected[name]))


def test_pretrainer_keras_save_and_load(tiny_config, randomize_weights, make_inputs, tmp_path):
    pretrainer = GroupBertPretrainer(tiny_config(num_layers=1))
    randomize_weights(pretrainer, scale=0.1, seed=7)
    inputs = {**make_inputs(), "masked_lm_positions": np.array([[1, 2, 3], [0, 4, 6]], "int32")}
    expected = pretrainer(inputs)
    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is GroupBertPretrainer and loaded.config == pretrainer.config
    # The decoder is still tied to the encoder's word embeddings after loading.
    assert loaded.mlm_head.token_embedding is loaded.encoder.embeddings.word_embeddings
    outputs = loaded(inputs)
    assert set(outputs) == {"mlm_logits", "nsp_logits"}
    assert tuple(outputs["mlm_logits"].shape) == (2, 3, 61)
    for name in expected:
        np.testing.assert_array_equal(_np(outputs[name]), _np(expected[name]))


@pytest.mark.parametrize("family", FAMILIES)
def test_xla_equals_eager(tiny_config, randomize_weights, make_inputs, family):
    # One layer: XLA compile time dominates and grows with depth.
    encoder = _encoder(tiny_config, randomize_weights, family, seed=8, num_layers=1)
    inputs = make_inputs(3, 12, seed=9)
    eager = encoder(inputs, training=False)
    compiled = tf.function(lambda x: encoder(x, training=False), jit_compile=True)
    xla = compiled({name: tf.constant(value) for name, value in inputs.items()})
    for name in eager:
        np.testing.assert_allclose(_np(xla[name]), _np(eager[name]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_probabilities(tiny_config, randomize_weights, make_inputs, np_ref, family):
    encoder = _encoder(tiny_config, randomize_weights, family, seed=10)
    inputs = make_inputs(3, 9, lengths=[9, 5, 3], seed=11)
    probabilities = encoder.attention_probabilities(inputs)
    assert len(probabilities) == encoder.config.num_layers
    mask = inputs["padding_mask"]
    for probs in probabilities:
        probs = _np(probs)
        assert probs.shape == (3, 2, 9, 9) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert np.all(probs * (1 - mask)[:, None, None, :] == 0.0)
        assert np.all(probs[mask.astype(bool)[:, None, None, :].repeat(9, 2).repeat(2, 1)] > 0)
    # Layer 0's probabilities equal the numpy attention on layer 0's own module input.
    layer = encoder.transformer_layers[0]
    x = np_ref.embeddings(inputs["token_ids"], inputs["segment_ids"], encoder.embeddings)
    for name, module, norm in zip(layer.module_names(), layer.module_layers, layer.norm_layers):
        module_input = np_ref.keras_layer_norm(x, norm) if layer.norm_placement == "pre" else x
        if name == "attention":
            _, expected = np_ref.attention(module_input, mask, module)
            break
        x = x + np_ref.module(name, module_input, mask, module)
        if layer.norm_placement == "post":
            x = np_ref.keras_layer_norm(x, norm)
    np.testing.assert_allclose(_np(probabilities[0]), expected, atol=2e-5)
