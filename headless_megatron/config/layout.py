"""How a run splits its ranks: tensor, pipeline (and virtual pipeline) model parallelism, with data
parallelism whatever is left. Built from a config once (:attr:`TrainConfig.layout
<headless_megatron.config.schema.TrainConfig.layout>`) and handed to the runtime as it is."""

from __future__ import annotations

from dataclasses import dataclass

from headless_megatron.config.fields import fail


@dataclass(frozen=True)
class ParallelLayout:
    """The model-parallel sizes; data parallelism is world / (tp * pp)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one copy of the model: tp * pp."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks in a world of ``world_size`` ranks; raises a one-line ConfigError
        when the world does not split into whole model copies."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if world_size < 1 or world_size % (tp * pp):
            fail(
                "tensor_model_parallel_size", f"the world size {world_size} is not divisible by "
                f"tensor x pipeline model-parallel size = {tp} x {pp} = {tp * pp}; launch a "
                f"multiple of {tp * pp} ranks or change the parallel sizes"
            )
        return world_size // (tp * pp)
