"""`IpuTrainingConfig`: how a GroupBERT pre-training job is laid out on Graphcore IPUs.

Plain Python on purpose: pipeline stages, IPU count and batch arithmetic are the parts of an
IPU job that can be wrong before any hardware is touched, so they are checked (and tested) on
any machine. No IPU is available to this project; nothing here has run on one.

The layout follows Graphcore's BERT examples: the encoder layers are split into equal groups,
one pipeline stage (one IPU) per group; the embeddings share stage 0 with the first group and
the final LayerNorm, pooler and pre-training heads share the last stage with the last group.
Each replica of the pipeline spans `num_pipeline_stages` IPUs, so a job needs
`replication_factor * num_pipeline_stages` IPUs.
"""

import dataclasses
from typing import Tuple

PRECISIONS = ("fp16", "fp32")


def layer_to_stage(layer_index: int, layers_per_stage: int) -> int:
    """Pipeline stage of encoder layer `layer_index` (0-based) with `layers_per_stage`."""
    if layer_index < 0:
        raise ValueError(f"layer_index must be >= 0, got {layer_index}.")
    if layers_per_stage < 1:
        raise ValueError(f"layers_per_stage must be >= 1, got {layers_per_stage}.")
    return layer_index // layers_per_stage


@dataclasses.dataclass(frozen=True)
class IpuTrainingConfig:
    """Pipeline, replication, batch and precision settings; validated on construction.

    Defaults are the reference recipe's numerics: fp16 compute with a static loss scale of 512.
    """

    num_layers: int
    layers_per_stage: int
    micro_batch_size: int
    gradient_accumulation_count: int
    replication_factor: int = 1
    precision: str = "fp16"
    loss_scaling: float = 512.0

    def __post_init__(self):
        for name in ("num_layers", "layers_per_stage", "micro_batch_size",
                     "gradient_accumulation_count", "replication_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.num_layers % self.layers_per_stage:
            divisors = [d for d in range(1, self.num_layers + 1) if self.num_layers % d == 0]
            raise ValueError(
                f"layers_per_stage={self.layers_per_stage} does not divide num_layers="
                f"{self.num_layers}: every pipeline stage holds the same number of encoder "
                f"layers. Use one of {divisors}.")
        stages = self.num_pipeline_stages
        if stages > 1 and self.gradient_accumulation_count % (2 * stages):
            raise ValueError(
                f"gradient_accumulation_count={self.gradient_accumulation_count} must be a "
                f"multiple of 2 x num_pipeline_stages = {2 * stages} for the grouped pipeline "
                f"schedule ({stages} stages of {self.layers_per_stage} layers).")
        ipus = self.num_ipus
        if ipus & (ipus - 1):
            raise ValueError(
                f"replication_factor x num_pipeline_stages = {self.replication_factor} x "
                f"{stages} = {ipus} IPUs, but IPUs are allocated in powers of two.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.loss_scaling <= 0:
            raise ValueError(f"loss_scaling must be > 0, got {self.loss_scaling}.")

    @classmethod
    def from_global_batch(cls, global_batch_size: int, micro_batch_size: int,
                          replication_factor: int = 1, **kwargs) -> "IpuTrainingConfig":
        """Derives the gradient accumulation count that yields `global_batch_size`."""
        per_step = micro_batch_size * replication_factor
        if global_batch_size % per_step:
            raise ValueError(
                f"global batch size {global_batch_size} is not a multiple of micro_batch_size x "
                f"replication_factor = {micro_batch_size} x {replication_factor} = {per_step}.")
        return cls(micro_batch_size=micro_batch_size, replication_factor=replication_factor,
                   gradient_accumulation_count=global_batch_size // per_step, **kwargs)

    @property
    def num_pipeline_stages(self) -> int:
        return self.num_layers // self.layers_per_stage

    @property
    def num_ipus(self) -> int:
        """IPUs to request with `auto_select_ipus`: one per stage, per replica."""
        return self.replication_factor * self.num_pipeline_stages

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step, over all replicas."""
        return self.micro_batch_size * self.replication_factor * self.gradient_accumulation_count

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches each replica's pipeline consumes per optimizer step."""
        return self.gradient_accumulation_count

    @property
    def compute_dtype(self) -> str:
        return "float16" if self.precision == "fp16" else "float32"

    def stage_of_layer(self, layer_index: int) -> int:
        if layer_index >= self.num_layers:
            raise ValueError(
                f"layer_index {layer_index} is out of range for num_layers={self.num_layers}.")
        return layer_to_stage(layer_index, self.layers_per_stage)

    def pipeline_stages(self) -> Tuple[Tuple[str, ...], ...]:
        """Component names per stage: embeddings first, encoder layers, heads last."""
        stages = [[] for _ in range(self.num_pipeline_stages)]
        stages[0].append("embeddings")
        for i in range(self.num_layers):
            stages[self.stage_of_layer(i)].append(f"encoder_layer_{i}")
        stages[-1].extend(["final_layer_norm", "pooler", "mlm_head", "nsp_head"])
        return tuple(tuple(s) for s in stages)
