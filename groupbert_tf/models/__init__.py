"""Keras models: the encoder backbone and the task models that wrap it."""

from groupbert_tf.models.encoder import GroupBertEncoder
from groupbert_tf.models.pretrainer import GroupBertPretrainer
from groupbert_tf.models.classifier import GroupBertClassifier
from groupbert_tf.models.span_labeler import GroupBertSpanLabeler
