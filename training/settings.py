"""One settings path for every CLI: a typed dataclass whose fields are the program's flags.

A field's default, type and help text live in its dataclass only: `define_flags` makes the
absl flags from the fields and `from_flags` reads them back into the dataclass, so a
default cannot differ between the command line and a Python caller. `--overrides FILE.json`
works the same in every CLI (`apply_overrides`): an object of flag names (and, in programs
with a model config, GroupBertConfig fields) and values; the command line wins over it.
"""

import dataclasses
import json
import typing
from typing import Any, Dict, Iterable, Sequence

from absl import flags

FLAGS = flags.FLAGS


def setting(default, help_text, choices: Sequence[str] = (), flag: str = ""):
    """A dataclass field that is also a flag: `choices` makes an enum flag, `flag` gives the
    flag another name than the field (e.g. `--batch_size` for `global_batch_size`)."""
    return dataclasses.field(default=default, metadata={
        "help": help_text, "choices": tuple(choices), "flag": flag})


def _flag_fields(settings_class):
    hints = typing.get_type_hints(settings_class)
    for field in dataclasses.fields(settings_class):
        if "help" in field.metadata:
            kind = hints[field.name]
            if typing.get_origin(kind) is typing.Union:  # Optional[X] -> X
                kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
            yield field, field.metadata["flag"] or field.name, kind


def flag_names(*settings_classes) -> list:
    return [name for cls in settings_classes for _, name, _ in _flag_fields(cls)]


def define_flags(settings_class, flag_values=FLAGS):
    """Defines an absl flag for every `setting` field of `settings_class`."""
    for field, name, kind in _flag_fields(settings_class):
        meta, default = field.metadata, field.default
        common = dict(flag_values=flag_values)
        if meta["choices"]:
            flags.DEFINE_enum(name, default, meta["choices"], meta["help"], **common)
        elif kind is bool:
            flags.DEFINE_bool(name, default, meta["help"], **common)
        elif kind is int:
            flags.DEFINE_integer(name, default, meta["help"], **common)
        elif kind is float:
            flags.DEFINE_float(name, default, meta["help"], **common)
        elif kind in (str, Any):  # Any: a name or path on the command line.
            flags.DEFINE_string(name, default, meta["help"], **common)
        elif typing.get_origin(kind) in (list, tuple, Sequence):
            flags.DEFINE_list(name, default, meta["help"], **common)
        else:
            raise TypeError(f"{settings_class.__name__}.{field.name}: no flag type for {kind}")


def from_flags(settings_class, flag_values=FLAGS, **values):
    """`settings_class` from the parsed flags: its `setting` fields, and plain fields named
    like a flag another module defines (e.g. `precision`); `values` set or replace fields."""
    names = {field.name: name for field, name, _ in _flag_fields(settings_class)}
    for field in dataclasses.fields(settings_class):
        name = names.get(field.name, field.name)
        if name in flag_values:
            values.setdefault(field.name, flag_values[name].value)
    return settings_class(**values)


def define_overrides_flag(flag_values=FLAGS, what="flag names"):
    flags.DEFINE_string("overrides", None, f"JSON file of overrides: {what} and values (the "
                        "command line wins).", flag_values=flag_values)


def apply_overrides(flag_values=FLAGS, config_fields: Iterable[str] = ()) -> Dict[str, Any]:
    """Reads `--overrides`: sets the flags it names that the command line did not set, and
    returns the entries that are `config_fields` (a model config's fields)."""
    path = flag_values["overrides"].value
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--overrides {path}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"--overrides {path}: expected a JSON object, got "
                         f"{type(values).__name__}")
    config_fields = set(config_fields)
    config_overrides = {}
    for key, value in values.items():
        if key in config_fields:
            config_overrides[key] = value
        elif key in flag_values and key not in ("config", "overrides"):
            if not flag_values[key].present:
                try:
                    flag_values[key].value = flag_values[key].parser.parse(value)
                except (flags.Error, ValueError, TypeError) as error:
                    raise ValueError(f"--overrides {path}: bad value {value!r} for flag "
                                     f"{key!r}: {error}") from error
        else:
            what = "neither a GroupBertConfig field nor a flag" if config_fields else "not a flag"
            raise ValueError(f"--overrides {path}: unknown key {key!r} ({what})")
    return config_overrides
