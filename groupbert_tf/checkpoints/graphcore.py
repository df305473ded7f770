"""Convert GroupBERT weights to and from the names of the two reference implementations.

1. Graphcore's TF1 reference, `graphcore/examples` `nlp/bert/tensorflow1/modeling.py`
   (`GroupBertModel`, last present at commit 09b7c672cf2d): `to_graphcore` / `from_graphcore`,
   plus TF1 checkpoint files readable by `tf.train.list_variables` / `tf.compat.v1.train.Saver`
   (`save_tf1_checkpoint`, `read_tf1_checkpoint`, `save_graphcore_checkpoint`,
   `load_graphcore_checkpoint`).
2. The PyTorch port in `huggingface/optimum-graphcore` (`optimum/graphcore/models/groupbert/`):
   `to_optimum_graphcore` / `from_optimum_graphcore` (state-dict names, (out, in) kernels).

The TF1 names accept a `GroupBertEncoder` (backbone names only), a `GroupBertPretrainer`
(plus the MLM and NSP heads), a `GroupBertClassifier` (GLUE names) or a `GroupBertSpanLabeler`
(SQuAD names); optimum-graphcore the first two. Imports check every name and shape first and
assign nothing on error. Exports write the optional parameters of a `GraphcoreLayout`, which
should be read from the target run's config (`GraphcoreLayout.from_reference_config`).

Reference names and layouts: where they come from
--------------------------------------------------
Verified by reading the source (modeling.py at 09b7c672cf2d; its `convert_ckpt.py`, which
rewrites these exact names; Graphcore TF's `ipu.normalization_ops` for gamma/beta):
  bert/embeddings/{word_embeddings, position_embeddings, token_type_embeddings}
  bert/embeddings/LayerNorm/{gamma,beta}          (ipu group_norm(groups=1) variables)
  bert/encoder/layer_{i}/<module>/prenorm/LayerNorm/{gamma,beta}  for module in
      convolution, feed_forward_1, attention, feed_forward_2 (pre-norm residual scopes)
  .../convolution/pre/glu/values/dense/{kernel,bias}, .../pre/glu/gates/dense/{kernel,bias}
      (two N->N Dense layers; values * sigmoid(gates)); ours is one N->2N [values | gates]
  .../convolution/dwconv/weight  [K, group_size, N] (conv2d filter after expand_dims(1)), no
      bias: the same layout as ours (the kernel layout of Keras' grouped Conv1D, [K, 16, N])
  .../convolution/dwconv/LayerNorm/{gamma,beta}, .../convolution/post/dense/{kernel,bias}
  .../feed_forward_{1,2}/intermediate/dense/{kernel,bias}
  .../feed_forward_{1,2}/output/dense/kernel [I/G, N]: a grouped conv1d filter (in-channels
      per group x all out-channels; out-channel block g reads input block g), bias [N]
  .../feed_forward_{1,2}/output/mixer/dense/{kernel,bias}   (only when groups > 1)
  .../attention/self/{query,key,value}/kernel (use_qkv_split=True; the GroupBERT pre-training
      configs set it) or .../attention/self/kernel/qkv_weight [N, 3N] = [Wq | Wk | Wv] along
      the columns (use_qkv_split=False: options.py's default, so the GroupBERT *_adam, GLUE and
      SQuAD configs, which do not set it), .../attention/self/{query,key,value}/bias (only
      with use_qkv_bias, default false; the key bias is not trainable there, always 0)
  .../attention/projection/dense/{kernel,bias}  (NOT attention/output/dense: the reference
      calls the output projection "projection")
  LayerNorm/{gamma,beta}  the final LayerNorm (created outside the `bert` scope; convert_ckpt
      maps `GroupNorm*` at the root to `bert/encoder/post_layers/`)
  bert/pooler/dense/{kernel,bias} (pre-training); glue_loss/pooler/dense/{kernel,bias} (GLUE,
      whose pooler is built inside its head scope, so a GLUE run starts it from its init);
      none in a SQuAD model
  glue_loss/output_weights [L, N] (transposed vs ours), glue_loss/output_bias [L] (GLUE;
      regression has L = 1); cls/squad/output_weights [2, N] (row 0 start, row 1 end),
      cls/squad/output_bias [2] (SQuAD)
  cls/predictions/transform/dense/{kernel,bias}, cls/predictions/transform/LayerNorm/...
      (use_cls_layer), cls/predictions/output_bias (use_prediction_bias)
  cls/seq_relationship/output_weights [2, N] (transposed vs ours), cls/seq_relationship/output_bias
  bert/embeddings/s{k}/word_embeddings  (vocab split over pipeline stages; read only,
      concatenated along the vocabulary)
Inferred (consistent with the code, not observed in a real checkpoint file): that
`ipu.outlined_function` does not add a scope to variables created inside it (dwconv/weight,
attention biases); the BERT-baseline names (`attention/projection/LayerNorm`,
`output/LayerNorm`) used for `layer_structure='bert'` models.
Optional parameters: the reference can switch off QKV biases, the attention-projection bias
and the MLM output bias; when absent on import they are set to zero (exact); on export to a
layout without them, non-zero ones (but the key bias, which softmax ignores) are an error. The MLM
transform (`use_cls_layer=False`) has no equivalent in our head and is an error.

optimum-graphcore (verified in groupbert_convolution.py, groupbert_ffn.py,
groupbert_attention.py, modeling_groupbert.py):
  encoder.layer.{i}.convolution.{prenorm, glu, groupconv, conv_norm, output_projection}
      glu: nn.Linear(N, 2N) whose FIRST half are the gates, second half the values
      (ours: values first). groupconv: nn.Conv1d(N, N, K, groups=N/16) weight [N, 16, K] and
      a bias [N] that our model does not have: exported as zeros; on import a non-zero bias is
      an error (it cannot be folded into the weights: a LayerNorm follows).
  encoder.layer.{i}.intermediate_{first,second}.{LayerNorm, dense}
  encoder.layer.{i}.output_{first,second}.grouped_matmul: nn.Conv1d(I, N, 1, groups=G),
      weight [N, I/G, 1]; .dense_output_projection: the mixer (always present)
  encoder.layer.{i}.attention.{LayerNorm, self.{query,key,value}, output.dense}
  encoder.LayerNorm (final), pooler.dense, embeddings.* as BERT; task models prefix `bert.`
  and add cls.predictions.{transform.dense, transform.LayerNorm, bias, decoder.*} and
  cls.seq_relationship (BertForPreTraining heads).
"""

import dataclasses
import json
import logging
import os
import re
from typing import Dict, List

import numpy as np

from groupbert_tf.checkpoints._layout import (CheckpointError, Rule, export_arrays, halves,
                                              import_arrays, one, split_model, transpose)

_OPTIMIZER_WORDS = ("adam", "momentum", "lamb", "accum", "global_step")

# --------------------------------------------------------------------------------------------
# Graphcore TF1 names


def _dense_tf(ours, theirs, bias_if_missing="error"):
    return [one(f"{ours}/kernel", f"{theirs}/kernel"),
            one(f"{ours}/bias", f"{theirs}/bias", if_missing=bias_if_missing)]


def _norm_tf(ours, theirs):
    return [one(f"{ours}/gamma", f"{theirs}/gamma"), one(f"{ours}/beta", f"{theirs}/beta")]


def _grouped_kernel_to_filter(kernel):
    """Ours [G, I/G, N/G] -> reference conv1d filter [I/G, N] (out block g reads in block g)."""
    groups, group_in, group_out = kernel.shape
    return np.ascontiguousarray(np.transpose(kernel, (1, 0, 2)).reshape(group_in, groups * group_out))


def _filter_to_grouped_kernel(groups):
    def convert(filters):
        group_in, out = filters.shape
        if out % groups:
            raise ValueError(f"{out} outputs are not divisible by {groups} groups")
        return np.ascontiguousarray(
            np.transpose(filters.reshape(group_in, groups, out // groups), (1, 0, 2)))
    return convert


def _ffn_rules_tf(config, ours, theirs):
    rules = [one(f"{ours}/intermediate/kernel", f"{theirs}/intermediate/dense/kernel"),
             one(f"{ours}/intermediate/bias", f"{theirs}/intermediate/dense/bias")]
    if config.ffn_groups > 1:
        rules.append(one(f"{ours}/output/kernel", f"{theirs}/output/dense/kernel",
                         _grouped_kernel_to_filter, _filter_to_grouped_kernel(config.ffn_groups)))
        rules.append(one(f"{ours}/output/bias", f"{theirs}/output/dense/bias"))
        rules += _dense_tf(f"{ours}/mixer", f"{theirs}/output/mixer/dense")
    else:
        rules += _dense_tf(f"{ours}/output", f"{theirs}/output/dense")
    return rules


def _fuse_qkv(query, key, value):
    """The reference's `qkv_weight` [N, 3N]: x @ qkv_weight split in three along the columns
    gives Q, K, V (modeling.py `tf.split(qkv, [N] * 3, axis=-1)`)."""
    return (np.concatenate([query, key, value], axis=1),)


def _split_qkv(fused):
    if fused.ndim != 2 or fused.shape[1] != 3 * fused.shape[0]:
        raise ValueError(f"qkv_weight shape {fused.shape} is not [N, 3N]")
    return tuple(np.split(fused, 3, axis=1))


def _attention_rules_tf(ours, theirs, fused_qkv=False):
    names = ("query", "key", "value")
    if fused_qkv:
        rules = [Rule(tuple(f"{ours}/{q}/kernel" for q in names),
                      (f"{theirs}/self/kernel/qkv_weight",), _fuse_qkv, _split_qkv)]
    else:
        rules = [one(f"{ours}/{q}/kernel", f"{theirs}/self/{q}/kernel") for q in names]
    for name in names:
        rules.append(one(f"{ours}/{name}/bias", f"{theirs}/self/{name}/bias", if_missing="zeros"))
    rules += _dense_tf(f"{ours}/output", f"{theirs}/projection/dense", bias_if_missing="zeros")
    return rules


def _glu_to_tf(kernel, bias):
    (kv, kg), (bv, bg) = halves(kernel), halves(bias)
    return kv, bv, kg, bg


def _glu_from_tf(kv, bv, kg, bg):
    return np.concatenate([kv, kg], axis=-1), np.concatenate([bv, bg], axis=-1)


def _encoder_and_head(model):
    """(encoder, head): head is None (an encoder), 'pretrainer', 'classifier' or 'span_head'."""
    from groupbert_tf.models import GroupBertClassifier, GroupBertSpanLabeler

    if isinstance(model, GroupBertClassifier):
        return model.encoder, "classifier"
    if isinstance(model, GroupBertSpanLabeler):
        return model.encoder, "span_head"
    encoder, pretrainer = split_model(model)
    return encoder, "pretrainer" if pretrainer is not None else None


def _pooler_name(head):
    """The reference's GLUE model builds its pooler inside `glue_loss` (modeling.py
    get_glue_output_layer); pre-training puts it at `bert/pooler`; SQuAD has none."""
    return "glue_loss/pooler/dense" if head == "classifier" else "bert/pooler/dense"


def graphcore_rules(model, fused_qkv: bool = False) -> List[Rule]:
    """Rules between our weights and Graphcore's TF1 reference names (`use_qkv_split=True`
    names, or the fused `qkv_weight` of `use_qkv_split=False` with `fused_qkv`)."""
    encoder, head = _encoder_and_head(model)
    config = encoder.config
    rules = [
        one("embeddings/word_embeddings/embeddings", "bert/embeddings/word_embeddings"),
        one("embeddings/position_embeddings", "bert/embeddings/position_embeddings"),
        one("embeddings/segment_embeddings/embeddings", "bert/embeddings/token_type_embeddings"),
        *_norm_tf("embeddings/layer_norm", "bert/embeddings/LayerNorm"),
    ]
    if config.layer_structure == "groupbert":
        if config.norm_placement != "pre":
            raise CheckpointError("Graphcore's GroupBertModel is pre-norm; cannot convert a "
                                  "post-norm GroupBERT config")
        for i in range(config.num_layers):
            ours, theirs = f"transformer_layer_{i}", f"bert/encoder/layer_{i}"
            if config.use_conv_module:
                conv, tconv = f"{ours}/convolution", f"{theirs}/convolution"
                rules += _norm_tf(f"{ours}/convolution_norm", f"{tconv}/prenorm/LayerNorm")
                rules.append(Rule(
                    (f"{conv}/glu/kernel", f"{conv}/glu/bias"),
                    (f"{tconv}/pre/glu/values/dense/kernel", f"{tconv}/pre/glu/values/dense/bias",
                     f"{tconv}/pre/glu/gates/dense/kernel", f"{tconv}/pre/glu/gates/dense/bias"),
                    _glu_to_tf, _glu_from_tf))
                rules.append(one(f"{conv}/conv_kernel", f"{tconv}/dwconv/weight"))
                rules += _norm_tf(f"{conv}/conv_norm", f"{tconv}/dwconv/LayerNorm")
                rules += _dense_tf(f"{conv}/output", f"{tconv}/post/dense")
            for ffn in ("feed_forward_1", "feed_forward_2"):
                rules += _norm_tf(f"{ours}/{ffn}_norm", f"{theirs}/{ffn}/prenorm/LayerNorm")
                rules += _ffn_rules_tf(config, f"{ours}/{ffn}", f"{theirs}/{ffn}")
            rules += _norm_tf(f"{ours}/attention_norm", f"{theirs}/attention/prenorm/LayerNorm")
            rules += _attention_rules_tf(f"{ours}/attention", f"{theirs}/attention", fused_qkv)
        rules += _norm_tf("final_layer_norm", "LayerNorm")
    else:
        if (config.norm_placement != "post" or config.use_conv_module or config.ffn_groups != 1):
            raise CheckpointError("Graphcore's BertModel is post-norm with a dense FFN and no "
                                  "convolution module; this BERT-structure ablation has no "
                                  "reference names")
        for i in range(config.num_layers):
            ours, theirs = f"transformer_layer_{i}", f"bert/encoder/layer_{i}"
            rules += _attention_rules_tf(f"{ours}/attention", f"{theirs}/attention", fused_qkv)
            rules += _norm_tf(f"{ours}/attention_norm", f"{theirs}/attention/projection/LayerNorm")
            rules += _dense_tf(f"{ours}/feed_forward/intermediate", f"{theirs}/intermediate/dense")
            rules += _dense_tf(f"{ours}/feed_forward/output", f"{theirs}/output/dense")
            rules += _norm_tf(f"{ours}/feed_forward_norm", f"{theirs}/output/LayerNorm")
    # Optional on import: a SQuAD model has no pooler (and the pooler is then left as it is).
    rules += [one(f"pooler/{w}", f"{_pooler_name(head)}/{w}", if_missing="keep")
              for w in ("kernel", "bias")]
    if head == "classifier":  # modeling.py get_glue_output_layer / get_glue_regression_layer
        rules += [one("classifier/kernel", "glue_loss/output_weights", transpose, transpose,
                      if_missing="keep"),
                  one("classifier/bias", "glue_loss/output_bias", if_missing="keep")]
    elif head == "span_head":  # modeling.py squad_head: logits [..., 0] start, [..., 1] end
        rules += [one("span_head/kernel", "cls/squad/output_weights", transpose, transpose,
                      if_missing="keep"),
                  one("span_head/bias", "cls/squad/output_bias", if_missing="keep")]
    elif head == "pretrainer":
        rules += _dense_tf("mlm_head/transform", "cls/predictions/transform/dense")
        rules += _norm_tf("mlm_head/layer_norm", "cls/predictions/transform/LayerNorm")
        rules.append(one("mlm_head/output_bias", "cls/predictions/output_bias",
                         if_missing="zeros"))
        rules.append(one("nsp_head/kernel", "cls/seq_relationship/output_weights",
                         transpose, transpose))
        rules.append(one("nsp_head/bias", "cls/seq_relationship/output_bias"))
    return rules


_POOLER_NAMES = ("bert/pooler/dense", "glue_loss/pooler/dense")


def _normalize_graphcore(arrays: Dict[str, np.ndarray], pooler: str) -> Dict[str, np.ndarray]:
    """Vocab-split embeddings -> one table; the other model's pooler name -> `pooler`."""
    arrays = dict(arrays)
    split = sorted((n for n in arrays if re.fullmatch(r"bert/embeddings/s\d+/word_embeddings", n)),
                   key=lambda n: int(n.split("/")[2][1:]))
    if split:
        if "bert/embeddings/word_embeddings" in arrays:
            raise CheckpointError("Both split (s0, s1, ...) and unsplit word embeddings are present")
        arrays["bert/embeddings/word_embeddings"] = np.concatenate([arrays.pop(n) for n in split])
    present = [name for name in _POOLER_NAMES if f"{name}/kernel" in arrays]
    if len(present) > 1:
        raise CheckpointError(f"Two poolers are present ({' and '.join(present)}); keep one")
    if present and present[0] != pooler:
        for weight in ("kernel", "bias"):
            arrays[f"{pooler}/{weight}"] = arrays.pop(f"{present[0]}/{weight}")
    return arrays


@dataclasses.dataclass(frozen=True)
class GraphcoreLayout:
    """Which optional parameters the target reference run has: its BertConfig flags.

    The defaults write everything our model has, under the split names: the layout of the
    reference's GroupBERT pre-training configs (e.g. pretrain_base_groupbert_128.json).
    `from_reference_config` reads a run's config JSON, with the reference's defaults
    (options.py) for absent keys: fused QKV without biases, projection and MLM biases on.
    """

    use_qkv_split: bool = True
    use_qkv_bias: bool = True
    use_attention_projection_bias: bool = True
    use_prediction_bias: bool = True

    @classmethod
    def from_reference_config(cls, path_or_dict) -> "GraphcoreLayout":
        values = path_or_dict
        if not isinstance(values, dict):
            try:
                with open(path_or_dict, encoding="utf-8") as f:
                    values = json.load(f)
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"reference config {path_or_dict}: {error}") from error
        fields = {"use_qkv_split": False, "use_qkv_bias": False,
                  "use_attention_projection_bias": True, "use_prediction_bias": True}
        for name in fields:
            value = values.get(name, fields[name])
            if not isinstance(value, bool):
                raise ValueError(f"reference config {path_or_dict}: {name} must be true or "
                                 f"false, got {value!r}")
            fields[name] = value
        return cls(**fields)

    def absent_names(self) -> List[str]:
        """Regular expressions of the reference names this layout does not have."""
        patterns = []
        if not self.use_qkv_bias:
            patterns.append(r"/attention/self/(query|key|value)/bias$")
        if not self.use_attention_projection_bias:
            patterns.append(r"/attention/projection/dense/bias$")
        if not self.use_prediction_bias:
            patterns.append(r"^cls/predictions/output_bias$")
        return patterns


# A key bias adds q . b_k to every score of a query: softmax ignores it, so it drops exactly.
_EXACTLY_DROPPED = re.compile(r"/attention/self/key/bias$")


def to_graphcore(model, layout: GraphcoreLayout = GraphcoreLayout(),
                 drop_nonzero_biases: bool = False) -> Dict[str, np.ndarray]:
    """{Graphcore reference name: array} of an encoder, pretrainer, classifier or span labeler.

    `layout` (see `GraphcoreLayout.from_reference_config`) must match the run that reads the
    checkpoint: the reference skips names it does not know, so a mismatch leaves those
    weights at their random init without an error. Biases the layout lacks are left out;
    if any is non-zero (the key bias excepted: dropping it is exact) the export is refused,
    as the reference would compute something else, unless `drop_nonzero_biases`.
    """
    arrays = export_arrays(model, graphcore_rules(model, fused_qkv=not layout.use_qkv_split))
    absent = [re.compile(p) for p in layout.absent_names()]
    dropped = sorted(n for n in arrays if any(p.search(n) for p in absent))
    nonzero = [n for n in dropped if np.any(arrays[n]) and not _EXACTLY_DROPPED.search(n)]
    if nonzero and not drop_nonzero_biases:
        raise CheckpointError(
            f"The target layout has no {len(nonzero)} bias(es) that are non-zero in this model "
            f"({', '.join(nonzero[:4])}{' ...' if len(nonzero) > 4 else ''}); the reference "
            "would compute a different function. Export to a layout with these biases "
            "(use_qkv_bias / use_attention_projection_bias / use_prediction_bias = true), or "
            "pass drop_nonzero_biases=True to leave them out anyway.")
    for name in dropped:
        del arrays[name]
    return arrays


def from_graphcore(model, arrays: Dict[str, np.ndarray], source: str = "Graphcore arrays",
                   strict: bool = True):
    """Loads reference-named arrays (split or fused QKV) into `model`.

    Heads the model does not have are ignored (`cls/*`, `glue_loss/*` for an encoder); other
    unused names are an error when `strict`. Absent QKV, projection or MLM biases load as
    zeros (exact). A pooler, classifier or span head absent from the checkpoint (a SQuAD
    model has no pooler; a pre-training one has no task head) keeps its current values,
    and a warning says so.
    """
    _, head = _encoder_and_head(model)
    arrays = _normalize_graphcore(arrays, _pooler_name(head))
    fused = any(name.endswith("/attention/self/kernel/qkv_weight") for name in arrays)
    rules = graphcore_rules(model, fused_qkv=fused)
    ignore = {None: [r"^cls/", r"^glue_loss/"], "pretrainer": [r"^glue_loss/"],
              "classifier": [r"^cls/"], "span_head": [r"^cls/(predictions|seq_relationship)/",
                                                       r"^glue_loss/"]}[head]
    used = set(import_arrays(model, rules, arrays, source, ignore=ignore, strict=strict))
    kept = sorted({rule.ours[0].split("/")[0] for rule in rules
                   if rule.if_missing == "keep" and not used.issuperset(rule.theirs)})
    if kept:
        logging.warning("%s has no %s weights: the model's stay at their current (initial) "
                        "values.", source, " or ".join(kept))
    return model


# --------------------------------------------------------------------------------------------
# TF1 checkpoint files


def save_tf1_checkpoint(arrays: Dict[str, np.ndarray], path) -> str:
    """Writes {name: array} as a TF1 (tf.compat.v1.train.Saver-compatible) checkpoint.

    `path` is the checkpoint prefix (`dir/model.ckpt`): writes `.index` and `.data-*` files and
    a `checkpoint` state file in the folder, so `tf.train.latest_checkpoint(dir)`,
    `tf.train.list_variables(path)` and the reference's `init_checkpoint` can read it.
    """
    import tensorflow as tf

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    names = sorted(arrays)
    tensors = [tf.constant(np.asarray(arrays[name])) for name in names]
    tf.raw_ops.SaveV2(prefix=path, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    relative = os.path.relpath(os.path.abspath(path), folder)
    with open(os.path.join(folder, "checkpoint"), "w", encoding="utf-8") as f:
        f.write(f'model_checkpoint_path: "{relative}"\nall_model_checkpoint_paths: "{relative}"\n')
    return path


def read_tf1_checkpoint(path, include_optimizer: bool = False) -> Dict[str, np.ndarray]:
    """{name: array} of a TF1 checkpoint (prefix or folder). Optimizer slots and
    `global_step` are dropped unless `include_optimizer`."""
    import tensorflow as tf

    path = os.fspath(path)
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as error:
        raise FileNotFoundError(f"Cannot open TF1 checkpoint {path}: {error}") from error
    out = {}
    for name in reader.get_variable_to_shape_map():
        if not include_optimizer and any(w in name.lower() for w in _OPTIMIZER_WORDS):
            continue
        out[name] = reader.get_tensor(name)
    return out


def save_graphcore_checkpoint(model, path, layout: GraphcoreLayout = GraphcoreLayout(),
                              drop_nonzero_biases: bool = False) -> str:
    """`model`'s weights under Graphcore's reference names (`to_graphcore`), as a TF1
    checkpoint."""
    return save_tf1_checkpoint(to_graphcore(model, layout, drop_nonzero_biases), path)


def load_graphcore_checkpoint(model, path, strict: bool = True):
    """Loads a TF1 checkpoint with Graphcore's reference names into `model`."""
    return from_graphcore(model, read_tf1_checkpoint(path), source=os.fspath(path), strict=strict)


# --------------------------------------------------------------------------------------------
# optimum-graphcore (PyTorch) names


def _dense_pt(ours, theirs):
    return [one(f"{ours}/kernel", f"{theirs}.weight", transpose, transpose),
            one(f"{ours}/bias", f"{theirs}.bias")]


def _norm_pt(ours, theirs):
    return [one(f"{ours}/gamma", f"{theirs}.weight"), one(f"{ours}/beta", f"{theirs}.bias")]


def _glu_to_pt(kernel, bias):
    (kv, kg), (bv, bg) = halves(kernel), halves(bias)
    return (np.ascontiguousarray(np.concatenate([kg, kv], axis=1).T),
            np.concatenate([bg, bv]))


def _glu_from_pt(weight, bias):
    (wg, wv), (bg, bv) = halves(weight, axis=0), halves(bias)
    return (np.ascontiguousarray(np.concatenate([wv, wg], axis=0).T),
            np.concatenate([bv, bg]))


def _conv_to_pt(kernel):
    """Ours [K, 16, N] -> nn.Conv1d weight [N, 16, K]; plus the (zero) bias we do not have."""
    return np.ascontiguousarray(np.transpose(kernel, (2, 1, 0))), np.zeros(kernel.shape[2],
                                                                            kernel.dtype)


def _conv_from_pt(source_name):
    def convert(weight, bias):
        if np.any(bias != 0):
            raise CheckpointError(
                f"{source_name}: non-zero grouped-convolution bias (max |b| = "
                f"{float(np.abs(bias).max()):.3g}); our convolution module has no bias (as "
                "Graphcore's TF1 reference), and it cannot be folded into other weights")
        return (np.ascontiguousarray(np.transpose(weight, (2, 1, 0))),)
    return convert


def _grouped_to_pt(kernel):
    """Ours [G, I/G, N/G] -> nn.Conv1d(I, N, 1, groups=G) weight [N, I/G, 1]."""
    groups, group_in, group_out = kernel.shape
    return np.ascontiguousarray(
        np.transpose(kernel, (0, 2, 1)).reshape(groups * group_out, group_in)[:, :, None])


def _grouped_from_pt(groups):
    def convert(weight):
        out, group_in, width = weight.shape
        if width != 1 or out % groups:
            raise ValueError(f"grouped_matmul weight {weight.shape} is not [N, I/G, 1]")
        return np.ascontiguousarray(
            np.transpose(weight[:, :, 0].reshape(groups, out // groups, group_in), (0, 2, 1)))
    return convert


def optimum_graphcore_rules(model, prefix: str = "") -> List[Rule]:
    """Rules between our weights and optimum-graphcore GroupBERT state-dict names."""
    encoder, pretrainer = split_model(model)
    config = encoder.config
    if (config.layer_structure != "groupbert" or config.norm_placement != "pre"
            or not config.use_conv_module or config.ffn_groups < 2):
        raise CheckpointError("optimum-graphcore's GroupBERT always has the convolution module, "
                              "pre-norm and a grouped FFN with a mixer; this config has no "
                              "equivalent there")
    p = prefix
    rules = [
        one("embeddings/word_embeddings/embeddings", f"{p}embeddings.word_embeddings.weight"),
        one("embeddings/position_embeddings", f"{p}embeddings.position_embeddings.weight"),
        one("embeddings/segment_embeddings/embeddings", f"{p}embeddings.token_type_embeddings.weight"),
        *_norm_pt("embeddings/layer_norm", f"{p}embeddings.LayerNorm"),
    ]
    for i in range(config.num_layers):
        ours, theirs = f"transformer_layer_{i}", f"{p}encoder.layer.{i}"
        conv, tconv = f"{ours}/convolution", f"{theirs}.convolution"
        rules += _norm_pt(f"{ours}/convolution_norm", f"{tconv}.prenorm")
        rules.append(Rule((f"{conv}/glu/kernel", f"{conv}/glu/bias"),
                          (f"{tconv}.glu.weight", f"{tconv}.glu.bias"), _glu_to_pt, _glu_from_pt))
        rules.append(Rule((f"{conv}/conv_kernel",),
                          (f"{tconv}.groupconv.weight", f"{tconv}.groupconv.bias"),
                          _conv_to_pt, _conv_from_pt(f"{tconv}.groupconv.bias")))
        rules += _norm_pt(f"{conv}/conv_norm", f"{tconv}.conv_norm")
        rules += _dense_pt(f"{conv}/output", f"{tconv}.output_projection")
        for ffn, suffix in (("feed_forward_1", "first"), ("feed_forward_2", "second")):
            rules += _norm_pt(f"{ours}/{ffn}_norm", f"{theirs}.intermediate_{suffix}.LayerNorm")
            rules += _dense_pt(f"{ours}/{ffn}/intermediate", f"{theirs}.intermediate_{suffix}.dense")
            out = f"{theirs}.output_{suffix}"
            rules.append(one(f"{ours}/{ffn}/output/kernel", f"{out}.grouped_matmul.weight",
                             _grouped_to_pt, _grouped_from_pt(config.ffn_groups)))
            rules.append(one(f"{ours}/{ffn}/output/bias", f"{out}.grouped_matmul.bias"))
            rules += _dense_pt(f"{ours}/{ffn}/mixer", f"{out}.dense_output_projection")
        rules += _norm_pt(f"{ours}/attention_norm", f"{theirs}.attention.LayerNorm")
        for name in ("query", "key", "value"):
            rules += _dense_pt(f"{ours}/attention/{name}", f"{theirs}.attention.self.{name}")
        rules += _dense_pt(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
    rules += _norm_pt("final_layer_norm", f"{p}encoder.LayerNorm")
    rules += _dense_pt("pooler", f"{p}pooler.dense")
    if pretrainer is not None:
        rules += _dense_pt("mlm_head/transform", "cls.predictions.transform.dense")
        rules += _norm_pt("mlm_head/layer_norm", "cls.predictions.transform.LayerNorm")
        rules.append(one("mlm_head/output_bias", "cls.predictions.bias"))
        rules += _dense_pt("nsp_head", "cls.seq_relationship")
    return rules


def to_optimum_graphcore(model) -> Dict[str, np.ndarray]:
    """optimum-graphcore state dict: `GroupBertModel` names for an encoder,
    `GroupBertForPreTraining` names (`bert.` prefix, `cls.*`, tied decoder copies) for a
    pretrainer."""
    _, pretrainer = split_model(model)
    prefix = "bert." if pretrainer is not None else ""
    arrays = export_arrays(model, optimum_graphcore_rules(model, prefix))
    if pretrainer is not None:  # tied parameters appear under both names in a state dict
        arrays["cls.predictions.decoder.weight"] = arrays["bert.embeddings.word_embeddings.weight"]
        arrays["cls.predictions.decoder.bias"] = arrays["cls.predictions.bias"]
    return arrays


def from_optimum_graphcore(model, arrays: Dict[str, np.ndarray],
                           source: str = "optimum-graphcore state dict", strict: bool = True):
    """Loads an optimum-graphcore GroupBERT state dict (numpy arrays), with or without the
    `bert.` prefix. Tied decoder copies and buffers are ignored."""
    _, pretrainer = split_model(model)
    arrays = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in arrays.items()}
    ignore = [r"position_ids$", r"token_type_ids$", r"^cls\.predictions\.decoder\."]
    if pretrainer is None:
        ignore.append(r"^cls\.")
    import_arrays(model, optimum_graphcore_rules(model, ""), arrays, source, ignore=ignore,
                  strict=strict)
    return model
