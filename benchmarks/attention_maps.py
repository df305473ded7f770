"""Attention by relative position: does the conv module free GroupBERT's attention from local work?

Loads the seed-0 BERT and GroupBERT checkpoints pre-trained by `benchmarks.pareto` (their
model_dirs under `--root`), runs `GroupBertEncoder.attention_probabilities` on the held-out
validation rows of the pareto data file (packed; the masked tokens put back), and measures,
over real token pairs of the same packed sequence only:

  profile[d]   mean attention probability from a query at i to the key at i + d, averaged over
               queries, heads, layers and sequences (pairs where i + d is a real token)
  local mass   mean over (query, head, layer) of the attention mass on keys within +-3 of the
               query (diagonal included); `uniform` is the same for uniform attention over the
               query's sequence, as a reference for how local "no preference" is
  self mass    the mass on the query's own position
  special mass the mass on [CLS] and [SEP] keys (a "no-op" sink)

and draws:
  docs/figures/attention_at_scale_relative_position.png
      the profile, BERT vs GroupBERT, per size
  docs/figures/attention_at_scale_maps.png
      head-averaged full maps, every layer, for a few validation sequences (the largest size)

    python -m benchmarks.attention_maps [--sizes 4x256 8x512] [--num_sequences 256]
"""

import argparse
import json
import os
import sys

import numpy as np

from benchmarks import pareto

MAX_OFFSET = 16
LOCAL = 3
SPECIAL_IDS = (101, 102)  # [CLS], [SEP] in the bert-base-uncased vocab


def load_encoder(model_dir, config):
    """The trained encoder of a pareto run, restored the way `trainer.pretrain` resumes.

    The model is built with its optimizer and the full training state is restored
    (`assert_existing_objects_matched`). Checkpoints written before commit 4f458fe reach the
    encoder's variables only through the optimizer (`optimizer/_trainable_variables/...`), not
    under `model/encoder`; restoring model and optimizer together reads both layouts.
    """
    from training import trainer

    settings = trainer.TrainingSettings(model_dir=model_dir, train_steps=1, global_batch_size=1,
                                        warmup_steps=0,
                                        seq_length=1, max_predictions_per_seq=1)
    model = trainer.build_model(config, settings)
    manager, how = trainer.restore_or_initialize(model, model_dir)
    if manager.latest_checkpoint is None:
        raise FileNotFoundError(f"No checkpoint in {model_dir}/checkpoints: run benchmarks.pareto "
                                "train first")
    return model.encoder, manager.latest_checkpoint


def unmasked(features, labels, count):
    """The first `count` validation rows with their original tokens at the masked positions."""
    rows = {k: v[:count].copy() for k, v in features.items()
            if k in ("token_ids", "segment_ids", "padding_mask", "sequence_ids", "cls_positions")}
    positions = features["masked_lm_positions"][:count]
    ids, weights = labels["masked_lm_ids"][:count], labels["masked_lm_weights"][:count]
    for row in range(len(positions)):
        real = weights[row] > 0
        rows["token_ids"][row, positions[row][real]] = ids[row][real]
    return rows


def attention_statistics(encoder, inputs, batch_size=32):
    """Profile by relative offset, local (+-LOCAL) mass, self mass, uniform local mass;
    and the per-layer head-averaged maps of the first sequences."""
    n, s = inputs["token_ids"].shape
    offsets = np.arange(-MAX_OFFSET, MAX_OFFSET + 1)
    prob_sum = np.zeros(len(offsets))
    pair_count = np.zeros(len(offsets))
    local_sum = self_sum = uniform_sum = special_sum = rows = 0.0
    per_layer_local = None
    first_maps = None
    idx = np.arange(s)
    rel = idx[None, :] - idx[:, None]  # [query, key] -> key - query
    band = np.abs(rel) <= LOCAL
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
        probs = [np.asarray(p) for p in encoder.attention_probabilities(batch)]  # L x [B,H,S,S]
        probs = np.stack(probs, axis=1)  # [B, L, H, S, S]
        mask = batch["padding_mask"].astype(bool)  # [B, S]
        sequence = batch.get("sequence_ids", batch["padding_mask"])  # Packed rows: one id each.
        # [B, Sq, Sk]: both real and in the same packed sequence.
        pair = mask[:, :, None] & mask[:, None, :] & (sequence[:, :, None] == sequence[:, None, :])
        query = mask  # [B, S]
        if first_maps is None:
            first_maps = probs[:4].mean(axis=2), mask[:4]  # [b, L, S, S]
        b, layers, heads = probs.shape[:3]
        # Profile: for each offset, sum of probs on real pairs / number of (real pair x L x H).
        for k, d in enumerate(offsets):
            sel = pair & (rel == d)[None]
            prob_sum[k] += (probs * sel[:, None, None]).sum()
            pair_count[k] += sel.sum() * layers * heads
        local = (probs * (band[None] & pair)[:, None, None]).sum(-1)  # [B, L, H, S]
        diag = np.einsum("blhii->blhi", probs)
        qmask = query[:, None, None, :]
        special = np.isin(batch["token_ids"], SPECIAL_IDS) & mask  # [B, Sk] [CLS] / [SEP]
        special_sum += ((probs * special[:, None, None, None, :]).sum(-1) * qmask).sum()
        local_sum += (local * qmask).sum()
        self_sum += (diag * qmask).sum()
        layer_local = (local * qmask).sum(axis=(0, 2, 3))
        per_layer_local = layer_local if per_layer_local is None else per_layer_local + layer_local
        keys = pair.sum(-1)  # [B, S] keys of each query's own sequence
        within = (band[None] & pair).sum(-1)  # [B, S] of those, within +-LOCAL
        uniform_sum += ((within / np.maximum(keys, 1)) * query).sum() * layers * heads
        rows += query.sum() * layers * heads
    per_layer_rows = rows / layers
    return {
        "offsets": offsets.tolist(),
        "profile": (prob_sum / np.maximum(pair_count, 1)).tolist(),
        "local_mass": local_sum / rows,
        "self_mass": self_sum / rows,
        "special_token_mass": special_sum / rows,
        "uniform_local_mass": uniform_sum / rows,
        "local_mass_per_layer": (per_layer_local / per_layer_rows).tolist(),
        "sequences": int(n),
    }, first_maps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/pareto_at_scale")
    parser.add_argument("--results", default="docs/results/pareto")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--sizes", nargs="*", default=list(pareto.SIZE_ORDER))
    parser.add_argument("--num_sequences", type=int, default=256)
    parser.add_argument("--output_json", default="docs/results/pareto/attention/attention.json")
    args = parser.parse_args(argv)
    experiment = pareto.parse_args(["list", "--root", args.root, "--results", args.results])

    import keras
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, (features, labels), _ = pareto.load_data(experiment)
    inputs = unmasked(features, labels, args.num_sequences)
    runs = {r.name: r for r in pareto.all_runs(experiment)}
    runs = {key: runs[name] for key, name in pareto.main_run_names(experiment, 0).items()}
    stats, maps = {}, {}
    for size in args.sizes:
        for family in ("bert", "groupbert"):
            run = runs[(family, size)]
            model_dir = os.path.join(args.root, run.name)
            keras.backend.clear_session()
            encoder, path = load_encoder(model_dir, run.config())
            stats[run.name], maps[(family, size)] = attention_statistics(encoder, inputs)
            st = stats[run.name]
            st.update(family=family, size=size, checkpoint=path)
            print(f"{run.name}: mass within +-{LOCAL}: {st['local_mass']:.3f} (uniform "
                  f"{st['uniform_local_mass']:.3f}), self {st['self_mass']:.3f}, [CLS]/[SEP] "
                  f"{st['special_token_mass']:.3f}, per layer "
                  f"{[round(x, 3) for x in st['local_mass_per_layer']]}", flush=True)
    os.makedirs(os.path.dirname(args.output_json), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump(stats, f, indent=2)
    print(f"wrote {args.output_json}")

    os.makedirs(args.figures, exist_ok=True)
    fig, axes = plt.subplots(1, len(args.sizes), figsize=(4.2 * len(args.sizes), 3.6),
                             squeeze=False)
    for ax, size in zip(axes[0], args.sizes):
        for family, color in (("bert", "tab:blue"), ("groupbert", "tab:red")):
            st = stats[runs[(family, size)].name]
            ax.plot(st["offsets"], st["profile"], color=color, marker=".",
                    label=f"{'BERT' if family == 'bert' else 'GroupBERT'} "
                          f"(+-{LOCAL}: {st['local_mass']:.2f})")
        ax.axvspan(-LOCAL - 0.5, LOCAL + 0.5, color="grey", alpha=0.12)
        ax.set_title(f"{size}", fontsize=10)
        ax.set_xlabel("key position - query position")
        ax.set_ylabel("mean attention probability")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Attention by relative position (real tokens; mean over heads, layers, "
                 f"{len(inputs['token_ids'])} validation sequences)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.figures, "attention_at_scale_relative_position.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")

    size = args.sizes[-1]
    examples = 2
    b_maps, mask = maps[("bert", size)]
    g_maps, _ = maps[("groupbert", size)]
    layers = b_maps.shape[1]
    fig, axes = plt.subplots(2 * examples, layers, figsize=(2.6 * layers, 2.6 * 2 * examples),
                             squeeze=False)
    for e in range(examples):
        n_real = int(mask[e].sum())
        for row, (name, m) in enumerate((("BERT", b_maps), ("GroupBERT", g_maps))):
            for layer in range(layers):
                ax = axes[2 * e + row][layer]
                ax.imshow(m[e, layer, :n_real, :n_real], cmap="viridis", vmin=0)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{name}-{size}, seq {e}, layer {layer + 1}", fontsize=8)
    fig.suptitle("Head-averaged attention\n(rows: queries, cols: keys; real tokens)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.figures, "attention_at_scale_maps.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
