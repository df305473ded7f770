"""The issue's run-folder cases through the real CLIs, as separate processes: two runs on one
--model_dir, SIGKILL then a rerun with only --model_dir (stale lock, a deleted checkpoint
index, the recorded config and flags), a resume that changes the model and the optimizer,
export without --config, and fine-tuning data and flag errors as one line."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.test_trainer import SMALL, wiki_subset  # noqa: F401  (wiki_subset: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow


def _indexed_steps(run):
    folder = os.path.join(run, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)\.index$").match, names)
                  if m)


def _error_line(stderr, program):
    lines = [line for line in stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _python(*args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env=ENV, timeout=900, **kwargs)


def test_one_run_per_folder_kill_resume_refuse_and_export(wiki_subset, tmp_path):  # noqa: F811
    corpus, vocab = wiki_subset
    run = str(tmp_path / "run")
    overrides = tmp_path / "small.json"
    overrides.write_text(json.dumps(SMALL))
    start = ["-m", "training.pretrain", "--config", "groupbert-tiny", "--overrides",
             str(overrides), "--corpus", corpus, "--vocab", vocab, "--model_dir", run,
             "--batch_size", "4", "--seq_length", "32", "--max_predictions_per_seq", "5",
             "--warmup_steps", "2", "--checkpoint_every", "2", "--train_steps", "100000",
             "--validation_fraction", "0.02", "--export_dir", "", "--verbose", "2"]
    first = subprocess.Popen([sys.executable, *start], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and first.poll() is None and len(_indexed_steps(run)) < 2:
            time.sleep(0.5)
        assert first.poll() is None and len(_indexed_steps(run)) >= 2
        with open(os.path.join(run, "run.lock")) as f:
            assert json.load(f)["pid"] == first.pid

        # A second run on the same folder fails before it builds anything, naming the first.
        second = _python(*start)
        assert second.returncode == 1
        line = _error_line(second.stderr, "pretrain")
        assert f"is in use by another run: pid {first.pid}" in line, line
        assert first.poll() is None, "the first run must be untouched"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # The newest checkpoint loses its index; the run folder keeps a stale lock.
    steps = _indexed_steps(run)
    os.remove(os.path.join(run, "checkpoints", f"ckpt-{steps[-1]}.index"))
    target = steps[-1] + 2
    resumed = _python("-m", "training.pretrain", "--model_dir", run, "--train_steps",
                      str(target))
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"(pid {first.pid}, started" in log and "no longer running" in log
    assert f"ckpt-{steps[-1]} cannot be read: ckpt-{steps[-1]}.index is missing" in log
    assert re.search(rf"Resumed training state from \S+ckpt-{steps[-2]} at step {steps[-2]}",
                     log), log[-3000:]
    assert '"hidden_size": 64' in log  # The recorded config, not groupbert-tiny's 128.
    assert "--batch_size=4" in log  # The recorded flags.
    assert _indexed_steps(run)[-1] == target
    assert not os.path.exists(os.path.join(run, "run.lock"))

    # A resume that changes the model and the optimizer is refused, naming each field;
    # neither the export nor a run initialised from this one needs --config.
    refused = subprocess.Popen(
        [sys.executable, "-m", "training.pretrain", "--model_dir", run, "--config",
         "groupbert-tiny", "--optimizer", "adamw", "--seq_length", "64", "--batch_size", "8"],
        cwd=REPO, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A new run initialised from this one takes its recorded config too.
    initialised = subprocess.Popen(
        [sys.executable, "-m", "training.pretrain", "--model_dir", str(tmp_path / "init"),
         "--init_checkpoint", run, "--corpus", corpus, "--vocab", vocab, "--batch_size", "4",
         "--seq_length", "32", "--max_predictions_per_seq", "5", "--train_steps", "1",
         "--warmup_steps", "0",
         "--validation_fraction", "0", "--export_dir", "", "--verbose", "2"], cwd=REPO,
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    export_dir = str(tmp_path / "export")
    exported = _python("-m", "training.export", "--model_dir", run, "--export_dir", export_dir,
                       "--vocab", vocab, "--seq_length", "32")
    _, stderr = refused.communicate(timeout=900)
    assert refused.returncode == 1
    line = _error_line(stderr, "pretrain")
    for piece in ("hidden_size (64 -> 128)", "num_layers (1 -> 2)",
                  "optimizer ('lamb' -> 'adamw')", "seq_length (32 -> 64)",
                  "global_batch_size (4 -> 8)"):
        assert piece in line, line
    assert exported.returncode == 0, exported.stderr[-3000:]
    init_log, _ = initialised.communicate(timeout=900)
    assert initialised.returncode == 0, init_log[-3000:]
    assert f"Initialised weights only from {run}" in init_log and '"hidden_size": 64' in init_log
    written = exported.stdout.strip().splitlines()[-1]
    assert written == os.path.join(export_dir, "1")
    assert os.path.isfile(os.path.join(written, "saved_model.pb"))


def test_cli_input_errors_are_one_line_before_training(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text('sentence\tlabel\na good film\tpos\n"quoted\tfield"\tneg\n')
    common = ["-m", "training.finetune", "--task", "classification", "--train_file",
              str(train), "--eval_file", str(train), "--model_dir", str(tmp_path / "ft"),
              "--config", "groupbert-tiny"]
    cases = {
        "tab_in_field": (common, "finetune", f"{train}:3: row has 3 columns but the header "
                                             "has 2"),
        "negative_learning_rate": (common + ["--learning_rate=-1"], "finetune",
                                   "--learning_rate=-1.0: must be > 0"),
        "unwritable_export": (common + ["--export_dir", "/sys/groupbert-export"], "finetune",
                              "--export_dir /sys/groupbert-export: not writable"),
        "export_without_record": (["-m", "training.export", "--model_dir", str(tmp_path),
                                   "--export_dir", str(tmp_path / "out")], "export",
                                  f"--model_dir {tmp_path} records no config.json"),
    }
    processes = {name: subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, (args, _, _) in cases.items()}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=900)
        _, program, expected = cases[name]
        assert process.returncode == 1, (name, stderr[-3000:])
        assert expected in _error_line(stderr, program), (name, stderr[-2000:])
