"""Strategy selection, its error paths and the batch/input helpers of training/strategy.py.

Logical CPU devices and MultiWorkerMirroredStrategy must be set up before TensorFlow
initialises, so those cases run in a fresh interpreter. No test contacts a TPU resolver.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf
from absl import flags

from training import strategy as strategy_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                            reason="expects a CPU-only machine")


def _run_python(code, env=None):
    """Runs `code` in a fresh interpreter; returns the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
        timeout=180, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flags_parse():
    flag_values = flags.FlagValues()
    strategy_lib.define_flags(flag_values)
    flag_values(["prog", "--strategy=mirrored", "--num_cpu_devices=2"])
    assert (flag_values.strategy, flag_values.tpu, flag_values.num_cpu_devices) == (
        "mirrored", None, 2)
    with pytest.raises(flags.IllegalFlagValueError):
        flag_values(["prog", "--strategy=horovod"])


@no_gpu
def test_auto_picks_default_strategy_on_cpu_and_says_why():
    strategy, reason = strategy_lib.create_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert reason.startswith("auto found no TPU or GPU")


@no_gpu
def test_one_device_on_cpu():
    strategy, reason = strategy_lib.create_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert "/cpu:0" in reason


@no_gpu
def test_mirrored_over_two_logical_cpu_devices():
    out = _run_python("""
        import json
        import tensorflow as tf
        from training.strategy import create_strategy
        strategy, reason = create_strategy("mirrored", num_cpu_devices=2)
        ones = strategy.run(lambda: tf.constant(1.0))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)
        print(json.dumps({"replicas": strategy.num_replicas_in_sync, "reason": reason,
                          "mirrored": isinstance(strategy, tf.distribute.MirroredStrategy),
                          "total": float(total)}))
    """)
    assert out["mirrored"]
    assert out["replicas"] == 2 and out["total"] == 2.0
    assert "2 logical CPU device(s)" in out["reason"]


def test_logical_devices_after_tf_initialised_is_a_clear_error():
    tf.constant(1.0)  # Makes sure the runtime is initialised.
    with pytest.raises(RuntimeError, match="--num_cpu_devices=3 cannot be applied"):
        strategy_lib.configure_cpu_devices(3)


def test_multi_worker_from_a_valid_tf_config():
    tf_config = {"cluster": {"worker": [f"localhost:{_free_port()}"]},
                 "task": {"type": "worker", "index": 0}}
    out = _run_python("""
        import json
        import tensorflow as tf
        from training.strategy import create_strategy
        strategy, reason = create_strategy("multi_worker")
        print(json.dumps({"replicas": strategy.num_replicas_in_sync, "reason": reason, "mwms":
                          isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)}))
    """, env={"TF_CONFIG": json.dumps(tf_config)})
    assert out["mwms"]
    assert out["replicas"] == 1
    assert "worker 0 of 1 task(s)" in out["reason"]


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        strategy_lib.create_strategy("multi_worker")


@pytest.mark.parametrize("raw, message", [
    ("{cluster: ", "TF_CONFIG is not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster' key"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}',
     r"\['cluster'\]\['worker'\] must be a list of 'host:port'"),
    ('{"cluster": {"worker": ["h:1"]}}', "needs a 'task' key"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     r"\['task'\]\['type'\]='chief' is not a job"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     r"\['task'\]\['index'\]=1 must be an integer in \[0, 1\)"),
])
def test_malformed_tf_config_names_the_key(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match=message):
        strategy_lib.create_strategy("multi_worker")


@no_gpu
@pytest.mark.parametrize("tpu, error, message", [
    (None, ValueError, "no TPU is visible to this process and --tpu is not set"),
    ("grpc://no-such-tpu.invalid:8470", ValueError, "nothing answers at no-such-tpu.invalid"),
    ("grpc://127.0.0.1:{port}", ValueError, "nothing answers at 127.0.0.1"),
    ("grpc://10.0.0.1", ValueError, "must look like grpc://HOST:PORT"),
    ("my-cloud-tpu", ValueError, "is a Cloud TPU name.*metadata server"),
    ("local", RuntimeError, "no usable TPU at --tpu=local"),
])
def test_tpu_without_a_tpu_fails_fast(monkeypatch, tpu, error, message):
    # A closed local port stands in for the GCE metadata server, even on a Google Cloud VM.
    monkeypatch.setattr(strategy_lib, "_GCE_METADATA", ("127.0.0.1", _free_port()))
    tpu = tpu and tpu.format(port=_free_port())
    start = time.monotonic()
    with pytest.raises(error, match=message):
        strategy_lib.create_strategy("tpu", tpu=tpu)
    assert time.monotonic() - start < 10


def _ipu_flags(*argv):
    flag_values = flags.FlagValues()
    strategy_lib.define_flags(flag_values)
    flag_values(["prog", "--strategy=ipu", *argv])
    return flag_values


def test_ipu_flags_build_the_pipeline_layout():
    # BERT-Base as in Graphcore's recipe: 12 layers, 3 per IPU, 4 replicas, micro-batch 2.
    flag_values = _ipu_flags("--ipu_layers_per_stage=3", "--ipu_replication_factor=4",
                             "--ipu_micro_batch_size=2", "--ipu_precision=fp32",
                             "--ipu_loss_scaling=128")
    cfg = strategy_lib.ipu_config_from_flags(flag_values, num_layers=12, batch_size=128,
                                             gradient_accumulation_steps=4)
    assert (cfg.num_pipeline_stages, cfg.replication_factor, cfg.num_ipus) == (4, 4, 16)
    # 128 x 4 sequences per optimizer step = micro-batch 2 x 4 replicas x 64 micro-batches.
    assert (cfg.global_batch_size, cfg.micro_batch_size, cfg.gradient_accumulation_count) == (
        512, 2, 64)
    assert (cfg.precision, cfg.loss_scaling) == ("fp32", 128.0)


def test_ipu_flag_defaults_put_the_model_on_one_ipu():
    cfg = strategy_lib.ipu_config_from_flags(_ipu_flags(), num_layers=4, batch_size=32)
    assert (cfg.num_pipeline_stages, cfg.num_ipus, cfg.layers_per_stage) == (1, 1, 4)
    assert (cfg.micro_batch_size, cfg.gradient_accumulation_count) == (32, 1)
    assert (cfg.precision, cfg.loss_scaling) == ("fp16", 512.0)


@pytest.mark.parametrize("argv, batch_size, message", [
    (["--ipu_layers_per_stage=5"], 32,
     r"^--strategy=ipu: --ipu_layers_per_stage=5 does not divide the model's num_layers=12"),
    (["--ipu_layers_per_stage=3", "--ipu_micro_batch_size=4"], 48,
     r"micro-batches per step \(--batch_size x --gradient_accumulation_steps / "
     r"\(--ipu_micro_batch_size x --ipu_replication_factor\)\)=12 must be a multiple of 2 x "
     r"num_pipeline_stages = 8"),
    (["--ipu_replication_factor=3", "--ipu_micro_batch_size=1"], 48,
     r"--ipu_replication_factor x num_pipeline_stages = 3 x 1 = 3 IPUs"),
    (["--ipu_micro_batch_size=7"], 32,
     r"--batch_size x --gradient_accumulation_steps 32 is not a multiple of "
     r"--ipu_micro_batch_size x --ipu_replication_factor = 7 x 1"),
    (["--ipu_precision=bf16"], 32, r"--ipu_precision must be one of \('fp16', 'fp32'\)"),
    (["--ipu_loss_scaling=0"], 32, r"--ipu_loss_scaling must be > 0"),
])
def test_bad_ipu_flags_are_named(argv, batch_size, message):
    with pytest.raises(ValueError, match=message):
        strategy_lib.ipu_config_from_flags(_ipu_flags(*argv), num_layers=12,
                                           batch_size=batch_size)


def test_ipu_counts_below_one_are_refused_when_parsed():
    for flag in ("ipu_layers_per_stage", "ipu_replication_factor", "ipu_micro_batch_size"):
        with pytest.raises(flags.IllegalFlagValueError, match=flag):
            _ipu_flags(f"--{flag}=0")


def test_ipu_without_the_wheel_is_a_value_error_after_the_layout():
    flag_values = _ipu_flags("--ipu_layers_per_stage=2", "--ipu_micro_batch_size=2")
    with pytest.raises(ValueError, match=r"^--strategy=ipu needs Graphcore's IPU TensorFlow: "
                                         r"`tensorflow\.python\.ipu`.*Poplar SDK"):
        strategy_lib.strategy_from_flags(flag_values, num_layers=4, batch_size=8)
    with pytest.raises(TypeError, match="needs an ipu.IpuTrainingConfig"):
        strategy_lib.create_strategy("ipu")


def _pretrain(tmp_path, *argv):
    return subprocess.run(
        [sys.executable, "-m", "training.pretrain", "--strategy=ipu", "--config=groupbert-tiny",
         f"--model_dir={tmp_path / 'run'}", "--export_dir=", "--batch_size=8", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.parametrize("argv, message", [
    ([], "pretrain: error: --strategy=ipu needs Graphcore's IPU TensorFlow: "
         "`tensorflow.python.ipu` is not importable. It is the Poplar SDK's TensorFlow wheel "
         "(not on PyPI), which stops at TensorFlow 2.6 with Keras 2: this project's Keras 3 "
         "models would also need a Keras 2 port."),
    (["--ipu_layers_per_stage=3"],
     "pretrain: error: --strategy=ipu: --ipu_layers_per_stage=3 does not divide the model's "
     "num_layers=2: every pipeline stage holds the same number of encoder layers. Use one of "
     "[1, 2]."),
])
def test_pretrain_cli_with_strategy_ipu_ends_in_one_line(tmp_path, argv, message):
    result = _pretrain(tmp_path, *argv)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == message


def test_per_replica_batch_size():
    assert strategy_lib.per_replica_batch_size(64, 8) == 8
    assert strategy_lib.per_replica_batch_size(3, 1) == 3
    with pytest.raises(ValueError, match=r"--train_batch_size=30 is not divisible by the 4"):
        strategy_lib.per_replica_batch_size(30, 4, flag_name="train_batch_size")
    with pytest.raises(ValueError, match="--global_batch_size must be >= 1"):
        strategy_lib.per_replica_batch_size(0, 2)


def test_auto_shard_policy_is_set_on_the_dataset():
    dataset = tf.data.Dataset.range(8).batch(4, drop_remainder=True)
    policy = tf.data.experimental.AutoShardPolicy
    sharded = strategy_lib.with_auto_shard_policy(dataset)
    assert sharded.options().experimental_distribute.auto_shard_policy == policy.DATA
    off = strategy_lib.with_auto_shard_policy(dataset, policy.OFF)
    assert off.options().experimental_distribute.auto_shard_policy == policy.OFF
    assert [b.tolist() for b in sharded.as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5, 6, 7]]
