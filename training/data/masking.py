"""Dynamic masked-LM masking inside the tf.data pipeline.

Each time a batch is produced a fresh set of positions is drawn with
tensorflow-text's `mask_language_model`: a share `masked_lm_prob` of the
maskable tokens (rounded up, at most `max_predictions_per_seq`), of which 80%
become [MASK], 10% a random token and 10% stay unchanged. [CLS], [SEP] and
padding are never selected. Google's BERT counts [CLS]/[SEP] in the 15% and
rounds to nearest; the difference is under one token per sequence.

The element format produced here is the interface the model consumes:
  features: token_ids, segment_ids, padding_mask  int32 [B, S]
            masked_lm_positions                   int32 [B, P]
  labels:   masked_lm_ids                         int32 [B, P]
            masked_lm_weights                     float32 [B, P] (0 = unused)
            next_sentence_labels                  int32 [B] (0 = IsNext)
Unused prediction slots have position 0, id 0 and weight 0.
Packed rows (training/data/packing.py) add `sequence_ids` [B, S] and `cls_positions` [B, k] to
the features and `sequence_weights` [B, k] to the labels; `next_sentence_labels` is then
[B, k]. Masking is the same: 15% of the row's maskable tokens, whichever sequence they
belong to, so each token is masked at the unpacked rate.
"""

import tensorflow as tf
import tensorflow_text as tf_text


PACKED_FEATURES = ("sequence_ids", "cls_positions")
PACKED_LABELS = ("sequence_weights",)


def split_features_labels(example):
    """Flat dict of the format above (packed or not) -> (features, labels)."""
    features = {
        k: example[k] for k in ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")
    }
    labels = {k: example[k] for k in ("masked_lm_ids", "masked_lm_weights", "next_sentence_labels")}
    features.update({k: example[k] for k in PACKED_FEATURES if k in example})
    labels.update({k: example[k] for k in PACKED_LABELS if k in example})
    return features, labels


class MlmMasker:
    """Maps a batch of packed pairs to masked (features, labels)."""

    def __init__(
        self,
        vocab_size,
        mask_id,
        special_ids,
        max_predictions_per_seq=20,
        masked_lm_prob=0.15,
        mask_token_rate=0.8,
        random_token_rate=0.1,
        seed=None,
    ):
        """Sets the masking rates and the static number of prediction slots.

        Args:
          vocab_size: random replacements are drawn from [0, vocab_size).
          mask_id: the [MASK] id.
          special_ids: ids never selected ([CLS], [SEP], [PAD]).
          max_predictions_per_seq: P, the static number of prediction slots.
          masked_lm_prob: share of maskable tokens selected.
          mask_token_rate, random_token_rate: of the selected, share replaced by
            [MASK] and by a random token (the rest stay unchanged).
          seed: op seed of the position shuffle.
        """
        if not 0 < masked_lm_prob <= 1:
            raise ValueError(f"masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
        if max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
        if mask_token_rate < 0 or random_token_rate < 0 or mask_token_rate + random_token_rate > 1:
            raise ValueError(
                f"mask_token_rate={mask_token_rate} and random_token_rate="
                f"{random_token_rate} must be >= 0 and sum to at most 1"
            )
        self.max_predictions_per_seq = max_predictions_per_seq
        self._selector = tf_text.RandomItemSelector(
            max_selections_per_batch=max_predictions_per_seq,
            selection_rate=masked_lm_prob,
            unselectable_ids=[int(i) for i in special_ids],
            shuffle_fn=lambda x: tf.random.shuffle(x, seed=seed),
        )
        self._chooser = tf_text.MaskValuesChooser(
            vocab_size,
            mask_id,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
        )

    # No tensor-dependent Python control flow here or in tf-text's masking:
    # skipping AutoGraph's source conversion saves seconds per trace.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, batch):
        """Masks a batch.

        Args:
          batch: dict with int32 `token_ids`, `segment_ids`, `padding_mask`
            [B, S] and `next_sentence_labels` [B]; packed rows also carry the
            packed keys of this module's docstring (passed through).

        Returns:
          (features, labels) in the format of this module's docstring.
        """
        token_ids = tf.cast(batch["token_ids"], tf.int64)
        seq_length = token_ids.shape[1]
        if seq_length is None:
            raise ValueError(
                "MlmMasker needs a static sequence length, got "
                f"token_ids of shape {token_ids.shape}"
            )
        lengths = tf.reduce_sum(tf.cast(batch["padding_mask"], tf.int64), axis=1)
        ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=lengths)
        masked, positions, ids = tf_text.mask_language_model(ragged, self._selector, self._chooser)
        masked_ids = masked.to_tensor(shape=[None, seq_length])
        # Padding keeps its own id: fill from the input wherever mask is 0.
        masked_ids = tf.where(tf.cast(batch["padding_mask"], tf.bool), masked_ids, token_ids)
        p = self.max_predictions_per_seq
        positions, weights = tf_text.pad_model_inputs(positions, p)
        ids, _ = tf_text.pad_model_inputs(ids, p)
        static = [token_ids.shape[0], p]  # Keep drop_remainder's batch size.
        positions, weights, ids = (tf.ensure_shape(t, static) for t in (positions, weights, ids))
        return split_features_labels(
            {
                "token_ids": tf.cast(masked_ids, tf.int32),
                "segment_ids": tf.cast(batch["segment_ids"], tf.int32),
                "padding_mask": tf.cast(batch["padding_mask"], tf.int32),
                "masked_lm_positions": tf.cast(positions, tf.int32),
                "masked_lm_ids": tf.cast(ids, tf.int32),
                "masked_lm_weights": tf.cast(weights, tf.float32),
                "next_sentence_labels": tf.cast(batch["next_sentence_labels"], tf.int32),
                **{k: batch[k] for k in PACKED_FEATURES + PACKED_LABELS if k in batch},
            }
        )
