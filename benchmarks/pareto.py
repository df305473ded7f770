"""GroupBERT against BERT at scale: validation MLM loss against training FLOPs and wall-clock.

The paper's claim is that GroupBERT reaches the next-larger BERT's MLM loss with under half its
FLOPs (Graphcore's blog: "2x training speed"). Every run here pre-trains (MLM + NSP,
`training.trainer.pretrain`, in-process) for the same number of real tokens (`--tokens`,
default 10M) on the large real corpus (`make data-large`, docs/data.md) at seq 128, packed
(`--pack` sequences per row, training/data/packing.py), in one precision and compile mode for
every run (`--precision`, `--compile_mode`: the fastest on the machine, docs/results.md).
Each family keeps its own recipe:

  BERT       post-norm, dense FFN, dropout 0.1 / 0.1
  GroupBERT  pre-norm, grouped FFN, conv module, no dropout

Sizes (`SIZES`: layers x hidden, heads = hidden / 64, FFN 4 x hidden) are chosen so adjacent
BERT sizes differ by >= 2x in training FLOPs and the MLM decoder is < 30% of them
(`python -m benchmarks.pareto sizes` prints both).

Runs, in the order `train` takes them:
  sweep     both families at the smallest size over `SWEEP` (GroupBERT's grid starts 2x
            higher: the paper's higher-LR claim), each grid extended past an end that holds
            the best final loss; the best final loss picks each family's LR
  main      both families at every size at the picked LRs, seed 0, then seed 1
            (the sweep run at the picked LR is seed 0 of the smallest size)
  ablation  at the smallest size: BERT + one enhancement each

During each run the validation MLM loss is measured at `CURVE_FRACTIONS` of the run, giving the
paper-style loss-against-FLOPs curve; the curve and the summary go to
`docs/results/pareto/<run>.json` and are committed the moment the run ends (`--commit`). A
killed run resumes from its last checkpoint (every 1/8 of the run). The wall-clock axis is
step count x the median step time of `steptime`, which interleaves one training step of every
model in rounds, so every model sees the same machine load; the runs' own wall time (which
depends on whatever else ran) is kept in the summaries but not plotted.

Validation: the held-out documents (`--validation_fraction`), packed and masked once with a
fixed seed (`--val_rows` rows), so every model is scored on the same masked tokens.

    python -m benchmarks.pareto sizes
    python -m benchmarks.pareto prepare              # tokenizes, packs, masks; data.json
    python -m benchmarks.pareto train --commit       # every pending run, in order, resumable
    python -m benchmarks.pareto steptime             # interleaved step times -> steptime.json
    python -m benchmarks.pareto report               # figures and tables from the JSON files
    python -m benchmarks.pareto list
"""

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time

import keras
import numpy as np

SIZES = {"4x256": (4, 256), "6x384": (6, 384), "8x512": (8, 512)}
SIZE_ORDER = tuple(SIZES)
SMALLEST = SIZE_ORDER[0]
SWEEP = {"bert": (5e-3, 1e-2, 2e-2), "groupbert": (1e-2, 2e-2, 4e-2)}
SWEEP_EXTENSIONS = 2
SEEDS = (0, 1)
ABLATIONS = (  # label, GroupBertConfig overrides on BERT, whose LR it trains at
    ("bert+gffn", dict(ffn_groups=4), "bert"),
    ("bert+conv", dict(use_conv_module=True), "bert"),
    ("bert+prenorm", dict(norm_placement="pre", layer_norm_epsilon=1e-3), "groupbert"),
    ("bert+nodropout", dict(hidden_dropout=0.0, attention_dropout=0.0), "bert"),
)
CURVE_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0)
CHECKPOINTS_PER_RUN = 8
REPORT = "report.json"  # in --results, beside the runs
REPORT_MARKDOWN = "report.md"
FINETUNE_DIR = "finetune"
JAX_DIR = "jax"  # benchmarks/pareto_jax.py: its arrays under --root, results under --results
FINETUNE_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    group: str  # sweep | main | ablation
    family: str  # bert | groupbert | ablation label
    size: str
    overrides: tuple  # GroupBertConfig field overrides on top of the family preset
    preset_family: str  # bert | groupbert
    learning_rate: float
    seed: int

    def config(self):
        return size_config(self.preset_family, self.size).replace(**dict(self.overrides))


def size_config(family, size):
    from groupbert_tf.config import GroupBertConfig
    layers, hidden = SIZES[size]
    return GroupBertConfig.from_preset(f"{family}-tiny").replace(
        num_layers=layers, hidden_size=hidden, num_heads=hidden // 64,
        intermediate_size=4 * hidden)


def _run(group, family, size, lr, seed, overrides=(), preset_family=None):
    prefix = "ablation/" if group == "ablation" else ""
    return Run(f"{prefix}{family}-{size}-lr{lr:g}-seed{seed}", group, family, size,
               tuple(sorted(dict(overrides).items())), preset_family or family, lr, seed)


def sweep_grid(family, done):
    """The family's LR grid: `SWEEP`, extended by 2x past whichever end holds the best final
    loss once every point has finished (at most `SWEEP_EXTENSIONS` times)."""
    grid = list(SWEEP[family])
    for _ in range(SWEEP_EXTENSIONS):
        names = {lr: _run("sweep", family, SMALLEST, lr, 0).name for lr in grid}
        if not all(name in done for name in names.values()):
            break
        best = min(grid, key=lambda lr: _final_loss(done[names[lr]]))
        if best == grid[0]:
            grid.insert(0, grid[0] / 2)
        elif best == grid[-1]:
            grid.append(grid[-1] * 2)
        else:
            break
    return grid


def sweep_runs(done):
    """Both families' sweep runs, alternating, each from the middle of its grid outwards, so
    each family's grid fills in step and the likeliest best comes first."""
    grids = [[_run("sweep", family, SMALLEST, lr, 0) for lr in sorted(
        sweep_grid(family, done), key=lambda lr: abs(math.log(lr / SWEEP[family][1])))]
        for family in SWEEP]
    return [run for pair in itertools.zip_longest(*grids) for run in pair if run]


def picked_learning_rates(args):
    """{family: LR}: the flags if given, else the best final loss of the family's finished
    sweep (None until then)."""
    picked = {"bert": args.bert_lr, "groupbert": args.groupbert_lr}
    done = {r["name"]: r for r in load_results(args)}
    for family in picked:
        runs = [r for r in sweep_runs(done) if r.family == family]
        if picked[family] is None and all(r.name in done for r in runs):
            picked[family] = min(runs, key=lambda r: _final_loss(done[r.name])).learning_rate
    return picked


def all_runs(args):
    """Every run in training order; main and ablation runs appear once their LR is known."""
    lrs = picked_learning_rates(args)
    runs = sweep_runs({r["name"]: r for r in load_results(args)})
    sweep_names = {r.name for r in runs}

    def main_runs(seed):
        return [_run("main", family, size, lrs[family], seed)
                for size in SIZE_ORDER for family in ("bert", "groupbert") if lrs[family]]

    for run in main_runs(0):
        if run.name not in sweep_names:
            runs.append(run)
    runs += [_run("ablation", label, SMALLEST, lrs[lr_family], 0, overrides, "bert")
             for label, overrides, lr_family in ABLATIONS if lrs[lr_family]]
    runs += main_runs(1)
    return runs


def main_run_names(args, seed):
    lrs = picked_learning_rates(args)
    return {(family, size): _run("main", family, size, lrs[family], seed).name
            for size in SIZE_ORDER for family in ("bert", "groupbert") if lrs[family]}


# ------------------------------------------------------------------------------------------
# Data: packed once, validation masked once (identical for every model).
# ------------------------------------------------------------------------------------------

def data_path(args):
    return os.path.join(args.root, f"data_seq{args.seq_length}_pack{args.pack}.npz")


def data_record_path(args):
    return os.path.join(args.results, "data.json")


def corpus_paths(args):
    from training.data import download, large_corpus
    paths = args.corpus or large_corpus.corpus_paths(download.DEFAULT_DATA_DIR)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"pareto: error: corpus file {missing[0]} is missing: run "
                         "`make data-large` (or pass --corpus)")
    return paths


def prepare(args):
    """Tokenizes, pairs and packs the corpus once; masks `--val_rows` validation rows."""
    path = data_path(args)
    if os.path.exists(path):
        return
    import tensorflow as tf
    from groupbert_tf import tokenization
    from training.data import download, masking, packing, pretraining_data as pd

    tokenizer = tokenization.BertTokenizer(args.vocab or download.default_vocab_path())
    corpus = corpus_paths(args)
    train_docs, val_docs = pd.split_documents(pd.read_documents(corpus), args.validation_fraction)
    start = time.time()
    arrays, record = {}, {"corpus": corpus, "seq_length": args.seq_length, "pack": args.pack}
    for split, docs, dupe in (("train", train_docs, args.dupe_factor), ("val", val_docs, 1)):
        pairs = pd.create_examples(pd.tokenize_documents(docs, tokenizer), tokenizer,
                                   args.seq_length, dupe_factor=dupe, seed=0)
        rows, efficiency = packing.pack_examples(pairs, args.seq_length, args.pack, seed=0,
                                                 per_sequence=("next_sentence_labels",))
        record[split] = {"documents": len(docs), "pairs": len(pairs["token_ids"]),
                         "rows": len(rows["token_ids"]), "packing_efficiency": efficiency,
                         "real_tokens": int(rows["padding_mask"].sum())}
        arrays.update({f"{split}_{k}": v for k, v in rows.items()})
        print(f"{split}: {record[split]} ({time.time() - start:.0f}s)", flush=True)
    val = {k[len("val_"):]: arrays.pop(k)[:args.val_rows] for k in list(arrays)
           if k.startswith("val_")}
    masker = masking.MlmMasker(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.special_ids,
                               max_predictions_per_seq=args.max_predictions, seed=1000)
    tf.random.set_seed(1000)
    features, labels = masker({k: tf.constant(v) for k, v in val.items()})
    arrays.update({f"val_{k}": v.numpy() for k, v in {**features, **labels}.items()})
    record["val"]["rows_used"] = int(len(arrays["val_token_ids"]))
    record["val"]["masked_tokens"] = int(arrays["val_masked_lm_weights"].sum())
    record["unigram_validation_mlm_loss"] = unigram_loss(arrays)
    os.makedirs(args.root, exist_ok=True)
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
    _write_json(data_record_path(args), record)
    print(f"wrote {path} and {data_record_path(args)}: {record}")


def unigram_loss(arrays):
    """Cross-entropy of the training rows' unigram distribution on the validation masked
    tokens: the loss of a model that ignores context (add-0.01 smoothing; specials excluded)."""
    tokens = arrays["train_token_ids"][arrays["train_padding_mask"] == 1]
    counts = np.bincount(tokens, minlength=int(tokens.max()) + 1).astype(np.float64)
    counts[[0, 100, 101, 102, 103]] = 0  # [PAD] [UNK] [CLS] [SEP] [MASK] (bert-base-uncased)
    ids, weights = arrays["val_masked_lm_ids"], arrays["val_masked_lm_weights"]
    size = max(counts.size, int(ids.max()) + 1)
    counts = np.pad(counts, (0, size - counts.size)) + 0.01
    log_p = np.log(counts / counts.sum())
    return float(-(log_p[ids] * weights).sum() / weights.sum())


def load_data(args):
    """(train arrays, validation (features, labels) numpy dicts, data record)."""
    from training.data import masking
    arrays = np.load(data_path(args))
    train = {k[len("train_"):]: arrays[k] for k in arrays.files if k.startswith("train_")}
    val = masking.split_features_labels(
        {k[len("val_"):]: arrays[k] for k in arrays.files if k.startswith("val_")})
    with open(data_record_path(args)) as f:
        return train, val, json.load(f)


def train_steps(args, record):
    """Optimizer steps that feed `--tokens` real tokens at the packing efficiency."""
    tokens_per_step = args.batch_size * args.seq_length * record["train"]["packing_efficiency"]
    return math.ceil(args.tokens / tokens_per_step)


def train_dataset_fn(args, train, seed):
    import tensorflow as tf
    from groupbert_tf import tokenization
    from training.data import download, masking

    tokenizer = tokenization.BertTokenizer(args.vocab or download.default_vocab_path())

    def dataset(start_step):
        ds = tf.data.Dataset.from_tensor_slices(train)
        ds = ds.shuffle(20_000, seed=seed * 7919 + start_step, reshuffle_each_iteration=True)
        ds = ds.repeat().batch(args.batch_size, drop_remainder=True)
        masker = masking.MlmMasker(tokenizer.vocab_size, tokenizer.mask_id,
                                   tokenizer.special_ids,
                                   max_predictions_per_seq=args.max_predictions,
                                   seed=seed * 7919 + start_step)
        return ds.map(masker, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    return dataset


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------

def result_path(args, run):
    return os.path.join(args.results, f"{run.name}.json")


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def curve_steps(steps):
    return sorted({max(1, round(f * steps)) for f in CURVE_FRACTIONS})


class ValidationCurve(keras.callbacks.Callback):
    """Validation MLM/NSP loss at `steps`, kept in `path` (JSON) so a resumed run keeps the
    points it measured before it was killed."""

    def __init__(self, path, validation, steps, batch_size):
        super().__init__()
        self.path, self.steps = path, set(steps)
        self.validation, self.batch_size = validation, batch_size
        self.points = {}
        if os.path.exists(path):
            with open(path) as f:
                self.points = {p["step"]: p for p in json.load(f)}
        self._sums = None

    def _score(self):
        import tensorflow as tf
        if self._sums is None:
            @tf.function
            def sums(x, y):
                y_pred = self.model(x, training=False)
                return self.model.loss_sums(y, y_pred), self.model.loss_counts(y)
            self._sums = sums
        features, labels = self.validation
        totals = {}
        for start in range(0, len(features["token_ids"]), self.batch_size):
            batch = [{k: v[start:start + self.batch_size] for k, v in d.items()}
                     for d in (features, labels)]
            sums, counts = self._sums(*batch)
            for key in sums:
                s, c = totals.get(key, (0.0, 0.0))
                totals[key] = (s + float(sums[key]), c + float(counts[key]))
        return {f"{k}_loss": s / max(c, 1.0) for k, (s, c) in totals.items()}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step in self.steps and step not in self.points:
            start = time.time()
            self.points[step] = {"step": step, **self._score(),
                                 "eval_seconds": time.time() - start,
                                 "time": datetime.datetime.now().isoformat("T", "seconds")}
            _write_json(self.path, sorted(self.points.values(), key=lambda p: p["step"]))
            print(f"  step {step}: validation {self.points[step]}", flush=True)


def settings_for(args, run, steps, model_dir):
    from training import trainer
    return trainer.TrainingSettings(
        model_dir=model_dir, train_steps=steps, global_batch_size=args.batch_size,
        seq_length=args.seq_length, max_predictions_per_seq=args.max_predictions,
        optimizer="lamb", learning_rate=run.learning_rate, warmup_steps=max(steps // 10, 1),
        warmup_power=0.5, weight_decay=0.01,
        checkpoint_every=max(steps // CHECKPOINTS_PER_RUN, 1),
        log_every=max(steps // 8, 1), precision=args.precision,
        compile_mode=args.compile_mode, verbose=0)


def train_one(args, run, train, validation, record):
    import tensorflow as tf
    from groupbert_tf import flops
    from training import trainer

    config = run.config()
    steps = train_steps(args, record)
    model_dir = os.path.join(args.root, run.name)
    os.makedirs(model_dir, exist_ok=True)
    settings = settings_for(args, run, steps, model_dir)
    keras.backend.clear_session()
    keras.utils.set_random_seed(run.seed)
    flops_per_step = flops.training_flops(config, args.seq_length,
                                          args.max_predictions) * args.batch_size
    print(f"=== {run.name}: lr {run.learning_rate}, {steps} steps, "
          f"{flops.count_params(config, True):,} params, {flops_per_step / 1e12:.3f} "
          f"TFLOP/step", flush=True)
    curve_file = os.path.join(model_dir, "curve.json")
    curve = ValidationCurve(curve_file, validation, curve_steps(steps), args.batch_size)
    start = time.time()
    diverged = None
    try:
        model, throughput, _ = trainer.pretrain(
            config, settings, tf.distribute.get_strategy(),
            train_dataset_fn(args, train, run.seed), callbacks=[curve])
        step = int(model.optimizer.iterations.numpy())
    except FloatingPointError as error:  # NaN guard of the trainer's checkpoint callback.
        diverged, throughput, step = str(error), None, None
    tokens_per_step = args.batch_size * args.seq_length * record["train"]["packing_efficiency"]
    points = [dict(p, flops=p["step"] * flops_per_step, tokens=p["step"] * tokens_per_step)
              for p in sorted(curve.points.values(), key=lambda p: p["step"])]
    summary = {
        **dataclasses.asdict(run), "overrides": dict(run.overrides),
        "config": config.to_dict(),
        "params_with_heads": flops.count_params(config, True),
        "params_encoder": flops.count_params(config),
        "train_steps": steps, "step": step, "batch_size": args.batch_size,
        "seq_length": args.seq_length, "pack": args.pack,
        "max_predictions_per_seq": args.max_predictions, "optimizer": "lamb",
        "warmup_steps": settings.warmup_steps, "precision": args.precision,
        "compile_mode": args.compile_mode,
        "real_tokens": steps * tokens_per_step,
        "training_flops_per_step": flops_per_step,
        "training_flops": flops_per_step * steps,
        "curve": points,
        "final": points[-1] if points and points[-1]["step"] == steps else None,
        "wall_seconds_this_process": time.time() - start,
        "diverged": diverged,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "cpu": _cpu(), "cpus": os.cpu_count(),
    }
    if throughput is not None and throughput.history:
        summary["throughput_last_interval"] = throughput.history[-1]
    _write_json(result_path(args, run), summary)
    final = summary["final"] or {}
    print(f"=== {run.name}: validation MLM loss {final.get('mlm_loss')}"
          f"{' DIVERGED' if diverged else ''}", flush=True)
    if args.commit:
        _commit(result_path(args, run), f"pareto: {run.name} (validation MLM loss "
                                  f"{final.get('mlm_loss', float('nan')):.4f})")


def _cpu():
    from training import performance
    return performance.describe_cpu(performance.cpu_flags())


def _commit(path, message):
    """Commits one results file (only it: other staged work stays as it is)."""
    for _ in range(10):
        add = subprocess.run(["git", "add", path], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", path],
            capture_output=True, text=True).returncode == 0
        if done:
            print(f"committed {path}", flush=True)
            return
        time.sleep(3)  # Another git process holds the index lock.
    print(f"could not commit {path}: commit it by hand", flush=True)


def train(args):
    prepare(args)
    train_set, validation, record = load_data(args)
    while True:  # Sweep results unlock the main runs: re-read the queue after each run.
        pending = [r for r in all_runs(args) if not os.path.exists(result_path(args, r))
                   and (not args.only or r.name in args.only)
                   and (not args.groups or r.group in args.groups)]
        if not pending:
            break
        train_one(args, pending[0], train_set, validation, record)
    if args.finetune:
        from training.data import sentiment_data
        sentiment_data.fetch()
        for result, seed in finetune_queue(args):
            finetune_one(args, result, seed)
    print("no pending runs", flush=True)


# ------------------------------------------------------------------------------------------
# Downstream: Rotten Tomatoes sentiment from every main run, `FINETUNE_SEEDS` seeds each.
# ------------------------------------------------------------------------------------------

def finetune_path(args, name, seed):
    return os.path.join(args.results, FINETUNE_DIR, f"{name}-finetune-seed{seed}.json")


def finetune_queue(args):
    """(pre-training result, fine-tuning seed) pairs still to run: seed-0 models first."""
    done = {r["name"]: r for r in load_results(args) if r["final"]}
    names = [name for seed in SEEDS for name in main_run_names(args, seed).values()]
    return [(done[name], seed) for name in names if name in done
            for seed in FINETUNE_SEEDS if not os.path.exists(finetune_path(args, name, seed))]


def finetune_one(args, result, seed):
    """`python -m training.finetune` on the full sentiment split from the run's checkpoint
    (its own process: fine-tuning builds a fresh Keras state)."""
    from training.data import sentiment_data
    data = sentiment_data.sentiment_dir()
    model_dir = os.path.join(args.root, FINETUNE_DIR, f"{result['name']}-seed{seed}")
    command = [sys.executable, "-m", "training.finetune", "--task=classification",
               f"--train_file={data}/train.tsv", f"--eval_file={data}/dev.tsv",
               f"--init_checkpoint={os.path.join(args.root, result['name'])}",
               f"--model_dir={model_dir}", f"--seed={seed}", "--epochs=2", "--batch_size=32",
               "--seq_length=64", f"--learning_rate={args.finetune_lr}", "--verbose=2",
               f"--precision={args.precision}", f"--compile_mode={args.compile_mode}"]
    if args.finetune_max_examples:
        command.append(f"--max_train_examples={args.finetune_max_examples}")
    print(f"=== fine-tune {result['name']} seed {seed}", flush=True)
    subprocess.run(command, check=True)
    with open(os.path.join(model_dir, "results.json")) as f:
        summary = json.load(f)
    accuracy = [epoch["val_accuracy"] for epoch in summary["history"]]
    out = {"pretraining_run": result["name"], "family": result["family"],
           "size": result["size"], "pretraining_seed": result["seed"], "seed": seed,
           "pretraining_flops": result["training_flops"],
           "pretraining_final_mlm_loss": _final_loss(result),
           "dev_accuracy_per_epoch": accuracy, "dev_accuracy": accuracy[-1],
           "learning_rate": args.finetune_lr, "epochs": 2, "batch_size": 32, "seq_length": 64,
           "max_train_examples": args.finetune_max_examples,
           "train_seconds": summary["train_seconds"], "command": command[1:],
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    path = finetune_path(args, result["name"], seed)
    _write_json(path, out)
    if args.commit:
        _commit(path, f"pareto: fine-tune {result['name']} seed {seed} (dev accuracy "
                      f"{accuracy[-1]:.4f})")


# ------------------------------------------------------------------------------------------
# Step time: one training step of every model, interleaved in rounds.
# ------------------------------------------------------------------------------------------

def steptime_path(args):
    return os.path.join(args.results, "steptime.json")


def steptime(args):
    """Median seconds of one optimizer step per (family, size), with the trainer's model,
    optimizer, precision and compile mode; rounds rotate the model order."""
    import tensorflow as tf
    from training import performance, trainer

    train_set, _, record = load_data(args)
    batch = next(iter(train_dataset_fn(args, train_set, 0)(0)))
    lrs = picked_learning_rates(args)
    chosen = performance.configure(args.precision, args.compile_mode)
    models = {}
    with performance.dtype_policy(chosen.precision):
        for size in SIZE_ORDER:
            for family in ("bert", "groupbert"):
                run = _run("main", family, size, lrs[family] or 1e-2, 0)
                settings = settings_for(args, run, train_steps(args, record), "/tmp/unused")
                keras.utils.set_random_seed(0)
                models[(family, size)] = trainer.build_model(run.config(), settings)
    times = {key: [] for key in models}
    keys = list(models)
    for round_index in range(args.rounds + 1):
        order = keys[round_index % len(keys):] + keys[:round_index % len(keys)]
        for key in order:
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                logs = models[key].train_on_batch(*batch, return_dict=True)
            float(logs["loss"])
            if round_index:  # Round 0 compiles.
                times[key].append((time.perf_counter() - start) / args.steps_per_round)
        print(f"round {round_index}: " + ", ".join(
            f"{f}-{s} {times[(f, s)][-1] * 1e3:.0f} ms" for f, s in keys if times[(f, s)]),
            flush=True)
    result = {
        "precision": chosen.precision, "compile_mode": chosen.compile_mode,
        "batch_size": args.batch_size, "seq_length": args.seq_length,
        "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "median_seconds": {f"{f}-{s}": float(np.median(times[(f, s)])) for f, s in keys},
        "range_seconds": {f"{f}-{s}": [min(times[(f, s)]), max(times[(f, s)])] for f, s in keys},
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": _cpu(),
        "cpus": os.cpu_count(), "load_average_end": os.getloadavg()[0],
        "tf_version": tf.__version__,
    }
    _write_json(steptime_path(args), result)
    print(json.dumps(result, indent=1))


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def load_results(args):
    out = []
    if os.path.isdir(args.results):
        for dirpath, folders, names in os.walk(args.results):
            folders[:] = [f for f in folders if f not in (FINETUNE_DIR, JAX_DIR)]
            for name in sorted(names):
                if name.endswith(".json") and name not in ("data.json", "steptime.json", REPORT):
                    with open(os.path.join(dirpath, name)) as f:
                        out.append(json.load(f))
    return out


def _final_loss(result):
    final = result.get("final") or {}
    value = final.get("mlm_loss")
    return value if value is not None and math.isfinite(value) else float("inf")


def _flops_to_reach(curves, target):
    """Least training FLOPs at which any of `curves` ([(flops, loss)] each) reaches `target`,
    interpolating log-linearly between measured points (None when none gets that low)."""
    best = None
    for points in curves:
        for (f0, l0), (f1, l1) in zip(points, points[1:]):
            if l0 >= target >= l1 and l0 != l1:
                t = (l0 - target) / (l0 - l1)
                at = math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
                best = at if best is None else min(best, at)
                break
    return best


def _curve(result, x="flops"):
    return [(p[x], p["mlm_loss"]) for p in result["curve"]]


def with_wall_clock(results, step_times):
    """Adds `seconds` (step x interleaved median step time) to every curve point."""
    for r in results:
        key = f"{r['preset_family']}-{r['size']}" if r["group"] != "ablation" else None
        seconds = (step_times or {}).get(key)
        for p in r["curve"]:
            p["seconds"] = p["step"] * seconds if seconds else None
    return results


def claims(results, args):
    """Per seed and size: GroupBERT's FLOPs (and seconds) to reach the next-larger BERT's
    final loss, over that BERT's FLOPs (seconds); <= 0.5 is the paper's claim."""
    rows = []
    for seed in SEEDS:
        names = main_run_names(args, seed)
        by = {r["name"]: r for r in results}
        main = {key: by[name] for key, name in names.items() if name in by and by[name]["final"]}
        gb_curves = [_curve(r) for (family, _), r in main.items() if family == "groupbert"]
        for smaller, larger in zip(SIZE_ORDER, SIZE_ORDER[1:]):
            if ("groupbert", smaller) not in main or ("bert", larger) not in main:
                continue
            gb, bert = main[("groupbert", smaller)], main[("bert", larger)]
            target = _final_loss(bert)
            needed = _flops_to_reach(gb_curves, target)
            row = {"seed": seed, "groupbert": gb["name"], "bert": bert["name"],
                   "bert_final_loss": target, "groupbert_final_loss": _final_loss(gb),
                   "groupbert_flops_to_match": needed,
                   "flops_ratio": needed / bert["training_flops"] if needed else None}
            if all(p.get("seconds") for r in main.values() for p in r["curve"]):
                gb_time = [_curve(r, "seconds") for (f, _), r in main.items() if f == "groupbert"]
                seconds = _flops_to_reach(gb_time, target)
                row["time_ratio"] = seconds / bert["curve"][-1]["seconds"] if seconds else None
            rows.append(row)
    return rows


def loss_table(results, targets):
    """FLOPs and seconds each main run needs to reach each target loss (its own curve)."""
    rows = []
    for r in results:
        if r["group"] == "ablation" or not r["curve"]:
            continue
        row = {"name": r["name"]}
        for target in targets:
            row[f"flops@{target:g}"] = _flops_to_reach([_curve(r)], target)
            if r["curve"][0].get("seconds"):
                row[f"seconds@{target:g}"] = _flops_to_reach([_curve(r, "seconds")], target)
        rows.append(row)
    return rows


def plot(results, record, figures, main_names):
    """The loss curves of the main runs against FLOPs and wall-clock; the LR sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    os.makedirs(figures, exist_ok=True)
    styles = {"bert": ("tab:blue", "BERT (post-norm, dropout 0.1)"),
              "groupbert": ("tab:red", "GroupBERT (pre-norm, no dropout)")}
    lines = {0: "-", 1: "--"}
    # The main runs, and (thin) the sweep points that are not main runs.
    curves = [r for r in results if r["curve"] and (
        r["name"] in main_names or r["group"] == "sweep")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, x, label in ((axes[0], "flops", "training FLOPs"),
                         (axes[1], "seconds", "wall-clock s on this machine "
                          "(steps x interleaved step time)")):
        labelled = set()
        for r in curves:
            points = [(p[x], p["mlm_loss"]) for p in r["curve"] if p.get(x)]
            if not points:
                continue
            color, family_label = styles[r["family"]]
            main = r["name"] in main_names
            ax.plot(*zip(*points), color=color, linestyle=lines.get(r["seed"], ":"),
                    marker=".", linewidth=1.5 if main else 0.8, alpha=1.0 if main else 0.5,
                    label=None if r["family"] in labelled else family_label)
            labelled.add(r["family"])
            ax.annotate(r["size"] if main else f"{r['size']} lr {r['learning_rate']:g}",
                        points[-1], textcoords="offset points", xytext=(3, 3), fontsize=7,
                        color=color)
        ax.axhline(record["unigram_validation_mlm_loss"], color="grey", linestyle=":",
                   label=f"unigram (no context): {record['unigram_validation_mlm_loss']:.2f}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # Labels overlapped.
        ax.set_xlabel(label)
        ax.set_ylabel("validation MLM loss")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Pre-training on the large corpus, seq 128 packed, 10M tokens per run; solid "
                 "seed 0, dashed seed 1, thin: LR sweep", fontsize=10)
    fig.tight_layout()
    path = os.path.join(figures, "pareto_at_scale_loss.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")

    sweep = [r for r in results if r["group"] == "sweep"]
    if sweep:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for family, (color, family_label) in styles.items():
            rows = sorted((r["learning_rate"], _final_loss(r)) for r in sweep
                          if r["family"] == family)
            ax.plot(*zip(*rows), color=color, marker="o", label=family_label)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (LAMB)")
        ax.set_ylabel("final validation MLM loss")
        ax.set_title(f"LR sweep at {SMALLEST}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(figures, "pareto_at_scale_lr_sweep.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"wrote {path}")


def loss_levels(results, unigram, count=6):
    """Round loss levels (steps of 0.25) from the best final loss up to the unigram loss."""
    finals = [_final_loss(r) for r in results if r["final"]]
    if not finals:
        return []
    low = math.ceil(min(finals) * 4) / 4
    levels = [low + 0.25 * i for i in range(int((unigram - low) / 0.25) + 1)]
    return levels[:: max(1, math.ceil(len(levels) / count))]


def finetune_rows(args):
    """Mean and spread of the dev accuracy of each pre-trained model over its seeds."""
    folder = os.path.join(args.results, FINETUNE_DIR)
    by_run = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            result = json.load(f)
        by_run.setdefault(result["pretraining_run"], []).append(result)
    rows = []
    for run, results in by_run.items():
        accuracy = [r["dev_accuracy"] for r in results]
        rows.append({"pretraining_run": run, "pretraining_flops": results[0]["pretraining_flops"],
                     "pretraining_final_mlm_loss": results[0]["pretraining_final_mlm_loss"],
                     "seeds": len(accuracy), "dev_accuracy_mean": float(np.mean(accuracy)),
                     "dev_accuracy_std": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1
                     else None})
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(out):
    """The report's tables (docs/results.md quotes them)."""
    lines = ["| run | group | LR | seed | training FLOPs | real tokens | final val MLM loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in out["runs"]:
        lines.append(f"| `{r['name']}` | {r['group']} | {r['learning_rate']:g} | {r['seed']} | "
                     f"{r['training_flops']:.3g} | {r['real_tokens'] / 1e6:.2f} M | "
                     f"{_fmt(r['final_mlm_loss'], '.4f')} |")
    lines += ["", "| seed | GroupBERT | next-larger BERT | BERT final loss | GroupBERT final loss "
              "| GroupBERT FLOPs to that loss / BERT's | same, wall-clock |",
              "|---:|---|---|---:|---:|---:|---:|"]
    for c in out["claims"]:
        lines.append(f"| {c['seed']} | `{c['groupbert']}` | `{c['bert']}` | "
                     f"{c['bert_final_loss']:.4f} | {c['groupbert_final_loss']:.4f} | "
                     f"{_fmt(c['flops_ratio'], '.2f')} | {_fmt(c.get('time_ratio'), '.2f')} |")
    levels = out["loss_levels"]
    if levels:
        lines += ["", "| run | " + " | ".join(f"to {v:g}: PFLOP / s" for v in levels) + " |",
                  "|---|" + "---:|" * len(levels)]
        for row in out["time_to_loss"]:
            cells = [f"{_fmt(row[f'flops@{v:g}'] and row[f'flops@{v:g}'] / 1e15, '.2f')} / "
                     f"{_fmt(row.get(f'seconds@{v:g}'), '.0f')}" for v in levels]
            lines.append(f"| `{row['name']}` | " + " | ".join(cells) + " |")
    if out["finetune"]:
        lines += ["", "| pre-trained model | pre-training FLOPs | its final MLM loss | seeds | "
                  "sentiment dev accuracy (mean ± sd) |", "|---|---:|---:|---:|---:|"]
        for row in out["finetune"]:
            std = row["dev_accuracy_std"]
            lines.append(f"| `{row['pretraining_run']}` | {row['pretraining_flops']:.3g} | "
                         f"{row['pretraining_final_mlm_loss']:.4f} | {row['seeds']} | "
                         f"{100 * row['dev_accuracy_mean']:.2f}% ± "
                         f"{_fmt(std and 100 * std, '.2f')} |")
    return "\n".join(lines) + "\n"


def report(args):
    """report.json, report.md and the figures, from the committed results only."""
    with open(data_record_path(args)) as f:
        record = json.load(f)
    step_times = None
    if os.path.exists(steptime_path(args)):
        with open(steptime_path(args)) as f:
            step_times = json.load(f)["median_seconds"]
    results = with_wall_clock(load_results(args), step_times)
    levels = loss_levels(results, record["unigram_validation_mlm_loss"])
    out = {"data": record, "step_times": step_times, "claims": claims(results, args),
           "loss_levels": levels, "time_to_loss": loss_table(results, levels),
           "finetune": finetune_rows(args),
           "runs": [{k: r[k] for k in ("name", "group", "learning_rate", "seed",
                                       "training_flops", "real_tokens")}
                    | {"final_mlm_loss": _final_loss(r) if r["final"] else None}
                    for r in results]}
    _write_json(os.path.join(args.results, REPORT), out)
    with open(os.path.join(args.results, REPORT_MARKDOWN), "w") as f:
        f.write(markdown(out))
    print(markdown(out))
    plot(results, record, args.figures,
         {name for seed in SEEDS for name in main_run_names(args, seed).values()})


def sizes(args):
    from groupbert_tf import flops
    previous = None
    for size in SIZE_ORDER:
        for family in ("bert", "groupbert"):
            config = size_config(family, size)
            parts = flops.forward_flops_breakdown(config, args.seq_length, args.max_predictions)
            total = sum(parts.values())
            training = flops.training_flops(config, args.seq_length, args.max_predictions)
            step_up = f", {training / previous:.2f}x the smaller BERT" if (
                family == "bert" and previous) else ""
            print(f"{family}-{size}: {flops.count_params(config, True) / 1e6:.1f}M params, "
                  f"{training / 1e9:.2f} GFLOP/row/step, decoder {parts['mlm_decoder'] / total:.0%}"
                  f"{step_up}")
            if family == "bert":
                previous = training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["sizes", "prepare", "train", "steptime", "report",
                                            "list"])
    parser.add_argument("--root", default="runs/pareto_at_scale")
    parser.add_argument("--results", default="docs/results/pareto",
                        help="committed results: data.json, steptime.json, <run>.json")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--corpus", nargs="*", default=None,
                        help="corpus files (default: the large corpus of docs/data.md)")
    parser.add_argument("--vocab", default=None)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--pack", type=int, default=3, help="sequences per packed row")
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--dupe_factor", type=int, default=1)
    parser.add_argument("--validation_fraction", type=float, default=0.01)
    parser.add_argument("--val_rows", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64, help="packed rows per step")
    parser.add_argument("--tokens", type=float, default=10e6, help="real tokens per run")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--compile_mode", default="graph_fused")
    parser.add_argument("--bert_lr", type=float, default=None, help="default: the sweep's best")
    parser.add_argument("--groupbert_lr", type=float, default=None)
    parser.add_argument("--groups", nargs="*", default=None, help="sweep / main / ablation")
    parser.add_argument("--only", nargs="*", default=None, help="run names")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each run's results file when the run ends")
    parser.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=True,
                        help="train: then fine-tune every main run on sentiment")
    parser.add_argument("--finetune_lr", type=float, default=5e-4)
    parser.add_argument("--finetune_max_examples", type=int, default=None,
                        help="fine-tune on the first N training sentences (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="steptime: timed rounds")
    parser.add_argument("--steps_per_round", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command in ("train", "steptime"):
        from training import performance
        performance.ensure_process_flags(performance.resolve(args.precision, args.compile_mode))
    if args.command == "list":
        for run in all_runs(args):
            done = "done" if os.path.exists(result_path(args, run)) else "    "
            print(f"{done} {run.group:8s} {run.name} {dict(run.overrides) or ''}")
    else:
        {"sizes": sizes, "prepare": prepare, "train": train, "steptime": steptime,
         "report": report}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
