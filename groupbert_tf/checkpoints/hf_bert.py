"""Load a Hugging Face BERT checkpoint (config.json + model.safetensors) into a BERT-mode
`GroupBertEncoder`.

BERT mode = `layer_structure='bert'`, post-norm, dense FFN (`ffn_groups=1`), no convolution
module: exactly the architecture of `transformers.BertModel`. Sizes, LayerNorm epsilon
(`layer_norm_eps`), GELU form (`hidden_act`) and dropout come from config.json.

Tensor names are those of `BertModel.state_dict()`, with or without the `bert.` prefix that
the task models (`BertForPreTraining`, ...) add; pre-2019 names `LayerNorm.gamma/beta` are
accepted too. PyTorch `nn.Linear` stores (out, in) kernels: they are transposed to Keras'
(in, out). The pooler is loaded when present (sentence-transformers exports often drop it);
task heads (`cls.*`) are ignored.
"""

import json
import os
from typing import Dict, List

import numpy as np

from groupbert_tf.checkpoints._layout import (CheckpointError, Rule, export_arrays,
                                              import_arrays, one, transpose)
from groupbert_tf.config import GroupBertConfig

# hidden_act -> our gelu_form. 'gelu' in transformers is the exact erf form.
_GELU_FORMS = {
    "gelu": "exact",
    "gelu_python": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
}
_IGNORED = (r"^cls\.", r"position_ids$", r"token_type_ids$")


def hf_bert_config(config_json) -> GroupBertConfig:
    """A BERT-mode GroupBertConfig from a Hugging Face BERT config.json.

    `config_json` is a path to config.json, a folder holding one, or the parsed dict.
    """
    source = "config dict"
    if not isinstance(config_json, dict):
        path = os.fspath(config_json)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        source = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Hugging Face BERT config not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                config_json = json.load(f)
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    values = config_json
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{source}: model_type {model_type!r} is not 'bert'; only BERT "
                              "checkpoints are supported")
    position_type = values.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type {position_type!r} is not "
                              "supported (only 'absolute')")
    hidden_act = values.get("hidden_act", "gelu")
    if hidden_act not in _GELU_FORMS:
        raise CheckpointError(f"{source}: hidden_act {hidden_act!r} is not supported; expected "
                              f"one of {sorted(_GELU_FORMS)}")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
    absent = [key for key in required if key not in values]
    if absent:
        raise CheckpointError(f"{source}: missing key(s) {absent}")
    return GroupBertConfig(
        vocab_size=int(values["vocab_size"]),
        hidden_size=int(values["hidden_size"]),
        num_layers=int(values["num_hidden_layers"]),
        num_heads=int(values["num_attention_heads"]),
        intermediate_size=int(values["intermediate_size"]),
        max_position_embeddings=int(values.get("max_position_embeddings", 512)),
        type_vocab_size=int(values.get("type_vocab_size", 2)),
        layer_structure="bert",
        ffn_groups=1,
        use_conv_module=False,
        norm_placement="post",
        layer_norm_epsilon=float(values.get("layer_norm_eps", 1e-12)),
        gelu_form=_GELU_FORMS[hidden_act],
        hidden_dropout=float(values.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(values.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(values.get("initializer_range", 0.02)),
    )


def _check_bert_mode(config: GroupBertConfig):
    if (config.layer_structure != "bert" or config.norm_placement != "post"
            or config.ffn_groups != 1 or config.use_conv_module):
        raise CheckpointError(
            "Hugging Face BERT names need a BERT-mode config (layer_structure='bert', "
            "norm_placement='post', ffn_groups=1, use_conv_module=False), got "
            f"layer_structure={config.layer_structure!r}, norm_placement={config.norm_placement!r}, "
            f"ffn_groups={config.ffn_groups}, use_conv_module={config.use_conv_module}")


def hf_bert_rules(config: GroupBertConfig, pooler: str = "keep") -> List[Rule]:
    """Rules between our BERT-mode encoder and `BertModel` state-dict names (no prefix)."""
    _check_bert_mode(config)
    rules = [
        one("embeddings/word_embeddings/embeddings", "embeddings.word_embeddings.weight"),
        one("embeddings/position_embeddings", "embeddings.position_embeddings.weight"),
        one("embeddings/segment_embeddings/embeddings", "embeddings.token_type_embeddings.weight"),
        one("embeddings/layer_norm/gamma", "embeddings.LayerNorm.weight"),
        one("embeddings/layer_norm/beta", "embeddings.LayerNorm.bias"),
    ]

    def dense(ours, theirs, if_missing="error"):
        return [one(f"{ours}/kernel", f"{theirs}.weight", transpose, transpose, if_missing),
                one(f"{ours}/bias", f"{theirs}.bias", if_missing=if_missing)]

    def norm(ours, theirs):
        return [one(f"{ours}/gamma", f"{theirs}.weight"), one(f"{ours}/beta", f"{theirs}.bias")]

    for i in range(config.num_layers):
        ours, theirs = f"transformer_layer_{i}", f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            rules += dense(f"{ours}/attention/{name}", f"{theirs}.attention.self.{name}")
        rules += dense(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
        rules += norm(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm")
        rules += dense(f"{ours}/feed_forward/intermediate", f"{theirs}.intermediate.dense")
        rules += dense(f"{ours}/feed_forward/output", f"{theirs}.output.dense")
        rules += norm(f"{ours}/feed_forward_norm", f"{theirs}.output.LayerNorm")
    rules += dense("pooler", "pooler.dense", if_missing=pooler)
    return rules


def normalize_hf_names(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Drops a leading `bert.` and renames legacy `LayerNorm.gamma/beta` to `weight/bias`."""
    out = {}
    for name, array in tensors.items():
        new = name[len("bert."):] if name.startswith("bert.") else name
        if new.endswith("LayerNorm.gamma"):
            new = new[:-len("gamma")] + "weight"
        elif new.endswith("LayerNorm.beta"):
            new = new[:-len("beta")] + "bias"
        if new in out:
            raise CheckpointError(f"Tensor {new!r} appears twice (with and without 'bert.' prefix)")
        out[new] = array
    return out


def load_hf_bert_state_dict(model, tensors: Dict[str, np.ndarray], source: str = "state dict",
                            strict: bool = True):
    """Assigns HF BERT tensors (numpy, PyTorch layout) to a BERT-mode GroupBertEncoder."""
    rules = hf_bert_rules(model.config)
    import_arrays(model, rules, normalize_hf_names(tensors), source, ignore=_IGNORED,
                  strict=strict)
    return model


def to_hf_bert_state_dict(model) -> Dict[str, np.ndarray]:
    """Our BERT-mode encoder's weights under `BertModel` names, PyTorch (out, in) kernels."""
    return export_arrays(model, hf_bert_rules(model.config))


def read_safetensors(path) -> Dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (float32 for bf16)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as numpy_error:  # bf16 has no numpy dtype: go through TensorFlow.
        try:
            from safetensors.tensorflow import load_file as load_tf
            return {k: v.numpy().astype(np.float32) if v.dtype.name == "bfloat16" else v.numpy()
                    for k, v in load_tf(path).items()}
        except Exception:
            raise CheckpointError(f"Cannot read {path}: {numpy_error}") from numpy_error


def load_hf_bert(model_dir, dtype=None, strict: bool = True):
    """A BERT-mode `GroupBertEncoder` with the weights of a Hugging Face BERT folder.

    `model_dir` holds config.json and model.safetensors. Raises FileNotFoundError for missing
    files and CheckpointError (a ValueError) naming the file for missing, unexpected or
    mis-shaped tensors.
    """
    from groupbert_tf.models.encoder import GroupBertEncoder

    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"Hugging Face BERT folder not found: {model_dir}")
    config_path = os.path.join(model_dir, "config.json")
    weights_path = os.path.join(model_dir, "model.safetensors")
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            hint = (" (only safetensors checkpoints are supported; convert pytorch_model.bin "
                    "first)" if path == weights_path
                    and os.path.isfile(os.path.join(model_dir, "pytorch_model.bin")) else "")
            raise FileNotFoundError(f"{path} not found{hint}")
    config = hf_bert_config(config_path)
    model = GroupBertEncoder(config, dtype=dtype)
    load_hf_bert_state_dict(model, read_safetensors(weights_path), source=weights_path,
                            strict=strict)
    return model
