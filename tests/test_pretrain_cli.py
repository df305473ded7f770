"""`python -m training.pretrain` refuses bad input with one clear line naming the file or the
field, and exit status 1: no traceback.

All cases run as concurrent subprocesses started once per module (each pays TensorFlow's
import), so the whole file costs about one process's start-up time.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data", "vocab.txt")

pytestmark = pytest.mark.slow


def _cases(tmp):
    """name -> (extra flags, substrings the error line must contain)."""
    def write(name, text, mode="w"):
        path = os.path.join(tmp, name)
        with open(path, mode) as f:
            f.write(text)
        return path

    corpus = write("corpus.txt", "The cat sat on the mat. It was happy.\n\n"
                   "A second document is here. It has two sentences.\n" * 20)
    bad_json = write("bad.json", '{"hidden_size": 64,,}')
    bad_key = write("bad_key.json", json.dumps({"hidden_sise": 64}))
    overrides_bad_value = write("ov_bad_value.json", json.dumps({"hidden_size": -4}))
    overrides_unknown = write("ov_unknown.json", json.dumps({"no_such_thing": 1}))
    overrides_bad_flag = write("ov_bad_flag.json", json.dumps({"learning_rate": "fast"}))
    overrides_list = write("ov_list.json", json.dumps([1, 2]))
    empty = write("empty.txt", "\n\n   \n")
    missing = os.path.join(tmp, "no_such_corpus.txt")
    empty_folder = os.path.join(tmp, "empty_folder")
    os.makedirs(empty_folder)
    # A record header that promises 1000 bytes, followed by 10: a truncated, corrupt file.
    corrupt = write("corrupt.tfrecord", b"\xe8\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 14,
                    mode="wb")
    return {
        "unknown_preset": (["--config", "groupbert-huge"],
                           ["Unknown preset 'groupbert-huge' and not a readable JSON file"]),
        "invalid_json_config": (["--config", bad_json], [bad_json, "not valid JSON"]),
        "unknown_config_key": (["--config", bad_key], [bad_key, "hidden_sise"]),
        "overrides_bad_value": (["--overrides", overrides_bad_value],
                                [overrides_bad_value, "hidden_size"]),
        "overrides_unknown_key": (["--overrides", overrides_unknown],
                                  [overrides_unknown, "no_such_thing"]),
        "overrides_bad_flag_value": (["--overrides", overrides_bad_flag],
                                     [overrides_bad_flag, "learning_rate", "fast"]),
        "overrides_not_object": (["--overrides", overrides_list],
                                 [overrides_list, "JSON object"]),
        "missing_corpus": (["--corpus", missing], [missing]),
        "empty_corpus": (["--corpus", empty], [empty, "empty"]),
        "missing_corpus_among_several": (["--corpus", f"{corpus},{missing}"], [missing]),
        "corrupt_tfrecord": (["--tfrecords", corrupt], [corrupt, "Corrupt"]),
        "missing_tfrecord": (["--tfrecords", os.path.join(tmp, "none-*.tfrecord")],
                             ["none-*.tfrecord"]),
        "negative_learning_rate": (["--learning_rate=-1"], ["--learning_rate=-1.0: must be > 0"]),
        "zero_checkpoint_every": (["--checkpoint_every=0"], ["--checkpoint_every=0: must be >= 1"]),
        "unwritable_export_dir": (["--export_dir", "/sys/groupbert-export"],
                                  ["--export_dir /sys/groupbert-export: not writable"]),
        "empty_corpus_folder": (["--corpus", empty_folder], [empty_folder, "holds no files"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cli"))
    cases = _cases(tmp)
    assert sorted(cases) == sorted(CASE_NAMES), "CASE_NAMES must name every case of _cases"
    overrides = os.path.join(tmp, "small.json")
    with open(overrides, "w") as f:
        json.dump({"num_layers": 1, "hidden_size": 64, "num_heads": 1,
                   "intermediate_size": 256}, f)
    processes, out = {}, {}

    def finish(name):
        process = processes.pop(name)
        stdout, stderr = process.communicate(timeout=900)
        out[name] = (process.returncode, stdout, stderr)

    for name, (extra, _) in cases.items():
        while len(processes) >= 4:  # A few at a time: the machine is shared.
            finish(next(iter(processes)))
        flags = ["--config", "groupbert-tiny", "--overrides", overrides, "--vocab", VOCAB,
                 "--model_dir", os.path.join(tmp, name), "--export_dir", "",
                 "--train_steps", "2", "--warmup_steps", "1", "--batch_size", "2",
                 "--seq_length", "32",
                 "--max_predictions_per_seq", "5"]
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "training.pretrain", *flags, *extra], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while processes:
        finish(next(iter(processes)))
    return cases, out


CASE_NAMES = ["unknown_preset", "invalid_json_config", "unknown_config_key",
              "overrides_bad_value", "overrides_unknown_key", "overrides_bad_flag_value",
              "overrides_not_object", "missing_corpus", "empty_corpus",
              "missing_corpus_among_several", "corrupt_tfrecord", "missing_tfrecord",
              "negative_learning_rate", "zero_checkpoint_every", "unwritable_export_dir",
              "empty_corpus_folder"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_clear_error(results, name):
    cases, out = results
    returncode, stdout, stderr = out[name]
    _, expected = cases[name]
    assert returncode == 1, (returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("pretrain: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
