"""Layers of groupbert_tf.layers: the generic harness on each, and each against an independent
reference (float64 numpy, or a test-only `keras.layers.Conv1D(groups=...)` oracle)."""

import keras
import numpy as np
import pytest

from groupbert_tf.layers import (BertEmbeddings, BertLayer, ConvolutionModule, GroupBertLayer,
                                 GroupedDense, GroupedFeedForward, MaskedLMHead, SelfAttention,
                                 grouped_conv1d)
from groupbert_tf.layers.transformer_layer import TransformerLayer

B, S, N, I = 2, 9, 32, 128
RTOL, ATOL = 1e-4, 1e-5


def _x(shape=(B, S, N), seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(0.0, scale, shape)).astype("float32")


def _mask(lengths=(S, 5), seq=S):
    return (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype("int32")


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual).astype(np.float64), expected,
                               rtol=rtol, atol=atol)


def _layer_kwargs(**overrides):
    return {**dict(hidden_size=N, num_heads=2, intermediate_size=I, ffn_groups=4,
                   use_conv_module=True, conv_kernel_size=7, conv_group_size=16,
                   norm_placement="pre", layer_norm_epsilon=1e-3, gelu_approximate=True,
                   hidden_dropout=0.0, attention_dropout=0.0, initializer_range=0.02),
            **overrides}


# ---------------------------------------------------------------------------- GroupedDense

def test_grouped_dense_harness(run_layer_test):
    run_layer_test(GroupedDense, dict(units=24, groups=4), _x((B, S, 16)),
                   expected_output_shape=(B, S, 24), expected_num_trainable_weights=2,
                   expected_weight_names=["kernel", "bias"])


def test_grouped_dense_equals_block_diagonal_dense(np_ref, randomize_weights):
    layer = GroupedDense(12, 3)
    x = _x((B, S, 24))
    layer.build(x.shape)
    randomize_weights(layer)
    assert tuple(layer.kernel.shape) == (3, 8, 4)
    full = np_ref.block_diagonal(np_ref.w(layer.kernel))
    # Off-diagonal blocks are zero: group 0's inputs never reach group 1's outputs.
    assert np.all(full[:8, 4:] == 0) and np.all(full[8:16, :4] == 0)
    _close(layer(x), x.astype(np.float64) @ full + np_ref.w(layer.bias))


def test_grouped_dense_without_bias(np_ref):
    layer = GroupedDense(8, 2, use_bias=False)
    x = _x((3, 6))
    out = layer(x)
    assert layer.bias is None and len(layer.weights) == 1
    _close(out, x.astype(np.float64) @ np_ref.block_diagonal(np_ref.w(layer.kernel)))


@pytest.mark.parametrize("in_features, units, what", [(10, 8, "input features (10)"),
                                                       (8, 6, "units (6)")])
def test_grouped_dense_rejects_indivisible_sizes(in_features, units, what):
    with pytest.raises(ValueError, match=r"must be divisible by groups \(4\)") as error:
        GroupedDense(units, 4)(np.zeros((2, in_features), "float32"))
    assert what in str(error.value)


# ---------------------------------------------------------------------------- GFFN

def test_gffn_harness(run_layer_test):
    run_layer_test(GroupedFeedForward, dict(hidden_size=N, intermediate_size=I, groups=4,
                                            gelu_approximate=True, initializer_range=0.02),
                   _x(), expected_output_shape=(B, S, N),
                   expected_weight_names=["intermediate/kernel", "intermediate/bias",
                                          "output/kernel", "output/bias", "mixer/kernel",
                                          "mixer/bias"])


def test_dense_ffn_harness(run_layer_test):
    run_layer_test(GroupedFeedForward, dict(hidden_size=N, intermediate_size=I, groups=1,
                                            gelu_approximate=False, initializer_range=0.05),
                   _x(), expected_output_shape=(B, S, N),
                   expected_weight_names=["intermediate/kernel", "intermediate/bias",
                                          "output/kernel", "output/bias"])


@pytest.mark.parametrize("approximate", [True, False])
def test_gffn_equals_numpy_block_diagonal(np_ref, randomize_weights, approximate):
    layer = GroupedFeedForward(N, I, groups=4, gelu_approximate=approximate)
    x = _x(scale=2.0)
    layer.build(x.shape)
    randomize_weights(layer)
    assert tuple(layer.output_projection.kernel.shape) == (4, I // 4, N // 4)
    inner = np_ref.gelu(x.astype(np.float64) @ np_ref.w(layer.intermediate.kernel)
                        + np_ref.w(layer.intermediate.bias), approximate)
    down = inner @ np_ref.block_diagonal(np_ref.w(layer.output_projection.kernel)) \
        + np_ref.w(layer.output_projection.bias)
    expected = down @ np_ref.w(layer.mixer.kernel) + np_ref.w(layer.mixer.bias)
    _close(layer(x), expected)


def test_gffn_with_one_group_is_berts_ffn(np_ref, randomize_weights):
    layer = GroupedFeedForward(N, I, groups=1)
    x = _x(scale=2.0)
    layer.build(x.shape)
    randomize_weights(layer)
    assert layer.mixer is None
    assert isinstance(layer.output_projection, keras.layers.Dense)
    assert not any("mixer" in w.path for w in layer.weights)
    assert tuple(layer.output_projection.kernel.shape) == (I, N)
    expected = np_ref.gelu(x.astype(np.float64) @ np_ref.w(layer.intermediate.kernel)
                           + np_ref.w(layer.intermediate.bias)) \
        @ np_ref.w(layer.output_projection.kernel) + np_ref.w(layer.output_projection.bias)
    _close(layer(x), expected)


def test_gelu_form_tanh_and_exact_are_honoured(np_ref, randomize_weights):
    x = _x(scale=3.0)
    outputs = {}
    for approximate in (True, False):
        layer = GroupedFeedForward(N, I, groups=4, gelu_approximate=approximate)
        layer.build(x.shape)
        randomize_weights(layer, seed=3)
        outputs[approximate] = keras.ops.convert_to_numpy(layer(x))
        _close(outputs[approximate], np_ref.feed_forward(x.astype(np.float64), layer))
    # Same weights, different GELU: the two forms must actually differ.
    assert np.abs(outputs[True] - outputs[False]).max() > 1e-4


def test_ffn_parameter_counts():
    gffn, dense = GroupedFeedForward(N, 4 * N, groups=4), GroupedFeedForward(N, 4 * N, groups=1)
    gffn.build((None, None, N))
    dense.build((None, None, N))
    # Spec: GFFN 6N^2 + 8N with its pre-LayerNorm (2N); BERT FFN 8N^2 + 5N.
    assert gffn.count_params() + 2 * N == 6 * N * N + 8 * N
    assert dense.count_params() == 8 * N * N + 5 * N


def test_gffn_down_projection_bias_is_truncated_normal_not_zero():
    layer = GroupedFeedForward(N, I, groups=4, initializer_range=0.02)
    layer.build((None, None, N))
    bias = keras.ops.convert_to_numpy(layer.output_projection.bias)
    assert np.any(bias != 0) and np.abs(bias).max() <= 2 * 0.02 + 1e-7
    assert np.all(keras.ops.convert_to_numpy(layer.mixer.bias) == 0)
    assert np.all(keras.ops.convert_to_numpy(layer.intermediate.bias) == 0)


# ---------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("channels, kernel_size, group_in", [(64, 7, 16), (32, 7, 16),
                                                             (48, 3, 8)])
def test_grouped_conv1d_equals_keras_conv1d_groups(channels, kernel_size, group_in):
    groups = channels // group_in
    x = _x((B, 11, channels))
    oracle = keras.layers.Conv1D(channels, kernel_size, groups=groups, use_bias=False,
                                 padding="same")
    expected = keras.ops.convert_to_numpy(oracle(x))
    kernel = oracle.kernel
    assert tuple(kernel.shape) == (kernel_size, group_in, channels)
    _close(grouped_conv1d(x, keras.ops.convert_to_tensor(kernel), groups), expected, atol=1e-5)


def test_grouped_conv1d_equals_numpy_direct_sum(np_ref):
    x = _x((B, 8, 32), seed=4)
    kernel = _x((7, 16, 32), seed=5)
    _close(grouped_conv1d(x, kernel, 2), np_ref.grouped_conv1d(x, kernel, 2))


def test_convolution_module_kernel_layout_matches_conv1d():
    layer = ConvolutionModule(64, kernel_size=7, group_size=16)
    layer.build((None, None, 64))
    oracle = keras.layers.Conv1D(64, 7, groups=64 // 16, use_bias=False, padding="same")
    oracle.build((None, None, 64))
    assert tuple(layer.conv_kernel.shape) == tuple(oracle.kernel.shape) == (7, 16, 64)
    assert layer.groups == 4
    x = _x((B, 10, 64), seed=6)
    layer.conv_kernel.assign(_x((7, 16, 64), seed=7))
    oracle.kernel.assign(layer.conv_kernel)
    _close(grouped_conv1d(x, layer.conv_kernel, layer.groups), oracle(x))


def test_convolution_module_harness(run_layer_test):
    run_layer_test(ConvolutionModule, dict(hidden_size=N, kernel_size=7, group_size=16,
                                           layer_norm_epsilon=1e-3, initializer_range=0.02),
                   (_x(), _mask()), expected_output_shape=(B, S, N),
                   expected_weight_names=["glu/kernel", "glu/bias", "conv_kernel",
                                          "conv_norm/gamma", "conv_norm/beta", "output/kernel",
                                          "output/bias"],
                   float32_sublayers=["conv_norm"])


def test_convolution_module_equals_numpy(np_ref, randomize_weights):
    layer = ConvolutionModule(64, kernel_size=7, group_size=16, layer_norm_epsilon=1e-3)
    x, mask = _x((B, 12, 64), seed=8), _mask((12, 7), 12)
    layer.build(x.shape)
    randomize_weights(layer, seed=9)
    _close(layer(x, mask), np_ref.convolution_module(x.astype(np.float64), mask, layer))


def test_convolution_module_masks_padding_before_the_convolution(randomize_weights):
    layer = ConvolutionModule(N)
    x, mask = _x(seed=10), _mask((S, 4))
    layer.build(x.shape)
    randomize_weights(layer)
    changed = x.copy()
    changed[1, 4:] = _x((S - 4, N), seed=11, scale=10.0)
    reference, other = (keras.ops.convert_to_numpy(layer(v, mask)) for v in (x, changed))
    np.testing.assert_allclose(other[1, :4], reference[1, :4], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(other[0], reference[0], rtol=1e-6, atol=1e-6)
    # Without the mask the same change reaches real tokens (receptive field of 7).
    unmasked = [keras.ops.convert_to_numpy(layer(v, np.ones_like(mask))) for v in (x, changed)]
    assert np.abs(unmasked[0][1, :4] - unmasked[1][1, :4]).max() > 1e-3


def test_convolution_module_parameter_count():
    layer = ConvolutionModule(64)
    layer.build((None, None, 64))
    # Spec: 3N^2 + 119N including the module's pre-LayerNorm (2N).
    assert layer.count_params() + 2 * 64 == 3 * 64 * 64 + 119 * 64


# ---------------------------------------------------------------------------- attention

def test_attention_harness(run_layer_test):
    run_layer_test(SelfAttention, dict(hidden_size=N, num_heads=2, attention_dropout=0.0,
                                       initializer_range=0.02),
                   (_x(), _mask()), dict(return_attention_probs=True),
                   expected_output_shape=[(B, S, N), (B, 2, S, S)],
                   expected_output_dtype=["float32", "float32"],
                   expected_mixed_output_dtype=["bfloat16", "float32"],
                   expected_weight_names=[f"{n}/{w}" for n in ("query", "key", "value", "output")
                                          for w in ("kernel", "bias")])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_equals_numpy(np_ref, randomize_weights, heads):
    layer = SelfAttention(N, heads)
    x, mask = _x(seed=12), _mask((S, 3))
    layer.build(x.shape)
    randomize_weights(layer, seed=13)
    outputs, probs = layer(x, mask, return_attention_probs=True)
    expected, expected_probs = np_ref.attention(x.astype(np.float64), mask, layer)
    _close(outputs, expected)
    _close(probs, expected_probs, atol=1e-6)
    probs = keras.ops.convert_to_numpy(probs)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[1, :, :, 3:] == 0.0)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be divisible by num_heads"):
        SelfAttention(30, 4)


# ---------------------------------------------------------------------------- embeddings

def test_embeddings_harness(run_layer_test, make_inputs):
    inputs = make_inputs(B, S)
    run_layer_test(BertEmbeddings, dict(vocab_size=61, hidden_size=N, max_position_embeddings=24,
                                        type_vocab_size=2, layer_norm_epsilon=1e-3,
                                        hidden_dropout=0.0, initializer_range=0.02),
                   (inputs["token_ids"], inputs["segment_ids"]), expected_output_shape=(B, S, N),
                   expected_weight_names=["word_embeddings/embeddings", "position_embeddings",
                                          "segment_embeddings/embeddings", "layer_norm/gamma",
                                          "layer_norm/beta"],
                   float32_sublayers=["layer_norm"])


def test_embeddings_equal_numpy(np_ref, randomize_weights, make_inputs):
    inputs = make_inputs(3, 7)
    layer = BertEmbeddings(61, N, max_position_embeddings=24, layer_norm_epsilon=1e-12)
    layer.build(inputs["token_ids"].shape)
    randomize_weights(layer, seed=14)
    _close(layer(inputs["token_ids"], inputs["segment_ids"]),
           np_ref.embeddings(inputs["token_ids"], inputs["segment_ids"], layer))


# ---------------------------------------------------------------------------- layers

LAYER_CASES = {
    "groupbert-pre": (GroupBertLayer, dict()),
    "groupbert-noconv-post": (GroupBertLayer, dict(use_conv_module=False, norm_placement="post")),
    "bert-post-dense": (BertLayer, dict(ffn_groups=1, use_conv_module=False,
                                        norm_placement="post", layer_norm_epsilon=1e-12,
                                        gelu_approximate=False)),
    "bert-pre-conv-grouped": (BertLayer, dict(norm_placement="pre")),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_transformer_layer_harness(run_layer_test, case):
    layer_cls, overrides = LAYER_CASES[case]
    kwargs = _layer_kwargs(**overrides)
    post = kwargs["norm_placement"] == "post"
    layer = run_layer_test(layer_cls, kwargs, (_x(), _mask()), expected_output_shape=(B, S, N),
                           # post-norm ends on a (float32) LayerNorm
                           expected_mixed_output_dtype="float32" if post else "bfloat16")
    norms = [f"{name}_norm" for name in layer.module_names()]
    assert [n.name for n in layer.norm_layers] == norms
    assert all(n.dtype_policy.name == "float32" for n in layer.norm_layers)


def test_module_order():
    groupbert = GroupBertLayer(**_layer_kwargs())
    assert groupbert.module_names() == ("convolution", "feed_forward_1", "attention",
                                        "feed_forward_2")
    assert GroupBertLayer(**_layer_kwargs(use_conv_module=False)).module_names() == (
        "feed_forward_1", "attention", "feed_forward_2")
    assert BertLayer(**_layer_kwargs(use_conv_module=False)).module_names() == (
        "attention", "feed_forward")
    assert BertLayer(**_layer_kwargs()).module_names() == (
        "convolution", "attention", "feed_forward")


def test_groupbert_layer_parameter_count():
    layer = GroupBertLayer(**_layer_kwargs(hidden_size=64, intermediate_size=256, num_heads=1))
    layer.build((None, None, 64))
    n = 64
    # conv 3N^2+119N, two GFFNs 6N^2+8N each, attention 4N^2+4N + its LayerNorm 2N.
    assert layer.count_params() == (3 * n * n + 119 * n) + 2 * (6 * n * n + 8 * n) \
        + (4 * n * n + 6 * n)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_transformer_layer_equals_numpy(np_ref, randomize_weights, case):
    layer_cls, overrides = LAYER_CASES[case]
    layer = layer_cls(**_layer_kwargs(**overrides))
    x, mask = _x(seed=15), _mask((S, 6))
    layer.build(x.shape)
    randomize_weights(layer, seed=16, scale=0.15)
    _close(layer(x, mask), np_ref.transformer_layer(x.astype(np.float64), mask, layer),
           rtol=2e-4, atol=5e-5)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_norm_placement_recomposed_from_sublayers(np_ref, randomize_weights, placement):
    """The layer equals its own sublayers wired by hand: pre-norm x + m(LN(x)) with no norm
    after the add; post-norm LN(x + m(x))."""
    layer = GroupBertLayer(**_layer_kwargs(norm_placement=placement))
    x, mask = _x(seed=17), _mask((S, 5))
    layer.build(x.shape)
    randomize_weights(layer, seed=18, scale=0.15)
    hidden = x
    for name, module, norm in zip(layer.module_names(), layer.module_layers, layer.norm_layers):
        normed = np_ref.keras_layer_norm(np.asarray(hidden, np.float64), norm).astype("float32")
        module_input = normed if placement == "pre" else hidden
        args = (module_input, mask) if name in ("convolution", "attention") else (module_input,)
        residual = hidden + keras.ops.convert_to_numpy(module(*args))
        hidden = residual if placement == "pre" else np_ref.keras_layer_norm(
            residual.astype(np.float64), norm).astype("float32")
    output = keras.ops.convert_to_numpy(layer(x, mask))
    _close(output, hidden, rtol=2e-4, atol=5e-5)
    if placement == "pre":
        # No LayerNorm after the add: the residual stream keeps the input's scale.
        assert np.abs(output.std(-1) - 1.0).max() > 0.05
    else:
        gamma_free = (output - np_ref.w(layer.norm_layers[-1].beta)) / np_ref.w(
            layer.norm_layers[-1].gamma)
        np.testing.assert_allclose(gamma_free.mean(-1), 0.0, atol=1e-4)


def test_pre_and_post_norm_differ():
    x, mask = _x(seed=19), _mask()
    layers = {p: GroupBertLayer(**_layer_kwargs(norm_placement=p)) for p in ("pre", "post")}
    for layer in layers.values():
        layer.build(x.shape)
    layers["post"].set_weights(layers["pre"].get_weights())
    assert np.abs(keras.ops.convert_to_numpy(layers["pre"](x, mask))
                  - keras.ops.convert_to_numpy(layers["post"](x, mask))).max() > 1e-2


def test_transformer_layer_returns_attention_probs():
    layer = GroupBertLayer(**_layer_kwargs())
    hidden, probs = layer(_x(), _mask((S, 4)), return_attention_probs=True)
    assert tuple(hidden.shape) == (B, S, N) and tuple(probs.shape) == (B, 2, S, S)
    probs = keras.ops.convert_to_numpy(probs)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[1, :, :, 4:] == 0)


def test_transformer_layer_rejects_bad_norm_placement():
    with pytest.raises(ValueError, match="norm_placement"):
        GroupBertLayer(**_layer_kwargs(norm_placement="sandwich"))


def test_dropout_is_active_only_in_training():
    layer = GroupBertLayer(**_layer_kwargs(hidden_dropout=0.5, attention_dropout=0.5))
    x, mask = _x(), _mask()
    inference = [keras.ops.convert_to_numpy(layer(x, mask, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = keras.ops.convert_to_numpy(layer(x, mask, training=True))
    assert np.abs(training - inference[0]).max() > 1e-3


def test_transformer_layer_is_abstract():
    with pytest.raises(NotImplementedError):
        TransformerLayer(**_layer_kwargs()).module_names()


# ---------------------------------------------------------------------------- MLM head

def test_masked_lm_head_harness(run_layer_test):
    embedding = keras.layers.Embedding(61, N)
    embedding.build((None,))
    positions = np.array([[0, 3, 8], [1, 1, 2]], "int32")
    run_layer_test(MaskedLMHead, dict(layer_norm_epsilon=1e-3, gelu_approximate=True,
                                      initializer_range=0.02),
                   (_x(), positions), expected_output_shape=(B, 3, 61),
                   constructor_only_kwargs=dict(token_embedding=embedding),
                   expected_mixed_output_dtype="float32",
                   # the tied table is tracked (not copied) by the head
                   expected_weight_names=["embedding/embeddings", "transform/kernel", "transform/bias",
                                          "layer_norm/gamma", "layer_norm/beta", "output_bias"],
                   float32_sublayers=["layer_norm"])


def test_masked_lm_head_equals_numpy(np_ref, randomize_weights):
    embedding = keras.layers.Embedding(61, N)
    embedding.build((None,))
    randomize_weights(embedding, seed=20)
    head = MaskedLMHead(embedding, layer_norm_epsilon=1e-3)
    x, positions = _x(seed=21), np.array([[0, 3, 8], [1, 1, 2]], "int32")
    head.build(x.shape)
    randomize_weights(head, seed=22)
    gathered = np.take_along_axis(x.astype(np.float64), positions[:, :, None], axis=1)
    hidden = np_ref.keras_layer_norm(np_ref.gelu(np_ref.dense(gathered, head.transform)),
                                     head.layer_norm)
    expected = hidden @ np_ref.w(embedding.embeddings).T + np_ref.w(head.output_bias)
    _close(head(x, positions), expected)
