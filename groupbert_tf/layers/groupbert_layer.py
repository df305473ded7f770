"""One GroupBERT layer."""

import keras

from groupbert_tf.layers.transformer_layer import TransformerLayer


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertLayer(TransformerLayer):
    """Convolution module, GFFN, attention, GFFN: four pre-norm residual modules.

    The convolution module takes over local interactions so attention can model long-range
    ones; the two half-cost grouped FFNs keep the parameter budget of one dense FFN.
    `use_conv_module=False` drops the convolution module (an ablation).
    """

    def module_names(self):
        conv = ("convolution",) if self.use_conv_module else ()
        return (*conv, "feed_forward_1", "attention", "feed_forward_2")
