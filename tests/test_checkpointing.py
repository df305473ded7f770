"""Checkpoint integrity (training/checkpointing.py, trainer.restore_or_initialize): a broken
checkpoint is named and skipped for the newest intact one, never a silent restart; rotation
never deletes the last intact checkpoint; a save killed by SIGKILL leaves nothing behind."""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import keras
from training import checkpointing, trainer

from tests.test_trainer import _settings, _weights, small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _variable_checkpoints(directory, steps=(2, 4, 6)):
    """A CheckpointManager folder of one variable whose value is the step number."""
    variable = tf.Variable(np.zeros([64, 64], np.float32))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(directory),
                                         max_to_keep=3)
    for step in steps:
        variable.assign(np.full([64, 64], step, np.float32))
        manager.save(checkpoint_number=step)
    return variable


def _restored_value(prefix):
    return int(tf.train.load_checkpoint(prefix).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE")[0, 0])


def _data_file(prefix):
    return prefix + ".data-00000-of-00001"


@pytest.mark.parametrize("damage", ["index_deleted", "data_truncated", "data_corrupted",
                                    "data_deleted"])
def test_unreadable_newest_is_skipped_named_and_set_aside(tmp_path, caplog, damage):
    directory = str(tmp_path)
    _variable_checkpoints(directory)
    newest = os.path.join(directory, "ckpt-6")
    if damage == "index_deleted":
        os.remove(newest + ".index")
    elif damage == "data_truncated":
        with open(_data_file(newest), "r+b") as f:
            f.truncate(100)
    elif damage == "data_corrupted":
        with open(_data_file(newest), "r+b") as f:
            f.seek(1000)
            f.write(b"\xff\x00\xff")
    else:
        os.remove(_data_file(newest))
    # Read-only look-up (what --init_checkpoint and export do): skipped, nothing moved.
    with caplog.at_level(logging.WARNING):
        assert checkpointing.newest_intact(directory) == os.path.join(directory, "ckpt-4")
    assert any(newest in r.getMessage() and "cannot be read" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # The writer tidies: the broken files move to unreadable/, the state lists ckpt-2, -4.
    assert checkpointing.newest_intact(directory, tidy=True) == os.path.join(directory, "ckpt-4")
    assert not any(name.startswith("ckpt-6") for name in os.listdir(directory))
    assert os.listdir(os.path.join(directory, checkpointing.UNREADABLE))
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2",
                                                                              "ckpt-4"]
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-4")
    assert _restored_value(tf.train.latest_checkpoint(directory)) == 4


def test_no_readable_checkpoint_is_an_error_naming_each(tmp_path):
    directory = str(tmp_path)
    _variable_checkpoints(directory, steps=(2, 4))
    os.remove(os.path.join(directory, "ckpt-4.index"))
    with open(_data_file(os.path.join(directory, "ckpt-2")), "r+b") as f:
        f.truncate(10)
    with pytest.raises(checkpointing.UnreadableCheckpointError) as error:
        checkpointing.newest_intact(directory, tidy=True)
    message = str(error.value)
    assert "ckpt-4.index is missing" in message and "ckpt-2 cannot be read" in message
    assert "no readable checkpoint in " + directory in message


def test_empty_or_missing_folder_has_no_checkpoint(tmp_path):
    assert checkpointing.newest_intact(str(tmp_path)) is None
    assert checkpointing.newest_intact(str(tmp_path / "absent")) is None


def test_garbled_state_file_falls_back_to_the_files(tmp_path):
    directory = str(tmp_path)
    _variable_checkpoints(directory)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("model_checkpoint_path: {{{ not a text proto")
    assert checkpointing.newest_intact(directory) == os.path.join(directory, "ckpt-6")


def test_rotation_after_a_broken_newest_keeps_an_intact_checkpoint(tmp_path):
    """The pre-fix failure: ckpt-6's index deleted -> 'Started from random initialisation',
    then three saves rotated the intact ckpt-2 and ckpt-4 away. Now the run resumes from
    ckpt-4 with its weights, optimizer state and step, and every save keeps intact ones."""
    keras.utils.set_random_seed(0)
    settings = _settings(tmp_path)
    first = trainer.build_model(small_config(), settings)
    manager, _ = trainer.restore_or_initialize(first, settings.model_dir)
    saved = {}
    for step in (2, 4, 6):
        first.optimizer.iterations.assign(step)
        for variable in first.trainable_variables[:3]:
            variable.assign_add(tf.ones_like(variable))
        manager.save(checkpoint_number=step)
        saved[step] = _weights(first)
    directory = os.path.join(settings.model_dir, "checkpoints")
    os.remove(os.path.join(directory, "ckpt-6.index"))

    second = trainer.build_model(small_config(), settings)
    manager, how = trainer.restore_or_initialize(second, settings.model_dir)
    assert how.startswith("Resumed training state from ") and how.endswith("ckpt-4 at step 4")
    for restored, expected in zip(_weights(second), saved[4]):
        np.testing.assert_array_equal(restored, expected)
    for step in (8, 10, 12):
        second.optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)
        intact = [p for p in checkpointing.candidates(directory)
                  if os.path.exists(p + ".index")]
        assert len(intact) == 3  # ckpt-2, then ckpt-4 rotate out, each after a newer save.
        for prefix in intact:
            checkpointing.check_readable(prefix)
    assert sorted(os.path.basename(p) for p in checkpointing.candidates(directory)) == [
        "ckpt-10", "ckpt-12", "ckpt-8"]


_SAVER = """
import sys, tensorflow as tf
variable = tf.Variable(tf.zeros([4096, 4096]))  # 64 MB: each save takes a while
manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), sys.argv[1], 3)
step = 0
while True:
    step += 1
    variable.assign(tf.fill([4096, 4096], float(step)))
    manager.save(checkpoint_number=step)
    print(step, flush=True)
"""


def _kill_during_a_save(directory):
    """Starts the saver, SIGKILLs it while a save's `_temp` folder exists (after one full
    save); True if the kill landed before that save finished."""
    process = subprocess.Popen([sys.executable, "-c", _SAVER, directory], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            names = os.listdir(directory) if os.path.isdir(directory) else []
            if any(n.endswith("_temp") for n in names) and "ckpt-1.index" in names:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode == -signal.SIGKILL and any(
        n.endswith("_temp") for n in os.listdir(directory))


def test_sigkill_during_a_save_leaves_no_temp_folder_after_restart(tmp_path):
    directory = str(tmp_path / "checkpoints")
    # Polling can miss: the save may finish between the look and the kill. Try again.
    assert any(_kill_during_a_save(directory) for _ in range(4)), "no save caught in progress"
    newest = checkpointing.newest_intact(directory, tidy=True)
    assert not [n for n in os.listdir(directory) if "_temp" in n]
    checkpointing.check_readable(newest)
    assert _restored_value(newest) == int(newest.rsplit("-", 1)[1])


def test_init_checkpoint_and_export_look_ups_skip_a_broken_newest_without_moving_it(tmp_path):
    run = tmp_path / "run"
    _variable_checkpoints(run / "checkpoints", steps=(2, 4))
    with open(_data_file(str(run / "checkpoints" / "ckpt-4")), "r+b") as f:
        f.truncate(50)
    assert trainer.find_checkpoint(str(run)) == str(run / "checkpoints" / "ckpt-2")
    assert (run / "checkpoints" / "ckpt-4.index").exists()  # Read-only: nothing moved.
    with pytest.raises(checkpointing.UnreadableCheckpointError, match="ckpt-4 cannot be read"):
        trainer.find_checkpoint(str(run / "checkpoints" / "ckpt-4"))


def test_a_folder_of_only_unreadable_checkpoints_never_restarts_from_random(tmp_path):
    settings = _settings(tmp_path)
    _variable_checkpoints(tmp_path / "checkpoints", steps=(6,))
    os.remove(tmp_path / "checkpoints" / "ckpt-6.index")
    model = trainer.build_model(small_config(), settings)
    with pytest.raises(checkpointing.UnreadableCheckpointError) as error:
        trainer.restore_or_initialize(model, settings.model_dir)
    assert "ckpt-6.index is missing" in str(error.value)
    assert "Move the folder away" in str(error.value)


# --- weights only: the one loader of --init_checkpoint, fine-tuning and export ----------------

def test_load_weights_copies_weights_but_never_optimizer_state(tmp_path, tiny_config):
    from groupbert_tf.models import GroupBertClassifier, GroupBertPretrainer
    source = GroupBertPretrainer(config=tiny_config())
    source.compile(optimizer="adam")
    source.optimizer.build(source.trainable_variables)
    source.optimizer.iterations.assign(7)
    prefix = tf.train.Checkpoint(model=source, optimizer=source.optimizer).write(
        str(tmp_path / "ckpt"))

    target = GroupBertPretrainer(config=tiny_config())
    target.compile(optimizer="adam")
    target.optimizer.build(target.trainable_variables)
    checkpointing.load_weights(target, prefix)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(target.optimizer.iterations.numpy()) == 0

    # Only the encoder, into another task: its head keeps its initialisation.
    classifier = GroupBertClassifier(config=tiny_config(), num_labels=3)
    head = np.asarray(classifier.classifier.kernel).copy()
    checkpointing.load_weights(classifier, prefix, part="encoder")
    for a, b in zip(source.encoder.weights, classifier.encoder.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(classifier.classifier.kernel), head)


def test_load_weights_refuses_a_checkpoint_that_lacks_variables(tmp_path, tiny_config):
    from groupbert_tf.models import GroupBertPretrainer
    shallow = GroupBertPretrainer(config=tiny_config(num_layers=1))
    prefix = tf.train.Checkpoint(model=shallow).write(str(tmp_path / "ckpt"))
    deeper = GroupBertPretrainer(config=tiny_config(num_layers=2))
    with pytest.raises(ValueError, match=r"--init_checkpoint .*ckpt lacks \d+ of the \d+ "
                                         r"encoder variables \(first: \['transformer_layer_1"):
        checkpointing.load_weights(deeper, prefix, part="encoder")
