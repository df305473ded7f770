"""Presets: folders a task is saved to and built from (keras-hub's `from_preset`).

A preset folder holds the encoder (`config.json`, `encoder.weights.h5`), the vocabulary
(`vocab.txt`) and the task it was saved from (`task.json`, `task.weights.h5`). A Hugging Face
BERT folder (`config.json` in HF's format, `model.safetensors`, `vocab.txt`) is a preset too,
and so is a GroupBertConfig preset name (random weights: pass `vocabulary=`).
"""

import json
import os

from groupbert_tf.config import PRESETS, GroupBertConfig
from groupbert_tf.models.encoder import GroupBertEncoder

CONFIG = "config.json"
ENCODER_WEIGHTS = "encoder.weights.h5"
VOCAB = "vocab.txt"
TASK = "task.json"
TASK_WEIGHTS = "task.weights.h5"


def save(task, directory):
    """Writes `task` (its encoder, heads and its preprocessor's vocabulary) to `directory`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as f:
        f.write(task.config.to_json())
    task.encoder.save_weights(os.path.join(directory, ENCODER_WEIGHTS))
    task.build()  # Built in the constructor; Keras wants the flag set to save.
    task.save_weights(os.path.join(directory, TASK_WEIGHTS))
    config = {k: v for k, v in task.get_config().items() if k not in ("config", "preprocessor")}
    with open(os.path.join(directory, TASK), "w", encoding="utf-8") as f:
        json.dump({"class": type(task).__name__, "config": config}, f, indent=2)
    if task.preprocessor is not None:
        task.preprocessor.save_assets(directory)


def load_encoder(preset, dtype=None):
    """(encoder, vocab file or None, the saved task record or None) of a preset."""
    if preset in PRESETS:
        return GroupBertEncoder(preset, dtype=dtype), None, None
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"preset {preset!r} is neither a folder nor one of "
                                f"{sorted(PRESETS)}")
    vocab = os.path.join(preset, VOCAB)
    vocab = vocab if os.path.isfile(vocab) else None
    if os.path.isfile(os.path.join(preset, "model.safetensors")):
        from groupbert_tf.checkpoints import load_hf_bert  # pylint: disable=import-outside-toplevel
        return load_hf_bert(preset, dtype=dtype), vocab, None
    for name in (CONFIG, ENCODER_WEIGHTS):
        if not os.path.isfile(os.path.join(preset, name)):
            raise FileNotFoundError(f"preset {preset}: no {name} (written by "
                                    "`task.save_to_preset`) and no model.safetensors")
    encoder = GroupBertEncoder(GroupBertConfig.load(os.path.join(preset, CONFIG)), dtype=dtype)
    encoder.load_weights(os.path.join(preset, ENCODER_WEIGHTS))
    record = None
    if os.path.isfile(os.path.join(preset, TASK)):
        with open(os.path.join(preset, TASK), encoding="utf-8") as f:
            record = json.load(f)
    return encoder, vocab, record


def load_task(cls, preset, sequence_length=128, lower_case=True, vocabulary=None, **kwargs):
    """`cls` from `preset`: the saved heads too when the preset holds a `cls` and `kwargs`
    do not change them; otherwise the preset's encoder under new heads."""
    from groupbert_tf.preprocessing import TextPreprocessor  # pylint: disable=import-outside-toplevel
    encoder, vocab, record = load_encoder(preset, dtype=kwargs.get("dtype"))
    vocabulary = vocabulary or vocab
    preprocessor = (TextPreprocessor(vocabulary, sequence_length=sequence_length,
                                     lower_case=lower_case) if vocabulary else None)
    same_task = record is not None and record["class"] == cls.__name__
    if same_task:
        saved = {k: v for k, v in record["config"].items()
                 if k not in ("name", "trainable", "dtype")}
        same_task = all(saved.get(k, v) == v for k, v in kwargs.items())
        kwargs = {**saved, **kwargs}
    task = cls(encoder=encoder, preprocessor=preprocessor, **kwargs)
    if same_task:
        task.build()
        task.load_weights(os.path.join(preset, TASK_WEIGHTS))
    return task
