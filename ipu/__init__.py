"""Graphcore IPU specifics: job layout (plain Python) and the `IPUStrategy` factory.

Importing this package never imports Graphcore's TensorFlow; only `create_ipu_strategy` does,
after checking that it exists and matches the installed TensorFlow and Keras.
"""

from ipu.config import IpuTrainingConfig, layer_to_stage
from ipu.strategy import check_ipu_stack, create_ipu_strategy, ipu_wheel_available

__all__ = [
    "IpuTrainingConfig",
    "check_ipu_stack",
    "create_ipu_strategy",
    "ipu_wheel_available",
    "layer_to_stage",
]
