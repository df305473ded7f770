"""The large corpus's converters, on package-shaped files made here (no download)."""

import gzip

from training.data import large_corpus, pretraining_data


def test_brown_tags_are_stripped_and_quotes_restored():
    files = {"package/ca01": b"\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n"
                             b"\n\tIt/pps ended/vbd ,/, he/pps said/vbd ./.\n",
             "package/README": b"not a sample"}
    assert large_corpus._brown(files) == ['The jury said " no evidence ".\nIt ended, he said.']


def test_rest_markup_lines_are_dropped():
    text = ("Title\n=====\n\n.. note::\n\n   Keep this sentence.\n:Author: someone\n"
            ":func:`len` is a role and stays.\n----\n")
    assert large_corpus._rest_text(text).split("\n") == [
        "Title", "", "", "   Keep this sentence.", ":func:`len` is a role and stays."]


def test_gcide_entries_are_documents_without_the_header():
    raw = ("00-database-info\nThis is the header.\n\nAb \\Ab\\ (a^b), n.\n   The fifth month."
           "\n   [1913 Webster]\n\nAbaca \\Ab\"a*ca\\, n.\n   The Manila-hemp plant.\n")
    files = {"usr/share/dictd/gcide.dict.dz": gzip.compress(raw.encode("cp1252"))}
    docs = [doc.strip() for doc in large_corpus._gcide(files)]
    assert docs == ["Ab \\Ab\\ (a^b), n.\n   The fifth month.",
                    "Abaca \\Ab\"a*ca\\, n.\n   The Manila-hemp plant."]


def test_blocks_are_the_corpus_format(tmp_path):
    text = large_corpus._blocks(["First doc.\n\n  Second paragraph.", "", "  Next doc.  "])
    assert text == "First doc.\nSecond paragraph.\n\nNext doc.\n"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    assert pretraining_data.read_documents(str(path)) == [["First doc.", "Second paragraph."],
                                                          ["Next doc."]]


def test_every_source_is_pinned():
    names = [s.name for s in large_corpus.SOURCES]
    assert len(set(names)) == len(names)  # One output file each.
    for source in large_corpus.SOURCES:
        assert source.output_sha256 and all(len(d) == 64 for d in source.output_sha256)
        assert (len(source.archive_sha256) == 64) == (source.registry != "debian")
