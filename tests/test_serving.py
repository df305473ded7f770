"""Serving for TF Serving operators: bf16 exports, warmup requests, input checks, configs,
and gRPC / REST requests run through the SavedModel.

No TF Serving binary can be installed here, so the server's part is played by a fresh process
that imports only tensorflow, tensorflow_text and tensorflow_serving.apis (the protos) and
does what TF Serving's Predict handler does with a request: its `inputs` (TensorProtos or
JSON columns) go to the named signature of the loaded SavedModel and the outputs come back as
a PredictResponse or as TF Serving's `{"outputs": ...}` JSON. Everything a client does, and
the SavedModel's own behaviour, is real; the server's HTTP/gRPC transport is not tested.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from groupbert_tf import export, serving_client, serving_warmup, tokenization
from groupbert_tf.models import GroupBertPretrainer
from tests.test_export import SEQ, TEXTS, _reference, _tiny_config
from tests.test_export import pretrainer, vocab  # noqa: F401  (the export tests' fixtures)

prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
from tensorflow_serving.apis import predict_pb2  # noqa: E402  pylint: disable=wrong-import-position
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "docs", "tf_serving")
DT_BFLOAT16 = tf.bfloat16.as_datatype_enum
MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, pretrainer, vocab):
    root = tmp_path_factory.mktemp("serving")
    return {dtype: export.export_saved_model(pretrainer, vocab, str(root / dtype),
                                                   seq_length=SEQ, compute_dtype=dtype)
            for dtype in ("float32", "bfloat16")}


SERVER = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the ops, as TF Serving's build links them
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    spec = json.load(sys.stdin)
    models = {dtype: tf.saved_model.load(path) for dtype, path in spec["exports"].items()}
    report = {"warmup": {}, "errors": {}}
    arrays = {}

    def run(loaded, signature_name, inputs):
        signature = loaded.signatures[signature_name or "serving_default"]
        return {k: v.numpy() for k, v in signature(**inputs).items()}

    def predict(loaded, request):
        """A PredictRequest through the SavedModel, as TF Serving's Predict handler does."""
        inputs = {name: tf.constant(tf.make_ndarray(proto))
                  for name, proto in request.inputs.items()}
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, value in run(loaded, request.model_spec.signature_name, inputs).items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def rest_predict(loaded, body):
        """A columnar REST body through the SavedModel; TF Serving's JSON answer."""
        request = json.loads(body)
        inputs = {name: tf.constant([v.encode("utf-8") for v in values], tf.string)
                  for name, values in request["inputs"].items()}
        outputs = run(loaded, request.get("signature_name"), inputs)
        return json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}})

    # Warmup: parse the file back and replay every record.
    for dtype, loaded in models.items():
        path = spec["exports"][dtype] + "/assets.extra/tf_serving_warmup_requests"
        records = []
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            request = log.predict_log.request
            response = predict(loaded, request)
            records.append({"signature": request.model_spec.signature_name,
                            "model": request.model_spec.name,
                            "inputs": {k: [d.size for d in v.tensor_shape.dim]
                                       for k, v in request.inputs.items()},
                            "outputs": {k: [d.size for d in v.tensor_shape.dim]
                                        for k, v in response.outputs.items()}})
            if dtype == "float32":
                report.setdefault("warmup_texts", []).append(
                    [t.decode("utf-8") for t in tf.make_ndarray(request.inputs["text_a"])])
                for name, proto in response.outputs.items():
                    arrays[f"warmup/{i}/{name}"] = tf.make_ndarray(proto)
        report["warmup"][dtype] = records

    # The client's requests.
    request = predict_pb2.PredictRequest.FromString(bytes.fromhex(spec["grpc"]))
    report["grpc_response"] = predict(models["float32"], request).SerializeToString().hex()
    report["rest_response"] = rest_predict(models["float32"], spec["rest"])
    texts = tf.constant([t.encode("utf-8") for t in spec["texts"]])
    for dtype, loaded in models.items():
        for name, value in run(loaded, "serving_default", {"text_a": texts}).items():
            arrays[f"{dtype}/{name}"] = value

    # Hostile inputs: each must fail with an InvalidArgumentError.
    ids = tf.ones([2, 8], tf.int32)
    def example(segment, mask):
        feature = lambda values: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Example(features=tf.train.Features(feature={
            "input_ids": feature([101] * spec["seq"]),
            "segment_ids": feature([segment] * spec["seq"]),
            "input_mask": feature([mask] * spec["seq"])})).SerializeToString()
    cases = {
        "text_rank_2": ("serving_default", {"text_a": tf.constant([["a", "b"], ["c", "d"]])}),
        "text_column": ("serve_text", {"text_a": tf.constant([["a"], ["b"]])}),
        "text_scalar": ("serve_text", {"text_a": tf.constant("a")}),
        "text_b_rank_2": ("serve_text_pair", {"text_a": tf.constant(["a"]),
                                              "text_b": tf.constant([["b"]])}),
        "ids_rank_3": ("serve_token_ids", {"token_ids": ids[None], "segment_ids": ids,
                                           "padding_mask": ids}),
        "segment_negative": ("serve_token_ids", {"token_ids": ids, "segment_ids": -ids,
                                                 "padding_mask": ids}),
        "segment_too_large": ("serve_token_ids", {"token_ids": ids, "segment_ids": 2 * ids,
                                                  "padding_mask": ids}),
        "mask_5": ("serve_token_ids", {"token_ids": ids, "segment_ids": 0 * ids,
                                       "padding_mask": 5 * ids}),
        "mask_negative": ("serve_token_ids", {"token_ids": ids, "segment_ids": 0 * ids,
                                              "padding_mask": -ids}),
        "example_mask_5": ("serve_examples", {"examples": tf.constant([example(0, 5)])}),
        "example_segment_7": ("serve_examples", {"examples": tf.constant([example(7, 1)])}),
        "examples_rank_2": ("serve_examples", {"examples": tf.constant([[example(0, 1)]])}),
    }
    for key, (signature, inputs) in cases.items():
        try:
            run(models["float32"], signature, inputs)
            report["errors"][key] = "accepted"
        except Exception as error:  # the answer under test
            report["errors"][key] = f"{type(error).__name__}: {error}"
    # Valid edge values still pass: every segment id below type_vocab_size, mask 0 rows.
    run(models["float32"], "serve_token_ids", {"token_ids": ids, "segment_ids": ids,
                                               "padding_mask": 0 * ids})
    np.savez(spec["out"], **arrays)
    print(json.dumps(report))
''')


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """The fresh "server" process's report and arrays, and the client's requests."""
    grpc_request = serving_client.make_predict_request(TEXTS[:2], "groupbert")
    rest_body = serving_client.make_rest_body(TEXTS[2:])
    out = str(tmp_path_factory.mktemp("server") / "arrays.npz")
    spec = {"exports": exports, "grpc": grpc_request.SerializeToString().hex(),
            "rest": rest_body, "texts": TEXTS, "seq": SEQ, "out": out}
    env = {**os.environ, "PYTHONPATH": ""}  # none of our code importable by accident
    proc = subprocess.run([sys.executable, "-c", SERVER], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=900, cwd="/", env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), dict(np.load(out))


def _graph_matmuls(version_dir):
    """(op type, dtype enum) of every matmul-like node in the SavedModel's functions."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return [(node.op, node.attr["T"].type)
            for function in proto.meta_graphs[0].graph_def.library.function
            for node in function.node_def if node.op in MATMUL_OPS]


def test_bf16_export_runs_every_matmul_in_bfloat16(exports):
    bf16, f32 = _graph_matmuls(exports["bfloat16"]), _graph_matmuls(exports["float32"])
    assert len(bf16) == len(f32) > 20
    assert all(dtype == DT_BFLOAT16 for _, dtype in bf16)
    assert all(dtype == tf.float32.as_datatype_enum for _, dtype in f32)


def test_bf16_variables_are_the_rounded_float32_weights(exports, pretrainer):
    def values(path):  # keyed by the index in ServingModule.model_variables
        reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                if k.startswith("model_variables/")}
    bf16, f32 = values(exports["bfloat16"]), values(exports["float32"])
    assert sorted(bf16) == sorted(f32) and len(f32) == len(pretrainer.weights)
    dtypes = [bf16[k].dtype for k in bf16]
    # LayerNorm gammas and betas (float32 policy) stay float32; everything else is bfloat16.
    assert dtypes.count(tf.bfloat16.as_numpy_dtype) > dtypes.count(np.float32) > 0
    for key, value in bf16.items():
        assert f32[key].dtype == np.float32
        np.testing.assert_array_equal(value, f32[key].astype(value.dtype), err_msg=key)


@pytest.mark.slow
def test_bf16_outputs_are_float32_and_close(served, pretrainer, vocab):
    _, arrays = served
    reference = _reference(pretrainer, tokenization.BertTokenizer(vocab), TEXTS)
    for name in ("sequence_output", "pooled_output", "nsp_probabilities"):
        assert arrays[f"bfloat16/{name}"].dtype == np.float32
        np.testing.assert_allclose(arrays[f"float32/{name}"], reference[name], atol=1e-5)
        difference = np.abs(arrays[f"bfloat16/{name}"] - reference[name])
        # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value); through two
        # layers of unit-scale activations the errors stay within a few hundredths.
        assert 1e-4 < difference.max() < 0.1, (name, difference.max())
        assert difference.mean() < 0.02, (name, difference.mean())


@pytest.mark.slow
def test_warmup_records_parse_and_replay(served, exports, pretrainer, vocab):
    report, arrays = served
    for dtype in exports:
        records = report["warmup"][dtype]
        assert [r["inputs"] for r in records] == [{"text_a": [b]}
                                                  for b in export.WARMUP_BATCH_SIZES]
        assert {r["signature"] for r in records} == {"serving_default"}
        assert {r["model"] for r in records} == {dtype}  # the export folder's name
        for record, batch in zip(records, export.WARMUP_BATCH_SIZES):
            assert record["outputs"]["pooled_output"][0] == batch
            assert record["outputs"]["token_ids"] == [batch, SEQ]
    # The replayed answers are the model's answers for the warmup texts.
    tokenizer = tokenization.BertTokenizer(vocab)
    for i, batch in enumerate(export.WARMUP_BATCH_SIZES):
        texts = report["warmup_texts"][i]
        assert texts == [t.decode("utf-8") for t in serving_warmup.text_batch(batch)]
        reference = _reference(pretrainer, tokenizer, texts)
        np.testing.assert_allclose(arrays[f"warmup/{i}/pooled_output"],
                                   reference["pooled_output"], atol=1e-5)
    # The long warmup text fills a packed sequence of 128 (the batching config's shapes).
    pieces = tokenizer.tokenize(tf.constant([serving_warmup.WARMUP_TEXTS[0]]))
    assert pieces.row_lengths().numpy()[0] >= 126


def test_warmup_file_written_only_when_asked(tmp_path, pretrainer, vocab):
    path = export.export_saved_model(pretrainer, vocab, str(tmp_path / "m"),
                                           seq_length=SEQ, warmup_batch_sizes=())
    assert not os.path.exists(os.path.join(path, "assets.extra"))


def test_warmup_encoding_equals_the_official_protos():
    inputs = {"text_a": serving_warmup.text_batch(3), "text_b": serving_warmup.text_batch(3)}
    raw = serving_warmup.prediction_log_bytes(inputs, "serve_text_pair", "span")
    expected = prediction_log_pb2.PredictionLog()
    request = expected.predict_log.request
    request.model_spec.name = "span"
    request.model_spec.signature_name = "serve_text_pair"
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    assert prediction_log_pb2.PredictionLog.FromString(raw) == expected
    # Long fields need multi-byte varint lengths.
    long = serving_warmup.prediction_log_bytes({"text_a": [b"x" * 100_000]})
    parsed = prediction_log_pb2.PredictionLog.FromString(long).predict_log.request
    assert tf.make_ndarray(parsed.inputs["text_a"]).tolist() == [b"x" * 100_000]
    assert parsed.model_spec.signature_name == "serving_default"


@pytest.mark.slow
def test_grpc_and_rest_requests_through_the_saved_model(served, pretrainer, vocab):
    report, _ = served
    tokenizer = tokenization.BertTokenizer(vocab)
    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(report["grpc_response"]))
    assert response.model_spec.name == "groupbert"
    grpc_outputs = serving_client.outputs_to_numpy(response)
    rest_outputs = serving_client.rest_outputs_to_numpy(report["rest_response"])
    for outputs, texts in ((grpc_outputs, TEXTS[:2]), (rest_outputs, TEXTS[2:])):
        reference = _reference(pretrainer, tokenizer, texts)
        assert sorted(outputs) == sorted(reference)
        np.testing.assert_array_equal(outputs["token_ids"], reference["token_ids"])
        for name in ("pooled_output", "nsp_probabilities", "sequence_output"):
            np.testing.assert_allclose(outputs[name], reference[name], atol=1e-5)
    with pytest.raises(ValueError, match="TF Serving error: bad input"):
        serving_client.rest_outputs_to_numpy('{"error": "bad input"}')


# Each hostile input and words its error must contain (the input's name, the rule).
EXPECTED_ERRORS = {
    "text_rank_2": ("text_a", "[2,2]"),
    "text_column": ("text_a", "[2,1]"),
    "text_scalar": ("text_a", "[]"),
    "text_b_rank_2": ("text_b", "[1,1]"),
    "ids_rank_3": ("token_ids", "[1,2,8]"),
    "segment_negative": ("segment_ids must be in [0, type_vocab_size=2)",),
    "segment_too_large": ("segment_ids must be in [0, type_vocab_size=2)",),
    "mask_5": ("padding_mask must be 0 or 1",),
    "mask_negative": ("padding_mask must be 0 or 1",),
    "example_mask_5": ("input_mask (tf.Example feature) must be 0 or 1",),
    "example_segment_7": ("segment_ids (tf.Example feature) must be in [0, ",),
    "examples_rank_2": ("examples", "[1,1]"),
}


@pytest.mark.slow
def test_hostile_inputs_get_invalid_argument_errors_naming_the_input(served):
    report, _ = served
    assert sorted(report["errors"]) == sorted(EXPECTED_ERRORS)
    for key, words in EXPECTED_ERRORS.items():
        error = report["errors"][key]
        assert error.startswith("InvalidArgumentError"), (key, error[:300])
        for word in words:
            assert word in error, (key, word, error[:500])


def test_checks_hold_in_process_too(pretrainer, vocab):
    """The value checks traced into a tf.function (no SavedModel round trip)."""
    one_segment = GroupBertPretrainer(config=_tiny_config().replace(type_vocab_size=1))
    module = export.ServingModule(one_segment, vocab, seq_length=SEQ, max_length=64)
    ids = tf.ones([1, 4], tf.int32)
    serve = module.function("serve_token_ids")
    serve(ids, 0 * ids, ids)
    # The bound is the model's, not a constant: segment 1 is out of a table of 1.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, type_vocab_size=1\)"):
        serve(ids, ids, ids)


def test_with_compute_dtype_equals_mixed_bfloat16(pretrainer):
    """bf16 weights computed once give exactly what Keras' mixed_bfloat16 computes (which
    rounds every float32 weight to bfloat16 on each call)."""
    assert export.with_compute_dtype(pretrainer, "float32") is pretrainer
    bf16 = export.with_compute_dtype(pretrainer, "bfloat16")
    assert bf16.dtype_policy.name == "bfloat16"
    assert export.with_compute_dtype(bf16, "bfloat16") is bf16
    assert [a.path for a in pretrainer.weights] == [b.path for b in bf16.weights]
    mixed = type(pretrainer).from_config({**pretrainer.get_config(), "dtype": "mixed_bfloat16"})
    mixed.set_weights(pretrainer.get_weights())
    rng = np.random.default_rng(3)
    inputs = {"token_ids": rng.integers(0, 30522, (3, SEQ)).astype("int32"),
              "segment_ids": (np.arange(SEQ)[None] >= SEQ // 2).repeat(3, 0).astype("int32"),
              "padding_mask": (np.arange(SEQ)[None] < [[SEQ], [9], [3]]).astype("int32")}
    ours, keras_mixed = bf16.encoder(inputs), mixed.encoder(inputs)
    for name in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(np.asarray(keras.ops.cast(ours[name], "float32")),
                                      np.asarray(keras.ops.cast(keras_mixed[name], "float32")))
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        export.with_compute_dtype(pretrainer, "float16")


# --- the operator configs in docs/tf_serving -------------------------------------------------

def _batching_parameters_class():
    """BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).

    tensorflow-serving-api does not ship that proto, so its fields used here are declared
    again (names and types as in TF Serving 2.x) to parse the file strictly.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="groupbert_test_batching.proto", package="groupbert_test", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = {"max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3,
               "num_batch_threads": 4}
    for name, number in wrapped.items():
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE,
                          type_name=".google.protobuf.Int64Value", label=field.LABEL_OPTIONAL)
    message.field.add(name="thread_pool_name", number=5, type=field.TYPE_MESSAGE,
                      type_name=".google.protobuf.StringValue", label=field.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64,
                      label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL,
                      label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("groupbert_test.BatchingParameters"))


def test_batching_parameters_match_the_warmup_batch_sizes():
    with open(os.path.join(CONFIG_DIR, "batching_parameters.txt"), encoding="utf-8") as f:
        params = text_format.Parse(f.read(), _batching_parameters_class()())
    assert list(params.allowed_batch_sizes) == list(export.WARMUP_BATCH_SIZES)
    assert params.max_batch_size.value == export.WARMUP_BATCH_SIZES[-1]
    assert 0 < params.batch_timeout_micros.value <= 20_000
    assert params.num_batch_threads.value >= 1 and params.max_enqueued_batches.value >= 1
    assert not params.pad_variable_length_inputs


def test_models_config_parses_as_model_server_config():
    with open(os.path.join(CONFIG_DIR, "models.config"), encoding="utf-8") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    models = {c.name: c for c in config.model_config_list.config}
    assert sorted(models) == ["groupbert-mini", "sentiment"]
    for name, model in models.items():
        assert model.base_path == f"/models/{name}" and model.model_platform == "tensorflow"
    assert models["sentiment"].model_version_policy.latest.num_versions == 1
    pinned = models["groupbert-mini"]
    assert list(pinned.model_version_policy.specific.versions) == [1, 2]
    assert dict(pinned.version_labels) == {"stable": 1, "canary": 2}
