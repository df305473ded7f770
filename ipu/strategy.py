"""Builds Graphcore's `IPUStrategy`, or says exactly why it cannot.

Graphcore's IPU TensorFlow ships with the Poplar SDK (not on PyPI) and stops at TensorFlow 2.6
with Keras 2 (`tf.keras`); this project pins TensorFlow 2.21 and Keras 3. So on any machine with
this project's pins the answer is a clear error, raised before Keras is touched, instead of a
traceback from deep inside it. `python -m training.pretrain --strategy=ipu` reaches this
module with the `IpuTrainingConfig` of its `--ipu_*` flags (training/strategy.py) and ends
here with that error. No IPU is available here: what was tested is the detection and the
error messages (with `importlib.util.find_spec` patched), not the `IPUConfig` calls.
"""

import importlib.util
import re
from typing import Optional

from ipu.config import IpuTrainingConfig

IPU_MODULE = "tensorflow.python.ipu"
_MAX_TF = (2, 6)


def ipu_wheel_available() -> bool:
    """True when Graphcore's TensorFlow (with `tensorflow.python.ipu`) is installed."""
    try:
        return importlib.util.find_spec(IPU_MODULE) is not None
    except ModuleNotFoundError:
        return False


def _major_minor(version: str):
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"cannot parse version {version!r}.")
    return int(match.group(1)), int(match.group(2))


def check_ipu_stack(tf_version: Optional[str] = None, keras_version: Optional[str] = None):
    """Raises ImportError unless the IPU wheel and a TF/Keras pair it supports are present."""
    if not ipu_wheel_available():
        raise ImportError(
            f"--strategy=ipu needs Graphcore's IPU TensorFlow: `{IPU_MODULE}` is not importable. "
            "It is the Poplar SDK's TensorFlow wheel (not on PyPI), which stops at TensorFlow "
            "2.6 with Keras 2: this project's Keras 3 models would also need a Keras 2 port.")
    if tf_version is None:
        import tensorflow as tf
        tf_version = tf.__version__
    if keras_version is None:
        import keras
        keras_version = keras.__version__
    if _major_minor(tf_version) > _MAX_TF or _major_minor(keras_version)[0] >= 3:
        raise ImportError(
            f"Graphcore's IPU TensorFlow supports TensorFlow <= 2.6 with Keras 2 (tf.keras); "
            f"found TensorFlow {tf_version} and Keras {keras_version}. This project's models "
            "are Keras 3 models: running them on IPUs needs the Poplar SDK's TensorFlow 2.6 "
            "wheel plus a Keras 2 port of the model.")


def create_ipu_strategy(cfg: IpuTrainingConfig):
    """Configures the IPU system for `cfg` and returns an `IPUStrategy`."""
    check_ipu_stack()
    from tensorflow.python import ipu as tf_ipu

    ipu_config = tf_ipu.config.IPUConfig()
    ipu_config.auto_select_ipus = cfg.num_ipus
    ipu_config.configure_ipu_system()
    return tf_ipu.ipu_strategy.IPUStrategy()
