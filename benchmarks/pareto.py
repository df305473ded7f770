"""MLM validation loss against training FLOPs (and wall-clock): BERT vs GroupBERT, plus ablation.

A small-scale version of the paper's loss-vs-FLOPs Pareto figure. Every run pre-trains
(MLM + NSP, `training.trainer.pretrain`, in-process) on the same corpus (the default Wikipedia
extracts, `python -m training.data fetch`), with the same sequence length, batch size and number
of steps, i.e. the same token budget. Each family uses its own recipe:

  BERT       post-norm, dense FFN, dropout 0.1 / 0.1, its learning rate
  GroupBERT  pre-norm, grouped FFN, conv module, no dropout, its learning rate

Runs (see `all_runs`; names carry the LR, e.g. `groupbert-tiny-lr0.01`):
  main      {bert,groupbert}-{micro,tiny,small} at the chosen LRs (`--bert_lr`, `--groupbert_lr`)
  sweep     LR sweep of both families at `tiny` (`SWEEP`; it picked the default LRs)
  ablation  at `tiny`: BERT + one enhancement each (GFFN, conv module, pre-norm at GroupBERT's
            LR, no dropout); "all together" is groupbert-tiny.

Results: docs/results.md. `report` writes `<root>/results.json` (every summary, the targets and
a unigram reference loss) and docs/figures/pareto_loss_vs_flops.png / pareto_ablation.png.

Validation: the held-out documents of `training.data.pretraining_data.split_documents` (1%), packed
once and masked `--val_mask_draws` times with fixed seeds, stored in `<root>/data_seq*.npz`, so
every model is scored on exactly the same masked tokens.

Every run writes `<root>/<name>/summary.json`; a run whose summary exists is skipped, and an
interrupted run resumes from its checkpoint. Runs can be split across processes with
`--worker i --num_workers k` (each takes every k-th pending run).

    python -m benchmarks.pareto prepare
    python -m benchmarks.pareto train --worker 0 --num_workers 2   # and --worker 1, in parallel
    python -m benchmarks.pareto report      # results.json + docs/figures/pareto*.png
    python -m benchmarks.pareto list        # every run, done or not
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

SIZES = {
    # name: (layers, hidden); heads = hidden / 64, intermediate = 4 * hidden. `tiny` is the
    # preset; `micro` and `small` are custom. `mini` (4 x 256) and a 3 x 192 `small` were too slow
    # for the budget on the shared 2-core machine (docs/results.md).
    "micro": (1, 128),
    "tiny": (2, 128),
    "small": (2, 192),
}
SIZE_ORDER = ("micro", "tiny", "small")

# Learning rates (LAMB, sqrt warmup then linear decay). The sweep below picked these (both
# families' best was 0.01 at this budget); see docs/results.md. Change them after a new sweep.
BERT_LR = 1e-2
GROUPBERT_LR = 1e-2
SWEEP = {"bert": (5e-3, 1e-2, 2e-2), "groupbert": (1e-2, 2e-2)}
ABLATION_SIZE = "tiny"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    group: str  # main | sweep | ablation
    family: str  # bert | groupbert | ablation label
    size: str
    overrides: tuple  # GroupBertConfig field overrides on top of the family preset
    preset_family: str  # bert | groupbert
    learning_rate: float

    def config(self):
        from groupbert_tf.config import GroupBertConfig
        layers, hidden = SIZES[self.size]
        base = GroupBertConfig.from_preset(f"{self.preset_family}-tiny")
        return base.replace(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64,
                            intermediate_size=4 * hidden, **dict(self.overrides))


def _lr_tag(lr):
    return f"{lr:g}"


def all_runs(bert_lr=BERT_LR, groupbert_lr=GROUPBERT_LR):
    """Every run; names carry the LR, so the main `tiny` runs *are* sweep runs (no duplicate)."""
    runs = {}
    lrs = {"bert": bert_lr, "groupbert": groupbert_lr}
    for family, values in SWEEP.items():
        for lr in values:
            name = f"{family}-{ABLATION_SIZE}-lr{_lr_tag(lr)}"
            runs[name] = Run(name, "sweep", family, ABLATION_SIZE, (), family, lr)
    for size in SIZE_ORDER:
        for family in ("bert", "groupbert"):
            name = f"{family}-{size}-lr{_lr_tag(lrs[family])}"
            runs[name] = Run(name, "main", family, size, (), family, lrs[family])
    ablations = [
        ("bert+gffn", dict(ffn_groups=4), bert_lr),
        ("bert+conv", dict(use_conv_module=True), bert_lr),
        ("bert+prenorm", dict(norm_placement="pre", layer_norm_epsilon=1e-3), groupbert_lr),
        ("bert+nodropout", dict(hidden_dropout=0.0, attention_dropout=0.0), bert_lr),
    ]
    for label, overrides, lr in ablations:
        name = f"ablation/{label}-{ABLATION_SIZE}-lr{_lr_tag(lr)}"
        runs[name] = Run(name, "ablation", label, ABLATION_SIZE,
                         tuple(sorted(overrides.items())), "bert", lr)
    return list(runs.values())


# ------------------------------------------------------------------------------------------
# Data: packed once, validation masked once (identical for every model).
# ------------------------------------------------------------------------------------------

def data_path(args):
    return os.path.join(args.root, f"data_seq{args.seq_length}_p{args.max_predictions}.npz")


def prepare(args):
    """Tokenizes and packs the corpus once; masks the validation split `val_mask_draws` times."""
    path = data_path(args)
    if os.path.exists(path):
        print(f"{path} exists")
        return
    import tensorflow as tf
    from groupbert_tf import tokenization
    from training.data import download, masking, pretraining_data as pd

    corpus = args.corpus or download.default_corpus_path()
    vocab = args.vocab or download.default_vocab_path()
    tokenizer = tokenization.BertTokenizer(vocab)
    train_docs, val_docs = pd.split_documents(pd.read_documents(corpus),
                                              args.validation_fraction)
    start = time.time()
    train = pd.create_examples(pd.tokenize_documents(train_docs, tokenizer), tokenizer,
                               args.seq_length, dupe_factor=5, seed=0)
    val = pd.create_examples(pd.tokenize_documents(val_docs, tokenizer), tokenizer,
                             args.seq_length, dupe_factor=1, seed=0)
    print(f"packed {len(train['token_ids'])} train / {len(val['token_ids'])} validation "
          f"examples from {len(train_docs)} / {len(val_docs)} documents "
          f"in {time.time() - start:.0f}s")
    arrays = {f"train_{k}": v for k, v in train.items()}
    arrays.update({f"valraw_{k}": v for k, v in val.items()})
    masked = {}
    for draw in range(args.val_mask_draws):
        masker = masking.MlmMasker(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.special_ids,
                                   max_predictions_per_seq=args.max_predictions, seed=1000 + draw)
        tf.random.set_seed(1000 + draw)
        features, labels = masker({k: tf.constant(v) for k, v in val.items()})
        for key, value in {**features, **labels}.items():
            masked.setdefault(key, []).append(value.numpy())
    arrays.update({f"val_{k}": np.concatenate(v) for k, v in masked.items()})
    os.makedirs(args.root, exist_ok=True)
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
    print(f"wrote {path}: validation {len(arrays['val_token_ids'])} masked sequences "
          f"({args.val_mask_draws} draws), {int(arrays['val_masked_lm_weights'].sum())} "
          "masked tokens")


def _datasets(args):
    import tensorflow as tf
    from groupbert_tf import tokenization
    from training.data import download, masking

    arrays = np.load(data_path(args))
    tokenizer = tokenization.BertTokenizer(args.vocab or download.default_vocab_path())
    train = {k[len("train_"):]: arrays[k] for k in arrays.files if k.startswith("train_")}
    val = {k[len("val_"):]: arrays[k] for k in arrays.files if k.startswith("val_")}

    def train_dataset_fn(start_step):
        ds = tf.data.Dataset.from_tensor_slices(train)
        ds = ds.shuffle(10_000, seed=args.seed + start_step, reshuffle_each_iteration=True)
        ds = ds.repeat().batch(args.batch_size, drop_remainder=True)
        masker = masking.MlmMasker(tokenizer.vocab_size, tokenizer.mask_id,
                                   tokenizer.special_ids,
                                   max_predictions_per_seq=args.max_predictions,
                                   seed=args.seed + start_step)
        return ds.map(masker, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    feature_keys = ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")
    features = {k: val[k] for k in feature_keys}
    labels = {k: val[k] for k in ("masked_lm_ids", "masked_lm_weights", "next_sentence_labels")}
    n = (len(val["token_ids"]) // args.batch_size) * args.batch_size
    validation = tf.data.Dataset.from_tensor_slices(
        ({k: v[:n] for k, v in features.items()}, {k: v[:n] for k, v in labels.items()})
    ).batch(args.batch_size, drop_remainder=True)
    return train_dataset_fn, validation


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------

def summary_path(args, run):
    return os.path.join(args.root, run.name, "summary.json")


def train_one(args, run, train_dataset_fn, validation):
    import keras
    import tensorflow as tf
    from groupbert_tf import flops
    from training import trainer

    config = run.config()
    model_dir = os.path.join(args.root, run.name)
    os.makedirs(model_dir, exist_ok=True)
    settings = trainer.TrainingSettings(
        model_dir=model_dir, train_steps=args.train_steps, global_batch_size=args.batch_size,
        seq_length=args.seq_length, max_predictions_per_seq=args.max_predictions,
        optimizer="lamb", learning_rate=run.learning_rate, warmup_steps=args.warmup_steps,
        warmup_power=0.5, weight_decay=0.01, checkpoint_every=args.train_steps,
        log_every=max(args.train_steps // 4, 1), precision="float32", compile_mode="xla",
        verbose=2)
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    flops_per_seq = flops.training_flops(config, args.seq_length, args.max_predictions)
    print(f"=== {run.name}: lr {run.learning_rate}, {flops.count_params(config, True):,} params, "
          f"{flops_per_seq / 1e9:.3f} GFLOP/seq/step", flush=True)
    start = time.time()
    diverged = None
    try:
        model, throughput, results = trainer.pretrain(
            config, settings, tf.distribute.get_strategy(), train_dataset_fn, validation)
        step = int(model.optimizer.iterations.numpy())
    except FloatingPointError as error:  # NaN guard of the trainer's checkpoint callback.
        diverged, results, throughput, step = str(error), None, None, None
    wall = time.time() - start
    summary = {
        "name": run.name, "group": run.group, "family": run.family, "size": run.size,
        "preset_family": run.preset_family, "learning_rate": run.learning_rate,
        "config": config.to_dict(),
        "params_with_heads": flops.count_params(config, True),
        "params_encoder": flops.count_params(config),
        "train_steps": args.train_steps, "step": step, "batch_size": args.batch_size,
        "seq_length": args.seq_length, "max_predictions_per_seq": args.max_predictions,
        "warmup_steps": args.warmup_steps, "optimizer": "lamb",
        "tokens": args.train_steps * args.batch_size * args.seq_length,
        "training_flops_per_sequence": flops_per_seq,
        "training_flops": flops_per_seq * args.train_steps * args.batch_size,
        "wall_seconds": wall,  # pretrain() call: build, XLA compile, training, validation
        "diverged": diverged,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(),
    }
    if throughput is not None and throughput.history:
        summary.update(throughput.history[-1])
    if results:
        summary.update({f"validation_{k}": float(v) for k, v in results.items()})
    with open(summary_path(args, run) + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(summary_path(args, run) + ".tmp", summary_path(args, run))
    print(f"=== {run.name}: validation MLM loss {summary.get('validation_mlm_loss')}, "
          f"{wall:.0f}s wall{' DIVERGED' if diverged else ''}", flush=True)


def selected_runs(args):
    runs = all_runs(args.bert_lr, args.groupbert_lr)
    if args.groups:
        runs = [r for r in runs if r.group in args.groups]
    if args.only:
        runs = [r for r in runs if r.name in args.only]
    return runs


def train(args):
    prepare(args)
    pending = [r for r in selected_runs(args) if not os.path.exists(summary_path(args, r))]
    mine = pending[args.worker::args.num_workers]
    print(f"worker {args.worker}/{args.num_workers}: {len(mine)} of {len(pending)} pending runs: "
          f"{[r.name for r in mine]}", flush=True)
    if not mine:
        return
    train_dataset_fn, validation = _datasets(args)
    for run in mine:
        if os.path.exists(summary_path(args, run)):  # Another process finished it meanwhile.
            continue
        train_one(args, run, train_dataset_fn, validation)


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def load_results(args):
    out = []
    for run in all_runs(args.bert_lr, args.groupbert_lr):
        path = summary_path(args, run)
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
            result["group"] = run.group  # The current LR choice decides which runs are "main".
            out.append(result)
    return out


def _loss(r):
    value = r.get("validation_mlm_loss")
    return value if value is not None and math.isfinite(value) else float("nan")


def _interp_flops_at_loss(points, target):
    """FLOPs at which the piecewise log-linear loss(FLOPs) curve through `points` reaches
    `target` (None when the curve never gets that low, only linear inside the measured range)."""
    points = sorted(points)
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if (l0 - target) * (l1 - target) <= 0 and l0 != l1:
            t = (l0 - target) / (l0 - l1)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return None


def targets(results):
    """'GroupBERT reaches the validation loss of the next-larger BERT with <= 0.5x its FLOPs'."""
    main = {(r["family"], r["size"]): r for r in results if r["group"] == "main"}
    gb_points = [(main[("groupbert", s)]["training_flops"], _loss(main[("groupbert", s)]))
                 for s in SIZE_ORDER if ("groupbert", s) in main]
    rows = []
    for i, size in enumerate(SIZE_ORDER[:-1]):
        larger = SIZE_ORDER[i + 1]
        if ("groupbert", size) not in main or ("bert", larger) not in main:
            continue
        gb, bert = main[("groupbert", size)], main[("bert", larger)]
        needed = _interp_flops_at_loss(gb_points, _loss(bert))
        bound = needed is None and gb_points and min(gb_points)[1] <= _loss(bert)
        if bound:  # Even the smallest GroupBERT is below: its FLOPs are an upper bound.
            needed = min(gb_points)[0]
        rows.append({
            "groupbert": f"groupbert-{size}", "bert": f"bert-{larger}",
            "groupbert_loss": _loss(gb), "bert_loss": _loss(bert),
            "flops_ratio": gb["training_flops"] / bert["training_flops"],
            "reaches": _loss(gb) <= _loss(bert),
            "holds": _loss(gb) <= _loss(bert) and gb["training_flops"] <= 0.5 * bert["training_flops"],
            "groupbert_flops_to_match": needed,
            "flops_ratio_to_match": needed / bert["training_flops"] if needed else None,
            "flops_to_match_is_upper_bound": bool(bound),
        })
    return rows


def unigram_baseline(args):
    """Cross-entropy of the training split's unigram distribution on the validation masked tokens:
    the loss of a model that ignores context (add-0.01 smoothing; special tokens excluded)."""
    arrays = np.load(data_path(args))
    tokens = arrays["train_token_ids"][arrays["train_padding_mask"] == 1]
    counts = np.bincount(tokens, minlength=int(tokens.max()) + 1).astype(np.float64)
    counts[[0, 100, 101, 102, 103]] = 0  # [PAD] [UNK] [CLS] [SEP] [MASK] (bert-base-uncased)
    ids, weights = arrays["val_masked_lm_ids"], arrays["val_masked_lm_weights"]
    size = max(counts.size, int(ids.max()) + 1)
    counts = np.pad(counts, (0, size - counts.size)) + 0.01
    log_p = np.log(counts / counts.sum())
    return float(-(log_p[ids] * weights).sum() / weights.sum())


def _log_ticks(ax, values):
    """Readable ticks on a log axis that spans less than a decade (1, 1.5, 2, 3, 5, 7 x 10^k)."""
    import matplotlib.ticker
    lo, hi = min(values) / 1.1, max(values) * 1.1
    ticks = [m * 10 ** e for e in range(int(math.floor(math.log10(lo))),
                                         int(math.ceil(math.log10(hi))) + 1)
             for m in (1, 1.5, 2, 3, 5, 7) if lo <= m * 10 ** e <= hi]
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x:g}" if x < 1e4 else f"{x:.2g}".replace("e+", "e")))


def plot(args, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.figures, exist_ok=True)
    main = [r for r in results if r["group"] == "main"]
    styles = {"bert": ("tab:blue", "o", "BERT (post-norm, dropout 0.1)"),
              "groupbert": ("tab:red", "s", "GroupBERT (pre-norm, no dropout)")}
    unigram = unigram_baseline(args)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "training_flops", "training FLOPs"),
                            (axes[1], "wall_seconds",
                             "wall-clock s per run (shared 2-core CPU, 4-5 runs at once: noisy)")):
        for family, (color, marker, label) in styles.items():
            rows = sorted((r for r in main if r["family"] == family),
                          key=lambda r: SIZE_ORDER.index(r["size"]))
            if not rows:
                continue
            xs, ys = [r[key] for r in rows], [_loss(r) for r in rows]
            ax.plot(xs, ys, color=color, marker=marker, label=label)
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8, color=color)
        ax.axhline(unigram, color="grey", linestyle="--", linewidth=1,
                   label=f"unigram (no context): {unigram:.3f}")
        ax.set_xscale("log")
        _log_ticks(ax, [r[key] for r in main])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation MLM loss")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if main:
        r0 = main[0]
        fig.suptitle(f"Pre-training, Wikipedia leads, seq {r0['seq_length']}, batch "
                     f"{r0['batch_size']}, {r0['train_steps']} steps (same tokens for every model)",
                     fontsize=10)
    fig.tight_layout()
    path = os.path.join(args.figures, "pareto_loss_vs_flops.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")

    ablation = [r for r in results if r["group"] == "ablation"]
    base = {r["family"]: r for r in main if r["size"] == ABLATION_SIZE}
    if ablation and "bert" in base:
        order = ["bert+gffn", "bert+conv", "bert+prenorm", "bert+nodropout"]
        rows = [("BERT", base["bert"])]
        rows += [(r["family"].replace("bert+", "+ "), r)
                 for r in sorted(ablation, key=lambda r: order.index(r["family"])
                                 if r["family"] in order else len(order))]
        if "groupbert" in base:
            rows.append(("all = GroupBERT", base["groupbert"]))
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        ys = np.arange(len(rows))[::-1]
        reference = base["bert"]["training_flops"]
        colors = ["tab:blue"] + ["tab:green"] * (len(rows) - 2) + ["tab:red"]
        losses = [_loss(r) for _, r in rows]
        ax.barh(ys, losses, color=colors[:len(rows)], height=0.6)
        for y, (label, r), loss in zip(ys, rows, losses):
            ax.text(loss + 0.004, y, f"{loss:.3f}  ({r['training_flops'] / reference:.2f}x FLOPs, "
                    f"lr {r['learning_rate']:g})", va="center", fontsize=8)
        ax.set_yticks(ys, [label for label, _ in rows])
        ax.axvline(unigram, color="grey", linestyle="--", linewidth=1,
                   label=f"unigram: {unigram:.3f}")
        ax.set_xlim(min(losses) - 0.08, max(losses) + 0.12)
        ax.set_xlabel("validation MLM loss (lower is better)")
        ax.set_title(f"Ablation at {ABLATION_SIZE}: BERT + one GroupBERT enhancement each",
                     fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = os.path.join(args.figures, "pareto_ablation.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"wrote {path}")


def markdown(results):
    lines = ["| run | group | LR | params (+heads) | train FLOPs | val MLM loss | MLM acc | "
             "NSP acc | wall s | seq/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| `{r['name']}` | {r['group']} | {r['learning_rate']:g} | "
            f"{r['params_with_heads'] / 1e6:.2f} M | {r['training_flops']:.3e} | "
            f"{_loss(r):.4f} | {r.get('validation_mlm_accuracy', float('nan')):.4f} | "
            f"{r.get('validation_nsp_accuracy', float('nan')):.3f} | {r['wall_seconds']:.0f} | "
            f"{r.get('sequences_per_second', float('nan')):.1f} |"
            + (" diverged |" if r.get("diverged") else ""))
    lines.append("")
    lines.append("| GroupBERT | next-larger BERT | GB loss | BERT loss | FLOPs ratio GB/BERT | "
                 "GB reaches BERT loss | target (<= 0.5x FLOPs) | GroupBERT FLOPs to match "
                 "(log-interp. on the GB curve) / BERT FLOPs |")
    lines.append("|---|---|---:|---:|---:|---|---|---:|")
    for t in targets(results):
        ratio = f"{t['flops_ratio_to_match']:.2f}" if t["flops_ratio_to_match"] else "not reached"
        if t["flops_to_match_is_upper_bound"]:
            ratio = "<= " + ratio + " (smallest GroupBERT already lower)"
        lines.append(f"| `{t['groupbert']}` | `{t['bert']}` | {t['groupbert_loss']:.4f} | "
                     f"{t['bert_loss']:.4f} | {t['flops_ratio']:.2f} | "
                     f"{'yes' if t['reaches'] else 'no'} | {'holds' if t['holds'] else 'missed'} | "
                     f"{ratio} |")
    return "\n".join(lines)


def report(args):
    results = load_results(args)
    out = {"results": results, "targets": targets(results),
           "unigram_validation_mlm_loss": unigram_baseline(args)}
    os.makedirs(os.path.dirname(args.results_json) or ".", exist_ok=True)
    with open(args.results_json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.results_json} ({len(results)} runs); unigram baseline "
          f"{out['unigram_validation_mlm_loss']:.4f}")
    print(markdown(results))
    plot(args, results)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["prepare", "train", "report", "list"])
    parser.add_argument("--root", default="runs/pareto")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--results_json", default="runs/pareto/results.json")
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--vocab", default=None)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--max_predictions", type=int, default=10)
    parser.add_argument("--validation_fraction", type=float, default=0.01)
    parser.add_argument("--val_mask_draws", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=250)
    parser.add_argument("--warmup_steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bert_lr", type=float, default=BERT_LR)
    parser.add_argument("--groupbert_lr", type=float, default=GROUPBERT_LR)
    parser.add_argument("--groups", nargs="*", default=None, help="main / sweep / ablation")
    parser.add_argument("--only", nargs="*", default=None, help="run names")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "list":
        for run in selected_runs(args):
            done = os.path.exists(summary_path(args, run))
            print(f"{'done' if done else '    '} {run.name} lr={run.learning_rate:g} "
                  f"{dict(run.overrides)}")
    elif args.command == "prepare":
        prepare(args)
    elif args.command == "train":
        train(args)
    else:
        report(args)


if __name__ == "__main__":
    main(sys.argv[1:])
