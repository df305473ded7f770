"""Training throughput of TF Model Garden's `BertEncoderV2` (runs in its own venv).

tf-models-official 2.20.0 pins TensorFlow 2.20 and builds its layers with tf_keras (Keras 2),
so it cannot share the main .venv (TF 2.21 / Keras 3.15.1): this script runs in
`.venv-model-garden` (benchmarks/requirements-model-garden.txt) and its numbers are compared
with benchmarks/throughput.py's through each process's own matmul peak ("of matmul"), not A/B
in one process.

Same step as benchmarks/throughput.py: a pre-training batch (B x S, M masked positions), encoder
+ tied `MaskedLM` head (tanh GELU transform) + 2-way NSP Dense on the pooled output, loss = MLM
(weighted mean) + NSP (mean), gradients w.r.t. all trainable variables, in one
`tf.function(jit_compile=True)`; A/B interleaved with a 2048^3 fp32 matmul
(`benchmarks.common`), medians. FLOPs: `groupbert_tf.flops.training_flops` of `bert-<size>`.

    .venv-model-garden/bin/python -m benchmarks.model_garden_throughput --sizes mini \
        --dropouts 0 0.1 --repeats 5
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import tensorflow as tf
import tf_keras
from official.nlp.modeling import layers as nlp_layers
from official.nlp.modeling.networks import BertEncoderV2

from benchmarks import common
from benchmarks.throughput import cpu_model, make_batch, table
from groupbert_tf import flops as flop_count
from groupbert_tf.config import GroupBertConfig


class ModelGardenPretrainer(tf_keras.Model):
    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        init = tf_keras.initializers.TruncatedNormal(stddev=config.initializer_range)
        self.encoder = BertEncoderV2(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            num_layers=config.num_layers, num_attention_heads=config.num_heads,
            max_sequence_length=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size, inner_dim=config.intermediate_size,
            inner_activation=lambda x: tf.nn.gelu(x, approximate=True),
            output_dropout=config.hidden_dropout, attention_dropout=config.attention_dropout,
            initializer=init)
        dummy = tf.zeros((1, 4), tf.int32)  # builds the embedding table the MLM head ties to
        self.encoder({"input_word_ids": dummy, "input_mask": dummy, "input_type_ids": dummy})
        self.mlm = nlp_layers.MaskedLM(embedding_table=self.encoder.get_embedding_table(),
                                       activation=lambda x: tf.nn.gelu(x, approximate=True),
                                       initializer=init, output="logits")
        self.nsp = tf_keras.layers.Dense(2, kernel_initializer=init)

    def call(self, inputs, training=None):
        out = self.encoder({"input_word_ids": inputs["token_ids"],
                            "input_mask": inputs["padding_mask"],
                            "input_type_ids": inputs["segment_ids"]}, training=training)
        return {"mlm_logits": self.mlm(out["sequence_output"], inputs["masked_lm_positions"]),
                "nsp_logits": self.nsp(out["pooled_output"])}


def loss_fn(labels, outputs):
    weights = labels["masked_lm_weights"]
    mlm = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels["masked_lm_ids"], tf.cast(outputs["mlm_logits"], tf.float32))
    nsp = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels["next_sentence_labels"], tf.cast(outputs["nsp_logits"], tf.float32))
    return tf.reduce_sum(mlm * weights) / tf.maximum(tf.reduce_sum(weights), 1.0) + \
        tf.reduce_mean(nsp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["mini"])
    parser.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--matmul_size", type=int, default=2048)
    args = parser.parse_args(argv)
    b, s, m = args.batch_size, args.seq_length, args.max_predictions
    load = os.getloadavg()
    print(f"# {cpu_model()}, {os.cpu_count()} logical CPUs; TF {tf.__version__}, tf_keras "
          f"{tf_keras.__version__} (.venv-model-garden); "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"# {' '.join(sys.argv)}")
    for size in args.sizes:
        candidates, flops, compile_s = {}, {}, {}
        for rate in args.dropouts:
            config = GroupBertConfig.from_preset(f"bert-{size}", hidden_dropout=rate,
                                                 attention_dropout=rate)
            np_inputs, np_labels = make_batch(config.vocab_size, b, s, m)
            inputs = {k: tf.constant(v) for k, v in np_inputs.items()}
            labels = {k: tf.constant(v) for k, v in np_labels.items()}
            tf_keras.utils.set_random_seed(0)
            model = ModelGardenPretrainer(config)
            model(inputs)

            def make_step(model=model, inputs=inputs, labels=labels):
                @tf.function(jit_compile=True)
                def step():
                    with tf.GradientTape() as tape:
                        loss = loss_fn(labels, model(inputs, training=True))
                    return loss, tape.gradient(loss, model.trainable_variables)
                return step

            key = f"Model Garden `BertEncoderV2` ({size}), dropout {rate:g}"
            candidates[key] = make_step()
            start = time.perf_counter()
            common.block(candidates[key]())
            compile_s[key] = time.perf_counter() - start
            flops[key] = b * flop_count.training_flops(config, s, m)
        matmul, flops["matmul"] = common.make_matmul(args.matmul_size)
        candidates["matmul"] = matmul
        times = common.interleaved_timings(candidates, repeats=args.repeats, warmup=args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        peak = flops["matmul"] / med["matmul"]
        rows = []
        for key in candidates:
            t = sorted(times[key])
            q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
            gflops = flops[key] / med[key] / 1e9
            rows.append([key if key != "matmul" else f"matmul {args.matmul_size}^3 fp32",
                         f"{flops[key] / 1e9:.1f}", f"{med[key] * 1e3:.1f}",
                         f"{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}",
                         f"{b / med[key]:.1f}" if key != "matmul" else "-",
                         f"{gflops:.1f}", f"{100 * gflops * 1e9 / peak:.0f}%",
                         f"{compile_s[key]:.0f}" if key in compile_s else "-"])
        print(f"\n### {size}: train step (loss + grads), B={b} S={s} M={m}, TF {tf.__version__}"
              f" + tf_keras, XLA, in .venv-model-garden")
        print(table(["model", "GFLOP/step", "median ms", "IQR ms", "seq/s", "GFLOP/s",
                     "of matmul", "1st call s"], rows))
        print(f"- matmul peak {peak / 1e9:.1f} GFLOP/s")
    load = os.getloadavg()
    print(f"\n# load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
