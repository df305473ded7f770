"""SavedModel export for TF Serving: raw text in, named task outputs out (TensorFlow-specific).

Layout: `<export_dir>/<version>/` (`saved_model.pb`, `variables/`, `assets/vocab.txt`), the
layout TF Serving watches; a version is written under a temporary name and renamed into place,
so a server never sees a half-written version.

Signatures (see docs/serving.md):

- `serve_text`: `text_a` tf.string [batch] -> task outputs plus the packed `token_ids`,
  `segment_ids`, `padding_mask` [batch, seq_length].
- `serve_text_pair`: `text_a`, `text_b` tf.string [batch] -> the same, packed as
  `[CLS] a [SEP] b [SEP]` (BERT longest-first truncation).
- `serving_default`: the text signature of the task's `serving_text_inputs`
  (`serve_text`; `serve_text_pair` for span: question, context).
- `serve_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask` [batch, seq] (any seq up
  to `max_position_embeddings`) -> task outputs.
- `serve_examples`: `examples` tf.string [batch] of serialized `tf.Example`s with int64
  features `input_ids`, `input_mask`, `segment_ids` of length `seq_length` (the names of the
  BERT TFRecords that training/data/tfrecord.py reads) -> task outputs.

Outputs are the task's `serving_outputs` (groupbert_tf/models: pre-training `sequence_output`,
`pooled_output`, `nsp_probabilities`; classification `logits`, `probabilities`; span
`start_logits`, `end_logits`; a bare encoder its two outputs). The text signatures of tasks
with `serving_offsets` (span) also return `token_start_offsets` / `token_end_offsets`
(int64 [batch, seq_length]): byte offsets [start, end) of each word piece in the text of its
segment (`segment_ids` says which: 0 = text_a, 1 = text_b), -1 on [CLS], [SEP] and padding.

Every signature checks its inputs in the graph (InvalidArgumentError naming the input): string
batches rank 1, ids rank 2, token ids in the vocab, segment ids in [0, type_vocab_size),
padding mask 0 or 1. (`ensure_shape`, not a rank assert: a rank computed from the declared
[None] shape is folded to a constant, and fed tensors are not checked against that shape.)

Tokenization runs in the graph (tensorflow-text ops: load with `import tensorflow_text`). The
serving functions are plain `tf.function`s (never `jit_compile`): TF Serving does not run
functions marked for forced XLA compilation by default.

`compute_dtype="bfloat16"` exports the model under Keras' `bfloat16` policy: matmuls in
bfloat16 (oneDNN's bf16 kernels: AVX512_BF16 or AMX), weights stored in bfloat16, LayerNorms
(their own float32 policy) and the attention softmax in float32, outputs float32. It computes
exactly what `mixed_bfloat16` computes (that policy rounds every weight to bfloat16 at each
call), without re-casting every weight on every request (tested). Each version also carries
TF Serving warmup requests (`groupbert_tf.serving_warmup`) for `serving_default` at
`WARMUP_BATCH_SIZES`.
"""

import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from groupbert_tf import serving_warmup, tokenization
from groupbert_tf.models.encoder import ENCODER_INPUTS, GroupBertEncoder
from groupbert_tf.models.task import Task

# The tf.Example feature names of each encoder input (Google BERT's TFRecord names).
EXAMPLE_FEATURES = {"token_ids": "input_ids", "segment_ids": "segment_ids",
                    "padding_mask": "input_mask"}

SIGNATURES = ("serving_default", "serve_text", "serve_text_pair", "serve_token_ids",
              "serve_examples")
# compute_dtype -> the Keras dtype policy the exported model runs under.
COMPUTE_DTYPE_POLICIES = {"float32": "float32", "bfloat16": "bfloat16"}
# Batch sizes of the warmup requests; equal to `allowed_batch_sizes` in
# docs/tf_serving/batching_parameters.txt, so with --enable_batching the model only ever sees
# warmed-up shapes.
WARMUP_BATCH_SIZES = (1, 8, 32)


def next_version(export_dir):
    """1 + the largest integer sub-folder of `export_dir` (1 when there is none)."""
    if not tf.io.gfile.isdir(export_dir):
        return 1
    versions = [int(name.strip("/")) for name in tf.io.gfile.listdir(export_dir)
                if re.fullmatch(r"\d+/?", name)]
    return max(versions, default=0) + 1


def _rank_checked(tensor, name, rank):
    """`tensor`, failing at run time (InvalidArgumentError naming `name`) unless of `rank`."""
    node = re.sub(r"\W+", "_", name).strip("_")
    return tf.ensure_shape(tensor, [None] * rank, name=f"{node}_must_have_rank_{rank}")


def _float32(tensor):
    tensor = tf.convert_to_tensor(tensor)
    return tf.cast(tensor, tf.float32) if tensor.dtype.is_floating else tensor


class _Functions:
    """A plain attribute bag; not trackable, so the SavedModel does not walk into it."""

    def __init__(self, **functions):
        self.__dict__.update(functions)


class ServingModule(tf.__internal__.tracking.AutoTrackable):
    """The exported object: a tokenizer, a task model and the serving `tf.function`s.

    An AutoTrackable, not a tf.Module: saving walks every attribute, and tf.Module's
    `variables` properties would flatten the whole object graph on each visit.

    Args:
      model: a task (groupbert_tf.models.task.Task: its `serving_outputs`,
        `serving_text_inputs` and `serving_offsets` say what is served) or a bare
        GroupBertEncoder (its two outputs, on `text_a`).
      vocab_path: WordPiece vocab file; copied into the SavedModel's assets.
      seq_length: packed length of the text signatures (and of `serve_examples`).
      max_length: the longest sequence `serve_token_ids` accepts (default: the model's
        `max_position_embeddings`).
      lower_case: the tokenizer's lower-casing.
    """

    def __init__(self, model, vocab_path, seq_length=128, max_length=None, lower_case=True):
        super().__init__()
        if isinstance(model, Task):
            self._outputs_fn = model.serving_outputs
            self.text_inputs = model.serving_text_inputs
            self.offsets = model.serving_offsets
        elif isinstance(model, GroupBertEncoder):
            self._outputs_fn = lambda inputs: model(inputs, training=False)
            self.text_inputs, self.offsets = ("text_a",), False
        else:
            raise TypeError(f"export takes a groupbert_tf task or a GroupBertEncoder, got "
                            f"{type(model).__name__}")
        max_length = max_length or model.config.max_position_embeddings
        if seq_length < 3:
            raise ValueError(f"seq_length={seq_length}: needs at least 3 ([CLS] a [SEP])")
        if max_length is not None and seq_length > max_length:
            raise ValueError(f"seq_length={seq_length} exceeds the model's "
                             f"max_position_embeddings={max_length}")
        self.seq_length = int(seq_length)
        self.max_length = int(max_length)
        self.type_vocab_size = int(model.config.type_vocab_size)
        # Track the model's variables, not the Keras model itself: saving a Keras object
        # would also trace and save every layer's own functions (slow, and not served).
        # The tf.Variables under Keras variables: TF1-style loaders (TF Serving's C++ loader,
        # `saved_model_cli run`) create and restore only variables the object graph holds as
        # tf.Variables; a Keras variable wrapper left them uninitialized there.
        self.model_variables = [v.value if isinstance(v, keras.Variable) else v
                                for v in model.variables]
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        self.tokenizer = tokenization.BertTokenizer(vocab_path, lower_case=lower_case)

        text = tf.TensorSpec([None], tf.string)
        ids = tf.TensorSpec([None, None], tf.int32)
        # The serving functions live in a plain (untracked) holder: `tf.saved_model.save`
        # then serializes only the signatures' concrete functions instead of re-tracing
        # every attached `tf.function` in its save context (that doubled the export time).
        # No autograph: nothing here branches on a tensor, and one long test session once
        # failed inside autograph's conversion of the offset tokenization (not reproduced).
        plain = dict(jit_compile=False, autograph=False)
        self._functions = _Functions(
            serve_text=tf.function(self._serve_text, input_signature=[text], **plain),
            serve_text_pair=tf.function(self._serve_text_pair, input_signature=[text, text],
                                        **plain),
            serve_token_ids=tf.function(self._serve_token_ids, input_signature=[ids, ids, ids],
                                        **plain),
            serve_examples=tf.function(self._serve_examples, input_signature=[text], **plain))

    def function(self, name):
        """The serving `tf.function` `name` ("serve_text", ...), for in-process use.

        (Not an attribute: `tf.saved_model.save` would re-trace attached functions.)
        """
        return getattr(self._functions, name)

    def signatures(self):
        """The signature map for `tf.saved_model.save`."""
        text = self.function("serve_text").get_concrete_function()
        pair = self.function("serve_text_pair").get_concrete_function()
        return {
            "serving_default": pair if len(self.text_inputs) == 2 else text,
            "serve_text": text,
            "serve_text_pair": pair,
            "serve_token_ids": self.function("serve_token_ids").get_concrete_function(),
            "serve_examples": self.function("serve_examples").get_concrete_function(),
        }

    # -- the model ---------------------------------------------------------------------------

    def run_model(self, inputs):
        """Encoder input dict -> the task's serving outputs (float32)."""
        outputs = {name: _float32(value) for name, value in self._outputs_fn(inputs).items()}
        clash = [name for name in outputs if name in ENCODER_INPUTS]
        if clash:
            raise ValueError(f"model outputs {clash} clash with the packed-input outputs")
        return outputs

    # -- signatures ----------------------------------------------------------------------------

    def _text_outputs(self, texts):
        if self.offsets:
            tokenized = [self.tokenizer.tokenize_with_offsets(t) for t in texts]
            packed = self.tokenizer.pack([ids for ids, _, _ in tokenized], self.seq_length,
                                         offsets=[offsets for _, *offsets in tokenized])
        else:
            packed = self.tokenizer.pack([self.tokenizer.tokenize(t) for t in texts],
                                         self.seq_length)
        outputs = dict(self.run_model({name: packed[name] for name in ENCODER_INPUTS}))
        outputs.update(packed)
        return outputs

    def _serve_text(self, text_a):
        return self._text_outputs([_rank_checked(text_a, "text_a", 1)])

    def _serve_text_pair(self, text_a, text_b):
        text_a = _rank_checked(text_a, "text_a", 1)
        text_b = _rank_checked(text_b, "text_b", 1)
        tf.debugging.assert_equal(
            tf.shape(text_a), tf.shape(text_b),
            message="text_a and text_b must have the same batch size")
        return self._text_outputs([text_a, text_b])

    def _serve_token_ids(self, token_ids, segment_ids, padding_mask):
        return self.run_model(self._checked_ids(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}))

    def _checked_ids(self, inputs, names=None):
        """The encoder inputs behind shape and value checks; `names`: how errors call them."""
        names = names or {name: name for name in inputs}
        token, segment, mask = (names[name] for name in ENCODER_INPUTS)
        inputs = {name: _rank_checked(inputs[name], names[name], 2) for name in ENCODER_INPUTS}
        shape = tf.shape(inputs["token_ids"])
        checks = [
            tf.debugging.assert_equal(tf.shape(inputs["segment_ids"]), shape,
                                      message=f"{segment} must have the shape of {token}"),
            tf.debugging.assert_equal(tf.shape(inputs["padding_mask"]), shape,
                                      message=f"{mask} must have the shape of {token}"),
            tf.debugging.assert_less_equal(
                shape[1], self.max_length,
                message=f"sequences longer than max_position_embeddings={self.max_length}"),
            tf.debugging.assert_non_negative(inputs["token_ids"], message=f"negative {token}"),
            tf.debugging.assert_less(inputs["token_ids"], self.tokenizer.vocab_size,
                                     message=f"{token} outside the vocab"),
            tf.debugging.assert_non_negative(
                inputs["segment_ids"],
                message=f"{segment} must be in [0, type_vocab_size={self.type_vocab_size})"),
            tf.debugging.assert_less(
                inputs["segment_ids"], self.type_vocab_size,
                message=f"{segment} must be in [0, type_vocab_size={self.type_vocab_size})"),
            tf.debugging.assert_non_negative(inputs["padding_mask"],
                                             message=f"{mask} must be 0 or 1"),
            tf.debugging.assert_less_equal(inputs["padding_mask"], 1,
                                           message=f"{mask} must be 0 or 1"),
        ]
        with tf.control_dependencies(checks):
            return {name: tf.identity(value) for name, value in inputs.items()}

    def _serve_examples(self, examples):
        examples = _rank_checked(examples, "examples", 1)
        features = {feature: tf.io.FixedLenFeature([self.seq_length], tf.int64)
                    for feature in EXAMPLE_FEATURES.values()}
        parsed = tf.io.parse_example(examples, features)
        inputs = {name: tf.cast(parsed[feature], tf.int32)
                  for name, feature in EXAMPLE_FEATURES.items()}
        names = {name: f"{feature} (tf.Example feature)"
                 for name, feature in EXAMPLE_FEATURES.items()}
        return self.run_model(self._checked_ids(inputs, names))


def with_compute_dtype(model, compute_dtype):
    """`model` rebuilt to compute in `compute_dtype` ("float32" or "bfloat16"), same weights.

    bfloat16 is Keras' `bfloat16` policy: weights are rounded to bfloat16 once, here, instead
    of on every call as under `mixed_bfloat16` (same results); LayerNorms keep float32. The
    model class must round-trip through `get_config()` / `from_config()` with a `dtype` entry,
    as every task model here does. Returns `model` itself when it already runs under that
    policy.
    """
    if compute_dtype not in COMPUTE_DTYPE_POLICIES:
        raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPE_POLICIES)}, "
                         f"got {compute_dtype!r}")
    policy = COMPUTE_DTYPE_POLICIES[compute_dtype]
    if model.dtype_policy.name == policy:
        return model
    config = {**model.get_config(), "dtype": policy}
    config.pop("preprocessor", None)  # Serving tokenizes in the SavedModel's own graph.
    clone = type(model).from_config(config)
    paths, clone_paths = [v.path for v in model.weights], [v.path for v in clone.weights]
    if paths != clone_paths:
        raise ValueError(f"{type(model).__name__} rebuilt under {policy} has other weights "
                         f"({len(clone_paths)} against {len(paths)}): cannot copy them")
    clone.set_weights(model.get_weights())
    return clone


def export_saved_model(model, vocab_path, export_dir, seq_length=128, version=None,
                       max_length=None, lower_case=True, compute_dtype="float32",
                       warmup_batch_sizes=WARMUP_BATCH_SIZES):
    """Writes a task (or a bare encoder) as a TF Serving SavedModel; returns
    `<export_dir>/<version>`.

    Args:
      model: a groupbert_tf task (its `serving_outputs` are exported, floats as float32) or
        a GroupBertEncoder (`sequence_output`, `pooled_output`).
      vocab_path: the WordPiece vocab the model was trained with (shipped in `assets/`).
      export_dir: the model's folder; the version is a sub-folder.
      seq_length: packed sequence length of the text and tf.Example signatures.
      version: integer version (default: next free integer, 1 for a new folder). An existing
        version is not overwritten.
      max_length: the longest sequence `serve_token_ids` accepts (default: the model config's
        `max_position_embeddings`).
      compute_dtype: "float32" or "bfloat16" (`with_compute_dtype`; outputs stay float32).
      warmup_batch_sizes: batch sizes of the `serving_default` requests written to
        `assets.extra/tf_serving_warmup_requests` (empty: no warmup file).
    """
    model = with_compute_dtype(model, compute_dtype)
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"Vocab file not found: {vocab_path}")
    version = next_version(export_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    path = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path} exists: pick another version or leave it to default")
    module = ServingModule(model, vocab_path, seq_length=seq_length, max_length=max_length,
                           lower_case=lower_case)
    tf.io.gfile.makedirs(export_dir)
    staging = os.path.join(export_dir, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures(),
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        if warmup_batch_sizes:
            serving_warmup.write_warmup_requests(
                staging, module.text_inputs, warmup_batch_sizes,
                model_name=os.path.basename(os.path.normpath(export_dir)))
        tf.io.gfile.rename(staging, path)
    finally:
        if tf.io.gfile.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return path
