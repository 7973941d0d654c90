"""The values a training configuration implies: defaults that depend on other fields resolved
(``ffn_size``, ``head_dim``, ...), the parallel layout, batch arithmetic. Mixed into
:class:`~headless_megatron.config.schema.TrainConfig`, whose fields they read; kept apart so that
the schema module is the list of fields and nothing else."""

from __future__ import annotations

from headless_megatron.config.fields import fail, parse_blend
from headless_megatron.config.layout import ParallelLayout


class DerivedValues:
    """Properties and helpers of :class:`~headless_megatron.config.schema.TrainConfig` computed
    from its fields."""

    @property
    def ffn_size(self) -> int:
        """The MLP's inner width, with ffn_hidden_size's default resolved."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.swiglu:
            return int((4 * self.hidden_size * 2 / 3) / 64) * 64
        return 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        """Width of each attention head, with kv_channels' default resolved."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        """Key/value heads, with num_query_groups' default resolved."""
        return self.num_query_groups or self.num_attention_heads

    @property
    def norm_parameters(self) -> int:
        """Parameters of one norm: its weight, and its bias with LayerNorm."""
        return self.hidden_size * (2 if self.normalization == "LayerNorm" else 1)

    @property
    def max_positions(self) -> int:
        """Rows of the position table, with max_position_embeddings' default resolved."""
        return self.max_position_embeddings or self.seq_length

    @property
    def decay_iters(self) -> int:
        """Iterations of learning-rate decay, with lr_decay_iters' default resolved."""
        return self.lr_decay_iters or self.train_iters

    @property
    def tokens_per_iteration(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return self.global_batch_size * self.seq_length

    def rampup_calculator(self, data_parallel_size: int = 1, rank: int = -1):
        """Megatron-Core's batch-size calculator of ``rampup_batch_size`` (``update`` it with the
        samples read, then ``get_current_global_batch_size``); ``rank`` 0 logs each increase."""
        from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator

        ramp = self.rampup_batch_size
        if len(ramp) != 3 or min(ramp) < 1 or ramp[0] >= self.global_batch_size:
            fail("rampup_batch_size", f"expected three positive numbers, start increment samples, with start below "
                 f"global_batch_size {self.global_batch_size}; got {' '.join(map(str, ramp))}")
        start, increment, samples = ramp
        if (self.global_batch_size - start) % increment:
            fail("rampup_batch_size", f"the ramp from {start} to global_batch_size {self.global_batch_size} is not a "
                 f"whole number of increments of {increment}")
        return RampupBatchsizeNumMicroBatchesCalculator(
            self.global_batch_size, self.micro_batch_size, data_parallel_size, decrease_batch_size_if_needed=False,
            rank=rank, start_global_batch_size=start, batch_size_increment=increment, ramup_samples=samples)

    def iterations_for_samples(self) -> int:
        """The optimizer steps of ``train_samples``, as Megatron-LM's ``update_train_iters`` counts
        them: the ramp-up's iterations one by one, then whole global batches (a partial last one is
        dropped)."""
        if not self.rampup_batch_size:
            return self.train_samples // self.global_batch_size
        calculator, ramp_samples = self.rampup_calculator(), self.rampup_batch_size[2]
        iterations = consumed = 0
        while consumed <= ramp_samples and consumed <= self.train_samples:
            calculator.update(consumed, consistency_check=False)
            consumed += calculator.get_current_global_batch_size()
            iterations += 1
        return iterations + max(0, self.train_samples - consumed) // self.global_batch_size

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        """The argument of that name of Megatron's GPTModel and BertModel."""
        return not self.untie_embeddings_and_output_weights

    @property
    def metrics_dir(self) -> str | None:
        """Where the metrics log goes: log_dir, else save, else nowhere (None)."""
        return self.log_dir or self.save

    @property
    def wandb_enabled(self) -> bool:
        """Whether to log to Weights & Biases."""
        return self.wandb_project is not None and self.wandb_mode != "disabled"

    def data_blend(self) -> tuple[list[str], list[float] | None] | None:
        """data_path as Megatron's dataset blend: (prefixes, weights or None); None without
        data_path."""
        return None if self.data_path is None else parse_blend(self.data_path)

    def padded_vocab_size(self, vocab_size: int) -> int:
        """vocab_size rounded up to a multiple of make_vocab_size_divisible_by (50277 -> 50304
        at 128). Independent of the TP size, so checkpoints reshard across TP sizes."""
        if vocab_size < 1:
            fail("vocab_size", f"expected a positive integer, got {vocab_size}")
        multiple = self.make_vocab_size_divisible_by
        return -(-vocab_size // multiple) * multiple

    @property
    def layout(self) -> ParallelLayout:
        """How this run splits its ranks (the runtime's and the checkpoints' one source for it)."""
        return ParallelLayout(
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.virtual_pipeline_model_parallel_size,
        )

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks in a launch of world_size ranks."""
        return self.layout.data_parallel_size(world_size)

    def num_microbatches(self, world_size: int) -> int:
        """Micro-batches each rank accumulates per optimizer step."""
        dp = self.data_parallel_size(world_size)
        per_pass = self.micro_batch_size * dp
        if self.global_batch_size % per_pass:
            fail(
                "global_batch_size", f"{self.global_batch_size} is not divisible by "
                f"micro_batch_size x data-parallel size = {self.micro_batch_size} x {dp} = "
                f"{per_pass}; use a multiple of {per_pass} or change micro_batch_size"
            )
        return self.global_batch_size // per_pass
