"""The Beam pre-training data pipeline (training.data.pretraining_pipeline and its CLI).

References: the in-memory pipeline (`create_examples`) for the examples, Google's masking
rule in closed form for the static masks, and a file reader for the shards' sha256.
"""

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from training.data import download, pretraining_data, static_masking

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 150 documents of the fetched Wikipedia corpus, split over two files."""
    with open(download.default_corpus_path(), encoding="utf-8") as f:
        blocks = f.read().split("\n\n")[:150]
    folder = tmp_path_factory.mktemp("corpus")
    paths = []
    for i, part in enumerate((blocks[:90], blocks[90:])):
        path = folder / f"part{i}.txt"
        path.write_text("\n\n".join(part) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def _run_pipeline(paths, output_dir, extra_options=(), **settings):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from training.data import pretraining_pipeline

    settings = pretraining_pipeline.Settings(vocab=download.default_vocab_path(), **settings)
    inputs = pretraining_pipeline.expand_inputs(paths)
    os.makedirs(output_dir)
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory",
                               "--direct_num_workers=1", *extra_options])
    with beam.Pipeline(options=options) as pipeline:
        pretraining_pipeline.build(pipeline, inputs, str(output_dir), settings)
    with open(os.path.join(output_dir, "manifest.json")) as f:
        return json.load(f)


def _records(output_dir):
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(output_dir, "examples-*.tfrecord")))
    return collections.Counter(r.numpy() for f in files for r in tf.data.TFRecordDataset(f))


def _unmasked_examples(output_dir, seq_length, max_predictions):
    """(token ids with the masked tokens put back, segment ids, NSP label) of every example."""
    from training.data import tfrecord

    files = sorted(glob.glob(os.path.join(output_dir, "examples-*.tfrecord")))
    out = collections.Counter()
    dataset = tfrecord.read_dataset(files, seq_length, max_predictions, check=False)
    for features, labels in dataset.as_numpy_iterator():
        ids = features["token_ids"].copy()
        used = labels["masked_lm_weights"] > 0
        ids[features["masked_lm_positions"][used]] = labels["masked_lm_ids"][used]
        out[(ids.tobytes(), features["segment_ids"].tobytes(),
             int(labels["next_sentence_labels"]))] += 1
    return out


def test_one_pool_holds_the_in_memory_pipelines_examples(corpus, tmp_path):
    from groupbert_tf import tokenization

    manifest = _run_pipeline(corpus, tmp_path / "out", seq_length=64, dupe_factor=2,
                             num_pools=1, shards_per_pool=3, seed=7)
    tokenizer = tokenization.BertTokenizer(download.default_vocab_path())
    documents = pretraining_data.tokenize_documents(pretraining_data.read_documents(corpus),
                                                    tokenizer)
    reference = pretraining_data.create_examples(documents, tokenizer, 64, 2, 0.1, seed=7)
    expected = collections.Counter(
        (reference["token_ids"][i].tobytes(), reference["segment_ids"][i].tobytes(),
         int(reference["next_sentence_labels"][i])) for i in range(len(reference["token_ids"])))
    assert _unmasked_examples(tmp_path / "out", 64, 20) == expected
    assert manifest["examples"] == len(reference["token_ids"])
    assert manifest["documents"] == len(documents)
    assert manifest["random_next"] == int(reference["next_sentence_labels"].sum())


def test_manifest_lists_every_shard_with_its_sha256(corpus, tmp_path):
    manifest = _run_pipeline(corpus, tmp_path / "out", seq_length=64, dupe_factor=1,
                             shards_per_pool=4)
    files = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "out" / "*")))
    assert files == [f"examples-00000-{i:03d}-of-00001-004.tfrecord" for i in range(4)] + [
        "manifest.json"]
    assert [s["file"] for s in manifest["shards"]] == files[:4]
    import hashlib

    for shard in manifest["shards"]:
        with open(tmp_path / "out" / shard["file"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
        assert shard["examples"] == shard["is_next"] + shard["random_next"]
    assert sum(_records(tmp_path / "out").values()) == manifest["examples"]
    assert manifest["settings"]["shards_per_pool"] == 4
    assert manifest["settings"]["seq_length"] == 64


@pytest.mark.slow
def test_shard_and_worker_counts_do_not_change_the_examples(corpus, tmp_path):
    one = _run_pipeline(corpus, tmp_path / "a", seq_length=64, dupe_factor=2, num_pools=3,
                        shards_per_pool=2)
    two = _run_pipeline(corpus, tmp_path / "b", ["--direct_running_mode=multi_processing",
                                                 "--direct_num_workers=2"],
                        seq_length=64, dupe_factor=2, num_pools=3, shards_per_pool=5)
    records = _records(tmp_path / "a")
    assert records == _records(tmp_path / "b")  # Byte for byte, masks included.
    assert sum(records.values()) == one["examples"] == two["examples"] > 100
    _run_pipeline(corpus, tmp_path / "c", seq_length=64, dupe_factor=2,
                  num_pools=3, shards_per_pool=2, seed=1)
    assert _records(tmp_path / "c") != records


def test_pools_keep_the_random_next_share(corpus, tmp_path):
    """Per-pool NSP against the whole corpus (Google's): the NotNext share is a property of
    the documents' lengths, not of where the random segment comes from."""
    whole = _run_pipeline(corpus, tmp_path / "a", seq_length=64, dupe_factor=2, num_pools=1)
    pools = _run_pipeline(corpus, tmp_path / "b", seq_length=64, dupe_factor=2, num_pools=4)
    share = lambda m: m["random_next"] / m["examples"]
    n = whole["examples"]
    assert abs(share(pools) - share(whole)) < 4 * np.sqrt(0.25 / n)
    assert abs(pools["examples"] - n) < 0.05 * n


def _masker_inputs(rng, n=400, seq=48):
    token_ids = np.zeros((n, seq), np.int32)
    padding = np.zeros((n, seq), np.int32)
    for row in range(n):
        length = rng.randint(6, seq)
        sep = rng.randint(2, length - 3)
        token_ids[row, :length] = [101] + [rng.randint(1000, 1999) for _ in range(length - 1)]
        token_ids[row, sep] = token_ids[row, length - 1] = 102
        padding[row, :length] = 1
    return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
            "padding_mask": padding, "next_sentence_labels": np.zeros(n, np.int32)}


def test_static_masks_follow_googles_rule():
    rng = random.Random(0)
    examples = _masker_inputs(rng)
    masker = static_masking.StaticMasker(vocab_size=30522, mask_id=103, special_ids=[0, 101, 102],
                                         max_predictions_per_seq=5, masked_lm_prob=0.15)
    out = masker(examples, random.Random(1))
    lengths = examples["padding_mask"].sum(1)
    outcomes = collections.Counter()
    for row, length in enumerate(lengths):
        count = min(5, max(1, int(round(length * 0.15))))
        weights = out["masked_lm_weights"][row]
        assert weights.tolist() == [1.0] * count + [0.0] * (5 - count)
        positions = out["masked_lm_positions"][row, :count]
        assert np.all(np.diff(positions) > 0)
        original = examples["token_ids"][row]
        assert set(original[positions].tolist()).isdisjoint({101, 102})
        np.testing.assert_array_equal(out["masked_lm_ids"][row, :count], original[positions])
        unmasked = np.setdiff1d(np.arange(len(original)), positions)
        np.testing.assert_array_equal(out["token_ids"][row, unmasked], original[unmasked])
        for p in positions:
            new = out["token_ids"][row, p]
            outcomes["mask" if new == 103 else "same" if new == original[p] else "random"] += 1
    total = sum(outcomes.values())
    for kind, rate in (("mask", 0.8), ("same", 0.1), ("random", 0.1)):
        assert abs(outcomes[kind] / total - rate) < 4 * np.sqrt(rate * (1 - rate) / total), kind
    again = masker(examples, random.Random(1))
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])


def _cli(*args, **popen):
    cmd = [sys.executable, "-m", "training.create_pretraining_data",
           f"--vocab={download.default_vocab_path()}", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _error_line(proc):
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return stderr.strip().splitlines()[-1]


def test_bad_inputs_are_named(tmp_path, corpus):
    from training.data import pretraining_pipeline as pp

    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("First document.\n\nCaf\u00e9 au lait.\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t\n")
    bad_json = tmp_path / "docs.jsonl"
    bad_json.write_text('{"text": "One document."}\n{"body": "no text field"}\n')
    unreadable = tmp_path / "folder.txt"
    unreadable.mkdir()
    cases = {
        bad_utf8: f"Corpus file {bad_utf8} is not UTF-8 text (line 3",
        blank: f"Corpus file {blank} holds no text",
        bad_json: f"Corpus file {bad_json} line 2 has no string field 'text'",
        unreadable: f"Corpus file {unreadable} cannot be read",
    }
    for path, expected in cases.items():
        with pytest.raises(pp.CorpusError) as error:
            for file, _ in pp.expand_inputs([corpus[0], str(path)]):
                pp.check_input(file, pp.input_format(file), "text")
        assert str(error.value).startswith(expected)
    with pytest.raises(pp.CorpusError, match=f"Corpus file {empty} is empty"):
        pp.expand_inputs([str(empty)])
    with pytest.raises(pp.CorpusError, match="matches no file"):
        pp.expand_inputs([str(tmp_path / "none-*.txt")])


@pytest.mark.slow
def test_cli_bad_input_gets_one_line_and_no_output_folder(tmp_path, corpus):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\u00e9 au lait.\n".encode("latin-1"))
    line = _error_line(_cli(f"--input={corpus[0]},{bad}", f"--output_dir={tmp_path / 'out'}"))
    assert line == (f"create_pretraining_data: error: Corpus file {bad} is not UTF-8 text "
                    "(line 1: invalid continuation byte)")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_cli_killed_run_leaves_only_whole_shards_and_a_rerun_refuses(tmp_path):
    import tensorflow as tf

    out = tmp_path / "out"
    proc = _cli(f"--input={download.default_corpus_path()}", f"--output_dir={out}",
                "--dupe_factor=2", "--shards_per_pool=2", "--direct_num_workers=2",
                start_new_session=True)
    deadline = time.monotonic() + 600
    while not glob.glob(str(out / "examples-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    shards = glob.glob(str(out / "examples-*"))
    assert shards and not os.path.exists(out / "manifest.json")
    for shard in shards:  # A truncated TFRecord fails with DataLossError.
        assert sum(1 for _ in tf.data.TFRecordDataset(shard)) > 0
    line = _error_line(_cli(f"--input={download.default_corpus_path()}", f"--output_dir={out}"))
    assert line.startswith(f"create_pretraining_data: error: --output_dir {out} is not empty")


def test_packed_rows_hold_the_same_pairs(corpus, tmp_path):
    """Packed output: unpacking the rows (masked tokens put back) gives the Google-format
    output's pairs; rows pass the packed-format checks and hold at most k pairs."""
    from training.data import tfrecord

    args = dict(seq_length=64, dupe_factor=1, num_pools=2, shards_per_pool=2)
    google = _run_pipeline(corpus, tmp_path / "google", **args)
    packed = _run_pipeline(corpus, tmp_path / "packed", max_sequences_per_pack=3,
                           max_predictions_per_seq=30, **args)
    assert packed["format"] == "graphcore-packed-bert-pretraining"
    assert packed["pairs"] == google["examples"] > packed["examples"]
    pairs = collections.Counter()
    files = sorted(glob.glob(str(tmp_path / "packed" / "examples-*.tfrecord")))
    rows = tfrecord.read_dataset(files, 64, 30, max_sequences_per_pack=3)  # Checks each row.
    for features, labels in rows.as_numpy_iterator():
        ids = features["token_ids"].copy()
        used = labels["masked_lm_weights"] > 0
        ids[features["masked_lm_positions"][used]] = labels["masked_lm_ids"][used]
        for slot in range(3):
            where = features["sequence_ids"] == slot + 1
            if not where.any():
                continue
            tokens = np.zeros(64, np.int32)
            segments = np.zeros(64, np.int32)
            tokens[: where.sum()] = ids[where]
            segments[: where.sum()] = features["segment_ids"][where]
            pairs[(tokens.tobytes(), segments.tobytes(),
                   int(labels["next_sentence_labels"][slot]))] += 1
    assert pairs == _unmasked_examples(tmp_path / "google", 64, 20)


def test_beam_options_pass_through_and_typos_are_refused():
    from training import create_pretraining_data as cli

    options = cli.beam_options(["--direct_num_workers=3", "--project=p"]).get_all_options()
    assert options["runner"] == "FnApiRunner" and options["direct_num_workers"] == 3
    assert options["direct_running_mode"] == "multi_processing" and options["project"] == "p"
    with pytest.raises(ValueError, match="Unknown flag --seq_lenght"):
        cli.beam_options(["--seq_lenght=64"])
