"""Conversion to and from the reference GroupBERT names (groupbert_tf.checkpoints.graphcore):
TF1 checkpoint round trips, optimum-graphcore round trips, the layouts checked against the
reference's own ops (TF1) or PyTorch semantics (optimum), and error messages."""

import re

import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf.checkpoints import (CheckpointError, GraphcoreLayout, from_graphcore,
                                      from_optimum_graphcore,
                                      load_graphcore_checkpoint, read_tf1_checkpoint,
                                      save_graphcore_checkpoint, save_tf1_checkpoint,
                                      to_graphcore, to_optimum_graphcore)
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.models import (GroupBertClassifier, GroupBertEncoder, GroupBertPretrainer,
                                 GroupBertSpanLabeler)

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


# ---- target layouts (GraphcoreLayout) -----------------------------------------------------------

FUSED_NO_QKV_BIAS = GraphcoreLayout.from_reference_config({})  # the reference's defaults


def _zero_query_and_value_biases(model):
    for variable in model.weights:
        if variable.path.endswith(("query/bias", "value/bias")):
            variable.assign(np.zeros(variable.shape, variable.dtype))
    return model


def test_reference_config_defaults_and_groupbert_pretraining_layout(tmp_path):
    assert FUSED_NO_QKV_BIAS == GraphcoreLayout(
        use_qkv_split=False, use_qkv_bias=False, use_attention_projection_bias=True,
        use_prediction_bias=True)
    # configs/groupbert/pretrain_base_groupbert_128.json sets all four: our default layout.
    path = tmp_path / "pretrain_base_groupbert_128.json"
    path.write_text('{"use_qkv_split": true, "use_qkv_bias": true, "use_prediction_bias": true,'
                    ' "use_attention_projection_bias": true, "groupbert": true}')
    assert GraphcoreLayout.from_reference_config(str(path)) == GraphcoreLayout()
    with pytest.raises(ValueError, match=r"x\.json: use_qkv_split must be true or false"):
        (tmp_path / "x.json").write_text('{"use_qkv_split": "yes"}')
        GraphcoreLayout.from_reference_config(str(tmp_path / "x.json"))


def test_fused_export_round_trip_through_a_tf1_file(tmp_path):
    # Key biases stay non-zero: softmax ignores them, so leaving them out is exact.
    source = _zero_query_and_value_biases(randomize(GroupBertPretrainer(small_config()), 7))
    prefix = str(tmp_path / "fused" / "model.ckpt")
    save_graphcore_checkpoint(source, prefix, FUSED_NO_QKV_BIAS)
    listed = dict(tf.train.list_variables(prefix))
    assert listed["bert/encoder/layer_0/attention/self/kernel/qkv_weight"] == [64, 192]
    assert not [n for n in listed if re.search(r"self/(query|key|value)/", n)]
    assert "bert/encoder/layer_1/attention/projection/dense/bias" in listed
    target = randomize(GroupBertPretrainer(small_config()), 8)
    load_graphcore_checkpoint(target, prefix)
    assert_same_outputs(source, target)
    biases = [{v.path: v.numpy() for v in m.weights}["transformer_layer_0/attention/key/bias"]
              for m in (source, target)]
    assert biases[0].any() and not biases[1].any()  # dropped, and the outputs still agree


def test_fused_export_refuses_non_zero_query_and_value_biases(pretrainers):
    with pytest.raises(CheckpointError, match=r"no 4 bias\(es\) that are non-zero.*"
                                              r"layer_0/attention/self/query/bias"):
        to_graphcore(pretrainers[0], FUSED_NO_QKV_BIAS)
    arrays = to_graphcore(pretrainers[0], FUSED_NO_QKV_BIAS, drop_nonzero_biases=True)
    assert not [n for n in arrays if n.endswith(("query/bias", "key/bias", "value/bias"))]
    layout = GraphcoreLayout(use_attention_projection_bias=False, use_prediction_bias=False)
    with pytest.raises(CheckpointError, match=r"no 3 bias\(es\).*layer_0/attention/projection/"
                                              r"dense/bias.*cls/predictions/output_bias"):
        to_graphcore(pretrainers[0], layout)


def _reference_attention(arrays, layer, x, mask, num_heads):
    """modeling.py's attention in NumPy: qkv = x @ qkv_weight, split in three along the
    columns, heads, scaled dot product with the additive mask, projection."""
    p = f"bert/encoder/layer_{layer}/attention"
    qkv = x @ arrays[f"{p}/self/kernel/qkv_weight"]
    batch, length, width = x.shape
    head = width // num_heads
    q, k, v = (t.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)
               for t in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head)
    scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    return (context @ arrays[f"{p}/projection/dense/kernel"]
            + arrays[f"{p}/projection/dense/bias"])


def test_numpy_built_fused_checkpoint_imports_to_the_same_attention(tmp_path, pretrainers):
    split = to_graphcore(_zero_query_and_value_biases(
        randomize(GroupBertPretrainer(small_config()), 9)))
    rng = np.random.default_rng(10)
    fused = {n: a for n, a in split.items() if not re.search(r"self/(query|key|value)/", n)}
    for i in range(2):
        fused[f"bert/encoder/layer_{i}/attention/self/kernel/qkv_weight"] = rng.normal(
            0, 0.1, (64, 192)).astype(np.float32)
        for j, q in enumerate(("query", "key", "value")):  # the same weights, split
            split[f"bert/encoder/layer_{i}/attention/self/{q}/kernel"] = fused[
                f"bert/encoder/layer_{i}/attention/self/kernel/qkv_weight"][:, 64 * j:64 * (j + 1)]
    save_tf1_checkpoint(fused, str(tmp_path / "fused.ckpt"))
    save_tf1_checkpoint(split, str(tmp_path / "split.ckpt"))
    from_fused = load_graphcore_checkpoint(GroupBertPretrainer(small_config()),
                                           str(tmp_path / "fused.ckpt"))
    from_split = load_graphcore_checkpoint(GroupBertPretrainer(small_config()),
                                           str(tmp_path / "split.ckpt"))
    assert_same_outputs(from_fused, from_split)
    x = rng.normal(size=(2, 9, 64)).astype(np.float32)
    mask = inputs()["padding_mask"].astype(np.float32)
    attention = from_fused.encoder.get_layer("transformer_layer_1").attention
    np.testing.assert_allclose(np.asarray(attention(x, mask)),
                               _reference_attention(fused, 1, x, mask, num_heads=2), atol=1e-5)


# ---- fine-tuning checkpoints --------------------------------------------------------------------

def _finetuned_names(pretrainer, head):
    """A reference GLUE or SQuAD model's variables: the encoder, fused QKV, its own head."""
    arrays = {n: a for n, a in to_graphcore(pretrainer.encoder, FUSED_NO_QKV_BIAS,
                                            drop_nonzero_biases=True).items()}
    rng = np.random.default_rng(11)
    pooler = {w: arrays.pop(f"bert/pooler/dense/{w}") for w in ("kernel", "bias")}
    if head == "glue":
        arrays.update({f"glue_loss/pooler/dense/{w}": a for w, a in pooler.items()})
        arrays["glue_loss/output_weights"] = rng.normal(size=(3, 64)).astype(np.float16)
        arrays["glue_loss/output_bias"] = rng.normal(size=3).astype(np.float16)
    else:
        arrays["cls/squad/output_weights"] = rng.normal(size=(2, 64)).astype(np.float32)
        arrays["cls/squad/output_bias"] = rng.normal(size=2).astype(np.float32)
    return arrays


def test_glue_checkpoint_imports_pooler_and_classifier(tmp_path, pretrainers):
    arrays = _finetuned_names(pretrainers[0], "glue")
    save_tf1_checkpoint(arrays, str(tmp_path / "glue.ckpt"))
    classifier = load_graphcore_checkpoint(GroupBertClassifier(small_config(), num_labels=3),
                                           str(tmp_path / "glue.ckpt"))
    weights = {v.path: v.numpy() for v in classifier.weights}
    np.testing.assert_array_equal(weights["pooler/kernel"], arrays["glue_loss/pooler/dense/kernel"])
    np.testing.assert_array_equal(weights["classifier/kernel"],
                                  arrays["glue_loss/output_weights"].astype(np.float32).T)
    x = encoder_inputs(inputs())
    hidden = np.asarray(classifier.encoder(x)["sequence_output"])[:, 0]
    pooled = np.tanh(hidden @ arrays["glue_loss/pooler/dense/kernel"]
                     + arrays["glue_loss/pooler/dense/bias"])
    expected = (pooled @ arrays["glue_loss/output_weights"].astype(np.float32).T
                + arrays["glue_loss/output_bias"].astype(np.float32))
    np.testing.assert_allclose(np.asarray(classifier(x)["logits"]), expected, atol=1e-4)
    # The same encoder lands in a bare encoder, whose pooler is the GLUE one.
    encoder = from_graphcore(GroupBertEncoder(small_config()), arrays)
    np.testing.assert_array_equal(encoder.pooler.kernel.numpy(),
                                  arrays["glue_loss/pooler/dense/kernel"])
    with pytest.raises(CheckpointError, match=r"glue_loss/output_weights: shape \(3, 64\)"):
        from_graphcore(GroupBertClassifier(small_config(), num_labels=2), arrays)


def test_squad_checkpoint_imports_span_head_and_keeps_the_pooler(tmp_path, pretrainers, caplog):
    arrays = _finetuned_names(pretrainers[0], "squad")
    save_tf1_checkpoint(arrays, str(tmp_path / "squad.ckpt"))
    labeler = GroupBertSpanLabeler(small_config())
    initial_pooler = labeler.encoder.pooler.kernel.numpy()
    with caplog.at_level("WARNING"):
        load_graphcore_checkpoint(labeler, str(tmp_path / "squad.ckpt"))
    assert "squad.ckpt has no pooler weights" in caplog.text
    np.testing.assert_array_equal(labeler.encoder.pooler.kernel.numpy(), initial_pooler)
    x = encoder_inputs(inputs())
    hidden = np.asarray(labeler.encoder(x)["sequence_output"])
    logits = hidden @ arrays["cls/squad/output_weights"].T + arrays["cls/squad/output_bias"]
    out = labeler(x)
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out["start_logits"])[real], logits[..., 0][real],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["end_logits"])[real], logits[..., 1][real],
                               atol=1e-4)
    # A classifier from a SQuAD checkpoint: the encoder loads, pooler and head are new.
    caplog.clear()
    with caplog.at_level("WARNING"):
        from_graphcore(GroupBertClassifier(small_config()), arrays, source="squad")
    assert "squad has no classifier or pooler weights" in caplog.text
