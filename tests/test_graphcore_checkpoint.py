"""Conversion to and from the reference GroupBERT names (groupbert_tf.checkpoints.graphcore):
TF1 checkpoint round trips, optimum-graphcore round trips, the layouts checked against the
reference's own ops (TF1) or PyTorch semantics (optimum), and error messages."""

import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf.checkpoints import (CheckpointError, from_graphcore, from_optimum_graphcore,
                                      load_graphcore_checkpoint, read_tf1_checkpoint,
                                      save_graphcore_checkpoint, save_tf1_checkpoint,
                                      to_graphcore, to_optimum_graphcore)
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.models import GroupBertEncoder, GroupBertPretrainer

SMALL = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=50,
             max_position_embeddings=16)


def small_config(**overrides):
    return GroupBertConfig.from_preset("groupbert-tiny", **{**SMALL, **overrides})


def randomize(model, seed):
    """Non-trivial values everywhere (biases, norms too) so every mapping matters."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.1, variable.shape).astype(variable.dtype)
                        + (1.0 if variable.path.endswith("gamma") else 0.0))
    return model


def inputs(batch=2, length=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, 5:] = 0
    segments = np.zeros_like(ids)
    segments[:, 4:] = 1
    return {"token_ids": ids, "segment_ids": segments, "padding_mask": mask,
            "masked_lm_positions": np.array([[1, 2, 3], [0, 2, 4]], np.int32)}


def encoder_inputs(x):
    return {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}


@pytest.fixture(scope="module")
def pretrainers():
    return (randomize(GroupBertPretrainer(small_config()), 1),
            randomize(GroupBertPretrainer(small_config()), 2))


def assert_same_outputs(a, b):
    x = inputs()
    out_a, out_b = a(x), b(x)
    for key in out_a:
        np.testing.assert_allclose(np.asarray(out_a[key]), np.asarray(out_b[key]), atol=1e-5,
                                   err_msg=key)


# ---- round trips ------------------------------------------------------------------------------

def test_tf1_checkpoint_round_trip(tmp_path, pretrainers):
    source, target = pretrainers
    prefix = str(tmp_path / "ckpt" / "model.ckpt")
    save_graphcore_checkpoint(source, prefix)
    listed = dict(tf.train.list_variables(prefix))
    assert set(listed) == set(to_graphcore(source))
    assert listed["bert/encoder/layer_1/convolution/dwconv/weight"] == [7, 16, 64]
    assert listed["bert/encoder/layer_0/feed_forward_2/output/dense/kernel"] == [64, 64]
    assert listed["cls/seq_relationship/output_weights"] == [2, 64]
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("model.ckpt")
    load_graphcore_checkpoint(target, prefix)
    assert_same_outputs(source, target)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_encoder_round_trip_ignores_heads(pretrainers):
    source = pretrainers[0]
    arrays = to_graphcore(source)  # has cls/*: an encoder ignores them
    encoder = GroupBertEncoder(small_config())
    from_graphcore(encoder, arrays)
    np.testing.assert_allclose(
        np.asarray(encoder(encoder_inputs(inputs()))["sequence_output"]),
        np.asarray(source.encoder(encoder_inputs(inputs()))["sequence_output"]), atol=1e-5)
    assert not any(name.startswith("cls/") for name in to_graphcore(encoder))


def test_optimum_round_trip(pretrainers):
    source = pretrainers[0]
    state = to_optimum_graphcore(source)
    assert state["bert.encoder.layer.0.convolution.groupconv.weight"].shape == (64, 16, 7)
    assert state["bert.encoder.layer.0.output_first.grouped_matmul.weight"].shape == (64, 64, 1)
    assert not state["bert.encoder.layer.0.convolution.groupconv.bias"].any()
    target = randomize(GroupBertPretrainer(small_config()), 3)
    from_optimum_graphcore(target, state)
    assert_same_outputs(source, target)
    # Without the prefix (GroupBertModel names) into an encoder.
    encoder = GroupBertEncoder(small_config())
    from_optimum_graphcore(encoder, to_optimum_graphcore(source.encoder))
    np.testing.assert_allclose(
        np.asarray(encoder(encoder_inputs(inputs()))["sequence_output"]),
        np.asarray(source.encoder(encoder_inputs(inputs()))["sequence_output"]), atol=1e-5)


def test_bert_baseline_names_round_trip():
    config = GroupBertConfig.from_preset("bert-tiny", **SMALL)
    source = randomize(GroupBertPretrainer(config), 4)
    arrays = to_graphcore(source)
    assert "bert/encoder/layer_1/attention/projection/LayerNorm/gamma" in arrays
    assert "bert/encoder/layer_1/output/LayerNorm/beta" in arrays
    target = GroupBertPretrainer(config)
    from_graphcore(target, arrays)
    assert_same_outputs(source, target)


# ---- layouts against the reference's semantics --------------------------------------------------

def test_grouped_projection_matches_reference_conv1d(pretrainers):
    """The reference computes the grouped down-projection as conv1d(x, filter[None]) with a
    [I/G, N] filter (modeling.py `grouped_projection`)."""
    layer = pretrainers[0].encoder.get_layer("transformer_layer_0").module_layers[1]
    arrays = to_graphcore(pretrainers[0])
    filters = arrays["bert/encoder/layer_0/feed_forward_1/output/dense/kernel"]
    bias = arrays["bert/encoder/layer_0/feed_forward_1/output/dense/bias"]
    x = np.random.default_rng(5).normal(size=(2, 5, 256)).astype(np.float32)
    reference = tf.function(
        lambda t: tf.nn.bias_add(tf.nn.conv1d(t, filters[None], stride=1, padding="VALID"), bias),
        jit_compile=True)(x)
    ours = layer.output_projection(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)


def test_convolution_module_matches_reference_ops(pretrainers):
    """GLU as values * sigmoid(gates) from the two reference Dense layers, masked, then the
    reference's grouped conv2d with the [K, 1, 16, N] filter, LayerNorm(1e-3), swish, post."""
    encoder = pretrainers[0].encoder
    module = encoder.get_layer("transformer_layer_1").module_layers[0]
    arrays = to_graphcore(pretrainers[0])
    p = "bert/encoder/layer_1/convolution"
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 9, 64)).astype(np.float32)
    mask = inputs()["padding_mask"]

    def reference(t):
        def glu_half(half):
            return (t @ arrays[f"{p}/pre/glu/{half}/dense/kernel"]
                    + arrays[f"{p}/pre/glu/{half}/dense/bias"])

        values, gates = glu_half("values"), glu_half("gates")
        state = values * tf.sigmoid(gates) * tf.cast(mask, tf.float32)[:, :, None]
        weight = tf.expand_dims(arrays[f"{p}/dwconv/weight"], 1)
        state = tf.squeeze(tf.nn.conv2d(state[:, :, None, :], weight, strides=[1, 1, 1, 1],
                                        padding="SAME"), 2)
        mean, var = tf.nn.moments(state, axes=[-1], keepdims=True)
        state = (state - mean) * tf.math.rsqrt(var + 1e-3)
        state = (state * arrays[f"{p}/dwconv/LayerNorm/gamma"]
                 + arrays[f"{p}/dwconv/LayerNorm/beta"])
        state = tf.nn.swish(state)
        return state @ arrays[f"{p}/post/dense/kernel"] + arrays[f"{p}/post/dense/bias"]

    expected = tf.function(reference, jit_compile=True)(x)
    ours = module(x, mask)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-4)


def _np_layer_norm(x, gamma, beta, eps=1e-3):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _linear(x, state, name):
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _optimum_forward(state, config, x):
    """GroupBertModel.forward (optimum-graphcore) in NumPy, PyTorch semantics:
    gates = first half of glu, nn.Conv1d(groups) cross-correlation with 'same' padding,
    grouped_matmul = nn.Conv1d(I, N, 1, groups=G)."""
    n, heads = config.hidden_size, config.num_heads
    ids, segments, mask = x["token_ids"], x["segment_ids"], x["padding_mask"].astype(np.float64)
    batch, length = ids.shape
    h = (state["embeddings.word_embeddings.weight"][ids]
         + state["embeddings.position_embeddings.weight"][:length][None]
         + state["embeddings.token_type_embeddings.weight"][segments])

    def norm(t, name):
        return _np_layer_norm(t, state[f"{name}.weight"], state[f"{name}.bias"])

    h = norm(h, "embeddings.LayerNorm")
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        # convolution
        t = norm(h, f"{p}.convolution.prenorm")
        t = _linear(t, state, f"{p}.convolution.glu")
        t = t[..., n:] * (1 / (1 + np.exp(-t[..., :n])))
        t = t * mask[:, :, None]
        weight = state[f"{p}.convolution.groupconv.weight"]  # [out, in/group, K]
        k = weight.shape[2]
        group = weight.shape[1]
        padded = np.pad(t, ((0, 0), (k // 2, k // 2), (0, 0)))
        conv = np.zeros_like(t)
        for o in range(n):
            g = o // group
            window = padded[:, :, g * group:(g + 1) * group]
            for tap in range(k):
                conv[:, :, o] += window[:, tap:tap + length] @ weight[o, :, tap]
        conv += state[f"{p}.convolution.groupconv.bias"]
        t = norm(conv, f"{p}.convolution.conv_norm")
        t = t / (1 + np.exp(-t))
        h = h + _linear(t, state, f"{p}.convolution.output_projection")
        for suffix in ("first", "attention", "second"):
            if suffix == "attention":
                t = norm(h, f"{p}.attention.LayerNorm")
                q, kk, v = (_linear(t, state, f"{p}.attention.self.{name}").reshape(
                    batch, length, heads, n // heads) for name in ("query", "key", "value"))
                scores = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(n // heads)
                scores = scores + (1 - mask)[:, None, None, :] * -10000.0
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                context = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, n)
                h = h + _linear(context, state, f"{p}.attention.output.dense")
                continue
            t = norm(h, f"{p}.intermediate_{suffix}.LayerNorm")
            t = _np_gelu_tanh(_linear(t, state, f"{p}.intermediate_{suffix}.dense"))
            weight = state[f"{p}.output_{suffix}.grouped_matmul.weight"][:, :, 0]  # [N, I/G]
            group_in, group_out = weight.shape[1], n // config.ffn_groups
            out = np.stack([t[..., (o // group_out) * group_in:(o // group_out + 1) * group_in]
                            @ weight[o] for o in range(n)], -1)
            out = out + state[f"{p}.output_{suffix}.grouped_matmul.bias"]
            h = h + _linear(out, state, f"{p}.output_{suffix}.dense_output_projection")
    return norm(h, "encoder.LayerNorm")


def test_optimum_layout_matches_pytorch_semantics(pretrainers):
    encoder = pretrainers[0].encoder
    state = {k: v.astype(np.float64) for k, v in to_optimum_graphcore(encoder).items()}
    x = encoder_inputs(inputs())
    expected = _optimum_forward(state, encoder.config, x)
    ours = np.asarray(encoder(x)["sequence_output"])
    np.testing.assert_allclose(ours, expected, atol=2e-4)


# ---- reference variants -----------------------------------------------------------------------

def test_fused_qkv_split_embeddings_and_absent_biases(pretrainers):
    source = pretrainers[0]
    arrays = to_graphcore(source)
    for i in range(2):
        base = f"bert/encoder/layer_{i}/attention/self"
        arrays[f"{base}/kernel/qkv_weight"] = np.concatenate(
            [arrays.pop(f"{base}/{q}/kernel") for q in ("query", "key", "value")], axis=1)
        for q in ("query", "key", "value"):  # use_qkv_bias=False
            arrays.pop(f"{base}/{q}/bias")
        arrays.pop(f"bert/encoder/layer_{i}/attention/projection/dense/bias")
    arrays.pop("cls/predictions/output_bias")  # use_prediction_bias=False
    table = arrays.pop("bert/embeddings/word_embeddings")
    arrays["bert/embeddings/s0/word_embeddings"] = table[:25]
    arrays["bert/embeddings/s1/word_embeddings"] = table[25:]
    target = GroupBertPretrainer(small_config())
    from_graphcore(target, arrays)
    variables = {v.path: v.numpy() for v in target.weights}
    np.testing.assert_array_equal(variables["embeddings/word_embeddings/embeddings"], table)
    assert not variables["transformer_layer_1/attention/key/bias"].any()
    assert not variables["mlm_head/output_bias"].any()
    value = to_graphcore(source)["bert/encoder/layer_0/attention/self/value/kernel"]
    np.testing.assert_array_equal(variables["transformer_layer_0/attention/value/kernel"], value)


def test_optimizer_slots_are_skipped(tmp_path, pretrainers):
    arrays = to_graphcore(pretrainers[0])
    extra = {"global_step": np.array(7, np.int64),
             "bert/pooler/dense/kernel/Adam": np.zeros((64, 64), np.float32)}
    prefix = str(tmp_path / "model.ckpt-7")
    save_tf1_checkpoint({**arrays, **extra}, prefix)
    assert set(read_tf1_checkpoint(prefix)) == set(arrays)
    assert set(read_tf1_checkpoint(prefix, include_optimizer=True)) == set(arrays) | set(extra)
    load_graphcore_checkpoint(GroupBertPretrainer(small_config()), str(tmp_path))  # folder works


# ---- errors -------------------------------------------------------------------------------------

def test_missing_name_is_reported(tmp_path, pretrainers):
    arrays = to_graphcore(pretrainers[0])
    del arrays["bert/encoder/layer_1/convolution/pre/glu/gates/dense/kernel"]
    del arrays["LayerNorm/gamma"]
    prefix = str(tmp_path / "bad.ckpt")
    save_tf1_checkpoint(arrays, prefix)
    with pytest.raises(CheckpointError, match=r"bad\.ckpt.*2 tensor\(s\) missing.*"
                                              r"glu/gates/dense/kernel.*LayerNorm/gamma"):
        load_graphcore_checkpoint(GroupBertPretrainer(small_config()), prefix)


def test_shape_mismatch_is_reported(pretrainers):
    arrays = to_graphcore(pretrainers[0])
    arrays["bert/encoder/layer_0/feed_forward_1/output/dense/kernel"] = np.zeros((256, 64))
    with pytest.raises(CheckpointError, match=r"feed_forward_1/output/dense/kernel: shape "
                                              r"\(256, 64\) in the checkpoint, model needs \(64, 64\)"):
        from_graphcore(GroupBertPretrainer(small_config()), arrays)


def test_unexpected_name_is_reported(pretrainers):
    target = GroupBertPretrainer(small_config())
    arrays = dict(to_graphcore(pretrainers[0]))
    arrays["bert/encoder/layer_2/attention/self/query/kernel"] = np.zeros((64, 64))
    with pytest.raises(CheckpointError, match="unexpected.*layer_2/attention/self/query/kernel"):
        from_graphcore(target, arrays)
    from_graphcore(target, arrays, strict=False)


def test_optimum_errors(pretrainers):
    state = to_optimum_graphcore(pretrainers[0])
    state["bert.encoder.layer.0.convolution.groupconv.bias"] = np.full(64, 0.5, np.float32)
    with pytest.raises(CheckpointError, match="groupconv.bias: non-zero"):
        from_optimum_graphcore(GroupBertPretrainer(small_config()), state)
    state = to_optimum_graphcore(pretrainers[0])
    del state["bert.encoder.layer.1.output_second.dense_output_projection.weight"]
    with pytest.raises(CheckpointError, match="output_second.dense_output_projection.weight"):
        from_optimum_graphcore(GroupBertPretrainer(small_config()), state)
    with pytest.raises(CheckpointError, match="optimum-graphcore"):
        to_optimum_graphcore(GroupBertEncoder(small_config(use_conv_module=False)))
