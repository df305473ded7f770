"""One run per folder and self-describing run folders (training/run_folder.py), and the
CLIs' flag range checks (training/flag_checks.py). Lock holders are real processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from absl import flags

from groupbert_tf.config import GroupBertConfig
from training import flag_checks, run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock of argv[1] (no TensorFlow import: quick), says so, then holds it.
_HOLDER = """
import sys, time
from training.run_folder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _start_holder(model_dir):
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(model_dir)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.strip() == "locked", process.stderr.read()
    return process


def test_a_second_run_fails_at_once_naming_the_holder_then_takes_over_a_dead_one(tmp_path,
                                                                                caplog):
    holder = _start_holder(tmp_path)
    try:
        started = time.perf_counter()
        with pytest.raises(run_folder.RunFolderError) as error:
            run_folder.RunLock(str(tmp_path)).acquire()
        assert time.perf_counter() - started < 1.0
        message = str(error.value)
        assert f"pid {holder.pid}" in message and "is in use by another run" in message
        assert "--model_dir " + str(tmp_path) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock is stale and is taken over.
    with caplog.at_level("WARNING"):
        with run_folder.RunLock(str(tmp_path)):
            with open(tmp_path / run_folder.LOCK) as f:
                assert json.load(f)["pid"] == os.getpid()
            with run_folder.RunLock(str(tmp_path)):  # Re-entrant in one process.
                pass
            assert (tmp_path / run_folder.LOCK).exists()
    assert any("no longer running" in r.getMessage() and str(holder.pid) in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / run_folder.LOCK).exists()  # Released at the end.


def _write_lock(folder, **fields):
    holder = {"pid": 1, "host": socket.gethostname(), "started": "2026-12-01T00:00:00+00:00",
              "command": "python -m training.pretrain", **fields}
    (folder / run_folder.LOCK).write_text(json.dumps(holder))


def test_a_lock_from_another_host_is_refused_naming_host_and_file(tmp_path):
    _write_lock(tmp_path, host="worker-7.example")
    with pytest.raises(run_folder.RunFolderError) as error:
        run_folder.RunLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert "'worker-7.example'" in message and "pid 1" in message
    assert f"delete {tmp_path / run_folder.LOCK}" in message


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    # Our parent is alive, but not the process that started at that kernel tick.
    _write_lock(tmp_path, pid=os.getppid(), pid_start_time="1")
    with run_folder.RunLock(str(tmp_path)):
        pass
    # Same pid with its real start time: alive, refused.
    _write_lock(tmp_path, pid=os.getppid(),
                pid_start_time=run_folder._process_start_time(os.getppid()))
    with pytest.raises(run_folder.RunFolderError, match=f"pid {os.getppid()}"):
        run_folder.RunLock(str(tmp_path)).acquire()


@pytest.mark.parametrize("content", ['{"pid": 12', "[1, 2]"])
def test_a_damaged_lock_file_is_taken_over(tmp_path, content):
    (tmp_path / run_folder.LOCK).write_text(content)
    with run_folder.RunLock(str(tmp_path)):
        assert json.loads((tmp_path / run_folder.LOCK).read_text())["pid"] == os.getpid()


_RACER = """
import os, sys, time
from training.run_folder import RunFolderError, RunLock
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    RunLock(sys.argv[1]).acquire()
    print("won", flush=True)
    time.sleep(5)
except RunFolderError as error:
    print("lost", error, flush=True)
"""


@pytest.mark.slow
def test_of_three_simultaneous_starts_exactly_one_wins(tmp_path):
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "run"), str(go)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for racer in racers:  # All imported and polling.
        assert racer.stdout.readline().strip() == "ready"
    go.write_text("")
    outputs = [r.communicate(timeout=60)[0] for r in racers]
    assert sorted(o.split()[0] for o in outputs) == ["lost", "lost", "won"], outputs


def test_unwritable_folders_are_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(run_folder.RunFolderError, match="--export_dir .*a-file/out: not writable"):
        run_folder.check_writable(str(blocker / "out"), "--export_dir")
    with pytest.raises(run_folder.RunFolderError, match="not writable"):
        run_folder.check_writable("/sys/groupbert-export", "--export_dir")  # Read-only sysfs.


def test_records_round_trip_and_the_config_is_found_from_a_checkpoint(tmp_path):
    config = GroupBertConfig.from_preset("groupbert-tiny", hidden_size=64, num_heads=1)
    run_folder.write_records(str(tmp_path), config, {"optimizer": "lamb"}, {"batch_size": 4})
    assert run_folder.read_config(str(tmp_path)) == config
    prefix = str(tmp_path / "checkpoints" / "ckpt-4")
    (tmp_path / "checkpoints").mkdir()
    assert run_folder.read_config(prefix, search_run_folder=True) == config
    assert run_folder.read_config(str(tmp_path / "checkpoints"), search_run_folder=True) == config
    assert run_folder.read_config(prefix) is None
    assert run_folder.read_settings(str(tmp_path)) == {"settings": {"optimizer": "lamb"},
                                                       "flags": {"batch_size": 4}}
    # A run started from Python (no flags) keeps the CLI's recorded flags.
    run_folder.write_records(str(tmp_path), config, {"optimizer": "adamw"})
    assert run_folder.read_settings(str(tmp_path))["flags"] == {"batch_size": 4}
    (tmp_path / run_folder.CONFIG).write_text('{"hidden_sise": 3}')
    with pytest.raises(run_folder.RunFolderError, match="config.json.*hidden_sise"):
        run_folder.read_config(str(tmp_path))


def test_check_resume_names_every_refused_field_and_warns_for_the_rest(tmp_path, caplog):
    config = GroupBertConfig.from_preset("groupbert-tiny")
    recorded = {"optimizer": "lamb", "seq_length": 128, "learning_rate": 0.01, "verbose": 1}
    run_folder.write_records(str(tmp_path), config, recorded)
    refused = ("optimizer", "seq_length")
    run_folder.check_resume(str(tmp_path), config, recorded, refused)  # Unchanged: fine.
    with caplog.at_level("WARNING"):
        run_folder.check_resume(str(tmp_path), config, {**recorded, "learning_rate": 0.02,
                                                        "verbose": 2}, refused, quiet=["verbose"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "learning_rate (0.01 -> 0.02)" in warnings[0]
    assert "verbose" not in warnings[0]
    with pytest.raises(run_folder.RunFolderError) as error:
        run_folder.check_resume(str(tmp_path), config.replace(num_layers=3),
                                {**recorded, "optimizer": "adamw", "seq_length": 512}, refused)
    message = str(error.value)
    for piece in ("num_layers (2 -> 3)", "optimizer ('lamb' -> 'adamw')",
                  "seq_length (128 -> 512)", "--model_dir " + str(tmp_path)):
        assert piece in message, message


def _flag_values(**defaults):
    values = flags.FlagValues()
    for name, value in defaults.items():
        define = flags.DEFINE_float if isinstance(value, float) else flags.DEFINE_integer
        define(name, value, "", flag_values=values)
    values(["test"])
    return values


def test_restore_flags_fills_only_what_the_command_line_left_out(tmp_path):
    run_folder.write_records(str(tmp_path), GroupBertConfig(), {},
                             {"batch_size": 4, "seq_length": 32, "learning_rate": 0.5})
    values = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 32, "", flag_values=values)
    flags.DEFINE_integer("seq_length", 128, "", flag_values=values)
    flags.DEFINE_float("learning_rate", 0.01, "", flag_values=values)
    values(["test", "--seq_length=64"])
    restored = run_folder.restore_flags(values, str(tmp_path), ["batch_size", "seq_length"])
    assert restored == ["batch_size"]
    assert (values.batch_size, values.seq_length, values.learning_rate) == (4, 64, 0.01)


@pytest.mark.parametrize("name, value, expected", [
    ("learning_rate", -1.0, "--learning_rate=-1.0: must be > 0"),
    ("learning_rate", 0.0, "must be > 0"),
    ("learning_rate", float("nan"), "--learning_rate=nan"),
    ("checkpoint_every", 0, "--checkpoint_every=0: must be >= 1"),
    ("batch_size", 0, "--batch_size=0"),
    ("train_steps", -5, "--train_steps=-5"),
    ("validation_fraction", 1.0, "in [0, 1)"),
    ("warmup_proportion", 1.5, "in [0, 1]"),
    ("verbose", 3, "0, 1 or 2"),
    ("max_predictions_per_seq", 126, "--max_predictions_per_seq=126: must be at most "
                                     "--seq_length - 3 = 125"),
    ("warmup_steps", 11, "--warmup_steps=11: must be at most --train_steps=10"),
])
def test_flag_ranges(name, value, expected):
    defaults = {"learning_rate": 0.01, "checkpoint_every": 50, "batch_size": 32,
                "train_steps": 10, "validation_fraction": 0.01, "warmup_proportion": 0.1,
                "verbose": 1, "seq_length": 128, "max_predictions_per_seq": 20,
                "warmup_steps": 10}
    flag_checks.check(_flag_values(**defaults))  # The defaults pass.
    with pytest.raises(ValueError) as error:
        flag_checks.check(_flag_values(**{**defaults, name: value}))
    assert expected in str(error.value)
