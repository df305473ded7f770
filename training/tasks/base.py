"""The base of the CLI tasks (the groupbert_tf task models are what they build)."""

from typing import Any, Dict, List, NamedTuple, Optional

import keras
import tensorflow as tf


class Inputs(NamedTuple):
    """A fine-tuning run's data: batched datasets and the training rows per epoch."""

    train: tf.data.Dataset
    evaluation: tf.data.Dataset
    train_rows: int


class TrainingTask:
    """One kind of run: `build_inputs` (data), `build_model` (the groupbert_tf task on an
    encoder), `callbacks` (evaluation that is not a Keras metric), `monitor` (the epoch log
    the best checkpoint maximizes), records it writes beside its checkpoints, and
    `restore_model` (the model a checkpoint of this task restores into, for export).

    `settings` is the run's `training.finetune.FinetuneSettings`.
    """

    name: str = ""
    finetuning = True
    monitor: str = ""

    def __init__(self, settings):
        self.settings = settings

    def check_settings(self):
        """Raises a ValueError naming the flag when `settings` do not fit this task."""
        if self.settings.max_sequences_per_pack:
            raise ValueError(f"--max_sequences_per_pack packs classification examples; "
                             f"--task={self.name} trains unpacked")

    def build_inputs(self, tokenizer) -> Inputs:
        raise NotImplementedError

    def build_model(self, encoder) -> keras.Model:
        raise NotImplementedError

    def callbacks(self, inputs: Inputs) -> List[keras.callbacks.Callback]:
        return []

    def fit_kwargs(self, inputs: Inputs) -> Dict[str, Any]:
        return {}

    def identity(self) -> Dict[str, Any]:
        """What a recorded best result must share with this run to be comparable."""
        return {}

    def write_records(self, directory):
        """Files the export needs beside the weights (e.g. the label list)."""

    def summary(self) -> Dict[str, Any]:
        return {}

    @classmethod
    def restore_model(cls, config, model_dir: Optional[str]) -> keras.Model:
        """A model of this task for `config` (dropout 0) that its checkpoints restore into."""
        raise NotImplementedError
