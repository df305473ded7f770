"""Training throughput (seq/s) and achieved GFLOP/s: GroupBERT, BERT and keras-hub's BertBackbone.

For each preset size, times one XLA-compiled pre-training step (MLM + NSP loss, gradients w.r.t.
all trainable variables; `--optimizer adamw` also applies an AdamW update inside the same compiled
function) of

  - `groupbert-<size>` (dropout 0, as GroupBERT pre-trains),
  - `bert-<size>` at each `--dropouts` rate (hidden and attention dropout),
  - keras-hub's `BertBackbone` of the same size with a tied `MaskedLMHead` (tanh GELU, as ours)
    and a 2-way NSP Dense on the pooled output, at the same dropout rates,

and a large float32 matmul (the machine's achievable peak), all A/B interleaved in the same
process (`benchmarks.common.interleaved_timings` on TensorFlow): medians, and ratios of medians.
Every model gets the same inputs, the same loss function and the same step function. FLOPs are
`groupbert_tf.flops.training_flops` (`forward_flops` with `--mode forward`); keras-hub's BERT has
exactly our BERT's matmuls, so it is credited with the same FLOPs.

Backends: `--backend tensorflow` (default; `tf.function(jit_compile=True)` + GradientTape) or
`--backend jax` (`jax.jit` of `jax.value_and_grad` over `model.stateless_call`). The model code is
unchanged: the backend is picked through KERAS_BACKEND before Keras is imported. The JAX backend
needs no TensorFlow (see `.venv-jax` in docs/throughput.md) and runs on whatever device JAX
finds (a GPU when jax[cuda] is installed).

    python -m benchmarks.throughput --sizes tiny mini --batch_size 32 --repeats 10
    python -m benchmarks.throughput --sizes medium --batch_size 16 --repeats 5
    python -m benchmarks.throughput --sizes mini --mode forward
    KERAS_BACKEND=jax .venv-jax/bin/python -m benchmarks.throughput --backend jax --sizes mini
"""

import argparse
import datetime
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax"],
                        default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini"],
                        choices=["tiny", "mini", "medium", "base", "large"])
    parser.add_argument("--models", nargs="+", default=["groupbert", "bert", "keras_hub"],
                        choices=["groupbert", "bert", "keras_hub"])
    parser.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.1],
                        help="dropout rates of BERT and keras-hub (GroupBERT: always 0)")
    parser.add_argument("--mode", choices=["train", "forward"], default="train",
                        help="train: loss + gradients (+ optimizer); forward: inference call")
    parser.add_argument("--optimizer", choices=["none", "adamw"], default="none",
                        help="apply an AdamW update inside the compiled train step")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32",
                        help="Keras dtype policy of the models (the matmul peak follows it)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the chip's dense peak in this precision (e.g. 989 for an H100/"
                             "H200 in bf16): adds MFU = achieved / peak")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Models and loss (keras / keras.ops only: the same code on every backend)
# ----------------------------------------------------------------------------------------------

def make_batch(vocab_size, batch_size, seq_length, max_predictions, seed=0):
    """Numpy inputs and labels of a pre-training batch (all positions real, two segments)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    positions = np.stack([np.sort(rng.choice(np.arange(1, seq_length), max_predictions,
                                             replace=False)) for _ in range(batch_size)])
    inputs = {
        "token_ids": rng.integers(0, vocab_size, (batch_size, seq_length)).astype("int32"),
        "segment_ids": (np.arange(seq_length)[None] >= seq_length // 2).repeat(
            batch_size, 0).astype("int32"),
        "padding_mask": np.ones((batch_size, seq_length), "int32"),
        "masked_lm_positions": positions.astype("int32"),
    }
    labels = {
        "masked_lm_ids": rng.integers(0, vocab_size, (batch_size, max_predictions)).astype(
            "int32"),
        "masked_lm_weights": np.ones((batch_size, max_predictions), "float32"),
        "next_sentence_labels": rng.integers(0, 2, (batch_size,)).astype("int32"),
    }
    return inputs, labels


def pretraining_loss(labels, outputs):
    """MLM (weighted mean over masked slots) + NSP (mean): GroupBertPretrainer's loss."""
    import keras
    from keras import ops
    weights = ops.cast(labels["masked_lm_weights"], "float32")
    mlm = keras.losses.sparse_categorical_crossentropy(
        labels["masked_lm_ids"], ops.cast(outputs["mlm_logits"], "float32"), from_logits=True)
    nsp = keras.losses.sparse_categorical_crossentropy(
        labels["next_sentence_labels"], ops.cast(outputs["nsp_logits"], "float32"),
        from_logits=True)
    return ops.sum(mlm * weights) / ops.maximum(ops.sum(weights), 1.0) + ops.mean(nsp)


def make_keras_hub_pretrainer(config):
    """keras-hub BertBackbone of `config`'s size + tied MaskedLMHead + NSP Dense, as a Model
    with GroupBertPretrainer's inputs and outputs."""
    import keras
    import keras_hub
    from keras_hub.src.utils.keras_utils import gelu_approximate

    from groupbert_tf.models.encoder import ENCODER_INPUTS

    class KerasHubBertPretrainer(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.backbone = keras_hub.models.BertBackbone(
                vocabulary_size=config.vocab_size, num_layers=config.num_layers,
                num_heads=config.num_heads, hidden_dim=config.hidden_size,
                intermediate_dim=config.intermediate_size,
                dropout=config.hidden_dropout,
                max_sequence_length=config.max_position_embeddings,
                num_segments=config.type_vocab_size)
            self.mlm_head = keras_hub.layers.MaskedLMHead(
                vocabulary_size=config.vocab_size,
                token_embedding=self.backbone.token_embedding,
                intermediate_activation=gelu_approximate, layer_norm_epsilon=1e-12,
                name="mlm_head")
            self.nsp_head = keras.layers.Dense(2, name="nsp_head")

        def call(self, inputs, training=None):
            encoded = self.backbone({name: inputs[name] for name in ENCODER_INPUTS},
                                    training=training)
            return {"mlm_logits": self.mlm_head(encoded["sequence_output"],
                                                inputs["masked_lm_positions"]),
                    "nsp_logits": self.nsp_head(encoded["pooled_output"])}

    return KerasHubBertPretrainer()


def build_model(kind, config, inputs, precision="float32"):
    import keras
    from training.performance import dtype_policy
    keras.utils.set_random_seed(0)
    with dtype_policy(precision):
        if kind == "keras_hub":
            model = make_keras_hub_pretrainer(config)
        else:
            from groupbert_tf.models.pretrainer import GroupBertPretrainer
            model = GroupBertPretrainer(config)
        model(inputs)  # build
    return model


# ----------------------------------------------------------------------------------------------
# Backends: compiled step functions, the matmul peak, interleaved timing
# ----------------------------------------------------------------------------------------------

class TensorFlowSteps:
    name = "tensorflow"

    def __init__(self):
        import tensorflow as tf
        from benchmarks import common
        self.tf, self.common = tf, common

    def device(self):
        gpus = self.tf.config.list_logical_devices("GPU")
        return (f"GPU ({', '.join(d.name for d in gpus)})" if gpus else "CPU") + \
            f", TF {self.tf.__version__}"

    def to_tensors(self, tree):
        return {k: self.tf.constant(v) for k, v in tree.items()}

    def train_step(self, model, inputs, labels, optimizer=None):
        tf = self.tf
        variables = model.trainable_variables
        if optimizer is not None:
            optimizer.build(variables)

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                loss = pretraining_loss(labels, model(inputs, training=True))
            grads = tape.gradient(loss, variables)
            if optimizer is None:
                return loss, grads
            optimizer.apply(grads, variables)
            return loss

        return step

    def forward_step(self, model, inputs):
        return self.tf.function(lambda: model(inputs, training=False), jit_compile=True)

    def matmul(self, size, dtype="float32"):
        return self.common.make_matmul(size, dtype=getattr(self.tf, dtype))

    def timings(self, candidates, repeats, warmup):
        return self.common.interleaved_timings(candidates, repeats=repeats, warmup=warmup)


class JaxSteps:
    name = "jax"

    def __init__(self):
        import jax
        self.jax = jax

    def device(self):
        return f"{self.jax.devices()[0].platform.upper()} ({self.jax.devices()[0].device_kind})" \
            f", jax {self.jax.__version__}"

    def to_tensors(self, tree):
        return {k: self.jax.numpy.asarray(v) for k, v in tree.items()}

    def train_step(self, model, inputs, labels, optimizer=None):
        jax = self.jax
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_fn(trainable, non_trainable):
            outputs, non_trainable = model.stateless_call(trainable, non_trainable, inputs,
                                                          training=True)
            return pretraining_loss(labels, outputs), non_trainable

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if optimizer is None:
            step = jax.jit(lambda t, n: grad_fn(t, n))
            return lambda: step(trainable, non_trainable)
        optimizer.build(model.trainable_variables)
        opt_vars = [v.value for v in optimizer.variables]

        @jax.jit
        def step_opt(t, n, o):
            (loss, n), grads = grad_fn(t, n)
            t, o = optimizer.stateless_apply(o, grads, t)
            return loss, t, n, o

        state = {"t": trainable, "n": non_trainable, "o": opt_vars}

        def run():
            loss, state["t"], state["n"], state["o"] = step_opt(state["t"], state["n"],
                                                                state["o"])
            return loss

        return run

    def forward_step(self, model, inputs):
        jax = self.jax
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        call = jax.jit(lambda t, n: model.stateless_call(t, n, inputs, training=False)[0])
        return lambda: call(trainable, non_trainable)

    def matmul(self, size, dtype="float32"):
        jax = self.jax
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(key_a, (size, size), dtype)
        b = jax.random.normal(key_b, (size, size), dtype)
        matmul = jax.jit(jax.numpy.matmul)
        return (lambda: matmul(a, b)), 2 * size ** 3

    def timings(self, candidates, repeats, warmup):
        # benchmarks.common.interleaved_timings imports TensorFlow and blocks with `.numpy()`,
        # which JAX arrays lack (they are asynchronous): the same rotation, with
        # `jax.block_until_ready`.
        names = list(candidates)
        for name in names:
            for _ in range(warmup):
                self.jax.block_until_ready(candidates[name]())
        times = {name: [] for name in names}
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                self.jax.block_until_ready(candidates[name]())
                times[name].append(time.perf_counter() - start)
        return times


# ----------------------------------------------------------------------------------------------
# Reporting (backend-neutral)
# ----------------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def label(kind, size, dropout):
    names = {"groupbert": f"`groupbert-{size}`", "bert": f"`bert-{size}`",
             "keras_hub": f"keras-hub `BertBackbone` ({size})"}
    return f"{names[kind]}, dropout {dropout:g}"


def run_size(steps, size, args):
    import keras
    from groupbert_tf import flops as flop_count
    from groupbert_tf.config import GroupBertConfig

    b, s, m = args.batch_size, args.seq_length, args.max_predictions
    specs = []  # (key, kind, config)
    if "groupbert" in args.models:
        specs.append((("groupbert", 0.0), "groupbert",
                      GroupBertConfig.from_preset(f"groupbert-{size}", hidden_dropout=0.0,
                                                  attention_dropout=0.0)))
    for rate in args.dropouts:
        for kind in ("bert", "keras_hub"):
            if kind in args.models:
                specs.append(((kind, rate), kind,
                              GroupBertConfig.from_preset(f"bert-{size}", hidden_dropout=rate,
                                                          attention_dropout=rate)))
    vocab = specs[0][2].vocab_size
    np_inputs, np_labels = make_batch(vocab, b, s, m)
    inputs, labels = steps.to_tensors(np_inputs), steps.to_tensors(np_labels)

    candidates, step_flops, params, compile_s = {}, {}, {}, {}
    for key, kind, config in specs:
        model = build_model(kind, config, inputs, args.precision)
        params[key] = model.count_params()
        if args.mode == "train":
            optimizer = (keras.optimizers.AdamW(1e-4) if args.optimizer == "adamw" else None)
            fn = steps.train_step(model, inputs, labels, optimizer)
            step_flops[key] = b * flop_count.training_flops(config, s, m)
        else:
            fn = steps.forward_step(model, inputs)
            step_flops[key] = b * flop_count.forward_flops(config, s, m)
        start = time.perf_counter()
        if steps.name == "jax":
            steps.jax.block_until_ready(fn())
        else:
            steps.common.block(fn())
        compile_s[key] = time.perf_counter() - start
        candidates[key] = fn
    matmul_dtype = "bfloat16" if args.precision == "mixed_bfloat16" else "float32"
    matmul, matmul_flops = steps.matmul(args.matmul_size, matmul_dtype)
    candidates["matmul"], step_flops["matmul"] = matmul, matmul_flops

    times = steps.timings(candidates, args.repeats, args.warmup)
    med = {key: statistics.median(v) for key, v in times.items()}
    peak = matmul_flops / med["matmul"]

    rows = []
    for key in candidates:
        t = sorted(times[key])
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        gflops = step_flops[key] / med[key] / 1e9
        rows.append([
            label(key[0], size, key[1]) if key != "matmul"
            else f"matmul {args.matmul_size}^3 {matmul_dtype}",
            f"{params[key] / 1e6:.2f} M" if key in params else "-",
            f"{step_flops[key] / 1e9:.1f}",
            f"{med[key] * 1e3:.1f}", f"{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}",
            f"{b / med[key]:.1f}" if key != "matmul" else "-",
            f"{gflops:.1f}", f"{100 * gflops * 1e9 / peak:.0f}%",
            *([f"{gflops / 1e3 / args.peak_tflops:.1%}"] if args.peak_tflops else []),
            f"{compile_s[key]:.0f}" if key in compile_s else "-"])
    what = ("train step (loss + grads" + (" + AdamW" if args.optimizer == "adamw" else "")
            + ")" if args.mode == "train" else "forward (inference)")
    print(f"\n### {size}: {what}, B={b} S={s} M={m}, {args.precision}, backend {steps.name} "
          f"on {steps.device()}")
    mfu = [f"MFU of {args.peak_tflops:g} TFLOP/s"] if args.peak_tflops else []
    print(table(["model", "params", "GFLOP/step", "median ms", "IQR ms", "seq/s", "GFLOP/s",
                 "of matmul", *mfu, "1st call s"], rows))

    ratios = []
    for rate in args.dropouts:
        bert, hub = ("bert", rate), ("keras_hub", rate)
        if bert in times and hub in times:
            per_round = [h / o for h, o in zip(times[hub], times[bert])]
            ratios.append(f"- BERT / keras-hub throughput at dropout {rate:g}: "
                          f"{med[hub] / med[bert]:.3f} (median of per-round ratios "
                          f"{statistics.median(per_round):.3f}); target >= 1.2")
    g, bert0 = ("groupbert", 0.0), ("bert", 0.0)
    if g in times and bert0 in times:
        flop_ratio = step_flops[g] / step_flops[bert0]
        ratios.append(f"- GroupBERT / BERT (dropout 0) time {med[g] / med[bert0]:.3f}, "
                      f"FLOP ratio {flop_ratio:.3f}")
    print("\n".join(ratios))
    print(f"- matmul peak {peak / 1e9:.1f} GFLOP/s")
    return {"times": times, "flops": step_flops, "peak": peak}


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    if keras.backend.backend() != args.backend:
        sys.exit(f"Keras was already imported with backend {keras.backend.backend()!r}")
    steps = JaxSteps() if args.backend == "jax" else TensorFlowSteps()
    now = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    print(f"# {cpu_model()}, {os.cpu_count()} logical CPUs; {steps.device()}, "
          f"Keras {keras.__version__}; {now:%Y-%m-%d %H:%M} UTC; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.repeats} interleaved rounds after {args.warmup} warm-up calls, medians; "
          f"seq/s = batch / median step time")
    for size in args.sizes:
        run_size(steps, size, args)
    load = os.getloadavg()
    print(f"\n# load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
