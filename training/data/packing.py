"""Sequence packing: several short sequences per row instead of one padded sequence.

Padding is wasted compute: on the default corpus 28% of the positions are padding at
seq_length 128 and 80% at 512. Packing (Krell et al. 2021, "Efficient Sequence Packing
without Cross-contamination", arXiv 2107.02027) concatenates sequences into rows of
`seq_length`; the model keeps them apart with a per-token sequence index (see
docs/packing.md), so a packed row computes exactly what its sequences compute unpacked.

`pack_sequences` is their shortest-pack-first histogram packing (SPFHP): it works on the
histogram of lengths, not on the sequences, so its cost grows with the number of distinct
lengths and pack shapes, not with the dataset. `layout_packed_rows` turns the chosen rows
into the packed arrays the model reads.

The packed row format (int32 unless noted; S = seq_length, k = max_sequences_per_pack):
  token_ids, segment_ids  [S]  the sequences' tokens back to back, then padding
  padding_mask            [S]  1 on real tokens
  sequence_ids            [S]  0 on padding, j on the tokens of the j-th sequence (1..k)
  cls_positions           [k]  where sequence j starts (its [CLS]); 0 in unused slots
  sequence_weights        [k]  float32, 1.0 on the slots that hold a sequence
Per-sequence values (NSP or classification labels) move into the same k slots.
"""

import collections
import random

import numpy as np

ROW_FEATURES = ("token_ids", "segment_ids", "padding_mask", "sequence_ids")
SLOT_FEATURES = ("cls_positions", "sequence_weights")


def _check_lengths(lengths, seq_length, max_sequences_per_pack):
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    if max_sequences_per_pack < 1:
        raise ValueError(f"max_sequences_per_pack must be >= 1, got {max_sequences_per_pack}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be a 1-D list of sequence lengths, got shape "
                         f"{lengths.shape}")
    too_long = np.flatnonzero(lengths > seq_length)
    if too_long.size:
        i = too_long[0]
        raise ValueError(f"Sequence {i} has {lengths[i]} tokens, longer than the row "
                         f"(seq_length={seq_length})")
    empty = np.flatnonzero(lengths < 1)
    if empty.size:
        raise ValueError(f"Sequence {empty[0]} has {lengths[empty[0]]} tokens; packing needs >= 1")
    return lengths


def pack_histogram(histogram, seq_length, max_sequences_per_pack):
    """Shortest-pack-first histogram packing (Krell et al. 2021, algorithm SPFHP).

    Lengths are placed from the longest to the shortest; each goes into the open pack with
    the most space left that still fits it (the "shortest pack"), else starts a new pack.
    Packs that are full or hold `max_sequences_per_pack` sequences are closed. Packs are
    handled in bulk: one entry is a pack shape (a tuple of lengths) and how many packs have it.
    Sequences of one length that fit no open pack fill new packs with as many copies as fit,
    as placing them one at a time would (the published bulk version starts one pack per
    sequence there, so equal-length data, e.g. short fine-tuning texts, would not pack).

    Args:
      histogram: histogram[n] = number of sequences of length n, for n in 0..seq_length.
      seq_length: the row length.
      max_sequences_per_pack: the most sequences one row may hold.

    Returns:
      A dict {pack shape (tuple of lengths, longest first): number of such packs}.
    """
    open_packs = collections.defaultdict(list)  # space left -> [[count, shape], ...]
    strategies = collections.Counter()

    def add(shape, count):
        space = seq_length - sum(shape)
        if space == 0 or len(shape) == max_sequences_per_pack:
            strategies[shape] += count
        else:
            open_packs[space].append([count, shape])

    for length in range(seq_length, 0, -1):
        to_place = int(histogram[length])
        while to_place:
            space = next((s for s in range(seq_length - 1, length - 1, -1) if open_packs[s]),
                         None)
            if space is None:
                per_pack = min(max_sequences_per_pack, seq_length // length)
                full, rest = divmod(to_place, per_pack)
                if full:
                    add((length,) * per_pack, full)
                if rest:
                    add((length,) * rest, 1)
                break
            entry = open_packs[space][-1]
            count = min(entry[0], to_place)
            entry[0] -= count
            if not entry[0]:
                open_packs[space].pop()
            add((*entry[1], length), count)
            to_place -= count
    for entries in open_packs.values():
        for count, shape in entries:
            strategies[shape] += count
    return dict(strategies)


def pack_sequences(lengths, seq_length, max_sequences_per_pack, seed=0):
    """Chooses which sequences share a row.

    Args:
      lengths: the length (tokens, [CLS] and [SEP] included) of each sequence.
      seq_length: the row length; no sequence may be longer.
      max_sequences_per_pack: at most this many sequences per row (the static slots).
      seed: which sequences of equal length fill which pack, and the order of the rows.

    Returns:
      A list of rows, each a tuple of sequence indices in row order (longest first).
      Every sequence is in exactly one row. The same arguments give the same rows.
    """
    lengths = _check_lengths(lengths, seq_length, max_sequences_per_pack)
    histogram = np.bincount(lengths, minlength=seq_length + 1)
    strategies = pack_histogram(histogram, seq_length, max_sequences_per_pack)
    rng = random.Random(seed)
    by_length = collections.defaultdict(list)
    for index, length in enumerate(lengths.tolist()):
        by_length[length].append(index)
    for indices in by_length.values():
        rng.shuffle(indices)
    rows = []
    for shape in sorted(strategies):
        for _ in range(strategies[shape]):
            rows.append(tuple(by_length[length].pop() for length in shape))
    rng.shuffle(rows)
    return rows


def packing_efficiency(lengths, rows, seq_length):
    """Real tokens / positions of the packed rows (1.0 = no padding)."""
    lengths = np.asarray(lengths)
    if not rows:
        return 0.0
    return float(sum(int(lengths[i]) for row in rows for i in row) / (len(rows) * seq_length))


def sequence_lengths(padding_mask):
    """The lengths of unpacked, left-aligned sequences from their [N, S] padding mask.

    Raises:
      ValueError: a row has padding before a real token (not left-aligned; row named).
    """
    padding_mask = np.asarray(padding_mask) != 0
    lengths = padding_mask.sum(axis=1)
    left_aligned = padding_mask == (np.arange(padding_mask.shape[1])[None] < lengths[:, None])
    bad = np.flatnonzero(~left_aligned.all(axis=1))
    if bad.size:
        raise ValueError(f"padding_mask of sequence {bad[0]} has padding before a real token; "
                         "packing needs left-aligned sequences")
    return lengths


def layout_packed_rows(examples, rows, seq_length, max_sequences_per_pack, per_sequence=()):
    """Lays out the chosen rows as packed arrays (the format in this module's docstring).

    Args:
      examples: unpacked, left-aligned sequences: `token_ids`, `segment_ids`,
        `padding_mask` [N, S_in] and the per-sequence arrays named in `per_sequence` [N].
      rows: from `pack_sequences`.
      seq_length, max_sequences_per_pack: the packed row's static shape.
      per_sequence: keys of per-sequence values (labels) to move into the k slots.

    Returns:
      A dict of numpy arrays with a leading row axis: ROW_FEATURES [R, S], SLOT_FEATURES and
      the `per_sequence` keys [R, k].
    """
    lengths = sequence_lengths(examples["padding_mask"])
    n_rows, k = len(rows), max_sequences_per_pack
    out = {name: np.zeros((n_rows, seq_length), np.int32) for name in ROW_FEATURES}
    out["cls_positions"] = np.zeros((n_rows, k), np.int32)
    out["sequence_weights"] = np.zeros((n_rows, k), np.float32)
    for key in per_sequence:
        out[key] = np.zeros((n_rows, k), np.asarray(examples[key]).dtype)
    for r, row in enumerate(rows):
        if len(row) > k:
            raise ValueError(f"Row {r} holds {len(row)} sequences, more than "
                             f"max_sequences_per_pack={k}")
        start = 0
        for slot, index in enumerate(row):
            end = start + int(lengths[index])
            if end > seq_length:
                raise ValueError(f"Row {r} holds {end} tokens, more than seq_length={seq_length}")
            for name in ("token_ids", "segment_ids"):
                out[name][r, start:end] = examples[name][index, : end - start]
            out["padding_mask"][r, start:end] = 1
            out["sequence_ids"][r, start:end] = slot + 1
            out["cls_positions"][r, slot] = start
            out["sequence_weights"][r, slot] = 1.0
            for key in per_sequence:
                out[key][r, slot] = examples[key][index]
            start = end
    return out


def check_packed_rows(sequence_ids, cls_positions, padding_mask=None):
    """Checks packed rows: the model's results are only right for well-formed ones.

    Each row's `sequence_ids` must be 1, 2, ..., j in contiguous runs, then 0 (padding);
    j must fit the row's cls_positions slots and each run must start at its slot's
    position; `padding_mask`, if given, must equal sequence_ids > 0.

    Raises:
      ValueError: one line naming the row and what is wrong.
    """
    sequence_ids = np.asarray(sequence_ids)
    cls_positions = np.asarray(cls_positions)
    if sequence_ids.ndim != 2 or cls_positions.ndim != 2:
        raise ValueError(f"sequence_ids and cls_positions must be [rows, seq_length] and "
                         f"[rows, slots], got shapes {sequence_ids.shape} and "
                         f"{cls_positions.shape}")
    slots = cls_positions.shape[1]
    for r, ids in enumerate(sequence_ids):
        starts = np.flatnonzero(np.diff(ids, prepend=-1))
        runs = ids[starts]
        real = runs[runs != 0]
        padding_runs = np.flatnonzero(runs == 0)
        if padding_runs.size and (padding_runs.size > 1 or padding_runs[0] != len(runs) - 1):
            raise ValueError(f"sequence_ids of row {r}: padding (0) must only come after the "
                             f"last sequence, got runs {runs.tolist()}")
        if not np.array_equal(real, np.arange(1, len(real) + 1)):
            raise ValueError(f"sequence_ids of row {r} are not contiguous runs 1, 2, ...: got "
                             f"runs {runs.tolist()}")
        if len(real) > slots:
            raise ValueError(f"Row {r} holds {len(real)} sequences, more than the {slots} "
                             "cls_positions slots (max_sequences_per_pack)")
        if not np.array_equal(cls_positions[r, : len(real)], starts[: len(real)]):
            raise ValueError(f"cls_positions of row {r} are {cls_positions[r].tolist()}, but "
                             f"its sequences start at {starts[: len(real)].tolist()}")
        if padding_mask is not None and not np.array_equal(np.asarray(padding_mask[r]) != 0,
                                                           ids != 0):
            raise ValueError(f"padding_mask of row {r} differs from sequence_ids > 0")


def pack_examples(examples, seq_length, max_sequences_per_pack, seed=0, per_sequence=()):
    """Unpacked examples -> packed rows (`pack_sequences` then `layout_packed_rows`).

    Returns:
      (packed arrays, packing efficiency: real tokens / positions of the packed rows).
    """
    lengths = sequence_lengths(examples["padding_mask"])
    rows = pack_sequences(lengths, seq_length, max_sequences_per_pack, seed)
    packed = layout_packed_rows(examples, rows, seq_length, max_sequences_per_pack, per_sequence)
    return packed, packing_efficiency(lengths, rows, seq_length)
