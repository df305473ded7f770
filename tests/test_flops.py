"""Tests of groupbert_tf.flops: closed forms against independent enumerations, the spec's
figures, and the real Keras models' `count_params()`."""

import math
import pathlib

import pytest

from groupbert_tf import flops
from groupbert_tf.config import PRESETS, GroupBertConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = ("tiny", "mini", "medium", "base", "large")


def preset(name, **overrides):
    return GroupBertConfig.from_preset(name, **overrides)


# Small configs that exercise every branch of the formulas (structure, conv on/off, groups,
# pre/post norm, I != 4N, other kernel / group sizes).
ABLATIONS = {
    "groupbert-pre": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256,
                          vocab_size=101, max_position_embeddings=40),
    "groupbert-post-noconv-dense": dict(hidden_size=64, num_layers=3, num_heads=1,
                                        intermediate_size=192, ffn_groups=1,
                                        use_conv_module=False, norm_placement="post",
                                        vocab_size=57, max_position_embeddings=33,
                                        type_vocab_size=3),
    "bert-conv-g2-pre": dict(layer_structure="bert", hidden_size=48, num_layers=2, num_heads=3,
                             intermediate_size=96, ffn_groups=2, use_conv_module=True,
                             conv_kernel_size=3, conv_group_size=8, norm_placement="pre",
                             vocab_size=77, max_position_embeddings=24),
    "bert-post": dict(layer_structure="bert", hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=128, ffn_groups=1, use_conv_module=False,
                      norm_placement="post", vocab_size=50, max_position_embeddings=16),
}


def ablation(name):
    return GroupBertConfig(**ABLATIONS[name])


ALL_CONFIGS = {**{n: preset(n) for n in PRESETS}, **{n: ablation(n) for n in ABLATIONS}}


# ---------------------------------------------------------------------------------------------
# Independent enumerations (weight shapes / matmul shapes, written out one by one)
# ---------------------------------------------------------------------------------------------

def _size(shape):
    return math.prod(shape)


def _layers(c, conv, ffn, attention):
    """Every layer's modules in order: [conv] FFN attention FFN (GroupBERT), [conv] attention
    FFN (BERT)."""
    modules = ffn + attention + ffn if c.layer_structure == "groupbert" else attention + ffn
    return ((conv if c.use_conv_module else []) + modules) * c.num_layers


def enumerate_weight_shapes(c, heads):
    n, i, g = c.hidden_size, c.intermediate_size, c.ffn_groups
    ln = [(n,), (n,)]
    shapes = [(c.vocab_size, n), (c.max_position_embeddings, n), (c.type_vocab_size, n)] + ln
    conv = ln + [(n, 2 * n), (2 * n,), (c.conv_kernel_size, c.conv_group_size, n)] + ln + \
        [(n, n), (n,)]
    ffn = ln + [(n, i), (i,), (g, i // g, n // g), (n,)] + ([(n, n), (n,)] if g > 1 else [])
    attention = ln + [(n, n), (n,)] * 4
    shapes += _layers(c, conv, ffn, attention)
    if c.norm_placement == "pre":
        shapes += ln
    shapes += [(n, n), (n,)]  # pooler
    if heads:
        shapes += [(n, n), (n,)] + ln + [(c.vocab_size,)]  # MLM transform, LN, output bias
        shapes += [(n, 2), (2,)]  # NSP
    return shapes


def enumerate_matmuls(c, s, m=None):
    """(rows, contraction, cols) of every matmul of one forward pass of one sequence."""
    n, i, g = c.hidden_size, c.intermediate_size, c.ffn_groups
    h, d = c.num_heads, c.head_size
    conv = [(s, n, 2 * n)]  # GLU values and gates in one Dense
    conv += [(s, c.conv_kernel_size * c.conv_group_size, c.conv_group_size)] * \
        (n // c.conv_group_size)  # one matmul per conv group over the K shifted views
    conv += [(s, n, n)]
    ffn = [(s, n, i)] + [(s, i // g, n // g)] * g + ([(s, n, n)] if g > 1 else [])
    attention = [(s, n, n)] * 3 + [(s, d, s)] * h + [(s, s, d)] * h + [(s, n, n)]
    mats = _layers(c, conv, ffn, attention)
    if m is not None:
        mats += [(1, n, n), (1, n, 2), (m, n, n), (m, n, c.vocab_size)]
    return mats


def matmul_flops(mats):
    return sum(2 * a * b * k for a, b, k in mats)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
@pytest.mark.parametrize("heads", [False, True])
def test_count_params_matches_weight_enumeration(name, heads):
    c = ALL_CONFIGS[name]
    expected = sum(_size(s) for s in enumerate_weight_shapes(c, heads))
    assert flops.count_params(c, include_pretraining_heads=heads) == expected
    assert sum(flops.param_breakdown(c, heads).values()) == expected


@pytest.mark.parametrize("size", SIZES)
def test_per_layer_and_per_module_formulas(size):
    g, b = preset(f"groupbert-{size}"), preset(f"bert-{size}")
    n = g.hidden_size
    assert flops.conv_module_params(g) == 3 * n * n + 119 * n
    assert flops.ffn_params(g) == 6 * n * n + 8 * n
    assert flops.ffn_params(b) == 8 * n * n + 7 * n
    assert flops.attention_params(b) == 4 * n * n + 6 * n
    assert flops.layer_params(g) == 19 * n * n + 141 * n
    assert flops.layer_params(b) == 12 * n * n + 13 * n
    assert flops.embedding_params(b) == (30522 + 512 + 2) * n + 2 * n


def test_spec_totals_with_pretraining_heads():
    base = flops.count_params(preset("bert-base"), include_pretraining_heads=True)
    gbase = flops.count_params(preset("groupbert-base"), include_pretraining_heads=True)
    large = flops.count_params(preset("bert-large"), include_pretraining_heads=True)
    assert base == pytest.approx(110e6, rel=0.01)
    assert gbase == pytest.approx(161e6, rel=0.01)
    assert large == pytest.approx(336e6, rel=0.01)
    assert gbase / large == pytest.approx(0.48, abs=0.01)
    # Exact, by hand: L layers of 19N^2 + 141N (GroupBERT, + 2N final LN) or 12N^2 + 13N
    # (BERT), + 31038N (embeddings) + N^2 + N (pooler) + N^2 + 5N + 30524 (heads); bert-base's
    # is Hugging Face BertForPreTraining's 110,106,428.
    assert (base, gbase, large) == (110_106_428, 160_832_828, 336_226_108)


def test_heads_add_mlm_and_nsp_only():
    for c in ALL_CONFIGS.values():
        n = c.hidden_size
        extra = flops.count_params(c, True) - flops.count_params(c)
        assert extra == (n * n + n) + 2 * n + c.vocab_size + (2 * n + 2)


def test_final_layer_norm_only_for_pre_norm():
    c = preset("groupbert-mini")
    assert flops.count_params(c) - flops.count_params(c.replace(norm_placement="post")) == \
        2 * c.hidden_size


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ABLATIONS) + ["groupbert-tiny", "bert-tiny"])
@pytest.mark.parametrize("s,m", [(1, None), (7, None), (16, 3), (16, 0)])
def test_forward_flops_match_matmul_enumeration(name, s, m):
    c = ALL_CONFIGS[name]
    expected = matmul_flops(enumerate_matmuls(c, s, m))
    assert flops.forward_flops(c, s, m) == expected
    assert sum(flops.forward_flops_breakdown(c, s, m).values()) == expected
    assert flops.training_flops(c, s, m) == 3 * expected


def test_tiny_custom_config_by_hand():
    # N=32, I=64, G=2, K=3, g=8 (4 conv groups), 2 heads of 16, 1 GroupBERT layer, S=4, V=10.
    c = GroupBertConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        ffn_groups=2, conv_kernel_size=3, conv_group_size=8, vocab_size=10,
                        max_position_embeddings=8)
    conv = 2 * 4 * 32 * 64 + 2 * 3 * 8 * 32 * 4 + 2 * 4 * 32 * 32     # 16384+6144+8192
    ffn = 2 * 4 * 32 * 64 + 2 * 4 * 64 * 32 // 2 + 2 * 4 * 32 * 32     # 16384+8192+8192
    attention = 4 * (2 * 4 * 32 * 32) + 2 * (2 * 4 * 4 * 32)           # 32768+2048
    assert flops.forward_flops(c, 4) == conv + 2 * ffn + attention == 131072
    heads = 2 * 32 * 32 + 2 * 32 * 2 + 2 * 2 * 32 * 32 + 2 * 2 * 32 * 10
    assert flops.forward_flops(c, 4, 2) == 131072 + heads
    # Params by hand: emb 20*32+64; conv 3*1024+(24+7)*32; ffn LN 64 + up 2048+64 +
    # down 1024+32 + mixer 1056; attention 4*1056+64; final LN 64; pooler 1056.
    assert flops.count_params(c) == 704 + (3072 + 992) + 2 * 4288 + 4288 + 64 + 1056 == 18752


def test_groupbert_base_vs_bert_large_flops_ratio():
    g, b = preset("groupbert-base"), preset("bert-large")
    assert flops.forward_flops(g, 128) / flops.forward_flops(b, 128) == pytest.approx(0.45, abs=0.01)
    m = flops.default_num_masked_predictions(128)
    assert m == 20
    assert flops.training_flops(g, 128, m) / flops.training_flops(b, 128, m) == \
        pytest.approx(0.45, abs=0.01)


def test_matches_two_flops_per_weight_rule_plus_attention():
    # Encoder forward = 2 x (matmul weights used per token) x S + 4 S^2 N per attention.
    c, s = preset("bert-base"), 128
    n = c.hidden_size
    per_layer_weights = 12 * n * n
    expected = c.num_layers * (2 * per_layer_weights * s + 4 * s * s * n)
    assert flops.forward_flops(c, s) == expected


@pytest.mark.parametrize("name", ["groupbert-mini", "bert-mini", "groupbert-base"])
def test_monotonic_in_seq_length(name):
    c = preset(name)
    values = [flops.forward_flops(c, s) for s in (1, 2, 64, 128, 256, 384, 512)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # Superlinear (attention is quadratic) but at most quadratic.
    assert flops.forward_flops(c, 512) > 4 * flops.forward_flops(c, 128)
    assert flops.forward_flops(c, 512) < 16 * flops.forward_flops(c, 128)
    train = [flops.training_flops(c, s, 20) for s in (32, 128, 512)]
    assert train[0] < train[1] < train[2]


def test_monotonic_in_masked_predictions_and_heads_keys():
    c = preset("groupbert-mini")
    assert flops.forward_flops(c, 128, 0) < flops.forward_flops(c, 128, 10) < \
        flops.forward_flops(c, 128, 20)
    assert flops.forward_flops(c, 128, 0) - flops.forward_flops(c, 128) == \
        2 * c.hidden_size ** 2 + 4 * c.hidden_size
    assert set(flops.forward_flops_breakdown(c, 128)) == {
        "embeddings", "conv_module", "ffn", "attention_projections", "attention_scores"}
    assert {"pooler", "nsp_head", "mlm_transform", "mlm_decoder"} <= \
        set(flops.forward_flops_breakdown(c, 128, 20))
    bert = flops.forward_flops_breakdown(preset("bert-mini"), 128)
    assert bert["conv_module"] == 0 and bert["embeddings"] == 0


@pytest.mark.parametrize("args", [(0, None), (-1, None), (513, None), (128.0, None), (True, None),
                                  (128, -1), (128, 129), (128, 2.0)])
def test_invalid_lengths_raise(args):
    with pytest.raises(ValueError):
        flops.forward_flops(preset("groupbert-base"), *args)


def test_docs_table_is_generated_output():
    doc = (REPO / "docs" / "models.md").read_text()
    assert flops.markdown_tables() in doc, \
        "docs/models.md is stale: paste the output of `python -m groupbert_tf.flops`"


# ---------------------------------------------------------------------------------------------
# Closed forms against the Keras models
# ---------------------------------------------------------------------------------------------

def _dummy_inputs(config, batch=1, seq=8, predictions=2):
    import numpy as np

    inputs = {
        "token_ids": np.ones((batch, seq), "int32"),
        "segment_ids": np.zeros((batch, seq), "int32"),
        "padding_mask": np.ones((batch, seq), "int32"),
    }
    masked = dict(inputs, masked_lm_positions=np.arange(predictions, dtype="int32")[None]
                  .repeat(batch, 0))
    return inputs, masked


def _built_param_count(model, config, with_positions):
    """`model.count_params()`, calling the model once on a tiny batch if it is not built yet
    (a functional backbone is built on construction; a subclassed one may not be)."""
    if not model.built:
        plain, masked = _dummy_inputs(config)
        model(masked if with_positions else plain)
    return model.count_params()


def _slow_for(name):
    big = name.endswith(("-medium", "-base", "-large"))
    return pytest.param(name, marks=pytest.mark.slow) if big else name


@pytest.fixture(scope="module")
def encoder_param_count():
    """preset/ablation name -> GroupBertEncoder(config).count_params(), each model built once
    and released right away (a large encoder holds ~2 GB)."""
    from groupbert_tf import GroupBertEncoder
    import keras

    cache = {}

    def get(name):
        if name not in cache:
            config = ALL_CONFIGS[name]
            model = GroupBertEncoder(config)
            cache[name] = _built_param_count(model, config, with_positions=False)
            del model
            keras.backend.clear_session()
        return cache[name]

    return get


@pytest.mark.parametrize("name", [_slow_for(n) for n in sorted(ALL_CONFIGS)])
def test_encoder_count_params_matches_model(name, encoder_param_count):
    assert encoder_param_count(name) == flops.count_params(ALL_CONFIGS[name])


# The heads do not depend on the layer stack (the encoder test covers every preset): building
# the pre-trainer for the medium and large presets too would only add ~2 minutes.
@pytest.mark.parametrize("name", [_slow_for(n) for n in sorted(ALL_CONFIGS)
                                  if not n.endswith(("-medium", "-large"))])
def test_pretrainer_count_params_matches_model(name):
    from groupbert_tf import GroupBertPretrainer
    import keras

    config = ALL_CONFIGS[name]
    model = GroupBertPretrainer(config)
    try:
        assert _built_param_count(model, config, with_positions=True) == \
            flops.count_params(config, include_pretraining_heads=True)
    finally:
        del model
        keras.backend.clear_session()
