"""Training from TFRecord shards: the resumed stream, and FILE vs DATA sharding."""

import numpy as np
import pytest
import tensorflow as tf

from training import strategy as strategy_lib
from training.data import tfrecord

S, P = 8, 2


def _write_shards(folder, num_shards, per_shard):
    """Shards whose example k carries the id k in its first token."""
    for shard in range(num_shards):
        ids = np.arange(shard * per_shard, (shard + 1) * per_shard, dtype=np.int32)
        tokens = np.zeros((per_shard, S), np.int32)
        tokens[:, 0] = ids
        features = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens),
                    "padding_mask": np.ones_like(tokens),
                    "masked_lm_positions": np.zeros((per_shard, P), np.int32)}
        labels = {"masked_lm_ids": np.zeros((per_shard, P), np.int32),
                  "masked_lm_weights": np.ones((per_shard, P), np.float32),
                  "next_sentence_labels": ids % 2}
        tfrecord.write_examples(str(folder / f"shard-{shard}.tfrecord"), features, labels)
    return str(folder / "shard-*.tfrecord")


def _ids(dataset, batches):
    return [f["token_ids"][:, 0].tolist() for f, _ in dataset.take(batches).as_numpy_iterator()]


@pytest.mark.parametrize("shuffle", [True, False])
def test_resumed_stream_continues_where_the_run_stopped(tmp_path, shuffle):
    pattern = _write_shards(tmp_path, num_shards=5, per_shard=12)
    full = _ids(tfrecord.training_dataset(pattern, S, P, 8, shuffle=shuffle, seed=3,
                                          shuffle_buffer=20), 20)  # Past one epoch (60).
    resumed = _ids(tfrecord.training_dataset(pattern, S, P, 8, shuffle=shuffle, seed=3,
                                             shuffle_buffer=20, start_batch=13), 7)
    assert resumed == full[13:]
    first_epoch = [i for batch in full for i in batch][:60]
    assert sorted(first_epoch) == list(range(60))  # Every example once per epoch.
    round_robin = [shard * 12 + k for k in range(12) for shard in range(5)]  # 5 files open.
    assert (first_epoch == round_robin) != shuffle


def test_file_sharding_needs_a_file_per_worker(tmp_path):
    policy = tf.data.experimental.AutoShardPolicy
    assert tfrecord.shard_policy(4, 4) == policy.FILE
    assert tfrecord.shard_policy(3, 4) == policy.DATA
    assert tfrecord.shard_policy(8, 1) == policy.DATA
    pattern = _write_shards(tmp_path, num_shards=4, per_shard=6)
    for workers, expected in ((2, policy.FILE), (5, policy.DATA)):
        dataset = tfrecord.training_dataset(pattern, S, P, 4, num_workers=workers)
        assert dataset.options().experimental_distribute.auto_shard_policy == expected


def test_file_sharded_resume_skips_a_workers_share(tmp_path):
    """Under FILE sharding a worker consumes global_batch / workers records per step."""
    pattern = _write_shards(tmp_path, num_shards=4, per_shard=6)
    one = tfrecord.training_dataset(pattern, S, P, 4, num_workers=1, shuffle=False,
                                    start_batch=3)
    two = tfrecord.training_dataset(pattern, S, P, 4, num_workers=2, shuffle=False,
                                    start_batch=3)
    stream = [i for b in _ids(tfrecord.training_dataset(pattern, S, P, 4, shuffle=False), 6)
              for i in b]
    assert _ids(one, 1)[0] == stream[12:16]
    assert _ids(two, 1)[0] == stream[6:10]


def test_num_workers_of_local_strategies():
    assert strategy_lib.num_workers(tf.distribute.get_strategy()) == 1


@pytest.mark.slow
def test_multi_worker_file_sharding_trains_on_each_workers_own_files(tmp_path):
    """Two real MWMS workers, three shards: FILE sharding gives worker 0 shards 0 and 2 and
    worker 1 shard 1, each consuming half the global batch from its own stream. One process
    reading those per-step batches from a single file must end with the same weights (DATA
    sharding would have mixed all three shards into every batch instead)."""
    import json

    from tests import test_distributed as harness

    rng = np.random.default_rng(1)
    n, seq, p = 48, harness.SEQ, harness.PREDICTIONS
    lengths = rng.integers(seq // 2, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    tokens = rng.integers(1000, 30522, (n, seq)) * mask
    positions = np.stack([np.sort(rng.choice(np.arange(1, k), p, replace=False))
                          for k in lengths])
    examples = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens),
                "padding_mask": mask, "masked_lm_positions": positions,
                "masked_lm_ids": np.take_along_axis(tokens, positions, 1),
                "masked_lm_weights": np.ones((n, p), np.float32),
                "next_sentence_labels": rng.integers(0, 2, n)}

    def write(path, rows):
        flat = {k: v[rows] for k, v in examples.items()}
        features = {k: flat[k] for k in ("token_ids", "segment_ids", "padding_mask",
                                         "masked_lm_positions")}
        labels = {k: flat[k] for k in ("masked_lm_ids", "masked_lm_weights",
                                       "next_sentence_labels")}
        tfrecord.write_examples(str(path), features, labels)

    shards = [np.arange(16 * i, 16 * (i + 1)) for i in range(3)]
    (tmp_path / "shards").mkdir()
    for i, rows in enumerate(shards):
        write(tmp_path / "shards" / f"part-{i}.tfrecord", rows)
    steps, half = 3, harness.BATCH // 2
    worker0 = np.stack([shards[0], shards[2]], axis=1).reshape(-1)  # Interleaved reads.
    worker1 = shards[1]
    order = np.concatenate([np.concatenate([worker0[half * s: half * (s + 1)],
                                            worker1[half * s: half * (s + 1)]])
                            for s in range(steps)])
    write(tmp_path / "reference.tfrecord", order)
    overrides = tmp_path / "tiny.json"
    overrides.write_text(json.dumps(harness.TINY))

    sharded = {"tfrecord": str(tmp_path / "shards" / "part-*.tfrecord"),
               "overrides": str(overrides)}
    workers, _ = harness._worker_runs(sharded, tmp_path / "mw", steps)
    single = harness.Run({"tfrecord": str(tmp_path / "reference.tfrecord"),
                          "overrides": str(overrides)}, tmp_path, "single", steps,
                         ["--strategy=default"])
    runs = [*workers, single]
    for run, code in zip(runs, harness._run_all(runs)):
        assert code == 0, run.tail()
    reference = single.load_weights()
    assert harness._max_difference(workers[0].load_weights(), workers[1].load_weights()) == 0.0
    assert harness._max_difference(workers[0].load_weights(), reference) <= harness.TOLERANCE
