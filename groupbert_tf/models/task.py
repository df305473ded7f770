"""The base of the task models (keras-hub's backbone / preprocessor / task pattern).

A task owns its heads, its loss (a sum over items divided by an item count), its metrics,
its serving outputs and, optionally, a preprocessor that turns raw text into the encoder's
inputs, so `task.fit(["a sentence", ...], labels)` works as in keras-hub.
"""

import keras
from keras import ops

from groupbert_tf.models import presets
from groupbert_tf.models.encoder import GroupBertEncoder, as_config


def sequence_weights(y, labels):
    """1.0 per real sequence: the `sequence_weights` [B, k] of packed rows
    (training/data/packing.py; 0 on empty slots), else one per row, shaped like `labels`."""
    if isinstance(y, dict) and "sequence_weights" in y:
        return ops.cast(y["sequence_weights"], "float32")
    return ops.ones(ops.shape(labels), "float32")


def _backend_train_step():
    """On TensorFlow, the distributed train step (XLA loss and gradients per replica, exact
    global-batch losses, in-step gradient accumulation); elsewhere Keras' own."""
    if keras.config.backend() == "tensorflow":
        from groupbert_tf.tensorflow_train_step import (  # pylint: disable=import-outside-toplevel
            XlaGradientsTrainStep)
        return XlaGradientsTrainStep
    return type("KerasTrainStep", (), {})


class Task(_backend_train_step(), keras.Model):
    """A task defines `loss_counts(y)` (items each loss term averages over),
    `loss_sums(y, y_pred)` (the summed per-item losses) and `serving_outputs(inputs)`.

    Keeping sums and counts apart lets the distributed train step divide each replica's sums
    by the *global* counts, so R replicas compute exactly the loss and gradients of one
    replica on the whole batch.

    Class attributes that say how the task is served (groupbert_tf/export.py):
      serving_text_inputs: the inputs of `serving_default` ("text_a", or "text_a", "text_b").
      serving_offsets: whether the text signatures also return word-piece byte offsets.

    Args (shared by every task):
      encoder: a GroupBertEncoder; or `config` (GroupBertConfig, preset name or dict) to
        build a new one.
      preprocessor: optional `groupbert_tf.preprocessing.TextPreprocessor`: raw strings
        given to fit / evaluate / predict are tokenized and packed by it (in tf.data).
    """

    serving_text_inputs = ("text_a",)
    serving_offsets = False

    def __init__(self, config=None, encoder=None, preprocessor=None, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        if encoder is None and config is None:
            raise ValueError(f"{type(self).__name__} needs an encoder or a config")
        self.encoder = encoder if encoder is not None else GroupBertEncoder(config, dtype=dtype)
        self.config = self.encoder.config
        self.preprocessor = preprocessor

    def build(self, input_shape=None):
        """Every layer is built in the constructor (shapes do not depend on the inputs)."""
        self.built = True

    # -- loss --------------------------------------------------------------------------------

    def loss_counts(self, y):
        raise NotImplementedError

    def loss_sums(self, y, y_pred):
        raise NotImplementedError

    def mean_losses(self, y, y_pred, counts=None):
        """{term: (mean loss, count)}; max(count, 1) makes an empty term zero, not NaN."""
        counts = self.loss_counts(y) if counts is None else counts
        sums = self.loss_sums(y, y_pred)
        return {name: (sums[name] / ops.maximum(counts[name], 1.0), counts[name])
                for name in sums}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True,
                     counts=None):
        return sum(mean for mean, _ in self.mean_losses(y, y_pred, counts).values())

    # -- serving -----------------------------------------------------------------------------

    def serving_outputs(self, inputs):
        """What a SavedModel returns for encoder inputs: float32 tensors by name."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------

    def default_optimizer(self):
        """The optimizer of `compile(optimizer="auto")`: AdamW, BERT's fine-tuning recipe
        (no weight decay on biases and LayerNorm)."""
        optimizer = keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer

    def compile(self, optimizer="auto", **kwargs):
        """`optimizer="auto"`: `default_optimizer()`. Losses and metrics are the task's own."""
        super().compile(optimizer=self.default_optimizer() if optimizer == "auto" else optimizer,
                        **kwargs)

    def compile_from_config(self, config):
        """Recompiles a loaded model with its saved optimizer (Keras skips a custom compile)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(optimizer=config["optimizer"], jit_compile=config.get("jit_compile", "auto"),
                     steps_per_execution=config.get("steps_per_execution", 1))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _with_preprocessing(self, x, y, sample_weight, batch_size, shuffle):
        """Raw text through the preprocessor, as a tf.data pipeline; anything else as is."""
        if self.preprocessor is None:
            return x, y, sample_weight, batch_size
        from groupbert_tf import preprocessing  # pylint: disable=import-outside-toplevel
        if not preprocessing.is_raw_text(x):
            return x, y, sample_weight, batch_size
        dataset = preprocessing.text_dataset(self.preprocessor, x, y, sample_weight,
                                             batch_size=batch_size, shuffle=shuffle)
        return dataset, None, None, None

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, validation_data=None,
            shuffle=True, **kwargs):
        preprocessed = self._with_preprocessing(x, y, sample_weight, batch_size, shuffle)
        if preprocessed[0] is not x:
            shuffle = False  # text_dataset shuffled before batching.
        x, y, sample_weight, batch_size = preprocessed
        if validation_data is not None:
            unpacked = (keras.utils.unpack_x_y_sample_weight(validation_data)
                        if isinstance(validation_data, tuple) else (validation_data, None, None))
            dataset = self._with_preprocessing(*unpacked, None, False)[0]
            validation_data = validation_data if dataset is unpacked[0] else dataset
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                           validation_data=validation_data, shuffle=shuffle, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        x, y, sample_weight, batch_size = self._with_preprocessing(
            x, y, sample_weight, batch_size, False)
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight,
                                **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        x, _, _, batch_size = self._with_preprocessing(x, None, None, batch_size, False)
        return super().predict(x, batch_size=batch_size, **kwargs)

    # -- saving ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, sequence_length=128, lower_case=True, vocabulary=None,
                    **kwargs):
        """This task on a preset (groupbert_tf/models/presets.py): a folder written by
        `save_to_preset`, a Hugging Face BERT folder, or a config preset name (random weights).

        A preset saved from this task class comes back with its heads; from another class
        (e.g. a pre-trainer's preset under a classifier) its encoder gets new heads. A preset
        with a vocabulary (or `vocabulary=`) brings a `TextPreprocessor`, so the task fits
        and predicts on raw text. `kwargs` go to the task's constructor.
        """
        return presets.load_task(cls, preset, sequence_length=sequence_length,
                                 lower_case=lower_case, vocabulary=vocabulary, **kwargs)

    def save_to_preset(self, directory):
        """Writes encoder, heads and vocabulary to `directory`, for `from_preset`."""
        presets.save(self, directory)

    def get_config(self):
        """Every constructor argument, chained to Keras' (name, trainable, dtype policy)."""
        config = super().get_config()
        config["config"] = self.config.to_dict()
        if self.preprocessor is not None:
            config["preprocessor"] = keras.saving.serialize_keras_object(self.preprocessor)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = as_config(config["config"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        if config.get("dtype") is not None:
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        return cls(**config)
