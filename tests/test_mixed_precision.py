"""`mixed_bfloat16`: the encoder (and the pre-training model) run under the global policy,
LayerNorms and the attention softmax stay float32, and outputs stay close to float32's."""

import keras
import numpy as np
import pytest

from groupbert_tf import GroupBertEncoder, GroupBertPretrainer
from groupbert_tf.layers import SelfAttention

FAMILIES = ("groupbert", "bert")


@pytest.fixture
def mixed_policy():
    """Sets the global policy to mixed_bfloat16 and always restores the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_under_mixed_bfloat16(tiny_config, randomize_weights, make_inputs, family,
                                      request):
    config = tiny_config(family)
    reference = randomize_weights(GroupBertEncoder(config), scale=0.1, seed=1)
    inputs = make_inputs(3, 10, seed=2)
    expected = reference(inputs)

    request.getfixturevalue("mixed_policy")
    encoder = GroupBertEncoder(config)
    assert encoder.dtype_policy.name == "mixed_bfloat16"
    encoder.set_weights(reference.get_weights())
    assert all(w.dtype == "float32" for w in encoder.weights)

    layers = _all_layers(encoder)
    norms = [l for l in layers if isinstance(l, keras.layers.LayerNormalization)]
    # embeddings + per layer: one per module (GroupBERT 4, BERT 2) + GroupBERT's conv-module
    # norm and final norm.
    assert len(norms) == (1 + 2 * 5 + 1 if family == "groupbert" else 1 + 2 * 2)
    assert all(n.dtype_policy.name == "float32" for n in norms)
    assert all(n.compute_dtype == "float32" for n in norms)
    others = [l for l in layers if isinstance(l, (keras.layers.Dense, SelfAttention))]
    assert others and all(l.compute_dtype == "bfloat16" for l in others)
    # A LayerNorm given bfloat16 returns float32.
    bf16 = keras.ops.cast(np.random.default_rng(0).normal(size=(2, 3, 32)), "bfloat16")
    assert keras.backend.standardize_dtype(norms[1](bf16).dtype) == "float32"

    outputs = encoder(inputs)
    # Both families end on a float32 LayerNorm; the pooler computes in bfloat16.
    assert keras.backend.standardize_dtype(outputs["sequence_output"].dtype) == "float32"
    assert keras.backend.standardize_dtype(outputs["pooled_output"].dtype) == "bfloat16"
    for name in expected:
        actual, wanted = _np(outputs[name]), _np(expected[name])
        assert np.all(np.isfinite(actual))
        np.testing.assert_allclose(actual, wanted, atol=0.15)
        assert np.abs(actual - wanted).mean() < 0.03, name
    # Not silently float32: bfloat16 rounding is visible.
    assert np.abs(_np(outputs["sequence_output"]) - _np(expected["sequence_output"])).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_softmax_is_float32(tiny_config, make_inputs, mixed_policy, family):
    encoder = GroupBertEncoder(tiny_config(family))
    inputs = make_inputs(2, 8, lengths=[8, 4])
    for probs in encoder.attention_probabilities(inputs):
        assert keras.backend.standardize_dtype(probs.dtype) == "float32"
        probs = _np(probs)
        # bfloat16 probabilities would miss 1 by up to ~4e-3.
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert np.all(probs[1, :, :, 4:] == 0)


def test_pretrainer_under_mixed_bfloat16(tiny_config, make_inputs, mixed_policy):
    pretrainer = GroupBertPretrainer(tiny_config(num_layers=1))
    inputs = {**make_inputs(), "masked_lm_positions": np.array([[1, 2], [0, 3]], "int32")}
    outputs = pretrainer(inputs)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in outputs.values())
    assert tuple(outputs["mlm_logits"].shape) == (2, 2, 61)
    y = {"masked_lm_ids": np.array([[5, 6], [7, 0]], "int32"),
         "masked_lm_weights": np.array([[1, 1], [1, 0]], "float32"),
         "next_sentence_labels": np.array([0, 1], "int32")}
    loss = _np(pretrainer.compute_loss(y=y, y_pred=outputs))
    # Untrained: MLM ~ log(61), NSP ~ log(2).
    assert np.isfinite(loss) and abs(loss - (np.log(61) + np.log(2))) < 0.5


def test_explicit_dtype_argument_without_global_policy(tiny_config, make_inputs):
    config = tiny_config(num_layers=1)
    encoder = GroupBertEncoder(config, dtype="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert encoder.dtype_policy.name == "mixed_bfloat16"
    assert encoder.embeddings.compute_dtype == "bfloat16"
    assert encoder.transformer_layers[0].compute_dtype == "bfloat16"
    revived = GroupBertEncoder.from_config(encoder.get_config())
    assert revived.dtype_policy.name == "mixed_bfloat16"
    assert revived.transformer_layers[0].compute_dtype == "bfloat16"
    pretrainer = GroupBertPretrainer(config, dtype="mixed_bfloat16")
    assert pretrainer.encoder.dtype_policy.name == "mixed_bfloat16"
    assert GroupBertPretrainer.from_config(pretrainer.get_config()).encoder.transformer_layers[
        0].compute_dtype == "bfloat16"


@pytest.mark.parametrize("model_class", [GroupBertEncoder, GroupBertPretrainer])
def test_mixed_model_keras_round_trip(tiny_config, make_inputs, mixed_policy, tmp_path,
                                      model_class):
    """A model saved under mixed_bfloat16 reloads as mixed_bfloat16 under any global policy."""
    model = model_class(tiny_config("groupbert", num_layers=1))
    inputs = {**make_inputs(), "masked_lm_positions": np.array([[1, 2], [0, 3]], "int32")}
    if model_class is GroupBertEncoder:
        inputs.pop("masked_lm_positions")
    expected = model(inputs)
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    keras.mixed_precision.set_global_policy("float32")  # mixed_policy restores it afterwards
    loaded = keras.models.load_model(path)
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    assert loaded.get_config() == model.get_config()
    outputs = loaded(inputs)
    for name in expected:
        np.testing.assert_array_equal(_np(outputs[name]), _np(expected[name]))


def test_gelu_is_computed_in_float32_and_rounded_once():
    """Under bfloat16 the GFFN's and MLM head's GELU runs in float32 (as Model Garden's BERT):
    the result is the float32 GELU rounded once to bfloat16, not GELU's tanh form evaluated
    step by step in bfloat16."""
    from groupbert_tf.layers.activations import gelu

    x = keras.ops.cast(np.linspace(-4.0, 4.0, 2001, dtype="float32"), "bfloat16")
    got = _np(gelu(x))
    assert keras.backend.standardize_dtype(gelu(x).dtype) == "bfloat16"
    exact = keras.ops.gelu(keras.ops.cast(x, "float32"), approximate=True)
    np.testing.assert_array_equal(got, _np(keras.ops.cast(exact, "bfloat16")))
    in_bfloat16 = _np(keras.ops.gelu(x, approximate=True))
    assert np.any(got != in_bfloat16)
