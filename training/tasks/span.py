"""Span extraction on SQuAD v1.1 JSON (exact match and F1 after best-span decoding)."""

import keras
from absl import logging

from groupbert_tf.models import GroupBertSpanLabeler
from training.data import squad_data
from training.tasks.base import Inputs, TrainingTask


class SpanEvaluation(keras.callbacks.Callback):
    """Runs best-span decoding on the eval set after each epoch; logs `val_exact_match`/`val_f1`."""

    def __init__(self, examples, features, dataset, max_answer_length):
        super().__init__()
        self.examples = examples
        self.features = features
        self.dataset = dataset
        self.max_answer_length = max_answer_length
        self.predictions = None

    def evaluate(self):
        outputs = self.model.predict(self.dataset, verbose=0)
        self.predictions = squad_data.decode(self.examples, self.features,
                                             outputs["start_logits"], outputs["end_logits"],
                                             self.max_answer_length)
        return squad_data.evaluate(self.examples, self.predictions)

    def on_epoch_end(self, epoch, logs=None):
        results = self.evaluate()
        if logs is not None:
            logs["val_exact_match"] = results["exact_match"]
            logs["val_f1"] = results["f1"]
        logging.info("Epoch %d: exact match %.2f, F1 %.2f on %d questions", epoch + 1,
                     results["exact_match"], results["f1"], len(self.examples))


class SpanTask(TrainingTask):
    name = "span"
    monitor = "val_f1"

    def __init__(self, settings):
        super().__init__(settings)
        self.eval_examples = self.eval_features = None

    def build_inputs(self, tokenizer):
        s = self.settings
        train_examples = squad_data.read_squad(s.train_file)
        if s.max_train_examples:
            train_examples = train_examples[:s.max_train_examples]
        self.eval_examples = squad_data.read_squad(s.eval_file)
        common = dict(seq_length=s.seq_length, doc_stride=s.doc_stride,
                      max_query_length=s.max_query_length)
        train_features = squad_data.convert_examples(train_examples, tokenizer, training=True,
                                                     **common)
        self.eval_features = squad_data.convert_examples(self.eval_examples, tokenizer,
                                                         **common)
        logging.info("Span: %d training questions -> %d features; %d eval questions -> %d "
                     "features", len(train_examples), len(train_features),
                     len(self.eval_examples), len(self.eval_features))
        train_ds = squad_data.make_dataset(train_features, s.batch_size, training=True,
                                           seed=s.seed)
        eval_ds = squad_data.make_dataset(self.eval_features, s.eval_batch_size,
                                          training=False)
        return Inputs(train_ds, eval_ds, len(train_features))

    def build_model(self, encoder):
        return GroupBertSpanLabeler(encoder=encoder, dropout=self.settings.dropout)

    def callbacks(self, inputs):
        return [SpanEvaluation(self.eval_examples, self.eval_features, inputs.evaluation,
                               self.settings.max_answer_length)]

    @classmethod
    def restore_model(cls, config, model_dir):
        del model_dir
        return GroupBertSpanLabeler(config=config, dropout=0.0)
