"""Closed-form parameter and FLOP accounting for GroupBERT, BERT and every ablation in between.

Everything here is arithmetic on a `GroupBertConfig`: no model is built, so it is instant for any
size. The formulas follow the model code module by module and are tested against
`GroupBertEncoder(config).count_params()` / `GroupBertPretrainer(config).count_params()`.

Notation: N hidden size, I intermediate size, G `ffn_groups`, K `conv_kernel_size`,
g `conv_group_size`, V vocabulary, P position embeddings, T segment types, L layers,
S sequence length, M masked positions fed to the MLM head.

Parameters (every Dense has a bias; every LayerNorm has gamma and beta, 2N):
  embeddings      V*N + P*N + T*N + 2N                (word, position, segment, LayerNorm)
  conv module     3N^2 + (K*g + 7)N                  (GLU N->2N, grouped conv, LN, N->N, pre-LN)
  FFN             N*I + I + I*N/G + N + 2N [+ N^2 + N when G > 1 (mixer)]
  attention       4N^2 + 4N + 2N                     (q, k, v, output, LN)
  final LN        2N, only when norm_placement == "pre"
  pooler          N^2 + N
  heads           MLM transform N^2 + N, its LN 2N, output bias V (decoder tied to the word
                  embeddings); NSP classifier 2N + 2
With I = 4N, G = 4, K = 7, g = 16 a GroupBERT layer is 19N^2 + 141N and a BERT layer
12N^2 + 13N. (The spec quotes 19N^2 + 138N and 12N^2 + 10N; the 3N difference is counting every
LayerNorm's gamma and beta and every bias, as the Keras models do.)

FLOPs: 2 per multiply-add, for every matmul / einsum, including the attention scores QK^T, the
probabilities times V, the grouped convolution (2*K*g*N*S, zero padding included) and the
block-diagonal FFN down-projection (2*S*I*N/G). Elementwise work (LayerNorm, GELU, SiLU, GLU
product, softmax, masking, bias adds, residual adds, dropout) and embedding lookups are not
counted: they are O(S*N) against the O(S*N^2) matmuls (about 1-2% of the total at these sizes).
"""

import math
from typing import Dict, Iterable, Optional

from groupbert_tf.config import PRESETS, GroupBertConfig

__all__ = [
    "embedding_params",
    "conv_module_params",
    "ffn_params",
    "attention_params",
    "layer_params",
    "param_breakdown",
    "count_params",
    "forward_flops_breakdown",
    "forward_flops",
    "training_flops",
    "default_num_masked_predictions",
    "TRAINING_FLOPS_MULTIPLIER",
    "markdown_tables",
]

# Backward pass of a matmul = two matmuls of the same size (gradient w.r.t. each operand), so a
# training step costs forward + 2 x forward. Optimizer updates and embedding-gradient scatters
# (O(parameters), independent of the batch) are not counted.
TRAINING_FLOPS_MULTIPLIER = 3

LAYER_NORM_PARAMS_PER_CHANNEL = 2  # gamma and beta


def _ln(n: int) -> int:
    return LAYER_NORM_PARAMS_PER_CHANNEL * n


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _layer_modules(config: GroupBertConfig):
    """The residual modules of one layer, in order (each has exactly one LayerNorm)."""
    conv = ["conv_module"] if config.use_conv_module else []
    if config.layer_structure == "groupbert":
        return conv + ["ffn", "attention", "ffn"]
    return conv + ["attention", "ffn"]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

def embedding_params(config: GroupBertConfig) -> int:
    """Word + position + segment tables and the embedding LayerNorm."""
    n = config.hidden_size
    return (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * n + _ln(n)


def conv_module_params(config: GroupBertConfig) -> int:
    """Conv module including its LayerNorm: 3N^2 + (K*g + 7)N (3N^2 + 119N for K=7, g=16)."""
    n = config.hidden_size
    glu = _dense(n, 2 * n)
    conv = config.conv_kernel_size * config.conv_group_size * n  # no bias
    return _ln(n) + glu + conv + _ln(n) + _dense(n, n)


def ffn_params(config: GroupBertConfig) -> int:
    """(Grouped) FFN including its LayerNorm: 6N^2 + 8N for G=4, 8N^2 + 7N for G=1 (I = 4N)."""
    n, i, g = config.hidden_size, config.intermediate_size, config.ffn_groups
    up = _dense(n, i)
    down = i * n // g + n  # G blocks of (I/G x N/G) plus one bias of N
    mixer = _dense(n, n) if g > 1 else 0
    return _ln(n) + up + down + mixer


def attention_params(config: GroupBertConfig) -> int:
    """Self-attention including its LayerNorm: 4N^2 + 6N."""
    n = config.hidden_size
    return _ln(n) + 4 * _dense(n, n)


_MODULE_PARAMS = {"conv_module": conv_module_params, "ffn": ffn_params,
                  "attention": attention_params}


def layer_params(config: GroupBertConfig) -> int:
    """One encoder layer: 19N^2 + 141N (GroupBERT presets), 12N^2 + 13N (BERT presets)."""
    return sum(_MODULE_PARAMS[m](config) for m in _layer_modules(config))


def param_breakdown(config: GroupBertConfig, include_pretraining_heads: bool = False
                    ) -> Dict[str, int]:
    """Parameters by component (summed over layers). Values add up to `count_params`."""
    n, layers = config.hidden_size, config.num_layers
    modules = _layer_modules(config)
    out = {
        "embeddings": embedding_params(config),
        "conv_module": layers * modules.count("conv_module") * conv_module_params(config),
        "ffn": layers * modules.count("ffn") * ffn_params(config),
        "attention": layers * modules.count("attention") * attention_params(config),
        "final_layer_norm": _ln(n) if config.norm_placement == "pre" else 0,
        "pooler": _dense(n, n),
    }
    if include_pretraining_heads:
        out["mlm_head"] = _dense(n, n) + _ln(n) + config.vocab_size  # tied decoder: bias only
        out["nsp_head"] = _dense(n, 2)
    return out


def count_params(config: GroupBertConfig, include_pretraining_heads: bool = False) -> int:
    """Total parameters of `GroupBertEncoder(config)` (pooler included), or with
    `include_pretraining_heads=True` of `GroupBertPretrainer(config)` (MLM + NSP heads, decoder tied
    to the word embeddings)."""
    return sum(param_breakdown(config, include_pretraining_heads).values())


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------

def default_num_masked_predictions(seq_length: int, mask_rate: float = 0.15) -> int:
    """`max_predictions_per_seq` used for the tables: ceil(15% of S) (20 at 128, 77 at 512)."""
    return math.ceil(mask_rate * seq_length)


def _check_lengths(config: GroupBertConfig, seq_length, num_masked_predictions):
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"seq_length must be a positive int, got {seq_length!r}")
    if seq_length > config.max_position_embeddings:
        raise ValueError(f"seq_length ({seq_length}) exceeds max_position_embeddings "
                         f"({config.max_position_embeddings})")
    if num_masked_predictions is not None:
        if (isinstance(num_masked_predictions, bool) or not isinstance(num_masked_predictions, int)
                or not 0 <= num_masked_predictions <= seq_length):
            raise ValueError(f"num_masked_predictions must be an int in [0, seq_length], "
                             f"got {num_masked_predictions!r}")


def forward_flops_breakdown(config: GroupBertConfig, seq_length: int,
                            num_masked_predictions: Optional[int] = None) -> Dict[str, int]:
    """Forward FLOPs of one sequence by component (summed over layers; add up to `forward_flops`).

    Keys: `embeddings` (0: lookups), `conv_module` (GLU + grouped conv + output Dense),
    `ffn` (up, grouped down, mixer), `attention_projections` (q, k, v, output),
    `attention_scores` (QK^T and probabilities x V), and, only when `num_masked_predictions` is
    given, `pooler`, `nsp_head`, `mlm_transform`, `mlm_decoder`.
    """
    _check_lengths(config, seq_length, num_masked_predictions)
    s, n, i, g = seq_length, config.hidden_size, config.intermediate_size, config.ffn_groups
    modules = _layer_modules(config)
    layers = config.num_layers
    conv = 2 * s * n * (2 * n) + 2 * s * config.conv_kernel_size * config.conv_group_size * n \
        + 2 * s * n * n
    ffn = 2 * s * n * i + 2 * s * (i // g) * (n // g) * g + (2 * s * n * n if g > 1 else 0)
    out = {
        "embeddings": 0,
        "conv_module": layers * modules.count("conv_module") * conv,
        "ffn": layers * modules.count("ffn") * ffn,
        "attention_projections": layers * modules.count("attention") * 4 * 2 * s * n * n,
        # Over all heads: QK^T is 2*S*S*N, probs x V another 2*S*S*N.
        "attention_scores": layers * modules.count("attention") * 2 * 2 * s * s * n,
    }
    if num_masked_predictions is not None:
        m = num_masked_predictions
        out["pooler"] = 2 * n * n  # [CLS] only
        out["nsp_head"] = 2 * n * 2
        out["mlm_transform"] = 2 * m * n * n
        out["mlm_decoder"] = 2 * m * n * config.vocab_size
    return out


def forward_flops(config: GroupBertConfig, seq_length: int,
                  num_masked_predictions: Optional[int] = None) -> int:
    """Forward FLOPs of one sequence of length `seq_length` (2 FLOPs per multiply-add).

    Counts every matmul/einsum: Dense layers, attention QK^T and probabilities x V, grouped conv
    and grouped FFN. Excludes elementwise ops (LayerNorm, GELU, SiLU, softmax, masks, bias and
    residual adds) and embedding lookups (0 FLOPs).

    With `num_masked_predictions=None`: the encoder's sequence output only (the cost that scales
    with S). With an int M: also the pooler and NSP classifier on [CLS] and the MLM head
    (transform Dense + tied V x N decoder) on M gathered positions, i.e. a pre-training forward.
    """
    return sum(forward_flops_breakdown(config, seq_length, num_masked_predictions).values())


def training_flops(config: GroupBertConfig, seq_length: int,
                   num_masked_predictions: Optional[int] = None) -> int:
    """FLOPs of one training step per sequence: 3 x `forward_flops` (the backward pass computes
    two matmuls, activation and weight gradients, per forward matmul). Optimizer work is not
    counted. Pass `num_masked_predictions` for pre-training (MLM + NSP)."""
    return TRAINING_FLOPS_MULTIPLIER * forward_flops(config, seq_length, num_masked_predictions)


# ----------------------------------------------------------------------------------------------
# Tables for docs/models.md: `python -m groupbert_tf.flops`
# ----------------------------------------------------------------------------------------------

SIZES = ("tiny", "mini", "medium", "base", "large")


def _m(value: int) -> str:
    return f"{value / 1e6:.1f} M"


def _g(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def markdown_tables(seq_lengths: Iterable[int] = (128, 512)) -> str:
    """The preset tables of docs/models.md, as markdown."""
    seq_lengths = tuple(seq_lengths)
    cfg = {name: GroupBertConfig.from_preset(name) for name in PRESETS}
    lines = []
    head = ["preset", "layers", "hidden", "heads", "params (encoder)", "params (+ heads)"]
    head += [f"fwd FLOPs/seq S={s}" for s in seq_lengths]
    head += [f"train FLOPs/seq S={s}, M={default_num_masked_predictions(s)}" for s in seq_lengths]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|")
    for family in ("groupbert", "bert"):
        for size in SIZES:
            name = f"{family}-{size}"
            c = cfg[name]
            row = [f"`{name}`", str(c.num_layers), str(c.hidden_size), str(c.num_heads),
                   _m(count_params(c)), _m(count_params(c, True))]
            row += [_g(forward_flops(c, s)) for s in seq_lengths]
            row += [_g(training_flops(c, s, default_num_masked_predictions(s)))
                    for s in seq_lengths]
            lines.append("| " + " | ".join(row) + " |")

    lines.append("")
    head = ["comparison", "params (encoder)", "params (+ heads)"]
    head += [f"fwd FLOPs S={s}" for s in seq_lengths]
    head += [f"train FLOPs S={s}" for s in seq_lengths]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|" + "|".join(["---:"] * (len(head) - 1)) + "|")
    pairs = [(f"groupbert-{size}", f"bert-{size}") for size in SIZES]
    pairs.append(("groupbert-base", "bert-large"))
    for a, b in pairs:
        ca, cb = cfg[a], cfg[b]
        row = [f"`{a}` / `{b}`",
               f"{count_params(ca) / count_params(cb):.3f}",
               f"{count_params(ca, True) / count_params(cb, True):.3f}"]
        row += [f"{forward_flops(ca, s) / forward_flops(cb, s):.3f}" for s in seq_lengths]
        row += [f"{training_flops(ca, s, default_num_masked_predictions(s)) / training_flops(cb, s, default_num_masked_predictions(s)):.3f}"  # noqa: E501
                for s in seq_lengths]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    print(markdown_tables())


if __name__ == "__main__":
    main()
