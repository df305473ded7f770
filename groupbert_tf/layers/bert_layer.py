"""One BERT layer."""

import keras

from groupbert_tf.layers.transformer_layer import TransformerLayer


@keras.saving.register_keras_serializable(package="groupbert_tf")
class BertLayer(TransformerLayer):
    """Attention then FFN (post-norm in the baseline). For ablations, `use_conv_module` adds
    GroupBERT's convolution module before attention, `ffn_groups > 1` groups the FFN and
    `norm_placement='pre'` switches to pre-norm."""

    def module_names(self):
        conv = ("convolution",) if self.use_conv_module else ()
        return (*conv, "attention", "feed_forward")
