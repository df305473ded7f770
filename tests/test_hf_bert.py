"""Loading Hugging Face BERT checkpoints (groupbert_tf.checkpoints.hf_bert): the real
all-MiniLM-L6-v2 checkpoint, config mapping, name variants and error messages."""

import json

import numpy as np
import pytest

from groupbert_tf.checkpoints import (CheckpointError, hf_bert_config, load_hf_bert,
                                      load_hf_bert_state_dict, read_safetensors,
                                      to_hf_bert_state_dict)
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.models import GroupBertEncoder
from tests.conftest import minilm_folder



@pytest.fixture(scope="module")
def minilm():
    folder = minilm_folder()
    return folder, load_hf_bert(folder)


def _tokenize(folder, sentences):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings], np.int32)
    mask = np.array([e.attention_mask for e in encodings], np.int32)
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def test_minilm_config_and_shapes(minilm):
    folder, model = minilm
    config = model.config
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert config.intermediate_size == 1536 and config.vocab_size == 30522
    assert config.layer_structure == "bert" and config.norm_placement == "post"
    assert config.ffn_groups == 1 and not config.use_conv_module
    assert config.gelu_form == "exact" and config.layer_norm_epsilon == 1e-12
    assert config.hidden_dropout == 0.1 and config.attention_dropout == 0.1
    inputs = _tokenize(folder, ["a short one", "a somewhat longer sentence than that"])
    outputs = model(inputs)
    assert tuple(outputs["sequence_output"].shape) == (2, inputs["token_ids"].shape[1], 384)
    assert tuple(outputs["pooled_output"].shape) == (2, 384)


def test_minilm_weights_equal_safetensors(minilm):
    folder, model = minilm
    tensors = read_safetensors(folder / "model.safetensors")
    variables = {v.path: v.numpy() for v in model.weights}
    np.testing.assert_array_equal(variables["embeddings/word_embeddings/embeddings"],
                                  tensors["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(variables["transformer_layer_3/attention/query/kernel"],
                                  tensors["encoder.layer.3.attention.self.query.weight"].T)
    np.testing.assert_array_equal(variables["transformer_layer_5/feed_forward/output/kernel"],
                                  tensors["encoder.layer.5.output.dense.weight"].T)
    np.testing.assert_array_equal(variables["transformer_layer_0/feed_forward_norm/gamma"],
                                  tensors["encoder.layer.0.output.LayerNorm.weight"])
    # Every checkpoint tensor comes back, unchanged, from the loaded model.
    exported = to_hf_bert_state_dict(model)
    used = {k: v for k, v in tensors.items() if "position_ids" not in k}
    assert set(exported) == set(used)
    for name, array in used.items():
        np.testing.assert_array_equal(exported[name], array, err_msg=name)


def test_minilm_similar_sentences_are_closer(minilm):
    folder, model = minilm
    sentences = ["A man is playing a guitar.",
                 "Someone is strumming a guitar.",
                 "The stock market fell sharply on Tuesday.",
                 "Share prices dropped steeply this week."]
    inputs = _tokenize(folder, sentences)
    hidden = np.asarray(model(inputs)["sequence_output"])
    mask = inputs["padding_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cos = pooled @ pooled.T
    print("cosine similarities:\n", np.round(cos, 3))
    assert cos[0, 1] > max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3]) + 0.2
    assert cos[2, 3] > max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3]) + 0.2


def test_padding_does_not_change_real_tokens(minilm):
    folder, model = minilm
    alone = _tokenize(folder, ["padding must not leak"])
    batch = _tokenize(folder, ["padding must not leak",
                               "a much longer sentence forces padding onto the first one"])
    length = alone["token_ids"].shape[1]
    np.testing.assert_allclose(np.asarray(model(batch)["sequence_output"])[0, :length],
                               np.asarray(model(alone)["sequence_output"])[0], atol=2e-5)


# ---- config mapping -------------------------------------------------------------------------

BASE_JSON = dict(model_type="bert", vocab_size=50, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=48, max_position_embeddings=24,
                 type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)


def test_hf_bert_config_mapping(tmp_path):
    config = hf_bert_config(dict(BASE_JSON))
    assert config == GroupBertConfig(
        vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
        max_position_embeddings=24, type_vocab_size=2, layer_structure="bert", ffn_groups=1,
        use_conv_module=False, norm_placement="post", layer_norm_epsilon=1e-12,
        gelu_form="exact", hidden_dropout=0.1, attention_dropout=0.0)
    for act in ("gelu_new", "gelu_pytorch_tanh"):
        assert hf_bert_config(dict(BASE_JSON, hidden_act=act)).gelu_form == "tanh"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(BASE_JSON, layer_norm_eps=1e-5)))
    assert hf_bert_config(path).layer_norm_epsilon == 1e-5
    assert hf_bert_config(tmp_path).layer_norm_epsilon == 1e-5  # the folder works too


@pytest.mark.parametrize("change, message", [
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(model_type="roberta"), "model_type"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
])
def test_hf_bert_config_rejects_unsupported(change, message):
    with pytest.raises(CheckpointError, match=message):
        hf_bert_config(dict(BASE_JSON, **change))


# ---- files, name variants, errors -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """A random tiny BERT-mode model and its HF state dict."""
    model = GroupBertEncoder(hf_bert_config(dict(BASE_JSON, hidden_dropout_prob=0.0)))
    return model, to_hf_bert_state_dict(model)


def _write_folder(folder, tensors, config=BASE_JSON):
    from safetensors.numpy import save_file

    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    return folder


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(2, 7)).astype(np.int32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_load_folder_with_and_without_prefix(tmp_path, tiny, prefix):
    model, tensors = tiny
    extra = {"cls.predictions.bias": np.zeros(50, np.float32)} if prefix else {}
    folder = _write_folder(tmp_path / "m", {**{prefix + k: v for k, v in tensors.items()}, **extra})
    loaded = load_hf_bert(folder)
    np.testing.assert_allclose(np.asarray(loaded(_inputs())["sequence_output"]),
                               np.asarray(model(_inputs())["sequence_output"]), atol=1e-6)


def test_legacy_layer_norm_names_and_missing_pooler(tmp_path, tiny):
    model, tensors = tiny
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                        "LayerNorm.beta"): v
               for k, v in tensors.items() if not k.startswith("pooler.")}
    loaded = load_hf_bert(_write_folder(tmp_path / "m", renamed))
    np.testing.assert_allclose(np.asarray(loaded(_inputs())["sequence_output"]),
                               np.asarray(model(_inputs())["sequence_output"]), atol=1e-6)


def test_missing_files_are_named(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf_bert(tmp_path / "nowhere")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BASE_JSON))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_bert(folder)
    (folder / "config.json").unlink()
    _write_folder(folder, tiny[1])
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_bert(folder)


def test_missing_tensor_is_named_with_the_file(tmp_path, tiny):
    tensors = dict(tiny[1])
    del tensors["encoder.layer.1.attention.self.key.weight"]
    folder = _write_folder(tmp_path / "m", tensors)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*"
                                              r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        load_hf_bert(folder)


def test_shape_mismatch_is_named(tiny):
    model, tensors = tiny
    bad = dict(tensors)
    bad["encoder.layer.0.intermediate.dense.weight"] = np.zeros((40, 32), np.float32)
    with pytest.raises(CheckpointError, match=r"my\.file.*intermediate\.dense\.weight: shape "
                                              r"\(40, 32\).*needs \(48, 32\)"):
        load_hf_bert_state_dict(model, bad, source="my.file")


def test_unexpected_tensor_is_an_error_unless_not_strict(tiny):
    model, tensors = tiny
    bad = dict(tensors, **{"encoder.layer.2.attention.self.query.weight": np.zeros((32, 32))})
    with pytest.raises(CheckpointError, match="unexpected.*encoder.layer.2"):
        load_hf_bert_state_dict(model, bad)
    load_hf_bert_state_dict(model, bad, strict=False)


def test_failed_load_changes_nothing(tiny):
    model, tensors = tiny
    before = [v.numpy().copy() for v in model.weights]
    bad = {k: (v + 1 if v.ndim else v) for k, v in tensors.items()}
    del bad["pooler.dense.bias"]
    bad["pooler.dense.weight"] = np.zeros((3, 3), np.float32)  # mismatched: whole load fails
    with pytest.raises(CheckpointError):
        load_hf_bert_state_dict(model, bad)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_groupbert_config_is_rejected():
    model = GroupBertEncoder(GroupBertConfig.from_preset(
        "groupbert-tiny", num_layers=1, vocab_size=30, max_position_embeddings=16))
    with pytest.raises(CheckpointError, match="BERT-mode"):
        to_hf_bert_state_dict(model)
