"""An Apache Beam pipeline: corpus files -> sharded pre-training TFRecords.

The in-memory pipeline (`training.data.pretraining_data`) holds the whole corpus and
every pair in one process. This one streams: files are read a block at a time,
tokenized in batches on any number of workers, and pairs are built per
*document pool*, so a worker's memory is one pool and one pass of its pairs,
never the corpus. It runs on Beam's local runner here and unchanged on
Dataflow, Flink or Spark.

Stages:
  1. Read: each input file streams its documents, keyed (file index, document
     index). A file that is not UTF-8, not readable, not JSON lines where JSON
     lines were asked for, or holds no text fails the run, naming the file.
  2. Tokenize: batches of documents through the in-graph WordPiece tokenizer
     (`tokenize_sentences`); documents left without tokens are dropped.
  3. Pool: a document goes to pool `md5(key) % num_pools`. Within a pool the
     documents are sorted by key and `create_pairs` runs `dupe_factor` times,
     exactly as `create_examples` does over the whole corpus: NSP's random next
     segment comes from another document of the same pool.
  4. Mask (static, Google's rule, `training.data.static_masking`) and serialize.
  5. Shard: a pool writes its pairs straight to its own `shards_per_pool`
     files, each pair to the file its hash picks, in the order `create_pairs`
     makes them (documents in random order). Files are written under hidden
     temporary names and renamed when complete, so a shard is either absent or
     whole. Packed output (`max_sequences_per_pack` > 0) keeps the pool's pairs,
     packs each shard's into rows (`training.data.packing`) and masks the rows: the
     pairs are the same for any number of shards, the rows they share are not.
  6. Manifest: `manifest.json`, written last, lists every shard with its
     example count and sha256, plus the settings and totals.

Memory: no stage after the pools holds examples, so the runner shuffles only
tokenized documents; a worker holds one pool and one pass of its pairs.

Determinism: every random choice is seeded by (seed, pool) and every order is a
sort by key or hash, so the output depends on the corpus and the settings only:
not on the runner, the number of workers or how bundles are split.
The number of shards per pool changes which file holds an example, not the
examples.
With one pool the examples are exactly those of the in-memory pipeline
(`create_examples`) for the same seed.
"""

import codecs
import dataclasses
import hashlib
import json
import math
import os
import random

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from groupbert_tf import tokenization
from training.data import packing, pretraining_data, static_masking, tfrecord
from training.settings import setting

MANIFEST = "manifest.json"
FORMATS = ("text", "jsonl")


class CorpusError(ValueError):
    """An input file cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the output (recorded in the manifest)."""

    vocab: str
    seq_length: int = setting(128, "Tokens per example, [CLS] and [SEP]s included.")
    dupe_factor: int = setting(5, "Passes over the corpus, each with new pairs and masks.")
    short_seq_prob: float = setting(0.1, "Probability of a shorter, random target length.")
    max_predictions_per_seq: int = setting(20, "Static MLM prediction slots per example.")
    masked_lm_prob: float = setting(0.15, "Share of tokens masked.")
    num_pools: int = 1  # The CLI's --num_pools / --shards_per_pool default to sizes of the input.
    shards_per_pool: int = 8
    seed: int = setting(0, "Seed of pairs and masks.")
    text_field: str = setting("text", "The field of a JSON-lines object that holds its text.")
    max_sequences_per_pack: int = setting(
        0, "0: Google's format, one pair per example. k > 0: packed rows of up to k pairs "
        "(docs/packing.md), masked per row: raise --max_predictions_per_seq with k.")

    def __post_init__(self):
        checks = [
            ("seq_length", self.seq_length >= 5, "must be >= 5 ([CLS], [SEP], [SEP] and 2 tokens)"),
            ("dupe_factor", self.dupe_factor >= 1, "must be >= 1"),
            ("short_seq_prob", 0 <= self.short_seq_prob <= 1, "must be in [0, 1]"),
            ("max_predictions_per_seq", self.max_predictions_per_seq >= 1, "must be >= 1"),
            ("masked_lm_prob", 0 < self.masked_lm_prob <= 1, "must be in (0, 1]"),
            ("num_pools", self.num_pools >= 1, "must be >= 1"),
            ("shards_per_pool", self.shards_per_pool >= 1, "must be >= 1"),
            ("max_sequences_per_pack", self.max_sequences_per_pack >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"--{name}={getattr(self, name)} {why}")


def auto_count(total_bytes, bytes_each, minimum=1):
    """How many pools (or shards) keep each near `bytes_each` of input text."""
    return max(minimum, math.ceil(total_bytes / bytes_each))


def expand_inputs(patterns):
    """Input files or globs -> sorted, de-duplicated (path, size) per pattern, in order.

    Raises:
      CorpusError: a pattern matches nothing, or a file is empty (named).
    """
    files, seen = [], set()
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for missing folders and bad schemes.
            raise CorpusError(f"Corpus input {pattern}: {e}") from None
        if not matched:
            raise CorpusError(f"Corpus input {pattern} matches no file")
        for meta in sorted(matched, key=lambda m: m.path):
            if meta.path in seen:
                continue
            seen.add(meta.path)
            if meta.size_in_bytes == 0:
                raise CorpusError(f"Corpus file {meta.path} is empty")
            files.append((meta.path, meta.size_in_bytes))
    return files


def input_format(path, requested="auto"):
    """'jsonl' for *.jsonl / *.json files under `auto`, else 'text'."""
    if requested != "auto":
        return requested
    return "jsonl" if path.endswith((".jsonl", ".json")) else "text"


def _open_binary(path):
    try:
        return FileSystems.open(path)
    except Exception as e:  # Beam wraps OSError in BeamIOError.
        raise CorpusError(f"Corpus file {path} cannot be read: {e}") from None


def _iter_jsonl(path, text_field, open_binary):
    """The `text_field` string of each object of a JSON-lines file."""
    with open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise CorpusError(f"Corpus file {path} is not UTF-8 text (line {number}: "
                                  f"{e.reason})") from None
            except json.JSONDecodeError as e:
                raise CorpusError(f"Corpus file {path} line {number} is not JSON: {e}") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise CorpusError(f"Corpus file {path} line {number} has no string field "
                                  f"{text_field!r} (--text_field)")
            yield record[text_field]


def iter_jsonl_documents(path, text_field, open_binary=_open_binary):
    """Streams the documents of a JSON-lines file: the `text_field` of each object."""
    for text in _iter_jsonl(path, text_field, open_binary):
        sentences = pretraining_data.document_sentences(text.splitlines())
        if sentences:
            yield sentences


def check_input(path, fmt, text_field):
    """Reads a local input once (UTF-8, JSON where asked, any text) so that a bad file fails
    the launcher with one line, before workers start; workers check remote inputs.

    Raises:
      CorpusError: naming the file (and the line).
    """
    has_text = False
    if fmt == "jsonl":
        for record in _iter_jsonl(path, text_field, _open_binary):
            has_text = has_text or bool(record.strip())
    else:
        decoder = codecs.getincrementaldecoder("utf-8")()
        with _open_binary(path) as f:
            try:
                for block in iter(lambda: f.read(1 << 20), b""):
                    has_text = bool(decoder.decode(block).strip()) or has_text
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                try:
                    for _ in pretraining_data.iter_documents(path, _open_binary):
                        pass
                except ValueError as e:
                    raise CorpusError(str(e)) from None
    if not has_text:
        raise CorpusError(f"Corpus file {path} holds no text")


class ReadDocuments(beam.DoFn):
    """(file index, path, format) -> ((file index, document index), sentences)."""

    def __init__(self, text_field):
        self._text_field = text_field
        self._documents = beam.metrics.Metrics.counter("pretraining", "documents")

    def process(self, element):
        file_index, path, fmt = element
        if fmt == "jsonl":
            documents = iter_jsonl_documents(path, self._text_field)
        else:
            documents = pretraining_data.iter_documents(path, open_binary=_open_binary)
        count = 0
        try:
            for count, sentences in enumerate(documents, 1):
                yield (file_index, count - 1), sentences
        except CorpusError:
            raise
        except ValueError as e:  # iter_documents names the file already.
            raise CorpusError(str(e)) from None
        if count == 0:
            raise CorpusError(f"Corpus file {path} holds no text")
        self._documents.inc(count)


class Tokenize(beam.DoFn):
    """Batches of (key, sentences) -> (key, token id sentences), empty documents dropped."""

    def __init__(self, vocab):
        self._vocab = vocab
        self._tokenizer = None

    def setup(self):
        self._tokenizer = tokenization.BertTokenizer(self._vocab)

    def process(self, batch):
        keys = [key for key, _ in batch]
        ids = pretraining_data.tokenize_sentences([doc for _, doc in batch], self._tokenizer)
        for key, doc in zip(keys, ids):
            if doc:
                yield key, doc


def _hash(*parts):
    return int.from_bytes(hashlib.md5(repr(parts).encode()).digest()[:8], "big")


def pool_of(key, num_pools):
    """The document pool of a document key: stable across runs and runners."""
    return _hash("pool", key) % num_pools


def pool_rng(seed, pool, num_pools):
    """One pool is the whole corpus: then the in-memory pipeline's `Random(seed)`."""
    return random.Random(seed if num_pools == 1 else f"pairs {seed} {pool}")


def _masker(settings):
    """The static masker of the settings and the ids `pack_pairs` needs."""
    tokenizer = tokenization.BertTokenizer(settings.vocab)
    masker = static_masking.StaticMasker(
        tokenizer.vocab_size, tokenizer.mask_id, tokenizer.special_ids,
        settings.max_predictions_per_seq, settings.masked_lm_prob)
    return masker, (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)


def shard_name(pool, shard, settings):
    return (f"examples-{pool:05d}-{shard:03d}-of-{settings.num_pools:05d}-"
            f"{settings.shards_per_pool:03d}.tfrecord")


class _ShardWriter:
    """One shard file, written to a hidden temporary name and renamed when complete."""

    def __init__(self, output_dir, name):
        self.name = name
        self._final = os.path.join(output_dir, name)
        self._tmp = os.path.join(output_dir,
                                 f".tmp-{name}-{os.getpid()}-{random.getrandbits(32):08x}")
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self.examples = 0
        self.labels = [0, 0]

    def write(self, record):
        self._writer.write(record)
        self.examples += 1

    def close(self):
        """Renames the file into place; returns its manifest entry."""
        self._writer.close()
        digest = hashlib.sha256()
        with tf.io.gfile.GFile(self._tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        # A retried bundle rewrites the same bytes: replacing is safe.
        tf.io.gfile.rename(self._tmp, self._final, overwrite=True)
        return {"file": self.name, "examples": self.examples, "pairs": sum(self.labels),
                "is_next": self.labels[0], "random_next": self.labels[1],
                "sha256": digest.hexdigest()}


def pack_shard(pairs, settings, pool, shard, masker, ids):
    """Pairs of one shard -> serialized packed rows (training/data/packing.py), masked per row."""
    if not pairs:
        return []
    examples = pretraining_data.pack_pairs(pairs, settings.seq_length, *ids)
    rows, _ = packing.pack_examples(examples, settings.seq_length,
                                    settings.max_sequences_per_pack,
                                    seed=f"pack {settings.seed} {pool} {shard}",
                                    per_sequence=("next_sentence_labels",))
    masked = masker(rows, random.Random(f"masks {settings.seed} {pool} {shard}"))
    for key in packing.ROW_FEATURES + packing.SLOT_FEATURES:
        masked.setdefault(key, rows[key])
    return tfrecord.serialize_packed_examples(masked)


class WritePool(beam.DoFn):
    """(pool, [(key, document)]) -> the manifest entries of the pool's shard files.

    A pool's pairs go straight to its `shards_per_pool` files (by hash), one pass of pairs
    in memory at a time, so no stage after this one holds examples. Packed output keeps a
    pool's pairs to pack them per shard.
    """

    def __init__(self, output_dir, settings):
        self._output_dir = output_dir
        self._settings = settings
        self._examples = beam.metrics.Metrics.counter("pretraining", "examples")

    def setup(self):
        self._masker, self._ids = _masker(self._settings)

    def process(self, element, chunk=512):
        s = self._settings
        pool, keyed = element
        documents = [doc for _, doc in sorted(keyed, key=lambda kd: kd[0])]
        if len(documents) < 2:
            raise CorpusError(f"Document pool {pool} of {s.num_pools} has {len(documents)} "
                              "document(s); NSP needs 2: use fewer --num_pools")
        writers = [_ShardWriter(self._output_dir, shard_name(pool, shard, s))
                   for shard in range(s.shards_per_pool)]
        packed_pairs = [[] for _ in writers]
        pair_rng = pool_rng(s.seed, pool, s.num_pools)
        mask_rng = random.Random(f"masks {s.seed} {pool}")
        index = 0
        for _ in range(s.dupe_factor):
            pairs = pretraining_data.create_pairs(documents, s.seq_length, pair_rng,
                                                  s.short_seq_prob)
            shards = [_hash("shard", s.seed, pool, index + i) % s.shards_per_pool
                      for i in range(len(pairs))]
            index += len(pairs)
            for pair, shard in zip(pairs, shards):
                writers[shard].labels[pair[2]] += 1
            if s.max_sequences_per_pack:
                for pair, shard in zip(pairs, shards):
                    packed_pairs[shard].append(pair)
                continue
            for start in range(0, len(pairs), chunk):
                packed = pretraining_data.pack_pairs(pairs[start : start + chunk],
                                                     s.seq_length, *self._ids)
                masked = self._masker(packed, mask_rng)
                for record, shard in zip(tfrecord.serialize_examples(masked),
                                         shards[start : start + chunk]):
                    writers[shard].write(record)
        for shard, pairs in enumerate(packed_pairs):
            for record in pack_shard(pairs, s, pool, shard, self._masker, self._ids):
                writers[shard].write(record)
        self._examples.inc(index)
        for writer in writers:
            yield writer.close()


def write_manifest(entries, output_dir, settings, inputs, documents):
    """Writes `manifest.json` (atomic), after every shard is in place."""
    shards = sorted(entries, key=lambda e: e["file"])
    expected = settings.num_pools * settings.shards_per_pool
    if len(shards) != expected:
        raise CorpusError(f"{len(shards)} shard files written, expected {expected}: a pool "
                          "got no document (use fewer --num_pools)")
    manifest = {
        "format": ("graphcore-packed-bert-pretraining" if settings.max_sequences_per_pack
                   else "google-bert-pretraining"),
        "settings": dataclasses.asdict(settings),
        "inputs": [{"path": p, "bytes": size} for p, size in inputs],
        "documents": documents,
        "examples": sum(e["examples"] for e in shards),
        "pairs": sum(e["pairs"] for e in shards),
        "is_next": sum(e["is_next"] for e in shards),
        "random_next": sum(e["random_next"] for e in shards),
        "shards": shards,
    }
    tmp = os.path.join(output_dir, f".tmp-{MANIFEST}-{os.getpid()}")
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    tf.io.gfile.rename(tmp, os.path.join(output_dir, MANIFEST), overwrite=True)
    return manifest


def build(pipeline, inputs, output_dir, settings, requested_format="auto"):
    """Adds the pipeline's stages to `pipeline`.

    Args:
      pipeline: a `beam.Pipeline`.
      inputs: [(path, size)] from `expand_inputs`.
      output_dir: an existing, empty folder (any filesystem TensorFlow writes to).
      settings: a `Settings`.
      requested_format: "auto", "text" or "jsonl".
    """
    files = [(i, path, input_format(path, requested_format)) for i, (path, _) in
             enumerate(inputs)]
    documents = (
        pipeline
        | "Files" >> beam.Create(files)
        | "Read" >> beam.ParDo(ReadDocuments(settings.text_field))
        | "Spread" >> beam.Reshuffle()
        | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
        | "Tokenize" >> beam.ParDo(Tokenize(settings.vocab))
    )
    document_count = documents | "CountDocuments" >> beam.combiners.Count.Globally()
    return (
        documents
        | "ToPool" >> beam.Map(lambda kd, n: (pool_of(kd[0], n), kd), settings.num_pools)
        | "GroupPools" >> beam.GroupByKey()
        | "WritePools" >> beam.ParDo(WritePool(output_dir, settings))
        | "Entries" >> beam.combiners.ToList()
        | "Manifest" >> beam.Map(write_manifest, output_dir, settings, inputs,
                                 beam.pvalue.AsSingleton(document_count))
    )
