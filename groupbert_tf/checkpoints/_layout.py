"""Name/layout rules shared by the checkpoint converters.

A `Rule` ties one or more of our weights (Keras weight paths, e.g.
`transformer_layer_0/attention/query/kernel`) to one or more names of a foreign checkpoint,
with the array transforms in both directions. `export_arrays` and `import_arrays` apply a
list of rules; `import_arrays` checks everything (missing names, shapes, unexpected names)
before it assigns anything, so a failed load never leaves a half-loaded model.

This module is NumPy + Keras only (no TensorFlow).
"""

import dataclasses
import re
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped tensors."""


def _identity(*arrays):
    return arrays


@dataclasses.dataclass(frozen=True)
class Rule:
    """`ours` (Keras weight paths) <-> `theirs` (foreign names).

    `to_theirs(*our_arrays) -> tuple(their_arrays)` and
    `from_theirs(*their_arrays) -> tuple(our_arrays)`; both default to the identity (1:1).
    `if_missing` says what to do when the foreign names are absent on import:
    'error', 'zeros' (the foreign model had no such parameter, e.g. a bias turned off: zero is
    exact) or 'keep' (leave the model's current value, e.g. an optional pooler).
    """

    ours: Tuple[str, ...]
    theirs: Tuple[str, ...]
    to_theirs: Callable = _identity
    from_theirs: Callable = _identity
    if_missing: str = "error"


def one(our_path: str, their_name: str, to_theirs=None, from_theirs=None,
        if_missing="error") -> Rule:
    """A 1:1 rule; the transforms take and return a single array."""
    def wrap(function):
        return lambda array: (function(array),)

    return Rule((our_path,), (their_name,),
                wrap(to_theirs) if to_theirs else _identity,
                wrap(from_theirs) if from_theirs else _identity,
                if_missing)


def transpose(array):
    return np.ascontiguousarray(np.asarray(array).T)


def model_variables(model) -> Dict[str, object]:
    """{weight path: variable} of a Keras model (tied weights appear once)."""
    variables = {}
    for variable in model.weights:
        variables.setdefault(variable.path, variable)
    return variables


def export_arrays(model, rules: Sequence[Rule]) -> Dict[str, np.ndarray]:
    variables = model_variables(model)
    out = {}
    for rule in rules:
        arrays = [np.asarray(variables[path].numpy()) for path in rule.ours]
        for name, array in zip(rule.theirs, rule.to_theirs(*arrays)):
            out[name] = np.asarray(array)
    return out


def _fmt_shape(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def import_arrays(model, rules: Sequence[Rule], arrays: Dict[str, np.ndarray], source: str,
                  ignore: Iterable[str] = (), strict: bool = True) -> List[str]:
    """Assigns `arrays` (foreign names) to `model` through `rules`.

    `ignore`: regular expressions of foreign names that are allowed to be present and unused
    (tied copies, buffers, heads the model does not have). With `strict`, any other unused
    name is an error. Returns the foreign names that were used.
    Raises CheckpointError naming `source` and every problem found.
    """
    variables = model_variables(model)
    missing, mismatched, assignments, used = [], [], [], set()
    for rule in rules:
        absent = [name for name in rule.theirs if name not in arrays]
        if absent:
            if rule.if_missing == "keep":
                continue
            if rule.if_missing == "zeros" and len(absent) == len(rule.theirs):
                for path in rule.ours:
                    variable = variables[path]
                    assignments.append((variable, np.zeros(variable.shape, variable.dtype)))
                continue
            missing.extend(absent)
            continue
        theirs = [np.asarray(arrays[name]) for name in rule.theirs]
        used.update(rule.theirs)
        try:
            converted = rule.from_theirs(*theirs)
            problem = None
            for path, array in zip(rule.ours, converted):
                if tuple(array.shape) != tuple(variables[path].shape):
                    problem = path
                    break
        except CheckpointError:
            raise
        except (ValueError, IndexError) as error:  # reshape of a wrong-sized array
            problem, converted = str(error), None
        if problem is not None:
            current = [np.zeros(variables[path].shape, np.float32) for path in rule.ours]
            try:
                expected = [a.shape for a in rule.to_theirs(*current)]
            except Exception:  # pragma: no cover - expected shape is only a hint
                expected = ["?"] * len(rule.theirs)
            for name, array, shape in zip(rule.theirs, theirs, expected):
                mismatched.append(f"{name}: shape {_fmt_shape(array.shape)} in the checkpoint, "
                                  f"model needs {_fmt_shape(shape)} (for {', '.join(rule.ours)})")
            continue
        for path, array in zip(rule.ours, converted):
            variable = variables[path]
            assignments.append((variable, np.asarray(array).astype(variable.dtype)))
    ignore_patterns = [re.compile(p) for p in ignore]
    unexpected = sorted(name for name in arrays if name not in used
                        and not any(p.search(name) for p in ignore_patterns))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {', '.join(missing[:20])}"
                        + (" ..." if len(missing) > 20 else ""))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:20]))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) the model has no place for: "
                        f"{', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        raise CheckpointError(f"Cannot load {source}: " + " | ".join(problems))
    for variable, array in assignments:
        variable.assign(array)
    return sorted(used)


def split_model(model):
    """(encoder, pretrainer or None) for a GroupBertEncoder or GroupBertPretrainer."""
    from groupbert_tf.models.encoder import GroupBertEncoder

    if isinstance(model, GroupBertEncoder):
        return model, None
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, GroupBertEncoder) and hasattr(model, "mlm_head"):
        return encoder, model
    raise TypeError(f"Expected a GroupBertEncoder or GroupBertPretrainer, got {type(model).__name__}")


def halves(array, axis=-1):
    first, second = np.split(np.asarray(array), 2, axis=axis)
    return first, second
