"""Keras layers of GroupBERT and BERT (keras.ops only, so they run on any Keras backend)."""

from groupbert_tf.layers.bert_layer import BertLayer
from groupbert_tf.layers.convolution_module import ConvolutionModule, grouped_conv1d
from groupbert_tf.layers.embeddings import BertEmbeddings
from groupbert_tf.layers.feed_forward import GroupedFeedForward
from groupbert_tf.layers.groupbert_layer import GroupBertLayer
from groupbert_tf.layers.grouped_dense import GroupedDense
from groupbert_tf.layers.masked_lm_head import MaskedLMHead
from groupbert_tf.layers.self_attention import SelfAttention
from groupbert_tf.layers.transformer_layer import TransformerLayer
