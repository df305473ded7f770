"""The backbone: embeddings, a stack of BERT or GroupBERT layers, final norm and pooler."""

import keras
from keras import ops

from groupbert_tf.config import GroupBertConfig
from groupbert_tf.layers.bert_layer import BertLayer
from groupbert_tf.layers.embeddings import BertEmbeddings
from groupbert_tf.layers.groupbert_layer import GroupBertLayer
from groupbert_tf.layers.initializers import truncated_normal

# The encoder's inputs (int32 [batch, seq]); padding_mask is 1 on real tokens.
ENCODER_INPUTS = ("token_ids", "segment_ids", "padding_mask")
# The optional input of packed rows (training/data/packing.py): 0 on padding, j on the tokens of
# the j-th sequence of the row. Without it a row is one sequence (the unpacked model).
SEQUENCE_IDS = "sequence_ids"


def encoder_inputs(inputs):
    """The encoder's inputs from a task model's input dict (`sequence_ids` if packed)."""
    return {name: inputs[name] for name in (*ENCODER_INPUTS, SEQUENCE_IDS) if name in inputs}


def as_config(config) -> GroupBertConfig:
    """Accepts a GroupBertConfig, a preset name, a JSON file or a dict of fields."""
    if isinstance(config, GroupBertConfig):
        return config
    if isinstance(config, str):
        return GroupBertConfig.load(config)
    if isinstance(config, dict):
        return GroupBertConfig.from_dict(config)
    raise ValueError(f"config must be a GroupBertConfig, a preset name or a dict, got {config!r}")


def make_layer(config: GroupBertConfig, index: int, dtype=None) -> keras.layers.Layer:
    layer_class = GroupBertLayer if config.layer_structure == "groupbert" else BertLayer
    return layer_class(
        hidden_size=config.hidden_size,
        num_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        ffn_groups=config.ffn_groups,
        use_conv_module=config.use_conv_module,
        conv_kernel_size=config.conv_kernel_size,
        conv_group_size=config.conv_group_size,
        norm_placement=config.norm_placement,
        layer_norm_epsilon=config.layer_norm_epsilon,
        gelu_approximate=config.gelu_approximate,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        initializer_range=config.initializer_range,
        name=f"transformer_layer_{index}",
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertEncoder(keras.Model):
    """GroupBERT or BERT encoder as a functional Keras model.

    Inputs (dict): `token_ids`, `segment_ids`, `padding_mask` (int32 [batch, seq], mask 1 = real
    token). Outputs (dict): `sequence_output` [batch, seq, hidden] and `pooled_output`
    [batch, hidden] (dense + tanh on the [CLS] position). Pre-norm configs end with a final
    LayerNorm that feeds both. Layer names are stable: `embeddings`, `transformer_layer_{i}`,
    `final_layer_norm`, `pooler`.

    `GroupBertEncoder("groupbert-base")` builds a preset.

    Packed rows (several sequences per row, training/data/packing.py) add the optional input
    `sequence_ids`: attention and convolution stay within each sequence and positions restart
    at each one, so every sequence gets the outputs it gets unpacked. `pooled_output` is then
    the first sequence's; `pool(sequence_output, cls_positions)` pools every sequence.
    """

    def __init__(self, config, dtype=None, **kwargs):
        config = as_config(config)
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name,
                              optional=name == SEQUENCE_IDS)
            for name in (*ENCODER_INPUTS, SEQUENCE_IDS)
        }
        embeddings = BertEmbeddings(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_epsilon=config.layer_norm_epsilon,
            hidden_dropout=config.hidden_dropout,
            initializer_range=config.initializer_range,
            name="embeddings",
            dtype=dtype,
        )
        hidden = embeddings(inputs["token_ids"], inputs["segment_ids"],
                            sequence_ids=inputs[SEQUENCE_IDS])
        transformer_layers = [make_layer(config, i, dtype) for i in range(config.num_layers)]
        for layer in transformer_layers:
            hidden = layer(hidden, inputs["padding_mask"], sequence_ids=inputs[SEQUENCE_IDS])
        if config.norm_placement == "pre":
            hidden = keras.layers.LayerNormalization(
                epsilon=config.layer_norm_epsilon, name="final_layer_norm", dtype="float32")(hidden)
        pooler = keras.layers.Dense(
            config.hidden_size, activation="tanh",
            kernel_initializer=truncated_normal(config.initializer_range),
            name="pooler", dtype=dtype)
        pooled = pooler(hidden[:, 0])
        super().__init__(inputs=inputs,
                         outputs={"sequence_output": hidden, "pooled_output": pooled},
                         dtype=dtype, **kwargs)
        if dtype is not None:
            # keras.Functional drops `dtype`: record the policy the layers were built with, so
            # that `dtype_policy` and `get_config()` tell the truth.
            self.dtype_policy = dtype
        self.config = config
        self.embeddings = embeddings
        self.transformer_layers = transformer_layers
        self.pooler = pooler

    def __call__(self, inputs, *args, **kwargs):
        # Unpacked callers pass the three ENCODER_INPUTS; the functional graph wants every key.
        if isinstance(inputs, dict) and SEQUENCE_IDS not in inputs:
            inputs = {**inputs, SEQUENCE_IDS: None}
        return super().__call__(inputs, *args, **kwargs)

    def pool(self, sequence_output, cls_positions):
        """The pooler on each packed sequence's [CLS]: [B, k, hidden] for [B, k] positions."""
        cls = ops.take_along_axis(sequence_output,
                                  ops.cast(cls_positions, "int32")[:, :, None], axis=1)
        return self.pooler(cls)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        """TensorFlow checkpoints name a functional model's layers by their index in
        `_operations`. The optional sequence_ids input came after the first release: its
        (weightless) input layer is left out of the list they see, so every layer keeps its
        index and checkpoints written before it still restore."""
        children = super()._trackable_children(save_type, **kwargs)
        operations = children.get("_operations")
        if save_type == "checkpoint" and operations is not None:
            if "_checkpointed_operations" not in self.__dict__:  # One object, every call.
                object.__setattr__(self, "_checkpointed_operations", type(operations)([
                    op for op in operations
                    if not (isinstance(op, keras.layers.InputLayer)
                            and op.name == SEQUENCE_IDS)]))
            children["_operations"] = self.__dict__["_checkpointed_operations"]
        return children

    @property
    def word_embeddings(self):
        """The [vocab, hidden] table the MLM decoder is tied to."""
        return self.embeddings.word_embeddings.embeddings

    def attention_probabilities(self, inputs):
        """Per-layer attention probabilities [batch, heads, seq, seq] for analysis."""
        sequence_ids = inputs.get(SEQUENCE_IDS)
        hidden = self.embeddings(inputs["token_ids"], inputs["segment_ids"],
                                 sequence_ids=sequence_ids)
        probabilities = []
        for layer in self.transformer_layers:
            hidden, probs = layer(hidden, inputs["padding_mask"], return_attention_probs=True,
                                  sequence_ids=sequence_ids)
            probabilities.append(probs)
        return probabilities

    def get_config(self):
        # The dtype policy is saved too, so a mixed-precision model reloads as one.
        return {"config": self.config.to_dict(), "name": self.name,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("dtype") is not None:
            config["dtype"] = keras.dtype_policies.get(config["dtype"])
        return cls(**config)
