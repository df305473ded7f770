"""Integrity-checked checkpoints: find the newest readable one, set unreadable ones aside.

A killed save leaves a `<prefix>_temp` folder; a crash or a full disk can leave a checkpoint
whose `.index` is missing or whose `.data` is truncated or corrupt. `tf.train.latest_checkpoint`
trusts the `checkpoint` state file, so one broken file used to mean a silent restart from
random weights, after which rotation deleted the intact older checkpoints. Here a checkpoint
counts only once every tensor in it has been read back (TensorFlow verifies each tensor's
CRC32C on read), broken ones move to `<directory>/unreadable/`, and the state file is
rewritten to list only what is left, so rotation can only delete intact checkpoints, and only
after a newer save succeeded.
"""

import glob
import json
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

UNREADABLE = "unreadable"
_TEMPORARY = re.compile(r".*_temp(_[0-9a-f]+)?$")  # TF2 `<prefix>_temp`, TF1 `_temp_<uuid>`.
_PREFIX = re.compile(r"^(.+?)(?:\.index|\.data-\d+-of-\d+)$")


class UnreadableCheckpointError(ValueError):
    """A checkpoint cannot be read; the message names it and says why."""


def remove_temporary_saves(directory):
    """Deletes the `*_temp` folders of saves that were killed; returns their paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*_temp*"))):
        if os.path.isdir(path) and _TEMPORARY.fullmatch(os.path.basename(path)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logging.warning("Removed %d unfinished checkpoint save(s): %s", len(removed),
                        ", ".join(removed))
    return removed


def check_readable(prefix):
    """Raises UnreadableCheckpointError unless every tensor of `prefix` reads back intact."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as error:
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        if not os.path.exists(prefix + ".index"):
            reason = f"{os.path.basename(prefix)}.index is missing"
        raise UnreadableCheckpointError(f"checkpoint {prefix} cannot be read: {reason}") from None


def _step(prefix):
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def _checkpoint_state(directory):
    """The state file's checkpoint paths, or [] if it is missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError) as error:  # A truncated or garbled text proto.
        logging.warning("Checkpoint state file %s cannot be read (%s): listing the folder "
                        "instead", os.path.join(directory, "checkpoint"), error)
        return []
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    return [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths if p]


def candidates(directory):
    """Every checkpoint prefix the folder or its state file knows, newest first."""
    found = set(_checkpoint_state(directory))
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = _PREFIX.match(name)
        if match:
            found.add(os.path.join(directory, match.group(1)))
    return sorted(found, key=lambda p: (_step(p), p), reverse=True)


def _set_aside(prefix):
    """Moves a broken checkpoint's files to `<directory>/unreadable/` (kept for inspection,
    out of the way of rotation and of a new save with the same number)."""
    target = os.path.join(os.path.dirname(prefix), UNREADABLE)
    os.makedirs(target, exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        if _PREFIX.match(os.path.basename(path)):
            os.replace(path, os.path.join(target, os.path.basename(path)))
    return target


def _write_state(directory, latest, paths):
    """Rewrites the `checkpoint` state file to list `paths` (oldest first), keeping their
    save times so CheckpointManager still rotates them (without times it keeps them forever)."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):
        state = None
    times, preserved = {}, 0.0
    if state is not None:
        times = dict(zip((os.path.basename(p) for p in state.all_model_checkpoint_paths),
                         state.all_model_checkpoint_timestamps))
        preserved = state.last_preserved_timestamp
    lines = [f"model_checkpoint_path: {json.dumps(os.path.basename(latest))}"]
    lines += [f"all_model_checkpoint_paths: {json.dumps(os.path.basename(p))}" for p in paths]
    lines += [f"all_model_checkpoint_timestamps: "
              f"{times.get(os.path.basename(p), os.path.getmtime(p + '.index'))!r}"
              for p in paths]
    lines.append(f"last_preserved_timestamp: {preserved!r}")
    temporary = os.path.join(directory, "checkpoint.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(temporary, os.path.join(directory, "checkpoint"))


def newest_intact(directory, tidy=False):
    """The newest readable checkpoint in `directory`, or None when it holds none at all.

    Unreadable newer ones are skipped with a warning naming each. With `tidy` (the one process
    that writes the folder), unfinished saves are removed, unreadable checkpoints are moved to
    `unreadable/` and the state file is rewritten to list the remaining ones.

    Raises:
      UnreadableCheckpointError: checkpoints exist but none can be read (never a silent
        restart from random weights).
    """
    if tidy:
        remove_temporary_saves(directory)
    found = candidates(directory)
    broken = []
    chosen = None
    for prefix in found:
        try:
            check_readable(prefix)
        except UnreadableCheckpointError as error:
            broken.append(str(error))
            logging.warning("%s: skipped for an older one.", error)
            if tidy:
                logging.warning("Moved it to %s.", _set_aside(prefix))
            continue
        chosen = prefix
        break
    if found and chosen is None:
        raise UnreadableCheckpointError(
            f"no readable checkpoint in {directory}: {'; '.join(broken)}. Move the folder "
            "away (or delete it) to start afresh")
    if tidy and broken:
        _write_state(directory, chosen, [p for p in reversed(found)
                                         if os.path.exists(p + ".index")])
    if broken:
        logging.warning("Using %s, the newest readable checkpoint (%d newer one(s) "
                        "unreadable).", chosen, len(broken))
    return chosen


def load_weights(model, path, part=None, flag="--init_checkpoint"):
    """Copies weights only (never optimizer state or step) from checkpoint prefix `path`.

    `part` names a sub-model attribute (e.g. "encoder") to load only that; the rest of
    `model` keeps its initialisation. Every variable loaded must come from the checkpoint:
    they are set to NaN first and any still NaN afterwards is named in the error
    (tf.train.Checkpoint silently skips objects it cannot match). A compiled model is read
    through an uncompiled twin, so the checkpoint's optimizer slots cannot reach it.
    """
    source = model
    if getattr(model, "optimizer", None) is not None:
        source = type(model).from_config(model.get_config())
    target = getattr(source, part) if part else source
    floating = [v for v in target.weights if v.dtype.startswith(("float", "bfloat"))]
    for variable in floating:
        variable.assign(keras.ops.full(variable.shape, np.nan, variable.dtype))
    try:
        tf.train.Checkpoint(model=source).read(path).expect_partial()
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"{flag} {path}: {str(error).splitlines()[0]}") from None
    missing = [v.path for v in floating if np.isnan(np.asarray(v.numpy(), np.float32)).any()]
    if missing:
        raise ValueError(
            f"{flag} {path} lacks {len(missing)} of the {len(floating)} "
            f"{part or type(model).__name__} variables (first: {missing[:3]}); refusing to "
            "go on from partly random weights")
    if source is not model:
        (getattr(model, part) if part else model).set_weights(target.get_weights())
