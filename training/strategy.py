"""Picks the `tf.distribute` strategy of a training job and says why in the log.

`--strategy=auto` prefers, in order: TPUs already visible to this process, every visible GPU
(`MirroredStrategy`), several logical CPU devices when `--num_cpu_devices > 1`, and otherwise
the default strategy. It never picks IPUs: an IPU job needs its pipeline layout
(`--ipu_*` flags) and Graphcore's TensorFlow 2.6 wheel, which cannot run this project's
TensorFlow 2.21 / Keras 3 models (ipu/strategy.py), so `--strategy=ipu` is always explicit.

Logical CPU devices (`--num_cpu_devices`) exist to exercise `MirroredStrategy` on a CPU-only
machine. TensorFlow fixes its device list when the runtime initialises, so `create_strategy`
must run before the first tensor or dataset is created.

TPU set-up never waits on the network: a missing TPU is reported within seconds (see
`_checked_tpu_address`).
"""

import json
import os
import re
import socket
import threading
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

import tensorflow as tf
from absl import flags, logging

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu", "ipu")

# Cloud TPU names resolve through the GCE metadata server; outside Google Cloud it is absent.
_GCE_METADATA = ("169.254.169.254", 80)
_CONNECT_TIMEOUT_S = 3.0
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
    '"index": 0}}')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
    """Defines --strategy, --tpu, --num_cpu_devices and the --ipu_* layout on `flag_values`."""
    flags.DEFINE_enum(
        "strategy", "auto", STRATEGIES,
        "Distribution strategy. auto: visible TPUs, else all GPUs (mirrored), else the default "
        "strategy; ipu must be asked for (with the --ipu_* flags).", flag_values=flag_values)
    flags.DEFINE_string(
        "tpu", None,
        "TPU to use with --strategy=tpu: 'local' on a TPU VM, grpc://HOST:PORT for a TPU node, "
        "or a Cloud TPU name (needs Google Cloud).", flag_values=flag_values)
    flags.DEFINE_integer(
        "num_cpu_devices", 1,
        "Split the CPU into this many logical devices so --strategy=mirrored runs several "
        "replicas without accelerators (for testing).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer(
        "ipu_layers_per_stage", None,
        "--strategy=ipu: encoder layers per pipeline stage (one IPU each); must divide the "
        "model's num_layers. Default: all layers on one IPU (no pipelining).", lower_bound=1,
        flag_values=flag_values)
    flags.DEFINE_integer(
        "ipu_replication_factor", 1,
        "--strategy=ipu: data-parallel copies of the pipeline; replicas x stages IPUs, a power "
        "of two.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer(
        "ipu_micro_batch_size", None,
        "--strategy=ipu: sequences per pipeline micro-batch. The optimizer step's --batch_size "
        "x --gradient_accumulation_steps sequences are then accumulated over micro-batches. "
        "Default: --batch_size / --ipu_replication_factor.", lower_bound=1,
        flag_values=flag_values)
    flags.DEFINE_string(
        "ipu_precision", "fp16",
        "--strategy=ipu: compute precision, fp16 (the reference recipe) or fp32.",
        flag_values=flag_values)
    flags.DEFINE_float(
        "ipu_loss_scaling", 512.0, "--strategy=ipu: static loss scale (fp16).",
        flag_values=flag_values)


# How IpuTrainingConfig's fields (named in its errors) are set from the command line.
_IPU_FIELD_SOURCES = {
    "layers_per_stage": "--ipu_layers_per_stage",
    "replication_factor": "--ipu_replication_factor",
    "micro_batch_size": "--ipu_micro_batch_size",
    "precision": "--ipu_precision",
    "loss_scaling": "--ipu_loss_scaling",
    "num_layers": "the model's num_layers",
    "global batch size": "--batch_size x --gradient_accumulation_steps",
    "gradient_accumulation_count": (
        "the micro-batches per step (--batch_size x --gradient_accumulation_steps / "
        "(--ipu_micro_batch_size x --ipu_replication_factor))"),
}
_IPU_FIELD_PATTERN = re.compile(r"\b(" + "|".join(_IPU_FIELD_SOURCES) + r")\b")


def ipu_config_from_flags(flag_values: flags.FlagValues, num_layers: int, batch_size: int,
                          gradient_accumulation_steps: int = 1):
    """The `ipu.IpuTrainingConfig` of the --ipu_* flags for a model of `num_layers`.

    An optimizer step covers `--batch_size x --gradient_accumulation_steps` sequences on IPUs
    as on other devices. Errors name the flags, not IpuTrainingConfig's fields.
    """
    from ipu import IpuTrainingConfig

    replicas = flag_values.ipu_replication_factor
    micro_batch_size = flag_values.ipu_micro_batch_size or max(1, batch_size // replicas)
    try:
        return IpuTrainingConfig.from_global_batch(
            batch_size * gradient_accumulation_steps, micro_batch_size,
            replication_factor=replicas, num_layers=num_layers,
            layers_per_stage=flag_values.ipu_layers_per_stage or num_layers,
            precision=flag_values.ipu_precision, loss_scaling=flag_values.ipu_loss_scaling)
    except ValueError as error:
        message = _IPU_FIELD_PATTERN.sub(lambda m: _IPU_FIELD_SOURCES[m.group(1)], str(error))
        raise ValueError(f"--strategy=ipu: {message}") from error


def strategy_from_flags(flag_values: flags.FlagValues = flags.FLAGS,
                        num_layers: Optional[int] = None, batch_size: Optional[int] = None,
                        gradient_accumulation_steps: int = 1
                        ) -> Tuple[tf.distribute.Strategy, str]:
    """`create_strategy` with the values of the flags from `define_flags`.

    `--strategy=ipu` also needs the model's `num_layers` (the pipeline is cut between layers)
    and the job's `batch_size` and `gradient_accumulation_steps` (`ipu_config_from_flags`).
    """
    ipu_config = None
    if flag_values.strategy == "ipu":
        if num_layers is None or batch_size is None:
            raise TypeError("strategy_from_flags: --strategy=ipu needs num_layers and batch_size")
        ipu_config = ipu_config_from_flags(flag_values, num_layers, batch_size,
                                           gradient_accumulation_steps)
    return create_strategy(flag_values.strategy, tpu=flag_values.tpu,
                           num_cpu_devices=flag_values.num_cpu_devices, ipu_config=ipu_config)


def configure_cpu_devices(num_devices: int):
    """Splits the physical CPU into `num_devices` logical devices (before TF initialises)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as e:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != num_devices:
            raise RuntimeError(
                f"--num_cpu_devices={num_devices} cannot be applied: TensorFlow already "
                f"initialised with {current} CPU device(s). Create the strategy before any "
                "tensor, dataset or model.") from e


def create_strategy(name: str = "auto", tpu: Optional[str] = None, num_cpu_devices: int = 1,
                    ipu_config=None) -> Tuple[tf.distribute.Strategy, str]:
    """Returns `(strategy, reason)` for `--strategy=name` and logs the choice.

    `ipu_config` (an `ipu.IpuTrainingConfig`) is needed only when the IPU strategy is chosen.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}.")
    configure_cpu_devices(num_cpu_devices)
    if name == "auto":
        name, why = _auto_choice(tpu, num_cpu_devices)
    else:
        why = f"--strategy={name}"
    strategy, detail = _BUILDERS[name](tpu=tpu, ipu_config=ipu_config)
    reason = f"{why}: {detail}"
    logging.info("Distribution strategy %s with %d replica(s) (%s).",
                 name, strategy.num_replicas_in_sync, reason)
    return strategy, reason


def _auto_choice(tpu: Optional[str], num_cpu_devices: int) -> Tuple[str, str]:
    if tpu:
        return "tpu", f"auto with --tpu={tpu}"
    if tf.config.list_logical_devices("TPU"):
        return "tpu", "auto found TPU devices"
    if tf.config.list_logical_devices("GPU"):
        return "mirrored", "auto found GPU devices"
    if num_cpu_devices > 1:
        return "mirrored", f"auto with --num_cpu_devices={num_cpu_devices}"
    return "default", "auto found no TPU or GPU"


def _default(**_) -> Tuple[tf.distribute.Strategy, str]:
    return tf.distribute.get_strategy(), "default strategy on the local devices"


def _one_device(**_) -> Tuple[tf.distribute.Strategy, str]:
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device), f"one device, {device}"


def _mirrored(**_) -> Tuple[tf.distribute.Strategy, str]:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy(), f"mirrored over {len(gpus)} GPU(s)"
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return (tf.distribute.MirroredStrategy(cpus),
            f"mirrored over {len(cpus)} logical CPU device(s), no GPU visible")


def _multi_worker(**_) -> Tuple[tf.distribute.Strategy, str]:
    tf_config = parse_tf_config(os.environ.get("TF_CONFIG"))
    task = tf_config["task"]
    workers = sum(len(v) for v in tf_config["cluster"].values())
    return (tf.distribute.MultiWorkerMirroredStrategy(),
            f"multi-worker mirrored, {task['type']} {task['index']} of {workers} task(s) "
            "from TF_CONFIG")


def _tpu(tpu: Optional[str] = None, **_) -> Tuple[tf.distribute.Strategy, str]:
    tpu = _checked_tpu_address(tpu)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    try:
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, ValueError) as e:
        raise RuntimeError(
            f"--strategy=tpu: no usable TPU at --tpu={tpu} "
            f"({type(e).__name__}: {str(e).splitlines()[0]}).") from e
    return tf.distribute.TPUStrategy(resolver), f"TPU {tpu}"


def _ipu(ipu_config=None, **_) -> Tuple[tf.distribute.Strategy, str]:
    """The layout is checked first, so a bad --ipu_* flag is reported even without the wheel."""
    if ipu_config is None:
        raise TypeError("create_strategy('ipu') needs an ipu.IpuTrainingConfig (see "
                        "ipu_config_from_flags)")
    from ipu import create_ipu_strategy

    try:
        strategy = create_ipu_strategy(ipu_config)
    except ImportError as error:  # A missing or unusable wheel is the user's setup.
        raise ValueError(str(error)) from error
    return strategy, (f"IPU, {ipu_config.num_ipus} IPU(s): {ipu_config.replication_factor} "
                      f"replica(s) x {ipu_config.num_pipeline_stages} pipeline stage(s)")


_BUILDERS = {
    "default": _default,
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
    "tpu": _tpu,
    "ipu": _ipu,
}


def parse_tf_config(raw: Optional[str]) -> Dict[str, Any]:
    """Parses and checks TF_CONFIG so a bad cluster spec fails here, not inside a collective."""
    if not raw:
        raise ValueError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
            f"TF_CONFIG='{_TF_CONFIG_EXAMPLE}'.")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw!r}.") from e
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw!r}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            "TF_CONFIG needs a 'cluster' key mapping job names to lists of host:port, e.g. "
            f"{_TF_CONFIG_EXAMPLE}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(
                f"TF_CONFIG['cluster']['{job}'] must be a list of 'host:port', got {addresses!r}.")
    if not isinstance(task, dict):
        raise ValueError(
            "TF_CONFIG needs a 'task' key with this process's 'type' and 'index', e.g. "
            '{"type": "worker", "index": 0}.')
    if task.get("type") not in cluster:
        raise ValueError(
            f"TF_CONFIG['task']['type']={task.get('type')!r} is not a job of "
            f"TF_CONFIG['cluster'] ({sorted(cluster)}).")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG['task']['index']={index!r} must be an integer in "
            f"[0, {len(cluster[task['type']])}) for job {task['type']!r}.")
    return config


def _can_connect(host: str, port: int, timeout_s: float = _CONNECT_TIMEOUT_S) -> bool:
    """TCP reachability with a hard deadline, name resolution included (it has no timeout)."""
    reached = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(reached)


def _checked_tpu_address(tpu: Optional[str]) -> str:
    """The `TPUClusterResolver` argument for `--tpu`, checked without waiting on the network."""
    if not tpu:
        if not tf.config.list_logical_devices("TPU"):
            raise ValueError(
                "--strategy=tpu: no TPU is visible to this process and --tpu is not set. Pass "
                "--tpu=local on a TPU VM, --tpu=grpc://HOST:8470 for a TPU node, or "
                "--tpu=NAME on Google Cloud.")
        tpu = "local"
    elif tpu.startswith("grpc://"):
        address = urlparse(tpu)
        if not address.hostname or not address.port:
            raise ValueError(f"--tpu={tpu} must look like grpc://HOST:PORT.")
        if not _can_connect(address.hostname, address.port):
            raise ValueError(
                f"--tpu={tpu}: nothing answers at {address.hostname}:{address.port} within "
                f"{_CONNECT_TIMEOUT_S:.0f} s.")
    elif tpu != "local" and not _can_connect(*_GCE_METADATA):
        raise ValueError(
            f"--tpu={tpu} is a Cloud TPU name, resolved through the GCE metadata server "
            f"({_GCE_METADATA[0]}), which is unreachable: this is not a Google Cloud VM. "
            "Pass --tpu=grpc://HOST:8470 or --tpu=local.")
    return tpu


def per_replica_batch_size(global_batch_size: int, num_replicas: int,
                           flag_name: str = "global_batch_size") -> int:
    """Splits the global batch evenly over replicas; refuses remainders (static shapes)."""
    if global_batch_size < 1:
        raise ValueError(f"--{flag_name} must be >= 1, got {global_batch_size}.")
    if global_batch_size % num_replicas:
        raise ValueError(
            f"--{flag_name}={global_batch_size} is not divisible by the {num_replicas} replicas "
            f"in sync; use a multiple of {num_replicas}.")
    return global_batch_size // num_replicas


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Input pipelines of `strategy`: the worker (and chief) tasks of a multi-worker job."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def with_auto_shard_policy(
        dataset: tf.data.Dataset,
        policy: tf.data.experimental.AutoShardPolicy = tf.data.experimental.AutoShardPolicy.DATA,
) -> tf.data.Dataset:
    """Sets how tf.distribute shards `dataset` across workers.

    DATA (the default here) suits generated or in-memory data: there are no files to split, so
    every worker produces the full stream and keeps its own 1/N of the elements.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)
