"""Checkpoint conversion: Hugging Face BERT, Graphcore's reference GroupBERT (TF1 names),
optimum-graphcore GroupBERT (PyTorch names)."""

from groupbert_tf.checkpoints._layout import CheckpointError
from groupbert_tf.checkpoints.hf_bert import (hf_bert_config, load_hf_bert,
                                              load_hf_bert_state_dict, read_safetensors,
                                              to_hf_bert_state_dict)
from groupbert_tf.checkpoints.graphcore import (GraphcoreLayout, from_graphcore,
                                                from_optimum_graphcore,
                                                load_graphcore_checkpoint, read_tf1_checkpoint,
                                                save_graphcore_checkpoint, save_tf1_checkpoint,
                                                to_graphcore, to_optimum_graphcore)
