"""The pre-training trainer (training/trainer.py, training/callbacks.py, training/pretrain.py):
learning on real text, resume after SIGKILL, weights-only initialisation, the NaN guard and
the throughput numbers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import keras
import tensorflow as tf

from groupbert_tf import flops
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.models import GroupBertPretrainer
from training import callbacks as training_callbacks
from training import trainer
from training.data import download, pretraining_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, PREDS = 64, 10
SMALL = dict(num_layers=1, hidden_size=64, num_heads=1, intermediate_size=256)


def small_config():
    return GroupBertConfig.from_preset("groupbert-tiny").replace(**SMALL)


def _default_data():
    corpus = os.path.join(REPO, download.default_corpus_path())
    vocab = os.path.join(REPO, download.default_vocab_path())
    if not (os.path.isfile(corpus) and os.path.isfile(vocab)):
        subprocess.run([sys.executable, "-m", "training.data", "fetch"], cwd=REPO, check=True)
    return corpus, vocab


@pytest.fixture(scope="module")
def wiki_subset(tmp_path_factory):
    """The first 400 documents of the default Wikipedia corpus (real text, quick to tokenize),
    and the bert-base-uncased vocab."""
    corpus, vocab = _default_data()
    with open(corpus, encoding="utf-8") as f:
        blocks = re.split(r"\n\s*\n", f.read())
    path = tmp_path_factory.mktemp("wiki") / "documents.txt"
    path.write_text("\n\n".join(blocks[:400]) + "\n", encoding="utf-8")
    return str(path), vocab


def _dataset(wiki_subset, batch_size, seed=0):
    corpus, vocab = wiki_subset
    return pretraining_data.pretraining_dataset(
        corpus, vocab, batch_size, seq_length=SEQ, max_predictions_per_seq=PREDS,
        dupe_factor=1, seed=seed)


def _settings(model_dir, **kwargs):
    values = dict(model_dir=str(model_dir), train_steps=8, global_batch_size=8,
                  seq_length=SEQ, max_predictions_per_seq=PREDS, optimizer="lamb",
                  learning_rate=0.01, warmup_steps=2, checkpoint_every=2, log_every=2,
                  verbose=0)
    values.update(kwargs)
    return trainer.TrainingSettings(**values)


def _weights(model):
    return [np.array(v) for v in model.weights]


# ------------------------------------------------------------------------------------------
# Learning
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlm_loss_falls_on_real_text(wiki_subset, tmp_path):
    keras.utils.set_random_seed(0)
    steps = 40
    settings = _settings(tmp_path, train_steps=steps, global_batch_size=16,
                         learning_rate=0.04, warmup_steps=5)
    model = trainer.build_model(small_config(), settings)
    # One step per epoch: each epoch's logged loss is that one batch's loss.
    history = model.fit(_dataset(wiki_subset, 16), epochs=steps, steps_per_epoch=1, verbose=0)
    losses = history.history["mlm_loss"]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print("MLM loss per step:", np.round(losses, 2))
    # Random init: about ln(30522) = 10.3 nats.
    assert first > 9.0
    assert first - last > 1.0, losses
    assert int(model.optimizer.iterations.numpy()) == steps


# ------------------------------------------------------------------------------------------
# Resume versus initialise
# ------------------------------------------------------------------------------------------

def _slots(optimizer):
    slots = [v for v in optimizer.variables if v is not optimizer._iterations]
    assert slots
    return slots


def test_resume_and_init_checkpoint_in_process(tmp_path):
    keras.utils.set_random_seed(1)
    settings = _settings(tmp_path / "a")
    a = trainer.build_model(small_config(), settings)
    manager, how = trainer.restore_or_initialize(a, settings.model_dir)
    assert how == "Started from random initialisation"
    # Some optimizer state worth restoring: a step counter and non-zero moments.
    a.optimizer.iterations.assign(5)
    for slot in _slots(a.optimizer):
        slot.assign(tf.random.normal(slot.shape, dtype=slot.dtype))
    manager.save(checkpoint_number=5)
    saved = _weights(a)
    saved_slots = [np.array(v) for v in _slots(a.optimizer)]

    keras.utils.set_random_seed(2)
    b = trainer.build_model(small_config(), _settings(tmp_path / "b"))
    assert any(not np.array_equal(x, y) for x, y in zip(_weights(b), saved))
    _, how = trainer.restore_or_initialize(b, str(tmp_path / "b"),
                                           init_checkpoint=settings.model_dir)
    assert how.startswith("Initialised weights only from ") and "ckpt-5" in how
    for x, y in zip(_weights(b), saved):
        np.testing.assert_array_equal(x, y)
    assert int(b.optimizer.iterations.numpy()) == 0
    assert all(not np.any(np.array(v)) for v in _slots(b.optimizer))

    keras.utils.set_random_seed(3)
    c = trainer.build_model(small_config(), _settings(tmp_path / "a"))
    _, how = trainer.restore_or_initialize(c, settings.model_dir)
    assert re.fullmatch(r"Resumed training state from .*ckpt-5 at step 5", how), how
    for x, y in zip(_weights(c), saved):
        np.testing.assert_array_equal(x, y)
    assert int(c.optimizer.iterations.numpy()) == 5
    for x, y in zip([np.array(v) for v in _slots(c.optimizer)], saved_slots):
        np.testing.assert_array_equal(x, y)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        trainer.restore_or_initialize(c, str(tmp_path / "c"),
                                      init_checkpoint=str(tmp_path / "nowhere"))


def _latest_step(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(path.rsplit("-", 1)[1]) if path else None


def _cli(model_dir, corpus, vocab, *extra):
    overrides = os.path.join(model_dir + "-overrides.json")
    with open(overrides, "w") as f:
        json.dump(SMALL, f)
    return [sys.executable, "-m", "training.pretrain", "--config", "groupbert-tiny",
            "--overrides", overrides, "--corpus", corpus, "--vocab", vocab,
            "--model_dir", model_dir, "--batch_size", "4", "--seq_length", "32",
            "--max_predictions_per_seq", "5", "--warmup_steps", "2", "--log_every", "2",
            "--validation_fraction", "0.02", "--export_dir", "", "--verbose", "2", *extra]


@pytest.mark.slow
def test_cli_resumes_after_sigkill_and_initialises_from_checkpoint(wiki_subset, tmp_path):
    """Kill a run once it has written a checkpoint; the restarted run continues the step
    counter and ends at --train_steps. A second model_dir started with --init_checkpoint
    begins at step 0 (weights only); that run also exercises --steps_per_execution,
    --gradient_accumulation_steps and --precision=mixed_bfloat16."""
    corpus, vocab = wiki_subset
    run = str(tmp_path / "run")
    steps = 16
    command = _cli(run, corpus, vocab, "--train_steps", str(steps), "--checkpoint_every", "2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        deadline = time.time() + 900
        while time.time() < deadline and process.poll() is None:
            if (_latest_step(run) or 0) >= 2:
                break
            time.sleep(0.5)
        killed_at = _latest_step(run)
        assert process.poll() is None, "the first run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert killed_at is not None and 2 <= killed_at < steps

    # Weights-only initialisation from a copy of the killed run's checkpoints, in parallel.
    source = str(tmp_path / "killed")
    shutil.copytree(os.path.join(run, "checkpoints"), os.path.join(source, "checkpoints"))
    source_step = _latest_step(source)
    init_dir = str(tmp_path / "init")
    init_command = _cli(init_dir, corpus, vocab, "--train_steps", "4", "--checkpoint_every",
                        "2", "--init_checkpoint", source, "--steps_per_execution", "2",
                        "--gradient_accumulation_steps", "2", "--precision=mixed_bfloat16")
    init_process = subprocess.Popen(init_command, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                             timeout=900)
    init_output, _ = init_process.communicate(timeout=900)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    match = re.search(r"Resumed training state from (\S+) at step (\d+)", log)
    assert match, log[-3000:]
    resumed_from = int(match.group(2))
    assert resumed_from >= killed_at and resumed_from % 2 == 0
    assert match.group(1).endswith(f"ckpt-{resumed_from}")
    assert _latest_step(run) == steps
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    assert summary["step"] == steps
    # The restarted run saved only the steps after the one it resumed from.
    saved = [int(s) for s in re.findall(r"Saved checkpoint \S+ \(step (\d+)\)", log)]
    assert saved and saved[0] > resumed_from and saved[-1] == steps
    assert saved == sorted(saved)

    assert init_process.returncode == 0, init_output[-3000:]
    assert re.search(r"Initialised weights only from \S+ckpt-%d" % source_step, init_output)
    assert "Resumed training state" not in init_output
    assert _latest_step(init_dir) == 4
    with open(os.path.join(init_dir, "summary.json")) as f:
        init_summary = json.load(f)
    assert init_summary["step"] == 4
    assert np.isfinite(init_summary["validation_mlm_loss"])
    # The weights-only run's saves started again from the bottom.
    assert re.findall(r"Saved checkpoint \S+ \(step (\d+)\)", init_output) == ["2", "4"]


# ------------------------------------------------------------------------------------------
# NaN guard
# ------------------------------------------------------------------------------------------

def _run_pretrain(wiki_subset, tmp_path, **kwargs):
    settings = _settings(tmp_path, **kwargs)
    strategy = tf.distribute.get_strategy()
    return trainer.pretrain(small_config(), settings, strategy,
                            lambda start: _dataset(wiki_subset, settings.global_batch_size,
                                                   seed=start))


def _restored_weights_finite(model_dir):
    model = trainer.build_model(small_config(), _settings(model_dir))
    _, how = trainer.restore_or_initialize(model, str(model_dir))
    assert how.startswith("Resumed")
    return int(model.optimizer.iterations.numpy()), all(
        np.all(np.isfinite(w)) for w in _weights(model))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(wiki_subset, tmp_path, monkeypatch):
    original = GroupBertPretrainer.compute_loss

    def nan_from_step_3(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        bad = tf.cast(self.optimizer.iterations, tf.float32) >= 3.0
        return loss * tf.where(bad, float("nan"), 1.0)

    monkeypatch.setattr(GroupBertPretrainer, "compute_loss", nan_from_step_3)
    with pytest.raises(FloatingPointError) as error:
        _run_pretrain(wiki_subset, tmp_path, checkpoint_every=1)
    message = str(error.value)
    assert "Loss is nan at step 4" in message, message
    assert "ckpt-3" in message and "--learning_rate" in message
    assert _latest_step(str(tmp_path)) == 3
    monkeypatch.undo()
    assert _restored_weights_finite(tmp_path) == (3, True)


@pytest.mark.slow
def test_nan_gradient_with_finite_loss_is_never_checkpointed(wiki_subset, tmp_path,
                                                             monkeypatch):
    """An overflowing gradient leaves the loss of its own step finite but the weights NaN:
    the checkpoint of that step must not be written."""
    original = GroupBertPretrainer.compute_loss

    def nan_gradient_from_step_4(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        # The 4th batch (iterations == 3 during it) ends at step 4, a checkpoint step.
        bad = tf.cast(self.optimizer.iterations, tf.float32) >= 3.0

        @tf.custom_gradient
        def zero_with_nan_gradient(x):
            def grad(dy):
                return dy * tf.where(bad, float("nan"), 0.0) * tf.ones_like(x)
            return tf.zeros([], x.dtype), grad

        return loss + zero_with_nan_gradient(self.trainable_variables[0])

    monkeypatch.setattr(GroupBertPretrainer, "compute_loss", nan_gradient_from_step_4)
    with pytest.raises(FloatingPointError) as error:
        _run_pretrain(wiki_subset, tmp_path, checkpoint_every=2)
    message = str(error.value)
    assert "Non-finite weights at step 4" in message and "ckpt-2" in message, message
    assert _latest_step(str(tmp_path)) == 2
    monkeypatch.undo()
    assert _restored_weights_finite(tmp_path) == (2, True)


# ------------------------------------------------------------------------------------------
# Throughput
# ------------------------------------------------------------------------------------------

class _Clock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_throughput_numbers(monkeypatch, steps_per_execution):
    config = small_config()
    batch, seq, preds = 32, 128, 20
    per_sequence = flops.training_flops(config, seq, preds)
    callback = training_callbacks.Throughput(batch, seq, per_sequence, every_steps=1000)
    callback.set_model(types.SimpleNamespace(steps_per_execution=steps_per_execution))
    # First call at t=10 (compilation, skipped), then 5 executions ending at t=12.5; the
    # report itself comes much later (end-of-fit work) and must not count.
    monkeypatch.setattr(training_callbacks.time, "perf_counter",
                        _Clock([10.0, 10.5, 11.0, 11.5, 12.0, 12.5]))
    callback.on_train_begin()
    for batch_index in range(6):
        callback.on_train_batch_end(batch_index)
    record = callback.report()
    expected = 5 * steps_per_execution * batch / 2.5
    assert record["sequences_per_second"] == pytest.approx(expected)
    assert record["tokens_per_second"] == pytest.approx(expected * seq)
    assert record["tflops"] == pytest.approx(expected * per_sequence / 1e12)


def test_throughput_reports_nothing_before_a_timed_step():
    callback = training_callbacks.Throughput(8, 32, 1.0)
    callback.on_train_begin()
    callback.on_train_batch_end(0)
    assert callback.report() is None and callback.history == []


@pytest.mark.slow
def test_pretrain_throughput_and_checkpoints_with_steps_per_execution(wiki_subset, tmp_path):
    """pretrain() end to end in process: checkpoints land on every crossed multiple of
    checkpoint_every even when steps_per_execution does not divide it, and the logged
    throughput is consistent with the FLOPs accounting."""
    model, throughput, _ = _run_pretrain(wiki_subset, tmp_path, train_steps=9,
                                         checkpoint_every=3, steps_per_execution=2,
                                         log_every=2)
    assert int(model.optimizer.iterations.numpy()) == 9
    names = sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                   for p in os.listdir(tmp_path / "checkpoints") if p.endswith(".index"))
    # Executions end at steps 2, 4, 6, 8 and (a partial one, not an overshoot to 10) 9:
    # the multiples 3, 6, 9 of checkpoint_every are crossed at steps 4, 6 and 9.
    assert names == [4, 6, 9]
    record = throughput.history[-1]
    per_sequence = flops.training_flops(small_config(), SEQ, PREDS)
    assert record["sequences_per_second"] > 0
    assert record["tokens_per_second"] == pytest.approx(record["sequences_per_second"] * SEQ)
    assert record["tflops"] == pytest.approx(record["sequences_per_second"] * per_sequence
                                             / 1e12)
