"""Training data: downloads and corpora, task inputs (GLUE-style, SQuAD, sentiment),
pre-training examples, packing, masking and TFRecords."""
