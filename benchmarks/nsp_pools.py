"""NSP pair statistics with per-pool "random next" against one pool (Google's, docs/data.md).

Google's `create_pretraining_data.py` draws the random next segment from any document of
the run's input; the Beam pipeline draws it from the document's pool. This builds the pairs
of each pool with the pipeline's own functions (`pool_of`, `pool_rng`, `create_pairs`) and
compares the statistics that NSP and MLM see.

  .venv/bin/python -m benchmarks.nsp_pools --corpus=data/wiki/documents.txt --pools=1,4,16
"""

import argparse
import json

import numpy as np

from groupbert_tf import tokenization
from training.data import download, pretraining_data, pretraining_pipeline


def pair_statistics(documents, sources, num_pools, seq_length, seed):
    """Pairs of all pools -> NotNext share, segment lengths, and the chance that a random
    next segment comes from another source file (from each pool's mix of sources)."""
    pools = {}
    for index in range(len(documents)):
        pools.setdefault(pretraining_pipeline.pool_of(index, num_pools), []).append(index)
    a_len, b_len, labels, other_source = [], [], [], []
    for pool, members in sorted(pools.items()):
        rng = pretraining_pipeline.pool_rng(seed, pool, num_pools)
        pairs = pretraining_data.create_pairs([documents[i] for i in members], seq_length, rng)
        _, counts = np.unique([sources[i] for i in members], return_counts=True)
        share = counts / counts.sum()
        for tokens_a, tokens_b, label in pairs:
            a_len.append(len(tokens_a))
            b_len.append(len(tokens_b))
            labels.append(label)
        other_source.extend([1 - float(np.sum(share**2))] * len(pairs))
    return {"pools": num_pools, "pairs": len(labels),
            "random_next_share": round(float(np.mean(labels)), 4),
            "mean_tokens_a": round(float(np.mean(a_len)), 2),
            "mean_tokens_b": round(float(np.mean(b_len)), 2),
            "mean_pair_tokens": round(float(np.mean(np.add(a_len, b_len))), 2),
            "p_random_next_from_other_source": round(float(np.mean(other_source)), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=download.default_corpus_path(),
                        help="comma-separated corpus files")
    parser.add_argument("--pools", default="1,4,16")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    args = parser.parse_args()
    tokenizer = tokenization.BertTokenizer(download.default_vocab_path())
    documents, sources = [], []
    for path in args.corpus.split(","):
        docs = pretraining_data.tokenize_documents(pretraining_data.read_documents(path),
                                                   tokenizer)
        documents.extend(docs)
        sources.extend([path] * len(docs))
    for seed in map(int, args.seeds.split(",")):
        for pools in map(int, args.pools.split(",")):
            stats = pair_statistics(documents, sources, pools, args.seq_length, seed)
            print(json.dumps({"seed": seed, **stats}))


if __name__ == "__main__":
    main()
