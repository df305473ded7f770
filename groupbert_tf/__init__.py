"""GroupBERT (arXiv 2106.05822) and its BERT baseline in Keras 3."""

from groupbert_tf import flops
from groupbert_tf.config import PRESETS, GroupBertConfig
from groupbert_tf.models import (GroupBertClassifier, GroupBertEncoder, GroupBertPretrainer,
                                 GroupBertSpanLabeler)
