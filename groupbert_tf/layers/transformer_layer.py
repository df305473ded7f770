"""Shared machinery of the BERT and GroupBERT layers: a sequence of residual modules."""

import keras
from keras import ops

from groupbert_tf.layers.convolution_module import ConvolutionModule
from groupbert_tf.layers.feed_forward import GroupedFeedForward
from groupbert_tf.layers.self_attention import SelfAttention


class TransformerLayer(keras.layers.Layer):
    """Runs `module_names()` in order, each as a residual module.

    Pre-norm:  x = x + Dropout(module(LayerNorm(x)))
    Post-norm: x = LayerNorm(x + Dropout(module(x)))
    Module names say what each module is: 'convolution', 'attention', 'feed_forward*'.
    Subclasses only choose the order.
    """

    def __init__(self, hidden_size, num_heads, intermediate_size, ffn_groups=4,
                 use_conv_module=True, conv_kernel_size=7, conv_group_size=16,
                 norm_placement="pre", layer_norm_epsilon=1e-3, gelu_approximate=True,
                 hidden_dropout=0.0, attention_dropout=0.0, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        if norm_placement not in ("pre", "post"):
            raise ValueError(f"{type(self).__name__}: norm_placement must be 'pre' or 'post', "
                             f"got {norm_placement!r}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.ffn_groups = ffn_groups
        self.use_conv_module = use_conv_module
        self.conv_kernel_size = conv_kernel_size
        self.conv_group_size = conv_group_size
        self.norm_placement = norm_placement
        self.layer_norm_epsilon = layer_norm_epsilon
        self.gelu_approximate = gelu_approximate
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range

    def module_names(self):
        raise NotImplementedError

    def _make_module(self, name):
        common = dict(name=name, dtype=self.dtype_policy)
        if name == "convolution":
            return ConvolutionModule(self.hidden_size, self.conv_kernel_size, self.conv_group_size,
                                     self.layer_norm_epsilon, self.initializer_range, **common)
        if name == "attention":
            return SelfAttention(self.hidden_size, self.num_heads, self.attention_dropout,
                                 self.initializer_range, **common)
        return GroupedFeedForward(self.hidden_size, self.intermediate_size, self.ffn_groups,
                                  self.gelu_approximate, self.initializer_range, **common)

    def build(self, input_shape):
        # Each sublayer is an attribute named after its module ('attention',
        # 'attention_norm', ...): TensorFlow checkpoints do not see layers kept in a list.
        for name in self.module_names():
            module = self._make_module(name)
            module.build(input_shape)
            norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                   name=f"{name}_norm", dtype="float32")
            norm.build(input_shape)
            setattr(self, name, module)
            setattr(self, f"{name}_norm", norm)
        self.dropout = keras.layers.Dropout(self.hidden_dropout, dtype=self.dtype_policy)

    @property
    def module_layers(self):
        """The modules in execution order."""
        return [getattr(self, name) for name in self.module_names()]

    @property
    def norm_layers(self):
        """Each module's LayerNorm, in the same order."""
        return [getattr(self, f"{name}_norm") for name in self.module_names()]

    def call(self, inputs, padding_mask, training=None, return_attention_probs=False,
             sequence_ids=None):
        """`sequence_ids` (packed rows, 0 = padding) keeps attention and convolution within
        each sequence; None is the unpacked model."""
        hidden = inputs
        attention_probs = None
        for name in self.module_names():
            module, norm = getattr(self, name), getattr(self, f"{name}_norm")
            module_input = norm(hidden) if self.norm_placement == "pre" else hidden
            # One cast to the compute dtype (bfloat16 under mixed precision) for the whole
            # module, not one per Dense that reads it (attention has three).
            module_input = ops.cast(module_input, self.compute_dtype)
            if name == "attention":
                module_output = module(module_input, padding_mask, training=training,
                                       return_attention_probs=return_attention_probs,
                                       sequence_ids=sequence_ids)
                if return_attention_probs:
                    module_output, attention_probs = module_output
            elif name == "convolution":
                module_output = module(module_input, padding_mask, sequence_ids)
            else:
                module_output = module(module_input)
            # Post-norm leaves the residual stream in the float32 of its LayerNorm while the
            # modules compute in the policy's dtype (bfloat16 under mixed precision): add in the
            # residual stream's dtype instead of failing on a float32 + bfloat16 add.
            hidden = hidden + ops.cast(self.dropout(module_output, training=training), hidden.dtype)
            if self.norm_placement == "post":
                hidden = norm(hidden)
        return (hidden, attention_probs) if return_attention_probs else hidden

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "ffn_groups": self.ffn_groups,
            "use_conv_module": self.use_conv_module,
            "conv_kernel_size": self.conv_kernel_size,
            "conv_group_size": self.conv_group_size,
            "norm_placement": self.norm_placement,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "gelu_approximate": self.gelu_approximate,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
        }
