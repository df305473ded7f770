"""`python -m training.create_pretraining_data`: corpus files -> sharded pre-training TFRecords.

Runs the Apache Beam pipeline of `training.data.pretraining_pipeline`. Here it uses the
DirectRunner with one worker process per core; any other Beam option passes through
to the runner, e.g. `--runner=DataflowRunner --project=... --temp_location=gs://...`
(inputs and --output_dir then live on storage the workers reach, e.g. gs://).

  python -m training.create_pretraining_data --input='corpus/*.txt' \\
      --output_dir=data/shards --seq_length=128 --dupe_factor=5

The output folder must be empty or absent: a second run refuses instead of mixing
outputs. Shards appear complete or not at all; `manifest.json` appears last.
Train on it with `python -m training.pretrain --tfrecords='data/shards/*.tfrecord'`.
"""

import json
import logging as std_logging
import os
import re
import sys
import threading
import time

import apache_beam as beam
import tensorflow as tf
from absl import app, flags, logging
from apache_beam.options.pipeline_options import PipelineOptions

from training.data import download, pretraining_pipeline
from training import settings as settings_lib

FLAGS = flags.FLAGS


def define_flags():
    """Defines this CLI's flags (at run time, so importing the module defines none)."""
    flags.DEFINE_list("input", None, "Corpus files or globs: text (one document per blank-line "
                      "block) or JSON lines (*.jsonl, one object per line with a text field).")
    flags.DEFINE_enum("input_format", "auto", ["auto", *pretraining_pipeline.FORMATS],
                      "auto: *.jsonl and *.json are JSON lines, anything else text.")
    flags.DEFINE_string("output_dir", None, "Output folder (must be empty or absent).")
    flags.DEFINE_string("vocab", None, "WordPiece vocab (default: bert-base-uncased from "
                        "`python -m training.data fetch`).")
    settings_lib.define_flags(pretraining_pipeline.Settings)
    flags.DEFINE_integer("num_pools", 0, "Document pools NSP draws its random next segment from "
                         "(0: one per --pool_mb of input). Changes the examples.", lower_bound=0)
    flags.DEFINE_integer("pool_mb", 8, "Input text per pool when --num_pools=0; a worker holds one "
                         "pool's tokens and one pass of its pairs.")
    flags.DEFINE_integer("shards_per_pool", 0, "Output files per pool (0: 2, or more to make "
                         "8 files in all). Does not change the examples, only which file holds "
                         "each.", lower_bound=0)
    settings_lib.define_overrides_flag()


_MB = 1 << 20


def settings_from_flags(total_bytes):
    """The pipeline settings of the flags; automatic counts follow the input size."""
    num_pools = FLAGS.num_pools or pretraining_pipeline.auto_count(total_bytes,
                                                                   FLAGS.pool_mb * _MB)
    shards_per_pool = FLAGS.shards_per_pool or max(2, -(-8 // num_pools))
    return settings_lib.from_flags(pretraining_pipeline.Settings,
                                   vocab=FLAGS.vocab or download.default_vocab_path(),
                                   num_pools=num_pools, shards_per_pool=shards_per_pool)


def prepare_output_dir(path):
    """Creates the output folder; refuses one that holds anything."""
    if tf.io.gfile.exists(path):
        if not tf.io.gfile.isdir(path):
            raise ValueError(f"--output_dir {path} is a file, not a folder")
        present = tf.io.gfile.listdir(path)
        if present:
            raise ValueError(f"--output_dir {path} is not empty ({len(present)} entries, e.g. "
                             f"{sorted(present)[0]}): give a new folder or delete this one")
    tf.io.gfile.makedirs(path)


def beam_options(beam_args):
    """Beam's options: the pass-through flags over local multi-process defaults."""
    # FnApiRunner is the DirectRunner's local engine; `--runner=DirectRunner` would first try
    # to download the Prism runner binary from the internet.
    defaults = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={os.cpu_count() or 1}"]
    given = {arg.split("=")[0] for arg in beam_args}
    options = PipelineOptions([d for d in defaults if d.split("=")[0] not in given] + beam_args)
    known = options.get_all_options()  # Beam would drop an unknown one with a warning.
    for arg in beam_args:
        name = arg.split("=")[0].lstrip("-")
        if arg.startswith("--") and name not in known and name.removeprefix("no") not in known:
            raise ValueError(f"Unknown flag {arg.split('=')[0]}: neither this CLI's nor a Beam "
                             "pipeline option")
    return options


def _report_progress(output_dir, num_shards, done, every_s=10.0):
    """Logs how many shards are in place until `done` is set (any runner)."""
    start = time.monotonic()
    while not done.wait(every_s):
        written = len(tf.io.gfile.glob(os.path.join(output_dir, "examples-*.tfrecord")))
        logging.info("%d of %d shards written after %.0f s", written, num_shards,
                     time.monotonic() - start)


def corpus_error_in(error):
    """The CorpusError message inside a runner's error (runners wrap worker errors)."""
    text = str(error)
    marker = "CorpusError: "
    if marker in text:
        text = text.split(marker, 1)[1].splitlines()[0].strip().rstrip("'\"")
    elif not isinstance(error, pretraining_pipeline.CorpusError):
        return None
    return re.sub(r"\s*\[while running '[^\]]*'\]$", "", text)


class _DropCorpusErrorLogs(std_logging.Filter):
    """Beam logs a worker's exception with its traceback before re-raising it; a corpus
    error is reported once, as one line, by `main`."""

    def filter(self, record):
        return "CorpusError" not in record.getMessage() and not (
            record.exc_info and isinstance(record.exc_info[1], pretraining_pipeline.CorpusError))


def run(input_patterns, output_dir, beam_args=()):
    """Runs the pipeline; returns the manifest dict."""
    inputs = pretraining_pipeline.expand_inputs(input_patterns)
    total_bytes = sum(size for _, size in inputs)
    settings = settings_from_flags(total_bytes)
    if not os.path.isfile(settings.vocab) and "://" not in settings.vocab:
        raise FileNotFoundError(f"--vocab {settings.vocab} not found (run `python -m "
                                "training.data fetch` for the default)")
    for path, _ in inputs:
        if "://" not in path:
            pretraining_pipeline.check_input(
                path, pretraining_pipeline.input_format(path, FLAGS.input_format),
                settings.text_field)
    prepare_output_dir(output_dir)
    logging.info("%d input files, %.1f MB; %d pools, %d shards -> %s", len(inputs),
                 total_bytes / _MB, settings.num_pools,
                 settings.num_pools * settings.shards_per_pool, output_dir)
    done = threading.Event()
    num_shards = settings.num_pools * settings.shards_per_pool
    progress = threading.Thread(target=_report_progress, args=(output_dir, num_shards, done),
                                daemon=True)
    start = time.monotonic()
    progress.start()
    try:
        with beam.Pipeline(options=beam_options(list(beam_args))) as pipeline:
            pretraining_pipeline.build(pipeline, inputs, output_dir, settings,
                                       FLAGS.input_format)
    finally:
        done.set()
    with tf.io.gfile.GFile(os.path.join(output_dir, pretraining_pipeline.MANIFEST)) as f:
        manifest = json.load(f)
    seconds = time.monotonic() - start
    logging.info("Wrote %d examples (%.1f%% random next) in %d shards in %.0f s (%.0f "
                 "examples/s) to %s", manifest["examples"],
                 100 * manifest["random_next"] / max(manifest["pairs"], 1),
                 len(manifest["shards"]), seconds, manifest["examples"] / seconds, output_dir)
    return manifest


def main(argv):
    """Ends a bad input or setting with one line naming the flag or file (exit status 1)."""
    if not FLAGS.input:
        print("create_pretraining_data: error: --input is required", file=sys.stderr)
        sys.exit(1)
    if not FLAGS.output_dir:
        print("create_pretraining_data: error: --output_dir is required", file=sys.stderr)
        sys.exit(1)
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(_DropCorpusErrorLogs())
    try:
        settings_lib.apply_overrides(FLAGS)
        run(FLAGS.input, FLAGS.output_dir, argv[1:])
    except Exception as error:  # pylint: disable=broad-except
        message = corpus_error_in(error)
        if message is None and isinstance(error, (ValueError, FileNotFoundError)):
            message = str(error)
        if message is None:
            raise
        print(f"create_pretraining_data: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=lambda argv: FLAGS(argv, known_only=True))
