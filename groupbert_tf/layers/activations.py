"""Activations that keep float32 under mixed precision."""

from keras import ops


def gelu(x, approximate=True):
    """GELU computed in float32, returned in `x`'s dtype.

    Model Garden keeps GELU in float32 under bfloat16 because BERT with LAMB converged worse
    without it; under XLA (or XLA-fused element-wise clusters) the casts fuse into the GELU.
    With float32 inputs the casts are no-ops.
    """
    return ops.cast(ops.gelu(ops.cast(x, "float32"), approximate=approximate), x.dtype)
