"""Clients for a GroupBERT SavedModel served by TF Serving: gRPC PredictRequest and REST JSON.

  import grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  from groupbert_tf import serving_client

  channel = grpc.insecure_channel("localhost:8500")
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  request = serving_client.make_predict_request(["Hello world"], "groupbert")
  response = stub.Predict(request, timeout=10.0)
  outputs = serving_client.outputs_to_numpy(response)   # {"pooled_output": array, ...}

Needs `tensorflow-serving-api` (pinned in requirements-dev.txt; it installs against our
TensorFlow pin) for the gRPC protos. See docs/serving.md.
"""

import json

import numpy as np
import tensorflow as tf


def _apis():
    try:
        from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError("make_predict_request needs `pip install tensorflow-serving-api` "
                          "(same version as tensorflow)") from error
    return predict_pb2


def _as_bytes(texts, name):
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single string")
    return [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]


def text_inputs(texts, text_b=None):
    """The inputs dict of the text signatures: `text_a` (and `text_b`) as bytes lists."""
    inputs = {"text_a": _as_bytes(texts, "texts")}
    if text_b is not None:
        inputs["text_b"] = _as_bytes(text_b, "text_b")
        if len(inputs["text_b"]) != len(inputs["text_a"]):
            raise ValueError(f"{len(inputs['text_a'])} texts but {len(inputs['text_b'])} text_b")
    return inputs


def make_predict_request(texts, model_name, signature="serving_default", text_b=None,
                         version=None):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for raw text.

    Args:
      texts: list of str (or bytes): the `text_a` input, one per example.
      model_name: the name TF Serving serves the model under (`--model_name`).
      signature: "serving_default", "serve_text" or "serve_text_pair".
      text_b: second segments (for "serve_text_pair", and the span task's default).
      version: a model version number, or None for the newest.
    """
    predict_pb2 = _apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, values in text_inputs(texts, text_b).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string,
                                                           shape=[len(values)]))
    return request


def outputs_to_numpy(response):
    """PredictResponse -> {output name: numpy array}."""
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def make_rest_body(texts, signature="serving_default", text_b=None):
    """JSON body for `POST /v1/models/<name>[/versions/<v>]:predict` (columnar format).

    Texts go as JSON strings (UTF-8); TF Serving's REST API cannot carry invalid UTF-8 that
    way (use gRPC or `{"b64": ...}` values for raw bytes).
    """
    inputs = {name: [v.decode("utf-8") for v in values]
              for name, values in text_inputs(texts, text_b).items()}
    return json.dumps({"signature_name": signature, "inputs": inputs}, ensure_ascii=False)


def rest_outputs_to_numpy(response_body):
    """The JSON answer to a columnar (`"inputs"`) REST request -> {output name: numpy array}.

    TF Serving answers `{"outputs": {name: nested lists}}`, or `{"error": "..."}`, raised
    here as a ValueError.
    """
    response = json.loads(response_body)
    if "error" in response:
        raise ValueError(f"TF Serving error: {response['error']}")
    return {name: np.asarray(value) for name, value in response["outputs"].items()}
