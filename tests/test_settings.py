"""One settings path (training/settings.py): flags made from typed dataclasses, `--overrides`
the same in every CLI, relative warmup."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from absl import flags

from groupbert_tf.config import GroupBertConfig
from training import finetune, settings, trainer
from training.data import pretraining_pipeline


def _parsed(settings_class, *argv):
    flag_values = flags.FlagValues()
    settings.define_flags(settings_class, flag_values)
    settings.define_overrides_flag(flag_values)
    flag_values(["prog", *argv])
    return flag_values


@pytest.mark.parametrize("settings_class, required", [
    (trainer.TrainingSettings, {}),
    (finetune.FinetuneSettings, {"train_file": "t.tsv", "eval_file": "d.tsv"}),
])
def test_flag_defaults_are_the_dataclass_defaults(settings_class, required):
    flag_values = _parsed(settings_class, *(f"--{k}={v}" for k, v in required.items()))
    assert settings.from_flags(settings_class, flag_values) == settings_class(**required)


def test_a_flag_named_apart_from_its_field_and_enum_choices():
    flag_values = _parsed(trainer.TrainingSettings, "--batch_size=8", "--optimizer=adamw")
    parsed = settings.from_flags(trainer.TrainingSettings, flag_values)
    assert (parsed.global_batch_size, parsed.optimizer) == (8, "adamw")
    with pytest.raises(flags.IllegalFlagValueError):
        _parsed(trainer.TrainingSettings, "--optimizer=sgd")


def test_frozen_pipeline_settings_take_their_flags_too():
    flag_values = _parsed(pretraining_pipeline.Settings, "--seq_length=64", "--dupe_factor=2")
    parsed = settings.from_flags(pretraining_pipeline.Settings, flag_values, vocab="v.txt")
    assert (parsed.seq_length, parsed.dupe_factor, parsed.masked_lm_prob) == (64, 2, 0.15)


@pytest.mark.parametrize("steps, expected", [(200, 20), (5, 0), (50_000, 5_000),
                                             (1_000_000, 10_000)])
def test_warmup_defaults_to_a_tenth_of_the_run_capped_at_berts(steps, expected):
    assert trainer.TrainingSettings(train_steps=steps).warmup_steps == expected
    assert trainer.TrainingSettings(train_steps=steps, warmup_steps=3).warmup_steps == 3


def test_overrides_set_flags_and_return_config_fields_the_command_line_wins(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"learning_rate": 0.5, "train_steps": 7, "hidden_size": 64}))
    flag_values = _parsed(trainer.TrainingSettings, f"--overrides={path}", "--train_steps=9")
    fields = [f.name for f in dataclasses.fields(GroupBertConfig)]
    assert settings.apply_overrides(flag_values, fields) == {"hidden_size": 64}
    assert (flag_values.learning_rate, flag_values.train_steps) == (0.5, 9)


@pytest.mark.parametrize("content, message", [
    ({"nope": 1}, "unknown key 'nope' (not a flag)"),
    ({"train_steps": "many"}, "bad value 'many' for flag 'train_steps'"),
    ([1, 2], "expected a JSON object, got list"),
])
def test_bad_overrides_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "o.json"
    path.write_text(json.dumps(content))
    flag_values = _parsed(trainer.TrainingSettings, f"--overrides={path}")
    expected = re.escape(f"--overrides {path}: ") + ".*" + re.escape(message)
    with pytest.raises(ValueError, match=expected):
        settings.apply_overrides(flag_values)


@pytest.mark.parametrize("program, extra", [
    ("training.finetune", ["--train_file=t.tsv", "--eval_file=d.tsv"]),
    ("training.export", ["--model_dir=unused"]),
])
def test_every_cli_reads_overrides_before_its_checks(tmp_path, program, extra):
    """The overrides file's value reaches the range checks: one line, exit status 1."""
    path = tmp_path / "o.json"
    key = "epochs" if program == "training.finetune" else "seq_length"
    path.write_text(json.dumps({key: 0}))
    result = subprocess.run([sys.executable, "-m", program, f"--overrides={path}", *extra],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    program_name = program.split(".")[1]
    assert f"{program_name}: error: --{key}=0: must be >=" in result.stderr
    assert "Traceback" not in result.stderr
