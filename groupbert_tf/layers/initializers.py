"""Initializers of the reference code, in one place."""

import keras


def truncated_normal(stddev: float) -> keras.initializers.Initializer:
    """BERT's kernel and embedding initializer (re-draws beyond 2 stddev)."""
    return keras.initializers.TruncatedNormal(stddev=stddev)
