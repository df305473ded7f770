"""GLUE-style TSV/CSV reading: column conventions, pairs, labels, clear errors."""

import numpy as np
import pytest

from groupbert_tf.tokenization import BertTokenizer
from training.data import glue_data

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "a", "is",
         "the", ".", "it", "was"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_sst2_single_sentences_with_header(tmp_path):
    path = write(tmp_path, "train.tsv", "sentence\tlabel\na good film\t1\nit was bad .\t0\n")
    examples = glue_data.read_examples(path)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("a good film", None, "1"), ("it was bad .", None, "0")]
    assert [e.line for e in examples] == [2, 3]


def test_pairs_by_header_names_rte_and_qnli(tmp_path):
    rte = write(tmp_path, "rte.tsv", "index\tsentence1\tsentence2\tlabel\n"
                "0\tA man sleeps.\tA person rests.\tentailment\n"
                "1\tIt rains.\tThe sun \"shines.\tnot_entailment\n")
    examples = glue_data.read_examples(rte)
    assert (examples[0].text_a, examples[0].text_b) == ("A man sleeps.", "A person rests.")
    # TSVs are read without quote processing (GLUE's MNLI/QQP have stray quotes).
    assert examples[1].text_b == 'The sun "shines.'
    qnli = write(tmp_path, "qnli.tsv", "index\tquestion\tsentence\tlabel\n"
                 "0\tWho?\tHim.\tentailment\n")
    example = glue_data.read_examples(qnli)[0]
    assert (example.text_a, example.text_b) == ("Who?", "Him.")


def test_task_presets_mrpc_and_headerless_cola(tmp_path):
    mrpc = write(tmp_path, "mrpc.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                 "1\t11\t12\tHe said hi.\tHe greeted.\n")
    example = glue_data.read_examples(mrpc, glue_data.GLUE_TASKS["mrpc"])[0]
    assert (example.text_a, example.text_b, example.label) == ("He said hi.", "He greeted.", "1")
    cola = write(tmp_path, "cola.tsv", "gj04\t1\t\tOur friends won't buy this.\n"
                 "gj04\t0\t*\tThey drank the pub.\n")
    examples = glue_data.read_examples(cola, glue_data.GLUE_TASKS["cola"])
    assert [(e.text_a, e.label) for e in examples] == [
        ("Our friends won't buy this.", "1"), ("They drank the pub.", "0")]


def test_csv_with_quotes_and_index_columns(tmp_path):
    path = write(tmp_path, "data.csv", 'text,label\n"good, really",pos\nbad,neg\n')
    examples = glue_data.read_examples(path)
    assert [(e.text_a, e.label) for e in examples] == [("good, really", "pos"), ("bad", "neg")]
    spec = glue_data.Columns(text_a=0, label=1, header=False)
    assert len(glue_data.read_examples(path, spec)) == 3  # The header is a row here.


def test_short_row_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nonly one column\n")
    with pytest.raises(glue_data.DataFormatError, match=r"bad\.tsv:3: row has 1 column"):
        glue_data.read_examples(path)


def test_missing_named_column_is_reported(tmp_path):
    path = write(tmp_path, "x.tsv", "sentence\tlabel\na\t1\n")
    spec = glue_data.Columns(text_a="sentence", text_b="sentence2", label="label")
    with pytest.raises(glue_data.DataFormatError, match=r"x\.tsv:1: no column named 'sentence2'"):
        glue_data.read_examples(path, spec)
    unknown = write(tmp_path, "y.tsv", "foo\tbar\na\t1\n")
    with pytest.raises(glue_data.DataFormatError, match=r"y\.tsv:1: cannot find"):
        glue_data.read_examples(unknown)
    empty_label = write(tmp_path, "z.tsv", "sentence\tlabel\na\t\n")
    with pytest.raises(glue_data.DataFormatError, match=r"z\.tsv:2: empty label"):
        glue_data.read_examples(empty_label)


def test_label_vocabulary_any_number_of_labels(tmp_path):
    examples = [glue_data.Example("t", None, label, i) for i, label in
                enumerate(["neutral", "entailment", "contradiction", "entailment"])]
    labels = glue_data.LabelVocabulary.from_examples(examples)
    assert labels.labels == ["contradiction", "entailment", "neutral"]
    numeric = glue_data.LabelVocabulary.from_examples(
        [glue_data.Example("t", None, l, 0) for l in ["10", "2", "0"]])
    assert numeric.labels == ["0", "2", "10"]
    path = str(tmp_path / "labels.txt")
    labels.save(path)
    assert glue_data.LabelVocabulary.load(path).labels == labels.labels
    with pytest.raises(glue_data.DataFormatError, match=r"dev\.tsv:7: label 'other'"):
        labels.id("other", "dev.tsv", 7)


def test_make_dataset_packs_pairs_and_maps_labels(tmp_path):
    path = write(tmp_path, "pairs.tsv", "sentence1\tsentence2\tlabel\n"
                 "a good film\tit was bad .\tyes\nthe film\tis good\tno\n")
    examples = glue_data.read_examples(path)
    labels = glue_data.LabelVocabulary.from_examples(examples)
    tokenizer = BertTokenizer(VOCAB)
    dataset = glue_data.make_dataset(examples, tokenizer, labels, seq_length=12, batch_size=2,
                                     training=False)
    x, y = next(iter(dataset))
    np.testing.assert_array_equal(y["labels"].numpy(), [1, 0])  # no < yes
    ids = x["token_ids"].numpy()[0]
    # [CLS] a good film [SEP] it was bad . [SEP] [PAD] [PAD]
    assert list(ids) == [2, 8, 5, 7, 3, 12, 13, 6, 11, 3, 0, 0]
    assert list(x["segment_ids"].numpy()[0]) == [0] * 5 + [1] * 5 + [0, 0]
    assert list(x["padding_mask"].numpy()[0]) == [1] * 10 + [0, 0]


def test_sentiment_snippets_binarised_at_zero_and_split_reproducibly(tmp_path):
    from training.data import sentiment_data
    raw = ("id\tsentiment\ttext\n1\t2.5\tA fine film.\n2\t0\tNeither.\n"
           "3\t-1.2\tA caf\xe9 bore.\n4\t0.1\tOkay  then.\n").encode("latin-1")
    rows = sentiment_data.parse_snippets(raw)
    assert rows == [("A fine film.", 1), ("A caf\u00e9 bore.", 0), ("Okay then.", 1)]
    many = [(f"s{i}", i % 2) for i in range(100)]
    train, dev = sentiment_data.split(many)
    assert (len(train), len(dev)) == (90, 10)
    assert sentiment_data.split(many) == (train, dev)
    assert sorted(train + dev) == sorted(many)
    path = tmp_path / "train.tsv"
    sentiment_data._write_tsv(str(path), rows)
    examples = glue_data.read_examples(str(path))
    assert [(e.text_a, e.label) for e in examples] == [(s, str(l)) for s, l in rows]
