"""GroupBERT vs BERT training-step speed on this machine, against the FLOP ratio.

Times a jit-compiled (XLA) pre-training step, forward + backward (loss = MLM + NSP from
`GroupBertPretrainer`, gradients w.r.t. all trainable variables, no optimizer update), for
`groupbert-<size>` and `bert-<size>`, A/B interleaved with a 2048^3 float32 matmul that gives the
machine's achievable GFLOP/s in the same rounds. Reports medians, the GroupBERT/BERT time ratio
next to the FLOP ratio from `groupbert_tf.flops.training_flops`, and each model's GFLOP/s.

Dropout is 0 for both models by default (GroupBERT pre-trains without it; the BERT preset's 0.1
is overridden); `--bert_dropout 0.1` times BERT with its preset dropout.

`--modules` also times each residual module alone (fwd + bwd, same shapes), to show where the
time goes.

    python -m benchmarks.encoder_speed --preset_size mini --batch_size 32 --seq_length 128 \
        --repeats 10 --modules
"""

import argparse
import datetime

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (interleaved_timings, machine_description, make_matmul,
                               markdown_table, summarize)
from groupbert_tf import flops as flop_count
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.layers.convolution_module import ConvolutionModule
from groupbert_tf.layers.feed_forward import GroupedFeedForward
from groupbert_tf.layers.self_attention import SelfAttention
from groupbert_tf.models.pretrainer import GroupBertPretrainer


def make_batch(config, batch_size, seq_length, max_predictions, seed=0):
    rng = np.random.default_rng(seed)
    positions = np.stack([np.sort(rng.choice(np.arange(1, seq_length), max_predictions,
                                             replace=False)) for _ in range(batch_size)])
    inputs = {
        "token_ids": rng.integers(0, config.vocab_size, (batch_size, seq_length)),
        "segment_ids": (np.arange(seq_length)[None] >= seq_length // 2).repeat(batch_size, 0),
        "padding_mask": np.ones((batch_size, seq_length)),
        "masked_lm_positions": positions,
    }
    labels = {
        "masked_lm_ids": rng.integers(0, config.vocab_size, (batch_size, max_predictions)),
        "masked_lm_weights": np.ones((batch_size, max_predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch_size,)),
    }
    inputs = {k: tf.constant(v, tf.int32) for k, v in inputs.items()}
    labels = {k: tf.constant(v, tf.float32 if k == "masked_lm_weights" else tf.int32)
              for k, v in labels.items()}
    return inputs, labels


def make_train_step(config, inputs, labels):
    """jit-compiled loss + gradients of a freshly built pretrainer (no optimizer update)."""
    keras.utils.set_random_seed(0)
    model = GroupBertPretrainer(config)
    model(inputs)  # build

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            y_pred = model(inputs, training=True)
            loss = model.compute_loss(y=labels, y_pred=y_pred)
        return loss, tape.gradient(loss, model.trainable_variables)

    return step, model.count_params()


def make_module_step(layer, batch_size, seq_length, hidden_size, with_mask=False, seed=0):
    """jit-compiled fwd + bwd (w.r.t. the input and the layer's weights) of one layer."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((batch_size, seq_length, hidden_size)), tf.float32)
    cotangent = tf.constant(rng.standard_normal((batch_size, seq_length, hidden_size)),
                            tf.float32)
    mask = tf.ones((batch_size, seq_length), tf.int32)
    layer.build(x.shape)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, mask) if with_mask else layer(x)
            loss = tf.reduce_sum(y * cotangent)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    return step


def module_candidates(config_g, config_b, batch_size, seq_length):
    """Per-module steps and their fwd+bwd FLOPs (3 x forward) for one GroupBERT/BERT layer."""
    n, s = config_g.hidden_size, seq_length
    one_g = flop_count.forward_flops_breakdown(config_g.replace(num_layers=1), s)
    one_b = flop_count.forward_flops_breakdown(config_b.replace(num_layers=1), s)
    attention = one_g["attention_projections"] + one_g["attention_scores"]
    specs = {
        "conv module": (ConvolutionModule(n, config_g.conv_kernel_size, config_g.conv_group_size),
                        True, one_g["conv_module"]),
        "grouped FFN (G=4)": (GroupedFeedForward(n, config_g.intermediate_size,
                                                 config_g.ffn_groups), False, one_g["ffn"] // 2),
        "dense FFN (BERT)": (GroupedFeedForward(n, config_b.intermediate_size, 1), False,
                             one_b["ffn"]),
        "attention": (SelfAttention(n, config_g.num_heads), True, attention),
        "LayerNorm": (keras.layers.LayerNormalization(epsilon=1e-3), False, 0),
    }
    steps, module_flops = {}, {}
    for name, (layer, with_mask, fwd) in specs.items():
        steps[name] = make_module_step(layer, batch_size, s, n, with_mask)
        module_flops[name] = 3 * fwd * batch_size
    return steps, module_flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset_size", default="mini",
                        choices=["tiny", "mini", "medium", "base", "large"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bert_dropout", type=float, default=0.0,
                        help="hidden and attention dropout of BERT (preset: 0.1)")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--modules", action="store_true",
                        help="also time each residual module alone (fwd + bwd)")
    args = parser.parse_args(argv)

    b, s, m = args.batch_size, args.seq_length, args.max_predictions
    configs = {
        "groupbert": GroupBertConfig.from_preset(f"groupbert-{args.preset_size}",
                                                 hidden_dropout=0.0, attention_dropout=0.0),
        "bert": GroupBertConfig.from_preset(f"bert-{args.preset_size}",
                                            hidden_dropout=args.bert_dropout,
                                            attention_dropout=args.bert_dropout),
    }
    inputs, labels = make_batch(configs["groupbert"], b, s, m)
    candidates, step_flops, params = {}, {}, {}
    for name, config in configs.items():
        candidates[name], params[name] = make_train_step(config, inputs, labels)
        step_flops[name] = b * flop_count.training_flops(config, s, m)
    matmul, matmul_flops = make_matmul(args.matmul_size)
    candidates["matmul"] = matmul
    step_flops["matmul"] = matmul_flops

    times = interleaved_timings(candidates, repeats=args.repeats, warmup=args.warmup)
    stats = summarize(times)
    peak = matmul_flops / stats["matmul"]["median"]

    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# train step (loss + grads, XLA): {args.preset_size}, B={b} S={s} M={m}, "
          f"BERT dropout {args.bert_dropout}, GroupBERT dropout 0")
    print(f"# {machine_description()}; {now:%Y-%m-%d %H:%M} UTC; "
          f"{args.repeats} interleaved rounds after {args.warmup} warm-up calls, medians")
    rows = []
    for name in candidates:
        st = stats[name]
        gflops = step_flops[name] / st["median"] / 1e9
        label = (f"`{name}-{args.preset_size}`" if name != "matmul"
                 else f"matmul {args.matmul_size}^3 fp32")
        rows.append([label, f"{params[name] / 1e6:.2f} M" if name in params else "-",
                     f"{step_flops[name] / 1e9:.1f}", f"{st['median'] * 1e3:.1f}",
                     f"{st['q1'] * 1e3:.1f}-{st['q3'] * 1e3:.1f}", f"{gflops:.1f}",
                     f"{100 * gflops * 1e9 / peak:.0f}%"])
    print(markdown_table(["model", "params", "GFLOP/step", "median ms", "IQR ms", "GFLOP/s",
                          "of matmul"], rows))
    time_ratio = stats["groupbert"]["median"] / stats["bert"]["median"]
    flop_ratio = step_flops["groupbert"] / step_flops["bert"]
    per_round = [g / bb for g, bb in zip(times["groupbert"], times["bert"])]
    print(f"\nGroupBERT/BERT time ratio {time_ratio:.3f} (median of per-round ratios "
          f"{np.median(per_round):.3f}), FLOP ratio {flop_ratio:.3f}: "
          f"{'within' if time_ratio <= flop_ratio else 'above'} the FLOP ratio")

    if args.modules:
        steps, module_flops = module_candidates(configs["groupbert"], configs["bert"], b, s)
        steps["matmul"] = matmul
        module_flops["matmul"] = matmul_flops
        module_times = summarize(interleaved_timings(steps, repeats=args.repeats,
                                                     warmup=args.warmup))
        peak = matmul_flops / module_times["matmul"]["median"]
        print(f"\n# one module, fwd + bwd (w.r.t. input and weights), B={b} S={s} "
              f"N={configs['groupbert'].hidden_size}, XLA")
        rows = []
        for name in steps:
            if name == "matmul":
                continue
            st = module_times[name]
            gflops = module_flops[name] / st["median"] / 1e9
            rows.append([name, f"{module_flops[name] / 1e9:.2f}", f"{st['median'] * 1e3:.2f}",
                         f"{st['q1'] * 1e3:.2f}-{st['q3'] * 1e3:.2f}",
                         f"{gflops:.1f}" if module_flops[name] else "-",
                         f"{100 * gflops * 1e9 / peak:.0f}%" if module_flops[name] else "-"])
        print(markdown_table(["module", "GFLOP", "median ms", "IQR ms", "GFLOP/s", "of matmul"],
                             rows))
        t = {name: module_times[name]["median"] for name in module_times}
        group_layer = (t["conv module"] + 2 * t["grouped FFN (G=4)"] + t["attention"]
                       + 4 * t["LayerNorm"])
        bert_layer = t["attention"] + t["dense FFN (BERT)"] + 2 * t["LayerNorm"]
        print(f"\nsum of modules per layer (pre-norm LNs included): GroupBERT "
              f"{group_layer * 1e3:.1f} ms (conv {t['conv module'] * 1e3:.1f}, 2 x GFFN "
              f"{2 * t['grouped FFN (G=4)'] * 1e3:.1f}, attention {t['attention'] * 1e3:.1f}, "
              f"4 x LN {4 * t['LayerNorm'] * 1e3:.1f}); BERT {bert_layer * 1e3:.1f} ms; "
              f"ratio {group_layer / bert_layer:.3f}; matmul {peak / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
