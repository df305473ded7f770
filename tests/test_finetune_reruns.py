"""Fine-tuning run folders: the best result survives a worse rerun, an incomparable one is
refused without --overwrite_best, and --init_checkpoint takes the pre-training run's
recorded config (no --config)."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CLASS_VOCAB, sentiment_settings, tiny_config
from training import finetune, run_folder
from groupbert_tf.models import GroupBertPretrainer


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_a_worse_rerun_keeps_the_best_and_another_task_needs_overwrite_best(tmp_path):
    first = sentiment_settings(tmp_path)
    train, dev, model_dir = first.train_file, first.eval_file, first.model_dir
    best_dir = os.path.join(model_dir, "best")

    def settings(**changes):
        return dataclasses.replace(first, **changes)

    good = finetune.run(settings())
    assert good["best"] >= 0.9 and not good["best_from_previous_run"], good["history"]
    kept = _files(best_dir)

    # A rerun that learns nothing (and is worse every epoch) leaves best/ untouched and ends
    # with the previous run's best weights.
    worse = finetune.run(settings(learning_rate=1e-9, epochs=1, seed=5))
    assert max(h["val_accuracy"] for h in worse["history"]) < good["best"], worse["history"]
    assert worse["best"] == good["best"] and worse["best_from_previous_run"]
    assert worse["best_epoch"] is None
    assert _files(best_dir) == kept
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f)["best"] == good["best"]

    # Other labels: not comparable (and the head has another shape): refused, naming them.
    relabelled = tmp_path / "train_relabelled.tsv"
    relabelled.write_text(open(train).read().replace("\tpos", "\tgood").replace("\tneg", "\tbad"))
    dev_relabelled = tmp_path / "dev_relabelled.tsv"
    dev_relabelled.write_text(open(dev).read().replace("\tpos", "\tgood").replace("\tneg", "\tbad"))
    other = settings(train_file=str(relabelled), eval_file=str(dev_relabelled), epochs=1)
    with pytest.raises(ValueError) as error:
        finetune.run(other)
    message = str(error.value)
    assert f"{best_dir} holds the best result of another run" in message
    assert "labels (['neg', 'pos'] -> ['bad', 'good'])" in message and "--overwrite_best" in message
    assert _files(best_dir) == kept
    assert open(os.path.join(model_dir, "labels.txt")).read() == "neg\npos\n"

    replaced = finetune.run(settings(train_file=str(relabelled), eval_file=str(dev_relabelled),
                                     epochs=1, overwrite_best=True))
    assert not replaced["best_from_previous_run"] and replaced["best_epoch"] == 1
    assert _files(best_dir) != kept
    assert open(os.path.join(model_dir, "labels.txt")).read() == "bad\ngood\n"
    assert run_folder.read_config(model_dir).vocab_size == len(CLASS_VOCAB)


def test_init_checkpoint_reads_the_recorded_config(tmp_path):
    config = tiny_config(vocab_size=len(CLASS_VOCAB), num_layers=1)
    pretrainer = GroupBertPretrainer(config=config)
    run = tmp_path / "pretrain"
    tf.train.CheckpointManager(tf.train.Checkpoint(model=pretrainer), str(run / "checkpoints"),
                               max_to_keep=1).save(checkpoint_number=3)
    run_folder.write_records(str(run), config, {})
    settings = finetune.FinetuneSettings(task="classification", train_file="", eval_file="",
                                         model_dir=str(tmp_path / "ft"),
                                         init_checkpoint=str(run))
    encoder, _, how = finetune.build_encoder(settings)  # No config given.
    assert "ckpt-3" in how
    assert encoder.config == config.replace(hidden_dropout=0.1, attention_dropout=0.1)
    for ours, theirs in zip(encoder.weights, pretrainer.encoder.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # A checkpoint prefix inside the run folder finds the record too.
    prefix = str(run / "checkpoints" / "ckpt-3")
    encoder, _, _ = finetune.build_encoder(
        finetune.FinetuneSettings(task="classification", train_file="", eval_file="",
                                  model_dir=str(tmp_path / "ft"), init_checkpoint=prefix))
    assert encoder.config.num_layers == 1
    # A --config that contradicts the record is refused by name, not by a shape error.
    with pytest.raises(ValueError, match=r"num_layers \(1 -> 2\)"):
        finetune.build_encoder(finetune.FinetuneSettings(
            task="classification", train_file="", eval_file="", model_dir=str(tmp_path / "ft"),
            init_checkpoint=str(run), config=tiny_config(vocab_size=len(CLASS_VOCAB))))


def _best_folder(folder, identity, value):
    folder.mkdir()
    tf.train.Checkpoint(v=tf.Variable(np.ones([256, 256], np.float32))).write(
        str(folder / "best"))
    (folder / "best.json").write_text(json.dumps({"epoch": 2, "val_accuracy": value,
                                                  "run": identity}))


def test_best_checkpoint_reads_the_previous_best_and_names_a_broken_one(tmp_path):
    identity = {"task": "classification", "labels": ["neg", "pos"]}
    _best_folder(tmp_path / "best", identity, 0.75)
    (tmp_path / "best" / "best_temp").mkdir()  # A save killed midway.
    best = finetune.BestCheckpoint(str(tmp_path / "best"), "val_accuracy", identity)
    assert best.best == 0.75 and best.previous["epoch"] == 2 and best.best_epoch is None
    assert not (tmp_path / "best" / "best_temp").exists()
    with pytest.raises(ValueError, match=r"labels \(\['neg', 'pos'\] -> \['a', 'b'\]\)"):
        finetune.BestCheckpoint(str(tmp_path / "best"), "val_accuracy",
                                {**identity, "labels": ["a", "b"]})
    with open(tmp_path / "best" / "best.data-00000-of-00001", "r+b") as f:
        f.truncate(64)
    with pytest.raises(ValueError) as error:
        finetune.BestCheckpoint(str(tmp_path / "best"), "val_accuracy", identity)
    assert "best cannot be read" in str(error.value) and "--overwrite_best" in str(error.value)
    replacing = finetune.BestCheckpoint(str(tmp_path / "best"), "val_accuracy", identity,
                                        overwrite=True)
    assert replacing.previous is None and replacing.best == -np.inf
