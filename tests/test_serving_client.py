"""Request construction for TF Serving (no server: none can be installed here)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf import serving_client

predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")


def test_predict_request_carries_utf8_texts():
    texts = ["Hello world", "Crème brûlée", "中文", ""]
    request = serving_client.make_predict_request(texts, "groupbert")
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.model_spec.name == "groupbert"
    assert request.model_spec.signature_name == "serving_default"
    assert not request.model_spec.HasField("version")
    assert list(request.inputs) == ["text_a"]
    proto = request.inputs["text_a"]
    assert proto.dtype == tf.string.as_datatype_enum
    assert [d.size for d in proto.tensor_shape.dim] == [4]
    decoded = [v.decode("utf-8") for v in tf.make_ndarray(proto)]
    assert decoded == texts
    # Survives the wire format.
    again = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert again == request


def test_pair_request_version_and_raw_bytes():
    request = serving_client.make_predict_request(
        ["question?"], "span", signature="serve_text_pair", text_b=[b"context \xff"], version=3)
    assert request.model_spec.version.value == 3
    assert request.model_spec.signature_name == "serve_text_pair"
    assert tf.make_ndarray(request.inputs["text_b"]).tolist() == [b"context \xff"]
    assert sorted(request.inputs) == ["text_a", "text_b"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="list of strings"):
        serving_client.make_predict_request("one string", "m")
    with pytest.raises(ValueError, match="text_b"):
        serving_client.make_predict_request(["a", "b"], "m", text_b=["c"])


def test_outputs_to_numpy():
    response = predict_pb2.PredictResponse()
    response.outputs["probabilities"].CopyFrom(
        tf.make_tensor_proto(np.array([[0.25, 0.75]], np.float32)))
    out = serving_client.outputs_to_numpy(response)
    np.testing.assert_array_equal(out["probabilities"], [[0.25, 0.75]])


def test_rest_body():
    body = json.loads(serving_client.make_rest_body(["Zürich"], text_b=["b"],
                                                    signature="serve_text_pair"))
    assert body == {"signature_name": "serve_text_pair",
                    "inputs": {"text_a": ["Zürich"], "text_b": ["b"]}}
