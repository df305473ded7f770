"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests` in a version folder.

TF Serving replays these `tensorflow.serving.PredictionLog` records (a TFRecord file) when it
loads a version, before the version takes traffic, so the first real requests do not pay for
oneDNN primitive creation and graph setup at each batch size.

The records are encoded here with protobuf's wire format around TensorFlow's own
`TensorProto`, so exporting needs no `tensorflow-serving-api` (a client package with gRPC
dependencies, pinned in requirements-dev.txt only). The tests parse the file back with
`tensorflow_serving.apis.prediction_log_pb2` and replay it in a fresh process.

Message layout (field numbers of tensorflow_serving/apis/*.proto):
  PredictionLog.predict_log = 6 -> PredictLog.request = 1 -> PredictRequest
  PredictRequest.model_spec = 1 (ModelSpec.name = 1, .signature_name = 3),
  PredictRequest.inputs = 2 (map<string, TensorProto>: entry key = 1, value = 2)
"""

import os

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Texts the warmup requests carry: long enough to fill a packed sequence of 128 (the model's
# cost does not depend on the text, the packed shape is fixed; the tokenizer's does a little).
WARMUP_TEXTS = (
    "GroupBERT adds a grouped convolution module and grouped feed-forward layers to every "
    "BERT layer, keeps pre-norm residual connections, and pre-trains without dropout; this "
    "sentence only warms up the server before it takes traffic, so its content is arbitrary "
    "and its length is enough to fill a packed sequence of one hundred and twenty-eight word "
    "pieces after WordPiece tokenization, including the special tokens at both ends. Longer "
    "texts are truncated in the graph, so a request costs the model the same whatever the "
    "length of its text; the tokenizer's own cost grows with the text, which is why this one "
    "is a realistic paragraph of about a hundred and fifty word pieces.",
    "A second, shorter request text.",
)


def _varint(value):
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2): a message, a string or bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def predict_request_bytes(inputs, signature_name="serving_default", model_name=""):
    """A serialized `PredictRequest`; `inputs` maps input names to tensors (or arrays)."""
    spec = b""
    if model_name:
        spec += _field(1, model_name.encode("utf-8"))
    spec += _field(3, signature_name.encode("utf-8"))
    request = _field(1, spec)
    for name in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[name]).SerializeToString()
        request += _field(2, _field(1, name.encode("utf-8")) + _field(2, tensor))
    return request


def prediction_log_bytes(inputs, signature_name="serving_default", model_name=""):
    """A serialized `PredictionLog` holding one predict request (no response)."""
    return _field(6, _field(1, predict_request_bytes(inputs, signature_name, model_name)))


def text_batch(batch_size, texts=WARMUP_TEXTS):
    """`batch_size` warmup texts (bytes), cycled."""
    return [texts[i % len(texts)].encode("utf-8") for i in range(batch_size)]


def write_warmup_requests(version_dir, input_names, batch_sizes,
                          signature_name="serving_default", model_name=""):
    """Writes one request per batch size for a signature whose inputs are string batches.

    `input_names`: the signature's inputs (`("text_a",)` or `("text_a", "text_b")`), each
    given the same texts. Returns the file written.
    """
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch_size in batch_sizes:
            texts = tf.constant(text_batch(batch_size), tf.string)
            writer.write(prediction_log_bytes({name: texts for name in input_names},
                                              signature_name, model_name))
    return path
