"""SavedModel export: TF Serving layout, raw-text signatures, a fresh process, bad inputs.

One tiny pre-training model is exported once per module; a fresh Python process that imports
only `tensorflow` and `tensorflow_text` loads it and runs every signature (as TF Serving
would, without our code), and its outputs are compared with the in-process Keras model fed by
the in-process tokenizer.
"""

import json
import os
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf import export, tokenization
from groupbert_tf.config import GroupBertConfig
from training.data import download

SEQ = 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Crème Brûlée in Zürich",
         "中文字符 and a\x00nul", "antidisestablishmentarianism"]
PAIRS_B = ["A second segment.", "", "x " * 40, "Ὀδυσσεύς"]
LONG = "word " * 20_000  # 100,000 characters
BAD_TEXTS = ["", "   \t\n ", b"abc \xff\xfe def \xc3", LONG]


def _tiny_config():
    return GroupBertConfig.from_preset("groupbert-tiny", max_position_embeddings=64)


@pytest.fixture(scope="module")
def vocab():
    download.fetch()
    return download.default_vocab_path()


@pytest.fixture(scope="module")
def pretrainer():
    keras.utils.set_random_seed(7)
    from groupbert_tf.models import GroupBertPretrainer
    return GroupBertPretrainer(config=_tiny_config())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pretrainer, vocab):
    export_dir = str(tmp_path_factory.mktemp("saved_models") / "tiny")
    return export.export_saved_model(pretrainer, vocab, export_dir, seq_length=SEQ)


def _reference(pretrainer, tokenizer, text_a, text_b=None):
    """The in-process path: tokenizer + Keras model, no export code involved."""
    packed = tokenizer(tf.constant(text_a), None if text_b is None else tf.constant(text_b),
                       seq_length=SEQ)
    encoded = pretrainer.encoder(packed, training=False)
    nsp = keras.ops.softmax(pretrainer.nsp_head(encoded["pooled_output"]), axis=-1)
    return {**{k: np.asarray(v) for k, v in packed.items()},
            "sequence_output": np.asarray(encoded["sequence_output"]),
            "pooled_output": np.asarray(encoded["pooled_output"]),
            "nsp_probabilities": np.asarray(nsp)}


FRESH_PROCESS = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the ops
    path, out = sys.argv[1], sys.argv[2]
    spec = json.load(sys.stdin)
    loaded = tf.saved_model.load(path)
    results, errors = {}, {}

    def call(key, signature, **kwargs):
        try:
            outputs = loaded.signatures[signature](**kwargs)
            for name, value in outputs.items():
                results[f"{key}/{name}"] = value.numpy()
        except Exception as error:  # a clear error is an acceptable answer; record it
            errors[key] = f"{type(error).__name__}: {str(error)[:300]}"

    strings = lambda xs: tf.constant([bytes.fromhex(x) for x in xs], tf.string)
    call("text", "serving_default", text_a=strings(spec["texts"]))
    call("pair", "serve_text_pair", text_a=strings(spec["texts"]), text_b=strings(spec["b"]))
    ids = {k: tf.constant(v, tf.int32) for k, v in spec["ids"].items()}
    call("ids", "serve_token_ids", **ids)
    examples = []
    for i in range(len(spec["ids"]["token_ids"])):
        features = {name: tf.train.Feature(int64_list=tf.train.Int64List(
            value=spec["ids"][key][i])) for key, name in (("token_ids", "input_ids"),
            ("segment_ids", "segment_ids"), ("padding_mask", "input_mask"))}
        examples.append(tf.train.Example(
            features=tf.train.Features(feature=features)).SerializeToString())
    call("examples", "serve_examples", examples=tf.constant(examples))
    call("bad", "serving_default", text_a=strings(spec["bad"]))
    call("empty_batch", "serving_default", text_a=tf.constant([], tf.string))
    call("wrong_dtype", "serving_default", text_a=tf.constant([1, 2], tf.int32))
    call("pair_mismatch", "serve_text_pair", text_a=tf.constant(["a", "b"]),
         text_b=tf.constant(["c"]))
    too_long = tf.ones([1, 1000], tf.int32)
    call("too_long", "serve_token_ids", token_ids=too_long, segment_ids=too_long,
         padding_mask=too_long)
    call("bad_ids", "serve_token_ids", token_ids=-too_long[:, :8],
         segment_ids=too_long[:, :8], padding_mask=too_long[:, :8])
    np.savez(out, **results)
    print(json.dumps({"modules": sorted(m for m in sys.modules
                                        if m.split(".")[0] in ("groupbert_tf", "training",
                                                               "keras")),
                      "errors": errors}))
''')


def _hex(texts):
    return [(t if isinstance(t, bytes) else t.encode("utf-8")).hex() for t in texts]


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory, pretrainer, vocab):
    tokenizer = tokenization.BertTokenizer(vocab)
    ids = {k: v.numpy().tolist()
           for k, v in tokenizer(tf.constant(TEXTS), seq_length=SEQ).items()}
    # Texts travel as hex of their bytes (invalid UTF-8 included).
    spec = {"texts": _hex(TEXTS), "b": _hex(PAIRS_B), "bad": _hex(BAD_TEXTS), "ids": ids}
    out = str(tmp_path_factory.mktemp("fresh") / "out.npz")
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of ours importable by accident
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, exported, out],
                          input=json.dumps(spec), capture_output=True, text=True, timeout=600,
                          cwd="/", env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(np.load(out)), report, tokenizer


def test_tf_serving_layout(exported, vocab):
    export_dir, version = os.path.split(exported)
    assert version == "1"
    assert sorted(os.listdir(export_dir)) == ["1"]  # no staging leftovers
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported, "variables", "variables.index"))
    with open(os.path.join(exported, "assets", "vocab.txt"), "rb") as f, open(vocab, "rb") as g:
        assert f.read() == g.read()
    assert export.next_version(export_dir) == 2


def test_next_version_and_no_overwrite(tmp_path, pretrainer, vocab):
    assert export.next_version(str(tmp_path / "missing")) == 1
    for name in ("1", "7", "notes", ".tmp-9-abc"):
        (tmp_path / name).mkdir()
    assert export.next_version(str(tmp_path)) == 8
    with pytest.raises(FileExistsError):
        export.export_saved_model(pretrainer, vocab, str(tmp_path), seq_length=SEQ, version=7)
    with pytest.raises(TypeError, match="export takes a groupbert_tf task or a GroupBertEncoder"):
        export.ServingModule(keras.Sequential([keras.layers.Dense(2)]), vocab)


def test_fresh_process_imports_only_tensorflow(fresh):
    _, report, _ = fresh
    # (TensorFlow itself may import keras; none of our code is loaded.)
    assert [m for m in report["modules"] if not m.startswith("keras")] == []


def test_fresh_process_outputs_equal_in_process_model(fresh, pretrainer):
    results, report, tokenizer = fresh
    for key in ("text", "pair", "ids", "examples"):
        assert key not in report["errors"], report["errors"][key]
    expected = _reference(pretrainer, tokenizer, TEXTS)
    expected_pair = _reference(pretrainer, tokenizer, TEXTS, PAIRS_B)
    for key, reference in (("text", expected), ("pair", expected_pair)):
        for name in ("token_ids", "segment_ids", "padding_mask"):
            np.testing.assert_array_equal(results[f"{key}/{name}"], reference[name])
        for name in ("sequence_output", "pooled_output", "nsp_probabilities"):
            np.testing.assert_allclose(results[f"{key}/{name}"], reference[name], atol=1e-5,
                                       rtol=1e-5, err_msg=f"{key}/{name}")
    assert not np.array_equal(expected["token_ids"], expected_pair["token_ids"])
    for key in ("ids", "examples"):
        assert sorted(k.split("/")[1] for k in results if k.startswith(key + "/")) == [
            "nsp_probabilities", "pooled_output", "sequence_output"]
        for name in ("sequence_output", "pooled_output", "nsp_probabilities"):
            np.testing.assert_allclose(results[f"{key}/{name}"], expected[name], atol=1e-5,
                                       rtol=1e-5)


def test_bad_text_gives_defined_outputs(fresh, pretrainer):
    results, report, tokenizer = fresh
    assert "bad" not in report["errors"], report["errors"].get("bad")
    ids = results["bad/token_ids"]
    mask = results["bad/padding_mask"]
    assert ids.shape == (4, SEQ)
    np.testing.assert_array_equal(ids[0, :3], [tokenizer.cls_id, tokenizer.sep_id, 0])
    np.testing.assert_array_equal(ids[1, :3], [tokenizer.cls_id, tokenizer.sep_id, 0])
    assert tokenizer.unk_id in ids[2]  # invalid UTF-8 becomes [UNK], not a failure
    assert mask[3].sum() == SEQ and ids[3, -1] == tokenizer.sep_id  # truncated to SEQ
    for name in ("sequence_output", "pooled_output", "nsp_probabilities"):
        assert np.all(np.isfinite(results[f"bad/{name}"]))
    reference = _reference(pretrainer, tokenizer, BAD_TEXTS)
    np.testing.assert_allclose(results["bad/pooled_output"], reference["pooled_output"],
                               atol=1e-5)


def test_empty_batch_and_errors(fresh):
    results, report, _ = fresh
    assert "empty_batch" not in report["errors"], report["errors"].get("empty_batch")
    assert results["empty_batch/token_ids"].shape == (0, SEQ)
    assert results["empty_batch/pooled_output"].shape[0] == 0
    errors = report["errors"]
    assert "wrong_dtype" in errors and "string" in errors["wrong_dtype"].lower()
    assert "same batch size" in errors["pair_mismatch"]
    assert "max_position_embeddings" in errors["too_long"]
    assert "negative token_ids" in errors["bad_ids"]


def _run(args, timeout=300):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_saved_model_cli_show_lists_signatures(exported):
    code, output = _run([SAVED_MODEL_CLI, "show", "--dir", exported, "--all"])
    assert code == 0, output[-2000:]
    for signature in export.SIGNATURES:
        assert f"signature_def['{signature}']" in output
    for name in ("text_a", "text_b", "token_ids", "examples", "sequence_output",
                 "pooled_output", "nsp_probabilities"):
        assert f"['{name}']" in output


def test_saved_model_cli_run_through_wrapper(exported):
    code, output = _run([sys.executable, "-m", "training.saved_model_cli", "run", "--dir",
                         exported, "--tag_set", "serve", "--signature_def", "serving_default",
                         "--input_exprs", 'text_a=["hello world", ""]'])
    assert code == 0, output[-2000:]
    assert "Result for output key pooled_output" in output
    assert "Result for output key nsp_probabilities" in output


def _forced_xla_functions(saved_model_pb):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    proto = saved_model_pb2.SavedModel()
    with open(saved_model_pb, "rb") as f:
        proto.ParseFromString(f.read())
    found = []
    for meta_graph in proto.meta_graphs:
        library = meta_graph.graph_def.library
        for function in library.function:
            if function.attr["_XlaMustCompile"].b:
                found.append(function.signature.name)
            found += [f"{function.signature.name}/{node.name}" for node in function.node_def
                      if node.attr["_XlaMustCompile"].b]
        found += [node.name for node in meta_graph.graph_def.node
                  if node.attr["_XlaMustCompile"].b]
    return found, len(proto.meta_graphs[0].graph_def.library.function)


def test_no_forced_xla_function(exported, tmp_path):
    found, count = _forced_xla_functions(os.path.join(exported, "saved_model.pb"))
    assert count > 10 and found == []
    # The scan does see the attribute when it is there.
    jitted = tf.Module()
    jitted.f = tf.function(lambda x: x * 2.0, jit_compile=True,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(jitted, str(tmp_path / "jit"))
    assert _forced_xla_functions(str(tmp_path / "jit" / "saved_model.pb"))[0]


@pytest.fixture(scope="module")
def module(pretrainer, vocab):
    return export.ServingModule(pretrainer, vocab, seq_length=SEQ, max_length=64)


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_property_random_unicode_text(module, texts):
    outputs = module.function("serve_text")(tf.constant([t.encode("utf-8") for t in texts]))
    ids = outputs["token_ids"].numpy()
    mask = outputs["padding_mask"].numpy()
    assert ids.shape == (len(texts), SEQ)
    assert np.all(ids[:, 0] == module.tokenizer.cls_id)
    lengths = mask.sum(axis=1)
    assert np.all(ids[np.arange(len(texts)), lengths - 1] == module.tokenizer.sep_id)
    assert np.all(mask[:, :-1] >= mask[:, 1:])  # real tokens first
    assert np.all((ids >= 0) & (ids < module.tokenizer.vocab_size))
    for name in ("sequence_output", "pooled_output", "nsp_probabilities"):
        assert np.all(np.isfinite(outputs[name].numpy()))


def test_cli_restores_checkpoint_and_exports(tmp_path, vocab):
    """`python -m training.export` logic: newest checkpoint of <model_dir>/checkpoints."""
    from training import export as export_cli  # pylint: disable=import-outside-toplevel
    from groupbert_tf.models import GroupBertPretrainer
    config = _tiny_config()
    model = GroupBertPretrainer(config=config)
    tf.train.Checkpoint(model=model).save(str(tmp_path / "run" / "checkpoints" / "ckpt"))
    restored, path = export_cli.restore_model("pretraining", config, str(tmp_path / "run"))
    assert path.endswith("ckpt-1")
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Fine-tuning's best epoch is written with `Checkpoint.write` (no save counter).
    tf.train.Checkpoint(model=model).write(str(tmp_path / "finetuned" / "best" / "best"))
    restored, path = export_cli.restore_model("pretraining", config, str(tmp_path / "finetuned"))
    assert path.endswith(os.path.join("best", "best"))
    np.testing.assert_array_equal(np.asarray(restored.weights[0]), np.asarray(model.weights[0]))
    with pytest.raises(FileNotFoundError, match="--model_dir .*empty: no checkpoint"):
        export_cli.restore_model("pretraining", config, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--task must be one of"):
        export_cli.restore_model("translation", config, str(tmp_path / "run"))
    # The export serves the restored weights, with the vocab and length asked for.
    written = export_cli.export_from_checkpoint(
        str(tmp_path / "run"), config, "pretraining", str(tmp_path / "out"), vocab=vocab,
        seq_length=SEQ)
    assert written == str(tmp_path / "out" / "1")
    serve = tf.saved_model.load(written).signatures["serving_default"]
    outputs = serve(text_a=tf.constant(TEXTS[:2]))
    reference = _reference(model, tokenization.BertTokenizer(vocab), TEXTS[:2])
    np.testing.assert_array_equal(outputs["token_ids"].numpy(), reference["token_ids"])
    np.testing.assert_allclose(outputs["pooled_output"].numpy(), reference["pooled_output"],
                               atol=1e-5)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, vocab):
    from groupbert_tf.models import GroupBertPretrainer
    config = _tiny_config()
    (tmp_path / "config.json").write_text(config.to_json())
    model = GroupBertPretrainer(config=config)
    tf.train.Checkpoint(model=model).save(str(tmp_path / "run" / "checkpoints" / "ckpt"))
    code, output = _run([sys.executable, "-m", "training.export",
                         f"--model_dir={tmp_path / 'run'}", f"--config={tmp_path / 'config.json'}",
                         "--task=pretraining", f"--export_dir={tmp_path / 'sm'}",
                         f"--seq_length={SEQ}"], timeout=600)
    assert code == 0, output[-3000:]
    loaded = tf.saved_model.load(str(tmp_path / "sm" / "1"))
    outputs = loaded.signatures["serving_default"](text_a=tf.constant(TEXTS))
    reference = _reference(model, tokenization.BertTokenizer(vocab), TEXTS)
    np.testing.assert_allclose(outputs["pooled_output"].numpy(), reference["pooled_output"],
                               atol=1e-5)


@pytest.mark.slow
def test_span_offsets_map_word_pieces_back_to_the_text(vocab):
    from groupbert_tf.models.span_labeler import GroupBertSpanLabeler  # pylint: disable=import-outside-toplevel
    model = GroupBertSpanLabeler(config=_tiny_config(), dropout=0.0)
    module = export.ServingModule(model, vocab, seq_length=SEQ, max_length=64)
    texts = TEXTS + PAIRS_B + ["Ὀδυσσεύς and the final sigma: λόγος.", "zero\u200bwidth soft\u00ad",
                               "R″ and 3\u00a0km", b"bad \xff bytes", ""]
    raw = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
    ids, starts, ends = module.tokenizer.tokenize_with_offsets(tf.constant(raw))
    assert ids.to_list() == module.tokenizer.tokenize(tf.constant(raw)).to_list()
    vocab_list = module.tokenizer.vocab
    for text, row_ids, row_starts, row_ends in zip(raw, ids.to_list(), starts.to_list(),
                                                   ends.to_list()):
        for piece_id, start, end in zip(row_ids, row_starts, row_ends):
            assert 0 <= start < end <= len(text)
            if piece_id == module.tokenizer.unk_id:
                continue
            piece = vocab_list[piece_id].removeprefix("##")
            normalized = module.tokenizer.normalize(tf.constant([text[start:end]]))[0]
            assert normalized.numpy().decode("utf-8") == piece, (text, start, end)
    outputs = module.function("serve_text_pair")(tf.constant(raw[:4]), tf.constant(raw[4:8]))
    for name in ("start_logits", "end_logits", "token_start_offsets", "token_end_offsets"):
        assert outputs[name].shape == (4, SEQ)
    token_ids = outputs["token_ids"].numpy()
    special = np.isin(token_ids, [module.tokenizer.cls_id, module.tokenizer.sep_id, 0])
    assert np.all((outputs["token_start_offsets"].numpy() == -1) == special)
    assert np.all((outputs["token_end_offsets"].numpy() == -1) == special)
