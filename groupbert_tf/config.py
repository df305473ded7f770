"""`GroupBertConfig`: one dataclass describes GroupBERT, BERT and every ablation in between.

Each GroupBERT enhancement is its own field, so the paper's ablation is a set of configs:
`layer_structure` (BERT's [attention, FFN] or GroupBERT's [conv, FFN, attention, FFN]),
`use_conv_module`, `ffn_groups` (grouped FFN), `norm_placement` (pre/post-norm) and the
dropout rates.
"""

import dataclasses
import json
from typing import Any, Dict

LAYER_STRUCTURES = ("groupbert", "bert")
NORM_PLACEMENTS = ("pre", "post")
GELU_FORMS = ("tanh", "exact")

# name: (layers, hidden size); heads = hidden / 64, intermediate = 4 * hidden.
_SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


@dataclasses.dataclass(frozen=True)
class GroupBertConfig:
    """Architecture hyper-parameters; validated on construction.

    Defaults are GroupBERT-Base as the reference pre-trains it (pre-norm, no dropout,
    LayerNorm epsilon 1e-3, tanh GELU).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_structure: str = "groupbert"
    ffn_groups: int = 4
    use_conv_module: bool = True
    conv_kernel_size: int = 7
    conv_group_size: int = 16
    norm_placement: str = "pre"
    layer_norm_epsilon: float = 1e-3
    gelu_form: str = "tanh"
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[
                field.type if isinstance(field.type, str) else field.type.__name__
            ]
            if isinstance(value, bool) and expected is not bool:
                raise ValueError(f"GroupBertConfig.{field.name} must be a number, got {value!r}")
            if not isinstance(value, expected):
                raise ValueError(
                    f"GroupBertConfig.{field.name} must be of type {field.type}, got {value!r}"
                )
        for name in (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "ffn_groups", "conv_kernel_size",
            "conv_group_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"GroupBertConfig.{name} must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size",
                 f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        _require(self.intermediate_size % self.ffn_groups == 0, "intermediate_size",
                 f"intermediate_size ({self.intermediate_size}) must be divisible by "
                 f"ffn_groups ({self.ffn_groups})")
        _require(self.hidden_size % self.ffn_groups == 0, "hidden_size",
                 f"hidden_size ({self.hidden_size}) must be divisible by ffn_groups ({self.ffn_groups})")
        if self.use_conv_module:
            _require(self.hidden_size % self.conv_group_size == 0, "hidden_size",
                     f"hidden_size ({self.hidden_size}) must be divisible by "
                     f"conv_group_size ({self.conv_group_size})")
            _require(self.conv_kernel_size % 2 == 1, "conv_kernel_size",
                     f"conv_kernel_size must be odd for 'same' padding, got {self.conv_kernel_size}")
        _require(self.layer_structure in LAYER_STRUCTURES, "layer_structure",
                 f"layer_structure must be one of {LAYER_STRUCTURES}, got {self.layer_structure!r}")
        _require(self.norm_placement in NORM_PLACEMENTS, "norm_placement",
                 f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}")
        _require(self.gelu_form in GELU_FORMS, "gelu_form",
                 f"gelu_form must be one of {GELU_FORMS}, got {self.gelu_form!r}")
        _require(self.layer_norm_epsilon > 0, "layer_norm_epsilon",
                 f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        _require(self.initializer_range > 0, "initializer_range",
                 f"initializer_range must be > 0, got {self.initializer_range}")
        for name in ("hidden_dropout", "attention_dropout"):
            rate = getattr(self, name)
            _require(0.0 <= rate < 1.0, name, f"{name} must be in [0, 1), got {rate}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def gelu_approximate(self) -> bool:
        """The `approximate` argument of keras' gelu for `gelu_form` (tanh form: True)."""
        return self.gelu_form == "tanh"

    def replace(self, **changes) -> "GroupBertConfig":
        """A copy with `changes` applied (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Unknown GroupBertConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "GroupBertConfig":
        if not isinstance(values, dict):
            raise ValueError(f"GroupBertConfig expects a JSON object, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown GroupBertConfig key(s): {sorted(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GroupBertConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"GroupBertConfig JSON is not valid JSON: {error}") from error
        return cls.from_dict(values)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GroupBertConfig":
        """`groupbert-{tiny,mini,medium,base,large}` or `bert-{...}`, plus field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def load(cls, name_or_path: str) -> "GroupBertConfig":
        """A preset name or a JSON file (e.g. a run's config.json); errors name the file."""
        if name_or_path in PRESETS:
            return cls.from_preset(name_or_path)
        try:
            with open(name_or_path) as f:
                text = f.read()
        except OSError as error:
            raise ValueError(f"Unknown preset {name_or_path!r} and not a readable JSON file "
                             f"({error}); presets: {sorted(PRESETS)}") from error
        try:
            return cls.from_json(text)
        except ValueError as error:
            raise ValueError(f"{name_or_path}: {error}") from error


def _require(condition: bool, field: str, message: str):
    if not condition:
        raise ValueError(f"GroupBertConfig.{field}: {message}")


def _preset(family: str, size: str) -> Dict[str, Any]:
    layers, hidden = _SIZES[size]
    common = dict(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                  intermediate_size=4 * hidden)
    if family == "groupbert":
        return dict(common, layer_structure="groupbert", ffn_groups=4, use_conv_module=True,
                    norm_placement="pre", layer_norm_epsilon=1e-3, gelu_form="tanh",
                    hidden_dropout=0.0, attention_dropout=0.0)
    # The reference's BERT baseline: post-norm, dense FFN, no conv module, dropout 0.1.
    return dict(common, layer_structure="bert", ffn_groups=1, use_conv_module=False,
                norm_placement="post", layer_norm_epsilon=1e-12, gelu_form="tanh",
                hidden_dropout=0.1, attention_dropout=0.1)


PRESETS = {f"{family}-{size}": _preset(family, size)
           for family in ("groupbert", "bert") for size in _SIZES}
