"""Sequence classification on GLUE-style TSV/CSV files (accuracy on the eval file)."""

import os

from absl import logging

from groupbert_tf.models import GroupBertClassifier
from training.data import glue_data
from training.tasks.base import Inputs, TrainingTask

LABELS = "labels.txt"  # Beside the checkpoints and in the export: index i is line i.


def _columns(settings):
    if settings.glue_task != "auto":
        if settings.glue_task not in glue_data.GLUE_TASKS:
            raise ValueError(f"--glue_task must be 'auto' or one of "
                             f"{sorted(glue_data.GLUE_TASKS)}, got {settings.glue_task!r}")
        return glue_data.GLUE_TASKS[settings.glue_task]
    if settings.text_a_column is None and settings.label_column is None:
        return None
    if settings.text_a_column is None or settings.label_column is None:
        raise ValueError("--text_a_column and --label_column go together")

    def parse(value):
        return None if value is None else (int(value) if value.isdigit() else value)

    return glue_data.Columns(text_a=parse(settings.text_a_column),
                             text_b=parse(settings.text_b_column),
                             label=parse(settings.label_column), header=not settings.no_header)


class ClassificationTask(TrainingTask):
    name = "classification"
    monitor = "val_accuracy"

    def __init__(self, settings):
        super().__init__(settings)
        self.labels = None

    def check_settings(self):
        """Classification is the task that packs (docs/packing.md)."""

    def build_inputs(self, tokenizer):
        s = self.settings
        columns = _columns(s)
        train = glue_data.read_examples(s.train_file, columns, s.max_train_examples)
        evaluation = glue_data.read_examples(s.eval_file, columns)
        self.labels = glue_data.LabelVocabulary.from_examples(train)
        train_ds = glue_data.make_dataset(train, tokenizer, self.labels, s.seq_length,
                                          s.batch_size, training=True, seed=s.seed,
                                          path=s.train_file,
                                          max_sequences_per_pack=s.max_sequences_per_pack)
        eval_ds = glue_data.make_dataset(evaluation, tokenizer, self.labels, s.seq_length,
                                         s.eval_batch_size, training=False, path=s.eval_file)
        logging.info("Classification: %d training / %d eval examples, labels %s", len(train),
                     len(evaluation), self.labels.labels)
        # Training rows per epoch: packing puts several examples in one.
        return Inputs(train_ds, eval_ds, int(train_ds.cardinality()) * s.batch_size)

    def build_model(self, encoder):
        return GroupBertClassifier(encoder=encoder, num_labels=len(self.labels),
                                   dropout=self.settings.dropout)

    def fit_kwargs(self, inputs):
        return {"validation_data": inputs.evaluation}

    def identity(self):
        return {"labels": self.labels.labels}

    def write_records(self, directory):
        self.labels.save(os.path.join(directory, LABELS))

    def summary(self):
        return {"labels": self.labels.labels}

    @classmethod
    def restore_model(cls, config, model_dir):
        path = os.path.join(model_dir, LABELS)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: the classification export needs the "
                                    "label list that training.finetune writes there")
        labels = glue_data.LabelVocabulary.load(path)
        return GroupBertClassifier(config=config, num_labels=len(labels), dropout=0.0)
