"""IPU job layout and stack detection, as plain Python: no IPU (or its wheel) exists here."""

import importlib.machinery
import importlib.util

import pytest

import ipu
from ipu import IpuTrainingConfig, layer_to_stage


def _base(**overrides):
    # BERT-Base as in Graphcore's examples: 12 layers, 3 per IPU, 4 pipeline stages.
    kwargs = dict(num_layers=12, layers_per_stage=3, micro_batch_size=2,
                  gradient_accumulation_count=64, replication_factor=4)
    kwargs.update(overrides)
    return IpuTrainingConfig(**kwargs)


def test_stage_assignment_groups_layers_with_embeddings_first_and_heads_last():
    cfg = _base()
    assert cfg.num_pipeline_stages == 4
    assert [cfg.stage_of_layer(i) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    stages = cfg.pipeline_stages()
    assert stages[0] == ("embeddings", "encoder_layer_0", "encoder_layer_1", "encoder_layer_2")
    assert stages[-1][:3] == ("encoder_layer_9", "encoder_layer_10", "encoder_layer_11")
    assert stages[-1][-2:] == ("mlm_head", "nsp_head")
    assert sum(name.startswith("encoder_layer_") for s in stages for name in s) == 12
    assert layer_to_stage(23, 6) == 3
    with pytest.raises(ValueError, match="out of range"):
        cfg.stage_of_layer(12)


def test_ipu_count_is_replicas_times_stages_and_a_power_of_two():
    assert _base().num_ipus == 16
    assert _base(layers_per_stage=12, gradient_accumulation_count=3, replication_factor=1
                 ).num_ipus == 1
    with pytest.raises(ValueError, match="powers of two"):
        _base(replication_factor=3, gradient_accumulation_count=8)


def test_layers_per_stage_must_divide_layers():
    with pytest.raises(ValueError, match=r"layers_per_stage=5 does not divide num_layers=12.*"
                                         r"\[1, 2, 3, 4, 6, 12\]"):
        _base(layers_per_stage=5)


def test_batch_arithmetic():
    cfg = _base()
    assert cfg.global_batch_size == 2 * 4 * 64
    assert cfg.micro_batches_per_step == 64
    derived = IpuTrainingConfig.from_global_batch(
        512, micro_batch_size=2, replication_factor=4, num_layers=12, layers_per_stage=3)
    assert derived.gradient_accumulation_count == 64
    assert derived.global_batch_size == 512
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size x replication"):
        IpuTrainingConfig.from_global_batch(
            500, micro_batch_size=2, replication_factor=4, num_layers=12, layers_per_stage=3)


def test_gradient_accumulation_must_be_multiple_of_twice_the_stages():
    with pytest.raises(ValueError, match=r"gradient_accumulation_count=12 must be a multiple "
                                         r"of 2 x num_pipeline_stages = 8"):
        _base(gradient_accumulation_count=12)
    # Without pipelining (one stage) any count works.
    assert _base(layers_per_stage=12, gradient_accumulation_count=7).num_pipeline_stages == 1


def test_fp16_with_static_loss_scaling_512_by_default():
    cfg = _base()
    assert (cfg.precision, cfg.compute_dtype, cfg.loss_scaling) == ("fp16", "float16", 512.0)
    assert _base(precision="fp32").compute_dtype == "float32"
    with pytest.raises(ValueError, match="precision"):
        _base(precision="bf16")
    with pytest.raises(ValueError, match="loss_scaling"):
        _base(loss_scaling=0.0)


def test_missing_wheel_names_the_module_and_the_poplar_sdk():
    assert not ipu.ipu_wheel_available()
    with pytest.raises(ImportError, match=r"tensorflow\.python\.ipu.*Poplar SDK"):
        ipu.create_ipu_strategy(_base())


@pytest.fixture
def fake_ipu_wheel(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == ipu.strategy.IPU_MODULE:
            return importlib.machinery.ModuleSpec(name, loader=None)
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_wheel_with_this_projects_tf_and_keras_is_refused_with_what_is_needed(fake_ipu_wheel):
    import keras
    import tensorflow as tf

    assert ipu.ipu_wheel_available()
    with pytest.raises(ImportError) as info:
        ipu.create_ipu_strategy(_base())
    message = str(info.value)
    assert f"TensorFlow {tf.__version__}" in message and f"Keras {keras.__version__}" in message
    assert "TensorFlow <= 2.6 with Keras 2" in message and "Keras 3" in message


def test_version_check_accepts_the_poplar_sdk_pair(fake_ipu_wheel):
    ipu.check_ipu_stack(tf_version="2.6.3+gc3.0.0", keras_version="2.6.0")
    with pytest.raises(ImportError, match="Keras 3.15.1"):
        ipu.check_ipu_stack(tf_version="2.6.3", keras_version="3.15.1")
    with pytest.raises(ImportError, match="TensorFlow 2.7.0"):
        ipu.check_ipu_stack(tf_version="2.7.0", keras_version="2.7.0")
