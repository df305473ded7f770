"""Static masked-LM masking, drawn once when pre-training files are written.

Google BERT's `create_pretraining_data.py` stores masks in its TFRecords, so
every epoch sees the same masks (dynamic masking, `training.data.masking`, draws new
ones per batch instead). This follows Google's `create_masked_lm_predictions`
without whole-word masking: the number of predictions is
`min(max_predictions_per_seq, max(1, round(masked_lm_prob * n)))` with `n`
counting [CLS] and [SEP]; positions are drawn among the other tokens; 80% of
them become [MASK], 10% stay and 10% become a token drawn uniformly from the
whole vocabulary. It runs in plain Python with a `random.Random`, so the masks
depend on the seed only, not on how a Beam runner schedules its work.
"""

import numpy as np


class StaticMasker:
    """Masks packed examples, one `random.Random` draw sequence per call order."""

    def __init__(self, vocab_size, mask_id, special_ids, max_predictions_per_seq=20,
                 masked_lm_prob=0.15):
        if not 0 < masked_lm_prob <= 1:
            raise ValueError(f"masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
        if max_predictions_per_seq < 1:
            raise ValueError(
                f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.special_ids = frozenset(int(i) for i in special_ids)
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob

    def __call__(self, examples, rng):
        """Masks a batch of packed examples.

        Args:
          examples: dict of int32 arrays `token_ids`, `segment_ids`,
            `padding_mask` [N, S] and `next_sentence_labels` [N]
            (`pretraining_data.pack_pairs`).
          rng: a `random.Random`; rows are masked in order.

        Returns:
          A flat dict in the format of `training.data.masking` (features and labels).
        """
        token_ids = np.array(examples["token_ids"], np.int32)
        n, p = len(token_ids), self.max_predictions_per_seq
        positions = np.zeros((n, p), np.int32)
        labels = np.zeros((n, p), np.int32)
        weights = np.zeros((n, p), np.float32)
        lengths = np.sum(examples["padding_mask"], axis=1)
        for row in range(n):
            ids = token_ids[row, : lengths[row]].tolist()
            candidates = [i for i, t in enumerate(ids) if t not in self.special_ids]
            rng.shuffle(candidates)
            count = min(p, max(1, int(round(len(ids) * self.masked_lm_prob))), len(candidates))
            chosen = sorted(candidates[:count])
            for i in candidates[:count]:  # Google draws replacements in shuffled order.
                if rng.random() < 0.8:
                    token_ids[row, i] = self.mask_id
                elif rng.random() >= 0.5:
                    token_ids[row, i] = rng.randint(0, self.vocab_size - 1)
            positions[row, :count] = chosen
            labels[row, :count] = [ids[i] for i in chosen]
            weights[row, :count] = 1.0
        return {
            "token_ids": token_ids,
            "segment_ids": np.asarray(examples["segment_ids"], np.int32),
            "padding_mask": np.asarray(examples["padding_mask"], np.int32),
            "masked_lm_positions": positions,
            "masked_lm_ids": labels,
            "masked_lm_weights": weights,
            "next_sentence_labels": np.asarray(examples["next_sentence_labels"], np.int32),
        }
