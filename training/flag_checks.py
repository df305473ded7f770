"""Range checks of the CLIs' numeric flags, run before anything is built.

One table for every CLI in training/: a flag name means the same thing wherever it is
defined, and each CLI checks the names it has. A value out of range is a one-line
ValueError naming the flag, so `--learning_rate=-1` or `--checkpoint_every=0` stop at once
instead of training or failing with a traceback after compilation.
"""

import math

# flag -> (test, what the value must be); None values (optional flags left unset) pass.
RANGES = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "train_steps": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "seq_length": (lambda v: v >= 5, ">= 5 ([CLS], two [SEP] and a token of each text)"),
    "max_predictions_per_seq": (lambda v: v >= 1, ">= 1"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "warmup_power": (lambda v: v > 0, "> 0"),
    "warmup_proportion": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "steps_per_execution": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "shuffle_buffer": (lambda v: v >= 1, ">= 1"),
    "validation_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_sequences_per_pack": (lambda v: v >= 0, ">= 0 (0: no packing)"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "doc_stride": (lambda v: v >= 1, ">= 1"),
    "max_query_length": (lambda v: v >= 1, ">= 1"),
    "max_answer_length": (lambda v: v >= 1, ">= 1"),
    "max_train_examples": (lambda v: v >= 1, ">= 1"),
    "version": (lambda v: v >= 1, ">= 1"),
    "verbose": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
}


def check(flag_values):
    """Raises ValueError for the first flag of RANGES (that `flag_values` defines) whose
    value is out of range or not finite, a warmup longer than the run, or MLM predictions
    that cannot fit in the sequence."""
    for name, (test, expected) in RANGES.items():
        if name not in flag_values:
            continue
        value = flag_values[name].value
        if value is None:
            continue
        if (isinstance(value, float) and not math.isfinite(value)) or not test(value):
            raise ValueError(f"--{name}={value}: must be {expected}")
    if "warmup_steps" in flag_values and "train_steps" in flag_values:
        warmup, steps = flag_values["warmup_steps"].value, flag_values["train_steps"].value
        if warmup is not None and warmup > steps:
            raise ValueError(f"--warmup_steps={warmup}: must be at most --train_steps={steps}")
    if "max_predictions_per_seq" in flag_values and "seq_length" in flag_values:
        predictions = flag_values["max_predictions_per_seq"].value
        seq_length = flag_values["seq_length"].value
        if predictions > seq_length - 3:
            raise ValueError(f"--max_predictions_per_seq={predictions}: must be at most "
                             f"--seq_length - 3 = {seq_length - 3} ([CLS] and two [SEP] are "
                             "never masked)")
